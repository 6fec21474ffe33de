"""word_level_tokenizer: single-token numbers or digits, template words, save/load."""

from __future__ import annotations

from transformers import AutoTokenizer

from llm_fourier.model.tasks import MUL_TEMPLATES, TEMPLATES
from llm_fourier.model.tokenizers import word_level_tokenizer


def test_numbers_are_single_tokens_and_templates_known(tmp_path):
    tok = word_level_tokenizer(300)
    for n in (0, 7, 99, 260, 300):
        ids = tok.encode(str(n), add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [str(n)]
    assert len(tok.encode("301", add_special_tokens=False)) == 1  # out of range: <unk>
    assert tok.encode("301", add_special_tokens=False) == [tok.unk_token_id]
    for t in TEMPLATES + MUL_TEMPLATES:
        ids = tok.encode(t.format(a=15, b=93) + " Answer: ", add_special_tokens=False)
        assert tok.unk_token_id not in ids, t
    pieces = tok.tokenize("Put together 15 and 93. Answer: ")
    assert pieces == ["Put", "together", "15", "and", "93", ".", "Answer", ":"]
    assert {tok.pad_token, tok.eos_token, tok.unk_token} == {"<pad>", "<eos>", "<unk>"}


def test_split_digits(tmp_path):
    tok = word_level_tokenizer(300, split_digits=True)
    assert tok.tokenize("Calculate 108 + 7.") == ["Calculate", "1", "0", "8", "+", "7", "."]
    vocab = tok.get_vocab()
    assert [vocab[str(d)] for d in range(10)] == list(range(4, 14))  # after the 4 specials
    assert not any(t.isdigit() and len(t) > 1 for t in vocab)  # no multi-digit tokens


def test_survives_save_and_auto_load(tmp_path):
    for split in (False, True):
        tok = word_level_tokenizer(50, split_digits=split)
        tok.save_pretrained(tmp_path / str(split))
        back = AutoTokenizer.from_pretrained(tmp_path / str(split))
        text = "What is the sum of 12 and 38? Answer: "
        assert back.encode(text) == tok.encode(text)
        assert back.pad_token_id == tok.pad_token_id == 0
        assert back.eos_token_id == tok.eos_token_id
        assert back.get_vocab() == tok.get_vocab()


def test_three_digit_chunks_like_llama3(tmp_path):
    tok = word_level_tokenizer(0, chunk_digits=3)
    assert tok.tokenize("Calculate 12345 + 7.") == ["Calculate", "123", "45", "+", "7", "."]
    assert tok.tokenize("1000050") == ["100", "005", "0"]  # left to right, zeros kept
    vocab = tok.get_vocab()
    assert sum(t.isdigit() for t in vocab) == 10 + 100 + 1000
    assert tok.unk_token_id not in tok.encode("What is the sum of 999 and 4567? Answer: ")
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.tokenize("98765") == ["987", "65"]
