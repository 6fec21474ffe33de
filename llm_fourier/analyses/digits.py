"""Digit lens: module outputs at every answer position read through W_U[digit tokens].

For tokenizers that write one token per digit (Llama-2, Mistral, Qwen, Gemma, SmolLM), the
answer is teacher forced (one pass of ``model.engine``); at each answer position every
layer's attention, MLP and residual (block) output is read through ``W_U[0..9]``
(``readout.digit_readout``, optionally through the final norm). Per role, layer and digit
place (0 = units), and pooled over places, it accumulates the lens accuracy (argmax over the
ten digits = the answer's digit) and the mean magnitude of each Fourier component over the
digits (``FourierBasis(10, "dft")``: periods 10, 5, 3.33, 2.5, 2). Only sums are kept;
sharding, batch-order folding and ``store`` work as in ``lens.run_lens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llm_fourier.analyses.answers import max_answer_tokens
from llm_fourier.analyses.lens import LENS_ROLES, LensAccumulator, lens_pass, merge_stats
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.engine import Greedy, PromptSet, Store
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.readout import NumberReadout, digit_readout
from llm_fourier.model.scores import n_digits
from llm_fourier.model.tasks import Example
from probes import Spectrum

DIGIT_TOLERANCES = {"exact": 0}


def digit_layer_summary(spectra: Sequence[Spectrum], tau: int) -> list[dict]:
    """Per layer: the magnitude and energy share of each of the five digit components
    (keyed by period) and the low/high energy split at ``tau``."""
    out = []
    for i, s in enumerate(spectra):
        energy = s.nonconstant ** 2
        total = float(energy.sum())
        out.append({"layer": i, **{f"period_{T:.3g}": float(m)
                                   for T, m in zip(s.basis.periods, s.nonconstant)},
                    **{f"share_{T:.3g}": float(e / total) if total > 0 else float("nan")
                       for T, e in zip(s.basis.periods, energy)},
                    **s.low_high(tau)})
    return out


@dataclass
class DigitLens:
    """Accumulators per role: ``pooled[role]`` over every answer digit, ``by_place[role][i]``
    for the digits at place i (0 = units)."""

    pooled: dict[str, LensAccumulator]
    by_place: dict[str, list[LensAccumulator]]
    readout: NumberReadout

    def summary(self, tau: int) -> dict:
        """JSON-ready: per role, pooled and per place, accuracy and spectra by layer."""
        def one(acc: LensAccumulator) -> dict:
            return {"n": acc.n, "accuracy": [r["exact"] for r in acc.accuracy()],
                    "layers": digit_layer_summary(acc.spectra(), tau)}

        return {role: {"all": one(self.pooled[role]),
                       "places": [one(a) for a in self.by_place[role]]}
                for role in self.pooled}


def run_digit_lens(lm, examples: Sequence[Example], fmt: NumberFormat | AnswerSpace, *,
                   roles: Sequence[str] = LENS_ROLES, final_norm: bool = False,
                   batch_size: int = 16, store: Store | None = None, progress: bool = True,
                   predictions: list[int] | None = None, rows: dict | None = None
                   ) -> DigitLens:
    """Digit lens accuracy and spectra per role, layer and digit place over ``examples``.

    ``store`` keeps each batch's sums (resume); ``predictions`` receives the model's greedy
    whole answers from the same pass (the teacher-forced forward decides most of them);
    ``rows`` the rows at the last prompt token (``lens.lens_pass``).
    """
    if not examples:
        raise UserError("no examples to run the digit lens on; use a larger operand range "
                        "or another split.")
    space = fmt if isinstance(fmt, AnswerSpace) else None
    fmt = space.fmt if space is not None else fmt
    if fmt.family != "digits":
        raise UserError(f"the digit lens needs a tokenizer that writes one token per digit; "
                        f"this one writes the answers as {fmt.family} tokens (use the number "
                        "lens, run_lens).")
    readout = space.readout(lm, final_norm) if space is not None else \
        digit_readout(lm, fmt, final_norm)
    basis = readout.basis()
    places = n_digits([e.answer for e in examples])

    def new() -> LensAccumulator:
        return LensAccumulator(lm.n_layers, basis, dict(DIGIT_TOLERANCES))

    lens = DigitLens({r: new() for r in roles}, {r: [new() for _ in range(places)]
                                                  for r in roles}, readout)
    accs = {f"{r}/{p}": acc for r in roles  # "role/place", place -1: pooled
            for p, acc in [(-1, lens.pooled[r]), *enumerate(lens.by_place[r])]}
    digit_of = {int(t): d for d, t in enumerate(fmt.digit_ids.tolist())}
    place_of = {e.answer: fmt.places(e.answer) for e in examples}

    def reduce(batch, out) -> dict:
        stats: dict = {}  # "role/place" (-1 = pooled) -> sums over the batch's positions
        for s in range(out.rows[roles[0]].shape[1]):
            ok = [j for j, seq in enumerate(batch.answers)
                  if s < len(seq) and place_of[examples[batch.rows[j]].answer][s] >= 0]
            if not ok:
                continue
            idx = torch.tensor(ok)
            target = torch.tensor([digit_of[batch.answers[j][s]] for j in ok])
            place = torch.tensor([place_of[examples[batch.rows[j]].answer][s] for j in ok])
            for r in roles:
                x = readout.logits(out.rows[r][idx, s])  # n x L x 10
                for p in [-1, *place.unique().tolist()]:  # -1: pooled over the places
                    sel, key = slice(None) if p < 0 else place == p, f"{r}/{p}"
                    stats[key] = merge_stats(stats.get(key), accs[key].batch_stats(
                        x[sel], target[sel]))
        if out.predictions is not None:
            stats["predictions"] = torch.from_numpy(out.predictions)
        return stats

    spec = {"answers": True, "logits": predictions is not None}
    if predictions is not None:
        spec["greedy"] = Greedy(fmt, max_answer_tokens(fmt, examples))
    prompts = PromptSet.build(lm, examples, batch_size, fmt)
    units = lens_pass(lm, prompts, roles, reduce, accs, rows=rows, store=store,
                      progress=progress, desc="digit lens", **spec)
    if predictions is not None:
        predictions[:] = prompts.scatter([u["predictions"] for u in units]).tolist()
    return lens
