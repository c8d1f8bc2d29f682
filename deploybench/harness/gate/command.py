"""``deploybench gate BASELINE CURRENT``: load two runs, gate them, print the verdicts; exit 1 on a
regression, 2 on bad input. Also runnable as ``python -m deploybench.harness.gate.command``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploybench.harness.gate.interleave import interleave_results
from deploybench.harness.gate.statistics import DEFAULT_DRIFT_ALLOWANCE, REGRESSION
from deploybench.harness.gate.verdict import (DEFAULT_ACCURACY_THRESHOLDS, GateSettings, Verdict, gate_results,
                                              history_medians, load_run, machine_of, markdown_verdicts, verdict_table)
from deploybench.harness.results.io import write_text_atomic
from deploybench.spec import DeployBenchError


def parse_fraction(text: str | float) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a one-line error otherwise."""
    if isinstance(text, (int, float)):
        return float(text)
    raw = str(text).strip()
    try:
        return float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DeployBenchError(f"threshold {text!r} is not a number; write 5% or 0.05") from None


def parse_accuracy_thresholds(text: str | None) -> dict[str, float]:
    """'0.02' (every precision) or 'int8=0.02,fp16=0.005' -> {precision: allowed drop}."""
    thresholds = dict(DEFAULT_ACCURACY_THRESHOLDS)
    if not text:
        return thresholds
    for part in str(text).split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return {p: parse_fraction(key) for p in thresholds}
        thresholds[key.strip()] = parse_fraction(value)
    return thresholds


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", help="pytest-benchmark JSON, `deploybench run` JSON, or a storage id like 0001")
    parser.add_argument("current", help="the run to judge, in the same forms")
    parser.add_argument("--threshold", default="5%", help="latency slowdown that counts (default 5%%)")
    parser.add_argument("--memory-threshold", default="10%", help="peak RSS growth that counts (default 10%%)")
    parser.add_argument("--accuracy-threshold", default=None,
                        help="allowed accuracy drop: one value, or per precision 'int8=0.02,fp16=0.005'")
    parser.add_argument("--drift-allowance", default=f"{DEFAULT_DRIFT_ALLOWANCE:.0%}",
                        help="run-to-run drift assumed between two runs without history (default 20%%)")
    parser.add_argument("--interleave", action="store_true",
                        help="re-run both artifacts interleaved in this process to cancel drift")
    parser.add_argument("--blocks", type=int, default=30,
                        help="block pairs for --interleave (default 30; up to 3x while inconclusive)")
    parser.add_argument("--threads", type=int, default=None, help="threads per engine for --interleave")
    parser.add_argument("--history", default=None, metavar="STORAGE",
                        help="pytest-benchmark storage whose stored runs measure the drift (e.g. .benchmarks)")
    parser.add_argument("--storage", default=".benchmarks", help="where storage ids are looked up")
    parser.add_argument("--markdown", default=None, metavar="PATH", help="write the verdict table as Markdown")


def run_gate(baseline_ref: str, current_ref: str, settings: GateSettings, storage: str | Path = ".benchmarks",
             history_storage: str | Path | None = None, interleaved: bool = False, blocks: int = 30,
             threads: int | None = None, log: Callable[[str], Any] = print) -> list[Verdict]:
    """Load two runs and gate them (the modes: see ``deploybench.harness.gate``); returns the verdicts."""
    baseline, base_path = load_run(baseline_ref, storage)
    current, cur_path = load_run(current_ref, storage)
    history = (history_medians(history_storage, exclude=[cur_path], machine=machine_of(cur_path, history_storage))
               if history_storage else None)
    ratios = None
    if interleaved:
        from deploybench.harness.pipeline.settings import RunSettings
        from deploybench.harness.pipeline.worker import Worker

        ratios = {}
        base_by_id = {r.cell.id: r for r in baseline if r.ok}
        worker = Worker(None, RunSettings(threads=threads))  # one process re-runs every pair, not this one
        try:
            for cur in current:
                base = base_by_id.get(cur.cell.id)
                if base is None or not cur.ok:
                    continue
                try:
                    ratios[cur.cell.id] = interleave_results(base, cur, threads=threads, blocks=blocks,
                                                             threshold=settings.threshold, worker=worker)
                except DeployBenchError as exc:
                    log(f"deploybench gate: {cur.cell.id}: cannot interleave ({exc}); judged without it")
        finally:
            worker.close()
    return gate_results(baseline, current, settings, history=history, block_ratios=ratios)


def gate_command(args: argparse.Namespace) -> int:
    """`deploybench gate`: 0 when nothing regressed, 1 on a regression, 2 on bad input."""
    try:
        settings = GateSettings(threshold=parse_fraction(args.threshold),
                                memory_threshold=parse_fraction(args.memory_threshold),
                                accuracy_thresholds=parse_accuracy_thresholds(args.accuracy_threshold),
                                drift_allowance=parse_fraction(getattr(args, "drift_allowance", "20%")))
        verdicts = run_gate(args.baseline, args.current, settings, storage=getattr(args, "storage", ".benchmarks"),
                            history_storage=getattr(args, "history", None),
                            interleaved=getattr(args, "interleave", False), blocks=getattr(args, "blocks", 30),
                            threads=getattr(args, "threads", None))
        if getattr(args, "markdown", None):
            write_text_atomic(args.markdown, markdown_verdicts(verdicts))
    except DeployBenchError as exc:
        print(f"deploybench gate: {exc}", file=sys.stderr)
        return 2
    if not verdicts:
        print("deploybench gate: no cell was measured in both runs", file=sys.stderr)
    print(verdict_table(verdicts))
    regressed = [v for v in verdicts if v.verdict == REGRESSION]
    print(f"deploybench gate: {len(regressed)} regression(s) in {len({v.cell for v in verdicts})} cell(s)")
    return 1 if regressed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploybench gate", description="Gate a run against a baseline.")
    add_gate_arguments(parser)
    return gate_command(parser.parse_args(argv))


__all__ = ["add_gate_arguments", "gate_command", "main", "parse_accuracy_thresholds", "parse_fraction", "run_gate"]

if __name__ == "__main__":
    sys.exit(main())
