"""Linear probes on synthetic states with known helices: periods, phases, baselines."""

import numpy as np
import pytest

from probes.folds import balanced_weights, fold_blocks, remove_group_means
from probes.linear import (
    fit_helix,
    fourier_vs_decodable,
    helix_features,
    mod_probe,
    mod_probes,
    number_folds,
    per_number_means,
    period_scan,
    split_numbers,
)
from probes.stats import StatsConfig

P10, P5 = 0.7, -1.9  # planted phases
A10, A5, ALIN = 2.0, 1.5, 3.0


def helix_states(n_numbers=200, repeats=3, dim=32, noise=0.05, seed=0, cos_only=False):
    """Latent dims: 0 linear, 1-2 a period-10 circle, 3 a period-5 line; rotated into R^dim."""
    rng = np.random.default_rng(seed)
    n = np.repeat(np.arange(n_numbers), repeats)
    lat = np.zeros((len(n), dim))
    t10, t5 = 2 * np.pi * n / 10 + P10, 2 * np.pi * n / 5 + P5
    if cos_only:
        lat[:, 1] = A10 * np.cos(2 * np.pi * n / 10)
    else:
        lat[:, 0] = ALIN * n / n_numbers
        lat[:, 1], lat[:, 2] = A10 * np.cos(t10), A10 * np.sin(t10)
        lat[:, 3] = A5 * np.cos(t5)
    lat += noise * rng.standard_normal(lat.shape)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return lat @ q.T, n, q


def wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def test_helix_recovers_periods_phases_and_amplitudes():
    x, n, q = helix_states()
    fit = fit_helix(x, n, (10, 5), pca_dim=8)
    assert fit.r2_test > 0.95 and fit.r2_train > 0.95
    # phases along the planted directions (independent: the generator's phases)
    assert abs(wrap(fit.circle(10, q[:, 1])["phase"] - P10)) < 0.05
    assert abs(wrap(fit.circle(10, q[:, 2])["phase"] - (P10 - np.pi / 2))) < 0.05
    assert abs(wrap(fit.circle(5, q[:, 3])["phase"] - P5)) < 0.05
    c10, c5 = fit.circle(10), fit.circle(5)
    assert c10["amplitude"] == pytest.approx(A10, rel=0.05) and c10["circularity"] > 0.9
    assert c5["amplitude"] == pytest.approx(A5, rel=0.05) and c5["circularity"] < 0.1
    # dropping a true period costs R^2; the fit decodes held-out numbers
    assert fit.r2_without[10.0] < fit.r2_test - 0.3 and fit.r2_without[5.0] < fit.r2_test - 0.1
    assert fit.decode_accuracy > 0.8
    # the fitted model-space states match the generator's noiseless ones
    lat = np.zeros((3, 32))
    m = np.array([3, 50, 177])
    lat[:, 0] = ALIN * m / 200
    lat[:, 1], lat[:, 2] = A10 * np.cos(2 * np.pi * m / 10 + P10), A10 * np.sin(
        2 * np.pi * m / 10 + P10)
    lat[:, 3] = A5 * np.cos(2 * np.pi * m / 5 + P5)
    np.testing.assert_allclose(fit.predict(m), lat @ q.T, atol=0.05)


def test_wrong_periods_explain_little_and_scan_finds_the_right_ones():
    x, n, _ = helix_states()
    assert fit_helix(x, n, (3, 7), pca_dim=8, linear=False).r2_test < 0.05
    scan = period_scan(x, n, [2, 3, 4, 5, 6, 7, 8, 9, 10, 12], pca_dim=8)
    top = sorted(scan, key=lambda r: -r["r2_test"])[:2]
    assert {r["period"] for r in top} == {5.0, 10.0}


def test_shuffled_helix_baseline_explains_nothing():
    x, n, _ = helix_states()
    fit = fit_helix(x, n, (10, 5), pca_dim=8, shuffle=True)
    assert fit.shuffled and fit.r2_test < 0.1
    assert fit.decode_accuracy < 0.05


def test_directions_span_the_planted_circle_only():
    x, n, q = helix_states()
    d = fit_helix(x, n, (10, 5), pca_dim=8).directions([10])
    assert d.shape == (32, 2)
    np.testing.assert_allclose(d.T @ d, np.eye(2), atol=1e-10)
    inside = lambda v: np.linalg.norm(d.T @ v)  # noqa: E731
    assert inside(q[:, 1]) > 0.99 and inside(q[:, 2]) > 0.99
    assert inside(q[:, 3]) < 0.05 and inside(q[:, 0]) < 0.05


