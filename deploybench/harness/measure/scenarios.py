"""The offline and server scenarios of MLPerf LoadGen, on an engine's own parallel requests.

*offline*: all samples are there at once; the figure is the highest throughput the backend gives
on this machine with its own means (``engine.open_requests()``: OpenVINO's streams and parallel
requests, ONNX Runtime's concurrent runs). The pool is kept full (closed loop) for ``min_time_s``
after a warm-up; throughput is samples (requests x batch) over the wall time from the first start
to the last completion, as benchmark_app counts it. Each request's latency is the time it ran
(slot taken to completion); ``mean_in_flight`` is their sum over the wall time (Little's law):
how many really overlapped.

*server*: requests arrive as a Poisson process at ``rate_per_s`` (exponential gaps from a seeded
``numpy.random.Generator``), each issued at its planned absolute time, so a late wake-up delays
one request and never shifts the ones after it. A request's latency runs from its planned arrival
to its completion: queueing in the pool and the generator's own lateness are in it, never hidden.
Requests still unfinished when the run stops count with the time they had waited (a lower bound).
The run is ``overloaded`` when the server could not keep up: requests left unfinished, completions
slower than arrivals, or a queue that grew through the run (``overload_reasons`` says which).
The generator's overhead is reported twice: ``lateness`` (issue time minus planned time of every
request) and ``generator_overhead``, the same process against a no-op pool (labelled as such).

``find_max_rate`` (the server's highest rate under a p99 budget) is in ``rate_search``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploybench.harness.measure.stats import latency_stats
from deploybench.harness.measure.timing import batch_size_of
from deploybench.spec import DeployBenchError, LatencyStats

# Completions (first to last) below this share of the arrival rate (first to last) mean the server fell
# behind. Not tighter: in a server that keeps up the two differ by the change in latency between the
# first and the last request over the run's span (up to 6 % seen with ResNet-18 at 20/s over 3 s);
# milder overloads show as a growing queue instead.
MIN_COMPLETION_RATIO = 0.90
# The queue an arrival sees, averaged over the last quarter of a run, above this many times the
# first quarter's (plus the pool size) means the queue kept growing.
QUEUE_GROWTH_FACTOR = 2.0


def _stats_from(value: Any) -> LatencyStats | None:
    return None if value is None else LatencyStats(**value)


@dataclass
class OfflineResult:
    """Offline throughput: ``samples_per_s`` = completed requests x batch / wall time of the run."""

    samples_per_s: float
    requests_per_s: float
    batch_size: int
    completed: int
    wall_s: float
    requests: int  # slots the pool kept in flight
    mean_in_flight: float  # measured overlap: sum of request times / wall time
    latency: LatencyStats  # the time each request ran, in ms
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in ("samples_per_s", "requests_per_s", "batch_size", "completed",
                                                  "wall_s", "requests", "mean_in_flight", "notes")},
                "latency": self.latency.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OfflineResult:
        return cls(**{**data, "latency": LatencyStats(**data["latency"])})


@dataclass
class ServerResult:
    """A server run at ``offered_rate_per_s``: latency from planned arrival to completion (ms), and
    whether the server kept up. Samples are kept for plots and tests; ``to_dict(samples=False)`` drops them."""

    offered_rate_per_s: float
    arrival_rate_per_s: float  # what the seeded Poisson draw really offered: (n - 1) / (last - first arrival)
    achieved_rate_per_s: float  # (completions - 1) / (last - first completion)
    queries: int
    completed: int
    unfinished: int
    duration_s: float
    seed: int
    latency: LatencyStats  # planned arrival -> completion, unfinished ones at the time they had waited
    service: LatencyStats | None  # time in a slot (started -> completion) of the completed requests
    lateness: LatencyStats  # issue time - planned time: the load generator's own delay
    overloaded: bool
    p99_interval_ms: list[float]  # 95 % confidence interval of p99 (percentile_interval); see p99_bounded
    p99_bounded: bool
    overload_reasons: list[str] = field(default_factory=list)
    requests: int = 1
    notes: dict[str, Any] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # in arrival order
    arrivals_s: list[float] = field(default_factory=list, repr=False)  # planned, from the start
    issued_s: list[float] = field(default_factory=list, repr=False)  # when each was really issued

    @property
    def p50(self) -> float:
        return self.latency.median

    @property
    def p90(self) -> float:
        return self.latency.p90

    @property
    def p99(self) -> float:
        return self.latency.p99

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if not isinstance(v, LatencyStats)}
        data.update({k: None if v is None else v.to_dict() for k, v in vars(self).items()
                     if k in ("latency", "service", "lateness")})
        data["overload_reasons"] = list(self.overload_reasons)
        if not samples:
            for key in ("latencies_ms", "arrivals_s", "issued_s"):
                data[key] = []
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerResult:
        return cls(**{**data, **{k: _stats_from(data.get(k)) for k in ("latency", "service", "lateness")}})


def poisson_arrivals(rate_per_s: float, seed: int | np.random.SeedSequence = 0, n: int | None = None,
                     duration_s: float | None = None) -> np.ndarray:
    """Planned arrival times in seconds from the start: cumulative exponential gaps of mean 1 / rate.

    Either ``n`` arrivals, or every arrival before ``duration_s``. The same seed gives the same times.
    """
    if not rate_per_s > 0 or not np.isfinite(rate_per_s):
        raise DeployBenchError(f"rate_per_s {rate_per_s} must be a positive number of requests per second")
    if (n is None) == (duration_s is None):
        raise DeployBenchError("poisson_arrivals takes n or duration_s, exactly one of them")
    rng = np.random.default_rng(seed)
    if n is not None:
        if n < 1:
            raise DeployBenchError(f"n {n} must be at least 1")
        return np.cumsum(rng.exponential(1.0 / rate_per_s, int(n)))
    if not duration_s > 0:
        raise DeployBenchError(f"duration_s {duration_s} must be positive")
    chunk = max(16, int(rate_per_s * duration_s * 1.2) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, chunk))
    while times[-1] < duration_s:  # rare: keep drawing until the duration is covered
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate_per_s, chunk))])
    times = times[times < duration_s]
    return times if times.size else np.array([duration_s / 2])


def percentile_interval(samples_ms, q: float = 99.0, confidence: float = 0.95) -> tuple[float, float, bool]:
    """A distribution-free confidence interval of the q-th percentile: (low, high, bounded).

    The number of samples at or below the true percentile is Binomial(n, q / 100), so the order
    statistics x(r) and x(s) with P(r <= B < s) >= confidence bracket it. With too few samples the
    upper rank lies past the largest sample: ``high`` is then the maximum and ``bounded`` False
    (300 samples cannot bound a p99 at 95 %: P(all 300 below it) = 0.99^300 = 5 %).
    """
    values = np.sort(np.asarray(samples_ms, dtype=np.float64).ravel())
    n = values.size
    if n == 0:
        raise DeployBenchError("no samples: a percentile interval needs at least one")
    p = q / 100.0
    k = np.arange(n + 1)
    if p >= 1.0:
        return float(values[-1]), float(values[-1]), False
    # log pmf of Binomial(n, p) by the ratio of consecutive terms, then the CDF
    steps = np.log(np.maximum(n - k[:-1], 1) / (k[:-1] + 1)) + np.log(p / (1 - p))
    log_pmf = np.concatenate([[n * np.log1p(-p)], n * np.log1p(-p) + np.cumsum(steps)])
    pmf = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(pmf) / pmf.sum()  # cdf[j] = P(B <= j)
    tail = (1 - confidence) / 2
    r = int(np.searchsorted(cdf, tail, side="right"))  # P(B < r) <= tail: x(r) is at or below the percentile
    s = int(np.searchsorted(cdf, 1 - tail, side="left")) + 1  # P(B < s) >= 1 - tail
    low = float(values[max(r, 1) - 1])
    return low, float(values[min(s, n) - 1]), s <= n


def run_offline(engine, inputs, min_time_s: float = 2.0, requests: int | None = None, warmup_s: float = 0.5,
                min_queries: int = 10, max_time_s: float = 60.0) -> OfflineResult:
    """Offline throughput of a loaded engine on its own parallel requests (see the module docstring).

    Load OpenVINO with ``engine.throughput_options`` (the THROUGHPUT hint) for this: under LATENCY
    it has one stream, and the notes say so. ``requests`` overrides the backend's number of requests.
    """
    if min_time_s <= 0 or max_time_s < min_time_s:
        raise DeployBenchError(f"min_time_s {min_time_s} must be positive and at most max_time_s {max_time_s}")
    feed = engine.check_inputs(inputs)
    batch = batch_size_of(feed)
    with engine.open_requests(requests) as pool:
        closed_loop(pool, feed, warmup_s, 0, max_time_s)
        spans = closed_loop(pool, feed, min_time_s, min_queries, max_time_s)
        notes = dict(pool.notes)
    started = np.array([s for s, _ in spans], dtype=np.int64)
    done = np.array([d for _, d in spans], dtype=np.int64)
    wall_s = (done.max() - started.min()) / 1e9
    busy_ms = (done - started) / 1e6
    return OfflineResult(
        samples_per_s=float(len(spans) * batch / wall_s), requests_per_s=float(len(spans) / wall_s), batch_size=batch,
        completed=len(spans), wall_s=float(wall_s), requests=pool.size,
        mean_in_flight=float(busy_ms.sum() / 1e3 / wall_s), latency=latency_stats(busy_ms), notes=notes)


def closed_loop(pool, feed, seconds: float, min_queries: int, max_time_s: float) -> list[tuple[int, int]]:
    """Keep every slot of ``pool`` busy (plus one waiting per slot) until ``seconds`` and ``min_queries``
    are done (or ``max_time_s``); then let the last ones finish. Returns (started_ns, done_ns) per request."""
    spans: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    clock = time.perf_counter_ns
    start = clock()
    until, cap = start + int(seconds * 1e9), start + int(max_time_s * 1e9)

    def on_done(completion) -> None:
        if completion.error is not None:
            errors.append(completion.error)
            return
        spans.append((completion.started_ns, completion.done_ns))
        now = completion.done_ns
        if not errors and now < cap and (now < until or len(spans) + pool.outstanding <= min_queries):
            pool.submit(feed, on_done)

    for _ in range(2 * pool.size):
        pool.submit(feed, on_done)
    pool.wait_all(timeout=max_time_s + 60)
    if errors:
        raise DeployBenchError(f"a request failed: {type(errors[0]).__name__}: {errors[0]}".splitlines()[0]) \
            from errors[0]
    return spans


def run_server(engine, inputs, rate_per_s: float, duration_s: float | None = 2.0, n_queries: int | None = None,
               seed: int | np.random.SeedSequence = 0, requests: int | None = None, warmup_s: float = 0.3,
               drain_s: float | None = None) -> ServerResult:
    """Poisson arrivals at ``rate_per_s`` on a loaded engine's request pool (see the module docstring).

    ``n_queries`` arrivals, or every arrival within ``duration_s``. After the last arrival the run
    waits at most ``drain_s`` seconds (default: max(1 s, duration / 2)) for the queue to empty.
    """
    arrivals = poisson_arrivals(rate_per_s, seed, n=n_queries, duration_s=None if n_queries else duration_s)
    feed = engine.check_inputs(inputs)
    with engine.open_requests(requests) as pool:
        if warmup_s > 0:
            closed_loop(pool, feed, warmup_s, 0, max(warmup_s, 30.0))
        result = serve_arrivals(pool, feed, rate_per_s, arrivals, drain_s)
    result.seed = seed if isinstance(seed, int) else int(seed.entropy % 2**31)
    return result


def generator_overhead(rate_per_s: float, duration_s: float = 1.0, requests: int = 1,
                       seed: int | np.random.SeedSequence = 0) -> ServerResult:
    """The server scenario against a NO-OP pool (no model runs): its latencies are the load generator's
    and the pool's own cost (sleep precision, the hand-off to a slot, the completion callback)."""
    from deploybench.engines.requests import ThreadRequestPool

    pool = ThreadRequestPool(_NoOpChecker(), requests, run=lambda feed: None)
    with pool:
        result = serve_arrivals(pool, {}, rate_per_s, poisson_arrivals(rate_per_s, seed, duration_s=duration_s), None)
    result.notes["engine"] = "no-op: load generator and request pool overhead only"
    return result


