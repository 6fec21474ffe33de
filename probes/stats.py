"""Uncertainty of probe scores whose unit of evidence is the number, not the prompt.

Every prompt of a number shares that number's label, so a probe has as many independent
observations as distinct numbers. Each score here is computed from per-number sums, so a
bootstrap draw or a label permutation is a weighted sum over numbers: vectorised, no refit
(0.03-0.06 s per score for 200 numbers, 1000 draws and 1000 permutations).

* Bootstrap over numbers: draw numbers with replacement and keep all rows of a drawn number
  (multinomial weights over numbers); percentile or BCa interval (BCa's acceleration from
  the jackknife over numbers).
* Permutation p-value: labels permuted between numbers against the fixed held-out
  predictions, ``p = (1 + #{null >= observed}) / (1 + n_perm)`` (one-sided: better than
  chance).

Both resample the *held-out predictions* of one fit; they do not refit the probe per draw
(that would cost n_boot x folds x periods logistic fits per module, minutes per layer on a
CPU). For a single train/test split (the helix) that is the usual conditional interval.
For K-fold predictions it is too narrow under the null, because the folds' probes are
coupled (see ``classification_estimates``); the mod-T probes therefore also refit the
probe on ``n_refit`` label shuffles and widen interval and null by what those show. On
features without mod-T information the 95% interval then covers 0 in 88-97% of seeds
(tests/probes/test_calibration.py). The permutation test is exact when, under the null, the
held-out predictions are independent of the labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CI_METHODS = ("percentile", "bca")


@dataclass(frozen=True)
class Estimate:
    """A score with its bootstrap interval over numbers and permutation p-value."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float | None
    n_numbers: int
    inflation: float = 1.0  # factor the interval and null were widened by (see below)

    def as_dict(self, prefix: str = "") -> dict:
        """``{prefix}`` value and ``{prefix}_ci_low`` / ``_ci_high`` / ``_p_value``."""
        head = f"{prefix}_" if prefix else ""
        return {prefix or "value": self.value, f"{head}ci_low": self.ci_low,
                f"{head}ci_high": self.ci_high, f"{head}p_value": self.p_value}


@dataclass(frozen=True)
class StatsConfig:
    """How many bootstrap draws and permutations, the interval's level and method."""

    n_boot: int = 1000
    n_perm: int = 1000
    level: float = 0.95
    method: str = "percentile"
    seed: int = 0
    n_refit: int = 20  # refitted label shuffles that calibrate mod-T intervals (>= 2)

    def __post_init__(self) -> None:
        if self.method not in CI_METHODS:
            raise ValueError(f"unknown interval method {self.method!r}; choose {CI_METHODS}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must lie in (0, 1), got {self.level}")
        if self.n_boot < 0 or self.n_perm < 0 or self.n_refit < 0:
            raise ValueError("n_boot, n_perm and n_refit must be >= 0")


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot x n) counts: how often each number is drawn (n draws with replacement)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def interval(stat: Callable[[np.ndarray], np.ndarray], n: int, cfg: StatsConfig,
             rng: np.random.Generator) -> tuple[float, float]:
    """Bootstrap interval of ``stat(weights)`` (weights: B x n over numbers -> B values)."""
    if cfg.n_boot == 0 or n < 2:
        return float("nan"), float("nan")
    draws = stat(bootstrap_weights(n, cfg.n_boot, rng))
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - cfg.level) / 2
    qs = np.array([alpha, 1 - alpha])
    if cfg.method == "bca":
        qs = _bca_quantiles(stat, n, draws, qs)
    low, high = np.quantile(draws, qs)
    return float(low), float(high)