def test_mod_probe_decodes_linear_mod_t_and_shuffled_sits_at_chance():
    x, n, _ = helix_states()
    r = mod_probe(x, n, 10, pca_dim=8)
    assert r.kappa > 0.95 and r.accuracy > 0.95
    assert r.chance_accuracy == pytest.approx(0.1)  # the majority class
    s = mod_probe(x, n, 10, pca_dim=8, shuffle=True)
    assert abs(s.kappa) < 0.12 and s.shuffled and 0 < s.kappa_std < 0.1  # over 5 shuffles
    # n mod 5 pairs antipodal points of the period-10 circle, which no linear probe
    # separates, and period 5 is a line: Fourier features, yet kappa well below 1
    assert mod_probe(x, n, 5, pca_dim=8).kappa < 0.7


def test_mod_probe_never_tests_on_a_number_it_trained_on():
    # one-hot of the number: memorisable, but no mod structure; grouped CV must be at chance
    n = np.repeat(np.arange(60), 4)
    x = np.eye(60)[n] + 0.01 * np.random.default_rng(0).standard_normal((240, 60))
    assert abs(mod_probe(x, n, 5, pca_dim=None).kappa) < 0.15


def test_cos_only_state_is_fourier_sparse_but_not_decodable():
    # cos(2 pi n/10) maps r and 10 - r to the same point: best accuracy 6/10, kappa 5/9
    x, n, _ = helix_states(n_numbers=100, repeats=2, dim=8, noise=0.02, cos_only=True)
    report = fourier_vs_decodable(x, n, 10, pca_dim=4)
    assert report["spike"] and report["k"] == 10
    assert 0.3 < report["kappa"] < 0.65 and not report["decodable"]
    assert report["verdict"] == "Fourier spike but NOT linearly decodable"
    x, n, _ = helix_states(n_numbers=100, repeats=2, dim=8, noise=0.02)
    full = fourier_vs_decodable(x, n, 10, pca_dim=4)
    assert full["spike"] and full["decodable"]


def test_helpers():
    f = helix_features([0, 5], [10], linear=True, scale=5.0)
    np.testing.assert_allclose(f, [[0, 1, 0], [1, -1, 0]], atol=1e-12)
    mask = split_numbers(np.repeat(np.arange(10), 2), 0.3, seed=1)
    held = np.unique(np.repeat(np.arange(10), 2)[mask])
    assert len(held) == 3 and mask.sum() == 6
    uniq, means = per_number_means(np.array([[1.0], [3.0], [5.0]]), [2, 2, 0])
    np.testing.assert_allclose(means[:, 0], [5.0, 2.0])
    assert uniq.tolist() == [0, 2]
    with pytest.raises(ValueError):
        mod_probe(np.zeros((4, 2)), [0, 0, 0, 0], 2)


