"""How a tokenizer writes numbers: one token, one token per digit, or chunks of digits.

``number_format(tokenizer, max_number)`` encodes numbers the way an answer continues a
prompt that ends with " Answer: " (``str(n)``, or ``" " + str(n)`` with ``leading_space``; a
lone word-start marker that a SentencePiece tokenizer puts in front is dropped) and sorts the
tokenizer into a family:

* ``"single"``: every number 0..max_number is one token (GPT-2 up to 520, Llama-3 up to 999);
* ``"digits"``: one token per digit, the same token for a digit wherever it stands (Llama-2,
  Mistral, Qwen, Gemma, SmolLM, OLMo);
* ``"chunks"``: digits grouped left to right in chunks of up to w digits, each chunk one
  token (Llama-3 above 999: "12345" -> "123" "45");
* ``"mixed"``: anything else (GPT-2 above 520: "521" -> "5" "21").

Token texts come from ``convert_ids_to_tokens`` with the word-start markers "▁" (SentencePiece)
and "Ġ" (byte-level BPE) stripped, so nothing depends on how a tokenizer's decoder joins
pieces. ``parse`` reads the integer that a generated token sequence starts with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llm_fourier.errors import UserError
from llm_fourier.model.numbers import NumberTokens, find_number_tokens

FAMILIES = ("single", "digits", "chunks", "mixed")
MARKERS = ("▁", "Ġ", " ")  # word-start markers: SentencePiece, byte-level BPE, plain space
_SAMPLE_EXHAUSTIVE = 2000  # numbers 0..2000 are all checked; above, a fixed sample


def split_marker(raw: str | None) -> tuple[str, bool]:
    """(text without leading word-start markers, whether there was one); None -> ("", False)."""
    if raw is None:
        return "", False
    text = raw.lstrip("".join(MARKERS))
    return text, len(text) < len(raw)


def is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass
class NumberFormat:
    """The token sequences of numbers as answers, for one tokenizer (see the module doc)."""

    tokenizer: object = field(repr=False)
    family: str
    max_number: int
    leading_space: bool
    numbers: NumberTokens  # the single-token range 0..N
    digits: NumberTokens  # the digit tokens 0..9 (p < 10 if some digit is not one token)
    chunk_width: int = 0
    _encoded: dict = field(default_factory=dict, repr=False)
    _texts: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ token texts
    def text_of(self, token_id: int) -> tuple[str, bool]:
        """(text without word-start markers, starts a new word) of one token id."""
        if token_id not in self._texts:
            raw = self.tokenizer.convert_ids_to_tokens(int(token_id))
            self._texts[token_id] = split_marker(raw if isinstance(raw, str) else None)
        return self._texts[token_id]

    @property
    def stop_ids(self) -> set[int]:
        tok = self.tokenizer
        return {i for i in (tok.eos_token_id, tok.pad_token_id) if i is not None}

    # ------------------------------------------------------------------ encoding
    def encode_many(self, values: Iterable[int]) -> list[tuple[int, ...]]:
        """Token ids of each number written as an answer (cached); refuses numbers the
        tokenizer cannot write back exactly."""
        values = [int(v) for v in values]
        todo = sorted({v for v in values if v not in self._encoded})
        if any(v < 0 for v in todo):
            raise UserError(f"answers must be non-negative integers, got {min(todo)}.")
        space = " " if self.leading_space else ""
        for start in range(0, len(todo), 4096):
            block = todo[start:start + 4096]
            ids = self.tokenizer([space + str(v) for v in block],
                                 add_special_tokens=False)["input_ids"]
            for v, seq in zip(block, ids):
                self._encoded[v] = self._checked(v, list(seq))
        return [self._encoded[v] for v in values]

    def encode(self, value: int) -> tuple[int, ...]:
        return self.encode_many([value])[0]

    def _checked(self, value: int, seq: list[int]) -> tuple[int, ...]:
        if (not self.leading_space and len(seq) > 1 and self.text_of(seq[0]) == ("", True)):
            seq = seq[1:]  # a lone "▁" that SentencePiece puts before the text
        texts = [self.text_of(t)[0] for t in seq]
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if not seq or "".join(texts) != str(value) or (unk is not None and unk in seq):
            top = max(value, self.max_number)
            raise UserError(f"the tokenizer does not write {value} back as {value} (tokens "
                            f"{texts}), so answers up to {top} cannot be scored; use smaller "
                            f"operands (answers below {value}).")
        return tuple(seq)

    def digit_part(self, seq: Sequence[int]) -> list[int]:
        """The tokens of ``seq`` that carry digits (a leading lone space token dropped)."""
        return [t for t in seq if self.text_of(t)[0]]

    @property
    def digit_ids(self) -> np.ndarray:
        return self.digits.token_ids

    def places(self, value: int) -> list[int]:
        """Digit place (0 = units) written by each answer token of ``value`` in the digits
        family; -1 for a token that writes no digit (a leading space token)."""
        if self.family != "digits":
            raise UserError(f"digit places need one token per digit; this tokenizer writes "
                            f"numbers as {self.family} tokens.")
        seq = self.encode(value)
        out, place = [], len(str(value)) - 1
        for t in seq:
            if self.text_of(t)[0]:
                out.append(place)
                place -= 1
            else:
                out.append(-1)
        return out

    # ------------------------------------------------------------------ decoding
    def parse(self, ids: Sequence[int]) -> int:
        """The integer the tokens start with (-1 if they start with no number): word-start
        tokens without text before it are skipped; it ends at a stop token, a token that is
        not all digits, or one that starts a new word."""
        parser = NumberParser(self)
        for t in ids:
            if parser.feed(int(t)):
                break
        return parser.value

    # ------------------------------------------------------------------ report
    @property
    def readout(self) -> str | None:
        """Which lens and filters apply: "number" (answers are single tokens), "digit"
        (one token per digit) or None (chunks, mixed: whole-answer scoring only)."""
        return {"single": "number", "digits": "digit"}.get(self.family)

    def describe(self) -> dict:
        example = min(self.max_number, 12345)
        return {"family": self.family, "max_number": self.max_number,
                "leading_space": self.leading_space,
                "single_token_max": self.numbers.max_number,
                "digit_tokens": self.digits.p == 10, "chunk_width": self.chunk_width,
                "readout": self.readout,
                "example": {"number": example, "tokens": [
                    self.tokenizer.convert_ids_to_tokens(int(t))
                    for t in self.encode(example)]}}


class NumberParser:
    """Reads one number token by token; ``feed`` returns True once the number has ended."""

    def __init__(self, fmt: NumberFormat) -> None:
        self.fmt = fmt
        self.digits = ""
        self.done = False

    def feed(self, token_id: int) -> bool:
        if self.done:
            return True
        if token_id in self.fmt.stop_ids:
            self.done = True
            return True
        text, spaced = self.fmt.text_of(token_id)
        if not self.digits:
            if not text and spaced:
                return False  # a lone word-start marker before the number
            if is_digits(text):
                self.digits = text
                return False
            self.done = True
            return True
        if is_digits(text) and not spaced:
            self.digits += text
            return False
        self.done = True
        return True

    @property
    def value(self) -> int:
        return int(self.digits) if self.digits else -1


def _sample(max_number: int) -> list[int]:
    top = min(max_number, _SAMPLE_EXHAUSTIVE)
    extra = np.random.default_rng(0).integers(top + 1, max_number + 1, size=200) \
        if max_number > top else []
    tens = [10**k for k in range(len(str(max_number))) if 10**k <= max_number]
    return sorted(set(range(top + 1)) | {int(v) for v in extra} | set(tens) | {max_number})


def _chunks(text: str, width: int) -> list[str]:
    return [text[i:i + width] for i in range(0, len(text), width)]


def number_format(tokenizer, max_number: int, leading_space: bool = False) -> NumberFormat:
    """Discover how ``tokenizer`` writes the numbers 0..``max_number`` as answers.

    "single" is checked on every number; "digits" and "chunks" on all numbers up to 2000
    and a fixed sample of 200 larger ones, their powers of ten and ``max_number``.
    """
    if max_number < 0:
        raise UserError(f"max_number must be >= 0, got {max_number}.")
    singles = find_number_tokens(tokenizer, max_number, leading_space)
    digit_tokens = find_number_tokens(tokenizer, 9)
    fmt = NumberFormat(tokenizer, "mixed", max_number, leading_space, singles, digit_tokens)
    if singles.max_number >= max_number:
        fmt.family = "single"
        return fmt
    sample = _sample(max_number)
    parts = [fmt.digit_part(seq) for seq in fmt.encode_many(sample)]
    if digit_tokens.p == 10 and all(
            list(part) == [int(digit_tokens.token_ids[int(c)]) for c in str(v)]
            for v, part in zip(sample, parts)):
        fmt.family = "digits"
        return fmt
    texts = [[fmt.text_of(t)[0] for t in part] for part in parts]
    width = max(len(t[0]) for t in texts)
    if width > 1 and all(t == _chunks(str(v), width) for v, t in zip(sample, texts)):
        fmt.family, fmt.chunk_width = "chunks", width
    return fmt
