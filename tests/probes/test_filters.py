import numpy as np
import pytest
import torch

from probes import FourierBasis, component_magnitudes, high_pass, keep_only, low_pass
from probes.filters import choose_tau, remove_components, tau_window


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    p, d = 41, 96  # D > p so every component is reachable from the residual space
    return FourierBasis(p, "dft"), rng.standard_normal((p, d)), rng.standard_normal((20, d))


def test_projection_is_idempotent_and_symmetric(setup):
    basis, W, _ = setup
    f = low_pass(W, basis, tau=5)
    P = f.matrix()
    np.testing.assert_allclose(P @ P, P, atol=1e-10)
    np.testing.assert_allclose(P, P.T, atol=1e-12)
    np.testing.assert_allclose(f(f(np.eye(W.shape[1]))), f(np.eye(W.shape[1])), atol=1e-10)


def test_removes_exactly_the_selected_components(setup):
    basis, W, X = setup
    ks = [3, 7, 11]
    f = remove_components(W, basis, ks)
    after = component_magnitudes(f(X) @ W.T, basis)
    np.testing.assert_allclose(after[:, ks], 0, atol=1e-9)
    # Def. A.6 is the least-norm change: x - F(x) lies in the row space of (F W)[selected]
    A = basis.matrix[basis.rows_of(ks)] @ W
    delta = X - f(X)
    coef, *_ = np.linalg.lstsq(A.T, delta.T, rcond=None)
    np.testing.assert_allclose(A.T @ coef, delta.T, atol=1e-9)


def test_other_components_untouched_when_readout_rows_are_orthogonal():
    rng = np.random.default_rng(3)
    basis = FourierBasis(41, "dft")
    Q, _ = np.linalg.qr(rng.standard_normal((96, 41)))  # orthonormal columns
    W = basis.matrix.T @ Q.T  # F W = Q^T: orthonormal Fourier rows in D space
    X = rng.standard_normal((10, 96))
    ks = [2, 9]
    before = component_magnitudes(X @ W.T, basis)
    after = component_magnitudes(remove_components(W, basis, ks)(X) @ W.T, basis)
    others = [k for k in range(basis.n_components + 1) if k not in ks]
    np.testing.assert_allclose(after[:, ks], 0, atol=1e-9)
    np.testing.assert_allclose(after[:, others], before[:, others], atol=1e-9)


def test_low_and_high_pass_remove_the_right_side(setup):
    basis, W, X = setup
    tau = 6
    lo = component_magnitudes(low_pass(W, basis, tau)(X) @ W.T, basis)
    hi = component_magnitudes(high_pass(W, basis, tau)(X) @ W.T, basis)
    np.testing.assert_allclose(lo[:, tau:], 0, atol=1e-9)
    assert np.all(lo[:, 1:tau] > 1e-3)
    np.testing.assert_allclose(hi[:, 1:tau], 0, atol=1e-9)
    assert np.all(hi[:, tau:] > 1e-3)


def test_empty_selection_is_identity(setup):
    basis, W, X = setup
    f = remove_components(W, basis, [])
    assert f.rank == 0
    assert f(X) is X
    t = torch.tensor(X, dtype=torch.float32)
    assert torch.equal(f(t), t)


def test_keep_only_and_all_nonconstant_removed(setup):
    basis, W, X = setup
    after = component_magnitudes(keep_only(W, basis, [5])(X) @ W.T, basis)
    np.testing.assert_allclose(np.delete(after, [0, 5], axis=1), 0, atol=1e-9)
    const = keep_only(W, basis, [])(X) @ W.T  # every non-constant component gone
    np.testing.assert_allclose(const - const.mean(axis=1, keepdims=True), 0, atol=1e-9)


def test_torch_apply_matches_numpy_and_keeps_dtype(setup):
    basis, W, X = setup
    f = high_pass(W, basis, 4)
    t = torch.tensor(X, dtype=torch.bfloat16)
    out = f(t)
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().numpy(), f(t.double().numpy()), atol=0.1)
    np.testing.assert_allclose(f(torch.tensor(X)).numpy(), f(X), atol=1e-12)


def test_knockout_flag_and_the_tau_window_match_brute_force():
    """The demo's setting (width 64, p = 101, tau = 10): "high removed" spans the width."""
    W = np.random.default_rng(7).standard_normal((101, 64))
    basis = FourierBasis(101)
    high_removed, low_removed = low_pass(W, basis, 10), high_pass(W, basis, 10)
    assert high_removed.knockout and high_removed.rank == 64
    np.testing.assert_allclose(high_removed(np.eye(64)), 0, atol=1e-9)  # zeroes everything
    assert not low_removed.knockout and low_removed.rank == 18  # 2 rows x k = 1..9
    assert high_removed.summary() == {"name": "low_pass", "rank": 64, "width": 64,
                                      "knockout": True, "removed": 41}
    ok = [t for t in range(1, 51)
          if not low_pass(W, basis, t).knockout and not high_pass(W, basis, t).knockout]
    assert tau_window(W, basis) == (ok[0], ok[-1]) == (19, 32)  # k >= 19: 63 nonzero rows
    assert ok == list(range(ok[0], ok[-1] + 1))
    assert choose_tau(W, basis, preferred=10) == 19
    assert choose_tau(W, basis, preferred=25) == 25
    assert choose_tau(W, basis, preferred=50) == 32
    # a width above the rows never knocks out; a tiny width always does
    assert tau_window(np.random.default_rng(0).standard_normal((41, 96)), FourierBasis(41)) \
        == (1, 20)
    assert tau_window(np.random.default_rng(0).standard_normal((41, 2)), FourierBasis(41)) \
        is None
