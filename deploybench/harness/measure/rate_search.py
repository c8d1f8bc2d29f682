"""The server scenario's question: the highest offered rate whose p99 latency stays under a budget.

As LoadGen's server mode searches for its peak: bracket, then bisect. The first rate is half the
offline capacity (``run_offline`` for a moment on the same requests); a passing rate is raised by
1.5x until one fails, a failing one halved until one passes, then the bracket [highest pass, lowest
fail] is bisected (geometric mean) until it is narrower than ``rel_tol`` or the trials or time run
out. A trial passes when its p99 (planned arrival to completion) is within the budget AND the server
kept up; a trial whose p99 interval straddles the budget is run again at the same rate (latencies
pooled, at most ``max_extensions`` times) so that one unlucky run does not set the bracket. The answer is always a rate that passed in a trial of its own, never an interpolation, so it
never exceeds what was measured; the bracket is its resolution, the ``sure_low``/``sure_high`` range
its noise (each trial's p99 has a confidence interval), and ``trials`` draw the p99 against
offered rate curve with the budget line. When even the lowest rate tried fails, ``met`` is False
and ``message`` says so with the figures.

Every trial runs on one request pool opened once and warmed up once, with its own seed drawn from
``numpy.random.SeedSequence(seed)``; ``overhead`` is the load generator on a no-op pool at the rate found.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploybench.harness.measure.scenarios import (closed_loop, generator_overhead, percentile_interval,
                                                   poisson_arrivals, run_offline, serve_arrivals)
from deploybench.harness.measure.stats import latency_stats
from deploybench.spec import DeployBenchError, LatencyStats


@dataclass
class RateTrial:
    """One trial of the search: its offered rate and what the server did."""

    rate_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    overloaded: bool
    passed: bool
    queries: int
    achieved_rate_per_s: float
    lateness_p99_ms: float  # the load generator's issue delay
    p99_low_ms: float = 0.0  # 95 % confidence interval of the p99 (scenarios.percentile_interval)
    p99_high_ms: float = 0.0
    p99_bounded: bool = False  # False: too few queries to bound the p99 from above (high is the max)
    overload_reasons: list[str] = field(default_factory=list)
    runs: int = 1  # runs at this rate whose latencies were pooled (more when the first left p99 undecided)

    @property
    def surely_passed(self) -> bool:
        return self.passed and self.p99_bounded

    def surely_failed(self, budget_ms: float) -> bool:
        return self.overloaded or self.p99_low_ms > budget_ms


@dataclass
class RateSearch:
    """``max_rate_per_s``: the highest offered rate that passed (None when none did); it lies in
    ``[bracket_low, bracket_high)`` (high None: no failing rate was found above it), the search's resolution.
    A trial's p99 is itself uncertain (a p99 of 600 queries rests on its 6 slowest), so ``sure_low`` is
    the highest rate whose p99 interval lies under the budget and ``sure_high`` the lowest whose interval
    lies above it (or that overloaded): the limit lies in [sure_low, sure_high) with the noise counted,
    and that range, not the bracket, is the spread to compare repeated searches against."""

    p99_budget_ms: float
    met: bool
    max_rate_per_s: float | None
    bracket_low: float | None
    bracket_high: float | None
    capacity_per_s: float  # offline requests per second, where the search started from
    sure_low: float | None
    sure_high: float | None
    trials: list[RateTrial]
    message: str
    elapsed_s: float
    seed: int
    requests: int
    overhead: LatencyStats | None = None  # no-op pool latency at the found rate: the generator's own cost
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["overhead"] = None if self.overhead is None else self.overhead.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RateSearch:
        return cls(**{**data, "trials": [RateTrial(**t) for t in data["trials"]],
                      "overhead": None if data.get("overhead") is None else LatencyStats(**data["overhead"])})


def find_max_rate(engine, inputs, p99_budget_ms: float, start_rate: float | None = None,
                  min_rate: float | None = None, trial_s: float = 3.0, min_queries: int = 600, max_trials: int = 12,
                  max_time_s: float = 120.0, rel_tol: float = 0.05, seed: int = 0,
                  requests: int | None = None, max_extensions: int = 2) -> RateSearch:
    """The highest Poisson arrival rate at which ``engine``'s p99 latency stays within ``p99_budget_ms``.

    Each trial lasts ``trial_s`` seconds or ``min_queries`` arrivals, whichever is longer (a p99 needs
    several hundred: below ~460 its 95 % interval has no upper bound). A trial whose p99 interval
    straddles the budget is extended (up to ``max_extensions`` more runs at that rate, latencies
    pooled) until it surely passes or fails: one unlucky run then no longer sets the bracket. The
    search stops after ``max_trials`` trials or ``max_time_s`` seconds, or when the bracket is within
    ``rel_tol``. ``min_rate`` (default: capacity / 64) is the lowest rate tried.
    """
    if not p99_budget_ms > 0:
        raise DeployBenchError(f"p99_budget_ms {p99_budget_ms} must be a positive number of milliseconds")
    if max_trials < 1 or rel_tol <= 0:
        raise DeployBenchError(f"max_trials {max_trials} must be >= 1 and rel_tol {rel_tol} > 0")
    began = time.monotonic()
    capacity = run_offline(engine, inputs, min_time_s=0.5, warmup_s=0.2, requests=requests).requests_per_s
    rate = start_rate or capacity / 2
    floor = min_rate or capacity / 64
    seeds = np.random.SeedSequence(seed)
    trials: list[RateTrial] = []
    low = high = None  # highest passing, lowest failing rate
    feed = engine.check_inputs(inputs)
    drain_s = max(0.5, 20 * p99_budget_ms / 1e3)
    with engine.open_requests(requests) as pool:
        closed_loop(pool, feed, 0.3, 0, 30.0)
        while len(trials) < max_trials and time.monotonic() - began < max_time_s:
            trial = _trial(pool, feed, rate, max(trial_s, min_queries / rate), drain_s, seeds, p99_budget_ms,
                           max_extensions)
            trials.append(trial)
            passed = trial.passed
            if passed:
                low = rate
            else:
                high = rate
            if low is None:
                if rate / 2 < floor:
                    break
                rate = rate / 2
            elif high is None:
                rate = rate * 1.5
            elif high / low <= 1 + rel_tol:
                break
            else:
                rate = math.sqrt(low * high)
        size, notes = pool.size, dict(pool.notes)
    overhead = generator_overhead(low, duration_s=1.0, requests=size, seed=seed).latency if low else None
    sure_low = max((t.rate_per_s for t in trials if t.surely_passed and t.p99_high_ms <= p99_budget_ms),
                   default=None)
    sure_high = min((t.rate_per_s for t in trials if t.surely_failed(p99_budget_ms)), default=None)
    return RateSearch(p99_budget_ms=float(p99_budget_ms), met=low is not None, max_rate_per_s=low, bracket_low=low,
                      bracket_high=high, capacity_per_s=float(capacity), sure_low=sure_low, sure_high=sure_high,
                      trials=trials,
                      message=_message(p99_budget_ms, low, high, trials, rel_tol, sure_low, sure_high),
                      elapsed_s=time.monotonic() - began, seed=seed, requests=size, overhead=overhead, notes=notes)


def _trial(pool, feed, rate: float, duration: float, drain_s: float, seeds: np.random.SeedSequence,
           budget: float, max_extensions: int) -> RateTrial:
    """Serve ``rate`` for ``duration``; while the pooled p99's interval straddles the budget, serve again."""
    latencies: list[float] = []
    reasons: list[str] = []
    overloaded, achieved, lateness_p99 = False, [], 0.0
    for _ in range(1 + max_extensions):
        result = serve_arrivals(pool, feed, rate, poisson_arrivals(rate, seeds.spawn(1)[0], duration_s=duration),
                                min(drain_s, duration))
        pool.wait_all(timeout=60)  # requests still running after an overloaded run
        latencies += result.latencies_ms
        overloaded, reasons = overloaded or result.overloaded, reasons + result.overload_reasons
        achieved.append(result.achieved_rate_per_s)
        lateness_p99 = max(lateness_p99, result.lateness.p99)
        low, high, bounded = percentile_interval(latencies, 99.0)
        if overloaded or low > budget or (bounded and high <= budget):
            break
    stats = latency_stats(latencies)
    return RateTrial(rate, stats.median, stats.p90, stats.p99, overloaded, stats.p99 <= budget and not overloaded,
                     len(latencies), float(np.mean(achieved)), lateness_p99, low, high, bounded, reasons,
                     runs=len(achieved))


