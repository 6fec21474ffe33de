"""Figures of attention heads (``analyses.heads``): one heatmap per measure, heads x layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from llm_fourier.output.files import save_figure
from llm_fourier.output.plots import pyplot


def head_heatmaps(panels: Mapping[str, np.ndarray], layers: Sequence[int], path: str | Path,
                  title: str = "") -> Path:
    """One panel per measure: ``panels[name]`` is L x H (layers as rows, heads as columns);
    measures that can take both signs get a diverging colour map centred on zero, shares
    and attention weights the scale 0..1."""
    plt = pyplot()
    n = len(panels)
    first = np.asarray(next(iter(panels.values())), dtype=float)
    width = max(3.4, 0.22 * first.shape[1] + 2.6)
    fig, axes = plt.subplots(1, n, figsize=(width * n, max(3.0, 0.22 * len(layers) + 1.8)),
                             squeeze=False, layout="constrained")
    for ax, (name, matrix) in zip(axes[0], panels.items()):
        matrix = np.asarray(matrix, dtype=float)
        finite = matrix[np.isfinite(matrix)]
        signed = finite.size and finite.min() < 0 < finite.max()
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        share = name.startswith("attention") or "share" in name  # fractions: 0..1
        low, high = (-bound, bound) if signed else (0.0, 1.0) if share else (None, None)
        im = ax.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest",
                       cmap="RdBu_r" if signed else "viridis", vmin=low, vmax=high)
        fig.colorbar(im, ax=ax)
        ax.set(xlabel="head", ylabel="layer", title=name)
        ax.set_yticks(range(len(layers)), labels=[str(i) for i in layers])
        ax.set_xticks(range(matrix.shape[1]))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
