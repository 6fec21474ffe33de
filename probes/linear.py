"""Linear probes for number features: mod-T classification and circle/helix regression.

* ``mod_probes``: is ``n mod T`` linearly decodable from a state?  PCA -> one global
  scale -> L2-regularised multinomial logistic regression, cross-validated with folds by
  number (``number_folds``), so a number's states are never in both train and test.
  Reports accuracy and Cohen's kappa; ``shuffled=True`` adds the shuffled-label baseline
  (labels permuted between numbers, so it must sit at chance, kappa ~ 0).
* ``fit_helix``: Kantamneni & Tegmark (2025): after PCA, fit
  ``h ~ c0 + C [n, cos(2 pi n/T), sin(2 pi n/T) for T in periods]`` on train numbers and
  report R^2 on held-out numbers (split by number value), the fitted amplitude and phase
  per period, the R^2 lost when a period is dropped, and decoding of n from the fit.
* ``fourier_vs_decodable``: a Fourier spike at period T beside the mod-T probe, because
  Fourier sparsity alone does not imply that n mod T is linearly decodable.

numpy and scikit-learn only; no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probes.fourier import FourierBasis, spectrum


def _as_2d(features) -> np.ndarray:
    if hasattr(features, "detach"):
        features = features.detach().float().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    return x


def pca_basis(xc: np.ndarray, dim: int) -> np.ndarray:
    """Top ``dim`` principal directions (rows, orthonormal) of centred rows ``xc``.

    Eigen-decomposes the smaller of the Gram and covariance matrices: far faster than a
    general SVD for the tall or wide matrices of hidden states.
    """
    n, d = xc.shape
    dim = max(1, min(dim, n, d))
    if d <= n:
        w, v = np.linalg.eigh(xc.T @ xc)
        return v[:, ::-1][:, :dim].T.copy()
    w, u = np.linalg.eigh(xc @ xc.T)
    w, u = w[::-1][:dim], u[:, ::-1][:, :dim]
    comps = (xc.T @ u) / np.sqrt(np.maximum(w, 1e-300))
    return comps.T.copy()


def _shuffled_by_number(numbers: np.ndarray, values: np.ndarray, rng) -> np.ndarray:
    """``values`` (one per sample, a function of the number) permuted between numbers."""
    uniq, inverse = np.unique(numbers, return_inverse=True)
    first = np.array([values[numbers == u][0] for u in uniq])
    return rng.permutation(first)[inverse]


# ----------------------------------------------------------------------------- mod-T probes


@dataclass
class ModProbeResult:
    period: int
    accuracy: float
    kappa: float
    chance_accuracy: float  # the majority class
    n_samples: int
    n_numbers: int
    n_folds: int
    shuffled: bool = False
    kappa_std: float | None = None  # spread over the label shuffles of a baseline

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def number_folds(numbers, n_splits: int = 5, seed: int = 0, stratify: int = 1) -> np.ndarray:
    """Fold index of each sample: all samples of a number share a fold, and the numbers of
    each residue mod ``stratify`` are dealt evenly over the folds (so every class mod T,
    T dividing ``stratify``, is balanced; unbalanced folds bias kappa below zero)."""
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


def _shuffled_within(n: np.ndarray, values: np.ndarray, fold: np.ndarray, rng) -> np.ndarray:
    """``values`` permuted between the numbers of each fold (class counts per fold kept)."""
    out = values.copy()
    for f in np.unique(fold):
        idx = np.flatnonzero(fold == f)
        out[idx] = _shuffled_by_number(n[idx], values[idx], rng)
    return out


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
) -> list[ModProbeResult]:
    """Cross-validated accuracy and Cohen's kappa of linear probes for ``n mod T``.

    The folds (by number) and their PCA are shared by every period; with ``shuffled`` each
    period's shuffled-label baseline (labels permuted between the numbers of each fold; mean
    over ``n_shuffles`` permutations, their spread in ``kappa_std``: with few numbers one
    permutation's kappa varies by +-0.2) follows its result in the list.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, cohen_kappa_score
    from threadpoolctl import threadpool_limits

    x = _as_2d(features)
    n = np.asarray(numbers, dtype=np.int64)
    if any(T < 2 for T in periods):
        raise ValueError(f"periods must be >= 2, got {list(periods)}")
    rng = np.random.default_rng(seed + 1)
    lcm = int(np.lcm.reduce([int(T) for T in periods]))
    fold = number_folds(n, n_splits, seed, lcm if lcm <= len(np.unique(n)) else max(periods))
    tasks = [(int(T), False, np.mod(n, int(T))) for T in periods]
    if shuffled:
        tasks = [t for T, _, lab in tasks for t in [(T, False, lab)] + [
            (T, True, _shuffled_within(n, lab, fold, rng)) for _ in range(n_shuffles)]]
    if any(len(np.unique(lab)) < 2 for *_, lab in tasks):
        raise ValueError("a mod-T probe needs numbers in at least two classes")
    folds = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in np.unique(fold)]
    preds = [np.empty_like(n) for _ in tasks]
    for train, test in folds:
        # PCA on the centred states, then one global scale (not per dimension: standardizing
        # would blow low-variance, number-specific noise up to the size of the signal and
        # let the probe memorise the training numbers through it)
        dim = min(pca_dim or x.shape[1], x.shape[1], len(train) - 1)
        mean = x[train].mean(axis=0)
        comps = pca_basis(x[train] - mean, dim) if dim < x.shape[1] else None
        z_tr, z_te = ((v - mean) if comps is None else (v - mean) @ comps.T
                      for v in (x[train], x[test]))
        scale = np.sqrt(z_tr.var(axis=0).mean()) or 1.0
        for pred, (_, _, labels) in zip(preds, tasks):
            if len(np.unique(labels[train])) < 2:  # one class left: predict it
                pred[test] = labels[train][0]
                continue
            # L-BFGS on a few hundred small rows: threaded BLAS only adds contention (40x
            # slower on a busy machine), so the solver runs on one thread
            with threadpool_limits(1):
                clf = LogisticRegression(C=C, max_iter=max_iter).fit(z_tr / scale,
                                                                     labels[train])
            pred[test] = clf.predict(z_te / scale)
    scores: dict[tuple[int, bool], list] = {}
    for pred, (T, sh, labels) in zip(preds, tasks):
        scores.setdefault((T, sh), []).append(
            (accuracy_score(labels, pred), cohen_kappa_score(labels, pred),
             np.bincount(labels).max() / len(labels)))
    return [ModProbeResult(
        period=T, accuracy=float(np.mean([a for a, _, _ in v])),
        kappa=float(np.mean([k for _, k, _ in v])), chance_accuracy=float(v[0][2]),
        n_samples=len(n), n_numbers=len(np.unique(n)), n_folds=len(folds), shuffled=sh,
        kappa_std=float(np.std([k for _, k, _ in v])) if sh else None,
    ) for (T, sh), v in scores.items()]


