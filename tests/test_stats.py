"""Claims about labkit.stats: bootstrap confidence intervals and smoothing."""

import numpy as np
import pytest

from labkit.stats import bootstrap_ci, smooth


def test_bootstrap_ci_contains_the_mean_and_mean_is_the_sample_mean():
    x = np.random.default_rng(1).normal(size=(20, 40))
    mean, low, high = bootstrap_ci(x)
    assert mean.shape == low.shape == high.shape == (40,)
    np.testing.assert_allclose(mean, x.mean(axis=0))
    assert np.all(low <= mean) and np.all(mean <= high)


def test_bootstrap_ci_shrinks_with_more_trials():
    rng = np.random.default_rng(2)
    _, lo5, hi5 = bootstrap_ci(rng.normal(size=(5, 200)))
    _, lo80, hi80 = bootstrap_ci(rng.normal(size=(80, 200)))
    assert np.median(hi80 - lo80) < 0.5 * np.median(hi5 - lo5)


def test_bootstrap_ci_is_deterministic_per_seed():
    x = np.random.default_rng(3).normal(size=(10, 7))
    a, b, c = bootstrap_ci(x, seed=5), bootstrap_ci(x, seed=5), bootstrap_ci(x, seed=6)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


def test_bootstrap_ci_98_percent_roughly_covers_the_true_mean():
    # 400 independent experiments of 30 N(0, 1) trials, one per column: the interval
    # should contain 0 in about 98% of them (percentile bootstrap runs a bit narrow).
    x = np.random.default_rng(4).normal(size=(30, 400))
    _, low, high = bootstrap_ci(x, level=0.98, n_resamples=500)
    coverage = np.mean((low <= 0) & (0 <= high))
    assert 0.93 <= coverage <= 1.0


def test_bootstrap_ci_ignores_nan_rows_of_diverged_trials():
    rng = np.random.default_rng(5)
    good = rng.normal(size=(6, 12))
    with_nan = np.vstack([good, np.full((2, 12), np.nan)])
    for u, v in zip(bootstrap_ci(good, seed=0), bootstrap_ci(with_nan, seed=0)):
        np.testing.assert_allclose(u, v)


def test_bootstrap_ci_drops_a_diverged_trial_only_after_it_stopped():
    x = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, np.nan], [5.0, np.nan, np.nan]])
    mean, low, high = bootstrap_ci(x)
    np.testing.assert_allclose(mean, [3.0, 2.0, 1.0])
    assert low[2] == high[2] == 1.0  # a single trial left: no spread
    assert low[0] < 3.0 < high[0]


def test_bootstrap_ci_all_nan_column_gives_nan_and_1d_input_gives_scalars():
    mean, low, high = bootstrap_ci(np.array([[np.nan, 1.0], [np.nan, 2.0]]))
    assert np.isnan(mean[0]) and np.isnan(low[0]) and np.isnan(high[0])
    m, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert m.shape == () and float(m) == 2.5 and lo < 2.5 < hi


def test_bootstrap_ci_axis_argument_picks_the_trial_axis():
    x = np.random.default_rng(6).normal(size=(9, 4))
    for u, v in zip(bootstrap_ci(x, axis=0), bootstrap_ci(x.T, axis=1)):
        np.testing.assert_allclose(u, v)


def test_bootstrap_ci_rejects_bad_level():
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], level=1.5)


def test_smooth_of_a_constant_is_constant_even_with_a_window_longer_than_the_series():
    for n, w in [(50, 10), (5, 10), (1, 3)]:
        np.testing.assert_allclose(smooth(np.full((3, n), 2.5), w), 2.5)
        np.testing.assert_allclose(smooth(np.full(n, 2.5), w, centred=False), 2.5)


def test_smooth_keeps_length_and_centred_window_has_no_lag():
    x = np.arange(20.0)
    y = smooth(x, 5)
    assert y.shape == x.shape
    np.testing.assert_allclose(y[2:-2], x[2:-2])  # linear series: centred mean = value
    np.testing.assert_allclose(smooth(x, 3, centred=False)[2:], x[2:] - 1.0)  # trailing lags


def test_smooth_leaves_out_nan_and_keeps_nan_where_data_is_missing():
    x = np.array([1.0, 1.0, np.nan, 3.0, 3.0, np.nan, np.nan])
    y = smooth(x, 3)
    assert np.isnan(y[2]) and np.isnan(y[5]) and np.isnan(y[6])
    np.testing.assert_allclose(y[[0, 1, 3, 4]], [1.0, 1.0, 3.0, 3.0])


def test_smooth_window_one_is_identity():
    x = np.random.default_rng(7).normal(size=(2, 9))
    np.testing.assert_array_equal(smooth(x, 1), x)


def test_bootstrap_ci_default_level_is_the_98_percent_that_the_reports_claim():
    # Every summary prints "98% CI" from bootstrap_ci called without a level.
    x = np.random.default_rng(6).normal(size=(12, 30))
    default = bootstrap_ci(x, seed=3)
    for u, v in zip(default, bootstrap_ci(x, level=0.98, seed=3)):
        np.testing.assert_array_equal(u, v)
    _, low95, high95 = bootstrap_ci(x, level=0.95, seed=3)
    assert np.all(default[1] <= low95) and np.all(high95 <= default[2])
    assert np.any(default[1] < low95) and np.any(high95 < default[2])
