"""One readout for the lens, the filter ablations and the hidden-state ablations.

A ``NumberReadout`` is ``W``, the unembedding rows of value-ordered tokens (row v is the
token of value v), optionally behind the model's final norm:

* ``kind="number"``: the numbers 0..p-1 as single tokens (Zhou et al.: p = 521 for GPT-2),
  read at the one answer position; Fourier basis ``FourierBasis(p, basis_kind)``, the
  paper's by default.
* ``kind="digit"``: the ten digit tokens 0..9, read at every answer position of a
  tokenizer that writes one token per digit. Its basis is always the exact orthonormal DFT
  over the ten digits, ``FourierBasis(10, "dft")``: components k = 1..5 with periods
  10/k = 10, 5, 3.33, 2.5, 2; k = 5 (period 2) has only its cosine (-1)^d (the sine row is
  identically zero), so the constant, four cos/sin pairs and that cosine span all ten
  points. The paper's basis over ten points would use w_k = 2 pi k/9 (periods 9/k), which
  are not digit periods. Periods 10, 5, 2.5, 2 are k = 1, 2, 4, 5.

``filters`` builds the paper's low/high/keep projections from ``W`` (``probes.filters``);
``remove_periods`` the projection removing the components nearest given periods.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from llm_fourier.errors import UserError
from llm_fourier.model.numbers import NumberTokens, number_rows
from probes import FourierBasis, FourierFilter, high_pass, keep_only, low_pass, remove_components

READOUTS = ("number", "digit")
DIGIT_TAU = 3  # digits: low = periods 10 and 5 (k = 1, 2), high = 3.33, 2.5, 2 (k = 3..5)


@dataclass
class NumberReadout:
    """``W`` (p x D, float32, CPU): unembedding rows of the tokens of values 0..p-1."""

    W: Tensor
    norm: nn.Module | None = None
    kind: str = "number"

    @property
    def p(self) -> int:
        return self.W.shape[0]

    def logits(self, x: Tensor) -> Tensor:
        """Readout logits (... x p) of rows x (... x D), through the final norm if set, as
        float32 on x's device (W is copied there once)."""
        if self.norm is not None:
            param = next(self.norm.parameters(), None)
            dev, dtype = (param.device, param.dtype) if param is not None else (x.device, x.dtype)
            with torch.no_grad():
                x = self.norm(x.to(dev, dtype)).to(x.device, torch.float32)
        return x.to(torch.float32) @ self._W_on(x.device).T

    def _W_on(self, device: torch.device) -> Tensor:
        if self.W.device == device:
            return self.W
        cache = self.__dict__.setdefault("_W_cache", {})
        if device not in cache:
            cache[device] = self.W.to(device)
        return cache[device]

    def basis(self, basis_kind: str = "paper") -> FourierBasis:
        """The Fourier basis over the p values (the DFT over ten points for digits)."""
        return FourierBasis(self.p, "dft" if self.kind == "digit" else basis_kind)

    def _matrix(self) -> np.ndarray:
        return self.W.to(torch.float64).numpy()

    def filters(self, basis_kind: str = "paper", tau: int = 50,
                keep: Iterable[int] | None = None) -> dict[str, FourierFilter]:
        """``"low removed"`` = high-pass (removes 1 <= k < tau), ``"high removed"`` =
        low-pass (removes k >= tau); with ``keep``, ``"keep k=..."`` keeps only those."""
        basis = self.basis(basis_kind)
        K = basis.n_components
        check_tau(tau, basis, "the digit readout" if self.kind == "digit"
                  else f"the numbers 0..{self.p - 1}")
        W = self._matrix()
        filters = {"low removed": high_pass(W, basis, tau), "high removed": low_pass(W, basis, tau)}
        if keep:
            keep = sorted(set(int(k) for k in keep))
            if keep[0] < 1 or keep[-1] > K:
                raise UserError(f"--keep components must lie in 1..{K}, got {keep}.")
            filters[f"keep k={','.join(map(str, keep))}"] = keep_only(W, basis, keep)
        return filters

    def components_of(self, periods: Sequence[float], basis_kind: str = "paper") -> list[int]:
        """The components nearest ``periods`` (clipped to 1..K), sorted, without repeats."""
        basis = self.basis(basis_kind)
        return sorted({min(max(basis.k_of_period(T), 1), basis.n_components) for T in periods})

    def remove_periods(self, periods: Sequence[float], basis_kind: str = "paper"
                       ) -> FourierFilter:
        """Filter removing the components nearest ``periods`` of ``W @ x`` from x."""
        basis = self.basis(basis_kind)
        ks = self.components_of(periods, basis_kind)
        return remove_components(self._matrix(), basis, ks, "logit T=" + ",".join(
            f"{basis.period(k):g}" for k in ks))

    def describe(self, basis_kind: str = "paper") -> dict:
        basis = self.basis(basis_kind)
        what = ("digit tokens 0..9 at every answer position" if self.kind == "digit"
                else f"number tokens 0..{self.p - 1} at the answer position")
        return {"readout": self.kind, "p": self.p, "what": what,
                "final_norm": self.norm is not None, "basis": basis.kind,
                "periods": [round(float(T), 6) for T in basis.periods]}


