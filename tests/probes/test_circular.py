"""Circular digit probes: a planted per-digit circle code is decoded, a random code is not."""

import numpy as np
import pytest

from probes.circular import (
    circle_targets,
    digit_at,
    digit_probes,
    fit_circular,
    nearest_digit,
)


def circle_code(n_numbers=400, repeats=2, dim=40, noise=0.3, seed=0, places=3):
    """States = one circle per digit place (cos, sin of 2 pi d / 10) in its own random plane,
    plus noise; numbers drawn from 0..999."""
    rng = np.random.default_rng(seed)
    n = np.repeat(rng.choice(1000, n_numbers, replace=False), repeats)
    planes = rng.standard_normal((places, 2, dim))
    x = sum(circle_targets(digit_at(n, p)) @ planes[p] for p in range(places))
    return x + noise * rng.standard_normal(x.shape), n


def test_helpers():
    assert digit_at([1234, 7], 1).tolist() == [3, 0]
    pts = circle_targets(np.arange(10))
    assert nearest_digit(pts).tolist() == list(range(10))
    assert nearest_digit(0.3 * pts + 0.01).tolist() == list(range(10))  # radius is free
    # half-way between 2 and 3 (angle 2.5 steps) is closer to 3 after a small push
    assert nearest_digit(circle_targets([2.6])).tolist() == [3]


def test_planted_circles_are_decoded_and_shuffles_sit_at_chance():
    x, n = circle_code()
    res = digit_probes(x, n, [0, 2], kinds=("circular", "linear"), pca_dim=16,
                       shuffled=True, n_shuffles=1)
    real = [r for r in res if not r.shuffled]
    base = [r for r in res if r.shuffled]
    assert [(r.place, r.kind) for r in real] == [(p, k) for p in (0, 2)
                                                 for k in ("circular", "linear")]
    assert all(r.accuracy > 0.97 for r in real)
    assert all(abs(r.accuracy - 0.1) < 0.06 for r in base)
    r = real[0]
    assert r.n_numbers == 400 and r.n_samples == 800 and r.n_folds == 5
    assert r.chance == pytest.approx(np.bincount(digit_at(n, 0)).max() / 800)
    # per-sample held-out predictions are kept: the accuracy is their mean
    assert r.accuracy == pytest.approx((r.predictions == r.labels).mean())
    uniq, acc = r.per_number()
    assert len(uniq) == 400 and np.average(acc, weights=np.bincount(
        np.unique(n, return_inverse=True)[1])) == pytest.approx(r.accuracy)


def test_a_random_code_is_not_decoded():
    rng = np.random.default_rng(1)
    n = np.repeat(rng.choice(1000, 400, replace=False), 2)
    code = {v: rng.standard_normal(40) for v in np.unique(n)}
    x = np.stack([code[v] for v in n]) + 0.05 * rng.standard_normal((len(n), 40))
    res = digit_probes(x, n, [0, 1], pca_dim=16)
    assert all(abs(r.accuracy - 0.1) < 0.06 for r in res)  # held-out numbers: chance


def test_value_probe_fails_on_units_where_circles_succeed():
    """A number line (value) plus per-digit circles: the value probe gets the hundreds
    digit more often than the units; the circular probe gets every place."""
    x, n = circle_code(noise=0.2)
    x = x + np.outer(n / 100.0, np.random.default_rng(3).standard_normal(x.shape[1]))
    res = {(r.kind, r.place): r for r in digit_probes(x, n, [0, 2], pca_dim=16)}
    assert res[("circular", 0)].accuracy > 0.95 and res[("circular", 2)].accuracy > 0.95
    assert res[("value", 0)].accuracy < 0.3 < res[("value", 2)].accuracy
    assert res[("value", 0)].r2 > 0.9  # the value is there; its units digit is not


def test_rotation_moves_the_decoded_digit_by_k_with_the_smallest_change():
    x, n = circle_code(noise=0.1)
    probe = fit_circular(x, n, 1, pca_dim=16)
    d = digit_at(n, 1)
    assert (probe.decode(x) == d).mean() > 0.99
    for k in (1, 3, 7):
        delta = probe.rotation(x, k)
        assert (probe.decode(x + delta) == (d + k) % 10).mean() > 0.99
        # minimum norm: delta lies in the row space of the probe's 2 x D weight
        proj = delta @ np.linalg.pinv(probe.weight) @ probe.weight
        np.testing.assert_allclose(proj, delta, atol=1e-9)
