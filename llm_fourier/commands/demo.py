"""``llm-fourier demo``: an offline analysis that needs no weights.

Builds number embeddings with planted Fourier features (periods 2, 2.5, 5, 10 over a smooth
low-frequency background and noise, as in GPT-2's number tokens), runs the spectrum and
outlier detection of ``probes`` on them, and writes ``results.json`` and a spectrum plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from llm_fourier.commands import Command
from llm_fourier.report.files import save_figure, write_json
from llm_fourier.report.tables import format_table
from probes import FourierBasis, spectrum


def planted_embeddings(p: int, dim: int, periods, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.arange(p)[:, None]
    emb = 0.3 * np.cumsum(rng.standard_normal((p, dim)), axis=0)  # smooth background
    emb += 0.5 * rng.standard_normal((p, dim))
    for period in periods:
        phase = rng.uniform(0, 2 * np.pi, dim)
        emb += rng.uniform(0.5, 1.5, dim) * np.cos(2 * np.pi * x / period + phase)
    return emb


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    basis = FourierBasis(args.p)
    emb = planted_embeddings(args.p, args.dim, (2, 2.5, 5, 10), args.seed)
    spec = spectrum(emb, basis, axis=0)
    outliers = [o.as_dict() for o in spec.outliers()]
    results = {"p": args.p, "spectrum": spec.records(), "outliers": outliers,
               "low_high": spec.low_high()}
    write_json(out / "results.json", results)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(spec.ks, spec.nonconstant, lw=0.8)
    for o in outliers:
        ax.annotate(f"T={o['period']:g}", (o["k"], o["magnitude"]), fontsize=8)
    ax.set(xlabel="Fourier component k", ylabel="L2 norm", title="Planted number embeddings")
    save_figure(fig, out / "embedding_spectrum.png")
    print(format_table(outliers, ["k", "period", "magnitude"]))
    print(f"results: {out / 'results.json'}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--p", type=int, default=521, help="numbers 0..p-1 (default: 521)")
    parser.add_argument("--dim", type=int, default=64, help="embedding width")
    parser.add_argument("--seed", type=int, default=0)


COMMAND = Command("demo", "offline demo: Fourier analysis of planted number embeddings",
                  add_arguments, run)