def test_folds_hold_out_whole_blocks_dealt_evenly():
    n = np.repeat(np.arange(100), 2)
    fold = number_folds(n, 5, seed=3, block=10)
    for b in range(10):  # every block of 10 consecutive numbers sits in one fold
        assert len(set(fold[n // 10 == b])) == 1
    assert np.bincount(fold).tolist() == [40] * 5  # two blocks per fold
    counts = np.array([[np.sum((fold == f) & (n % 10 == r)) for r in range(10)]
                       for f in range(5)])
    assert counts.max() == counts.min() == 4  # every residue mod 10 alike in every fold
    assert len(np.unique(number_folds(n, 5, seed=3, block=40))) == 3  # 3 blocks, 3 folds
    with pytest.raises(ValueError, match="two blocks"):
        number_folds(np.arange(10), 5, block=10)
    assert number_folds(n, 5, block=10).tolist() == ((n // 10) % 5).tolist()  # in turn
    assert fold_blocks(n, [2, 5, 10]) == {10: [2, 5, 10]}  # lcm: one design, one PCA
    assert fold_blocks(np.arange(40), [2, 7]) == {2: [2], 7: [7]}  # lcm 14: < 5 blocks
    assert fold_blocks(n, [2, 5], block=20) == {20: [2, 5]}


def test_balanced_weights_give_each_number_and_class_the_same_weight():
    n = np.array([0, 0, 0, 1, 2, 2, 3, 4])  # classes mod 2: {0, 2, 4} and {1, 3}
    w = balanced_weights(n, n % 2)
    per_number = np.array([w[n == u].sum() for u in range(5)])
    assert w.mean() == pytest.approx(1.0)
    assert per_number[0] == pytest.approx(per_number[2]) == pytest.approx(per_number[4])
    assert per_number[[0, 2, 4]].sum() == pytest.approx(per_number[[1, 3]].sum())


def test_group_means_use_training_rows_only():
    rng = np.random.default_rng(0)
    x_tr, x_te = rng.standard_normal((6, 3)), rng.standard_normal((3, 3))
    g_tr, g_te = np.array([1, 1, 2, 2, 2, 5]), np.array([2, 7, 1])
    a, b = remove_group_means(x_tr, g_tr, x_te, g_te)
    for g in (1, 2, 5):  # a plain loop
        np.testing.assert_allclose(a[g_tr == g], x_tr[g_tr == g] - x_tr[g_tr == g].mean(0))
    np.testing.assert_allclose(b[0], x_te[0] - x_tr[g_tr == 2].mean(0))
    np.testing.assert_allclose(b[1], x_te[1] - x_tr.mean(0))  # unseen group: grand mean
    np.testing.assert_allclose(b[2], x_te[2] - x_tr[g_tr == 1].mean(0))


def test_token_identity_control_removes_what_the_token_says_and_keeps_the_rest():
    """States = one vector per last digit (what a digit token gives) + a period-3 circle:
    mod 10 is decodable, but only through the digit; regressing the digit out leaves
    kappa ~ 0 for mod 10 and keeps mod 3."""
    rng = np.random.default_rng(0)
    n = np.repeat(np.arange(120), 2)
    digit = rng.standard_normal((10, 16))
    x = 2 * digit[n % 10] + 0.1 * rng.standard_normal((240, 16))
    x[:, :2] += 2 * np.stack([np.cos(2 * np.pi * n / 3), np.sin(2 * np.pi * n / 3)], 1)
    cheap = StatsConfig(n_boot=100, n_perm=100)
    plain = {r.period: r for r in mod_probes(x, n, [10, 3], pca_dim=16, stats=cheap)}
    ctl = {r.period: r for r in mod_probes(x, n, [10, 3], pca_dim=16, stats=cheap,
                                           groups=n % 10)}
    assert plain[10].kappa > 0.95 and plain[3].kappa > 0.8
    assert abs(ctl[10].kappa) < 0.1 and ctl[10].kappa_ci_low <= 0 <= ctl[10].kappa_ci_high
    assert ctl[3].kappa > 0.8 and ctl[3].kappa_p_value < 0.02
    helix = fit_helix(x, n, (3,), pca_dim=8, groups=n % 10)
    assert helix.groups_removed and helix.r2_test > 0.5


def test_probe_results_carry_intervals_and_p_values():
    x, n, _ = helix_states(n_numbers=100, repeats=2, dim=16)
    r = mod_probe(x, n, 10, pca_dim=8, stats=StatsConfig(n_boot=200, n_perm=200))
    assert r.kappa_ci_low <= r.kappa <= r.kappa_ci_high and r.kappa_ci_low > 0.9
    assert r.kappa_p_value == pytest.approx(1 / 201) and r.accuracy_p_value < 0.01
    assert r.n_numbers == 100 and r.block == 10 and r.ci_inflation >= 1
    none = mod_probe(x, n, 10, pca_dim=8, stats=StatsConfig(n_boot=0, n_perm=0))
    assert none.kappa_ci_low is None and none.kappa == pytest.approx(r.kappa)
    fit = fit_helix(x, n, (10, 5), pca_dim=8, stats=StatsConfig(n_boot=200, n_perm=200))
    s = fit.summary()
    assert s["r2_test_ci_low"] < s["r2_test"] < s["r2_test_ci_high"]
    assert s["r2_test"] == pytest.approx(fit.r2_test) and s["r2_test_p_value"] < 0.01
    assert s["decode_accuracy_ci_low"] <= s["decode_accuracy"] <= s["decode_accuracy_ci_high"]
    assert "r2_test_ci_low" not in fit_helix(x, n, (10,), pca_dim=8, shuffle=True).summary()
