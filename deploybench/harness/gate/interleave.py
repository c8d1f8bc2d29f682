"""Interleaved re-runs: the baseline's and the current artifact run in one process in alternating
blocks, so drift common to both cancels in each block's ratio. Engines are imported only when used."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.harness.gate.statistics import CONFIDENCE, DEFAULT_THRESHOLD, INCONCLUSIVE, compare_interleaved
from deploybench.spec import DeployBenchError, Result


def interleave(run_baseline: Callable[[], Any], run_current: Callable[[], Any], blocks: int = 30,
               block_s: float = 0.03, min_block_calls: int = 5, warmup_s: float = 0.2) -> list[float]:
    """Block ratios current/baseline of two callables run alternately in this process.

    Each of ``blocks`` pairs times one block of each callable (the order flips every pair, A B B A,
    so a linear drift cancels too); a block is ``max(min_block_calls, block_s / call time)`` calls
    and its statistic is the median call time. Returns the list of ratios.
    """
    clock = time.perf_counter

    def timed_block(fn: Callable[[], Any], calls: int) -> float:
        samples = []
        for _ in range(calls):
            start = clock()
            fn()
            samples.append(clock() - start)
        return float(np.median(samples))

    for fn in (run_baseline, run_current):  # warm both, and measure a call for the block size
        end = clock() + warmup_s
        fn()
        while clock() < end:
            fn()
    pilot = max(timed_block(run_baseline, 3), timed_block(run_current, 3), 1e-6)
    calls = max(min_block_calls, int(block_s / pilot))
    ratios = []
    for index in range(blocks):
        if index % 2 == 0:
            base = timed_block(run_baseline, calls)
            cur = timed_block(run_current, calls)
        else:
            cur = timed_block(run_current, calls)
            base = timed_block(run_baseline, calls)
        ratios.append(cur / base)
    return ratios


def interleave_until_decided(run_baseline: Callable[[], Any], run_current: Callable[[], Any],
                             threshold: float = DEFAULT_THRESHOLD, confidence: float = CONFIDENCE,
                             blocks: int = 30, max_blocks: int = 90) -> list[float]:
    """Block ratios from ``interleave``, extended by ``blocks`` more while the verdict is inconclusive.

    A noisy box widens the CI of the first 30 pairs; more pairs narrow it. The extension cannot
    turn an A/A comparison into a regression: that needs the CI's low end above 1 + threshold/2.
    """
    ratios = interleave(run_baseline, run_current, blocks=blocks)
    while len(ratios) < max_blocks and compare_interleaved(ratios, threshold, confidence)[0] == INCONCLUSIVE:
        ratios += interleave(run_baseline, run_current, blocks=min(blocks, max_blocks - len(ratios)),
                             warmup_s=0.05)
    return ratios


def _engine_for(result: Result, settings):
    """A loaded engine and seeded inputs for the artifact a Result measured, through the pipeline's own
    convert and load stages (rebuilt from the model's ref when the artifact is not on disk)."""
    from deploybench.converters import artifact_from_path
    from deploybench.harness.pipeline import stages
    from deploybench.resolve import ModelSource

    path, cell = result.artifact_path, result.cell
    if cell.format != "torch" and path and Path(path).exists():
        artifact = artifact_from_path(Path(path))
        rng = np.random.default_rng(result.seed)
        inputs = {t.name: t.random(rng) for t in artifact.inputs}
    else:
        spec = ModelSource(ref=result.model_ref or cell.model).resolve()
        artifact = stages.convert(spec, cell, settings)
        inputs = spec.make_inputs(seed=result.seed)
    return stages.load(cell, artifact, settings), inputs


def interleave_here(baseline: Result, current: Result, threads: int | None, blocks: int,
                    threshold: float) -> list[float]:
    """``interleave_until_decided`` of the two cells' engines in this process (a worker's)."""
    from deploybench.harness.pipeline.settings import RunSettings

    settings = RunSettings(threads=threads)
    base_engine, base_inputs = _engine_for(baseline, settings)
    try:
        cur_engine, cur_inputs = _engine_for(current, settings)
        try:
            return interleave_until_decided(lambda: base_engine.infer(base_inputs),
                                            lambda: cur_engine.infer(cur_inputs), threshold=threshold,
                                            blocks=blocks, max_blocks=3 * blocks)
        finally:
            cur_engine.close()
    finally:
        base_engine.close()


def interleave_results(baseline: Result, current: Result, threads: int | None = None,
                       blocks: int = 30, threshold: float = DEFAULT_THRESHOLD, worker=None) -> list[float]:
    """Block ratios of the current cell's artifact against the baseline's, both run interleaved in one
    worker process (``worker``, or a fresh one): the gate's own process runs no model code, and a
    crash or hang there is one ``DeployBenchError`` line naming the cell and the signal."""
    from deploybench.harness.pipeline.settings import RunSettings
    from deploybench.harness.pipeline.worker import Worker, WorkerDied

    own = worker is None
    worker = worker or Worker(None, RunSettings(threads=threads))
    try:
        return worker.call("deploybench.harness.gate.interleave:interleave_here", baseline, current, threads,
                           blocks, threshold)
    except WorkerDied as died:
        raise DeployBenchError(f"{current.cell.id}: the interleaved re-run {died.reason.split(': ', 1)[-1]}") from None
    finally:
        if own:
            worker.close()


__all__ = ["interleave", "interleave_here", "interleave_results", "interleave_until_decided"]
