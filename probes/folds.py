"""Cross-validation by number for mod-T probes, built so that chance is kappa 0.

Why blocks. A probe that cannot decode n mod T should score kappa ~ 0 on held-out numbers.
Holding out numbers one by one (or dealt at random) breaks that whenever the states are
*locally* similar (clusters such as "numbers with the same leading digit", or any smooth
curve in n): the held-out number's residue is then missing from its own neighbourhood in
the training set, the probe predicts the neighbours' residues, and kappa goes *below* zero
(-0.11 at T = 10, -0.14 at T = 5, -0.2 at T = 2 for decade clusters; see
tests/probes/test_calibration.py). Holding out whole blocks of consecutive numbers whose
length is a multiple of T removes every residue of a neighbourhood alike, so no residue is
favoured. Blocks are aligned to multiples of their length and dealt to the folds in turn
(block i to fold i mod K): every fold spans the whole range, and the folds do not depend on
a seed, so the estimate varies only with the data (what the refitted label shuffles of
``probes.stats`` measure). A residual bias remains for states that vary smoothly on the
scale of T (a kernel-like probe sees the held-out number's own residue only T away, the
others nearer): about -0.02 to -0.04 at T = 10 for a Gaussian-process curve of length
scale 8; it only makes the test conservative.

Training rows are weighted so that every number counts once and every class mod T has the
same total weight: the class prior a probe learns cannot lean against the held-out fold.

``remove_group_means`` regresses one-hot group indicators (e.g. the token id at the read
position) out of the states with means estimated on training rows only.
"""

from __future__ import annotations

import math

import numpy as np

from probes.common import shuffled_by_number


def number_folds(numbers, n_splits: int = 5, seed: int | None = None,
                 block: int = 1) -> np.ndarray:
    """Fold index of each sample: numbers are cut into blocks ``[j*block, (j+1)*block)``
    and the i-th block (in order) goes to fold ``i mod min(n_splits, n_blocks)``, so every
    fold spans the whole range. ``seed`` deals the blocks at random instead. ``block=1``
    deals single numbers. All samples of a number share a fold."""
    n = np.asarray(numbers, dtype=np.int64)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    blocks = np.floor_divide(n, block)
    uniq, inverse = np.unique(blocks, return_inverse=True)
    k = min(n_splits, len(uniq))
    if k < 2:
        raise ValueError(f"cross-validation by number needs at least two blocks of {block} "
                         f"numbers; the numbers span {len(uniq)}")
    order = np.arange(len(uniq)) if seed is None else \
        np.random.default_rng(seed).permutation(len(uniq))
    fold_of_block = np.empty(len(uniq), dtype=np.int64)
    fold_of_block[order] = np.arange(len(uniq)) % k
    return fold_of_block[inverse]


def fold_blocks(numbers, periods, n_splits: int = 5, block: int | None = None) -> dict:
    """Block length -> the periods cross-validated with it.

    ``block`` given: that length for every period. Otherwise the least common multiple of
    the periods when the numbers span at least ``n_splits`` blocks of it (one fold design
    and one PCA per fold shared by all periods), else each period its own length T.
    """
    periods = [int(T) for T in periods]
    if block is not None:
        return {int(block): periods}
    spans = lambda b: len(np.unique(np.floor_divide(np.asarray(numbers), b)))  # noqa: E731
    lcm = math.lcm(*periods)
    if spans(lcm) >= n_splits:
        return {lcm: periods}
    out: dict[int, list[int]] = {}
    for T in periods:
        out.setdefault(T, []).append(T)
    return out


def balanced_weights(numbers, labels) -> np.ndarray:
    """Row weights (mean 1): each number weighs the same in total, and so does each class
    (weights of a class's numbers scaled by n_numbers / (n_classes x numbers in the class))."""
    uniq, inv, count = np.unique(np.asarray(numbers), return_inverse=True, return_counts=True)
    label_of = np.zeros(len(uniq), dtype=np.int64)
    label_of[inv] = np.asarray(labels)
    classes, cls_inv = np.unique(label_of, return_inverse=True)
    per_class = np.bincount(cls_inv)
    w_number = len(uniq) / (len(classes) * per_class[cls_inv])
    w = w_number[inv] / count[inv]
    return w * (len(w) / w.sum())


def remove_group_means(x_train: np.ndarray, g_train, x_test: np.ndarray,
                       g_test) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each group's mean (estimated on the training rows) from train and test rows.

    Test rows of a group absent from training get the training grand mean subtracted.
    """
    g_train, g_test = np.asarray(g_train), np.asarray(g_test)
    groups, inv = np.unique(g_train, return_inverse=True)
    sums = np.zeros((len(groups), x_train.shape[1]))
    np.add.at(sums, inv, x_train)
    means = sums / np.bincount(inv)[:, None]
    pos = np.searchsorted(groups, g_test)
    seen = (pos < len(groups)) & (groups[np.minimum(pos, len(groups) - 1)] == g_test)
    test_means = np.where(seen[:, None], means[np.minimum(pos, len(groups) - 1)],
                          x_train.mean(axis=0))
    return x_train - means[inv], x_test - test_means


def residue_folds(numbers, n_splits: int = 5, seed: int = 0, stratify: int = 1) -> np.ndarray:
    """Fold index of each sample with single numbers dealt, not blocks: all samples of a
    number share a fold, and the numbers of each residue mod ``stratify`` are dealt evenly
    over the folds, so every class mod T (T dividing ``stratify``) is balanced. The digit
    probes use it (with ``stratify=10``, every digit of every place stays in training);
    mod-T probes on states that vary smoothly in n need ``number_folds``' blocks instead."""
    n = np.asarray(numbers)
    uniq = np.unique(n)
    k = min(n_splits, len(uniq))
    if k < 2:
        raise ValueError("cross-validation by number needs at least two distinct numbers")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(uniq)), np.mod(uniq, max(stratify, 1))))
    start = rng.integers(k)  # deal each residue's numbers round-robin
    fold_of = {int(u): (start + i) % k for i, u in enumerate(uniq[order])}
    return np.array([fold_of[int(v)] for v in n])


def shuffled_within(n: np.ndarray, values: np.ndarray, fold: np.ndarray, rng) -> np.ndarray:
    """``values`` permuted between the numbers of each fold (class counts per fold kept)."""
    out = values.copy()
    for f in np.unique(fold):
        idx = np.flatnonzero(fold == f)
        out[idx] = shuffled_by_number(n[idx], values[idx], rng)
    return out
