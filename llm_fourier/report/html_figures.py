"""Analysis-specific parts of the HTML report: tables and figures drawn from results.json.

``job_extras`` returns HTML for one job, ``section_extras`` for a whole section (comparisons
across jobs, with report-level figures in ``OUT/figures/`` and tables in ``OUT/tables/``).
Each reads the result layout of one command defensively and draws nothing when it is
absent, so the generic rendering of ``report.html`` always works.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import numpy as np

from llm_fourier.report.files import save_figure, write_csv
from llm_fourier.report.html import figure, html_table
from llm_fourier.report.plots import pyplot

# Zhou et al., Table 1: fine-tuned GPT-2-XL test accuracy (%) per ablation row
PAPER_TABLE1 = {"none": 99.74, "attn+MLP low removed": 5.94, "attn low removed": 99.12,
                "MLP low removed": 35.89, "attn+MLP high removed": 27.08,
                "attn high removed": 78.36, "MLP high removed": 98.10}


def _details(title: str, body: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{body}</details>"


def record_tables(results: dict, skip: tuple[str, ...] = (), max_rows: int = 60) -> str:
    """Every top-level list of flat records (e.g. outliers) as a captioned table."""
    parts = []
    for key, value in results.items():
        if key in skip:
            continue
        if (isinstance(value, list) and value and len(value) <= max_rows
                and all(isinstance(r, dict) for r in value)
                and all(not isinstance(v, (dict, list)) for r in value for v in r.values())):
            table = html_table(value, caption=key.replace("_", " "))
            parts.append(table if len(value) <= 12 else
                         _details(f"{key} ({len(value)} rows)", table))
    return "\n".join(parts)


def _periods(outliers, n: int = 4) -> str:
    return " ".join(f"{o.get('period'):g}" for o in (outliers or [])[:n]
                    if isinstance(o.get("period"), (int, float)))


def probe_layer_rows(results: dict) -> list[dict]:
    """Per layer: residual lens accuracy and, for attention and MLP, the top outlier periods
    and the low-frequency energy fraction."""
    acc, layers = results.get("accuracy", {}), results.get("layers", {})
    rows = []
    for i in range(int(results.get("n_layers", 0))):
        row: dict = {"layer": i}
        block = acc.get("block", [])
        if i < len(block):
            row["resid exact"] = block[i].get("exact")
            row["resid within 10"] = block[i].get("within_10")
        for role, name in (("attn", "attn"), ("mlp", "MLP")):
            info = layers.get(role, [])
            if i < len(info):
                row[f"{name} periods"] = _periods(info[i].get("outliers"))
                row[f"{name} low frac"] = info[i].get("low_fraction")
        rows.append(row)
    return rows


def ablation_rows(results: dict) -> list[dict]:
    """Table 1 layout: accuracy (%) and error analysis per ablation row."""
    rows = []
    for r in results.get("table", []):
        acc = r.get("accuracy")
        rows.append({"ablation": r.get("row"),
                     "accuracy %": None if acc is None else 100 * acc,
                     "loss": r.get("loss"), "errors": r.get("n_errors"),
                     "errors multiple of 10": r.get("frac_errors_mult_10"),
                     "max |error|": r.get("max_abs_error"),
                     "mod-10 accuracy": r.get("mod10_accuracy")})
    return rows


def _flat(row: dict) -> dict:
    """Lists in a record as space-separated text (e.g. key frequencies)."""
    return {k: " ".join(str(x) for x in v) if isinstance(v, list) else v for k, v in row.items()
            if not isinstance(v, dict)}


TOY_MEASURES = ("test_accuracy", "test_loss", "restricted_loss", "excluded_loss", "gini_embed",
                "gini_neuron_logit", "ffd", "fcr", "fraction_neurons_explained",
                "sum_squared_weights", "key_frequencies")


def transplant_tables(results: dict) -> str:
    """Runs of both arms, and the ablation accuracy of each arm side by side."""
    arms = results.get("arms", {})
    runs = [_flat(r) for arm in arms.values() for r in arm.get("runs", [])]
    labels: list[str] = []
    for arm in arms.values():
        labels += [k for k in arm.get("summary", {}).get("ablation_accuracy_mean", {})
                   if k not in labels]
    ablation = [{"ablation": label, **{f"{name} accuracy": a.get("summary", {}).get(
        "ablation_accuracy_mean", {}).get(label) for name, a in arms.items()}}
        for label in labels]
    return (html_table(runs, caption="Each trained adder: test accuracy, error spread and the "
                       "Fourier outlier periods of its embeddings, attention and MLP.")
            + html_table(ablation, caption="Mean test accuracy per arm under each frequency "
                         "ablation."))


def job_extras(section: str, out: Path, job_id: str, entry: dict, results: dict) -> str:
    """Tables and figures for one job of ``section``."""
    if section == "transplant" and results.get("arms"):
        return transplant_tables(results)
    if section == "toy" and entry.get("command") == "toy train" and results.get("seeds"):
        return html_table([_flat(r) for r in results["seeds"]], caption="Per seed at the end "
                          "of training: losses, accuracies, epochs of memorisation and "
                          "grokking, and progress measures.")
    if section == "toy" and "gini_embed" in results:
        return html_table([{"measure": k, "value": " ".join(map(str, results[k]))
                            if isinstance(results[k], list) else results[k]}
                           for k in TOY_MEASURES if k in results],
                          caption="Fourier analysis of the checkpoint: key frequencies, "
                          "restricted / excluded loss, sparsity (Gini, FFD, FCR) and the "
                          "fraction of MLP neurons explained by one frequency.")
    if section == "probe" and results.get("layers"):
        return html_table(probe_layer_rows(results), caption="Per layer: logit-lens accuracy "
                          "of the residual stream; Fourier outlier periods (largest first) and "
                          "low-frequency energy fraction of attention and MLP outputs.")
    if section == "ablate" and results.get("table"):
        return html_table(ablation_rows(results), caption="Filter ablations (Table 1 layout): "
                          "accuracy on the split with the named components removed at every "
                          "filtered layer.")
    return record_tables(results)


def _ablation_comparison(out: Path, results: dict) -> str:
    labels: list[str] = []
    for res in results.values():
        labels += [r["row"] for r in res.get("table", []) if r.get("row") not in labels]
    if not labels:
        return ""
    rows = []
    for label in labels:
        row: dict = {"ablation": label}
        for job, res in results.items():
            match = [r for r in res.get("table", []) if r.get("row") == label]
            row[job] = 100 * match[0]["accuracy"] if match and match[0].get("accuracy") \
                is not None else None
        row["paper (GPT-2-XL)"] = PAPER_TABLE1.get(label)
        rows.append(row)
    write_csv(out / "tables" / "ablation_table1.csv", rows)
    return html_table(rows, caption="Test accuracy (%) per ablation and job, beside Zhou et "
                      "al.'s Table 1 for fine-tuned GPT-2-XL (tables/ablation_table1.csv).")


def _model_name(entry: dict, res: dict) -> str:
    return entry.get("model") or Path(str(res.get("model", ""))).name


def _embed_comparison(out: Path, entries: dict, results: dict) -> str:
    plt = pyplot()

    rows, fig, ax = [], None, None
    for job, res in results.items():
        spec = [r for r in res.get("spectrum", []) if r.get("k", 0) >= 1]
        probes = {p.get("period"): p.get("kappa") for p in res.get("mod_probes", []) or []}
        rows.append({"job": job, "model": _model_name(entries[job], res),
                     "outlier periods": _periods(res.get("outliers"), 6),
                     "low frac": (res.get("low_high") or {}).get("low_fraction"),
                     **{f"mod-{t} kappa": v for t, v in probes.items()}})
        if spec:
            if fig is None:
                fig, ax = plt.subplots(figsize=(9, 3.2))
            mags = np.array([r["magnitude"] for r in spec], dtype=float)
            ax.plot([r["k"] for r in spec], mags / (mags.max() or 1.0), lw=0.9, label=job)
    parts = [html_table(rows, caption="Outliers of the number-embedding spectra and mod-T "
                        "linear probe kappa per job.")]
    if fig is not None:
        ax.set(xlabel="Fourier component k", ylabel="norm / max", yscale="log",
               title="Number-embedding spectra, each scaled to its maximum")
        ax.legend(fontsize=7)
        path = save_figure(fig, out / "figures" / "embedding_spectra.png")
        parts.append(figure(path, "All embedding spectra on one axis (log scale): outliers "
                                  "stand above the smooth low-frequency background."))
    return "\n".join(parts)


def _probe_comparison(entries: dict, results: dict) -> str:
    rows = []
    for job, res in results.items():
        layers = res.get("layers", {})
        row: dict = {"job": job, "model": _model_name(entries[job], res),
                     "examples": res.get("n_examples")}
        block = res.get("accuracy", {}).get("block", [])
        if block:
            row["last-layer resid exact"] = block[-1].get("exact")
        for role, name in (("attn", "attn"), ("mlp", "MLP")):
            count = Counter(round(o["period"], 2) for layer in layers.get(role, [])
                            for o in (layer.get("outliers") or [])[:4] if "period" in o)
            row[f"{name}: most frequent periods"] = " ".join(f"{p:g}" for p, _ in
                                                             count.most_common(5))
        rows.append(row)
    return html_table(rows, caption="Per job: final-layer lens accuracy and the outlier "
                      "periods seen most often across layers.")


def _transplant_comparison(results: dict) -> str:
    rows = []
    for job, res in results.items():
        source = (res.get("source") or {}).get("source")
        for name, arm in res.get("arms", {}).items():
            sm = arm.get("summary", {})
            errors = sm.get("errors", {})
            rows.append({"job": job, "arm": name, "source": source if name != "scratch"
                         else "-", "seeds": len(sm.get("seeds", [])),
                         "accuracy mean": sm.get("accuracy_mean"),
                         "accuracy std": sm.get("accuracy_std"),
                         "errors off by 1": errors.get("off_by_1"),
                         "errors within 2": errors.get("within_2"),
                         "errors multiples of 10": errors.get("off_by_10s")})
    return html_table(rows, caption="Transplant comparison: test accuracy of adders trained "
                      "from scratch and with transplanted number embeddings (mean and std over "
                      "seeds), and how their errors spread.")


def _toy_comparison(entries: dict, results: dict) -> str:
    rows = []
    for job, res in results.items():
        for r in res.get("seeds", []) if entries[job].get("command") == "toy train" else []:
            rows.append({"job": job, **{k: _flat(r).get(k) for k in (
                "seed", "epoch", "memorized_epoch", "grokked_epoch", "train_accuracy",
                "test_accuracy", "test_loss", "key_frequencies")}})
    return html_table(rows, caption="Grokking runs: epochs at which the model memorised the "
                      "training set and generalised (grokked), and the final key frequencies.")


def section_extras(section: str, out: Path, entries: dict, results: dict) -> str:
    """Comparisons across the jobs of ``section``."""
    if section == "transplant":
        return _transplant_comparison(results)
    if section == "toy":
        return _toy_comparison(entries, results)
    if section == "ablate":
        return _ablation_comparison(out, results)
    if section == "embed":
        return _embed_comparison(out, entries, results)
    if section == "probe":
        return _probe_comparison(entries, results)
    return ""


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def key_findings(entries: dict, results: dict) -> list[str]:
    """One plain sentence per finished job with a headline result (the page's summary)."""
    lines = []
    for job, res in results.items():
        command = entries[job].get("command")
        if command == "embed" and "outliers" in res:
            periods = _periods(res["outliers"], 6)
            lines.append(f"{job}: number-embedding spectrum outliers at periods {periods}."
                         if periods else f"{job}: no Fourier outliers in the number embeddings.")
        elif command == "ablate" and res.get("table"):
            rows = {r["row"]: r.get("accuracy") for r in res["table"]}
            worst = min((r for r in rows if r != "none"), key=lambda r: rows[r] or 0,
                        default=None)
            if worst is not None:
                lines.append(f"{job}: accuracy {_pct(rows.get('none'))} without ablation, "
                             f"{_pct(rows[worst])} with {worst}.")
        elif command == "transplant" and res.get("arms"):
            arms = res["arms"]
            text = ", ".join(f"{name} {_pct(a.get('summary', {}).get('accuracy_mean'))}"
                             for name, a in arms.items())
            lines.append(f"{job}: adder test accuracy {text}.")
        elif command == "toy train" and res.get("seeds"):
            for r in res["seeds"]:
                grok = r.get("grokked_epoch")
                lines.append(f"{job} seed {r.get('seed')}: memorised at epoch "
                             f"{r.get('memorized_epoch')}, "
                             + (f"grokked at epoch {grok}" if grok is not None
                                else "did not grok") + f" (test accuracy "
                             f"{_pct(r.get('test_accuracy'))}, key frequencies "
                             f"{_flat(r).get('key_frequencies') or 'none'}).")
    return lines