def _bca_quantiles(stat, n: int, draws: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Efron's bias-corrected and accelerated levels for ``qs``."""
    nd = NormalDist()
    theta = float(stat(np.ones((1, n)))[0])
    below = np.clip(np.mean(draws < theta) + 0.5 * np.mean(draws == theta), 1e-6, 1 - 1e-6)
    z0 = nd.inv_cdf(float(below))
    jack = stat(1.0 - np.eye(n))  # leave one number out
    jack = jack[np.isfinite(jack)]
    d = jack.mean() - jack
    denom = 6.0 * (d**2).sum() ** 1.5
    a = float((d**3).sum() / denom) if denom > 0 else 0.0
    z = np.array([nd.inv_cdf(float(q)) for q in qs])
    adj = z0 + (z0 + z) / (1 - a * (z0 + z))
    return np.array([nd.cdf(float(v)) for v in adj])


def p_value(observed: float, null: np.ndarray) -> float | None:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (1 + n)``."""
    null = np.asarray(null, dtype=float)
    if null.size == 0 or not np.isfinite(observed):
        return None
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


def permutations(n: int, n_perm: int, rng: np.random.Generator,
                 strata: np.ndarray | None = None) -> np.ndarray:
    """(n_perm x n) independent permutations of 0..n-1; with ``strata`` (one label per
    item) each item is sent to an item of its own stratum."""
    if strata is None:
        return np.argsort(rng.random((n_perm, n)), axis=1)
    out = np.empty((n_perm, n), dtype=np.int64)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        out[:, idx] = idx[np.argsort(rng.random((n_perm, len(idx))), axis=1)]
    return out


def _refit_scale(refit: np.ndarray, level: float) -> float:
    """Spread of the refit kappas as a normal scale: the sample sd times
    t_{m-1} / z at ``level``, since m refits only estimate it (a studentized interval)."""
    from scipy.special import stdtrit  # Student t quantile (scipy.stats imports for ~1 s)

    q = 0.5 + level / 2
    return float(np.std(refit, ddof=1) * stdtrit(len(refit) - 1, q) / NormalDist().inv_cdf(q))


# ------------------------------------------------------------------ classification scores


def _group(numbers) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(np.asarray(numbers), return_inverse=True)
    return uniq, inverse


def accuracy_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Accuracy of (... x C x C) confusion counts (true x predicted)."""
    total = conf.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.trace(conf, axis1=-2, axis2=-1) / total


def kappa_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Cohen's kappa of (... x C x C) confusion counts; nan where chance agreement is 1."""
    total = conf.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        po = np.trace(conf, axis1=-2, axis2=-1) / total
        pe = (conf.sum(-1) * conf.sum(-2)).sum(-1) / total**2
        return np.where(pe < 1 - 1e-12, (po - pe) / (1 - pe), np.nan)


def classification_estimates(labels, predictions, numbers, n_classes: int,
                             cfg: StatsConfig = StatsConfig(), refit_kappas=None,
                             folds=None) -> dict[str, Estimate]:
    """Accuracy and Cohen's kappa of held-out predictions, each with a bootstrap interval
    over numbers and a permutation p-value (labels permuted between numbers, within
    ``folds`` when given: one fold per row, as the shuffled baseline permutes them).

    ``labels`` must be a function of the number (one label per number). ``refit_kappas``:
    kappas of the same cross-validation refitted on labels shuffled between the numbers of
    each fold (the shuffled baseline). K-fold predictions are coupled: a pair of numbers in
    two folds enters each fold's probe through the other, so under the null the kappa
    spreads wider than any resampling of fixed predictions shows (on random features 1.3x
    at T = 2, 1.1x at T = 10). The refit spread (times t_{m-1}/z: m refits only estimate
    it) over the spread of the same permutations without refitting measures that; when
    above 1 it widens the interval about the estimate and scales the permutation null about
    its mean (``Estimate.inflation``).
    """
    y, pred = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    _, inv = _group(numbers)
    n = int(inv.max()) + 1
    label = np.zeros(n, dtype=np.int64)
    label[inv] = y
    if np.any(label[inv] != y):
        raise ValueError("labels must be the same for every row of a number")
    counts = np.zeros((n, n_classes))  # per number: rows predicted as each class
    np.add.at(counts, (inv, pred), 1.0)
    onehot = np.eye(n_classes)[label]

    def conf(weights):  # B x n -> B x C x C
        return np.einsum("bn,nc,nt->bct", weights, onehot, counts, optimize=True)

    rng = np.random.default_rng(cfg.seed)
    observed = conf(np.ones((1, n)))[0]
    refit = np.asarray([] if refit_kappas is None else refit_kappas, dtype=float)
    refit = refit[np.isfinite(refit)]
    strata = None
    if folds is not None:
        strata = np.zeros(n, dtype=np.int64)
        strata[inv] = np.asarray(folds)
    n_null = max(cfg.n_perm, 400 if refit.size >= 2 else 0)
    null = np.einsum("bnc,nt->bct", onehot[permutations(n, n_null, rng, strata)], counts,
                     optimize=True)
    inflation = 1.0
    if refit.size >= 2:
        spread = np.nanstd(kappa_from_confusion(null))
        if spread > 0:
            inflation = max(1.0, _refit_scale(refit, cfg.level) / float(spread))
    out = {}
    for name, score in (("accuracy", accuracy_from_confusion),
                        ("kappa", kappa_from_confusion)):
        low, high = interval(lambda w, s=score: s(conf(w)), n, cfg, rng)
        value = float(score(observed))
        low, high = value - inflation * (value - low), value + inflation * (high - value)
        scores = score(null[:cfg.n_perm])
        scores = np.nanmean(scores) + inflation * (scores - np.nanmean(scores)) \
            if scores.size else scores
        out[name] = Estimate(value, low, high, p_value(value, scores), n, inflation)
    return out


# --------------------------------------------------------------------- regression scores


def r2_estimate(z, fitted, numbers, cfg: StatsConfig = StatsConfig()) -> Estimate:
    """Held-out R^2 = 1 - SSE / SST pooled over columns of ``z`` (N x k) against ``fitted``
    (N x k, a function of the number: the fit's point for each row's number).

    The permutation null gives each number the fitted point of another test number.
    """
    z, fitted = np.atleast_2d(np.asarray(z, float)), np.atleast_2d(np.asarray(fitted, float))
    _, inv = _group(numbers)
    n = int(inv.max()) + 1
    count = np.bincount(inv, minlength=n).astype(float)
    zsum = np.zeros((n, z.shape[1]))
    np.add.at(zsum, inv, z)
    sq = np.bincount(inv, weights=(z**2).sum(1), minlength=n)
    point = np.zeros((n, z.shape[1]))
    point[inv] = fitted
    sse = sq - 2 * (zsum * point).sum(1) + count * (point**2).sum(1)

    def r2(weights):
        sst = weights @ sq - ((weights @ zsum) ** 2).sum(1) / (weights @ count)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sst > 0, 1 - (weights @ sse) / sst, np.nan)

    rng = np.random.default_rng(cfg.seed)
    value = float(r2(np.ones((1, n)))[0])
    low, high = interval(r2, n, cfg, rng)
    null = np.zeros(0)
    if cfg.n_perm:
        perm = permutations(n, cfg.n_perm, rng)
        cross = zsum @ point.T  # [i, j] = sum of number i's rows . point of number j
        norms = (point**2).sum(1)
        sse_p = sq - 2 * np.take_along_axis(cross[None], perm[..., None], 2)[..., 0] \
            + count * norms[perm]
        sst = sq.sum() - (zsum.sum(0) ** 2).sum() / count.sum()
        null = 1 - sse_p.sum(1) / sst if sst > 0 else np.zeros(0)
    return Estimate(value, low, high, p_value(value, null), n)


