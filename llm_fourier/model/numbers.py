"""Which integers a tokenizer keeps as one token, and the number rows of W_E / W_U.

GPT-2 keeps 0..520 as single tokens written without a leading space (0..361 with one),
Llama-3 keeps 0..999, Llama-2, Mistral and Qwen split numbers into digits (0..9). The
Fourier analysis needs the contiguous range 0..p-1, with rows ordered by number value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llm_fourier.errors import UserError

# a lone word-start marker that SentencePiece tokenizers add before text ("5" -> "▁" "5")
_PREFIX_MARKERS = {"▁", ""}
_BLOCK = 1024  # numbers encoded per tokenizer call


@dataclass
class NumberTokens:
    """Token ids of the numbers 0..p-1 (``token_ids[n]`` is the id of number n)."""

    token_ids: np.ndarray
    leading_space: bool = False

    @property
    def p(self) -> int:
        return int(len(self.token_ids))

    @property
    def max_number(self) -> int:
        return self.p - 1

    def describe(self) -> dict:
        return {"min": 0, "max": self.max_number, "p": self.p,
                "leading_space": self.leading_space}


def _single_token(tokenizer, ids: list[int], n: int, leading_space: bool) -> int | None:
    """The id if ``ids`` is one token that decodes to ``n``. Without a leading space, a lone
    "▁" the tokenizer added in front is ignored; with one, a separate space token means the
    number does not fit in one token."""
    if (not leading_space and len(ids) == 2
            and tokenizer.convert_ids_to_tokens(ids[0]) in _PREFIX_MARKERS):
        ids = ids[1:]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        return None
    return ids[0] if tokenizer.decode(ids).strip() == str(n) else None


def find_number_tokens(tokenizer, max_number: int = 1000,
                       leading_space: bool = False) -> NumberTokens:
    """The largest range 0..N (N <= ``max_number``) of integers that each encode to exactly
    one token as an answer (``str(n)``, or ``" " + str(n)`` with ``leading_space``).

    The range stops at the first number that splits (p = 0 when "0" itself splits).
    """
    if max_number < 0:
        raise UserError(f"max_number must be >= 0, got {max_number}.")
    ids: list[int] = []
    for start in range(0, max_number + 1, _BLOCK):  # in blocks: most tokenizers stop early
        block = range(start, min(start + _BLOCK, max_number + 1))
        texts = [(" " if leading_space else "") + str(n) for n in block]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for n, tokens in zip(block, encoded):
            token = _single_token(tokenizer, list(tokens), n, leading_space)
            if token is None:
                return NumberTokens(np.asarray(ids, dtype=np.int64), leading_space)
            ids.append(token)
    return NumberTokens(np.asarray(ids, dtype=np.int64), leading_space)


def require_numbers(numbers: NumberTokens, max_answer: int, tokenizer_name: str = "") -> None:
    """Refuse a task whose answers 0..``max_answer`` leave the single-token range."""
    if max_answer <= numbers.max_number:
        return
    who = f"the tokenizer of {tokenizer_name}" if tokenizer_name else "this tokenizer"
    space = " (with a leading space)" if numbers.leading_space else ""
    if numbers.p == 0:
        have = f"{who} splits every number into several tokens{space}"
    else:
        have = f"{who} keeps only 0..{numbers.max_number} as single tokens{space}"
    raise UserError(f"answers go up to {max_answer} but {have}; use smaller operands "
                    f"(answers <= {max(numbers.max_number, 0)}), or score whole answers with "
                    "the tokenizer's number_format (the commands do this by themselves).")


def number_rows(matrix: torch.Tensor, numbers: NumberTokens,
                what: str = "the matrix") -> torch.Tensor:
    """Rows of ``matrix`` (vocab x D; ``what`` names it: "W_U", "W_E") for the numbers
    0..p-1, ordered by number value; same dtype and device as ``matrix``. Rows holding NaN
    or inf are refused in one sentence: every analysis of them would be null or wrong."""
    if numbers.p and int(numbers.token_ids.max()) >= matrix.shape[0]:
        raise UserError(f"number token id {int(numbers.token_ids.max())} is outside the "
                        f"matrix's {matrix.shape[0]} rows; the tokenizer does not match the "
                        "model.")
    index = torch.as_tensor(numbers.token_ids, dtype=torch.long, device=matrix.device)
    rows = matrix.index_select(0, index)
    bad = (~torch.isfinite(rows)).any(dim=-1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        first = int(numbers.token_ids[bad[0]])
        raise UserError(f"{what} holds NaN or inf in the rows of the numbers {shown} ("
                        f"{len(bad)} in all; token id {first} first), so every spectrum and "
                        "score of them would be meaningless; the weights are damaged: copy "
                        "or download them again.")
    return rows


def value_of_token(numbers: NumberTokens, vocab_size: int) -> torch.Tensor:
    """Lookup table token id -> number value (-1 for every other token)."""
    size = max(vocab_size, int(numbers.token_ids.max()) + 1 if numbers.p else 0)
    table = torch.full((size,), -1, dtype=torch.long)
    table[torch.as_tensor(numbers.token_ids, dtype=torch.long)] = torch.arange(numbers.p)
    return table


def task_numbers(tokenizer, max_answer: int, name: str = "") -> NumberTokens:
    """The number tokens 0..``max_answer`` of a task's answers (refusing tokenizers that
    split them): the number space is the answer range, as in the paper (p = 521)."""
    found = find_number_tokens(tokenizer, max_number=max_answer)
    require_numbers(found, max_answer, name)
    return NumberTokens(found.token_ids[:max_answer + 1], found.leading_space)
