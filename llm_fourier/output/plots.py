"""Matplotlib figures for reports, each written atomically as PNG.

``component_layer_heatmap``: Fourier components x layers (as the paper's figures);
``spectrum_plot``: one spectrum with its outliers marked by period;
``error_histograms``: signed-error histograms, one panel per evaluation;
``layer_accuracy_plot``: logit-lens accuracy per layer, one panel per role.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from llm_fourier.output.files import save_figure


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_figure(fig, path: str | Path, title: str = "") -> Path:
    """The figure's title (if any), a tight layout, then the PNG."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def accuracy_panels(panels: Mapping[str, object], path: str | Path, title: str, ylabel: str,
                    draw: Callable) -> Path:
    """Accuracy per layer, one panel per role (shared y in 0..1): ``draw(ax, panels[role])``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False,
                             sharey=True)
    for ax, role in zip(axes[0], panels):
        draw(ax, panels[role])
        ax.set(xlabel="layer", title=role, ylim=(-0.02, 1.02))
    axes[0, 0].set_ylabel(ylabel)
    axes[0, -1].legend(fontsize=7)
    return finish_figure(fig, path, title)


def component_layer_heatmap(matrix: np.ndarray, path: str | Path, title: str = "",
                            periods: Sequence[float] | None = None) -> Path:
    """Heatmap of ``matrix`` (components k = 1..K as rows, layers as columns)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.25 * matrix.shape[1] + 3), 4))
    im = ax.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest",
                   extent=(-0.5, matrix.shape[1] - 0.5, 0.5, matrix.shape[0] + 0.5))
    fig.colorbar(im, ax=ax, label="mean magnitude", pad=0.16 if periods is not None else 0.05)
    ax.set(xlabel="layer", ylabel="Fourier component k", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if periods is not None:  # mark the components of periods 2, 2.5, 5, 10 on the right
        marks = {k: f"T={per:g}" for k, per in enumerate(periods, start=1)
                 if any(abs(per - t) < 1e-9 for t in (2, 2.5, 5, 10))}
        sec = ax.secondary_yaxis("right")
        sec.set_yticks(list(marks), labels=list(marks.values()))
    return save_figure(fig, path)


def spectrum_plot(magnitudes: np.ndarray, path: str | Path, outliers: Sequence[Mapping] = (),
                  title: str = "", ylabel: str = "magnitude") -> Path:
    """Line plot of magnitudes over k = 1..K with outliers annotated by period."""
    plt = pyplot()
    m = np.asarray(magnitudes, dtype=float)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(np.arange(1, m.size + 1), m, lw=0.8)
    for o in outliers:
        ax.plot(o["k"], o["magnitude"], "o", ms=4, color="C3")
        ax.annotate(f"T={o['period']:g}", (o["k"], o["magnitude"]), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="Fourier component k", ylabel=ylabel, title=title)
    return save_figure(fig, path)


def error_histograms(histograms: Mapping[str, Mapping[int, int]], path: str | Path,
                     title: str = "") -> Path:
    """One bar panel of signed errors (prediction - answer) per named evaluation."""
    plt = pyplot()
    names = list(histograms)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.8 * max(len(names), 1) + 0.6),
                             squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        hist = {int(k): int(v) for k, v in histograms[name].items()}
        if hist:
            ax.bar(list(hist), list(hist.values()), width=0.8)
        else:
            ax.text(0.5, 0.5, "no numeric errors", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        ax.set_ylabel("count")
        ax.set_title(name, fontsize=9)
    axes[-1, 0].set_xlabel("signed error (prediction - answer)")
    return finish_figure(fig, path, title)


def layer_accuracy_plot(accuracy: Mapping[str, Sequence[Mapping]], path: str | Path,
                        title: str = "") -> Path:
    """Lens accuracy per layer: one panel per role, lines for exact / within 2 / within 10."""
    def draw(ax, rows) -> None:
        for key in ("exact", "within_2", "within_10"):
            ax.plot([r["layer"] for r in rows], [r[key] for r in rows], marker=".", label=key)

    return accuracy_panels(accuracy, path, title, "accuracy", draw)
