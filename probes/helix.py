"""Helix regression (Kantamneni & Tegmark 2025) of states on the number they carry.

After PCA (fitted on train numbers), fit ``h ~ c0 + C [n, cos(2 pi n/T), sin(2 pi n/T) for T
in periods]`` by least squares on train numbers and report R^2 on held-out numbers (split
by number value), the fitted amplitude and phase per period, the R^2 lost when a period is
dropped, and decoding of n from the fit. Held-out R^2 and decode accuracy come with a
bootstrap interval over the test numbers and a permutation p-value (``probes.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probes.common import as_2d, pca_basis, shuffled_by_number
from probes.folds import remove_group_means
from probes.stats import Estimate, StatsConfig, match_estimate, r2_estimate


def helix_features(numbers, periods, linear: bool = True, scale: float = 1.0) -> np.ndarray:
    """Design matrix [n/scale, cos(2 pi n/T_1), sin(2 pi n/T_1), ...] (N x (linear + 2P))."""
    n = np.asarray(numbers, dtype=np.float64)
    cols = [n / scale] if linear else []
    for T in periods:
        cols += [np.cos(2 * np.pi * n / T), np.sin(2 * np.pi * n / T)]
    return np.stack(cols, axis=1) if cols else np.zeros((len(n), 0))


def _lstsq(design: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.ones((len(design), 1)), design], axis=1)
    sol, *_ = np.linalg.lstsq(x, z, rcond=None)
    return sol[0], sol[1:].T  # intercept (k,), coef (k x m)


def _r2(z: np.ndarray, pred: np.ndarray) -> float:
    sst = ((z - z.mean(axis=0)) ** 2).sum()
    return float(1 - ((z - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


@dataclass
class HelixFit:
    """A fitted helix in PCA space; ``model_coef`` maps it back to model space."""

    periods: tuple[float, ...]
    linear: bool
    scale: float
    mean: np.ndarray  # (D,) feature mean of the train split
    components: np.ndarray  # (k, D) PCA rows (orthonormal)
    intercept: np.ndarray  # (k,)
    coef: np.ndarray  # (k, m) columns: [n] + [cos T, sin T for T in periods]
    r2_train: float
    r2_test: float
    train_numbers: np.ndarray
    test_numbers: np.ndarray
    r2_without: dict = field(default_factory=dict)  # period -> held-out R^2 without it
    decode_accuracy: float | None = None
    shuffled: bool = False
    # "r2_test" / "decode_accuracy" -> interval over test numbers and permutation p-value
    estimates: dict[str, Estimate] = field(default_factory=dict)
    groups_removed: bool = False  # group (token-id) means were regressed out first

    @property
    def pca_dim(self) -> int:
        return self.components.shape[0]

    def _cols(self, period: float) -> list[int]:
        if period not in self.periods:
            raise ValueError(f"period {period} was not fitted; fitted: {list(self.periods)}")
        i = int(self.linear) + 2 * self.periods.index(period)
        return [i, i + 1]

    def model_coef(self) -> np.ndarray:
        """C in model space (D x m)."""
        return self.components.T @ self.coef

    def predict(self, numbers) -> np.ndarray:
        """Model-space states the fit places at ``numbers`` (N x D)."""
        z = self.intercept + helix_features(numbers, self.periods, self.linear, self.scale) @ \
            self.coef.T
        return self.mean + z @ self.components

    def project(self, features) -> np.ndarray:
        return (as_2d(features) - self.mean) @ self.components.T

    def decode(self, features, candidates) -> np.ndarray:
        """The candidate number whose fitted point is nearest each state (in PCA space)."""
        cand = np.asarray(candidates)
        table = self.intercept + helix_features(cand, self.periods, self.linear,
                                                self.scale) @ self.coef.T
        z = self.project(features)
        d = (z**2).sum(1)[:, None] - 2 * z @ table.T + (table**2).sum(1)[None, :]
        return cand[np.argmin(d, axis=1)]

    def directions(self, periods=None) -> np.ndarray:
        """Orthonormal model-space basis (D x r) of the cos/sin columns of ``periods``."""
        periods = self.periods if periods is None else tuple(periods)
        cols = [c for T in periods for c in self._cols(T)]
        block = self.model_coef()[:, cols]
        u, s, _ = np.linalg.svd(block, full_matrices=False)
        rank = int((s > 1e-10 * max(s.max(initial=0.0), 1e-300)).sum())
        return u[:, :rank]

    def circle(self, period: float, direction=None) -> dict:
        """Amplitude and phase of one period.

        The model-space block [c_cos, c_sin] has singular values ``amplitude`` >= ``minor``
        (a circle has minor ~ amplitude, a line minor ~ 0). Along a unit ``direction`` u
        (default: the leading singular direction, signed so its largest entry is positive)
        the fit is ``a cos(2 pi n/T + phase)`` with ``a = along_amplitude``.
        """
        block = self.model_coef()[:, self._cols(period)]
        u, s, _ = np.linalg.svd(block, full_matrices=False)
        if direction is None:
            direction = u[:, 0] * np.sign(u[np.argmax(np.abs(u[:, 0])), 0])
        direction = np.asarray(direction, dtype=np.float64)
        a_cos, a_sin = direction @ block / np.linalg.norm(direction)
        return {
            "period": float(period),
            "amplitude": float(s[0]),
            "minor": float(s[1]),
            "circularity": float(s[1] / s[0]) if s[0] > 0 else float("nan"),
            "phase": float(np.arctan2(-a_sin, a_cos)),
            "along_amplitude": float(np.hypot(a_cos, a_sin)),
            "r2_without": self.r2_without.get(float(period)),
        }

    def summary(self) -> dict:
        return {
            "periods": [float(T) for T in self.periods], "linear": self.linear,
            "pca_dim": self.pca_dim, "r2_train": self.r2_train, "r2_test": self.r2_test,
            "n_train_numbers": int(len(np.unique(self.train_numbers))),
            "n_test_numbers": int(len(np.unique(self.test_numbers))),
            "decode_accuracy": self.decode_accuracy, "shuffled": self.shuffled,
            **{k: v for name, est in self.estimates.items()
               for k, v in est.as_dict(name).items() if k != name},
            "circles": [self.circle(T) for T in self.periods],
        }


def split_numbers(numbers, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask of test samples: a random ``test_fraction`` of the distinct numbers."""
    n = np.asarray(numbers)
    uniq = np.unique(n)
    n_test = int(round(test_fraction * len(uniq)))
    if n_test < 1 or n_test >= len(uniq):
        raise ValueError(f"cannot hold out {test_fraction:.0%} of {len(uniq)} distinct numbers")
    test = np.random.default_rng(seed).choice(uniq, n_test, replace=False)
    return np.isin(n, test)


