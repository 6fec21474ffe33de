"""Analysis and report of the transplant experiment (``llm-fourier transplant``).

Each trained adder is loaded back from its Hugging Face folder with
``llm_fourier.model.loading.load_model`` and analysed by the same functions as ``probe`` and
``ablate``: ``lens.run_lens`` / ``layer_summary`` (per-layer attention / MLP spectra of the
number logits, outliers, low/high energy, lens accuracy) and ``ablation.ablation_table``
(Table 1 filters). The error structure splits the test errors into off-by-1 (|e| = 1),
within 2 and nonzero multiples of 10; the embedding spectrum is the per-component L2 norm
over the columns of the number rows of W_E (``probes.spectrum``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from llm_fourier.analyses.ablation import ablation_table, number_filters
from llm_fourier.analyses.lens import layer_summary, run_lens
from llm_fourier.model.numbers import number_rows
from llm_fourier.output.files import save_figure, write_csv
from llm_fourier.output.plots import component_layer_heatmap, error_histograms, pyplot
from probes import FourierBasis, spectrum


def error_structure(histogram: dict) -> dict:
    """Shares of the numeric errors that are +-1, within +-2, and nonzero multiples of 10."""
    hist = {int(k): int(v) for k, v in histogram.items()}
    n = sum(hist.values())
    share = lambda pred: sum(v for e, v in hist.items() if pred(e)) / n if n else None  # noqa: E731
    return {"numeric_errors": n, "off_by_1": share(lambda e: abs(e) == 1),
            "within_2": share(lambda e: abs(e) <= 2),
            "off_by_10s": share(lambda e: e != 0 and e % 10 == 0)}


def periods_text(outliers: list[dict], n: int = 4) -> str:
    return " ".join(f"{o['period']:g}" for o in outliers[:n]) or "-"


def embedding_spectrum(rows: np.ndarray, tau: int) -> dict:
    spec = spectrum(np.asarray(rows, dtype=np.float64), FourierBasis(len(rows)), axis=0)
    return {"outliers": [o.as_dict() for o in spec.outliers(top=8)], **spec.low_high(tau),
            "magnitude": spec.nonconstant.tolist()}


def analyse_model(lm, examples, numbers, test: dict, tau: int, batch_size: int) -> dict:
    """Error structure, embedding spectrum, lens and ablation table of one trained adder."""
    rows = number_rows(lm.embedding(), numbers, "W_E").detach().double().cpu().numpy()
    accs = run_lens(lm, examples, numbers, batch_size=batch_size, progress=False)
    lens = {role: {"accuracy": acc.accuracy(),
                   "layers": layer_summary(acc.spectra(), tau, top=6),
                   "magnitude": [s.nonconstant.tolist() for s in acc.spectra()]}
            for role, acc in accs.items()}
    table = ablation_table(lm, examples, numbers, tau=tau, batch_size=batch_size,
                           progress=False)
    # a filter of rank D removes every direction (D < the rows it must null): uninformative
    ranks = {name: f.rank for name, f in number_filters(lm, numbers, tau=tau).items()}
    return {
        "p": numbers.p,
        "d_model": lm.d_model,
        "filter_ranks": ranks,
        "test": {k: v for k, v in test.items() if k != "predictions"},
        "errors": error_structure(test.get("error_histogram", {})),
        "embedding": embedding_spectrum(rows, tau),
        "lens": lens,
        "ablation": [{"row": r["row"], "accuracy": r["accuracy"], "loss": r["loss"],
                      "frac_errors_mult_10": r["frac_errors_mult_10"]} for r in table],
    }


def summary_row(arm: str, seed: int, a: dict) -> dict:
    last = -1  # the last layer's attention and MLP carry the answer in small adders
    return {"arm": arm, "seed": seed, "test_accuracy": a["test"]["accuracy"],
            "test_loss": a["test"]["loss"], "off_by_1": a["errors"]["off_by_1"],
            "within_2": a["errors"]["within_2"], "off_by_10s": a["errors"]["off_by_10s"],
            "embedding_periods": periods_text(a["embedding"]["outliers"]),
            "embedding_high_fraction": a["embedding"]["high_fraction"],
            "attn_periods": periods_text(a["lens"]["attn"]["layers"][last]["outliers"]),
            "mlp_periods": periods_text(a["lens"]["mlp"]["layers"][last]["outliers"]),
            "attn_high_fraction": a["lens"]["attn"]["layers"][last]["high_fraction"],
            "mlp_high_fraction": a["lens"]["mlp"]["layers"][last]["high_fraction"]}


def arm_summary(analyses: dict[int, dict]) -> dict:
    """Mean / std of test accuracy over seeds and the pooled error histogram."""
    accs = np.array([a["test"]["accuracy"] for a in analyses.values()])
    pooled: Counter = Counter()
    for a in analyses.values():
        pooled.update({int(k): int(v) for k, v in a["test"]["error_histogram"].items()})
    ablation = {}
    for a in analyses.values():
        for r in a["ablation"]:
            ablation.setdefault(r["row"], []).append(r["accuracy"])
    return {"seeds": sorted(analyses), "accuracy_mean": float(accs.mean()),
            "accuracy_std": float(accs.std()), "accuracy": accs.tolist(),
            "error_histogram": dict(sorted(pooled.items())), "errors": error_structure(pooled),
            "ablation_accuracy_mean": {k: float(np.mean(v)) for k, v in ablation.items()}}


def write_report(out: Path, analyses: dict[str, dict[int, dict]], source: dict,
                 title: str) -> list[str]:
    """CSV files and PNGs of all finished arms; returns the file names."""
    plt = pyplot()
    files = []
    write_csv(out / "runs.csv", [summary_row(arm, s, a) for arm, seeds in analyses.items()
                                 for s, a in sorted(seeds.items())])
    lens_rows, abl_rows = [], []
    for arm, seeds in analyses.items():
        for s, a in sorted(seeds.items()):
            for role, info in a["lens"].items():
                for acc, lay in zip(info["accuracy"], info["layers"]):
                    lens_rows.append({"arm": arm, "seed": s, "role": role, **acc,
                                      "periods": periods_text(lay["outliers"], 6),
                                      "low_fraction": lay["low_fraction"]})
            abl_rows += [{"arm": arm, "seed": s, **r} for r in a["ablation"]]
    write_csv(out / "lens.csv", lens_rows)
    write_csv(out / "ablation.csv", abl_rows)
    files += ["runs.csv", "lens.csv", "ablation.csv"]

    fig, ax = plt.subplots(figsize=(4 + 0.5 * len(analyses), 3))
    for i, seeds in enumerate(analyses.values()):
        accs = [a["test"]["accuracy"] for _, a in sorted(seeds.items())]
        ax.bar(i, np.mean(accs), color=f"C{i}", alpha=0.4)
        ax.plot([i] * len(accs), accs, "o", color=f"C{i}")
    ax.set_xticks(range(len(analyses)), list(analyses))
    ax.set(ylabel="test accuracy", ylim=(0, 1.02), title=title)
    save_figure(fig, out / "accuracy.png")
    error_histograms({arm: arm_summary(seeds)["error_histogram"]
                      for arm, seeds in analyses.items()}, out / "error_histograms.png",
                     "test errors pooled over seeds (prediction - answer)")

    fig, ax = plt.subplots(figsize=(8, 3))
    if source.get("magnitude"):
        m = np.asarray(source["magnitude"])
        ax.plot(np.arange(1, m.size + 1), m / m.max(), lw=1.6, ls="--", color="k",
                label="source")
    for i, (arm, seeds) in enumerate(analyses.items()):
        m = np.mean([a["embedding"]["magnitude"] for a in seeds.values()], axis=0)
        ax.plot(np.arange(1, m.size + 1), m / m.max(), lw=0.8, color=f"C{i}",
                label=f"{arm} (trained)")
    ax.set(xlabel="Fourier component k", ylabel="L2 norm / max",
           title="number embeddings: Fourier spectrum")
    ax.legend(fontsize=7)
    save_figure(fig, out / "embedding_spectra.png")
    files += ["accuracy.png", "error_histograms.png", "embedding_spectra.png"]

    for arm, seeds in analyses.items():
        first = seeds[min(seeds)]
        for role in ("attn", "mlp"):
            mat = np.asarray(first["lens"][role]["magnitude"]).T  # components x layers
            periods = FourierBasis(first["p"]).periods
            name = f"heatmap_{arm}_{role}.png"
            component_layer_heatmap(mat, out / name, f"{arm} (seed {min(seeds)}): {role}",
                                    periods)
            files.append(name)
    return files
