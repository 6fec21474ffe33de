"""Linear probes for number features: mod-T classification, with the helix re-exported.

* ``mod_probes``: is ``n mod T`` linearly decodable from a state?  PCA -> one global
  scale -> L2-regularised multinomial logistic regression with balanced weights,
  cross-validated on folds that hold out whole blocks of consecutive numbers
  (``probes.folds``: why blocks), so a number's states are never in both train and test and
  a probe without mod-T information scores kappa ~ 0. Accuracy and Cohen's kappa, pooled
  over the folds, each with a bootstrap interval over numbers and a permutation p-value
  (``probes.stats``); ``shuffled=True`` adds the shuffled-label baseline (labels permuted
  between numbers). ``groups`` regresses e.g. token identity out first.
* ``fit_helix`` and friends live in ``probes.helix`` (Kantamneni & Tegmark 2025).
* ``fourier_vs_decodable``: a Fourier spike at period T beside the mod-T probe, because
  Fourier sparsity alone does not imply that n mod T is linearly decodable.

numpy and scikit-learn only; no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probes.common import as_2d, pca_basis, per_number_means
from probes.folds import (
    balanced_weights,
    fold_blocks,
    number_folds,
    remove_group_means,
    shuffled_within,
)
from probes.fourier import FourierBasis, spectrum
from probes.helix import HelixFit, fit_helix, helix_features, period_scan, split_numbers
from probes.stats import (
    StatsConfig,
    accuracy_from_confusion,
    classification_estimates,
    kappa_from_confusion,
)

__all__ = [
    "ModProbeResult", "mod_probes", "mod_probe", "cross_val_predict", "confusion",
    "fourier_vs_decodable", "number_folds", "pca_basis", "per_number_means", "HelixFit",
    "fit_helix", "helix_features", "period_scan", "split_numbers",
]


# ----------------------------------------------------------------------------- mod-T probes


@dataclass
class ModProbeResult:
    """Cross-validated scores of one period (pooled over folds); for a real probe each
    score has a bootstrap interval over numbers and a permutation p-value."""

    period: int
    accuracy: float
    kappa: float
    chance_accuracy: float  # the majority class
    n_samples: int
    n_numbers: int
    n_folds: int
    shuffled: bool = False
    kappa_std: float | None = None  # spread over the label shuffles of a baseline
    block: int = 1  # numbers held out together (consecutive, aligned to multiples)
    accuracy_ci_low: float | None = None
    accuracy_ci_high: float | None = None
    accuracy_p_value: float | None = None
    kappa_ci_low: float | None = None
    kappa_ci_high: float | None = None
    kappa_p_value: float | None = None
    ci_inflation: float | None = None  # see probes.stats.classification_estimates

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cross_val_predict(x: np.ndarray, n: np.ndarray, label_sets, fold: np.ndarray, *,
                      pca_dim: int | None = 64, C: float = 1.0, max_iter: int = 1000,
                      groups=None) -> list[np.ndarray]:
    """Held-out predictions of a logistic probe for each labelling in ``label_sets``.

    Per fold: (optionally) group means removed (``folds.remove_group_means``), PCA on the
    centred training states, one global scale, then L2 logistic regression with balanced
    weights (``folds.balanced_weights``). Folds and their PCA are shared by all labellings.
    """
    from threadpoolctl import threadpool_limits

    preds = [np.empty_like(n) for _ in label_sets]
    # L-BFGS on a few hundred small rows: threaded BLAS only adds contention (40x slower
    # on a busy machine), so the solver runs on one thread
    with threadpool_limits(1):
        for f in np.unique(fold):
            _fit_fold(x, n, label_sets, preds, fold == f, pca_dim, C, max_iter, groups)
    return preds


def _fit_fold(x, n, label_sets, preds, is_test, pca_dim, C, max_iter, groups) -> None:
    """One fold of ``cross_val_predict``: fills ``preds`` at the held-out rows."""
    from sklearn.linear_model import LogisticRegression

    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    x_tr, x_te = x[train], x[test]
    if groups is not None:
        x_tr, x_te = remove_group_means(x_tr, groups[train], x_te, groups[test])
    # PCA on the centred states, then one global scale (not per dimension: standardizing
    # would blow low-variance, number-specific noise up to the size of the signal and
    # let the probe memorise the training numbers through it)
    dim = min(pca_dim or x.shape[1], x.shape[1], len(train) - 1)
    mean = x_tr.mean(axis=0)
    comps = pca_basis(x_tr - mean, dim) if dim < x.shape[1] else None
    z_tr, z_te = ((v - mean) if comps is None else (v - mean) @ comps.T
                  for v in (x_tr, x_te))
    scale = np.sqrt(z_tr.var(axis=0).mean()) or 1.0
    for pred, labels in zip(preds, label_sets):
        y = labels[train]
        if len(np.unique(y)) < 2:  # one class left: predict it
            pred[test] = y[0]
            continue
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(
            z_tr / scale, y, sample_weight=balanced_weights(n[train], y))
        pred[test] = clf.predict(z_te / scale)


def mod_probes(
    features,
    numbers,
    periods,
    *,
    n_splits: int = 5,
    pca_dim: int | None = 64,
    C: float = 1.0,
    seed: int = 0,
    shuffled: bool = False,
    n_shuffles: int = 5,
    max_iter: int = 1000,
    block: int | None = None,
    deal: str = "interleaved",
    groups=None,
    stats: StatsConfig | None = None,
) -> list[ModProbeResult]:
    """Cross-validated accuracy and Cohen's kappa of linear probes for ``n mod T``.

    Folds hold out whole blocks of consecutive numbers (``probes.folds``: block = the least
    common multiple of the periods when the numbers span ``n_splits`` such blocks, else T;
    dealt to the folds in turn, or at random by ``seed`` with ``deal="random"``); scores
    are pooled over the folds' held-out rows. Each score gets a bootstrap interval
    over numbers and a permutation p-value (``probes.stats``; ``stats=StatsConfig(n_boot=0,
    n_perm=0)`` skips them). ``groups`` (one value per row, e.g. the token id where the
    state was read) are regressed out per fold first: the token-identity control. With
    ``shuffled`` each period's shuffled-label baseline (labels permuted between the numbers
    of each fold and the probe refitted; mean over the shuffles, their spread in
    ``kappa_std``) follows its result in the list. The refits also calibrate the interval
    (``stats.n_refit`` of them at least), so intervals cost ~``n_refit`` x the probe.
    """
    x = as_2d(features)
    n = np.asarray(numbers, dtype=np.int64)
    if any(T < 2 for T in periods):
        raise ValueError(f"periods must be >= 2, got {list(periods)}")
    if deal not in ("interleaved", "random"):
        raise ValueError(f"deal must be 'interleaved' or 'random', got {deal!r}")
    groups = None if groups is None else np.asarray(groups)
    stats = StatsConfig(seed=seed) if stats is None else stats
    with_stats = bool(stats.n_boot or stats.n_perm)
    n_refits = max(n_shuffles if shuffled else 0, stats.n_refit if with_stats else 0)
    rng = np.random.default_rng(seed + 1)
    results: dict[int, list[ModProbeResult]] = {}
    for blen, block_periods in fold_blocks(n, periods, n_splits, block).items():
        fold = number_folds(n, n_splits, None if deal == "interleaved" else seed, blen)
        tasks = [(T, False, np.mod(n, T)) for T in block_periods]
        tasks = [t for T, _, lab in tasks for t in [(T, False, lab)] + [
            (T, True, shuffled_within(n, lab, fold, rng)) for _ in range(n_refits)]]
        if any(len(np.unique(lab)) < 2 for *_, lab in tasks):
            raise ValueError("a mod-T probe needs numbers in at least two classes")
        preds = cross_val_predict(x, n, [lab for *_, lab in tasks], fold, pca_dim=pca_dim,
                                  C=C, max_iter=max_iter, groups=groups)
        common = dict(n_samples=len(n), n_numbers=len(np.unique(n)),
                      n_folds=len(np.unique(fold)), block=blen)
        for T in block_periods:
            mine = [(sh, lab, p) for (t, sh, lab), p in zip(tasks, preds) if t == T]
            (_, lab, pred), base = mine[0], mine[1:]
            conf = [confusion(lab_s, p_s, T) for _, lab_s, p_s in base]
            kap = [float(kappa_from_confusion(c)) for c in conf]
            chance = float(np.bincount(lab).max() / len(lab))
            if with_stats:
                est = classification_estimates(lab, pred, n, T, stats, refit_kappas=kap,
                                               folds=fold)
                extra = {k: v for key in ("accuracy", "kappa")
                         for k, v in est[key].as_dict(key).items() if k != key}
                extra["ci_inflation"] = est["kappa"].inflation
                acc, kappa = est["accuracy"].value, est["kappa"].value
            else:
                extra = {}
                c = confusion(lab, pred, T)
                acc, kappa = float(accuracy_from_confusion(c)), float(kappa_from_confusion(c))
            res = [ModProbeResult(T, acc, kappa, chance, **common, **extra)]
            if shuffled and base:
                res.append(ModProbeResult(
                    T, float(np.mean([accuracy_from_confusion(c) for c in conf])),
                    float(np.mean(kap)), chance, **common, shuffled=True,
                    kappa_std=float(np.std(kap))))
            results[T] = res
    return [r for T in periods for r in results[int(T)]]


def confusion(labels, predictions, n_classes: int) -> np.ndarray:
    """Confusion counts (true x predicted)."""
    out = np.zeros((n_classes, n_classes))
    np.add.at(out, (np.asarray(labels), np.asarray(predictions)), 1.0)
    return out


def mod_probe(features, numbers, period: int, *, shuffle: bool = False, seed: int = 0,
              **kwargs) -> ModProbeResult:
    """One period's probe (``shuffle=True``: its shuffled-label baseline only)."""
    results = mod_probes(features, numbers, [period], seed=seed, shuffled=shuffle, **kwargs)
    return results[-1]


