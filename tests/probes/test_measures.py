import numpy as np
import pytest

from probes import (
    FourierBasis,
    cos_sin_norms,
    fcr,
    ffd,
    gini,
    key_frequencies,
    max_normalized_power,
)


def test_gini_known_values():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    one_hot = np.zeros(10)
    one_hot[3] = 5.0
    assert gini(one_hot) == pytest.approx(1 - 1 / 10)  # Hurley-Rickard: 1 - 1/N
    # [0, 1]: 1 - 2 * (1 * (2 - 2 + 0.5) / 2) = 0.5
    assert gini([0.0, 1.0]) == pytest.approx(0.5)
    by_hand = 1 - 2 * (1 / 6 * 2.5 / 3 + 2 / 6 * 1.5 / 3 + 3 / 6 * 0.5 / 3)
    assert gini([1, 2, 3]) == pytest.approx(by_hand)


def test_ffd_and_fcr_by_hand():
    cos = np.array([1.0, 0.1, 0.6, 0.0])
    sin = np.array([0.5, 0.2, 0.0, 0.0])
    assert ffd(cos, sin, eta=0.5) == pytest.approx(2 / 4)  # components 1 and 3 exceed 0.5
    # ratios: 0.5, 0.5, 0 (one-sided), skip (both zero)
    assert fcr(cos, sin) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    # rounding noise (1e-17) is zero, not a random ratio
    assert fcr([1.0, 1e-17], [1.0, 3e-17]) == pytest.approx(1.0)


def test_cos_sin_norms_of_pure_waves():
    p = 97
    basis = FourierBasis(p, "dft")
    x = np.arange(p)
    emb = np.stack([np.cos(2 * np.pi * 5 * x / p), np.sin(2 * np.pi * 5 * x / p)], axis=1)
    c, s = cos_sin_norms(emb, basis)
    assert np.argmax(c) + 1 == 5 and np.argmax(s) + 1 == 5
    assert fcr(c[4:5], s[4:5]) == pytest.approx(1.0)
    assert ffd(c, s) == pytest.approx(1 / 48)


def test_max_normalized_power_per_neuron():
    p = 23
    basis = FourierBasis(p, "dft")
    x = np.arange(p)
    pure = np.cos(2 * np.pi * 3 * x / p + 0.4)
    mixed = np.cos(2 * np.pi * 2 * x / p) + np.cos(2 * np.pi * 7 * x / p)
    share, ks = max_normalized_power(np.stack([pure, mixed]), basis)
    assert share[0] == pytest.approx(1.0) and ks[0] == 3
    assert share[1] == pytest.approx(0.5) and ks[1] in (2, 7)


def test_key_frequencies():
    energy = np.full(56, 0.1)
    energy[[13, 41, 47]] = [40, 30, 20]
    assert key_frequencies(energy) == [14, 42, 48]
    assert key_frequencies(energy, max_count=2) == [14, 42]
    assert key_frequencies(np.zeros(5)) == []
