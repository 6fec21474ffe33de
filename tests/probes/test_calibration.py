"""Null calibration of the mod-T probes (issue 13, part 2).

Features that carry no mod-T information must score kappa ~ 0 on average, and the interval
over numbers must cover 0 in at least 90% of seeds. Two kinds of null:

* a random vector per number plus noise (no structure at all);
* structured states whose neighbours look alike: clusters of ten consecutive numbers
  (e.g. "same leading digit") and a smooth magnitude trend on a low-rank, anisotropic
  background. Neither says anything about n mod T: every block of ten consecutive numbers
  holds each residue once, and a smooth trend has no power at periods 2..10. The null is
  therefore kappa = 0; a smooth trend could only give a nonzero kappa through components
  at the probed period, which it does not have.

Holding numbers out one at a time (``block=1``, how folds were dealt before) makes the
clusters score far below zero: the held-out number's residue is missing from its own
cluster in training, so the probe predicts the others. Blocks remove that.
"""

import numpy as np
import pytest

from probes.linear import mod_probes
from probes.stats import StatsConfig

PERIODS = (2, 5, 10)


def random_vectors(seed, n_numbers=300, dim=8, noise=0.3):
    rng = np.random.default_rng(seed)
    n = np.arange(n_numbers)
    return rng.standard_normal((n_numbers, dim))[n] + noise * rng.standard_normal(
        (n_numbers, dim)), n


def clusters(seed, n_numbers=100, dim=8):
    rng = np.random.default_rng(seed)
    n = np.repeat(np.arange(n_numbers), 2)
    x = 3 * rng.standard_normal((n_numbers // 10, dim))[n // 10]
    return x + 0.5 * rng.standard_normal((n_numbers, dim))[n] + 0.3 * rng.standard_normal(
        (len(n), dim)), n


def trend(seed, n_numbers=100, dim=16):
    """Magnitude a (a + noise) along one direction, on a rank-4 anisotropic background."""
    rng = np.random.default_rng(seed)
    n = np.repeat(np.arange(n_numbers), 2)
    scales = np.array([8.0, 4.0, 2.0, 1.0])
    background = (rng.standard_normal((len(n), 4)) * scales) @ rng.standard_normal((4, dim))
    return 5 * np.outer(n / n_numbers + 0.05 * rng.standard_normal(len(n)),
                        rng.standard_normal(dim)) + background, n


def run(make, seeds, intervals: bool = True, **kwargs):
    """Mean kappa per period and the share of intervals covering 0 (None without them)."""
    kappas, covered = {T: [] for T in PERIODS}, {T: [] for T in PERIODS}
    for s in seeds:
        x, n = make(s)
        stats = StatsConfig(n_boot=300, n_perm=0, seed=s) if intervals else \
            StatsConfig(n_boot=0, n_perm=0, n_refit=0, seed=s)  # a mean needs no refits
        for r in mod_probes(x, n, PERIODS, seed=s, pca_dim=16, stats=stats, **kwargs):
            kappas[r.period].append(r.kappa)
            if intervals:
                covered[r.period].append(r.kappa_ci_low <= 0 <= r.kappa_ci_high)
    return ({T: float(np.mean(v)) for T, v in kappas.items()},
            {T: float(np.mean(v)) for T, v in covered.items()} if intervals else None)


@pytest.mark.slow
def test_random_vector_per_number_scores_kappa_zero_with_calibrated_intervals():
    """Measured on 200 seeds (200 numbers): coverage 0.95, 0.96, 0.92 at T = 2, 5, 10;
    here 24 seeds, so each period's coverage is allowed 0.85 and their pool must reach 0.9."""
    mean, _ = run(random_vectors, range(100), intervals=False)
    for T in PERIODS:
        assert abs(mean[T]) <= 0.02, (T, mean)
    _, coverage = run(random_vectors, range(24))
    for T in PERIODS:
        assert coverage[T] >= 0.85, (T, coverage)
    assert np.mean(list(coverage.values())) >= 0.9, coverage


@pytest.mark.slow
@pytest.mark.parametrize("make", [clusters, trend])
def test_structured_states_without_mod_information_score_kappa_zero(make):
    mean, _ = run(make, range(40), intervals=False)  # 150 seeds: within 0.001 of 0
    for T in PERIODS:
        assert abs(mean[T]) <= 0.02, (T, mean)
    _, coverage = run(make, range(6))
    assert np.mean(list(coverage.values())) >= 0.9, coverage


def test_holding_out_single_numbers_biases_clustered_states_below_zero():
    mean, _ = run(clusters, range(4), intervals=False, block=1)
    assert mean[10] < -0.08 and mean[5] < -0.08  # worst possible at T = 10: -1/9
    mean, _ = run(clusters, range(4), intervals=False)
    assert mean[10] > -0.03 and mean[5] > -0.03
