"""Fourier filters on module outputs, built once from a readout matrix (Zhou et al., Def. A.6).

Given a readout ``W`` (p x D: e.g. the unembedding rows of the number tokens) and a set of
components S, the filter maps a vector x in R^D to the closest y with
``(F W y)[rows of S] = 0``: ``y = x - R R^T x``, where R (D x r) is an orthonormal basis of
the row space of ``(F W)[rows of S]``. The constant component is never removed.

"Low-pass" keeps the low components and so removes k >= tau; "high-pass" removes k < tau.

When the removed rows span the whole width (rank r = D) the filter maps every x to 0: a
module knockout, not a frequency ablation, and the low- and high-removed rows of Table 1
become identical. ``FourierFilter.knockout`` says so, ``summary`` gives what a results file
should record, and ``tau_window`` / ``choose_tau`` find the taus where neither filter of the
pair is a knockout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probes.fourier import FourierBasis, _is_tensor

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


@dataclass
class FourierFilter:
    """The projection x -> x - R R^T x; ``R`` has orthonormal columns (D x r)."""

    R: np.ndarray
    removed: tuple[int, ...]
    name: str = "custom"
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return self.R.shape[0]

    @property
    def rank(self) -> int:
        return self.R.shape[1]

    @property
    def knockout(self) -> bool:
        """The removed subspace is the whole width: the filter zeroes its input."""
        return self.dim > 0 and self.rank >= self.dim

    def summary(self) -> dict:
        """``{name, rank, width, knockout, removed}`` for results files and tables."""
        return {"name": self.name, "rank": self.rank, "width": self.dim,
                "knockout": self.knockout, "removed": len(self.removed)}

    def matrix(self) -> np.ndarray:
        """The D x D projection I - R R^T (for inspection; ``apply`` never builds it)."""
        return np.eye(self.dim) - self.R @ self.R.T

    def _R_for(self, x):
        key = (x.device, x.dtype)
        if key not in self._cache:
            dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            self._cache[key] = torch.as_tensor(self.R, dtype=dtype, device=x.device)
        return self._cache[key]

    def apply(self, x):
        """Apply to the last axis of ``x`` (numpy or torch; low-precision tensors are
        projected in float32 and cast back)."""
        if self.rank == 0:
            return x
        if _is_tensor(x):
            R = self._R_for(x)
            xf = x.to(R.dtype)
            return (xf - (xf @ R) @ R.T).to(x.dtype)
        x = np.asarray(x, dtype=float)
        return x - (x @ self.R) @ self.R.T

    __call__ = apply


def orthonormal_row_space(A: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis (columns) of the row space of A, rank decided by the SVD."""
    if A.size == 0:
        return np.zeros((A.shape[1], 0))
    _, s, vt = np.linalg.svd(A, full_matrices=False)
    rank = int((s > rtol * max(s.max(initial=0.0), 1e-300)).sum())
    return vt[:rank].T.copy()


def remove_components(
    readout: np.ndarray, basis: FourierBasis, ks, name: str = "custom"
) -> FourierFilter:
    """Filter removing components ``ks`` (k >= 1) of ``readout @ x`` from x."""
    readout = np.asarray(readout, dtype=float)
    if readout.shape[0] != basis.p:
        raise ValueError(f"readout has {readout.shape[0]} rows, the basis expects p={basis.p}")
    ks = tuple(sorted(set(int(k) for k in ks)))
    rows = basis.rows_of(ks)
    A = basis.matrix[rows] @ readout
    return FourierFilter(orthonormal_row_space(A), ks, name)


def low_pass(readout: np.ndarray, basis: FourierBasis, tau: int = 50) -> FourierFilter:
    """Keep components k < tau: remove every k >= tau."""
    return remove_components(readout, basis, range(tau, basis.n_components + 1), "low_pass")


def high_pass(readout: np.ndarray, basis: FourierBasis, tau: int = 50) -> FourierFilter:
    """Keep components k >= tau: remove every 1 <= k < tau."""
    return remove_components(readout, basis, range(1, min(tau, basis.n_components + 1)),
                             "high_pass")


def keep_only(readout: np.ndarray, basis: FourierBasis, ks) -> FourierFilter:
    """Keep only components ``ks`` (and the constant): remove every other k >= 1."""
    keep = set(int(k) for k in ks)
    drop = [k for k in basis.ks if k not in keep]
    return remove_components(readout, basis, drop, f"keep_{'_'.join(map(str, sorted(keep)))}")


def identity_filter(dim: int) -> FourierFilter:
    return FourierFilter(np.zeros((dim, 0)), (), "none")


def _is_knockout(readout: np.ndarray, basis: FourierBasis, ks) -> bool:
    """Would removing ``ks`` remove the whole width? (No SVD when too few rows to tell.)"""
    rows = basis.rows_of(ks)
    rows = rows[np.any(basis.matrix[rows] != 0, axis=1)] if len(rows) else rows
    if len(rows) < readout.shape[1]:
        return False
    return orthonormal_row_space(basis.matrix[rows] @ readout).shape[1] >= readout.shape[1]


def tau_window(readout: np.ndarray, basis: FourierBasis) -> tuple[int, int] | None:
    """``(lo, hi)``: every tau in lo..hi leaves both ``low_pass`` (removes k >= tau) and
    ``high_pass`` (removes 1 <= k < tau) below full rank; None when no tau does.

    The low-pass rank falls and the high-pass rank rises with tau, so each bound is a
    binary search (at most 2 log2(K) SVDs, none when the width exceeds the rows).
    """
    readout = np.asarray(readout, dtype=float)
    K = basis.n_components

    def first(pred, lo: int, hi: int) -> int:  # smallest t in lo..hi with pred(t), else hi+1
        while lo <= hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid - 1
            else:
                lo = mid + 1
        return lo

    lo = first(lambda t: not _is_knockout(readout, basis, range(t, K + 1)), 1, K)
    hi = first(lambda t: _is_knockout(readout, basis, range(1, t)), 1, K) - 1
    return (lo, hi) if lo <= hi else None


def choose_tau(readout: np.ndarray, basis: FourierBasis, preferred: int = 50) -> int | None:
    """The tau of ``tau_window`` nearest ``preferred`` (None: every tau gives a knockout)."""
    window = tau_window(readout, basis)
    return None if window is None else int(min(max(preferred, window[0]), window[1]))
