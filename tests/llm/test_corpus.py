"""Number frequencies counted in a text file, and their spectrum beside an embedding's."""

import numpy as np
import pytest

from llm_fourier.analyses.corpus import corpus_counts, count_number_tokens, count_numbers
from llm_fourier.analyses.hidden_states import frequency_control
from llm_fourier.errors import UserError
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.output.reading import read_lines

TEXT = """In 1999 there were 12 cats and 7 dogs; 12 more came.
Pi is 3.14, a crowd of 1,000 and agent 007 met 0 times, then 10 and 20 and 20th place.
Numbers at the end: 7. 199 5x 100
"""


def test_whole_numbers_in_text_are_counted_by_hand():
    counts = count_numbers(TEXT.splitlines(), p=200)
    expected = np.zeros(200, dtype=int)
    # 1999 >= p; 3.14 and 1,000 are not whole numbers; 007 has a leading zero
    for n in (12, 12, 7, 0, 10, 20, 20, 7, 199, 5, 100):
        expected[n] += 1
    np.testing.assert_array_equal(counts, expected)


def test_corpus_counts_from_a_file_in_both_modes(tmp_path, number_tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    text = corpus_counts(path, p=200)
    assert text[12] == 2 and text[7] == 2 and text.sum() == 11
    numbers = find_number_tokens(number_tokenizer, max_number=200)
    tokens = corpus_counts(path, p=200, mode="tokens", tokenizer=number_tokenizer,
                           token_ids=numbers.token_ids)
    # a plain loop over the tokenized text
    ids = [t for line in TEXT.splitlines()
           for t in number_tokenizer(line, add_special_tokens=False)["input_ids"]]
    expected = [ids.count(int(numbers.token_ids[n])) for n in range(200)]
    np.testing.assert_array_equal(tokens, expected)
    assert tokens[12] == 2 and tokens[3] == 1  # the word-level tokenizer splits "3.14"
    np.testing.assert_array_equal(
        count_number_tokens(TEXT.splitlines(), number_tokenizer, numbers.token_ids[:200],
                            batch_lines=1), tokens)


def test_corpus_errors_are_one_sentence(tmp_path, digit_tokenizer):
    with pytest.raises(UserError, match="does not exist"):
        corpus_counts(tmp_path / "missing.txt", p=100)
    (tmp_path / "words.txt").write_text("no digits here\n")
    with pytest.raises(UserError, match="no number"):
        corpus_counts(tmp_path / "words.txt", p=100)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81 12")
    with pytest.raises(UserError, match="UTF-8"):
        corpus_counts(tmp_path / "bin.txt", p=100)
    digits = find_number_tokens(digit_tokenizer, max_number=100)
    with pytest.raises(UserError, match="single tokens"):
        corpus_counts(tmp_path / "words.txt", p=100, mode="tokens", tokenizer=digit_tokenizer,
                      token_ids=digits.token_ids)
    with pytest.raises(UserError, match="corpus-count"):
        corpus_counts(tmp_path / "words.txt", p=100, mode="words")


def test_round_numbers_in_a_corpus_give_the_control_spike(tmp_path):
    """A corpus where multiples of 10 are frequent: the control spectrum has periods 10, 5,
    and the spikes are shared with an embedding that carries a period-10 circle."""
    rng = np.random.default_rng(0)
    words = [str(n) for n in rng.integers(0, 101, 3000)]
    words += [str(10 * k) for k in rng.integers(0, 11, 1500)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(" ".join(words[i:i + 20]) for i in range(0, len(words), 20)))
    counts = corpus_counts(path, p=101)
    assert counts[::10].min() > 3 * np.median(counts)
    n = np.arange(101)
    emb = rng.standard_normal((101, 8))
    emb[:, 0] += 5 * np.cos(2 * np.pi * n / 10)
    rep = frequency_control(counts.astype(float), emb)
    assert {10.0, 5.0} <= {o["period"] for o in rep["control"]["outliers"]}
    assert 10.0 in rep["shared_outlier_periods"]


def test_the_corpus_is_read_as_user_text_line_by_line(tmp_path):
    """Through ``output.reading.read_lines``: a byte-order mark is dropped, a bad byte past
    the decoder's first chunk is named by its offset in the file, an unreadable path is one
    sentence, and the counts equal those of the text read whole."""
    text = "\ufeff" + TEXT * 400
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    assert next(read_lines(tmp_path / "big.txt")).startswith("In 1999")
    np.testing.assert_array_equal(corpus_counts(tmp_path / "big.txt", p=200),
                                  count_numbers(text.splitlines(), p=200))
    head = ("1 2 3\n" * 5000).encode()  # 30 000 bytes: well past an 8 KiB read
    (tmp_path / "late.txt").write_bytes(head + b"4 \xff 5\n")
    where = len(head) + 2
    with pytest.raises(UserError, match=f"corpus file .*late.txt is not UTF-8 text "
                                        rf"\(byte {where}: b'\\xff'\)"):
        corpus_counts(tmp_path / "late.txt", p=10)
    with pytest.raises(UserError, match="cannot read file"):
        list(read_lines(tmp_path))  # a folder
