"""Number frequencies counted in a text file: the convergent-evolution control.

Spikes at periods 2, 5, 10 also appear in how often numbers occur in text (round numbers
are frequent), so an embedding's Fourier spectrum is read beside the spectrum of the raw
number frequency (``hidden.frequency_control``). Two ways to count, both returning one count
per number 0..p-1:

* ``"text"``: whole numbers as the text writes them: maximal runs of ASCII digits, with
  runs joined by ``.`` or ``,`` between digits taken as one token ("3.14", "1,000" are not
  whole numbers in 0..p-1 and are not counted). A run counts as the number it spells when
  it has no leading zero ("0" itself counts, "007" does not) and is below p. Letters
  around a run do not matter ("4th" counts 4). Any tokenizer; the default.
* ``"tokens"``: occurrences of each number's own token id after tokenizing the text with
  the model's tokenizer (numbers must be single tokens: ``numbers.find_number_tokens``).
  This is the frequency the embedding rows were trained on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from llm_fourier.errors import UserError
from llm_fourier.output.reading import read_lines

COUNT_MODES = ("text", "tokens")
_NUMBER = re.compile(r"[0-9]+(?:[.,][0-9]+)*")


def count_numbers(lines: Iterable[str], p: int) -> np.ndarray:
    """Occurrences of each whole number 0..p-1 written in ``lines`` (mode "text")."""
    counts = np.zeros(p, dtype=np.int64)
    for line in lines:
        for run in _NUMBER.findall(line):
            whole = run.isdigit() and (len(run) == 1 or run[0] != "0")
            if whole and len(run) <= len(str(p - 1)) and int(run) < p:
                counts[int(run)] += 1
    return counts


def count_number_tokens(lines: Iterable[str], tokenizer, token_ids: Sequence[int],
                        batch_lines: int = 1000) -> np.ndarray:
    """Occurrences of ``token_ids[n]`` (the token of number n) in the tokenized ``lines``."""
    ids = np.asarray(token_ids, dtype=np.int64)
    index = {int(t): n for n, t in enumerate(ids)}
    counts = np.zeros(len(ids), dtype=np.int64)
    rest = iter(lines)
    while batch := list(islice(rest, batch_lines)):
        for seq in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            for t in seq:
                n = index.get(int(t))
                if n is not None:
                    counts[n] += 1
    return counts


def corpus_counts(path: str | Path, p: int, mode: str = "text", tokenizer=None,
                  token_ids: Sequence[int] | None = None) -> np.ndarray:
    """Counts of the numbers 0..p-1 in the text file ``path`` (see the module docstring).

    Raises ``UserError`` when the file is missing or not text, when mode "tokens" lacks the
    tokenizer or single-token numbers up to p-1, or when no number 0..p-1 occurs at all.
    """
    if mode not in COUNT_MODES:
        raise UserError(f"--corpus-count must be one of {', '.join(COUNT_MODES)}, "
                        f"got {mode!r}.")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"corpus file {path} does not exist; give a plain-text file.")
    if p < 3:
        raise UserError(f"a frequency spectrum needs at least 3 numbers, got p={p}.")
    if mode == "tokens" and (tokenizer is None or token_ids is None or len(token_ids) < p):
        have = 0 if token_ids is None else len(token_ids)
        raise UserError(f"counting number tokens needs numbers 0..{p - 1} as single tokens "
                        f"(this tokenizer keeps {have}); use --corpus-count text.")
    lines = read_lines(path, "corpus file")  # any size, streamed
    counts = (count_numbers(lines, p) if mode == "text"
              else count_number_tokens(lines, tokenizer, list(token_ids)[:p]))
    if counts.sum() == 0:
        raise UserError(f"no number 0..{p - 1} occurs in {path}; give a corpus with "
                        "numbers in it.")
    return counts
