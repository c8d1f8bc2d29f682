"""The sampling loop's stopping rule: the median's distribution-free interval, checked on synthetic
streams of call durations (no engine, no clock) and on a real engine."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from deploybench.harness.measure.stats import binomial_tail_rank, median_interval, median_interval_ranks
from deploybench.harness.measure.timing import (CHECK_GROWTH, STOPPED_BY_MAX_SAMPLES, STOPPED_BY_MAX_TIME,
                                                STOPPED_BY_RULES, StoppingRule, TimingRules, benchmark_inference)
from deploybench.harness.pipeline.settings import settings_from_options
from deploybench.spec import DeployBenchError


def _binomial_cdf(n: int, q: float, k: int) -> float:
    """P(Binomial(n, 1/2) <= k), exactly (integers, so 1200 samples do not overflow a float)."""
    assert q == 0.5
    return float(Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n))


@pytest.mark.parametrize("n", [6, 7, 20, 51, 100, 400])
def test_tail_rank_is_the_largest_with_the_tail_below_alpha(n):
    alpha = 0.025
    k = binomial_tail_rank(n, 0.5, alpha)
    assert _binomial_cdf(n, 0.5, k - 1) <= alpha < _binomial_cdf(n, 0.5, k)


def test_normal_approximation_takes_over_within_one_rank():
    # 1200 samples: the expected count 600 is past the exact sum's range; the approximation is within a rank
    n, alpha = 1200, 0.025
    k = binomial_tail_rank(n, 0.5, alpha)
    exact = next(j for j in range(n + 1) if _binomial_cdf(n, 0.5, j) > alpha)
    assert abs(k - exact) <= 1


def test_too_few_samples_have_no_interval():
    assert median_interval_ranks(5) is None and median_interval([1.0, 2.0, 3.0]) is None
    assert median_interval_ranks(100) == (39, 60)  # the textbook 95 % ranks 40 and 61, counted from 1


def test_interval_covers_the_true_median_at_least_as_often_as_stated():
    rng = np.random.default_rng(0)
    true_median = 5.0  # lognormal(log 5, 0.4): heavy right tail like a latency
    covered = 0
    trials = 2000
    for _ in range(trials):
        _, low, high = median_interval(rng.lognormal(math.log(true_median), 0.4, size=60))
        covered += low <= true_median <= high
    assert covered / trials >= 0.94  # exact coverage is >= 0.95; 2000 draws wander about +-0.5 %


def _drive(rules: TimingRules, durations_ms: np.ndarray) -> tuple[str, int]:
    """Feed a stream of call durations through the rule on a synthetic clock: (why it stopped, samples)."""
    samples: list[int] = []
    rule = StoppingRule(rules, samples)
    elapsed = 0
    for duration in (durations_ms * 1e6).astype(np.int64):
        samples.append(int(duration))
        elapsed += int(duration)
        reason = rule.reason_to_stop(elapsed)
        if reason:
            return reason, len(samples)
    raise AssertionError("the stream ran out before the rule stopped")


RULES = TimingRules(warmup_count=0, warmup_s=0, min_samples=30, min_time_s=0.1, max_time_s=5.0, median_ci=0.02)


def test_a_steady_stream_stops_by_the_rules_soon_after_the_minimums():
    steady = np.random.default_rng(1).normal(5.0, 0.05, size=100_000)  # 1 % spread
    reason, count = _drive(RULES, steady)
    assert reason == STOPPED_BY_RULES
    assert count <= 30 + 30 // CHECK_GROWTH + 1  # 0.1 s at 5 ms is 20 calls: the 30 calls bind


def test_a_noisier_stream_samples_longer_and_still_stops_by_the_rules():
    noisy = np.random.default_rng(2).lognormal(math.log(5.0), 0.15, size=100_000)  # IQR 20 % of the median
    reason, count = _drive(RULES, noisy)
    assert reason == STOPPED_BY_RULES and count > 100  # ~+-1.3 x sigma / sqrt(n) needs ~340 calls


def test_a_stream_whose_median_never_settles_hits_the_time_cap():
    # two speed states half the time each, as a box swinging between 5 and 10 ms: the median sits on the
    # jump between them and its interval spans both
    swinging = np.random.default_rng(3).choice([5.0, 10.0], size=100_000)
    reason, count = _drive(RULES, swinging)
    assert reason == STOPPED_BY_MAX_TIME
    assert 5.0 <= count * 7.5 / 1000 <= 5.5  # it sampled the whole 5 s cap, then stopped


def test_max_samples_ends_an_unsettled_stream_and_says_so():
    swinging = np.random.default_rng(4).choice([5.0, 10.0], size=10_000)
    rules = TimingRules(warmup_count=0, warmup_s=0, min_samples=30, min_time_s=0, max_samples=500, max_time_s=60)
    assert _drive(rules, swinging) == (STOPPED_BY_MAX_SAMPLES, 500)


def test_a_cap_that_arrives_when_the_median_is_pinned_did_not_bind():
    steady = np.full(100, 50.0)  # 50 ms calls: 30 of them take 1.5 s, past a 1 s cap
    rules = TimingRules(warmup_count=0, warmup_s=0, min_samples=30, min_time_s=0, max_time_s=1.0)
    assert _drive(rules, steady) == (STOPPED_BY_MAX_TIME, 20)  # the minimums were not met: that is the cap
    rules = TimingRules(warmup_count=0, warmup_s=0, min_samples=10, min_time_s=0, max_time_s=1.0)
    assert _drive(rules, steady) == (STOPPED_BY_RULES, 10)


def test_stopped_medians_are_within_the_goal_about_as_often_as_promised():
    """Checking the interval repeatedly is a sequential test: its miss rate must stay near the 5 % stated."""
    rng = np.random.default_rng(5)
    true_median, misses, runs = 5.0, 0, 300
    for _ in range(runs):
        stream = rng.lognormal(math.log(true_median), 0.15, size=20_000)
        reason, count = _drive(RULES, stream)
        assert reason == STOPPED_BY_RULES
        misses += abs(np.median(stream[:count]) / true_median - 1) > RULES.median_ci
    assert misses / runs <= 0.08, f"{misses} of {runs} stopped medians missed +-2 %"  # 4.4 % over 1000 runs


def test_median_ci_settings_are_fractions_and_refuse_bare_numbers():
    options = {"median_ci": "1%"}
    assert settings_from_options(options.get).timing.median_ci == pytest.approx(0.01)
    with pytest.raises(DeployBenchError, match="--median-ci 5 is ambiguous"):
        settings_from_options({"median_ci": "5"}.get)
    assert settings_from_options({}.get).timing.median_ci == pytest.approx(0.02)
    assert settings_from_options({}.get).timing.time_cap_s == pytest.approx(10.0)


def test_real_engine_reports_the_interval_and_whether_it_was_met(small_cnn_spec):
    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer

    inputs = small_cnn_spec.make_inputs(seed=0)
    with create_deployer(deploy_model(small_cnn_spec, "onnx"), backend="onnxruntime", threads=1) as engine:
        met = benchmark_inference(engine, inputs, warmup_count=5, warmup_s=0, min_samples=30, min_time_s=0.1,
                                  max_time_s=5.0, median_ci=0.5)
        # A 12 us call on a quiet machine repeats to the timer's 10 ns so often that the median's interval has
        # width 0 and meets any goal; a batch of 64 (~0.2 ms) spreads the middle ranks over hundreds of ns.
        unmet = benchmark_inference(engine, small_cnn_spec.make_inputs(seed=0, dims={"batch": 64}), warmup_count=5,
                                    warmup_s=0, min_samples=30, min_time_s=0.1, max_time_s=0.3, median_ci=1e-9)
    assert met.stopped_by == STOPPED_BY_RULES and not met.unstable
    low, high = met.median_ci_ms
    assert low <= met.stats.median <= high and met.median_ci <= 0.5
    assert met.extra["median_ci_goal"] == 0.5 and met.extra["time_cap_s"] == 5.0
    assert unmet.stopped_by == STOPPED_BY_MAX_TIME and unmet.unstable and unmet.sampling_s >= 0.3
