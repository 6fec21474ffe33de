"""Probe-direction ablation: remove fitted Fourier directions from module outputs.

Per (role, layer) the helix fit's cos/sin directions of the chosen periods, mapped from PCA
space to model space and orthonormalised, are projected out (``probes.FourierFilter``, inside
``hooks.edit``); beside them a random subspace of the same rank (control) and Zhou et al.'s
logit-space filter of the same periods on the answers' readout (cross-check). Every row is a
condition of one engine pass (``answers.score_conditions``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_fourier.analyses.ablation import MODULES, answer_target
from llm_fourier.analyses.answers import condition, score_conditions
from llm_fourier.errors import UserError
from llm_fourier.model.engine import Store
from llm_fourier.model.loading import LoadedModel
from llm_fourier.model.number_format import NumberFormat, number_format
from llm_fourier.model.numbers import NumberTokens
from llm_fourier.model.readout import NumberReadout, number_readout, readout_for
from llm_fourier.model.tasks import Example
from probes import FourierFilter
from probes.linear import HelixFit

GROUPS = {**MODULES, "block": ("block",)}  # the paper's module groups, and the residual


def probe_filters(fits: dict[tuple[str, int], HelixFit], periods: Sequence[float]
                  ) -> dict[tuple[str, int], FourierFilter]:
    """One filter per (role, layer) removing the fitted directions of ``periods``."""
    label = "probe T=" + ",".join(f"{T:g}" for T in periods)
    return {key: FourierFilter(fit.directions(periods), (), label) for key, fit in fits.items()}


def random_filters(filters: dict[tuple[str, int], FourierFilter], seed: int = 0
                   ) -> dict[tuple[str, int], FourierFilter]:
    """Random orthonormal subspaces of the same ranks (the ablation's control)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, f in filters.items():
        q, _ = np.linalg.qr(rng.standard_normal((f.dim, max(f.rank, 1))))
        out[key] = FourierFilter(q[:, : f.rank], (), "random")
    return out


def logit_filter(lm: LoadedModel, numbers: NumberTokens | NumberReadout,
                 periods: Sequence[float], basis_kind: str = "paper") -> FourierFilter:
    """Zhou et al.'s filter removing the components nearest ``periods`` of a readout
    (``W_U[numbers]``, or any ``NumberReadout``, e.g. the digit readout)."""
    readout = numbers if isinstance(numbers, NumberReadout) else number_readout(lm, numbers)
    return readout.remove_periods(periods, basis_kind)


def _scoring(lm, examples: Sequence[Example], numbers
             ) -> tuple[NumberTokens | NumberFormat, NumberReadout | None]:
    """What answers are scored against, and the readout of the logit-filter cross-check: the
    single-token numbers and ``W_U[numbers]`` when they cover every answer; a ``NumberFormat``
    and its number or digit readout (if any); else the tokenizer's format, no readout."""
    max_answer = max(e.answer for e in examples)
    if isinstance(numbers, NumberFormat):
        readout = readout_for(lm, numbers, numbers.max_number) if numbers.readout else None
        return answer_target(numbers), readout
    if numbers is not None and numbers.p > max_answer:
        return numbers, number_readout(lm, numbers)
    return answer_target(number_format(lm.tokenizer, max_answer)), None


def probe_ablation(lm: LoadedModel, examples: Sequence[Example],
                   fits: dict[tuple[str, int], HelixFit], periods: Sequence[float], *,
                   groups: Sequence[str] = ("attn+MLP", "attn", "MLP"),
                   numbers: NumberTokens | NumberFormat | None = None, positions: str = "all",
                   batch_size: int = 16, seed: int = 0, progress: bool = True,
                   store: Store | None = None, ids: Sequence[Sequence[int]] | None = None
                   ) -> list[dict]:
    """Accuracy with no edit, then per module group with the probe directions removed, a
    random subspace of the same rank removed, and the logit filter of the same periods where
    the answers have a readout (``_scoring``). Every row is a condition of one engine pass;
    ``store`` keeps its units (resume); ``ids``: the prompts' tokens when known."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise UserError(f"unknown module group(s) {unknown}; choose among {', '.join(GROUPS)}.")
    probe = probe_filters(fits, periods)
    rand = random_filters(probe, seed)
    target, readout = _scoring(lm, examples, numbers)
    logit = logit_filter(lm, readout, periods) if readout is not None else None
    plan: list[tuple[str, str, str, dict]] = [("none", "-", "none", {})]
    for g in groups:
        keys = [k for k in probe if k[0] in GROUPS[g]]
        if not keys:
            raise UserError(f"no probe was fitted on the {g} outputs; add their roles to "
                            "--roles to ablate them.")
        plan += [(f"{g} {kind}", g, kind, {k: filt[k] for k in keys})
                 for kind, filt in (("probe", probe), ("random", rand))]
        if logit is not None:
            plan.append((f"{g} logit", g, "logit", {k: logit for k in keys}))
    method = "next token" if isinstance(target, NumberTokens) else "greedy generation"
    done = score_conditions(lm, examples, target,
                            [condition(label, edits, positions) for label, _, _, edits in plan],
                            batch_size=batch_size, store=store, progress=progress,
                            desc="probe ablation", ids=ids)
    return [{"row": label, "modules": group, "kind": kind,
             "filter": next(iter(edits.values())).name if edits else "none",
             "rank": int(np.mean([f.rank for f in edits.values()])) if edits else 0,
             **{k: v for k, v in done[label].items() if k != "predictions"}, "method": method}
            for label, group, kind, edits in plan]
