"""Latency statistics: pure arithmetic on a list of samples in milliseconds.

Percentiles use one method everywhere: linear interpolation between the two nearest ranks
(Hyndman & Fan type 7, numpy's default ``method="linear"``): for sorted samples ``x[0..n-1]`` the
q-th percentile sits at rank ``h = (n - 1) * q / 100`` and is ``x[floor(h)] + (h - floor(h)) *
(x[floor(h) + 1] - x[floor(h)])``.

The median's confidence interval is distribution-free (order statistics and the binomial law, the
argument behind MLPerf LoadGen's early stopping): it holds for any latency distribution, assuming only
that the samples are independent draws from one distribution. ``median_interval`` gives ranks
``lo, hi`` such that ``[x[lo], x[hi]]`` covers the true median with probability >= the confidence
(exact binomial tails up to ``EXACT_BINOMIAL_MEAN``, a continuity-corrected normal approximation
beyond, where its rank error is below one sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from deploybench.spec import DeployBenchError, LatencyStats

# A run is unstable when the middle half of its samples spreads over more than 10 % of the
# median (the median itself then moves by a few percent between runs, which is the size of the
# regressions a gate wants to catch), or when its tail is heavy: one call in a hundred taking
# more than twice the median is what preemption on a shared CI box looks like. The IQR is used
# instead of the coefficient of variation because a handful of preempted calls inflate the
# standard deviation of an otherwise steady run; the p99 rule already catches those.
UNSTABLE_IQR_OVER_MEDIAN = 0.10
UNSTABLE_P99_OVER_MEDIAN = 2.0
# Fewer samples than this cannot show a p99 at all.
UNSTABLE_MIN_SAMPLES = 5

# The confidence the median's interval is stated at.
CONFIDENCE = 0.95
# Above this expected count of the binomial tail, the normal approximation replaces the exact sum.
EXACT_BINOMIAL_MEAN = 500


def percentile(sorted_samples: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of already sorted samples, by linear interpolation."""
    n = len(sorted_samples)
    if n == 0:
        raise DeployBenchError("no latency samples: run the engine at least once before taking statistics")
    rank = (n - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    fraction = rank - low
    return float(sorted_samples[low] + fraction * (sorted_samples[high] - sorted_samples[low]))


def binomial_tail_rank(n: int, q: float, alpha: float) -> int:
    """The largest k in 0..n with P(Binomial(n, q) <= k - 1) <= alpha.

    Of n samples, the number below a quantile is binomial; this is how many of the lowest order
    statistics may lie under it while keeping the chance of that at most ``alpha``.
    """
    mean = n * q
    if mean > EXACT_BINOMIAL_MEAN:
        sd = math.sqrt(mean * (1 - q))
        return min(n, max(0, math.floor(mean - 0.5 + NormalDist().inv_cdf(alpha) * sd) + 1))
    log_ratio = math.log(q) - math.log1p(-q)
    log_pmf, cdf = n * math.log1p(-q), 0.0
    for k in range(n + 1):
        cdf += math.exp(log_pmf)  # P(X <= k)
        if cdf > alpha:
            return k
        log_pmf += math.log(n - k) - math.log(k + 1) + log_ratio
    return n


def median_interval_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """0-based ranks (lo, hi): ``[x[lo], x[hi]]`` of n sorted samples covers the true median with
    probability >= ``confidence``; None when n is too small for any such interval (n < 6 at 95 %)."""
    k = binomial_tail_rank(n, 0.5, (1 - confidence) / 2)
    return (k - 1, n - k) if k >= 1 else None


def median_interval(samples: Sequence[float] | np.ndarray,
                    confidence: float = CONFIDENCE) -> tuple[float, float, float] | None:
    """(median, low, high): the median and its distribution-free ``confidence`` interval, or None when
    there are too few samples for one. Unsorted samples are fine: this partitions, it does not sort."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    n = values.size
    ranks = median_interval_ranks(n, confidence)
    if ranks is None:
        return None
    lo, hi = ranks
    middle = ((n - 1) // 2, n // 2)
    part = np.partition(values, sorted({lo, hi, *middle}))
    return float((part[middle[0]] + part[middle[1]]) / 2), float(part[lo]), float(part[hi])


def relative_half_width(interval: tuple[float, float, float] | None) -> float:
    """How far the interval reaches from its median, relative to it: 0.01 means within +-1 %."""
    if interval is None:
        return math.inf
    median, low, high = interval
    return max(median - low, high - median) / median if median > 0 else math.inf


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """A ``LatencyStats`` (n, mean, median, p90, p95, p99, min, max, stdev, cv, iqr) of the samples.

    ``stdev`` is the sample standard deviation (n - 1 in the denominator, 0 for one sample) and
    ``cv = stdev / mean``. Raises ``DeployBenchError`` for an empty or non-finite sample list.
    """
    values = np.sort(np.asarray(samples_ms, dtype=np.float64).ravel())
    if values.size == 0:
        raise DeployBenchError("no latency samples: run the engine at least once before taking statistics")
    if not np.all(np.isfinite(values)):
        raise DeployBenchError("latency samples contain NaN or infinity: time the calls with a monotonic clock")
    n = int(values.size)
    mean = float(values.mean())
    stdev = float(values.std(ddof=1)) if n > 1 else 0.0
    return LatencyStats(
        n=n, mean=mean, median=percentile(values, 50), p90=percentile(values, 90), p95=percentile(values, 95),
        p99=percentile(values, 99), min=float(values[0]), max=float(values[-1]), stdev=stdev,
        cv=stdev / mean if mean > 0 else 0.0, iqr=percentile(values, 75) - percentile(values, 25),
    )


def is_unstable(stats: LatencyStats) -> bool:
    """True when the samples are too few or too spread for their median to be trusted (see thresholds above)."""
    if stats.n < UNSTABLE_MIN_SAMPLES:
        return True
    if stats.median <= 0:
        return False
    return (stats.iqr / stats.median > UNSTABLE_IQR_OVER_MEDIAN
            or stats.p99 / stats.median > UNSTABLE_P99_OVER_MEDIAN)


def median_ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """(median(a) / median(b), low, high): the ratio and its percentile-bootstrap confidence interval.

    Each resample draws ``len(a)`` samples from ``a`` and ``len(b)`` from ``b`` with replacement;
    the interval is the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resampled
    ratios. The same seed gives the same interval.
    """
    first = np.asarray(a, dtype=np.float64).ravel()
    second = np.asarray(b, dtype=np.float64).ravel()
    if first.size == 0 or second.size == 0:
        raise DeployBenchError("median_ratio_ci needs samples on both sides; one list is empty")
    if not 0 < confidence < 1:
        raise DeployBenchError(f"confidence {confidence} must lie between 0 and 1, e.g. 0.95")
    if resamples < 1:
        raise DeployBenchError(f"resamples {resamples} must be at least 1, e.g. 2000")
    if np.median(second) <= 0:
        raise DeployBenchError("median_ratio_ci: the median of b is not positive; the ratio is undefined")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    # Resample in blocks so 100 000 samples x 2000 resamples never sits in memory at once.
    block = max(1, 2_000_000 // max(first.size, second.size))
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        med_a = np.median(first[rng.integers(0, first.size, size=(count, first.size))], axis=1)
        med_b = np.median(second[rng.integers(0, second.size, size=(count, second.size))], axis=1)
        ratios[start:start + count] = med_a / np.where(med_b > 0, med_b, np.nan)
    ratios = ratios[np.isfinite(ratios)]
    ratio = float(np.median(first) / np.median(second))
    if ratios.size == 0:
        return ratio, ratio, ratio
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return ratio, float(low), float(high)


__all__ = ["CONFIDENCE", "UNSTABLE_IQR_OVER_MEDIAN", "UNSTABLE_P99_OVER_MEDIAN", "binomial_tail_rank", "is_unstable",
           "latency_stats", "median_interval", "median_interval_ranks", "median_ratio_ci", "percentile",
           "relative_half_width"]
