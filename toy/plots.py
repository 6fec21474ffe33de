"""Figures of the toy side: loss curves with progress measures and phase marks, the
embedding spectrum, the neuron-frequency histogram and the frequency-ablation curve."""

from __future__ import annotations

from pathlib import Path

from llm_fourier.output.files import save_figure
from llm_fourier.output.plots import pyplot


def phase_epochs(rows: list[dict], threshold: float = 0.99) -> dict:
    """First logged epochs of memorization (train accuracy >= threshold) and grokking
    (test accuracy >= threshold) of one seed's history rows; None if not reached."""
    def first(key):
        return next((r["epoch"] for r in rows if r[key] >= threshold), None)
    return {"memorized_epoch": first("train_accuracy"), "grokked_epoch": first("test_accuracy")}


def plot_training(history: list[dict], path: str | Path) -> Path:
    """Train/test loss per seed (log scale) with memorization and grokking marked, and the
    progress measures logged along the way (restricted/excluded loss, Gini, weights)."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    seeds = sorted({r["seed"] for r in history})
    for i, seed in enumerate(seeds):
        rows = [r for r in history if r["seed"] == seed]
        color = f"C{i % 10}"
        ep = [r["epoch"] for r in rows]
        axes[0].plot(ep, [max(r["train_loss"], 1e-12) for r in rows], color=color, ls="--",
                     lw=1, label=f"seed {seed} train")
        axes[0].plot(ep, [max(r["test_loss"], 1e-12) for r in rows], color=color, lw=1.2,
                     label=f"seed {seed} test")
        marks = phase_epochs(rows)
        for name, ls in (("memorized_epoch", ":"), ("grokked_epoch", "-.")):
            if marks[name] is not None:
                for ax in axes:
                    ax.axvline(marks[name], color=color, ls=ls, lw=0.8, alpha=0.7)
        meas = [r for r in rows if "restricted_loss" in r]
        if meas:
            me = [r["epoch"] for r in meas]
            axes[1].plot(me, [max(r["restricted_loss"], 1e-12) for r in meas], color=color,
                         marker=".", label=f"seed {seed} restricted")
            axes[1].plot(me, [max(r["excluded_loss"], 1e-12) for r in meas], color=color,
                         ls="--", marker=".", label=f"seed {seed} excluded")
            ssw0 = meas[0]["sum_squared_weights"] or 1.0
            axes[2].plot(me, [r["gini_embed"] for r in meas], color=color, marker=".",
                         label=f"seed {seed} Gini W_E")
            axes[2].plot(me, [r["gini_neuron_logit"] for r in meas], color=color, ls="--",
                         label=f"seed {seed} Gini W_L")
            axes[2].plot(me, [r["sum_squared_weights"] / ssw0 for r in meas], color=color,
                         ls=":", label=f"seed {seed} sum W^2 (rel.)")
    axes[0].set(yscale="log", ylabel="loss",
                title="Loss (dotted line: memorized, dash-dot: grokked)")
    axes[1].set(yscale="log", ylabel="loss", title="Restricted and excluded loss")
    axes[2].set(xlabel="epoch", ylabel="value", title="Gini of Fourier norms; weight norm")
    for ax in axes:
        ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def plot_embedding_spectrum(analysis: dict, path: str | Path) -> Path:
    plt = pyplot()
    spec = analysis["embed_spectrum"]
    keys = set(analysis["key_frequencies"])
    fig, ax = plt.subplots(figsize=(8, 3))
    ks = [r["k"] for r in spec]
    ax.bar(ks, [r["norm"] for r in spec],
           color=["C3" if k in keys else "C0" for k in ks])
    ax.set(xlabel="frequency k (DFT over p)", ylabel="Fourier norm of W_E",
           title=f"Embedding spectrum (key frequencies in red: {sorted(keys)})")
    return save_figure(fig, path)


def plot_neuron_histogram(analysis: dict, path: str | Path) -> Path:
    plt = pyplot()
    hist = analysis["neuron_frequency_histogram"]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar([int(k) for k in hist], list(hist.values()), color="C2")
    ax.set(xlabel="dominant frequency k (0: dead neuron)", ylabel="neurons",
           title=f"Neurons by frequency ({analysis['neuron_frequency_source']}); "
                 f"{analysis['fraction_neurons_explained']:.0%} explained by one frequency")
    return save_figure(fig, path)


def plot_ablation(analysis: dict, path: str | Path) -> Path:
    plt = pyplot()
    curve = analysis["ablation_curve"]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = list(range(len(curve)))
    ax.plot(x, [r["accuracy"] for r in curve], marker="o", label="all data")
    ax.plot(x, [r["test_accuracy"] for r in curve], marker="s", label="test")
    ax.set_xticks(x, ["none"] + [str(r["removed"][-1]) for r in curve[1:]])
    ax.set(xlabel="key frequency removed (cumulative)", ylabel="accuracy", ylim=(-0.02, 1.02),
           title="Frequency ablation in logit space")
    ax.legend()
    return save_figure(fig, path)
