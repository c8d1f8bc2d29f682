"""Steady-state latency of ``engine.infer``: warm-up, then timed calls until the median is pinned down.

Rules: warm up until BOTH ``warmup_count`` calls and ``warmup_s`` seconds are done (as OpenVINO
benchmark_app and trtexec do). Then sample until BOTH ``min_samples`` calls and ``min_time_s``
seconds are done AND the median is known to within ``median_ci`` (default +-2 %): its
distribution-free 95 % confidence interval (binomial order statistics, ``stats.median_interval``)
lies within +-``median_ci`` of it. A cell whose median is not pinned down keeps sampling until the
time cap (``max_time_s``; by default ten times ``min_time_s``, so 10 s) or ``max_samples``; it then
stops and is unstable. ``Timing.stopped_by`` is ``"rules"`` when the rules held, ``"max_time_s"`` or
``"max_samples"`` when that cap ended sampling first.

What the rule promises. At any fixed n the interval covers the true median of the sampled
distribution with probability >= 95 %, for any distribution. Checking it repeatedly (every ~6 % more
samples) is a sequential test, so the chance that a stopped median misses the goal is not exactly
5 %: on lognormal streams of 1000 runs each it was 1 % (sigma 0.05, ~50 calls) and 4.4 % (sigma
0.15, an IQR of 20 %, ~400 calls), the interval's discreteness making up for the repeated looks
(``tests/test_stopping_rule.py``).
The interval says nothing about drift *between* runs (thermal state, other tenants): that is the
gate's business, which re-times both sides interleaved.

The check is cheap: it runs once the minimums are met and then every ``n / CHECK_GROWTH`` samples,
converts only the new samples and partitions (never sorts) them. Each call is timed alone with
``time.perf_counter_ns``; throughput is samples x batch over the wall time of the sampling loop. Load
time and the first inference after load are reported apart and never mixed into the samples.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploybench.spec import DeployBenchError, LatencyStats
from deploybench.harness.measure.stats import CONFIDENCE, latency_stats, median_interval, relative_half_width

STOPPED_BY_RULES, STOPPED_BY_MAX_SAMPLES, STOPPED_BY_MAX_TIME = "rules", "max_samples", "max_time_s"
# With no max_time_s, a cell whose median is not pinned down samples for up to this many times min_time_s ...
DEFAULT_CAP_OVER_MIN_TIME = 10
# ... and a model too slow to reach the minimums stops after this many seconds.
DEFAULT_SLOW_MODEL_CAP_S = 60.0
# After a failed check, the next one waits for n / CHECK_GROWTH more samples (so ~6 % overshoot at most).
CHECK_GROWTH = 16


@dataclass(frozen=True)
class TimingRules:
    """Warm up until BOTH ``warmup_count`` calls and ``warmup_s`` seconds are done; then sample until BOTH
    ``min_samples`` calls and ``min_time_s`` seconds are done and the median's ``confidence`` interval
    lies within +-``median_ci`` of it, unless ``max_samples`` calls or ``max_time_s`` seconds stop it
    first (``median_ci`` None: stop at the minimums, for a caller that times fixed windows).
    ``max_time_s`` None: ``DEFAULT_CAP_OVER_MIN_TIME`` x ``min_time_s`` once the minimums are met, and
    ``DEFAULT_SLOW_MODEL_CAP_S`` before (a given ``max_time_s`` caps both)."""

    warmup_count: int = 10
    warmup_s: float = 0.2
    min_samples: int = 30
    min_time_s: float = 1.0
    max_samples: int = 100_000
    max_time_s: float | None = None
    median_ci: float | None = 0.02
    confidence: float = CONFIDENCE

    def __post_init__(self):
        if self.warmup_count < 0 or self.warmup_s < 0:
            raise DeployBenchError(f"warm-up count {self.warmup_count} and time {self.warmup_s} s must be >= 0")
        if self.min_samples < 1:
            raise DeployBenchError(f"min_samples {self.min_samples} must be at least 1, e.g. 30")
        if self.min_time_s < 0:
            raise DeployBenchError(f"min_time_s {self.min_time_s} must be >= 0, e.g. 1.0")
        if self.max_samples < self.min_samples:
            raise DeployBenchError(f"max_samples {self.max_samples} is below min_samples {self.min_samples}: "
                                   "raise max_samples")
        if self.max_time_s is not None and (self.max_time_s <= 0 or self.max_time_s < self.min_time_s):
            raise DeployBenchError(f"max_time_s {self.max_time_s} must be positive and >= min_time_s "
                                   f"{self.min_time_s}")
        if self.median_ci is not None and not 0 < self.median_ci < 1:
            raise DeployBenchError(f"median confidence half-width {self.median_ci} must be a fraction of the "
                                   "median between 0 and 1, e.g. 0.02 (2%)")
        if not 0 < self.confidence < 1:
            raise DeployBenchError(f"confidence {self.confidence} must lie between 0 and 1, e.g. 0.95")

    @property
    def time_cap_s(self) -> float:
        """Seconds after which a cell whose median is not pinned down stops sampling, once its minimums are met."""
        return self.max_time_s if self.max_time_s is not None else DEFAULT_CAP_OVER_MIN_TIME * self.min_time_s

    @property
    def hard_cap_s(self) -> float:
        """Seconds after which sampling stops even before the minimums are met (a very slow model)."""
        return self.max_time_s if self.max_time_s is not None else max(DEFAULT_SLOW_MODEL_CAP_S, self.time_cap_s)


@dataclass
class Timing:
    """What ``benchmark_inference`` measured. ``stopped_by`` is "rules" (the stopping rules held),
    "max_time_s" or "max_samples" (that cap ended sampling first: ``unstable``). ``median_ci_ms`` is the
    median's interval at the rules' confidence (None below 6 samples at 95 %) and ``median_ci`` how far
    it reaches from the median (0.01: +-1 %; inf without an interval)."""

    stats: LatencyStats
    samples_ms: list[float]
    throughput_ips: float
    load_ms: float | None
    first_inference_ms: float | None
    unstable: bool
    warmup_count: int
    warmup_s: float
    sampling_s: float
    batch_size: int
    stopped_by: str = STOPPED_BY_RULES
    median_ci_ms: tuple[float, float] | None = None
    median_ci: float = float("inf")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def capped(self) -> bool:
        """True when a cap (max_samples or max_time_s) stopped sampling before the rules were met."""
        return self.stopped_by != STOPPED_BY_RULES


def time_first_inference(engine, inputs) -> tuple[dict[str, np.ndarray], float]:
    """(outputs, milliseconds) of one ``engine.infer(inputs)``: call it right after load for the first inference."""
    start = time.perf_counter_ns()
    outputs = engine.infer(inputs)
    return outputs, (time.perf_counter_ns() - start) / 1e6


def batch_size_of(inputs) -> int:
    """The leading-axis size of the first input (1 for a scalar): the number of items one call processes."""
    first = inputs if isinstance(inputs, np.ndarray) else next(iter(inputs.values()), None) \
        if isinstance(inputs, Mapping) else None
    if first is None:
        return 1
    shape = np.shape(first)
    return int(shape[0]) if shape else 1


def benchmark_inference(engine, inputs, warmup_count: int = 10, warmup_s: float = 0.2, min_samples: int = 30,
                        min_time_s: float = 1.0, max_samples: int = 100_000, max_time_s: float | None = None,
                        median_ci: float | None = 0.02, first_inference_ms: float | None = None,
                        batch_size: int | None = None, rules: TimingRules | None = None) -> Timing:
    """Return a ``Timing`` of ``engine.infer(inputs)`` on a loaded engine: latency stats, samples, throughput.

    ``first_inference_ms``: when the caller already ran the engine (e.g. to check its outputs), it
    passes the time of that first call (see ``time_first_inference``); when None, the first call
    made here is timed apart and reported as the first inference, which is only meaningful for an
    engine that has not run since load. ``batch_size`` defaults to the leading axis of the first input.
    The defaults suit a CI box: about 1.2 s per steady cell, at most ~10 s for a noisy one (60 s when
    30 calls take longer). ``rules`` (a ``TimingRules``) replaces the seven rule arguments when given.
    """
    if not getattr(engine, "loaded", True):
        raise DeployBenchError(f"{engine!r} is not loaded: call load() before benchmark_inference")
    rules = rules or TimingRules(warmup_count, warmup_s, min_samples, min_time_s, max_samples, max_time_s, median_ci)
    warmup_count, warmup_s = rules.warmup_count, rules.warmup_s
    batch = batch_size if batch_size is not None else batch_size_of(inputs)
    infer = engine.infer
    clock = time.perf_counter_ns

    if first_inference_ms is None:
        _, first_inference_ms = time_first_inference(engine, inputs)
        warmed = 1
    else:
        warmed = 0
    warmup_start = clock()
    warmup_limit_ns = int(warmup_s * 1e9)
    hard_cap_ns = int(rules.hard_cap_s * 1e9)
    while True:
        now = clock()
        if warmed >= warmup_count and now - warmup_start >= warmup_limit_ns:
            break
        if now - warmup_start >= hard_cap_ns:  # a very slow model must not spend the whole budget warming up
            break
        infer(inputs)
        warmed += 1
    warmup_elapsed_s = (clock() - warmup_start) / 1e9

    samples_ns: list[int] = []
    append = samples_ns.append
    rule = StoppingRule(rules, samples_ns)
    loop_start = clock()
    end = loop_start
    while True:
        start = clock()
        infer(inputs)
        end = clock()
        append(end - start)
        stopped_by = rule.reason_to_stop(end - loop_start)
        if stopped_by:
            break
    sampling_s = (end - loop_start) / 1e9

    samples_ms = (np.asarray(samples_ns, dtype=np.float64) / 1e6).tolist()
    interval_ms = median_interval(samples_ms, rules.confidence)
    median_ci_ms = (interval_ms[1], interval_ms[2]) if interval_ms else None
    reached = relative_half_width(interval_ms)
    return Timing(
        stats=latency_stats(samples_ms), samples_ms=samples_ms,
        throughput_ips=len(samples_ms) * batch / sampling_s if sampling_s > 0 else float("nan"),
        load_ms=getattr(engine, "load_ms", None), first_inference_ms=first_inference_ms,
        unstable=stopped_by != STOPPED_BY_RULES, warmup_count=warmed, warmup_s=warmup_elapsed_s,
        sampling_s=sampling_s, batch_size=batch, stopped_by=stopped_by, median_ci_ms=median_ci_ms,
        median_ci=reached,
        extra={"median_ci_ms": list(median_ci_ms) if median_ci_ms else None,
               "median_ci": reached if median_ci_ms else None,
               "median_ci_goal": rules.median_ci, "time_cap_s": rules.time_cap_s},
    )


class StoppingRule:
    """The sampling loop's decision, apart from the engine and the clock, so that a recorded or
    synthetic stream of call durations can drive it: the caller appends each duration (ns) to
    ``samples`` and then asks ``reason_to_stop`` with the nanoseconds elapsed since sampling began."""

    def __init__(self, rules: TimingRules, samples: list[int]):
        self.rules, self.samples = rules, samples
        self.min_time_ns = int(rules.min_time_s * 1e9)
        self.time_cap_ns, self.hard_cap_ns = int(rules.time_cap_s * 1e9), int(rules.hard_cap_s * 1e9)
        self.next_check = rules.min_samples
        self.array = np.empty(0, dtype=np.int64)

    def reason_to_stop(self, elapsed_ns: int) -> str | None:
        """``STOPPED_BY_RULES``, ``STOPPED_BY_MAX_TIME`` or ``STOPPED_BY_MAX_SAMPLES`` when sampling must
        stop after the sample just appended, else None."""
        count, rules = len(self.samples), self.rules
        minimums_met = count >= rules.min_samples and elapsed_ns >= self.min_time_ns
        if count >= rules.max_samples or elapsed_ns >= self.hard_cap_ns or (
                minimums_met and elapsed_ns >= self.time_cap_ns):
            # a cap that ends a loop whose median is already pinned down did not bind
            if minimums_met and self.median_is_pinned():
                return STOPPED_BY_RULES
            return STOPPED_BY_MAX_SAMPLES if count >= rules.max_samples else STOPPED_BY_MAX_TIME
        if not minimums_met or count < self.next_check:
            return None
        if self.median_is_pinned():
            return STOPPED_BY_RULES
        self.next_check = count + max(1, count // CHECK_GROWTH)
        return None

    def median_is_pinned(self) -> bool:
        if self.rules.median_ci is None:
            return True
        # only the samples added since the last check are copied; the interval partitions, never sorts
        new = self.samples[self.array.size:]
        if new:
            self.array = np.concatenate([self.array, np.fromiter(new, dtype=np.int64, count=len(new))])
        return relative_half_width(median_interval(self.array, self.rules.confidence)) <= self.rules.median_ci


__all__ = ["DEFAULT_CAP_OVER_MIN_TIME", "DEFAULT_SLOW_MODEL_CAP_S", "STOPPED_BY_MAX_SAMPLES", "STOPPED_BY_MAX_TIME",
           "STOPPED_BY_RULES", "StoppingRule", "Timing", "TimingRules", "batch_size_of", "benchmark_inference",
           "time_first_inference"]
