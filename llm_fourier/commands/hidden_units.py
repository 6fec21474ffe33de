"""What ``llm-fourier hidden`` computes: ``analyse`` collects and probes the states, then runs
the optional units (``UNITS``, in order, each with the settings that ask for it); a unit reads
the ``HiddenRun``, adds its entry to ``results`` and writes its own files. The frequency
control is a per-number scalar's spectrum (``--control`` or ``--corpus``) beside the
embedding's; digit probe rows (Levy & Geva) keep their interval over numbers and p-value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter

import numpy as np

from llm_fourier.analyses.corpus import corpus_counts
from llm_fourier.analyses.digit_probes import (
    digit_intervention,
    digit_rows,
    fit_operand_probe,
    probe_digit_layers,
)
from llm_fourier.analyses.hidden_ablation import probe_ablation
from llm_fourier.analyses.hidden_states import (
    HiddenStates,
    flat_row,
    frequency_control,
    load_scalar,
    probe_layers,
    random_copy,
    read_positions,
    token_identity,
    without_fit,
)
from llm_fourier.commands.digit_views import csv_row
from llm_fourier.commands.kept import collect_kept, keep_states
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.numbers import find_number_tokens, number_rows
from llm_fourier.output.digit_plots import digit_probe_plot
from llm_fourier.output.rundir import RunDir
from probes.common import per_number_means
from probes.fourier import FourierBasis, spectrum
from probes.stats import StatsConfig

PER_EXAMPLE = ("clean", "rotated", "random")  # intervention lists that go to the CSV


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

    @cached_property
    def test_tokens(self) -> tuple[list[list[int]], list[int]]:
        """The scored test prompts' one tokenization (``read_positions`` at the probed
        token), shared by the ablation and the intervention."""
        return read_positions(self.lm.tokenizer, self.task.test[:self.s.n_eval], self.s.token)

    @property
    def probe_kw(self) -> dict:
        s = self.s
        return {"pca_dim": s.pca_dim, "mod_pca_dim": s.mod_pca_dim, "n_splits": s.folds,
                "seed": s.seed, "progress": not s.quiet}


def random_baseline(h: HiddenRun) -> None:
    """The same probes on a randomly initialised copy of the model."""
    h.random_hs = collect_kept(h.run, "states-random", random_copy(h.lm, h.s.seed),
                               h.hs.examples, h.s, h.hs.layers, h.hs.ids)  # copy freed here
    res = probe_layers(h.random_hs, h.s.probed, h.s.periods, h.s.helix_periods,
                       **{**h.probe_kw, "progress": False}, shuffled=False,
                       stats=StatsConfig(n_boot=0, n_perm=0, n_refit=0))
    for row, entry, r in zip(h.rows, h.results["probes"], res.values()):
        row.update(flat_row(r, "random_"))
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
        batch_size=s.batch_size, seed=s.seed, progress=not s.quiet,
        store=h.run.store("ablation"), ids=h.test_tokens[0])
    h.run.write_csv("ablation.csv", [csv_row(r) for r in rows])
    h.results["ablation"] = rows


def _beside(lm, hs: HiddenStates, numbers, n_values: int, target: str):
    """The number rows of W_E (single-token numbers), else the mean states per number."""
    if numbers.p >= n_values:
        return number_rows(lm.embedding(), numbers).float().cpu().numpy(), "embedding"
    uniq, means = per_number_means(hs.at(hs.roles[0], hs.layers[0]), hs.numbers(target))
    if not np.array_equal(uniq, np.arange(len(uniq))):
        return None, None
    return means, f"mean {hs.roles[0]} state, layer {hs.layers[0]}"


def control_spectrum(h: HiddenRun) -> None:
    """The ``--control`` values (or ``--corpus`` counts) per number: their spectrum in the
    results, the values in ``control_values.csv``."""
    s, p = h.s, h.task.max_answer + 1
    numbers = find_number_tokens(h.lm.tokenizer, max_number=h.task.max_answer)
    if s.control is not None:
        values, source = load_scalar(s.control), f"--control {s.control}"
    else:
        values = corpus_counts(s.corpus, p, s.corpus_count, h.lm.tokenizer, numbers.token_ids)
        source = f"number {s.corpus_count} counts in {s.corpus}"
    beside, what = _beside(h.lm, h.hs, numbers, min(len(values), p), h.s.probed)
    if beside is not None and len(values) < len(beside):
        raise UserError(f"{source} holds {len(values)} values but the numbers beside it run "
                        f"0..{len(beside) - 1}; give one value per number.")
    h.results["frequency_control"] = {**frequency_control(values, beside, s.basis),
                                      "source": source, "beside_what": what}
    h.run.write_csv("control_values.csv",
                    [{"number": n, "value": float(v)} for n, v in enumerate(values)])


def digit_probes(h: HiddenRun) -> None:
    """Circular, linear and value probes of the target's digits (with shuffled-label
    baselines), beside the same probes on the random-init copy's states, if any."""
    s = h.s
    kw = {"targets": (s.probed,), "places": s.digit_places, "kinds": s.digit_kinds,
          "n_splits": s.folds, "pca_dim": s.mod_pca_dim, "alpha": s.digit_alpha, "seed": s.seed}
    h.digit = digit_rows(probe_digit_layers(h.hs, shuffled=True, n_shuffles=3,
                                            progress=not s.quiet, **kw), s.stats_config(s.seed))
    if h.random_hs is not None:
        rand = probe_digit_layers(h.random_hs, shuffled=False, progress=False, **kw)
        key = itemgetter("role", "layer", "target", "place", "kind")
        accuracy = {key(r): r["accuracy"] for r in digit_rows(rand)}
        for row in h.digit:
            row["random_accuracy"] = accuracy.get(key(row))
    h.results |= {"digit_kinds": list(s.digit_kinds), "digit_probes": h.digit}
    if h.digit:
        h.run.write_csv("digit_probes.csv", h.digit)
        if h.run.writes:
            digit_probe_plot(h.digit, h.run.file("digit_probes.png"),
                             f"digit probes of {s.probed} at the {s.token} token")


