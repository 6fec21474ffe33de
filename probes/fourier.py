"""Fourier bases over a number line 0..p-1, spectra, outliers, peaks and low/high energy.

Three bases are offered (each a matrix of rows over the p numbers):

* ``"paper"`` -- Zhou et al. (2024), Def. A.3, exactly as written: ``w_k = 2 pi k / (p-1)``,
  the constant row ``sqrt(1/(p-1))``, then ``sqrt(2/(p-1)) cos(w_k x)`` and
  ``sqrt(2/(p-1)) sin(w_k x)`` for ``k = 1..(p-1)//2``. Period of component k is
  ``(p-1)/k``, so for p = 521 periods 10, 5, 2.5, 2 are k = 52, 104, 208, 260. The rows are
  not unit vectors over the p points: the period-2 cosine ``(-1)^x`` has norm
  ``sqrt(2p/(p-1))`` (1.415 for p = 521) where the others have ~1, which is how the paper's
  figures show it. Figures and tables of this toolkit use this basis by default.
* ``"unit"`` -- the same rows, each scaled to unit norm over the p points (earlier versions
  of this toolkit called it "paper"): the period-2 component comes out sqrt(2p/(p-1)) smaller
  relative to its neighbours than in the paper's figures.
* ``"dft"`` -- the exact orthonormal real DFT over p points: ``w_k = 2 pi k / p``, period
  ``p / k``; for even p the Nyquist sine is a zero row.

When ``p - 1`` is even the last sine of "paper"/"unit" is identically zero and kept as a
zero row; those bases are then not complete over p points (use ``"dft"`` where that
matters). Filters (``probes.filters``) depend only on the row spaces, the same for "paper"
and "unit". Every component k >= 1 owns one cosine row and one sine row, so code can address
components without caring which basis it holds. Functions accept numpy arrays or torch
tensors along any "number axis" and return the same kind.

Two rules pick components out of a spectrum: ``find_outliers`` (robust: stands out of its
neighbourhood; for embedding spectra) and ``find_peaks`` (the paper's annotation: the
largest local maxima at or above tau; for lens and ablation figures; never k = 1).
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

BASIS_KINDS = ("paper", "unit", "dft")


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
        return self.p // 2 if self.kind == "dft" else (self.p - 1) // 2

    @property
    def period_base(self) -> int:
        """The length whose divisors are the periods: p - 1 (paper, unit) or p (dft)."""
        return self.p if self.kind == "dft" else self.p - 1

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
        if self.kind == "paper":  # Def. A.3's factors, not unit rows
            rows[0] *= np.sqrt(1.0 / (self.p - 1))
            rows[1:] *= np.sqrt(2.0 / (self.p - 1))
            return rows
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
    # (K + 1,) mean squared magnitude over what was pooled (pool="mean"), else None
    mean_energy: np.ndarray | None = None

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
        """Robust outliers (``find_outliers``): the rule beside embedding spectra."""
        return find_outliers(self, **kwargs)

    def peaks(self, min_k: int = 2, top: int | None = 10) -> list[Outlier]:
        """The largest local maxima at k >= min_k (``find_peaks``): the paper's annotation,
        the rule beside lens and ablation figures (``min_k = tau``)."""
        return find_peaks(self, min_k=min_k, top=top)

    def low_high(self, tau: int = 50) -> dict:
        return low_high_energy(self, tau)


def spectrum(x, basis: FourierBasis, axis: int = -1, pool: str = "l2") -> Spectrum:
    """Spectrum of ``x`` along its number ``axis``, pooled over every other axis.

    ``pool="l2"``: sqrt of the summed squared magnitudes (the paper's per-component L2 norm
    over the columns of an embedding matrix); ``pool="mean"``: mean magnitude (a spectrum
    averaged over a data set of logit vectors), with the mean squared magnitude kept in
    ``mean_energy`` (the two give different low/high fractions, see ``low_high_energy``).
    """
    mag = component_magnitudes(x, basis, axis)
    if _is_tensor(mag):
        mag = mag.detach().double().cpu().numpy()
    mag = np.moveaxis(mag, axis, -1).reshape(-1, basis.n_components + 1)
    if pool == "l2":
        pooled = np.sqrt((mag**2).sum(axis=0))
    elif pool == "mean":
        return Spectrum(basis, mag.mean(axis=0), (mag**2).mean(axis=0))
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


def find_peaks(spec: Spectrum, min_k: int = 2, top: int | None = 10) -> list[Outlier]:
    """The largest components at or above ``min_k`` that are local maxima, largest first.

    This is how Zhou et al. annotate their logit spectra (the largest components at or
    above tau): a ranking, not a test. A local maximum is at least its left neighbour and
    above its right one (the last component: above its left one), so a spike that leaks
    into k +- 1 is listed once. k = 1 (the
    period p - 1 trend of the number line) is never listed (``min_k`` is raised to 2).
    """
    m = spec.nonconstant.astype(float)
    left = np.concatenate([[-np.inf], m[:-1]])
    right = np.concatenate([m[1:], [-np.inf]])
    local = (m >= left) & (m > right)
    local[-1] = m.size > 1 and m[-1] > m[-2]  # the last (period 2) must rise above k - 1
    hits = local & (spec.ks >= max(int(min_k), 2)) & (m > 0)
    found = [Outlier(int(k), float(spec.basis.period(int(k))), float(mag))
             for k, mag in zip(spec.ks[hits], m[hits])]
    found.sort(key=lambda o: -o.magnitude)
    return found[:top] if top else found


def low_high_energy(spec: Spectrum, tau: int = 50) -> dict:
    """Energy below and at/above component ``tau``, constant excluded.

    ``low_energy`` / ``low_fraction`` use the spectrum's magnitudes squared: for a data-set
    spectrum (``pool="mean"``) that is the energy of the *mean magnitude* (components whose
    phase varies between prompts do not cancel, but their spread does not count either).
    When the spectrum carries ``mean_energy``, ``low_mean_energy`` / ``low_fraction_mean_energy``
    give the same split of the *mean energy per prompt* (mean of squared magnitudes).
    """
    def split(energy: np.ndarray) -> tuple[float, float, float, float]:
        low = float(energy[spec.ks < tau].sum())
        high = float(energy[spec.ks >= tau].sum())
        total = low + high
        return (low, high, low / total if total > 0 else math.nan,
                high / total if total > 0 else math.nan)

    low, high, lf, hf = split(spec.nonconstant.astype(float) ** 2)
    out = {"tau": tau, "low_energy": low, "high_energy": high, "low_fraction": lf,
           "high_fraction": hf}
    if spec.mean_energy is not None:
        low, high, lf, hf = split(np.asarray(spec.mean_energy, dtype=float)[1:])
        out |= {"low_mean_energy": low, "high_mean_energy": high,
                "low_fraction_mean_energy": lf, "high_fraction_mean_energy": hf}
    return out
