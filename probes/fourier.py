"""Fourier bases over a number line 0..p-1, spectra, outliers and low/high energy.

Two bases are offered (both as a matrix of rows over the p numbers):

* ``"paper"`` -- Zhou et al. (2024), Def. A.3: ``w_k = 2 pi k / (p - 1)``, rows constant,
  then ``cos(w_k x)``, ``sin(w_k x)`` for ``k = 1..(p-1)//2``, each row scaled to unit
  norm. Period of component k is ``(p - 1) / k``, so for p = 521 periods 10, 5, 2.5, 2 are
  k = 52, 104, 208, 260. When ``p - 1`` is even the last sine is identically zero and kept
  as a zero row; the basis is then not complete over p points (use ``"dft"`` where that
  matters).
* ``"dft"`` -- the exact orthonormal real DFT over p points: ``w_k = 2 pi k / p``, period
  ``p / k``; for even p the Nyquist sine is a zero row.

Every component k >= 1 owns one cosine row and one sine row, so code can address
components without caring which basis it holds. Functions accept numpy arrays or torch
tensors along any "number axis" and return the same kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

try:  # torch is a dependency of the toolkit but the math here does not need it
    import torch
except ImportError:  # pragma: no cover
    torch = None

BASIS_KINDS = ("paper", "dft")


@dataclass(frozen=True)
class FourierBasis:
    """Rows of a real Fourier basis over the numbers 0..p-1.

    ``matrix`` has shape (1 + 2K, p): row 0 is the constant, rows ``cos_rows[k-1]`` and
    ``sin_rows[k-1]`` are component k (k = 1..K).
    """

    p: int
    kind: str = "paper"

    def __post_init__(self) -> None:
        if self.kind not in BASIS_KINDS:
            raise ValueError(f"unknown basis kind {self.kind!r}; choose one of {BASIS_KINDS}")
        if self.p < 3:
            raise ValueError(f"a Fourier basis needs at least 3 numbers, got p={self.p}")

    @property
    def n_components(self) -> int:
        """K: the number of non-constant components."""
        return (self.p - 1) // 2 if self.kind == "paper" else self.p // 2

    @property
    def period_base(self) -> int:
        """The length whose divisors are the periods: p - 1 (paper) or p (dft)."""
        return self.p - 1 if self.kind == "paper" else self.p

    @property
    def ks(self) -> np.ndarray:
        return np.arange(1, self.n_components + 1)

    def period(self, k: int | np.ndarray) -> float | np.ndarray:
        return self.period_base / np.asarray(k, dtype=float)

    def frequency(self, k: int | np.ndarray) -> float | np.ndarray:
        """Angular frequency w_k in radians per unit of number."""
        return 2 * np.pi * np.asarray(k, dtype=float) / self.period_base

    def k_of_period(self, period: float) -> int:
        """The component index whose period is closest to ``period``."""
        return int(round(self.period_base / period))

    @property
    def periods(self) -> np.ndarray:
        return self.period_base / self.ks

    @property
    def cos_rows(self) -> np.ndarray:
        return 1 + 2 * (self.ks - 1)

    @property
    def sin_rows(self) -> np.ndarray:
        return 2 + 2 * (self.ks - 1)

    def rows_of(self, ks, include_constant: bool = False) -> np.ndarray:
        """Matrix row indices of components ``ks`` (cos and sin of each)."""
        ks = np.asarray(sorted(set(int(k) for k in ks)), dtype=int)
        if ks.size and (ks.min() < 1 or ks.max() > self.n_components):
            raise ValueError(f"components must lie in 1..{self.n_components}, got {ks.tolist()}")
        rows = np.stack([1 + 2 * (ks - 1), 2 + 2 * (ks - 1)], axis=1).ravel()
        return np.concatenate([[0], rows]) if include_constant else rows

    @cached_property
    def matrix(self) -> np.ndarray:
        x = np.arange(self.p, dtype=float)
        w = self.frequency(self.ks)[:, None] * x[None, :]
        rows = np.empty((1 + 2 * self.n_components, self.p))
        rows[0] = 1.0
        rows[1::2] = np.cos(w)
        rows[2::2] = np.sin(w)
        rows[np.all(np.abs(rows) < 1e-9, axis=1)] = 0.0  # sin(pi x) is exactly zero
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)

    def as_tensor(self, like) -> torch.Tensor:
        """The basis matrix as a tensor on ``like``'s device, float32 at least."""
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        return torch.as_tensor(self.matrix, dtype=dtype, device=like.device)


