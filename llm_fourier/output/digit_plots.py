"""Figures of the digit views (tokenizers that write one token per digit).

``digit_lens_accuracy_plot``: digit-lens accuracy per layer, one panel per role, a line per
digit place beside the pooled one; ``digit_error_panels``: per evaluation, which place the
wrong answers that differ in exactly one digit differ in, and how many places wrong answers
differ in; ``digit_probe_plot``: circular / linear / value digit-probe accuracy per layer,
one panel per (role, place), with shuffled-label and random-init baselines. Each is written
atomically as PNG (``output.files.save_figure``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from llm_fourier.output.plots import accuracy_panels, finish_figure, pyplot


def digit_lens_accuracy_plot(summary: Mapping[str, Mapping], path: str | Path,
                             title: str = "") -> Path:
    """``summary``: ``DigitLens.summary`` (role -> {"all", "places"}, each with
    ``accuracy`` per layer)."""
    def draw(ax, lens: Mapping) -> None:
        pooled = lens["all"]["accuracy"]
        ax.plot(range(len(pooled)), pooled, "k.-", label="all digits")
        for place, info in enumerate(lens["places"]):
            ax.plot(range(len(info["accuracy"])), info["accuracy"], ".--", lw=0.9,
                    label=f"place {place} (10^{place})")
        ax.axhline(0.1, color="grey", lw=0.5)  # chance over ten digits
        ax.xaxis.get_major_locator().set_params(integer=True)

    return accuracy_panels(summary, path, title, "digit lens accuracy", draw)


def digit_error_panels(rows: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """One line of two panels per evaluation (``rows``: dicts with ``row``, ``n_errors``,
    ``one_digit_errors_by_place`` and ``wrong_digits_histogram``): the share of wrong
    answers that differ from the answer in exactly one digit, by that digit's place, and the
    histogram of how many places wrong answers differ in."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 1.7 * max(len(rows), 1) + 0.6),
                             squeeze=False)
    for (left, right), row in zip(axes, rows):
        wrong = max(int(row.get("n_errors") or 0) - int(row.get("n_non_number") or 0), 0)
        by_place = list(row.get("one_digit_errors_by_place") or [])
        hist = {int(k): int(v) for k, v in (row.get("wrong_digits_histogram") or {}).items()}
        if wrong:
            left.bar(range(len(by_place)), [c / wrong for c in by_place], width=0.7)
            right.bar(list(hist), list(hist.values()), width=0.7, color="C1")
        else:
            for ax in (left, right):
                ax.text(0.5, 0.5, "no wrong numbers", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)
        left.set_ylabel("share", fontsize=8)
        left.set_title(f"{row.get('row', '')}: one-digit errors by place", fontsize=8)
        right.set_title("places that differ", fontsize=8)
        for ax in (left, right):
            ax.xaxis.get_major_locator().set_params(integer=True)
    axes[-1, 0].set_xlabel("digit place (0 = units)")
    axes[-1, 1].set_xlabel("number of differing places")
    return finish_figure(fig, path, title)


def digit_probe_plot(rows: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """``rows``: ``digit_probes.csv`` rows (role, layer, place, kind, accuracy,
    accuracy_shuffled, chance, optional random_accuracy). One panel per (role, place): a
    solid line per probe kind, dotted its shuffled-label baseline, dashed its random-init
    baseline, grey the most frequent digit's share."""
    plt = pyplot()
    roles = list(dict.fromkeys(r["role"] for r in rows))
    places = sorted({int(r["place"]) for r in rows})
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    fig, axes = plt.subplots(len(roles), len(places), squeeze=False, sharey=True,
                             figsize=(3.4 * len(places), 2.6 * len(roles) + 0.4))
    for i, role in enumerate(roles):
        for j, place in enumerate(places):
            ax = axes[i, j]
            for c, kind in enumerate(kinds):
                sel = sorted((r for r in rows if r["role"] == role and int(r["place"]) == place
                              and r["kind"] == kind), key=lambda r: r["layer"])
                if not sel:
                    continue
                x = [r["layer"] for r in sel]
                ax.plot(x, [r["accuracy"] for r in sel], "o-", color=f"C{c}", label=kind)
                if "accuracy_shuffled" in sel[0]:
                    ax.plot(x, [r["accuracy_shuffled"] for r in sel], ":", color=f"C{c}")
                if "random_accuracy" in sel[0]:
                    ax.plot(x, [r["random_accuracy"] for r in sel], "--", color=f"C{c}",
                            alpha=0.7)
                ax.plot(x, [r["chance"] for r in sel], color="grey", lw=0.6)
            ax.set(title=f"{role}, place {place}", xlabel="layer", ylim=(-0.02, 1.02))
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[i, 0].set_ylabel("digit accuracy (held out)")
    axes[0, 0].legend(fontsize=7, title="solid: model, dashed: random init, dotted: shuffled",
                      title_fontsize=6)
    return finish_figure(fig, path, title)
