"""Logit lens onto the number tokens and per-layer Fourier spectra of module outputs.

The number logits of a module output x (D) are ``W_U[numbers] @ x`` (p values, number
0..p-1 in order), the readout of Zhou et al. (``readout.NumberReadout``, shared with the
ablations); with ``final_norm=True`` x first goes through the model's final norm (the
standard logit lens). Default: off, as in the paper's filters, because a LayerNorm bias
would add the same ``W_U beta`` spectrum to every module. Tokenizers that write answers
one token per digit get the digit lens of ``llm_fourier.analyses.digits`` instead.

``run_lens`` captures attention, MLP and residual-stream (block) outputs at the last real
token, batch by batch (sharded across processes when a process group is active, see
``llm_fourier.model.distributed``; the sums are folded in batch order, so the result equals the
single-process run), and accumulates per layer: lens accuracy (exact, within 2, within
10; the prediction is the argmax over the number tokens) and the Fourier spectrum of the
number logits averaged over the data set (``probes.spectrum(..., pool="mean")``), from
which outliers (with periods) and low/high energy fractions are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from llm_fourier.errors import UserError
from llm_fourier.model.distributed import batch_ranges, map_ranges, process_info, rounds
from llm_fourier.model.hooks import capture, last_token_logits
from llm_fourier.model.numbers import NumberTokens, require_numbers, value_of_token
from llm_fourier.model.readout import NumberReadout, number_readout
from llm_fourier.model.tasks import Example, tokenize_prompts
from llm_fourier.output.progress import tqdm
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
    magnitude_sum: Tensor | None = None  # L x (K + 1), float64
    energy_sum: Tensor | None = None  # L x (K + 1): sums of squared magnitudes

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
        for name, counts in stats["hits"].items():
            self.hits[name] = self.hits.get(name, 0) + counts
        mag, energy = stats["magnitude_sum"], stats["energy_sum"]
        self.magnitude_sum = mag if self.magnitude_sum is None else self.magnitude_sum + mag
        self.energy_sum = energy if self.energy_sum is None else self.energy_sum + energy
        self.n += stats["n"]

    def accuracy(self) -> list[dict]:
        return [{"layer": i, **{k: float(v[i]) / max(self.n, 1) for k, v in self.hits.items()}}
                for i in range(self.n_layers)]

    def spectra(self) -> list[Spectrum]:
        """One data-set-averaged spectrum per layer: the mean magnitude over examples, with
        the mean energy (squared magnitude) per example kept beside it."""
        n = max(self.n, 1)
        mean, energy = (self.magnitude_sum / n).numpy(), (self.energy_sum / n).numpy()
        return [Spectrum(self.basis, mean[i], energy[i]) for i in range(self.n_layers)]

    def state_dict(self) -> dict:
        return {"n": self.n, "hits": dict(self.hits), "magnitude_sum": self.magnitude_sum,
                "energy_sum": self.energy_sum}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.hits = state["n"], state["hits"]
        self.magnitude_sum, self.energy_sum = state["magnitude_sum"], state["energy_sum"]


PEAK_RULE = "the largest local maxima at k >= tau (the paper's annotation of lens spectra)"


def layer_summary(spectra: Sequence[Spectrum], tau: int = 50, top: int | None = 10) -> list[dict]:
    """Per layer: the spectrum's peaks at k >= tau as ``outliers`` ({k, period, magnitude},
    largest first; ``PEAK_RULE``, never the k = 1 trend) and the low/high split of both the
    mean spectrum's energy and the mean energy per prompt."""
    return [{"layer": i, "outliers": [o.as_dict() for o in s.peaks(min_k=tau, top=top)],
             **s.low_high(tau)} for i, s in enumerate(spectra)]


def resume_batches(state: dict | None, n: int, batch_size: int) -> tuple[int, list]:
    """(examples a saved lens state covers, the (start, end) batches left). States count
    examples, so a run resumes under another ``batch_size`` (older states counted batches of
    the size they ran with)."""
    start = 0
    if state:
        start = state.get("examples_done", state["batches_done"] * batch_size)
        if not 0 <= start <= n:
            raise UserError(f"the saved lens state covers {start} prompts but the run has {n}; "
                            "start it over with --restart.")
    return start, [(a + start, b + start) for a, b in batch_ranges(n - start, batch_size)]


