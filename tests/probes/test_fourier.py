import numpy as np
import pytest
import torch

from probes import FourierBasis, coefficients, component_magnitudes, spectrum


@pytest.mark.parametrize("p", [7, 8, 113, 521])
def test_dft_basis_is_orthonormal(p):
    F = FourierBasis(p, "dft").matrix
    nonzero = np.linalg.norm(F, axis=1) > 0
    G = F[nonzero] @ F[nonzero].T
    np.testing.assert_allclose(G, np.eye(G.shape[0]), atol=1e-10)
    assert nonzero.sum() == p  # complete over p points


@pytest.mark.parametrize("p", [7, 113, 521])
def test_dft_magnitudes_match_numpy_fft(p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, p))
    basis = FourierBasis(p, "dft")
    mag = component_magnitudes(x, basis)
    fft = np.fft.rfft(x, axis=-1)
    # orthonormal real DFT: |c_k| = sqrt(2/p) |X_k| for 0 < k < p/2, |c_0| = |X_0| / sqrt(p)
    np.testing.assert_allclose(mag[:, 0], np.abs(fft[:, 0]) / np.sqrt(p), rtol=1e-10)
    expected = np.sqrt(2 / p) * np.abs(fft[:, 1 : basis.n_components + 1])
    np.testing.assert_allclose(mag[:, 1:], expected, rtol=1e-10)


def test_paper_basis_rows_match_definition():
    """Def. A.3 as written: constant sqrt(1/(p-1)), cos/sin rows sqrt(2/(p-1)) cos/sin(w x)."""
    p = 521
    basis = FourierBasis(p, "paper")
    assert basis.n_components == 260
    assert basis.matrix.shape == (521, 521)
    x = np.arange(p)
    k = 37
    w = 2 * np.pi * k / (p - 1)
    np.testing.assert_allclose(basis.matrix[0], np.full(p, np.sqrt(1 / (p - 1))))
    np.testing.assert_allclose(basis.matrix[basis.sin_rows[k - 1]],
                               np.sqrt(2 / (p - 1)) * np.sin(w * x))
    np.testing.assert_allclose(basis.matrix[basis.cos_rows[k - 1]],
                               np.sqrt(2 / (p - 1)) * np.cos(w * x))
    assert np.all(basis.matrix[basis.sin_rows[-1]] == 0)  # sin(pi x) vanishes
    # on the p - 1 points of its own period the paper basis is orthonormal
    F = basis.matrix[:, : p - 1]
    F = F[np.linalg.norm(F, axis=1) > 0]
    G = F @ F.T
    np.testing.assert_allclose(G[:-1, :-1], np.eye(len(G) - 1), atol=1e-10)
    assert G[-1, -1] == pytest.approx(2)  # except (-1)^x, which has norm 2 on them


def test_unit_basis_is_the_paper_rows_at_unit_norm():
    p = 101
    paper, unit = FourierBasis(p, "paper").matrix, FourierBasis(p, "unit").matrix
    norms = np.linalg.norm(paper, axis=1)
    nonzero = norms > 0
    np.testing.assert_allclose(unit[nonzero], paper[nonzero] / norms[nonzero, None])
    np.testing.assert_allclose(np.linalg.norm(unit[nonzero], axis=1), 1)
    assert FourierBasis(p, "unit").periods.tolist() == FourierBasis(p, "paper").periods.tolist()


@pytest.mark.parametrize("p", [11, 521])
def test_period_two_component_against_a_hand_computation(p):
    """The paper's coefficient of (-1)^x on component K = (p-1)/2 is sqrt(2/(p-1)) * p, that
    of cos(w_1 x) on k = 1 is sqrt(2/(p-1)) * sum cos^2 = sqrt(2/(p-1)) * (p + 1) / 2 (the
    sum of cos(2 w_1 x) over 0..p-1 is 1); unit rows give sqrt(p) and sqrt((p + 1) / 2)."""
    x = np.arange(p)
    K = (p - 1) // 2
    period2, period_p1 = (-1.0) ** x, np.cos(2 * np.pi * x / (p - 1))
    mag = {kind: (component_magnitudes(period2, FourierBasis(p, kind))[K],
                  component_magnitudes(period_p1, FourierBasis(p, kind))[1])
           for kind in ("paper", "unit")}
    s = np.sqrt(2 / (p - 1))
    assert mag["paper"] == pytest.approx((s * p, s * (p + 1) / 2))
    assert mag["unit"] == pytest.approx((np.sqrt(p), np.sqrt((p + 1) / 2)))
    # relative to the k = 1 component, period 2 is sqrt(2p/(p+1)) larger in the paper's
    # basis than with unit rows: 1.413 for p = 521, the "1.42x" of the issue
    ratio = (mag["paper"][0] / mag["paper"][1]) / (mag["unit"][0] / mag["unit"][1])
    assert ratio == pytest.approx(np.sqrt(2 * p / (p + 1)))
    if p == 521:
        assert ratio == pytest.approx(1.4129, abs=1e-3)


def test_period_ten_cosine_lands_on_k52():
    basis = FourierBasis(521)
    x = np.cos(2 * np.pi * np.arange(521) / 10)
    mag = component_magnitudes(x, basis)
    assert int(np.argmax(mag[1:])) + 1 == 52
    assert {basis.k_of_period(t) for t in (10, 5, 2.5, 2)} == {52, 104, 208, 260}
    np.testing.assert_allclose(basis.period(np.array([52, 104, 208, 260])), [10, 5, 2.5, 2])


def test_torch_and_numpy_agree_on_any_axis():
    basis = FourierBasis(31, "dft")
    x = np.random.default_rng(1).standard_normal((31, 5))
    np_c = coefficients(x, basis, axis=0)
    t_c = coefficients(torch.tensor(x), basis, axis=0)
    np.testing.assert_allclose(t_c.numpy(), np_c, atol=1e-12)
    t_mag = component_magnitudes(torch.tensor(x, dtype=torch.float32), basis, axis=0)
    np.testing.assert_allclose(t_mag.numpy(), component_magnitudes(x, basis, axis=0), atol=1e-5)


def test_spectrum_pooling_and_records():
    basis = FourierBasis(11, "dft")
    x = np.random.default_rng(2).standard_normal((11, 4))
    mag = component_magnitudes(x, basis, axis=0)  # (6, 4)
    np.testing.assert_allclose(spectrum(x, basis, axis=0).magnitude, np.sqrt((mag**2).sum(1)))
    np.testing.assert_allclose(spectrum(x.T, basis, pool="mean").magnitude, mag.mean(1))
    recs = spectrum(x, basis, axis=0).records()
    assert [r["k"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0]["period"] == pytest.approx(11.0)


def test_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="p=11"):
        coefficients(np.zeros(10), FourierBasis(11))