def intervention(h: HiddenRun) -> None:
    """Levy & Geva's digit intervention at the operand's token: its summary in the results,
    each test prompt's clean, rotated and random-control predictions in the CSV."""
    s, examples = h.s, h.task.test[:h.s.n_eval]
    layer = s.intervene_layer
    if layer is None:  # the most accurate circular probe of that place, the earliest among ties
        cands = [r for r in h.digit if r["role"] == s.intervene_role and r["target"] == s.token
                 and r["place"] == s.intervene_place and r["kind"] == "circular"]
        if not cands:
            raise UserError(f"hidden: no circular probe of {s.token}'s digit "
                            f"{s.intervene_place} ran on {s.intervene_role} states; pass "
                            "--intervene-layer.")
        layer = max(cands, key=lambda r: (r["accuracy"], -r["layer"]))["layer"]
    probe = fit_operand_probe(h.hs, s.intervene_role, layer, s.token, s.intervene_place,
                              pca_dim=s.mod_pca_dim, alpha=s.digit_alpha)
    res = digit_intervention(h.lm, examples, h.fmt, probe, token=s.token,
                             role=s.intervene_role, layer=layer, shift=s.intervene_shift,
                             seed=s.seed, batch_size=s.batch_size, progress=not s.quiet,
                             store=h.run.store("intervention"), tokens=h.test_tokens)
    h.results["intervention"] = {k: v for k, v in res.items() if k not in PER_EXAMPLE} | {
        "layer_from": "--intervene-layer" if s.intervene_layer is not None else
                      "the most accurate circular probe of that place"}
    h.run.write_csv("intervention.csv", [
        {"prompt": e.prompt, "a": e.a, "b": e.b, "answer": e.answer,
         **{k: res[k][i] for k in PER_EXAMPLE}} for i, e in enumerate(examples)])


UNITS: tuple[tuple[Callable[[object], bool], Callable[[HiddenRun], None]], ...] = (
    (lambda s: not s.no_random_baseline, random_baseline),
    (lambda s: bool(s.digit_kinds), digit_probes),
    (lambda s: s.scored, readout),
    (lambda s: s.control is not None or s.corpus is not None, control_spectrum),
    (lambda s: bool(s.ablate_periods), ablation),
    (lambda s: s.intervene_place is not None, intervention),
)


def _spikes(hs: HiddenStates, target: str, periods) -> dict:
    """Per (role, layer): outlier periods of the per-number mean states (numbers 0..p-1)."""
    uniq = np.unique(hs.numbers(target))
    if len(uniq) < 3 or not np.array_equal(uniq, np.arange(len(uniq))):
        return {}
    basis = FourierBasis(len(uniq), "dft")
    out = {}
    for r in hs.states:
        for i in hs.layers:
            _, means = per_number_means(hs.at(r, i), hs.numbers(target))
            outl = spectrum(means, basis, axis=0).outliers()
            ks = {o.k for o in outl}
            out[(r, i)] = {"outlier_periods": [round(o.period, 3) for o in outl[:8]],
                           **{f"spike_mod{T}": basis.k_of_period(T) in ks for T in periods}}
    return out


def analyse(s, run: RunDir, lm, task, examples, layers: list[int],
            fmt: NumberFormat | None) -> HiddenRun:
    """The states (kept as a unit, and in OUT/states/ if asked), their probes per (role,
    layer) with the token-identity check, then the units the settings ask for."""
    target = s.probed
    hs = collect_kept(run, "states", lm, examples, s, layers)
    if s.keep_states:
        keep_states(run, s, lm, hs, "hidden")
    identity = token_identity(hs.read_ids, hs.numbers(target), s.periods)
    confounded = [T for T, r in identity.items() if r["confounded"]]
    if confounded:
        print(f"warning: at the {s.token} token, {target} mod "
              f"{', '.join(map(str, confounded))} is the identity of the token itself (a "
              "digit-splitting tokenizer): a probe decodes it even on a random model; read "
              "the control_ columns (token-identity directions removed) for what remains.")
    h = HiddenRun(s, run, lm, task, hs, fmt)
    h.fits = probe_layers(hs, target, s.periods, s.helix_periods, **h.probe_kw,
                          stats=s.stats_config(s.seed), token_ids=hs.read_ids,
                          control=s.token_control)
    spikes = _spikes(hs, target, s.periods)
    h.rows = [{"role": r, "layer": i, **flat_row(res), **spikes.get((r, i), {})}
              for (r, i), res in h.fits.items()]
    h.results = {
        "model": lm.name, "token": s.token, "target": target, "layers": layers,
        "roles": list(s.roles), "periods": s.periods, "helix_periods": s.helix_periods,
        "n_examples": len(examples), "task": task.settings, "token_identity": identity,
        "statistics": {"bootstrap": s.bootstrap, "permutations": s.permutations,
                       "refits": s.refits, "level": s.ci_level, "method": s.ci_method,
                       "unit": "distinct numbers (not prompts)"},
        "probes": [{"role": r, "layer": i, **without_fit(res), "random_init": None,
                    "spectrum": spikes.get((r, i))} for (r, i), res in h.fits.items()],
    }
    for wanted, unit in UNITS:  # the optional analyses, each its own unit
        if wanted(s):
            unit(h)
    return h
