"""Digit lens: module outputs at every answer position read through W_U[digit tokens].

For tokenizers that write one token per digit (Llama-2, Mistral, Qwen, Gemma, SmolLM), the
answer is teacher forced (``answers.run_steps``) and at each answer position the attention,
MLP and residual (block) outputs of every layer are captured (N x L x D per position) and
read through the digit readout ``W_U[0..9]`` (``readout.digit_readout``, optionally through
the final norm). Per role, layer and digit place (0 = units) of the digit that position
predicts, and pooled over places, it accumulates the lens accuracy (argmax over the ten
digits = the answer's digit) and the mean magnitude of each Fourier component over the ten
digits (``FourierBasis(10, "dft")``: periods 10, 5, 3.33, 2.5, 2; see ``readout``).
Only sums are kept (memory O(L x places)); batches are sharded under a process group and
folded in batch order, and ``state`` / ``on_batch`` resume an interrupted run as in
``lens.run_lens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llm_fourier.analyses.answers import run_steps
from llm_fourier.analyses.lens import LENS_ROLES, LensAccumulator, resume_batches
from llm_fourier.errors import UserError
from llm_fourier.model.distributed import map_ranges, process_info, rounds
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.readout import NumberReadout, digit_readout
from llm_fourier.model.scores import n_digits
from llm_fourier.model.tasks import Example
from llm_fourier.output.progress import tqdm
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

    def _all(self):
        for role, acc in self.pooled.items():
            yield f"{role}/all", acc
            for i, a in enumerate(self.by_place[role]):
                yield f"{role}/{i}", a

    def state_dict(self) -> dict:
        return {key: acc.state_dict() for key, acc in self._all()}

    def load_state_dict(self, state: dict) -> None:
        for key, acc in self._all():
            acc.load_state_dict(state[key])

    def summary(self, tau: int) -> dict:
        """JSON-ready: per role, pooled and per place, accuracy and spectra by layer."""
        def one(acc: LensAccumulator) -> dict:
            return {"n": acc.n, "accuracy": [r["exact"] for r in acc.accuracy()],
                    "layers": digit_layer_summary(acc.spectra(), tau)}

        return {role: {"all": one(self.pooled[role]),
                       "places": [one(a) for a in self.by_place[role]]}
                for role in self.pooled}


def run_digit_lens(
    lm,
    examples: Sequence[Example],
    fmt: NumberFormat,
    *,
    roles: Sequence[str] = LENS_ROLES,
    final_norm: bool = False,
    batch_size: int = 16,
    state: dict | None = None,
    on_batch: Callable[[int, dict], None] | None = None,
    progress: bool = True,
) -> DigitLens:
    """Digit lens accuracy and spectra per role, layer and digit place over ``examples``.

    ``on_batch(batches_done, state)`` follows every round of batches; ``state`` resumes.
    """
    if not examples:
        raise UserError("no examples to run the digit lens on; use a larger operand range "
                        "or another split.")
    if fmt.family != "digits":
        raise UserError(f"the digit lens needs a tokenizer that writes one token per digit; "
                        f"this one writes the answers as {fmt.family} tokens (use the number "
                        "lens, run_lens).")
    readout = digit_readout(lm, fmt, final_norm)
    basis = readout.basis()
    places = n_digits([e.answer for e in examples])

    def new() -> LensAccumulator:
        return LensAccumulator(lm.n_layers, basis, dict(DIGIT_TOLERANCES))

    lens = DigitLens({r: new() for r in roles}, {r: [new() for _ in range(places)]
                                                  for r in roles}, readout)
    _, batches = resume_batches(state, len(examples), batch_size)
    done = state["batches_done"] if state else 0  # counted on across sessions
    if state:
        lens.load_state_dict(state["lens"])

    def run_batch(start: int, end: int) -> list[tuple[str, int, dict]]:
        batch = examples[start:end]
        seqs = fmt.encode_many(e.answer for e in batch)
        place_of = [fmt.places(e.answer) for e in batch]
        digit_of = {int(t): d for d, t in enumerate(fmt.digit_ids.tolist())}
        m = max(len(s) for s in seqs)
        stats: list[tuple[str, int, dict]] = []  # (role, place or -1 = pooled, sums)

        def visit(s: int, logits: Tensor, rows: dict[str, Tensor]) -> Tensor:
            rows_ok = [i for i, seq in enumerate(seqs) if s < len(seq) and place_of[i][s] >= 0]
            if rows_ok:
                idx = torch.tensor(rows_ok)
                target = torch.tensor([digit_of[seqs[i][s]] for i in rows_ok])
                place = torch.tensor([place_of[i][s] for i in rows_ok])
                for r in roles:
                    x = readout.logits(rows[r][idx])  # n x L x 10
                    stats.append((r, -1, lens.pooled[r].batch_stats(x, target)))
                    for p in place.unique().tolist():
                        sel = place == p
                        stats.append((r, p, lens.by_place[r][p].batch_stats(x[sel],
                                                                            target[sel])))
            pad = lm.tokenizer.pad_token_id or 0
            return torch.tensor([seq[s] if s < len(seq) else pad for seq in seqs])

        run_steps(lm, [e.prompt for e in batch], m, visit, roles=roles)
        return stats

    bar = tqdm(desc="digit lens", unit="batch", initial=done, total=done + len(batches),
               disable=not progress or not process_info().is_main)
    for chunk in rounds(batches):
        for stats in map_ranges(run_batch, chunk, progress=False):  # in batch order
            for role, place, sums in stats:
                acc = lens.pooled[role] if place < 0 else lens.by_place[role][place]
                acc.add(sums)
        done += len(chunk)
        bar.update(len(chunk))
        if on_batch is not None:
            on_batch(done, {"batches_done": done, "examples_done": chunk[-1][1],
                            "lens": lens.state_dict()})
    bar.close()
    return lens
