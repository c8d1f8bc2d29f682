"""Latency statistics as pure arithmetic: hand-checked values and properties that hold for any samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploybench.harness.measure.stats import is_unstable, latency_stats, median_ratio_ci, percentile
from deploybench.spec import PRECISIONS, DeployBenchError, LatencyStats

samples_strategy = st.lists(st.floats(min_value=0.001, max_value=1e4, allow_nan=False, allow_infinity=False),
                            min_size=1, max_size=200)


def test_latency_stats_of_one_to_five_by_hand():
    stats = latency_stats([5.0, 1.0, 4.0, 2.0, 3.0])
    assert stats.n == 5
    assert stats.mean == pytest.approx(3.0)
    assert stats.median == pytest.approx(3.0)
    # linear interpolation: rank (5 - 1) * q / 100 between the sorted samples 1..5
    assert stats.p90 == pytest.approx(4.6)
    assert stats.p95 == pytest.approx(4.8)
    assert stats.p99 == pytest.approx(4.96)
    assert (stats.min, stats.max) == (1.0, 5.0)
    assert stats.stdev == pytest.approx(math.sqrt(2.5))
    assert stats.cv == pytest.approx(math.sqrt(2.5) / 3.0)
    assert stats.iqr == pytest.approx(2.0)  # p75 = 4, p25 = 2


def test_percentiles_match_numpy_linear_method():
    values = np.sort(np.random.default_rng(3).exponential(2.0, size=101))
    for q in (0, 10, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q, method="linear")))


def test_one_sample_has_zero_spread():
    stats = latency_stats([2.5])
    assert (stats.median, stats.p99, stats.stdev, stats.cv, stats.iqr) == (2.5, 2.5, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_empty_or_non_finite_samples_raise_one_line(bad):
    with pytest.raises(DeployBenchError) as error:
        latency_stats(bad)
    assert "\n" not in str(error.value)


@settings(max_examples=60, deadline=None)
@given(samples_strategy, st.randoms(use_true_random=False))
def test_statistics_do_not_depend_on_sample_order(samples, random):
    shuffled = list(samples)
    random.shuffle(shuffled)
    a, b = latency_stats(samples), latency_stats(shuffled)
    for name in ("median", "p90", "p95", "p99", "min", "max", "iqr"):
        assert getattr(a, name) == getattr(b, name)
    assert a.mean == pytest.approx(b.mean)


@settings(max_examples=60, deadline=None)
@given(samples_strategy, st.floats(min_value=0.01, max_value=100))
def test_percentiles_scale_with_the_samples(samples, factor):
    a, b = latency_stats(samples), latency_stats([s * factor for s in samples])
    for name in ("median", "p90", "p99", "min", "max", "iqr", "mean"):
        assert getattr(b, name) == pytest.approx(getattr(a, name) * factor, rel=1e-9, abs=1e-9)
    assert b.cv == pytest.approx(a.cv, rel=1e-6, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(samples_strategy, st.floats(min_value=-0.0005, max_value=1e3))
def test_percentiles_shift_with_the_samples(samples, shift):
    a, b = latency_stats(samples), latency_stats([s + shift for s in samples])
    for name in ("median", "p90", "p99", "min", "max", "mean"):
        assert getattr(b, name) == pytest.approx(getattr(a, name) + shift, rel=1e-9, abs=1e-6)
    assert b.iqr == pytest.approx(a.iqr, rel=1e-9, abs=1e-6)
    assert b.stdev == pytest.approx(a.stdev, rel=1e-6, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(samples_strategy)
def test_percentiles_are_ordered(samples):
    s = latency_stats(samples)
    assert s.min <= s.median <= s.p90 <= s.p95 <= s.p99 <= s.max
    assert s.iqr >= 0 and s.stdev >= 0


def _stats(median, iqr, p99, n=100):
    return LatencyStats(n=n, mean=median, median=median, p90=median, p95=median, p99=p99, min=median, max=p99,
                        stdev=0.0, cv=0.0, iqr=iqr)


def test_instability_thresholds():
    assert not is_unstable(_stats(median=1.0, iqr=0.05, p99=1.5))
    assert is_unstable(_stats(median=1.0, iqr=0.2, p99=1.5))  # the middle half spreads 20 %
    assert is_unstable(_stats(median=1.0, iqr=0.05, p99=2.5))  # a heavy tail
    assert is_unstable(_stats(median=1.0, iqr=0.0, p99=1.0, n=3))  # too few samples to know


def test_median_ratio_ci_of_a_known_two_fold_gap():
    rng = np.random.default_rng(0)
    b = rng.normal(10.0, 0.5, size=400)
    a = 2 * b
    ratio, low, high = median_ratio_ci(a, b, resamples=500)
    assert ratio == pytest.approx(2.0)
    assert low < 2.0 < high
    assert 1.85 < low and high < 2.15
    # the same seed gives the same interval; more confidence gives a wider one
    assert median_ratio_ci(a, b, resamples=500) == (ratio, low, high)
    _, wide_low, wide_high = median_ratio_ci(a, b, confidence=0.99, resamples=500)
    assert wide_low <= low and wide_high >= high


def test_median_ratio_ci_rejects_bad_arguments():
    with pytest.raises(DeployBenchError, match="empty"):
        median_ratio_ci([], [1.0])
    with pytest.raises(DeployBenchError, match="confidence"):
        median_ratio_ci([1.0], [1.0], confidence=1.5)


# ---- precision metrics on hand-made arrays ---------------------------------------------------------
from deploybench.harness.measure.accuracy import compare_outputs, cosine_similarity, top1_agreement  # noqa: E402
from deploybench.harness.measure.tolerance import TOLERANCES, check_tolerance  # noqa: E402
from deploybench.spec import Accuracy  # noqa: E402


def test_output_errors_by_hand():
    report = compare_outputs({"y": np.array([1.0, 2.0, 3.0], np.float32)}, {"y": np.array([1.0, 2.0, 4.0])})
    y = report["y"]
    assert y["max_abs_error"] == pytest.approx(1.0)
    assert y["mean_abs_error"] == pytest.approx(1 / 3)
    assert y["max_rel_error"] == pytest.approx(0.25)
    assert y["rtol_to_pass"] == pytest.approx(0.25)
    assert y["cosine"] == pytest.approx(17 / math.sqrt(14 * 21))
    # the tolerances reported are the smallest that pass numpy.allclose
    got, want = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])
    assert np.allclose(got, want, rtol=0, atol=y["max_abs_error"])
    assert np.allclose(got, want, rtol=y["rtol_to_pass"], atol=0)
    assert not np.allclose(got, want, rtol=y["rtol_to_pass"] * 0.99, atol=0)


def test_relative_error_has_a_floor_at_a_thousandth_of_the_output_scale():
    # reference 1e-6 next to 10: the floor is 1e-3 * 10 = 1e-2, so an error of 1e-4 is 1e-2 relative
    report = compare_outputs({"y": np.array([10.0, 1e-6 + 1e-4])}, {"y": np.array([10.0, 1e-6])})
    assert report["y"]["max_rel_error"] == pytest.approx(1e-2)
    assert report["y"]["rtol_to_pass"] == pytest.approx(100.0)  # allclose itself has no floor


def test_outputs_are_matched_by_position_when_names_differ():
    report = compare_outputs({"out0": np.array([1.0, 1.0])}, {"logits": np.array([1.0, 3.0])})
    assert report["logits"]["max_abs_error"] == pytest.approx(2.0)


def test_cosine_and_top1_agreement_by_hand():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine_similarity(np.array([3.0, 4.0]), np.array([6.0, 8.0])) == pytest.approx(1.0)
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    reference = np.array([[0.2, 0.8], [0.1, 0.9], [0.6, 0.4], [0.0, 1.0]])
    assert top1_agreement(scores, reference) == pytest.approx(0.5)


def test_tolerance_check_says_by_how_much():
    tight = Accuracy(max_abs_error=3e-4, cosine=0.999999)
    passed, message = check_tolerance(tight, "fp32")
    assert not passed
    assert "max_abs_error 0.0003 exceeds atol 0.0001 by 0.0002 (3.0x)" in message
    assert check_tolerance(Accuracy(max_abs_error=5e-5, cosine=1.0), "fp32")[0]
    passed, message = check_tolerance(Accuracy(cosine=0.995, top1_agreement=0.97), "int8")
    assert passed, message
    passed, message = check_tolerance(Accuracy(cosine=0.995, top1_agreement=0.85), "int8")
    assert not passed and "top1_agreement 0.85 is below 0.9 by 0.05" in message
    assert check_tolerance(Accuracy(max_abs_error=3e-4), "fp32", {"atol": 1e-3})[0]
    with pytest.raises(DeployBenchError, match="unknown tolerance key"):
        check_tolerance(tight, "fp32", {"atl": 1.0})
    assert set(TOLERANCES) == set(PRECISIONS)  # every precision a cell can have is judged by something
