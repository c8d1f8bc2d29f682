"""The gate's arithmetic: distribution-free CIs of medians and ratios, the verdict rule, and the three
comparisons (interleaved, against history, two runs). Why these, and the rule: see ``deploybench.harness.gate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from deploybench.harness.measure.stats import is_unstable, latency_stats
from deploybench.spec import DeployBenchError

REGRESSION, IMPROVEMENT, UNCHANGED, INCONCLUSIVE = "regression", "improvement", "unchanged", "inconclusive"

DEFAULT_THRESHOLD = 0.05
# Above the worst A/A median ratio measured on this class of machine (22 % / 1.2 < 1 + 5 % / 2).
DEFAULT_DRIFT_ALLOWANCE = 0.20
MIN_HISTORY_RUNS = 5
# A history band is the max of the stored run medians or 3 robust sigmas above their centre,
# whichever is wider; a 1 % floor keeps a too-quiet history from claiming no drift at all.
HISTORY_SIGMAS = 3.0
HISTORY_MIN_SPREAD = 0.01
CONFIDENCE = 0.99
# The looks of the sequential interleaved comparison: block pairs after which the verdict is
# checked, stopping at the first decided one. Each look uses confidence 1 - (1 - CONFIDENCE) / len(LOOKS)
# (a Bonferroni split), so over all looks together the error rates of one look at CONFIDENCE hold.
# The fifth look was added when the CI-shaped calibration caught a ~5.8 % slowdown only 42/50 times
# with four (every miss had run to 96 pairs); with five it caught 48/50 at +5.6 % and
# called none of 100 A/A trials a regression (README, scripts/compare_calibration.py).
LOOKS = (12, 24, 48, 96, 192)


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): the distribution-free CI of a median from binomial order statistics.

    With fewer values than the confidence allows, the interval is the full range of the values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    if n == 0:
        raise DeployBenchError("no values to take a median of")
    centre = float(np.median(x))
    if n < 3:
        return centre, float(x[0]), float(x[-1])
    from scipy.stats import binom

    # the largest k with P(Binom(n, 1/2) < k) <= (1 - confidence) / 2: [x_(k), x_(n-k+1)] covers the median
    tail = (1 - confidence) / 2
    k = int(binom.ppf(tail, n, 0.5))
    while k > 0 and binom.cdf(k - 1, n, 0.5) > tail:
        k -= 1
    k = max(k, 1)
    return centre, float(x[k - 1]), float(x[n - k])


def two_sample_ratio_ci(baseline: Sequence[float], current: Sequence[float],
                        confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median(current)/median(baseline), low, high) treating the two sample lists as independent.

    The interval combines each median's order-statistic CI on the log scale; it describes
    within-run noise only (drift between runs is added by the caller).
    """
    b_mid, b_lo, b_hi = median_ci(baseline, confidence)
    c_mid, c_lo, c_hi = median_ci(current, confidence)
    if b_mid <= 0 or c_mid <= 0:
        raise DeployBenchError("latency medians must be positive to be compared")
    ratio = c_mid / b_mid
    # each CI half-width in log space, combined in quadrature (independent runs)
    b_w = max(math.log(b_hi / b_mid) if b_lo > 0 else 0.0, math.log(b_mid / b_lo) if b_lo > 0 else 0.0)
    c_w = max(math.log(c_hi / c_mid) if c_lo > 0 else 0.0, math.log(c_mid / c_lo) if c_lo > 0 else 0.0)
    width = math.hypot(b_w, c_w)
    return ratio, ratio * math.exp(-width), ratio * math.exp(width)


def ratio_verdict(low: float, high: float, threshold: float) -> str:
    """The verdict of a ratio interval [low, high] (current/baseline, bigger is worse) against ``threshold``."""
    upper, half = 1 + threshold, 1 + threshold / 2
    if low > half and high > upper:
        return REGRESSION
    if high < 1 / half and low < 1 / upper:
        return IMPROVEMENT
    if low >= 1 / upper and high <= upper:
        return UNCHANGED
    return INCONCLUSIVE


def history_band(run_medians: Sequence[float]) -> tuple[float, float, float]:
    """(centre, low, high) of the run medians a history holds: where an unchanged run's median falls."""
    medians = np.asarray([m for m in run_medians if m and m > 0], dtype=np.float64)
    if medians.size == 0:
        raise DeployBenchError("no run medians in the history")
    logs = np.log(medians)
    centre = float(np.median(logs))
    spread = max(1.4826 * float(np.median(np.abs(logs - centre))), HISTORY_MIN_SPREAD)
    low = min(float(logs.min()), centre - HISTORY_SIGMAS * spread)
    high = max(float(logs.max()), centre + HISTORY_SIGMAS * spread)
    return math.exp(centre), math.exp(low), math.exp(high)


