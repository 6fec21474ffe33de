"""Scalar measures of Fourier sparsity used across the grokking and LLM literature.

* ``gini`` -- Hurley & Rickard's Gini index of a non-negative vector (0 = flat, -> 1 sparse).
* ``ffd`` / ``fcr`` -- Furuta et al. (2024): Fourier Frequency Density and Fourier
  Coefficient Ratio, from per-component cosine and sine norms.
* ``max_normalized_power`` -- Li et al. (2024): per neuron, the largest share of
  (non-constant) spectral power held by one frequency, and which frequency.
* ``key_frequencies`` -- the components holding a sizeable share of a spectrum's energy.
* ``cos_sin_norms`` -- the cosine and sine norms of a matrix along its number axis.
"""

from __future__ import annotations

import numpy as np

from probes.fourier import FourierBasis, coefficients


def gini(values) -> float:
    """Hurley-Rickard Gini index: 1 - 2 sum_i (c_(i)/||c||_1) (N - i + 1/2)/N, c sorted up."""
    c = np.sort(np.abs(np.asarray(values, dtype=float).ravel()))
    n = c.size
    total = c.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(1.0 - 2.0 * np.sum((c / total) * (n - i + 0.5) / n))


def cos_sin_norms(x, basis: FourierBasis, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """L2 norms of the cosine and sine coefficients of each component k = 1..K.

    ``x`` has the numbers along ``axis``; the norm is taken over every other axis
    (e.g. p x d_model embedding -> two arrays of length K).
    """
    c = np.moveaxis(np.asarray(coefficients(np.asarray(x, dtype=float), basis, axis)), axis, 0)
    c = c.reshape(c.shape[0], -1)
    return np.linalg.norm(c[basis.cos_rows], axis=1), np.linalg.norm(c[basis.sin_rows], axis=1)


def ffd(cos_norm, sin_norm, eta: float = 0.5) -> float:
    """Fraction of frequencies whose cos or sin norm exceeds ``eta`` x the largest norm."""
    cos_norm, sin_norm = np.asarray(cos_norm, float), np.asarray(sin_norm, float)
    peak = max(cos_norm.max(initial=0.0), sin_norm.max(initial=0.0))
    if peak == 0:
        return 0.0
    return float(np.mean((cos_norm > eta * peak) | (sin_norm > eta * peak)))


def fcr(cos_norm, sin_norm, rtol: float = 1e-9) -> float:
    """Mean over frequencies of min(|cos|/|sin|, |sin|/|cos|): 1 = balanced, 0 = one-sided.

    Norms below ``rtol`` x the largest norm are rounding noise and count as zero.
    Frequencies where both norms are zero are skipped; one zero norm gives 0.
    """
    a, b = np.abs(np.asarray(cos_norm, float)), np.abs(np.asarray(sin_norm, float))
    tiny = rtol * max(a.max(initial=0.0), b.max(initial=0.0))
    a, b = np.where(a > tiny, a, 0.0), np.where(b > tiny, b, 0.0)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = hi > 0
    return float(np.mean(lo[keep] / hi[keep])) if keep.any() else 0.0


def power_per_component(x, basis: FourierBasis, axis: int = -1,
                        include_constant: bool = False) -> np.ndarray:
    """Power cos_k^2 + sin_k^2 per component along ``axis`` (that axis becomes K or K+1)."""
    c = np.moveaxis(np.asarray(coefficients(np.asarray(x, dtype=float), basis, axis)), axis, -1)
    power = c[..., basis.cos_rows] ** 2 + c[..., basis.sin_rows] ** 2
    if include_constant:
        power = np.concatenate([c[..., :1] ** 2, power], axis=-1)
    return np.moveaxis(power, -1, axis)


def max_normalized_power(weights, basis: FourierBasis, axis: int = -1,
                         include_constant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron (every index off ``axis``): the largest share of power in one component.

    Returns ``(share, k)``: share = max_k |u_k|^2 / sum_k |u_k|^2 over the one-sided real
    spectrum (so a pure sinusoid scores 1), and the arg-max component (0 = constant, only
    when ``include_constant``). Neurons with no power get share 0, k 0.
    """
    power = np.moveaxis(power_per_component(weights, basis, axis, include_constant), axis, -1)
    total = power.sum(axis=-1)
    best = power.argmax(axis=-1)
    share = np.divide(power.max(axis=-1), total, out=np.zeros_like(total), where=total > 0)
    ks = best if include_constant else best + 1
    return share, np.where(total > 0, ks, 0)


def key_frequencies(energy, min_share: float = 0.05, max_count: int | None = None) -> list[int]:
    """Components (1-based k) whose share of the total energy is at least ``min_share``,
    largest first. ``energy`` is indexed k = 1..K (pass squared magnitudes or powers)."""
    e = np.asarray(energy, dtype=float)
    total = e.sum()
    if total <= 0:
        return []
    order = np.argsort(-e)
    ks = [int(i) + 1 for i in order if e[i] / total >= min_share]
    return ks[:max_count] if max_count else ks
