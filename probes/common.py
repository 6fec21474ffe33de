"""Array helpers shared by the probes: 2-D features, PCA rows, per-number grouping."""

from __future__ import annotations

import numpy as np


def as_2d(features) -> np.ndarray:
    """Features (numpy or torch, N x D) as a float64 array."""
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


def shuffled_by_number(numbers: np.ndarray, values: np.ndarray, rng) -> np.ndarray:
    """``values`` (one per sample, a function of the number) permuted between numbers."""
    uniq, inverse = np.unique(numbers, return_inverse=True)
    first = np.zeros(len(uniq), dtype=np.asarray(values).dtype)
    first[inverse] = values
    return rng.permutation(first)[inverse]


def per_number_means(features, numbers) -> tuple[np.ndarray, np.ndarray]:
    """Distinct numbers (sorted) and the mean state of each (n_numbers x D)."""
    x, n = as_2d(features), np.asarray(numbers, dtype=np.int64)
    uniq, inverse = np.unique(n, return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, inverse, x)
    return uniq, sums / np.bincount(inverse)[:, None]
