import numpy as np
import pytest

from probes import FourierBasis, low_high_energy, spectrum


def planted(seed, periods=(2, 2.5, 5, 10), p=521, d=64):
    rng = np.random.default_rng(seed)
    x = np.arange(p)[:, None]
    emb = 0.3 * np.cumsum(rng.standard_normal((p, d)), axis=0)  # smooth low-frequency part
    emb += 0.5 * rng.standard_normal((p, d))
    for t in periods:
        emb += rng.uniform(0.5, 1.5, d) * np.cos(2 * np.pi * x / t + rng.uniform(0, 6.3, d))
    return emb


@pytest.mark.parametrize("seed", range(1, 6))
def test_planted_periods_are_found(seed):
    spec = spectrum(planted(seed), FourierBasis(521), axis=0)
    found = spec.outliers()
    assert {o.k for o in found} == {52, 104, 208, 260}
    assert sorted(o.period for o in found) == [2, 2.5, 5, 10]
    assert found == sorted(found, key=lambda o: -o.magnitude)


@pytest.mark.parametrize("seed", range(5))
def test_noise_has_no_outliers(seed):
    rng = np.random.default_rng(100 + seed)
    basis = FourierBasis(521)
    assert spectrum(rng.standard_normal((521, 64)), basis, axis=0).outliers() == []
    assert spectrum(rng.standard_normal(521), basis).outliers() == []


def test_top_and_min_k_restrict():
    spec = spectrum(planted(1), FourierBasis(521), axis=0)
    assert len(spec.outliers(top=2)) == 2
    assert {o.k for o in spec.outliers(min_k=150)} == {208, 260}


def test_low_high_energy_split():
    basis = FourierBasis(101, "dft")
    x = np.arange(101)
    sig = 3 * np.cos(2 * np.pi * 4 * x / 101) + 1 * np.sin(2 * np.pi * 30 * x / 101)
    res = low_high_energy(spectrum(sig, basis), tau=10)
    assert res["low_fraction"] == pytest.approx(9 / 10)
    assert res["high_fraction"] == pytest.approx(1 / 10)
