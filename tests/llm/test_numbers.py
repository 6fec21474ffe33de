"""find_number_tokens / require_numbers / number_rows on number-keeping, digit-splitting
and gapped tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llm_fourier.errors import UserError
from llm_fourier.model.numbers import NumberTokens, find_number_tokens, number_rows, require_numbers


def test_number_keeping_tokenizer(number_tokenizer):
    nums = find_number_tokens(number_tokenizer, max_number=1000)
    assert (nums.p, nums.max_number) == (201, 200)
    expected = [number_tokenizer.convert_tokens_to_ids(str(n)) for n in range(201)]
    assert nums.token_ids.tolist() == expected
    # capped by max_number; the leading-space variant encodes " n" to the same token here
    assert find_number_tokens(number_tokenizer, max_number=50).p == 51
    assert find_number_tokens(number_tokenizer, 120, leading_space=True).p == 121


def test_digit_splitting_tokenizer(digit_tokenizer):
    nums = find_number_tokens(digit_tokenizer)
    assert nums.p == 10  # 0..9 are tokens, 10 splits into "1" "0"
    with pytest.raises(UserError, match=r"answers go up to 520 .* 0\.\.9 .*number_format"):
        require_numbers(nums, 520, "tiny")


def _wordpiece_with_gap(max_number: int, gap: int) -> PreTrainedTokenizerFast:
    """Numbers 0..max_number are whole tokens except ``gap``, which WordPiece splits."""
    vocab = ["[UNK]", "[PAD]"] + [str(n) for n in range(max_number + 1) if n != gap]
    vocab += [f"##{d}" for d in range(10)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def test_range_stops_at_the_first_gap():
    tok = _wordpiece_with_gap(60, gap=37)
    assert tok.tokenize("37") == ["3", "##7"]
    nums = find_number_tokens(tok, max_number=60)
    assert nums.p == 37 and nums.max_number == 36
    require_numbers(nums, 36)
    with pytest.raises(UserError, match=r"0\.\.36"):
        require_numbers(nums, 40)


def test_gpt2_like_byte_level_bpe_with_and_without_space():
    """A byte-level BPE trained like GPT-2's number tokens: "0".."520" and " 0".." 361"."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [str(n) for n in range(521)] + [f" {n}" for n in range(362)] + ["Answer: "]
    tok.train_from_iterator(corpus * 2, trainers.BpeTrainer(
        vocab_size=5000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert hf.tokenize(" 362") == ["Ġ36", "2"] and hf.tokenize("521") == ["5", "21"]
    plain = find_number_tokens(hf, 1000)
    spaced = find_number_tokens(hf, 1000, leading_space=True)
    assert (plain.p, spaced.p) == (521, 362)
    assert hf.convert_ids_to_tokens(int(spaced.token_ids[300])) == "Ġ300"
    assert hf.convert_ids_to_tokens(int(plain.token_ids[300])) == "300"


def test_sentencepiece_like_prefix_marker_is_ignored():
    """Llama-2 style: "5" encodes as "▁" "5"; digits 0..9 are the single-token numbers."""
    vocab = {t: i for i, t in enumerate(["<unk>", "▁"] + [str(d) for d in range(10)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(prepend_scheme="always"),
        pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert hf.tokenize("5") == ["▁", "5"]
    nums = find_number_tokens(hf, 100)
    assert nums.p == 10 and nums.token_ids.tolist() == [vocab[str(d)] for d in range(10)]
    # written with a leading space the number needs the separate "▁" token too
    assert find_number_tokens(hf, 100, leading_space=True).p == 0


def test_zero_splitting_gives_empty_range():
    tok = _wordpiece_with_gap(20, gap=0)
    nums = find_number_tokens(tok, 20)
    assert nums.p == 0 and nums.max_number == -1
    with pytest.raises(UserError, match="splits every number"):
        require_numbers(nums, 5)


def test_number_rows_are_ordered_by_value(number_tokenizer):
    nums = find_number_tokens(number_tokenizer, 200)
    rng = np.random.default_rng(0)
    W = torch.tensor(rng.standard_normal((len(number_tokenizer), 8)), dtype=torch.float32)
    rows = number_rows(W, nums)
    assert rows.shape == (201, 8) and rows.dtype == W.dtype
    assert torch.equal(rows[17], W[number_tokenizer.convert_tokens_to_ids("17")])
    # a vocabulary in scrambled order: rows still follow number values
    perm = rng.permutation(201)
    shuffled = NumberTokens(nums.token_ids[perm])
    assert torch.equal(number_rows(W, shuffled)[0], W[nums.token_ids[perm[0]]])
    with pytest.raises(UserError, match="does not match"):
        number_rows(W[:50], nums)