def _is_tensor(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def coefficients(x, basis: FourierBasis, axis: int = -1):
    """Project ``x`` on the basis along ``axis`` (length p); that axis becomes 1 + 2K rows."""
    if x.shape[axis] != basis.p:
        raise ValueError(f"axis {axis} has length {x.shape[axis]}, the basis expects p={basis.p}")
    if _is_tensor(x):
        xf = x.to(basis.as_tensor(x).dtype)
        out = torch.movedim(xf, axis, -1) @ basis.as_tensor(x).T
        return torch.movedim(out, -1, axis)
    out = np.moveaxis(np.asarray(x, dtype=float), axis, -1) @ basis.matrix.T
    return np.moveaxis(out, -1, axis)


def component_magnitudes(x, basis: FourierBasis, axis: int = -1):
    """Per-component magnitude sqrt(cos_k^2 + sin_k^2) along ``axis``.

    The axis becomes length K + 1: index 0 is |constant|, index k is component k.
    """
    c = coefficients(x, basis, axis)
    if _is_tensor(c):
        c = torch.movedim(c, axis, -1)
        mag = torch.cat([c[..., :1].abs(), torch.hypot(c[..., 1::2], c[..., 2::2])], dim=-1)
        return torch.movedim(mag, -1, axis)
    c = np.moveaxis(c, axis, -1)
    mag = np.concatenate([np.abs(c[..., :1]), np.hypot(c[..., 1::2], c[..., 2::2])], axis=-1)
    return np.moveaxis(mag, -1, axis)


@dataclass
class Outlier:
    k: int
    period: float
    magnitude: float

    def as_dict(self) -> dict:
        return {"k": self.k, "period": round(self.period, 6), "magnitude": self.magnitude}


@dataclass
class Spectrum:
    """Magnitudes of components 0..K of one signal (or pooled over many)."""

    basis: FourierBasis
    magnitude: np.ndarray  # (K + 1,), index 0 = constant

    @property
    def ks(self) -> np.ndarray:
        return self.basis.ks

    @property
    def nonconstant(self) -> np.ndarray:
        return self.magnitude[1:]

    def records(self, include_constant: bool = False) -> list[dict]:
        """``[{k, period, magnitude}]`` for JSON; the constant has period None."""
        rows = [{"k": 0, "period": None, "magnitude": float(self.magnitude[0])}]
        rows = rows if include_constant else []
        return rows + [
            {"k": int(k), "period": round(float(per), 6), "magnitude": float(m)}
            for k, per, m in zip(self.ks, self.basis.periods, self.nonconstant)
        ]

    def outliers(self, **kwargs) -> list[Outlier]:
        return find_outliers(self, **kwargs)

    def low_high(self, tau: int = 50) -> dict:
        return low_high_energy(self, tau)


def spectrum(x, basis: FourierBasis, axis: int = -1, pool: str = "l2") -> Spectrum:
    """Spectrum of ``x`` along its number ``axis``, pooled over every other axis.

    ``pool="l2"``: sqrt of the summed squared magnitudes (the paper's per-component L2 norm
    over the columns of an embedding matrix); ``pool="mean"``: mean magnitude (a spectrum
    averaged over a data set of logit vectors).
    """
    mag = component_magnitudes(x, basis, axis)
    if _is_tensor(mag):
        mag = mag.detach().double().cpu().numpy()
    mag = np.moveaxis(mag, axis, -1).reshape(-1, basis.n_components + 1)
    if pool == "l2":
        pooled = np.sqrt((mag**2).sum(axis=0))
    elif pool == "mean":
        pooled = mag.mean(axis=0)
    else:
        raise ValueError(f"pool must be 'l2' or 'mean', got {pool!r}")
    return Spectrum(basis, pooled)


def find_outliers(
    spec: Spectrum,
    z: float = 6.0,
    window: int = 5,
    min_ratio: float = 1.5,
    min_k: int = 1,
    top: int | None = None,
) -> list[Outlier]:
    """Components that stand out of their neighbourhood, largest first.

    Rule: for each component k >= ``min_k``, the baseline is the median magnitude of the
    ``window`` components on each side (k itself excluded; the window shrinks symmetrically
    near the ends, so a smooth decay is its own baseline, and is one-sided only at k = 1
    and k = K; at k = 1 the trend of k = 2, 3 is also extrapolated geometrically, so a
    decaying background does not make k = 1 an outlier). Residuals over the baseline
    are scaled by a robust noise level, 1.4826 x the median absolute residual over all
    components. k is an outlier when its residual exceeds ``z`` noise levels *and* its
    magnitude is at least ``min_ratio`` x the baseline. A smooth low-frequency background
    is absorbed by the local median; flat noise yields no outliers (a false positive
    needs a ~6-sigma event). ``top`` keeps only the largest few; use ``min_k = tau`` for
    "the top high-frequency components".
    """
    m = spec.nonconstant.astype(float)
    n = m.size
    baseline = np.empty(n)
    for i in range(n):
        # symmetric window, shrunk near the ends (one-sided only at the two end points)
        w = min(window, i, n - 1 - i) or window
        lo, hi = max(0, i - w), min(n, i + w + 1)
        baseline[i] = np.median(np.concatenate([m[lo:i], m[i + 1 : hi]]))
    if n >= 3 and m[2] > 0:  # k = 1: also extrapolate the trend of k = 2, 3 geometrically
        baseline[0] = max(baseline[0], m[1] ** 2 / m[2])
    resid = m - baseline
    noise = 1.4826 * np.median(np.abs(resid))
    noise = max(noise, 1e-12 * max(float(np.abs(m).max()), 1e-300))
    hits = (resid > z * noise) & (m >= min_ratio * baseline) & (spec.ks >= min_k)
    found = [Outlier(int(k), float(spec.basis.period(int(k))), float(mag))
             for k, mag in zip(spec.ks[hits], m[hits])]
    found.sort(key=lambda o: -o.magnitude)
    return found[:top] if top else found


def low_high_energy(spec: Spectrum, tau: int = 50) -> dict:
    """Energy (squared magnitude) below and at/above component ``tau``, constant excluded."""
    energy = spec.nonconstant.astype(float) ** 2
    low = float(energy[spec.ks < tau].sum())
    high = float(energy[spec.ks >= tau].sum())
    total = low + high
    return {
        "tau": tau,
        "low_energy": low,
        "high_energy": high,
        "low_fraction": low / total if total > 0 else math.nan,
        "high_fraction": high / total if total > 0 else math.nan,
    }
