import numpy as np
import pytest

from probes import FourierBasis, Spectrum, low_high_energy, spectrum


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


def test_peaks_are_the_largest_local_maxima_at_or_above_tau_never_k1():
    basis = FourierBasis(101, "dft")
    mag = np.full(51, 1.0)
    mag[1] = 50.0  # the period-p trend: huge, never a peak
    mag[[10, 11]] = [8.0, 5.0]  # a spike leaking into k + 1: listed once
    mag[[30, 40, 45]] = [3.0, 6.0, 2.0]
    spec = Spectrum(basis, mag)
    assert [o.k for o in spec.peaks(min_k=2, top=3)] == [10, 40, 30]
    assert [o.k for o in spec.peaks(min_k=2, top=None)] == [10, 40, 30, 45]
    assert [o.k for o in spec.peaks(min_k=20, top=2)] == [40, 30]
    assert spec.peaks(min_k=1)[0].k == 10  # min_k is raised to 2
    assert spec.peaks(min_k=2)[0].period == pytest.approx(101 / 10)
    # the robust rule, by contrast, flags the trend at k = 1
    assert 1 in {o.k for o in spec.outliers()}


def test_low_high_of_mean_magnitude_and_of_mean_energy_differ_as_computed_by_hand():
    basis = FourierBasis(41, "dft")
    x = np.arange(41)
    # two prompts: one all low (k = 2, amplitude 2), one all high (k = 15, amplitude 2)
    logits = np.stack([2 * np.cos(2 * np.pi * 2 * x / 41),
                       2 * np.cos(2 * np.pi * 15 * x / 41)])
    spec = spectrum(logits, basis, pool="mean")
    res = spec.low_high(tau=10)
    c = 2 * np.sqrt(41 / 2)  # |coefficient| of 2 cos on the orthonormal DFT row
    # mean magnitude: c/2 at k = 2 and at k = 15 -> squared: c^2/4 each
    assert res["low_energy"] == pytest.approx(c**2 / 4)
    assert res["low_fraction"] == pytest.approx(0.5)
    # mean energy per prompt: c^2/2 at each -> also half, but twice the energy
    assert res["low_mean_energy"] == pytest.approx(c**2 / 2)
    assert res["low_fraction_mean_energy"] == pytest.approx(0.5)
    # a component present in one prompt of four weighs (1/4)^2 in the squared mean
    # magnitude but 1/4 in the mean energy
    low, high = 2 * np.cos(2 * np.pi * 2 * x / 41), 2 * np.cos(2 * np.pi * 15 * x / 41)
    four = np.stack([low, low, low, high])
    res = spectrum(four, basis, pool="mean").low_high(tau=10)
    assert res["low_fraction"] == pytest.approx(9 / 10)  # (3/4)^2 : (1/4)^2
    assert res["low_fraction_mean_energy"] == pytest.approx(3 / 4)
    assert "low_mean_energy" not in spectrum(logits.T, basis, axis=0).low_high(10)  # pool l2
