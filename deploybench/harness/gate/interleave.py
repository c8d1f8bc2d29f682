"""Interleaved re-runs: the baseline's and the current artifact run in one process in alternating
blocks, so drift common to both cancels in each block's ratio. The comparison is sequential: it
looks at the verdict after each of ``statistics.LOOKS`` block pairs and stops at the first decided
look, so an unchanged or clearly changed cell costs a few seconds and only a borderline one runs
to the last look. Engines are imported only when used."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.harness.gate.statistics import CONFIDENCE, DEFAULT_THRESHOLD, INCONCLUSIVE, LOOKS, compare_interleaved
from deploybench.spec import DeployBenchError, Result


# Engine options for two engines of one backend alternating in one process, the same for both sides.
# ONNX Runtime: no spinning, or each session's idle pool spins on the cores the other computes on
# (with 2 threads on 2 cores, block ratios of two identical models spread over 0.24-4.3; without
# spinning 0.95-1.04 from the 10th to the 90th percentile). OpenVINO's pools did not fight (0.88-1.08).
SIDE_BY_SIDE_OPTIONS: dict[str, dict[str, Any]] = {"onnxruntime": {"spinning": False}}


@dataclass
class Interleaved:
    """The block pairs of an interleaved comparison, in the order they ran: each pair's ratio
    current/baseline and each side's block median (ms). ``calls``: calls per block."""

    ratios: list[float] = field(default_factory=list)
    baseline_ms: list[float] = field(default_factory=list)
    current_ms: list[float] = field(default_factory=list)
    calls: int = 0

    def extend(self, other: Interleaved) -> None:
        self.ratios += other.ratios
        self.baseline_ms += other.baseline_ms
        self.current_ms += other.current_ms
        self.calls = other.calls

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "baseline_block_ms": self.baseline_ms, "current_block_ms": self.current_ms,
                "calls_per_block": self.calls}


def interleave(run_baseline: Callable[[], Any], run_current: Callable[[], Any], blocks: int = 30,
               block_s: float = 0.03, min_block_calls: int = 5, warmup_s: float = 0.2,
               calls: int | None = None) -> Interleaved:
    """``blocks`` pairs of two callables run alternately in this process.

    Each pair times one block of each callable (the order flips every pair, A B B A, so a linear
    drift cancels too); a block is ``calls`` calls, by default ``max(min_block_calls, block_s / call
    time)``, and its statistic is the median call time.
    """
    clock = time.perf_counter

    def timed_block(fn: Callable[[], Any], count: int) -> float:
        samples = []
        for _ in range(count):
            start = clock()
            fn()
            samples.append(clock() - start)
        return float(np.median(samples))

    for fn in (run_baseline, run_current):  # warm both, and measure a call for the block size
        end = clock() + warmup_s
        fn()
        while clock() < end:
            fn()
    if calls is None:
        pilot = max(timed_block(run_baseline, 3), timed_block(run_current, 3), 1e-6)
        calls = max(min_block_calls, int(block_s / pilot))
    found = Interleaved(calls=calls)
    for index in range(blocks):
        if index % 2 == 0:
            base = timed_block(run_baseline, calls)
            cur = timed_block(run_current, calls)
        else:
            cur = timed_block(run_current, calls)
            base = timed_block(run_baseline, calls)
        found.ratios.append(cur / base)
        found.baseline_ms.append(base * 1e3)
        found.current_ms.append(cur * 1e3)
    return found


def interleave_sequential(run_baseline: Callable[[], Any], run_current: Callable[[], Any],
                          threshold: float = DEFAULT_THRESHOLD, confidence: float = CONFIDENCE,
                          looks: Sequence[int] = LOOKS) -> Interleaved:
    """Block pairs up to each look in ``looks`` in turn, stopping at the first look whose verdict
    (``compare_interleaved`` at the per-look confidence) is decided. The error rates: see
    ``deploybench.harness.gate``."""
    found = Interleaved()
    for look in looks:
        more = look - len(found.ratios)
        if more <= 0:
            continue
        found.extend(interleave(run_baseline, run_current, blocks=more, warmup_s=0.05 if found.ratios else 0.2,
                                calls=found.calls or None))
        if compare_interleaved(found.ratios, threshold, confidence, looks)[0] != INCONCLUSIVE:
            break
    return found


