"""What the worker process costs: its start (a fresh interpreter importing the libraries and resolving
the model), one request's round trip, and sending a cell's Result back, next to the same cell run in
this process. Prints one line per figure; used for the README's numbers.

    .venv/bin/python scripts/worker_cost.py [--model digits_cnn] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.matrix import run_one_cell
from deploybench.harness.pipeline.settings import MemoryRules, RunSettings
from deploybench.harness.pipeline.worker import Worker
from deploybench.resolve import ModelSource
from deploybench.spec import Cell, LatencyStats, Result


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.1f} ms (min {min(samples) * 1e3:.1f}, n={len(samples)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = RunSettings(threads=1, timing=TimingRules(min_time_s=0.5), memory=MemoryRules(enabled=False))

    starts = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        with Worker(ModelSource(ref=args.model), settings) as worker:
            worker.open()
            starts.append(time.perf_counter() - begin)
            trips = []
            for _ in range(200):
                begin = time.perf_counter()
                worker.call("builtins:len", ())
                trips.append(time.perf_counter() - begin)
            samples = [0.05] * 40_000  # a fast cell's samples over a 2 s window
            result = Result(cell=Cell(args.model, "onnx", "onnxruntime", "fp32"), samples_ms=samples,
                            latency_ms=LatencyStats(40_000, *[0.05] * 8, 0.0, 0.0))
            sends = []
            for _ in range(20):
                begin = time.perf_counter()
                worker.call("copy:copy", result)
                sends.append(time.perf_counter() - begin)
    print(f"worker start and resolve {args.model}: {median_ms(starts)}")
    print(f"request round trip: {median_ms(trips)}")
    print(f"a Result with 40,000 samples there and back: {median_ms(sends)}")

    cell = Cell(args.model, "onnx", "onnxruntime", "fp32")
    walls: dict[str, list[float]] = {"worker": [], "in-process": []}
    for _ in range(args.repeats):
        for mode, in_process in (("worker", False), ("in-process", True)):
            begin = time.perf_counter()
            result = run_one_cell(args.model, cell, RunSettings(threads=1, timing=settings.timing,
                                                                memory=settings.memory, in_process=in_process))
            assert result.ok, result.reason
            walls[mode].append(time.perf_counter() - begin)
    for mode, values in walls.items():
        print(f"one cell ({cell.id}, 0.5 s of timing) {mode}: {median_ms(values)}")


if __name__ == "__main__":
    main()
