"""Logit lens onto the number tokens and per-layer Fourier spectra of module outputs.

The number logits of a module output x are ``W_U[numbers] @ x`` (numbers 0..p-1 in order;
``readout.NumberReadout``, shared with the ablations); ``final_norm=True`` first applies the
model's final norm (the standard logit lens). Default off, as in the paper's filters: a
LayerNorm bias would add the same ``W_U beta`` spectrum to every module. One-token-per-digit
tokenizers get the digit lens of ``llm_fourier.analyses.digits`` instead.

``run_lens`` captures attention, MLP and residual-stream (block) outputs at the last real
token in one pass of ``model.engine`` (sharded under a process group, sums folded in batch
order, so the result equals the single-process run) and accumulates per layer the lens
accuracy (exact, within 2, within 10; argmax over the number tokens) and the data-set mean
Fourier spectrum of the number logits, from which outliers and low/high energy are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.engine import Condition, Engine, PromptSet, Store
from llm_fourier.model.numbers import NumberTokens, require_numbers, value_of_token
from llm_fourier.model.readout import NumberReadout, number_readout
from llm_fourier.model.tasks import Example
from probes import FourierBasis, Spectrum, component_magnitudes

LENS_ROLES = ("attn", "mlp", "block")
__all__ = ["LENS_ROLES", "TOLERANCES", "LensAccumulator", "NumberReadout", "layer_summary",
           "number_readout", "run_lens", "spectra_matrix"]
TOLERANCES = {"exact": 0, "within_2": 2, "within_10": 10}
_PREDICTED = "model prediction"  # key of a batch's predictions among its per-role stats


@dataclass
class LensAccumulator:
    """Running sums over batches of number logits (N x L x p) for one role."""

    n_layers: int
    basis: FourierBasis
    tolerances: dict = field(default_factory=lambda: dict(TOLERANCES))
    n: int = 0
    hits: dict = field(default_factory=dict)
    magnitude_sum: Tensor | float = 0.0  # L x (K + 1), float64
    energy_sum: Tensor | float = 0.0  # L x (K + 1): sums of squared magnitudes

    def batch_stats(self, logits: Tensor, answers: Tensor) -> dict:
        """One batch's sums (hits per tolerance, magnitudes, count), to ``add`` in order."""
        pred = logits.argmax(-1)  # N x L: index = number value
        err = (pred - answers.to(pred.device)[:, None]).abs()
        hits = {name: (err <= tol).sum(0).to(torch.float64).cpu()
                for name, tol in self.tolerances.items()}
        mag = component_magnitudes(logits.to(torch.float64), self.basis, axis=-1)
        return {"n": logits.shape[0], "hits": hits, "magnitude_sum": mag.sum(0).cpu(),
                "energy_sum": (mag * mag).sum(0).cpu()}

    def add(self, stats: dict) -> None:
        for name, total in merge_stats(vars(self), stats).items():  # n, hits and the sums
            setattr(self, name, total)

    def accuracy(self) -> list[dict]:
        return [{"layer": i, **{k: float(v[i]) / max(self.n, 1) for k, v in self.hits.items()}}
                for i in range(self.n_layers)]

    def spectra(self) -> list[Spectrum]:
        """One data-set-averaged spectrum per layer: the mean magnitude over examples, with
        the mean energy (squared magnitude) per example kept beside it."""
        n = max(self.n, 1)
        mean, energy = (self.magnitude_sum / n).numpy(), (self.energy_sum / n).numpy()
        return [Spectrum(self.basis, mean[i], energy[i]) for i in range(self.n_layers)]


PEAK_RULE = "the largest local maxima at k >= tau (the paper's annotation of lens spectra)"


def layer_summary(spectra: Sequence[Spectrum], tau: int = 50, top: int | None = 10) -> list[dict]:
    """Per layer: the spectrum's peaks at k >= tau as ``outliers`` ({k, period, magnitude},
    largest first; ``PEAK_RULE``, never the k = 1 trend) and the low/high split of both the
    mean spectrum's energy and the mean energy per prompt."""
    return [{"layer": i, "outliers": [o.as_dict() for o in s.peaks(min_k=tau, top=top)],
             **s.low_high(tau)} for i, s in enumerate(spectra)]