def match_estimate(decoded, numbers, cfg: StatsConfig = StatsConfig()) -> Estimate:
    """Share of rows whose ``decoded`` value equals the row's number (decode accuracy).

    The permutation null gives each number's rows the value of another test number.
    """
    decoded, num = np.asarray(decoded), np.asarray(numbers)
    uniq, inv = _group(num)
    n = len(uniq)
    count = np.bincount(inv, minlength=n).astype(float)
    hits = np.bincount(inv, weights=(decoded == num).astype(float), minlength=n)

    def acc(weights):
        return (weights @ hits) / (weights @ count)

    rng = np.random.default_rng(cfg.seed)
    value = float(acc(np.ones((1, n)))[0])
    low, high = interval(acc, n, cfg, rng)
    null = np.zeros(0)
    if cfg.n_perm:
        # table[i, j]: rows of number i decoded as test number j
        col = np.searchsorted(uniq, decoded)
        ok = (col < n) & (uniq[np.minimum(col, n - 1)] == decoded)
        table = np.zeros((n, n))
        np.add.at(table, (inv[ok], col[ok]), 1.0)
        perm = permutations(n, cfg.n_perm, rng)
        null = np.take_along_axis(table[None], perm[..., None], 2)[..., 0].sum(1) / count.sum()
    return Estimate(value, low, high, p_value(value, null), n)
