"""number_format: the family of each tokenizer, answer tokens, places, parsing."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llm_fourier.errors import UserError
from llm_fourier.model.number_format import number_format, split_marker
from tests.llm.families import family_tokenizer


def _ids(tok, pieces):
    return tok.convert_tokens_to_ids(pieces)


def test_the_three_word_level_families():
    single = number_format(family_tokenizer("single"), 150)
    assert single.family == "single" and single.readout == "number"
    assert single.encode(108) == tuple(_ids(single.tokenizer, ["108"]))
    assert single.numbers.p == 151

    digits = number_format(family_tokenizer("digits"), 1998)
    tok = digits.tokenizer
    assert digits.family == "digits" and digits.readout == "digit"
    assert digits.encode(108) == tuple(_ids(tok, ["1", "0", "8"]))
    assert digits.places(108) == [2, 1, 0] and digits.places(7) == [0]
    assert digits.digit_ids.tolist() == _ids(tok, [str(d) for d in range(10)])
    assert number_format(tok, 9).family == "single"  # 0..9 are single tokens

    chunks = number_format(family_tokenizer("chunks"), 123456)
    tok = chunks.tokenizer
    assert (chunks.family, chunks.chunk_width, chunks.readout) == ("chunks", 3, None)
    assert chunks.encode(12345) == tuple(_ids(tok, ["123", "45"]))
    assert chunks.encode(100050) == tuple(_ids(tok, ["100", "050"]))
    assert number_format(tok, 999).family == "single"  # Llama-3 keeps 0..999 whole
    with pytest.raises(UserError, match="one token per digit"):
        chunks.places(12345)
    assert chunks.describe()["example"] == {"number": 12345, "tokens": ["123", "45"]}


def test_parse_reads_the_leading_number():
    fmt = number_format(family_tokenizer("digits"), 99)
    tok = fmt.tokenizer
    assert fmt.parse(_ids(tok, ["1", "0", "8", ".", "3"])) == 108
    assert fmt.parse(_ids(tok, ["4", "2"])) == 42  # ran out of tokens: what was read
    assert fmt.parse(_ids(tok, ["Answer", "1"])) == -1
    assert fmt.parse(_ids(tok, ["7", "<eos>", "7"])) == 7
    assert fmt.parse([]) == -1
    chunks = number_format(family_tokenizer("chunks"), 99999)
    # a chunk tokenizer's pieces join into one number until a non-digit token
    assert chunks.parse(_ids(chunks.tokenizer, ["123", "45", "+", "6"])) == 12345


def test_sentencepiece_like_digits_with_word_markers():
    """Llama-2 style: words carry "▁", "5" alone encodes as "▁" "5", digits are split."""
    words = ["▁Answer", ":", "▁and", "▁"]
    vocab = {t: i for i, t in enumerate(["<unk>", "</s>"] + words + [str(d) for d in range(10)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(prepend_scheme="always"),
        pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(prepend_scheme="always")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    assert hf.tokenize("108") == ["▁", "1", "0", "8"]
    fmt = number_format(hf, 500)
    assert fmt.family == "digits"
    assert fmt.encode(108) == tuple(vocab[c] for c in "108")  # the lone "▁" is dropped
    # generation after " Answer: ": a lone marker, digits, then a new word
    assert fmt.parse([vocab["▁"], vocab["1"], vocab["2"], vocab["▁and"], vocab["3"]]) == 12
    assert fmt.parse([vocab["1"], vocab["</s>"], vocab["3"]]) == 1
    assert split_marker("▁and") == ("and", True) and split_marker("Ġ12") == ("12", True)


def test_gpt2_like_bpe_single_then_mixed():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [str(n) for n in range(521)] + ["Answer: "]
    tok.train_from_iterator(corpus * 2, trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert number_format(hf, 520).family == "single"
    mixed = number_format(hf, 700)
    assert mixed.family == "mixed" and mixed.readout is None
    pieces = [hf.convert_ids_to_tokens(t) for t in mixed.encode(600)]
    assert len(pieces) == 2 and "".join(pieces) == "600"  # BPE merges, not digits/chunks
    assert mixed.parse(list(mixed.encode(600)) + list(mixed.encode(7))) == 6007


def test_unwritable_numbers_are_user_errors():
    fmt = number_format(family_tokenizer("single"), 200)
    with pytest.raises(UserError, match="does not write 201"):
        fmt.encode(201)
    with pytest.raises(UserError, match="max_number"):
        number_format(family_tokenizer("single"), -1)
