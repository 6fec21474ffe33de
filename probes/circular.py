"""Digit probes (Levy & Geva, NAACL 2025): one circle per digit place in base 10.

For digit place i (0 = units) of the numbers n, the digit is d = (n // 10^i) mod 10.

* ``"circular"``: ridge regression of (cos, sin)(2 pi d / 10) on the state; the decoded
  digit is the nearest of the ten angles to the predicted point's angle.
* ``"linear"``: a 10-class multinomial logistic regression of d.
* ``"value"``: ridge regression of n itself; the digit is read from the rounded prediction
  (a value probe that is off by a few units gets the units digit wrong: Levy & Geva's
  point that values are not encoded linearly while digits are).

All kinds share the preprocessing of ``probes.linear.mod_probes`` (PCA fitted on the train
fold, one global scale) and the folds by number (``residue_folds``, units digits dealt evenly
over the folds), so a number's states are never in train and test, and every kind and place
is scored on the same held-out numbers. Each result keeps its per-sample held-out
predictions (``numbers``, ``labels``, ``predictions``), so intervals over numbers can be
attached later. ``shuffled=True`` adds the shuffled-label baseline: numbers permuted
between the numbers of each fold, labels of every kind and place derived from them.

``fit_circular`` fits one circular probe on all samples; ``CircularProbe.rotation`` gives
the smallest change of a state that turns its read-out angle by +k digits (the digit
intervention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probes.common import as_2d, pca_basis
from probes.folds import residue_folds, shuffled_within

BASE = 10
KINDS = ("circular", "linear", "value")


def digit_at(numbers, place: int, base: int = BASE) -> np.ndarray:
    """Digit ``place`` (0 = units) of each non-negative integer."""
    return (np.asarray(numbers, dtype=np.int64) // base**place) % base


def circle_targets(digits, base: int = BASE) -> np.ndarray:
    """N x 2: (cos, sin) of 2 pi d / base."""
    angle = 2 * np.pi * np.asarray(digits, dtype=np.float64) / base
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def nearest_digit(points, base: int = BASE) -> np.ndarray:
    """The digit whose angle is nearest each (cos, sin) point's angle."""
    points = np.asarray(points, dtype=np.float64)
    angle = np.arctan2(points[:, 1], points[:, 0])
    return np.mod(np.rint(angle * base / (2 * np.pi)), base).astype(np.int64)


def _ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(intercept, coef) of ridge regression y ~ b + z C^T (z need not be centred)."""
    zm, ym = z.mean(axis=0), y.mean(axis=0)
    zc = z - zm
    coef = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (y - ym)).T
    return ym - zm @ coef.T, coef


@dataclass
class DigitProbeResult:
    kind: str
    place: int
    accuracy: float
    chance: float  # share of the most frequent digit
    n_samples: int
    n_numbers: int
    n_folds: int
    shuffled: bool = False
    accuracy_std: float | None = None  # spread over the shuffles of a baseline
    r2: float | None = None  # value probe: held-out R^2 of n
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def per_number(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct held-out numbers and the probe's accuracy on each (for intervals)."""
        uniq, inverse = np.unique(self.numbers, return_inverse=True)
        hits = np.bincount(inverse, weights=self.predictions == self.labels)
        return uniq, hits / np.bincount(inverse)

    def summary(self) -> dict:
        keep = ("kind", "place", "accuracy", "chance", "n_samples", "n_numbers", "n_folds",
                "shuffled", "accuracy_std", "r2")
        return {k: getattr(self, k) for k in keep}


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    sst = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


