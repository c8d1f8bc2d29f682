"""The benchmark "tests" that fill the matrix: speed, memory and precision of every cell.

They live in the package so any project gets the same cells with one import in a test file::

    # test_deploy.py
    from deploybench.harness.suite import test_memory, test_precision, test_speed  # noqa: F401

The plugin parametrizes them over the cells (``--models``, ``--backends``, ``--precisions``, or a
``deploybench_models`` fixture); the repo's own ``benchmarks/`` imports them the same way.
"""

from __future__ import annotations

import math
import time

import pytest

from deploybench.harness.plugin import record_timing


# ---- speed ----------------------------------------------------------------------------------
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
        from deploybench.harness.measure.timing import batch_size_of

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
        from deploybench.harness.measure.machine import machine_info

        _MACHINE.update(machine_info())
    return _MACHINE


# ---- memory ---------------------------------------------------------------------------------
@pytest.mark.memory
def test_memory(cell, model, artifact, inputs, deploybench_settings, deploybench_result):
    from deploybench.harness.pipeline.matrix import _measure_memory

    stopped = _measure_memory(model, cell, artifact, deploybench_settings, inputs, deploybench_result)
    if stopped:  # the child crashed (signal named in the reason) or ran past --cell-timeout
        pytest.fail(f"{cell.id}: memory child {deploybench_result.status}: {deploybench_result.reason}",
                    pytrace=False)
    if deploybench_result.peak_rss_mb is None:
        pytest.skip(f"{cell.id}: memory not measured: {deploybench_result.extra.get('memory', 'no reason given')}")
    assert deploybench_result.peak_rss_mb >= deploybench_result.baseline_rss_mb > 0


# ---- precision ------------------------------------------------------------------------------
@pytest.mark.precision
def test_precision(cell, engine, reference, inputs, model, deploybench_settings, deploybench_result):
    from deploybench.harness.measure.accuracy import benchmark_precision, check_tolerance

    accuracy = benchmark_precision(engine, reference, inputs, spec=model, dims=deploybench_settings.dims)
    deploybench_result.accuracy = accuracy
    passed, message = check_tolerance(accuracy, cell.precision, {**model.tolerances.get(cell.precision, {}),
                                                          **deploybench_settings.tolerances.get(cell.precision, {})})
    deploybench_result.extra["tolerance"] = {"passed": passed, "message": message}
    would_pass = f"atol {accuracy.atol_to_pass:.3g}" if accuracy.atol_to_pass is not None else ""
    if accuracy.rtol_to_pass is not None:
        would_pass += f", rtol {accuracy.rtol_to_pass:.3g}"
    assert passed, f"{cell.id} misses the {cell.precision} tolerance: {message}; would have passed with {would_pass}"
