"""Reconstructions for patching: exact on their own model class, checked against numpy."""

import numpy as np
import pytest

from probes.linear import split_numbers
from probes.reconstruct import METHODS, fit_reconstructions

PERIODS = (5, 10)


def _helix(n):
    n = np.asarray(n, dtype=float)
    cols = [n / 100]
    for T in PERIODS:
        cols += [np.cos(2 * np.pi * n / T), np.sin(2 * np.pi * n / T)]
    return np.stack(cols, 1)


def test_parameter_counts_and_exact_helix():
    rng = np.random.default_rng(0)
    n = np.repeat(np.arange(100), 4)
    M = rng.standard_normal((5, 12))
    x = 3 + _helix(n) @ M + 0.01 * rng.standard_normal((len(n), 12))
    fits = fit_reconstructions(x, n, PERIODS, pca_dim=12, seed=1)
    assert list(fits) == list(METHODS)
    assert {m: f.n_params for m, f in fits.items()} == {
        "helix": 5, "circle": 4, "polynomial": 5, "pca": 5, "shuffled": 5}
    truth = 3 + _helix(np.arange(100)) @ M
    got = fits["helix"].reconstruct(np.arange(100), np.zeros((100, 12)))
    assert np.abs(got - truth).max() < 0.01
    assert fits["helix"].r2_heldout > 0.999
    assert fits["shuffled"].r2_heldout < 0.2
    assert fits["circle"].r2_heldout < fits["helix"].r2_heldout
    assert fits["helix"].span.shape == (12, 5)


def test_polynomial_is_exact_on_polynomials_and_pca_matches_numpy_svd():
    rng = np.random.default_rng(1)
    n = np.repeat(np.arange(60), 3)
    t = n / 59.0
    x = np.stack([t, t**2, t**3, 1 - t**4, t**5], 1) @ rng.standard_normal((5, 8))
    fits = fit_reconstructions(x, n, PERIODS, ("polynomial", "pca"), pca_dim=8, seed=0)
    poly = fits["polynomial"]
    np.testing.assert_allclose(poly.reconstruct(n, x), x, atol=1e-8)
    assert poly.r2_heldout == pytest.approx(1, abs=1e-10)
    # pca: mean + projection on the top-5 right singular vectors of the centred train rows
    train = ~split_numbers(n, 0.2, 0)
    z = rng.standard_normal((len(n), 8)) * np.arange(1, 9)
    fits = fit_reconstructions(z, n, PERIODS, ("pca",), seed=0)
    mean = z[train].mean(0)
    _, _, vt = np.linalg.svd(z[train] - mean, full_matrices=False)
    want = mean + (z - mean) @ vt[:5].T @ vt[:5]
    np.testing.assert_allclose(fits["pca"].reconstruct(n, z), want, atol=1e-8)


def test_patched_replace_and_subspace():
    rng = np.random.default_rng(2)
    n = np.repeat(np.arange(100), 3)
    x = _helix(n) @ rng.standard_normal((5, 10)) + 0.1 * rng.standard_normal((len(n), 10))
    rec = fit_reconstructions(x, n, PERIODS, ("helix",), pca_dim=10)["helix"]
    current = rng.standard_normal((7, 10))
    nums = rng.integers(0, 100, 7)
    target = rec.reconstruct(nums, current)
    np.testing.assert_array_equal(rec.patched(nums, current, current, "replace"), target)
    out = rec.patched(nums, current, current, "subspace")
    U = rec.span
    np.testing.assert_allclose(out @ U, target @ U, atol=1e-10)  # the span is the fit's
    rest = np.eye(10) - U @ U.T
    np.testing.assert_allclose(out @ rest, current @ rest, atol=1e-10)  # the rest is kept
    with pytest.raises(ValueError, match="mode"):
        rec.patched(nums, current, current, "other")
    with pytest.raises(ValueError, match="unknown method"):
        fit_reconstructions(x, n, PERIODS, ("sine",))
