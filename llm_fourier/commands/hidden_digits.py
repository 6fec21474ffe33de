"""The digit parts of ``llm-fourier hidden``: digit probes and the digit intervention.

``digit_probe_rows`` runs ``digit_probes.probe_digit_layers`` on the collected states (and on
the random-init copy's) and turns the results into one row per (role, layer, target, place,
kind) with its baselines: the rows of ``digit_probes.csv`` and ``results["digit_probes"]``.
The ``DigitProbeResult`` objects keep every held-out prediction per sample
(``DigitProbeResult.per_number``): each accuracy gets its bootstrap interval over numbers
and permutation p-value there. ``intervene`` fits the circular probe of one operand digit and
runs ``digit_probes.digit_intervention`` on the test prompts (kept as a unit of the run).
"""

from __future__ import annotations

from llm_fourier.analyses.digit_probes import (
    digit_intervention,
    digit_rows,
    fit_operand_probe,
    probe_digit_layers,
)
from llm_fourier.analyses.hidden_states import HiddenStates
from llm_fourier.commands.digit_views import best_probe_rows
from llm_fourier.errors import UserError
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.output.html import html_table, percent
from llm_fourier.output.rundir import RunDir

PER_EXAMPLE = ("clean", "rotated", "random")  # intervention lists that go to the CSV


def _rows(results: dict, random_results: dict | None, stats=None) -> list[dict]:
    """``digit_rows`` (with intervals and p-values) and the random-init copy's accuracy
    beside each probe."""
    rows = digit_rows(results, stats)
    if random_results is not None:
        rand = {(r["role"], r["layer"], r["target"], r["place"], r["kind"]): r["accuracy"]
                for r in digit_rows(random_results)}
        for row in rows:
            row["random_accuracy"] = rand.get((row["role"], row["layer"], row["target"],
                                               row["place"], row["kind"]))
    return rows


def digit_probe_rows(s, hs: HiddenStates, random_hs: HiddenStates | None, target: str,
                     progress: bool) -> list[dict]:
    """Circular / linear / value probes of ``target``'s digits on ``hs`` (with shuffled-label
    baselines) and on ``random_hs`` (the random-init copy's states, if any)."""
    kw = {"kinds": s.digit_kinds, "n_splits": s.folds, "pca_dim": s.mod_pca_dim,
          "alpha": s.digit_alpha, "seed": s.seed}
    res = probe_digit_layers(hs, (target,), s.digit_places, shuffled=True, n_shuffles=3,
                             progress=progress, **kw)
    rand = None if random_hs is None else probe_digit_layers(
        random_hs, (target,), s.digit_places, shuffled=False, progress=False, **kw)
    return _rows(res, rand, s.stats_config(s.seed))


def intervention_layer(s, rows: list[dict]) -> int:
    """``--intervene-layer``, else the layer whose circular probe of the operand's digit
    ``--intervene-place`` is the most accurate (the earliest among ties)."""
    if s.intervene_layer is not None:
        return s.intervene_layer
    cands = [r for r in rows if r["role"] == s.intervene_role and r["target"] == s.token
             and r["place"] == s.intervene_place and r["kind"] == "circular"]
    if not cands:
        raise UserError(f"hidden: no circular probe of {s.token}'s digit {s.intervene_place} "
                        f"ran on {s.intervene_role} states; pass --intervene-layer.")
    return max(cands, key=lambda r: (r["accuracy"], -r["layer"]))["layer"]


def intervene(s, run: RunDir, lm, fmt: NumberFormat, hs: HiddenStates, examples,
              rows: list[dict], progress: bool) -> tuple[dict, list[dict]]:
    """(``results["intervention"]``: scalars and histograms, the CSV rows: each prompt with
    its answer and the clean, rotated and random-control predictions)."""
    layer = intervention_layer(s, rows)
    probe = fit_operand_probe(hs, s.intervene_role, layer, s.token, s.intervene_place,
                              pca_dim=s.mod_pca_dim, alpha=s.digit_alpha)
    res = digit_intervention(lm, examples, fmt, probe, token=s.token, role=s.intervene_role,
                             layer=layer, shift=s.intervene_shift, seed=s.seed,
                             batch_size=s.batch_size, progress=progress,
                             store=run.store("intervention"))
    summary = {k: v for k, v in res.items() if k not in PER_EXAMPLE}
    summary["layer_from"] = ("--intervene-layer" if s.intervene_layer is not None else
                             "the most accurate circular probe of that place")
    csv_rows = [{"prompt": e.prompt, "a": e.a, "b": e.b, "answer": e.answer,
                 **{k: res[k][i] for k in PER_EXAMPLE}} for i, e in enumerate(examples)]
    return summary, csv_rows


# ------------------------------------------------------------------ report view
def digit_html(results: dict) -> str:
    """The digit-probe table (best layer per role, place and kind with its baselines) and
    the intervention's summary, where the job has them."""
    parts = []
    if results.get("digit_probes"):
        parts.append(html_table(best_probe_rows(results["digit_probes"]), caption=(
            "Digit probes (Levy & Geva): per role, digit place and kind, the layer with the "
            "best held-out accuracy, beside shuffled labels, the random-init model and the "
            "most frequent digit's share (chance).")))
    iv = results.get("intervention")
    if iv:
        parts.append(html_table([{k: iv.get(k) for k in (
            "token", "role", "layer", "probe_place", "shift", "n_scored", "rate_shifted",
            "rate_shifted_random", "rate_target", "rate_changed", "rate_changed_random",
            "probe_moved")}], caption=(
            f"Digit intervention: {iv.get('token')}'s digit {iv.get('probe_place')} rotated by "
            f"+{iv.get('shift')} along its circular probe; rate_shifted = share of prompts "
            "whose answer digit moved by the same shift, against a random direction of the "
            "same norm (rate_shifted_random).")))
    return "\n".join(parts)


def intervention_findings(job_id: str, results: dict) -> list[str]:
    iv = results.get("intervention")
    if not iv:
        return []
    return [f"{job_id}: rotating {iv['token']}'s digit {iv['probe_place']} by +{iv['shift']} "
            f"({iv['role']} layer {iv['layer']}) moved the answer's digit by +{iv['shift']} in "
            f"{percent(iv['rate_shifted'])} of prompts (random direction: "
            f"{percent(iv['rate_shifted_random'])})."]