# ------------------------------------------------------ Fourier sparsity vs decodability


def fourier_vs_decodable(
    features, numbers, period: int, *, kappa_threshold: float = 0.8, basis_kind: str = "dft",
    **probe_kwargs,
) -> dict:
    """Is there a Fourier spike at ``period``, and is n mod period linearly decodable?

    The spectrum is taken over the per-number mean states, which must cover a contiguous
    range 0..p-1. ``spike`` means the component nearest the period is an outlier of the
    spectrum (``probes.find_outliers``); ``decodable`` means the mod-T probe's kappa reaches
    ``kappa_threshold``.
    """
    uniq, means = per_number_means(features, numbers)
    if uniq[0] != 0 or not np.array_equal(uniq, np.arange(len(uniq))):
        raise ValueError("the numbers must cover 0..p-1 to take a spectrum over them")
    basis = FourierBasis(len(uniq), basis_kind)
    spec = spectrum(means, basis, axis=0)
    k = basis.k_of_period(period)
    outliers = spec.outliers()
    spike = any(o.k == k for o in outliers)
    probe = mod_probe(features, numbers, period, **probe_kwargs)
    decodable = probe.kappa >= kappa_threshold
    verdict = {(True, True): "Fourier spike and linearly decodable",
               (True, False): "Fourier spike but NOT linearly decodable",
               (False, True): "linearly decodable without a Fourier spike",
               (False, False): "neither a Fourier spike nor linearly decodable"}[spike, decodable]
    return {"period": period, "k": k, "spike": spike, "magnitude": float(spec.magnitude[k]),
            "outliers": [o.as_dict() for o in outliers], "kappa": probe.kappa,
            "accuracy": probe.accuracy, "decodable": decodable, "verdict": verdict}
