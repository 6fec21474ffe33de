"""Bootstrap over numbers and permutation p-values, checked against plain loops."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from probes.stats import (
    StatsConfig,
    bootstrap_weights,
    classification_estimates,
    interval,
    kappa_from_confusion,
    match_estimate,
    p_value,
    permutations,
    r2_estimate,
)


def rows_of(weights, numbers):
    """Row indices of a bootstrap sample: number u's rows repeated weights[u] times."""
    uniq = np.unique(numbers)
    return np.concatenate([np.repeat(np.flatnonzero(numbers == u), int(w))
                           for u, w in zip(uniq, weights)])


def test_weighted_kappa_equals_kappa_of_the_resampled_rows():
    rng = np.random.default_rng(0)
    n = np.repeat(np.arange(30), rng.integers(1, 5, 30))
    y = n % 5
    pred = np.where(rng.random(len(n)) < 0.6, y, rng.integers(0, 5, len(n)))
    counts = np.zeros((30, 5))
    np.add.at(counts, (n, pred), 1.0)
    onehot = np.eye(5)[np.arange(30) % 5]
    for w in bootstrap_weights(30, 5, rng):
        idx = rows_of(w, n)
        conf = np.einsum("n,nc,nt->ct", w, onehot, counts)
        assert float(kappa_from_confusion(conf)) == pytest.approx(
            cohen_kappa_score(y[idx], pred[idx]), abs=1e-12)
    est = classification_estimates(y, pred, n, 5, StatsConfig(n_boot=200, n_perm=200))
    assert est["kappa"].value == pytest.approx(cohen_kappa_score(y, pred), abs=1e-12)
    assert est["accuracy"].value == pytest.approx(np.mean(y == pred))
    assert est["kappa"].ci_low < est["kappa"].value < est["kappa"].ci_high
    assert est["kappa"].p_value == pytest.approx(1 / 201)  # far better than any permutation
    assert est["kappa"].n_numbers == 30 and est["kappa"].inflation == 1.0


def test_permutation_null_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    n = np.repeat(np.arange(20), 3)
    y, pred = n % 2, rng.integers(0, 2, 60)
    cfg = StatsConfig(n_boot=0, n_perm=50, seed=4)
    est = classification_estimates(y, pred, n, 2, cfg)
    # the same permutations, applied by hand: number i takes the label of number perm[i]
    perms = permutations(20, 50, np.random.default_rng(4))
    label = np.arange(20) % 2
    null = [cohen_kappa_score(label[p][n], pred) for p in perms]
    assert est["kappa"].p_value == pytest.approx(p_value(cohen_kappa_score(y, pred), null))
    assert np.isnan(est["kappa"].ci_low)  # no bootstrap asked for
    assert p_value(0.5, np.array([0.1, 0.5, 0.7])) == pytest.approx(3 / 4)
    assert p_value(0.5, np.array([])) is None


def test_refit_spread_widens_the_interval_and_the_null():
    rng = np.random.default_rng(2)
    n = np.repeat(np.arange(40), 2)
    y = n % 2
    pred = np.where(rng.random(80) < 0.3, y, rng.integers(0, 2, 80))  # kappa above chance
    cfg = StatsConfig(n_boot=300, n_perm=500, seed=1)  # >= 400: the same draws either way
    plain = classification_estimates(y, pred, n, 2, cfg)["kappa"]
    wide = classification_estimates(y, pred, n, 2, cfg, refit_kappas=[-0.6, 0.6, 0.0])["kappa"]
    assert wide.inflation > 2
    assert wide.ci_low == pytest.approx(wide.value - wide.inflation * (wide.value - plain.ci_low))
    assert wide.ci_high == pytest.approx(wide.value + wide.inflation * (plain.ci_high - wide.value))
    assert wide.value > 0.1 and wide.p_value > plain.p_value  # a wider null
    # a refit spread below the fixed-prediction spread never narrows the interval
    same = classification_estimates(y, pred, n, 2, cfg, refit_kappas=[0.0, 0.001, 0.0])
    assert same["kappa"].inflation == 1.0


def test_r2_and_decode_estimates_match_plain_computations():
    rng = np.random.default_rng(3)
    n = np.repeat(np.arange(12), 3)
    points = rng.standard_normal((12, 4))
    z = points[n] + 0.3 * rng.standard_normal((36, 4))
    fitted = points[n] * 0.9
    r2 = lambda zz, ff: 1 - ((zz - ff) ** 2).sum() / ((zz - zz.mean(0)) ** 2).sum()  # noqa: E731
    cfg = StatsConfig(n_boot=0, n_perm=40, seed=7)
    est = r2_estimate(z, fitted, n, cfg)
    assert est.value == pytest.approx(r2(z, fitted))
    perms = permutations(12, 40, np.random.default_rng(7))
    null = [r2(z, (points * 0.9)[p][n]) for p in perms]
    assert est.p_value == pytest.approx(p_value(est.value, null))
    w = bootstrap_weights(12, 1, rng)[0]
    idx = rows_of(w, n)
    weighted = r2_estimate(z, fitted, n, StatsConfig(n_boot=0, n_perm=0))
    assert weighted.value == pytest.approx(r2(z, fitted))
    from probes.stats import _group  # the weighted statistic itself, against the rows
    _, inv = _group(n)
    sq = np.bincount(inv, weights=(z**2).sum(1))
    zsum = np.zeros((12, 4))
    np.add.at(zsum, inv, z)
    sse = np.bincount(inv, weights=((z - fitted) ** 2).sum(1))
    sst = w @ sq - ((w @ zsum) ** 2).sum() / (w @ np.bincount(inv))
    assert 1 - (w @ sse) / sst == pytest.approx(r2(z[idx], fitted[idx]))
    decoded = np.where(rng.random(36) < 0.5, n, (n + 1) % 12)
    m = match_estimate(decoded, n, cfg)
    assert m.value == pytest.approx(np.mean(decoded == n))
    null = [np.mean(decoded == np.arange(12)[p][n]) for p in perms]
    assert m.p_value == pytest.approx(p_value(m.value, null))


def test_bca_and_percentile_intervals_of_a_mean():
    x = np.random.default_rng(5).standard_normal(200) + 1.0
    stat = lambda w: (w @ x) / w.sum(1)  # noqa: E731
    se = x.std(ddof=1) / np.sqrt(len(x))
    for method in ("percentile", "bca"):
        cfg = StatsConfig(n_boot=4000, method=method, seed=0)
        low, high = interval(stat, len(x), cfg, np.random.default_rng(0))
        assert low == pytest.approx(x.mean() - 1.96 * se, abs=0.2 * se)
        assert high == pytest.approx(x.mean() + 1.96 * se, abs=0.2 * se)
    with pytest.raises(ValueError, match="method"):
        StatsConfig(method="t")
