"""Latency statistics: pure arithmetic on a list of samples in milliseconds.

Percentiles use one method everywhere: linear interpolation between the two nearest ranks
(Hyndman & Fan type 7, numpy's default ``method="linear"``): for sorted samples ``x[0..n-1]`` the
q-th percentile sits at rank ``h = (n - 1) * q / 100`` and is ``x[floor(h)] + (h - floor(h)) *
(x[floor(h) + 1] - x[floor(h)])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


__all__ = ["UNSTABLE_IQR_OVER_MEDIAN", "UNSTABLE_P99_OVER_MEDIAN", "is_unstable", "latency_stats",
           "median_ratio_ci", "percentile"]
