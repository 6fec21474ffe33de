"""Report and console views of digit runs, shared by ``probe``, ``ablate`` and ``hidden``.

A run's view is chosen from its ``results.json``, never from its configuration:
``readout_kind`` reads ``results["readout"]`` ("number": single-token numbers, "digit": one
token per digit, None: answers of several tokens without a readout, scored whole). Results
written before these keys existed are number runs.
"""

from __future__ import annotations

from collections import Counter

DIGIT_CAPTIONS = {
    "digit_heatmap_attn": "Attention outputs at every answer position (teacher forced) read "
                          "through the ten digit tokens: mean |Fourier component| over the "
                          "digits (exact DFT over ten points; components k = 1..5 are periods "
                          "10, 5, 3.33, 2.5, 2) per layer.",
    "digit_heatmap_mlp": "MLP outputs at every answer position read through the ten digit "
                         "tokens: mean |Fourier component| (k = 1..5: periods 10, 5, 3.33, "
                         "2.5, 2) per layer.",
    "digit_heatmap_block": "Residual stream after each layer at every answer position, read "
                           "through the ten digit tokens: mean |Fourier component| per "
                           "component and layer.",
    "digit_lens_accuracy": "Digit-lens accuracy per layer (argmax over the ten digit tokens = "
                           "the answer's digit, teacher forced), pooled over the answer's "
                           "digits (black) and per digit place (0 = units); grey: chance.",
    "digit_errors": "Wrong whole answers in digit space, per ablation: share of wrong answers "
                    "that differ from the answer in exactly one digit, by that digit's place "
                    "(left), and how many places wrong answers differ in (right).",
    "digit_probes": "Held-out accuracy of the digit probes per layer (circular: cos/sin of "
                    "2 pi d/10; linear: 10 classes; value: the number itself), one panel per "
                    "role and digit place; dotted: shuffled labels, dashed: random-init "
                    "model, grey: the most frequent digit's share.",
}


def readout_kind(results: dict) -> str | None:
    """"number", "digit", or None (whole answers without a readout)."""
    if "readout" not in results:
        return "number"
    readout = results.get("readout")
    return readout.get("readout") if isinstance(readout, dict) else None


def is_digit_run(results: dict) -> bool:
    return readout_kind(results) == "digit"


# ------------------------------------------------------------------ probe: digit lens
def strongest_period(layer: dict) -> str:
    """The period with the largest energy share in a ``digit_layer_summary`` row."""
    shares = {k[len("share_"):]: v for k, v in layer.items()
              if k.startswith("share_") and isinstance(v, (int, float)) and v == v}
    return max(shares, key=shares.get) if shares else ""


def digit_layer_rows(results: dict) -> list[dict]:
    """Per layer: digit-lens accuracy of the residual stream (pooled and per place),
    attention and MLP, and each module's strongest period and low-frequency share."""
    lens = results.get("digit_lens", {})
    n = len(lens.get("block", {}).get("all", {}).get("accuracy", []))
    rows = []
    for i in range(n):
        row: dict = {"layer": i, "resid exact": lens["block"]["all"]["accuracy"][i]}
        for place, info in enumerate(lens["block"].get("places", [])):
            row[f"resid place {place}"] = info["accuracy"][i]
        for role, name in (("attn", "attn"), ("mlp", "MLP")):
            if role in lens:
                layer = lens[role]["all"]["layers"][i]
                row[f"{name} exact"] = lens[role]["all"]["accuracy"][i]
                row[f"{name} strongest period"] = strongest_period(layer)
                row[f"{name} low frac"] = layer.get("low_fraction")
        rows.append(row)
    return rows


def digit_console_rows(results: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("resid place")}
            for row in digit_layer_rows(results)]


def lens_headline(results: dict) -> dict:
    """The last layer's residual digit-lens accuracy and the strongest periods of attention
    and MLP digit logits across layers (most frequent first)."""
    lens = results.get("digit_lens", {})
    out: dict = {}
    block = lens.get("block", {}).get("all", {}).get("accuracy", [])
    if block:
        out["last-layer resid exact"] = block[-1]
    for role, name in (("attn", "attn"), ("mlp", "MLP")):
        count = Counter(strongest_period(layer)
                        for layer in lens.get(role, {}).get("all", {}).get("layers", []))
        out[f"{name}: most frequent periods"] = " ".join(p for p, _ in count.most_common(3) if p)
    return out


# ------------------------------------------------------------------ ablate: whole answers
def whole_answer_rows(table: list[dict]) -> list[dict]:
    """The ablation table of whole answers for the report: greedy accuracy beside the
    teacher-forced one, the loss of the whole answer, and the digit-space analysis."""
    return [{"ablation": r.get("row"),
             "accuracy %": None if r.get("accuracy") is None else 100 * r["accuracy"],
             "teacher-forced accuracy %": None if r.get("teacher_forced_accuracy") is None
             else 100 * r["teacher_forced_accuracy"],
             "loss (-log p answer)": r.get("loss"), "errors": r.get("n_errors"),
             "one-digit errors": r.get("frac_errors_one_digit"),
             "errors multiple of 10": r.get("frac_errors_mult_10"),
             **{f"digit {place} accuracy": acc
                for place, acc in enumerate(r.get("digit_accuracy") or [])}} for r in table]


def csv_row(row: dict) -> dict:
    """A result row for a CSV: lists of scalars flattened (``digit_accuracy_0``, ...), dicts and
    lists of dicts (histograms) and per-example ``predictions`` left out."""
    out = {}
    for k, v in row.items():
        if k == "predictions" or isinstance(v, dict):
            continue
        if not isinstance(v, list):
            out[k] = v
        elif all(isinstance(x, (int, float)) for x in v):
            out |= {f"{k}_{i}": x for i, x in enumerate(v)}
    return out


def flat_table_row(row: dict, columns) -> dict:
    """One ``table.csv`` row: ``columns`` and the per-place digit accuracy flattened
    (``digit_accuracy_0``, ``digit_accuracy_1``, ...)."""
    return {**{c: row.get(c) for c in columns},
            **{f"digit_accuracy_{p}": acc for p, acc in enumerate(row.get("digit_accuracy") or [])}}


# ------------------------------------------------------------------ hidden: digit probes
def best_probe_rows(rows: list[dict]) -> list[dict]:
    """Per (role, target, place, kind): the layer with the best held-out accuracy, beside
    its shuffled-label and random-init baselines and chance."""
    best: dict = {}
    for r in rows:
        key = (r["role"], r["target"], r["place"], r["kind"])
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    return [{"role": r["role"], "target": r["target"], "place": r["place"], "kind": r["kind"],
             "best layer": r["layer"], "accuracy": r["accuracy"],
             "shuffled": r.get("accuracy_shuffled"), "random init": r.get("random_accuracy"),
             "chance": r.get("chance")} for r in best.values()]