def digit_probes(
    features,
    numbers,
    places,
    *,
    kinds=KINDS,
    n_splits: int = 5,
    pca_dim: int | None = 64,
    alpha: float = 1.0,
    C: float = 1.0,
    seed: int = 0,
    shuffled: bool = False,
    n_shuffles: int = 3,
    max_iter: int = 1000,
) -> list[DigitProbeResult]:
    """Cross-validated digit probes of every kind for every place (see the module doc).

    Results are ordered by place, then kind; with ``shuffled`` each result is followed by
    its baseline (mean accuracy over ``n_shuffles`` permutations, spread in
    ``accuracy_std``). ``alpha`` is the ridge penalty in units of the scaled PCA features.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x = as_2d(features)
    n = np.asarray(numbers, dtype=np.int64)
    if n.min() < 0:
        raise ValueError("digit probes need non-negative numbers")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown probe kind(s) {bad}; choose among {KINDS}")
    places = [int(p) for p in places]
    fold = residue_folds(n, n_splits, seed, BASE)
    rng = np.random.default_rng(seed + 1)
    versions = [(False, n)] + [(True, shuffled_within(n, n, fold, rng))
                               for _ in range(n_shuffles if shuffled else 0)]
    # preds[(version, place, kind)]: held-out predicted digit per sample
    preds = {(v, p, k): np.empty_like(n) for v in range(len(versions)) for p in places
             for k in kinds}
    value_pred = {v: np.empty(len(n)) for v in range(len(versions))}
    scale_n = float(max(n.max(), 1))
    for f in np.unique(fold):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        dim = min(pca_dim or x.shape[1], x.shape[1], len(train) - 1)
        mean = x[train].mean(axis=0)
        comps = pca_basis(x[train] - mean, dim) if dim < x.shape[1] else None
        z_tr, z_te = ((v - mean) if comps is None else (v - mean) @ comps.T
                      for v in (x[train], x[test]))
        scale = np.sqrt(z_tr.var(axis=0).mean()) or 1.0
        z_tr, z_te = z_tr / scale, z_te / scale
        for v, (_, labels_n) in enumerate(versions):
            if "value" in kinds:
                b, c = _ridge(z_tr, labels_n[train, None] / scale_n, alpha)
                value_pred[v][test] = ((b + z_te @ c.T)[:, 0]) * scale_n
            for p in places:
                d_tr = digit_at(labels_n[train], p)
                if "circular" in kinds:
                    b, c = _ridge(z_tr, circle_targets(d_tr), alpha)
                    preds[(v, p, "circular")][test] = nearest_digit(b + z_te @ c.T)
                if "linear" in kinds:
                    out = preds[(v, p, "linear")]
                    if len(np.unique(d_tr)) < 2:  # one class left: predict it
                        out[test] = d_tr[0]
                    else:
                        with threadpool_limits(1):
                            clf = LogisticRegression(C=C, max_iter=max_iter).fit(z_tr, d_tr)
                        out[test] = clf.predict(z_te)
                if "value" in kinds:
                    rounded = np.clip(np.rint(value_pred[v][test]), 0, None).astype(np.int64)
                    preds[(v, p, "value")][test] = digit_at(rounded, p)
    results = []
    for p in places:
        for k in kinds:
            accs, r2s = [], []
            for v, (_, labels_n) in enumerate(versions):
                labels = digit_at(labels_n, p)
                accs.append(float((preds[(v, p, k)] == labels).mean()))
                r2s.append(_r2(labels_n.astype(float), value_pred[v]) if k == "value" else None)
            labels = digit_at(n, p)
            common = dict(kind=k, place=p, chance=float(np.bincount(labels).max() / len(n)),
                          n_samples=len(n), n_numbers=len(np.unique(n)),
                          n_folds=len(np.unique(fold)))
            results.append(DigitProbeResult(
                accuracy=accs[0], r2=r2s[0], numbers=n, labels=labels,
                predictions=preds[(0, p, k)], **common))
            if shuffled:
                last = len(versions) - 1
                results.append(DigitProbeResult(
                    accuracy=float(np.mean(accs[1:])), accuracy_std=float(np.std(accs[1:])),
                    shuffled=True, r2=None if k != "value" else float(np.mean(r2s[1:])),
                    numbers=n, labels=digit_at(versions[last][1], p),
                    predictions=preds[(last, p, k)], **common))
    return results


@dataclass
class CircularProbe:
    """A circular probe of one digit place fitted on all given states.

    The read-out point is ``y = (x - mean) @ weight.T + intercept`` with ``weight`` (2 x D)
    in model space.
    """

    place: int
    mean: np.ndarray
    weight: np.ndarray
    intercept: np.ndarray
    base: int = BASE

    def predict(self, features) -> np.ndarray:
        return (as_2d(features) - self.mean) @ self.weight.T + self.intercept

    def decode(self, features) -> np.ndarray:
        return nearest_digit(self.predict(features), self.base)

    def rotation(self, features, k: int) -> np.ndarray:
        """N x D: the minimum-norm change of each state that rotates its read-out point by
        2 pi k / base about the origin (so the decoded digit moves by +k)."""
        y = self.predict(features)
        angle = 2 * np.pi * k / self.base
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        return (y @ rot.T - y) @ np.linalg.pinv(self.weight).T


def fit_circular(features, numbers, place: int, *, pca_dim: int | None = 64,
                 alpha: float = 1.0) -> CircularProbe:
    """Fit the circular probe of digit ``place`` on every sample (PCA and scale as in
    ``digit_probes``), mapped back to model space."""
    x = as_2d(features)
    mean = x.mean(axis=0)
    dim = min(pca_dim or x.shape[1], x.shape[1], len(x) - 1)
    comps = pca_basis(x - mean, dim) if dim < x.shape[1] else np.eye(x.shape[1])
    z = (x - mean) @ comps.T
    scale = np.sqrt(z.var(axis=0).mean()) or 1.0
    b, c = _ridge(z / scale, circle_targets(digit_at(numbers, place)), alpha)
    return CircularProbe(int(place), mean, c @ comps / scale, b)
