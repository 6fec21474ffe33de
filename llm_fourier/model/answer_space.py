"""The answer space of a run, built once from the settings: the task's largest answer, the
tokenizer's ``NumberFormat``, the readout it implies ("number": ``W_U[0..max_answer]``;
"digit": ``W_U[digits 0..9]`` with the DFT over ten points; None: whole answers only), the
Fourier basis and tau with its one check. Every analysis that reads answers takes one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llm_fourier.errors import UserError
from llm_fourier.model.number_format import NumberFormat, number_format
from llm_fourier.model.numbers import NumberTokens, find_number_tokens
from llm_fourier.model.readout import (
    NumberReadout,
    check_tau,
    default_tau,
    readout_for,
    tau_reason,
)
from llm_fourier.model.tasks import largest_answer
from probes import FourierBasis, FourierFilter

__all__ = ["AnswerSpace", "check_tau", "fitting_operands", "largest_answer"]

MIN_FITTED_OPERAND = 9  # below 0..9 a number readout says little: score whole answers


def fitting_operands(tokenizer, op: str, preferred: int) -> tuple[int, str]:
    """The operand range a command uses unless told: ``preferred`` (Zhou et al.'s 260) when
    its answers get a readout (single tokens, or one token per digit), else the largest
    range whose answers stay single tokens, with the reason in words."""
    try:
        fmt = number_format(tokenizer, largest_answer(op, preferred))
    except UserError:  # a tokenizer that cannot write every answer (a word-level one)
        fmt = None
    if fmt is not None and fmt.readout is not None:
        return preferred, (f"answers 0..{largest_answer(op, preferred)} are "
                           f"{'single tokens' if fmt.readout == 'number' else 'digit tokens'}")
    top = fmt.numbers.max_number if fmt is not None else \
        find_number_tokens(tokenizer, largest_answer(op, preferred)).max_number
    m = next((m for m in range(preferred, 0, -1) if largest_answer(op, m) <= top), 0)
    if m < MIN_FITTED_OPERAND:
        family = fmt.family if fmt is not None else "several"
        return preferred, (f"answers up to {largest_answer(op, preferred)} are {family} "
                           "tokens and few numbers are single tokens: whole answers are scored")
    return m, (f"the tokenizer keeps only 0..{top} as single tokens, so operands 0..{m} "
               "keep every answer one token")


@dataclass
class AnswerSpace:
    """The answers 0..``max_answer`` as the tokenizer writes them and the readout of them."""

    fmt: NumberFormat
    max_answer: int
    basis_kind: str = "paper"
    tau: int | None = None  # resolved by ``build``: None only without a readout
    _readouts: dict = field(default_factory=dict, repr=False)
    _filters: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, fmt_or_tokenizer, max_answer: int, *, basis_kind: str = "paper",
              tau: int | None = None) -> AnswerSpace:
        """The space of a task's answers; ``tau`` defaults to the readout's (50 numbers,
        3 digits) and is checked here, the one place."""
        fmt = fmt_or_tokenizer if isinstance(fmt_or_tokenizer, NumberFormat) else \
            number_format(fmt_or_tokenizer, max_answer)
        space = cls(fmt, int(max_answer), basis_kind)
        if space.kind is not None:
            space.tau = default_tau(space.kind, space.basis) if tau is None else int(tau)
            check_tau(space.tau, space.basis, space.what, given=tau is not None)
        return space

    @property
    def kind(self) -> str | None:
        """"number", "digit" or None (chunks, mixed: whole answers scored, no readout)."""
        return self.fmt.readout

    @property
    def single(self) -> bool:
        return self.fmt.family == "single"

    @property
    def numbers(self) -> NumberTokens:
        """The single-token numbers 0..max_answer (single-token formats only)."""
        if not self.single:
            raise UserError(f"answers up to {self.max_answer} are not single tokens.")
        return NumberTokens(self.fmt.numbers.token_ids[:self.max_answer + 1],
                            self.fmt.leading_space)

    @property
    def basis(self) -> FourierBasis | None:
        if self.kind == "number":
            return FourierBasis(self.max_answer + 1, self.basis_kind)
        return FourierBasis(10, "dft") if self.kind == "digit" else None

    @property
    def what(self) -> str:
        return ("the digit readout (components 1..5: periods 10, 5, 3.33, 2.5, 2)"
                if self.kind == "digit" else f"the numbers 0..{self.max_answer}")

    def tau_chosen(self) -> dict | None:
        """What the default tau is and why (None without a readout)."""
        if self.kind is None:
            return None
        return {"value": self.tau, "why": tau_reason(self.kind, self.tau, self.basis)}

    def check_keep(self, keep: Iterable[int] | None) -> list[int]:
        """``--keep`` components, checked against the basis."""
        keep = sorted(set(int(k) for k in keep or []))
        if keep and self.basis is not None:
            K = self.basis.n_components
            if keep[0] < 1 or keep[-1] > K:
                raise UserError(f"--keep components must lie in 1..{K} for {self.what}, got "
                                f"{keep}.")
        return keep

    def readout(self, lm, final_norm: bool = False) -> NumberReadout:
        """``W_U`` rows of the answers' tokens, read once per (model, final_norm)."""
        key = (id(lm), final_norm)
        if key not in self._readouts:
            self._readouts[key] = readout_for(lm, self.fmt, self.max_answer, final_norm)
        return self._readouts[key]

    def filters(self, lm, keep: Iterable[int] | None = None) -> dict[str, FourierFilter]:
        """The Table 1 filters (low removed, high removed, keep k=...) at this tau, built
        once per model and ``keep``."""
        key = (id(lm), tuple(self.check_keep(keep)))
        if key not in self._filters:
            self._filters[key] = self.readout(lm).filters(self.basis_kind, self.tau, key[1])
        return self._filters[key]

    def describe(self, readout: NumberReadout | None = None) -> dict:
        """results.json's ``numbers`` and ``readout`` entries."""
        numbers = self.fmt.describe()
        if self.kind == "number":
            numbers["p"] = self.max_answer + 1
        return {"numbers": numbers,
                "readout": readout.describe(self.basis_kind) if readout is not None else None}