def merge_stats(a: dict | None, b: dict) -> dict:
    """``a`` plus the ``batch_stats`` sums ``b``, key by key (a missing sum is 0)."""
    if a is None:
        return b
    return {k: merge_stats(a.get(k), v) if isinstance(v, dict) else a.get(k, 0) + v
            for k, v in b.items()}


def lens_pass(lm, prompts: PromptSet, roles: Sequence[str], reduce: Callable,
              accs: dict[str, LensAccumulator], *, rows: dict | None = None,
              store: Store | None = None, progress: bool = True, desc: str = "lens",
              **spec) -> list:
    """The lens's one engine pass (no edit): ``reduce(batch, out)`` per batch (float32 rows
    on the model's input device, where the readout and spectra are fast) returns sums (on
    the CPU) keyed as ``accs``, added in batch order; returns the units.
    ``rows``: a dict that receives, from the same forward, each role's rows at the last
    prompt token (N x L x D, example order) and ``"token_ids"``, that token's id."""
    def unit(batch, cond, out) -> dict:
        got = reduce(batch, out)
        if rows is not None:  # left padded: the last column is the last prompt token
            got |= {f"rows/{r}": out.rows[r][:, 0].cpu() for r in roles}
            got["rows/token_ids"] = batch.enc["input_ids"][:, -1].cpu()
        return got

    units = Engine(lm, prompts).run([Condition("lens")], unit, roles=roles, store=store,
                                    progress=progress, desc=desc,
                                    rows_device=lm.input_device, **spec)["lens"]
    for got in units:  # in batch order
        for key, sums in got.items():
            if key in accs:
                accs[key].add(sums)
    if rows is not None:
        rows |= {key.removeprefix("rows/"): prompts.scatter([u[key] for u in units])
                 for key in units[0] if key.startswith("rows/")}
    return units


def run_lens(lm, examples: Sequence[Example], numbers: NumberTokens | AnswerSpace, *,
             roles: Sequence[str] = LENS_ROLES, final_norm: bool = False,
             basis_kind: str = "paper", batch_size: int = 16, store: Store | None = None,
             progress: bool = True, predictions: list[int] | None = None,
             rows: dict | None = None) -> dict[str, LensAccumulator]:
    """Lens accuracy and spectra per role and layer over ``examples``.

    ``numbers``: the single-token numbers, or an ``AnswerSpace`` (its basis and readout).
    ``store`` keeps each batch's sums (resume). ``predictions``: a list that receives the
    model's own prediction of every example, in order, from the same forward: its next
    token (argmax over the vocabulary) as a number, -1 for any other token. ``rows``: see
    ``lens_pass``.
    """
    if not examples:
        raise UserError("no examples to run the lens on; use a larger operand range or "
                        "another split.")
    if isinstance(numbers, AnswerSpace):
        readout, basis = numbers.readout(lm, final_norm), numbers.basis
        numbers = numbers.numbers
    else:
        readout = number_readout(lm, numbers, final_norm)
        basis = FourierBasis(numbers.p, basis_kind)
    require_numbers(numbers, max(e.answer for e in examples), getattr(lm, "name", ""))
    accs = {r: LensAccumulator(lm.n_layers, basis) for r in roles}
    answers = torch.tensor([e.answer for e in examples])
    prompts = PromptSet.build(lm, examples, batch_size)

    def reduce(batch, out) -> dict:
        stats = {r: accs[r].batch_stats(readout.logits(out.rows[r][:, 0]),
                                        answers[batch.rows]) for r in roles}
        logits = out.logits[:, 0]
        stats[_PREDICTED] = value_of_token(numbers, logits.shape[-1])[logits.argmax(-1).cpu()]
        return stats

    units = lens_pass(lm, prompts, roles, reduce, accs, rows=rows, store=store,
                      progress=progress)
    if predictions is not None:
        predictions[:] = prompts.scatter([u[_PREDICTED] for u in units]).tolist()
    return accs


def spectra_matrix(spectra: Sequence[Spectrum]) -> np.ndarray:
    """Components x layers magnitudes (constant excluded), for heatmaps."""
    return np.stack([s.nonconstant for s in spectra], axis=1)