def run_lens(
    lm,
    examples: Sequence[Example],
    numbers: NumberTokens,
    *,
    roles: Sequence[str] = LENS_ROLES,
    final_norm: bool = False,
    basis_kind: str = "paper",
    batch_size: int = 16,
    state: dict | None = None,
    on_batch: Callable[[int, dict], None] | None = None,
    progress: bool = True,
    predictions: list[int] | None = None,
) -> dict[str, LensAccumulator]:
    """Lens accuracy and spectra per role and layer over ``examples``.

    ``state`` (from ``on_batch``'s second argument) resumes an interrupted run:
    ``on_batch(batches_done, state)`` is called after every batch, or under a process group
    on every rank after every round of one batch per rank (the state covers the first
    ``examples_done`` examples, so it resumes under any number of processes and any
    ``batch_size``).

    ``predictions``: a list that receives the model's own prediction of every example, in
    order, from the same forward: its next token (argmax over the vocabulary, logits of the
    last position only) as a number, -1 for any other token (``ablation.evaluate``'s "vocab"
    prediction, up to the last bits of the logits of a full forward). The state carries
    them, so a resumed run fills the list as well.
    """
    if not examples:
        raise UserError("no examples to run the lens on; use a larger operand range or "
                        "another split.")
    require_numbers(numbers, max(e.answer for e in examples), getattr(lm, "name", ""))
    readout = number_readout(lm, numbers, final_norm)
    basis = FourierBasis(numbers.p, basis_kind)
    accs = {r: LensAccumulator(lm.n_layers, basis) for r in roles}
    start, batches = resume_batches(state, len(examples), batch_size)
    done = state["batches_done"] if state else 0  # counted on across sessions
    if state:
        for r in roles:
            accs[r].load_state_dict(state["roles"][r])
        if predictions is not None:
            if "predictions" not in state:
                raise UserError("the saved lens state holds no model predictions; start the "
                                "run over (--restart).")
            predictions[:] = state["predictions"][:start]
    where = lm.unembedding().device
    where = torch.device("cpu") if where.type == "meta" else where

    def run_batch(start: int, end: int) -> dict[str, dict]:
        batch = examples[start:end]
        enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in batch], device=lm.input_device)
        answers = torch.tensor([e.answer for e in batch])
        # rows stay where W_U is: on an accelerator the readout and spectra run there too,
        # and only the per-layer sums come back
        with torch.inference_mode(), capture(lm, roles=roles, positions="last",
                                             device=where) as cap:
            logits = last_token_logits(lm.model, enc)  # only the last position's
        stats = {r: accs[r].batch_stats(readout.logits(cap.stack(r)), answers) for r in roles}
        stats[_PREDICTED] = value_of_token(numbers, logits.shape[-1])[logits.argmax(-1).cpu()]
        return stats

    bar = tqdm(desc="lens", unit="batch", initial=done, total=done + len(batches),
               disable=not progress or not process_info().is_main)
    for chunk in rounds(batches):
        for stats in map_ranges(run_batch, chunk, progress=False):  # in batch order
            for r in roles:
                accs[r].add(stats[r])
            if predictions is not None:
                predictions += stats[_PREDICTED].tolist()
        done += len(chunk)
        bar.update(len(chunk))
        if on_batch is not None:
            on_batch(done, {"batches_done": done, "examples_done": chunk[-1][1],
                            "roles": {r: a.state_dict() for r, a in accs.items()},
                            **({"predictions": list(predictions)}
                               if predictions is not None else {})})
    bar.close()
    return accs


def spectra_matrix(spectra: Sequence[Spectrum]) -> np.ndarray:
    """Components x layers magnitudes (constant excluded), for heatmaps."""
    return np.stack([s.nonconstant for s in spectra], axis=1)
