"""find_number_tokens / require_numbers / number_rows on number-keeping, digit-splitting
and gapped tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from llm_fourier.errors import UserError
from llm_fourier.numbers import NumberTokens, find_number_tokens, number_rows, require_numbers


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
    with pytest.raises(UserError, match=r"answers go up to 520 .* 0\.\.9 .*hidden-state"):
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
