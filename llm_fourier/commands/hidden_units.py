"""The optional analyses of ``llm-fourier hidden``: each unit reads the ``HiddenRun``, adds
its entry to ``results`` and writes its own files; ``UNITS`` pairs them, in order, with the
settings that ask for them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llm_fourier.analyses.hidden_ablation import probe_ablation
from llm_fourier.analyses.hidden_states import (
    HiddenStates,
    collect,
    flat_row,
    probe_layers,
    random_copy,
)
from llm_fourier.commands.digit_views import csv_row
from llm_fourier.commands.hidden_controls import control_spectrum
from llm_fourier.commands.hidden_digits import digit_probes, intervention
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.output.rundir import RunDir
from probes.stats import StatsConfig


@dataclass
class HiddenRun:
    """One ``hidden`` run as its units see it."""

    s: object
    run: RunDir
    lm: object
    task: object
    hs: HiddenStates  # the model's states at the probed examples and layers
    fmt: NumberFormat | None = None
    fits: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    random_hs: HiddenStates | None = None
    digit: list[dict] = field(default_factory=list)

    @property
    def target(self) -> str:
        return self.s.probed

    @property
    def progress(self) -> bool:
        return not self.s.quiet

    @property
    def probe_kw(self) -> dict:
        s = self.s
        return {"pca_dim": s.pca_dim, "mod_pca_dim": s.mod_pca_dim, "n_splits": s.folds,
                "seed": s.seed, "progress": self.progress}


def collect_kept(run: RunDir, unit: str, lm, examples, s, layers) -> HiddenStates:
    """``collect`` with the states kept as a unit of the run (safetensors)."""
    saved = run.load_unit(unit)
    if saved is not None:
        return HiddenStates({r: saved[1][r].numpy() for r in s.roles}, layers, list(examples),
                            s.token)
    hs = collect(lm, examples, s.token, s.roles, layers, s.batch_size, not s.quiet)
    run.save_unit(unit, {"layers": layers}, {r: torch.from_numpy(v) for r, v in hs.states.items()})
    return hs


def without_fit(result: dict) -> dict:
    """A probe result for results.json: everything but the fitted probe object."""
    return {k: v for k, v in result.items() if k != "fit"}


def random_baseline(h: HiddenRun) -> None:
    """The same probes on a randomly initialised copy of the model."""
    rand = random_copy(h.lm, h.s.seed)
    h.random_hs = collect_kept(h.run, "states-random", rand, h.hs.examples, h.s, h.hs.layers)
    del rand
    res = probe_layers(h.random_hs, h.target, h.s.periods, h.s.helix_periods,
                       **{**h.probe_kw, "progress": False}, shuffled=False,
                       stats=StatsConfig(n_boot=0, n_perm=0, n_refit=0))
    for row, entry, r in zip(h.rows, h.results["probes"], res.values()):
        row.update({k: v for k, v in flat_row(row["role"], row["layer"], r, "random_").items()
                    if k not in ("role", "layer")})
        entry["random_init"] = without_fit(r)


def readout(h: HiddenRun) -> None:
    """The answers' number format and readout (where answers are scored)."""
    space = AnswerSpace(h.fmt, h.task.max_answer)
    h.results |= space.describe(space.readout(h.lm) if space.kind else None)


def ablation(h: HiddenRun) -> None:
    """The fitted Fourier directions removed (beside a random subspace and the logit
    filter), task accuracy measured."""
    s = h.s
    rows = probe_ablation(
        h.lm, h.task.test[:s.n_eval], {k: v["fit"] for k, v in h.fits.items()},
        s.ablate_periods, groups=s.ablate_groups, numbers=h.fmt,
        positions=s.ablate_positions or ("last" if s.token == "last" else "all"),
        batch_size=s.batch_size, seed=s.seed, progress=h.progress,
        store=h.run.store("ablation"))
    h.run.write_csv("ablation.csv", [csv_row(r) for r in rows])
    h.results["ablation"] = rows


def scored(s) -> bool:
    """Whether answers are scored (ablation, intervention): the run needs their format."""
    return bool(s.ablate_periods) or s.intervene_place is not None


UNITS: tuple[tuple[Callable[[object], bool], Callable[[HiddenRun], None]], ...] = (
    (lambda s: not s.no_random_baseline, random_baseline),
    (lambda s: bool(s.digit_kinds), digit_probes),
    (scored, readout),
    (lambda s: s.control is not None or s.corpus is not None, control_spectrum),
    (lambda s: bool(s.ablate_periods), ablation),
    (lambda s: s.intervene_place is not None, intervention),
)
