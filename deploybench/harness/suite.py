"""The benchmark "tests" that fill the matrix: speed, memory and precision of every cell.

They live in the package so any project gets the same cells with one import in a test file::

    # test_deploy.py
    from deploybench.harness.suite import test_memory, test_precision, test_speed  # noqa: F401

The plugin parametrizes them over the cells (``--models``, ``--backends``, ``--precisions``, or a
``deploybench_models`` fixture). Each cell is measured once, in its model's worker, by the same
pipeline as ``deploybench run``; each test asserts its part of that ``Result``, so the two entry
points give the same figures with the same meaning.
"""

from __future__ import annotations

import pytest


def record_in_pytest_benchmark(benchmark, samples_ms) -> None:
    """Hand latency samples measured in a worker to pytest-benchmark, so its storage, ``compare`` and
    ``--benchmark-compare-fail`` see them as if it had timed them.

    pytest-benchmark times only callables in its own process and has no public way to take samples
    measured elsewhere; this uses the two members its ``pedantic`` mode uses (checked here, with the
    pinned version in constraints.txt)."""
    if not getattr(benchmark, "enabled", False) or not samples_ms:
        return
    if not hasattr(benchmark, "_make_stats"):
        raise RuntimeError("this pytest-benchmark cannot take external samples; install the version "
                           "in deploybench's constraints.txt")
    benchmark._mode = "deploybench (timed in a worker process)"
    stats = benchmark._make_stats(1)
    for sample in samples_ms:
        stats.update(sample / 1e3)


@pytest.mark.speed
def test_speed(benchmark, cell, deploybench_result):
    result = deploybench_result
    if cell.scenario != "single-stream":  # a load run's figure is its throughput, not a latency sample
        benchmark.extra_info.update({"cell_id": cell.id, "result": result.to_dict(with_samples=False)})
        assert result.throughput_ips and result.throughput_ips > 0, f"{cell.id}: no throughput was measured"
        return
    assert result.latency_ms is not None and result.latency_ms.n == len(result.samples_ms) >= 1, \
        f"{cell.id}: no latency was measured"
    record_in_pytest_benchmark(benchmark, result.samples_ms)
    benchmark.extra_info.update({"cell_id": cell.id, "result": result.to_dict(with_samples=False)})
    assert result.latency_ms.min > 0 and result.throughput_ips > 0


@pytest.mark.memory
def test_memory(cell, deploybench_result):
    result = deploybench_result
    if result.peak_rss_mb is None:
        pytest.skip(f"{cell.id}: memory not measured: {result.extra.get('memory', 'off for this run')}")
    assert result.peak_rss_mb >= result.baseline_rss_mb > 0


@pytest.mark.precision
def test_precision(cell, deploybench_result):
    result = deploybench_result
    accuracy = result.accuracy
    assert accuracy is not None and result.tolerance is not None, f"{cell.id}: accuracy was not measured"
    would_pass = f"atol {accuracy.atol_to_pass:.3g}" if accuracy.atol_to_pass is not None else ""
    if accuracy.rtol_to_pass is not None:
        would_pass += f", rtol {accuracy.rtol_to_pass:.3g}"
    assert result.tolerance.passed, (f"{cell.id} misses the {cell.precision} tolerance: {result.tolerance.message}; "
                                     f"would have passed with {would_pass}")
