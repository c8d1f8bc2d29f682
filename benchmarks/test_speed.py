"""Steady-state latency of every cell, through pytest-benchmark (``--benchmark-autosave`` keeps history).

Warm-up and stopping rules are deploybench's (``RunSettings``): warm up for both ``warmup_count``
calls and ``warmup_s`` seconds, then sample at least ``min_samples`` calls and ``min_time_s``
seconds; the number of rounds comes from a pilot measurement of the call time.
"""

from __future__ import annotations

import math
import time

import pytest

from deploybench.harness.plugin import record_timing


def _warm_up(engine, inputs, count: int, seconds: float) -> None:
    """Call until both ``count`` calls and ``seconds`` have passed (the pilot must see a warm engine)."""
    done, start = 0, time.perf_counter()
    while done < count or time.perf_counter() - start < seconds:
        engine.infer(inputs)
        done += 1


def _pilot_ms(engine, inputs, calls: int = 10) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.infer(inputs)
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


@pytest.mark.speed
def test_speed(benchmark, engine, inputs, cell, deploybench_settings, deploybench_result):
    settings = deploybench_settings
    _warm_up(engine, inputs, settings.warmup_count, settings.warmup_s)
    pilot_ms = max(_pilot_ms(engine, inputs), 1e-3)
    rounds = max(settings.min_samples, math.ceil(settings.min_time_s * 1e3 / pilot_ms))
    rounds = min(rounds, settings.max_samples, max(settings.min_samples, int(settings.max_time_s * 1e3 / pilot_ms)))
    outputs = benchmark.pedantic(engine.infer, args=(inputs,), rounds=rounds, warmup_rounds=min(3, rounds),
                                 iterations=1)
    assert set(outputs) == set(engine.output_names)

    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    samples_ms = [s * 1e3 for s in getattr(stats, "data", [])] if stats is not None else []
    record_timing(deploybench_result, samples_ms)
    result = deploybench_result
    if samples_ms:
        from deploybench.harness.timing import batch_size_of

        result.throughput_ips = len(samples_ms) * batch_size_of(inputs) * 1e3 / sum(samples_ms)
    benchmark.extra_info.update({
        "cell": cell.to_dict(), "cell_id": cell.id, "load_ms": result.load_ms,
        "first_inference_ms": result.first_inference_ms, "peak_rss_mb": result.peak_rss_mb,
        "baseline_rss_mb": result.baseline_rss_mb, "artifact_bytes": result.artifact_bytes,
        "conversion_s": result.conversion_s,
        "accuracy": result.accuracy.to_dict() if result.accuracy else None,
        "samples": len(samples_ms), "unstable": result.unstable, "machine": _machine(),
        "extra": {k: v for k, v in result.extra.items() if k in ("artifact_path", "model_ref", "seed")},
    })
    assert len(samples_ms) >= min(rounds, settings.min_samples) or not samples_ms


_MACHINE: dict = {}


def _machine() -> dict:
    if not _MACHINE:
        from deploybench.harness.machine import machine_info

        _MACHINE.update(machine_info())
    return _MACHINE
