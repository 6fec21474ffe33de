"""The digit units of ``llm-fourier hidden``: digit probes (Levy & Geva) on the collected
states and the digit intervention, with their report views. Each probe row keeps its
bootstrap interval over numbers and permutation p-value (``digit_probes.digit_rows``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_fourier.analyses.digit_probes import (
    digit_intervention,
    digit_rows,
    fit_operand_probe,
    probe_digit_layers,
)
from llm_fourier.commands.digit_views import best_probe_rows
from llm_fourier.errors import UserError
from llm_fourier.output.digit_plots import digit_probe_plot
from llm_fourier.output.html import html_table, percent

if TYPE_CHECKING:
    from llm_fourier.commands.hidden_units import HiddenRun

PER_EXAMPLE = ("clean", "rotated", "random")  # intervention lists that go to the CSV


def _key(row: dict) -> tuple:
    return row["role"], row["layer"], row["target"], row["place"], row["kind"]


def digit_probes(h: HiddenRun) -> None:
    """Circular, linear and value probes of the target's digits (with shuffled-label
    baselines), beside the same probes on the random-init copy's states, if any."""
    s = h.s
    kw = {"targets": (h.target,), "places": s.digit_places, "kinds": s.digit_kinds,
          "n_splits": s.folds, "pca_dim": s.mod_pca_dim, "alpha": s.digit_alpha, "seed": s.seed}
    h.digit = digit_rows(probe_digit_layers(h.hs, shuffled=True, n_shuffles=3,
                                            progress=h.progress, **kw), s.stats_config(s.seed))
    if h.random_hs is not None:
        rand = probe_digit_layers(h.random_hs, shuffled=False, progress=False, **kw)
        accuracy = {_key(r): r["accuracy"] for r in digit_rows(rand)}
        for row in h.digit:
            row["random_accuracy"] = accuracy.get(_key(row))
    h.results |= {"digit_kinds": list(s.digit_kinds), "digit_probes": h.digit}
    if h.digit:
        h.run.write_csv("digit_probes.csv", h.digit)
        if h.run.writes:
            digit_probe_plot(h.digit, h.run.file("digit_probes.png"),
                             f"digit probes of {h.target} at the {s.token} token")


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
                             seed=s.seed, batch_size=s.batch_size, progress=h.progress,
                             store=h.run.store("intervention"))
    h.results["intervention"] = {k: v for k, v in res.items() if k not in PER_EXAMPLE} | {
        "layer_from": "--intervene-layer" if s.intervene_layer is not None else
                      "the most accurate circular probe of that place"}
    h.run.write_csv("intervention.csv", [
        {"prompt": e.prompt, "a": e.a, "b": e.b, "answer": e.answer,
         **{k: res[k][i] for k in PER_EXAMPLE}} for i, e in enumerate(examples)])


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