def check_tau(tau: int, basis: FourierBasis, what: str, given: bool = True) -> None:
    """The one check of tau: within the components 1..K of ``basis`` (``what`` names it)."""
    if not 1 <= tau <= basis.n_components:
        raise UserError(f"--tau must lie in 1..{basis.n_components} for {what}, got {tau}"
                        f"{'' if given else ' (the default)'}; pass a smaller --tau.")


PAPER_TAU, PAPER_P = 50, 521  # Zhou et al.: tau 50 over the numbers 0..520


def default_tau(kind: str, basis: FourierBasis | None = None) -> int:
    """The low/high threshold a readout gets unless told: ``DIGIT_TAU`` for digits; for
    numbers Zhou et al.'s 50 where ``basis`` has that many components, else the component
    of the same period ((p-1)/k = 10.4, the paper's split), at least 2 when there are two."""
    if kind == "digit":
        return DIGIT_TAU
    if basis is None or basis.n_components >= PAPER_TAU:
        return PAPER_TAU
    k = round(PAPER_TAU * (basis.p - 1) / (PAPER_P - 1))
    return max(min(2, basis.n_components), min(k, basis.n_components))


def tau_reason(kind: str | None, tau: int, basis: FourierBasis | None) -> str:
    """Why ``default_tau`` chose ``tau`` (for the console and results.json)."""
    if kind == "digit":
        return "the digit readout's split: low = periods 10 and 5 (k = 1, 2)"
    if basis is None or tau == PAPER_TAU:
        return "Zhou et al.'s split: low = k < 50"
    return (f"the component of Zhou et al.'s split period over the numbers 0..{basis.p - 1} "
            f"(50 exceeds their {basis.n_components} components)")


def number_readout(lm, numbers: NumberTokens, final_norm: bool = False,
                   kind: str = "number") -> NumberReadout:
    """The readout of ``lm`` restricted to ``numbers`` (optionally through its final norm)."""
    if kind not in READOUTS:
        raise UserError(f"readout must be one of {', '.join(READOUTS)}, got {kind!r}.")
    W = number_rows(lm.unembedding(), numbers).detach().to("cpu", torch.float32)
    return NumberReadout(W, lm.final_norm if final_norm else None, kind)


def digit_readout(lm, fmt, final_norm: bool = False) -> NumberReadout:
    """The digit readout ``W_U[digit tokens 0..9]`` of a ``NumberFormat`` (any family that
    has the ten digits as tokens)."""
    if fmt.digits.p < 10:
        raise UserError("the tokenizer does not keep every digit 0..9 as one token, so there "
                        "is no digit readout; use the number readout or the hidden probes.")
    return number_readout(lm, fmt.digits, final_norm, kind="digit")


def readout_for(lm, fmt, max_answer: int, final_norm: bool = False) -> NumberReadout:
    """The readout a task's answers get: numbers 0..max_answer when they are single tokens,
    else the digit readout when the tokenizer writes one token per digit."""
    if fmt.readout == "number":
        numbers = NumberTokens(fmt.numbers.token_ids[:max_answer + 1], fmt.leading_space)
        return number_readout(lm, numbers, final_norm)
    if fmt.readout == "digit":
        return digit_readout(lm, fmt, final_norm)
    raise UserError(f"answers up to {max_answer} are written as {fmt.family} tokens "
                    f"(single tokens only up to {fmt.numbers.max_number}); the lens and "
                    "filters need single-token answers or one token per digit, so use "
                    "smaller operands (answers are still scored whole).")
