"""Number -> state reconstructions with matched parameter counts, for activation patching.

Kantamneni & Tegmark (2025) test a helix fit causally: the state at an operand's token is
replaced by the fit's point for that (or another) number. Each method here is fitted on
training states ``x`` (N x D) of known numbers and maps (numbers, source states) to
model-space states; ``m = linear + 2 x len(periods)`` sets the parameter count:

* ``helix``: ``probes.linear.fit_helix`` (n and cos/sin(2 pi n/T) in the top-``pca_dim``
  PCA space, mapped back); m basis functions.
* ``circle``: the same periods without the linear term (m - 1: as close as it gets).
* ``polynomial``: Legendre polynomials of degree 1..m in n (the span of n, ..., n^m, better
  conditioned), fitted in the same PCA space.
* ``pca``: the source state projected on the top-m principal directions (around the mean):
  not a function of the number, it is given the real state of the prompt.
* ``shuffled``: the helix fitted to states matched to permuted numbers (a control).

Every method is fitted on the same numbers (``split_numbers``: held-out numbers get
``r2_heldout``, the model-space R^2 of their reconstructions, the same definition for all).
``patched`` replaces the whole state (``mode="replace"``, as the paper does) or only its
component in the method's span, keeping the rest of the real state (``"subspace"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from probes.linear import fit_helix, pca_basis, split_numbers

METHODS = ("helix", "circle", "polynomial", "pca", "shuffled")
MODES = ("replace", "subspace")


def _orthonormal(block: np.ndarray) -> np.ndarray:
    """Orthonormal basis (D x r) of the column space of ``block`` (D x m)."""
    u, s, _ = np.linalg.svd(block, full_matrices=False)
    rank = int((s > 1e-10 * max(s.max(initial=0.0), 1e-300)).sum())
    return u[:, :rank]


@dataclass
class Reconstruction:
    """One fitted method: ``reconstruct(numbers, source)`` gives model-space states."""

    method: str
    n_params: int
    mean: np.ndarray  # (D,) mean training state
    span: np.ndarray  # (D, r) orthonormal directions the method sets
    r2_heldout: float
    _predict: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(repr=False)

    def reconstruct(self, numbers, source) -> np.ndarray:
        """States (N x D) for ``numbers``; ``source`` (N x D): the real states of prompts
        with those numbers (only ``pca`` reads them)."""
        return self._predict(np.asarray(numbers, dtype=np.float64),
                             np.asarray(source, dtype=np.float64))

    def patched(self, numbers, source, current, mode: str = "replace") -> np.ndarray:
        """What replaces ``current`` (N x D): the reconstruction, or (``subspace``) the
        current state with its component in ``span`` set to the reconstruction's."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        target = self.reconstruct(numbers, source)
        if mode == "replace":
            return target
        current = np.asarray(current, dtype=np.float64)
        return current + (target - current) @ self.span @ self.span.T

    def summary(self) -> dict:
        return {"method": self.method, "n_params": self.n_params, "rank": self.span.shape[1],
                "r2_heldout": self.r2_heldout}


def _r2(x: np.ndarray, pred: np.ndarray) -> float:
    sst = ((x - x.mean(axis=0)) ** 2).sum()
    return float(1 - ((x - pred) ** 2).sum() / sst) if sst > 0 else float("nan")


def _legendre(numbers: np.ndarray, degree: int, lo: float, hi: float) -> np.ndarray:
    t = 2 * (numbers - lo) / max(hi - lo, 1e-12) - 1
    return np.polynomial.legendre.legvander(t, degree)[:, 1:]  # the constant is the intercept


def _from_helix(method: str, x, n, periods, linear, pca_dim, seed, test_fraction, shuffle):
    fit = fit_helix(x, n, periods, pca_dim=pca_dim, linear=linear, seed=seed,
                    test_fraction=test_fraction, shuffle=shuffle, decode=False)
    return method, fit.coef.shape[1], fit.mean, _orthonormal(fit.model_coef()), \
        lambda nums, src: fit.predict(nums)


def _polynomial(x, n, degree, pca_dim, train):
    mean = x[train].mean(axis=0)
    comps = pca_basis(x[train] - mean, min(pca_dim, int(train.sum()) - 1))
    lo, hi = float(n[train].min()), float(n[train].max())
    design = np.concatenate([np.ones((int(train.sum()), 1)),
                             _legendre(n[train], degree, lo, hi)], axis=1)
    sol, *_ = np.linalg.lstsq(design, (x[train] - mean) @ comps.T, rcond=None)
    model = sol @ comps  # rows: [intercept, P_1, ..., P_m] in model space

    def predict(nums, src):
        return mean + model[0] + _legendre(nums, degree, lo, hi) @ model[1:]

    return "polynomial", degree, mean, _orthonormal(model[1:].T), predict


def _pca(x, dim, train):
    mean = x[train].mean(axis=0)
    comps = pca_basis(x[train] - mean, dim)
    return "pca", comps.shape[0], mean, comps.T, \
        lambda nums, src: mean + (src - mean) @ comps.T @ comps


def fit_reconstructions(
    features,
    numbers,
    periods: Sequence[float] = (2, 5, 10, 100),
    methods: Sequence[str] = METHODS,
    *,
    pca_dim: int = 100,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Reconstruction]:
    """Fit each method on the states of training numbers (the same split for all)."""
    x = np.asarray(features, dtype=np.float64)
    n = np.asarray(numbers, dtype=np.float64)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose among {METHODS}")
    periods = tuple(float(T) for T in periods)
    m = 1 + 2 * len(periods)
    test = split_numbers(n.astype(np.int64), test_fraction, seed)
    train = ~test
    out = {}
    for method in methods:
        if method in ("helix", "circle", "shuffled"):
            if method == "circle" and not periods:
                raise ValueError("the circle fit needs at least one period")
            parts = _from_helix(method, x, n, periods, method != "circle", pca_dim, seed,
                                test_fraction, method == "shuffled")
        elif method == "polynomial":
            parts = _polynomial(x, n, m, pca_dim, train)
        else:
            parts = _pca(x, m, train)
        name, n_params, mean, span, predict = parts
        r2 = _r2(x[test], predict(n[test], x[test]))
        out[method] = Reconstruction(name, int(n_params), mean, span, r2, predict)
    return out