class _NoOpChecker:
    """Stands in for an engine in ``generator_overhead`` only: accepts any inputs, runs nothing."""

    def check_inputs(self, inputs):
        return inputs

    def __repr__(self) -> str:
        return "<no-op engine (generator overhead)>"


def serve_arrivals(pool, feed, rate_per_s: float, arrivals: np.ndarray, drain_s: float | None) -> ServerResult:
    """Issue one request per planned arrival (seconds from now + 2 ms) on an open pool and judge the run."""
    n = len(arrivals)
    clock = time.perf_counter_ns
    started = np.full(n, -1, dtype=np.int64)
    done = np.full(n, -1, dtype=np.int64)
    issued = np.zeros(n, dtype=np.int64)
    errors: list[BaseException] = []

    def recorder(k: int):
        def on_done(completion) -> None:
            if completion.error is not None:
                errors.append(completion.error)
            started[k], done[k] = completion.started_ns, completion.done_ns
        return on_done

    t0 = clock() + 2_000_000  # 2 ms to spare before the first arrival
    planned = t0 + np.round(arrivals * 1e9).astype(np.int64)
    submit, sleep = pool.submit, time.sleep
    for k in range(n):
        target = int(planned[k])
        now = clock()
        while now < target:
            sleep((target - now) / 1e9)
            now = clock()
        issued[k] = now
        submit(feed, recorder(k))
    drain = max(1.0, float(arrivals[-1]) / 2) if drain_s is None else drain_s
    pool.wait_all(timeout=max(0.0, (int(planned[-1]) - clock()) / 1e9 + drain))
    stop = clock()
    pool.cancel_pending()
    done_now, started_now = done.copy(), started.copy()  # requests still running finish after the stop: ignored
    if errors:
        raise DeployBenchError(f"a request failed: {type(errors[0]).__name__}: {errors[0]}".splitlines()[0]) \
            from errors[0]
    finished = done_now >= 0
    latency_ms = (np.where(finished, done_now, stop) - planned) / 1e6
    span_s = max(float(arrivals[-1]), 1e-9)
    arrival_rate = float((n - 1) / (arrivals[-1] - arrivals[0]) if n > 1 else n / span_s)
    ends = np.sort(done_now[finished])
    # Completions per second between the first and the last completion: the rate the server sustained.
    achieved = (len(ends) - 1) / ((ends[-1] - ends[0]) / 1e9) if len(ends) > 1 and ends[-1] > ends[0] \
        else len(ends) / max((stop - t0) / 1e9, 1e-9)
    reasons = _overload_reasons(planned, done_now, finished, stop, arrival_rate, float(achieved), pool.size)
    service = (done_now[finished] - started_now[finished]) / 1e6
    interval = percentile_interval(latency_ms, 99.0)
    return ServerResult(
        offered_rate_per_s=float(rate_per_s), arrival_rate_per_s=arrival_rate, achieved_rate_per_s=float(achieved),
        queries=n, completed=int(finished.sum()), unfinished=int(n - finished.sum()),
        duration_s=(stop - t0) / 1e9, seed=0, latency=latency_stats(latency_ms),
        service=latency_stats(service) if service.size else None,
        lateness=latency_stats((issued - planned) / 1e6), overloaded=bool(reasons), overload_reasons=reasons,
        p99_interval_ms=[interval[0], interval[1]], p99_bounded=interval[2],
        requests=pool.size, notes=dict(pool.notes), latencies_ms=latency_ms.tolist(),
        arrivals_s=[float(a) for a in arrivals], issued_s=((issued - t0) / 1e9).tolist())