def mod_probe(features, numbers, period: int, *, shuffle: bool = False, seed: int = 0,
              **kwargs) -> ModProbeResult:
    """One period's probe (``shuffle=True``: its shuffled-label baseline only)."""
    results = mod_probes(features, numbers, [period], seed=seed, shuffled=shuffle, **kwargs)
    return results[-1]


# ----------------------------------------------------------------------- helix regression


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
        return (_as_2d(features) - self.mean) @ self.components.T

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
) -> HelixFit:
    """Fit the helix on train numbers after PCA (fit on train only); R^2 on held-out ones.

    ``pca_dim`` is capped by the train samples and the width. ``shuffle=True`` is the
    baseline: states are matched to the wrong numbers (permuted between numbers).
    """
    x = _as_2d(features)
    n = np.asarray(numbers, dtype=np.int64)
    periods = tuple(float(T) for T in periods)
    if not periods and not linear:
        raise ValueError("fit_helix needs at least one period or the linear term")
    if shuffle:
        n = _shuffled_by_number(n, n, np.random.default_rng(seed + 1))
    test = split_numbers(n, test_fraction, seed)
    train = ~test
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
                      n[train], n[test], shuffled=shuffle)
    if linear or len(periods) > 1:
        result.r2_without = {T: fit(tuple(q for q in periods if q != T))[3] for T in periods}
    if decode:
        cand = np.arange(n.min(), n.max() + 1)
        result.decode_accuracy = float((result.decode(x[test], cand) == n[test]).mean())
    return result


def period_scan(features, numbers, candidates, **kwargs) -> list[dict]:
    """Held-out R^2 of a single-period fit (no linear term) for each candidate period."""
    kwargs = {"linear": False, "decode": False, **kwargs}
    return [{"period": float(T), "r2_test": fit_helix(features, numbers, (T,), **kwargs).r2_test}
            for T in candidates]


# ------------------------------------------------------ Fourier sparsity vs decodability


def per_number_means(features, numbers) -> tuple[np.ndarray, np.ndarray]:
    """Distinct numbers (sorted) and the mean state of each (n_numbers x D)."""
    x, n = _as_2d(features), np.asarray(numbers, dtype=np.int64)
    uniq, inverse = np.unique(n, return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, inverse, x)
    return uniq, sums / np.bincount(inverse)[:, None]


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
