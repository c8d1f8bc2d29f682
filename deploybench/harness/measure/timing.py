"""Steady-state latency of ``engine.infer``: warm-up, then timed calls until the stopping rules hold.

Rules (as in OpenVINO benchmark_app, trtexec and MLPerf LoadGen): warm up until BOTH
``warmup_count`` calls and ``warmup_s`` seconds are done; then sample until BOTH ``min_samples``
calls and ``min_time_s`` seconds are done, unless ``max_samples`` calls or ``max_time_s`` seconds
stop it first (``Timing.stopped_by`` says which). Each call is timed alone with
``time.perf_counter_ns``; throughput is samples x batch over the wall time of the sampling loop.
Load time and the first inference after load are reported apart and never mixed into the samples.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploybench.spec import DeployBenchError, LatencyStats
from deploybench.harness.measure.stats import is_unstable, latency_stats

STOPPED_BY_RULES, STOPPED_BY_MAX_SAMPLES, STOPPED_BY_MAX_TIME = "rules", "max_samples", "max_time_s"


@dataclass(frozen=True)
class TimingRules:
    """Warm up until BOTH ``warmup_count`` calls and ``warmup_s`` seconds are done; then sample until BOTH
    ``min_samples`` calls and ``min_time_s`` seconds are done, unless ``max_samples`` calls or ``max_time_s``
    seconds stop it first (as OpenVINO benchmark_app, trtexec and MLPerf LoadGen do)."""

    warmup_count: int = 10
    warmup_s: float = 0.2
    min_samples: int = 30
    min_time_s: float = 1.0
    max_samples: int = 100_000
    max_time_s: float = 60.0

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
        if self.max_time_s <= 0 or self.max_time_s < self.min_time_s:
            raise DeployBenchError(f"max_time_s {self.max_time_s} must be positive and >= min_time_s "
                                   f"{self.min_time_s}")


@dataclass
class Timing:
    """What ``benchmark_inference`` measured. ``stopped_by`` is "rules", "max_samples" or "max_time_s"."""

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
                        min_time_s: float = 1.0, max_samples: int = 100_000, max_time_s: float = 60.0,
                        first_inference_ms: float | None = None, batch_size: int | None = None,
                        rules: TimingRules | None = None) -> Timing:
    """Return a ``Timing`` of ``engine.infer(inputs)`` on a loaded engine: latency stats, samples, throughput.

    ``first_inference_ms``: when the caller already ran the engine (e.g. to check its outputs), it
    passes the time of that first call (see ``time_first_inference``); when None, the first call
    made here is timed apart and reported as the first inference, which is only meaningful for an
    engine that has not run since load. ``batch_size`` defaults to the leading axis of the first input.
    The defaults suit a CI box: about 1.2 s per cell for a fast model, at most ~60 s for a slow one.
    ``rules`` (a ``TimingRules``) replaces the six rule arguments when given.
    """
    if not getattr(engine, "loaded", True):
        raise DeployBenchError(f"{engine!r} is not loaded: call load() before benchmark_inference")
    rules = rules or TimingRules(warmup_count, warmup_s, min_samples, min_time_s, max_samples, max_time_s)
    warmup_count, warmup_s, min_samples = rules.warmup_count, rules.warmup_s, rules.min_samples
    min_time_s, max_samples, max_time_s = rules.min_time_s, rules.max_samples, rules.max_time_s
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
    max_time_ns = int(max_time_s * 1e9)
    while True:
        now = clock()
        if warmed >= warmup_count and now - warmup_start >= warmup_limit_ns:
            break
        if now - warmup_start >= max_time_ns:  # a very slow model must not spend the whole budget warming up
            break
        infer(inputs)
        warmed += 1
    warmup_elapsed_s = (clock() - warmup_start) / 1e9

    samples_ns = []
    append = samples_ns.append
    min_time_ns = int(min_time_s * 1e9)
    stopped_by = STOPPED_BY_RULES
    loop_start = clock()
    end = loop_start
    while True:
        start = clock()
        infer(inputs)
        end = clock()
        append(end - start)
        count, elapsed = len(samples_ns), end - loop_start
        if count >= min_samples and elapsed >= min_time_ns:
            break
        if count >= max_samples:
            stopped_by = STOPPED_BY_MAX_SAMPLES
            break
        if elapsed >= max_time_ns:
            stopped_by = STOPPED_BY_MAX_TIME
            break
    sampling_s = (end - loop_start) / 1e9

    samples_ms = (np.asarray(samples_ns, dtype=np.float64) / 1e6).tolist()
    stats = latency_stats(samples_ms)
    return Timing(
        stats=stats, samples_ms=samples_ms,
        throughput_ips=len(samples_ms) * batch / sampling_s if sampling_s > 0 else float("nan"),
        load_ms=getattr(engine, "load_ms", None), first_inference_ms=first_inference_ms,
        unstable=is_unstable(stats), warmup_count=warmed, warmup_s=warmup_elapsed_s, sampling_s=sampling_s,
        batch_size=batch, stopped_by=stopped_by,
    )


__all__ = ["STOPPED_BY_MAX_SAMPLES", "STOPPED_BY_MAX_TIME", "STOPPED_BY_RULES", "Timing", "TimingRules", "batch_size_of",
           "benchmark_inference", "time_first_inference"]