@contextlib.contextmanager
def project_folder(folder: str | Path | None) -> Iterator[None]:
    """Resolve a user's model from ``folder`` (a checkout of another commit): its files and the modules
    it imports come from there. On the way out, the modules imported from there leave ``sys.modules``
    (the objects built stay alive), so the other side's same-named modules import afresh."""
    if folder is None:
        yield
        return
    root = str(Path(folder).resolve())
    before, cwd = set(sys.modules), os.getcwd()
    sys.path.insert(0, root)
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
        for name in set(sys.modules) - before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(root + os.sep) or name.startswith("deploybench_user_"):
                del sys.modules[name]


def _engine_for(result: Result, settings, folder: str | Path | None = None):
    """A loaded engine and seeded inputs for the artifact a Result measured, at the sizes and threads it
    ran at, through the pipeline's own convert and load stages (rebuilt from the model's ref in
    ``folder`` when the artifact is not a file)."""
    from deploybench.converters import artifact_from_path
    from deploybench.harness.pipeline import stages
    from deploybench.resolve import ModelSource

    path, cell = result.artifact_path, result.cell
    settings = settings.for_cell(cell)
    if cell.format != "torch" and path and Path(path).exists():
        artifact = artifact_from_path(Path(path))
        dims = {**settings.dims, **result.dims_ran}
        rng = np.random.default_rng(result.seed)
        inputs = {t.name: t.random(rng, dims) for t in artifact.inputs}
    else:
        with project_folder(folder):
            spec = ModelSource(ref=result.model_ref or cell.model).resolve()
            artifact = stages.convert(spec, cell, settings)
        dims = result.dims_ran or stages.run_dims(spec, settings)
        inputs = spec.make_inputs(seed=result.seed, dims=dims)
    options = {**SIDE_BY_SIDE_OPTIONS.get(cell.backend, {}), **stages.compile_options(cell, dims)}
    return stages.load(cell, artifact, settings, **options), inputs


def interleave_here(baseline: Result, current: Result, threads: int | None, threshold: float,
                    confidence: float = CONFIDENCE, folders: tuple[Any, Any] = (None, None)) -> Interleaved:
    """``interleave_sequential`` of the two cells' engines in this process (a worker's)."""
    from deploybench.harness.pipeline.settings import RunSettings

    settings = RunSettings(threads=threads)
    base_engine, base_inputs = _engine_for(baseline, settings, folders[0])
    try:
        cur_engine, cur_inputs = _engine_for(current, settings, folders[1])
        try:
            return interleave_sequential(lambda: base_engine.infer(base_inputs), lambda: cur_engine.infer(cur_inputs),
                                         threshold=threshold, confidence=confidence)
        finally:
            cur_engine.close()
    finally:
        base_engine.close()


def interleave_results(baseline: Result, current: Result, threads: int | None = None,
                       threshold: float = DEFAULT_THRESHOLD, confidence: float = CONFIDENCE, worker=None,
                       folders: tuple[Any, Any] = (None, None)) -> Interleaved:
    """The current cell's artifact against the baseline's, both run interleaved in one worker process
    (``worker``, or a fresh one): the gate's own process runs no model code, and a crash or hang
    there is one ``DeployBenchError`` line naming the cell and the signal. ``folders``: where each
    side's model code is resolved from, when a cell must rebuild its model (a torch cell)."""
    from deploybench.harness.pipeline.settings import RunSettings
    from deploybench.harness.pipeline.worker import Worker, WorkerDied

    if current.cell.target or baseline.cell.target:  # a re-run here would judge this machine, not the device
        raise DeployBenchError(f"measured on {current.cell.target or baseline.cell.target}, and an interleaved re-run "
                               "happens on the machine that gates: run the gate on that device")
    own = worker is None
    worker = worker or Worker(None, RunSettings(threads=threads))
    try:
        return worker.call("deploybench.harness.gate.interleave:interleave_here", baseline, current, threads,
                           threshold, confidence, tuple(str(f) if f else None for f in folders))
    except WorkerDied as died:
        raise DeployBenchError(f"{current.cell.id}: the interleaved re-run {died.reason.split(': ', 1)[-1]}") from None
    finally:
        if own:
            worker.close()


__all__ = ["Interleaved", "interleave", "interleave_here", "interleave_results", "interleave_sequential",
           "project_folder"]