def _overload_reasons(planned, done, finished, stop: int, arrival_rate: float, achieved: float,
                      slots: int) -> list[str]:
    """Why a server run did not keep up; empty when it did."""
    reasons = []
    n = len(planned)
    if not finished.all():
        reasons.append(f"{n - int(finished.sum())} of {n} requests unfinished "
                       f"{(stop - int(planned[-1])) / 1e9:.2f} s after the last arrival")
    if n >= 40 and achieved < MIN_COMPLETION_RATIO * arrival_rate:
        reasons.append(f"completed {achieved:.1f}/s against {arrival_rate:.1f}/s arriving")
    if n >= 40:
        # The queue each arrival found: earlier arrivals minus completions before it.
        finished_by = np.searchsorted(np.sort(np.where(finished, done, np.iinfo(np.int64).max)), planned, side="right")
        queue = np.arange(n) - finished_by
        quarter = n // 4
        first, last = float(queue[:quarter].mean()), float(queue[-quarter:].mean())
        if last > QUEUE_GROWTH_FACTOR * first + slots:
            reasons.append(f"the queue grew from {first:.1f} to {last:.1f} requests on average "
                           "(first to last quarter of the arrivals)")
    return reasons


__all__ = ["OfflineResult", "ServerResult", "generator_overhead", "percentile_interval", "poisson_arrivals",
           "run_offline", "run_server", "serve_arrivals"]