def look_confidence(confidence: float = CONFIDENCE, looks: Sequence[int] = LOOKS) -> float:
    """The confidence of each look of a sequential comparison with ``looks`` (Bonferroni)."""
    return 1 - (1 - confidence) / max(1, len(looks))


def compare_interleaved(block_ratios: Sequence[float], threshold: float = DEFAULT_THRESHOLD,
                        confidence: float = CONFIDENCE, looks: Sequence[int] = LOOKS) -> tuple[str, float, float, float]:
    """(verdict, median block ratio, low, high) of block ratios current/baseline from ``interleave``.

    The interval is taken at the per-look confidence of a sequential comparison with ``looks``,
    whether or not the ratios were gathered sequentially: the error rates are then those of the
    sequential rule (see ``deploybench.harness.gate``) either way.
    """
    ratio, low, high = median_ci(block_ratios, look_confidence(confidence, looks))
    return ratio_verdict(low, high, threshold), ratio, low, high


def _unstable(samples: Sequence[float]) -> bool:
    return len(samples) >= 5 and is_unstable(latency_stats(samples))


def compare_two_runs(baseline_samples: Sequence[float], current_samples: Sequence[float],
                     threshold: float = DEFAULT_THRESHOLD, drift_allowance: float = DEFAULT_DRIFT_ALLOWANCE,
                     confidence: float = CONFIDENCE) -> tuple[str, float, float, float]:
    """(verdict, ratio of medians, low, high): the within-run CI widened by the unknown drift between runs.

    A run that was itself unstable (``stats.is_unstable``: contention while it ran) doubles the
    allowance: the box that disturbed its samples moves its median too. ``unchanged`` is never
    claimed here (two runs cannot show the drift is small); a small change is ``inconclusive``.
    """
    ratio, low, high = two_sample_ratio_ci(baseline_samples, current_samples, confidence)
    if _unstable(baseline_samples) or _unstable(current_samples):
        drift_allowance *= 2
    low, high = low / (1 + drift_allowance), high * (1 + drift_allowance)
    verdict = ratio_verdict(low, high, threshold)
    return (INCONCLUSIVE if verdict == UNCHANGED and drift_allowance > threshold else verdict), ratio, low, high


def compare_with_history(history_medians: Sequence[float], current_samples: Sequence[float],
                         threshold: float = DEFAULT_THRESHOLD, confidence: float = CONFIDENCE,
                         min_runs: int = MIN_HISTORY_RUNS,
                         drift_allowance: float = DEFAULT_DRIFT_ALLOWANCE) -> tuple[str, float, float, float]:
    """(verdict, ratio to the history's centre, low, high) of the current samples against stored run medians.

    The interval is the current median's CI divided by the history band; with fewer than
    ``min_runs`` stored medians the spread is unknown and the two-run drift allowance applies.
    """
    centre, band_low, band_high = history_band(history_medians)
    current, c_low, c_high = median_ci(current_samples, confidence)
    ratio = current / centre
    if len(history_medians) < min_runs:
        low, high = ratio * (c_low / current) / (1 + drift_allowance), ratio * (c_high / current) * (1 + drift_allowance)
        verdict = ratio_verdict(low, high, threshold)
        return (INCONCLUSIVE if verdict == UNCHANGED else verdict), ratio, low, high
    low, high = c_low / band_high, c_high / band_low
    verdict = ratio_verdict(low, high, threshold)
    if verdict == INCONCLUSIVE and c_low >= band_low / (1 + threshold) and c_high <= band_high * (1 + threshold):
        verdict = UNCHANGED  # inside what the history shows an unchanged run does
    return verdict, ratio, low, high


__all__ = ["CONFIDENCE", "DEFAULT_DRIFT_ALLOWANCE", "DEFAULT_THRESHOLD", "IMPROVEMENT", "INCONCLUSIVE", "LOOKS",
           "MIN_HISTORY_RUNS", "look_confidence", "REGRESSION", "UNCHANGED", "compare_interleaved", "compare_two_runs",
           "compare_with_history", "history_band", "median_ci", "ratio_verdict", "two_sample_ratio_ci"]