def _message(budget: float, low: float | None, high: float | None, trials: list[RateTrial], rel_tol: float,
             sure_low: float | None, sure_high: float | None) -> str:
    if low is None:
        lowest = min(trials, key=lambda t: t.rate_per_s)
        why = "the server was overloaded" if lowest.overloaded else f"p99 was {lowest.p99_ms:.2f} ms"
        return (f"no rate met the p99 budget of {budget:g} ms: even at {lowest.rate_per_s:.3g}/s, the lowest "
                f"rate tried, {why}; the model's own latency is above what this budget allows")
    if high is None:
        return (f"p99 stayed within {budget:g} ms up to {low:.4g}/s, the highest rate tried: the search ran "
                "out of trials or time before a rate failed")
    resolved = "" if high / low <= 1 + rel_tol else f" (wider than {rel_tol:.0%}: trials or time ran out)"
    noise = (f"; with each p99's 95 % interval counted it lies in [{sure_low or 0:.4g}, "
             f"{'inf' if sure_high is None else f'{sure_high:.4g}'})/s")
    return (f"max rate {low:.4g}/s with p99 within {budget:g} ms; {high:.4g}/s failed: the limit lies in "
            f"[{low:.4g}, {high:.4g})/s{resolved}{noise}")


__all__ = ["RateSearch", "RateTrial", "find_max_rate"]