def fit_helix(
    features,
    numbers,
    periods=(2, 5, 10, 100),
    *,
    pca_dim: int = 100,
    linear: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
    shuffle: bool = False,
    decode: bool = True,
    groups=None,
    stats: StatsConfig | None = None,
) -> HelixFit:
    """Fit the helix on train numbers after PCA (fit on train only); R^2 on held-out ones.

    ``pca_dim`` is capped by the train samples and the width. ``shuffle=True`` is the
    baseline: states are matched to the wrong numbers (permuted between numbers); it gets
    no interval. ``groups`` (one per row, e.g. the token id where the state was read) are
    regressed out first with means from the train rows (the token-identity control); the
    fit then describes those residual states. ``stats`` sets the bootstrap / permutation of
    the held-out R^2 and decode accuracy (default ``StatsConfig(seed=seed)``).
    """
    x = as_2d(features)
    n = np.asarray(numbers, dtype=np.int64)
    periods = tuple(float(T) for T in periods)
    if not periods and not linear:
        raise ValueError("fit_helix needs at least one period or the linear term")
    if shuffle:
        n = shuffled_by_number(n, n, np.random.default_rng(seed + 1))
    stats = StatsConfig(seed=seed) if stats is None else stats
    if shuffle:
        stats = StatsConfig(n_boot=0, n_perm=0)
    test = split_numbers(n, test_fraction, seed)
    train = ~test
    if groups is not None:
        g = np.asarray(groups)
        x = x.copy()
        x[train], x[test] = remove_group_means(x[train], g[train], x[test], g[test])
    mean = x[train].mean(axis=0)
    xc = x[train] - mean
    comps = pca_basis(xc, min(pca_dim, int(train.sum()) - 1))
    z_tr, z_te = xc @ comps.T, (x[test] - mean) @ comps.T
    scale = float(max(np.abs(n).max(), 1))

    def fit(ps):
        b_tr, b_te = (helix_features(v, ps, linear, scale) for v in (n[train], n[test]))
        c0, C = _lstsq(b_tr, z_tr)
        return c0, C, _r2(z_tr, c0 + b_tr @ C.T), _r2(z_te, c0 + b_te @ C.T)

    c0, C, r2_tr, r2_te = fit(periods)
    result = HelixFit(periods, linear, scale, mean, comps, c0, C, r2_tr, r2_te,
                      n[train], n[test], shuffled=shuffle, groups_removed=groups is not None)
    if stats.n_boot or stats.n_perm:
        fitted = c0 + helix_features(n[test], periods, linear, scale) @ C.T
        result.estimates["r2_test"] = r2_estimate(z_te, fitted, n[test], stats)
    if linear or len(periods) > 1:
        result.r2_without = {T: fit(tuple(q for q in periods if q != T))[3] for T in periods}
    if decode:
        cand = np.arange(n.min(), n.max() + 1)
        decoded = result.decode(x[test], cand)
        result.decode_accuracy = float((decoded == n[test]).mean())
        if stats.n_boot or stats.n_perm:
            result.estimates["decode_accuracy"] = match_estimate(decoded, n[test], stats)
    return result


def period_scan(features, numbers, candidates, **kwargs) -> list[dict]:
    """Held-out R^2 of a single-period fit (no linear term) for each candidate period."""
    kwargs = {"linear": False, "decode": False, **kwargs}
    return [{"period": float(T), "r2_test": fit_helix(features, numbers, (T,), **kwargs).r2_test}
            for T in candidates]


