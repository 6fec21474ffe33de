"""Figures of Fourier neurons (``analyses.fourier_neurons``): which periods the neurons write,
and knockouts. Takes any object with the ``NeuronSpectra`` interface (no analysis import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llm_fourier.output.files import save_figure
from llm_fourier.output.plots import pyplot

MARKED_PERIODS = (2, 2.5, 5, 10)


def neuron_period_heatmap(spectra: Any, path: str | Path, min_share: float = 0.5,
                          title: str = "") -> Path:
    """Neurons per top component (rows, k = 1..K) and layer (columns), counting those whose
    top component holds at least ``min_share`` of their non-constant energy."""
    plt = pyplot()
    counts = spectra.counts(min_share)
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * counts.shape[1] + 3), 4))
    im = ax.imshow(counts, aspect="auto", origin="lower", interpolation="nearest",
                   cmap="magma", extent=(-0.5, counts.shape[1] - 0.5, 0.5, counts.shape[0] + 0.5))
    fig.colorbar(im, ax=ax, label=f"neurons (share >= {min_share:g})", pad=0.16)
    ax.set(xlabel="layer index", ylabel="top Fourier component k",
           title=title or "Fourier neurons per component and layer")
    ax.set_xticks(range(len(spectra.layers)), labels=[str(i) for i in spectra.layers])
    basis = spectra.basis
    marks = {k: f"T={T:g}" for T in MARKED_PERIODS if 1 <= (k := basis.k_of_period(T))
             <= basis.n_components and abs(basis.period(k) - T) < 1e-9}
    sec = ax.secondary_yaxis("right")
    sec.set_yticks(list(marks), labels=list(marks.values()))
    return save_figure(fig, path)


def knockout_plot(result: dict, path: str | Path, title: str = "") -> Path:
    """Per period: accuracy with its top neurons knocked out beside random draws (mean,
    std as error bar, min..max as a thin line) and the unablated accuracy (dashed)."""
    plt = pyplot()
    periods = result["periods"]
    x = np.arange(len(periods))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(periods) + 2), 3.5))
    top = [p["top"]["accuracy"] for p in periods]
    mean, std, lo, hi = (np.array([p["random"][f"accuracy_{s}"] for p in periods])
                         for s in ("mean", "std", "min", "max"))
    ax.bar(x - 0.2, top, 0.4, label="top neurons of the period", color="C3")
    ax.bar(x + 0.2, mean, 0.4, yerr=std, capsize=3, label="random neurons", color="C0")
    ax.vlines(x + 0.2, lo, hi, color="k", lw=0.8)
    ax.axhline(result["baseline"]["accuracy"], color="0.4", ls="--", lw=1, label="none")
    n = periods[0]["n_neurons"] if periods else 0
    ax.set_xticks(x, labels=[f"T={p['period']:g}" for p in periods])
    ax.set(ylabel="accuracy", ylim=(0, 1.05),
           title=title or f"knocking out {n} neurons per period")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
