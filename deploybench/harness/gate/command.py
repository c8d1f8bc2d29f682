"""``deploybench gate BASELINE CURRENT``: load two runs, gate them, print the verdicts; exit 1 on a
regression, 2 on bad input. Also runnable as ``python -m deploybench.harness.gate.command``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploybench.harness.gate.pairs import (check_overlap, interleave_pairs, pairs_to_interleave, print_verdicts,
                                           same_artifact_ids, shared_pairs)
from deploybench.harness.gate.statistics import DEFAULT_DRIFT_ALLOWANCE
from deploybench.harness.gate.verdict import (DEFAULT_ACCURACY_THRESHOLDS, GateSettings, Verdict, gate_results,
                                              history_medians, load_run, machine_of, markdown_verdicts)
from deploybench.harness.results.io import write_text_atomic
from deploybench.spec import DeployBenchError, parse_fraction


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


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", default="5%",
                        help="latency slowdown that counts: 5%% or 0.05 (default 5%%; a bare 5 is refused)")
    parser.add_argument("--memory-threshold", default="10%", help="peak RSS growth that counts (default 10%%)")
    parser.add_argument("--accuracy-threshold", default=None,
                        help="allowed accuracy drop: one value, or per precision 'int8=0.02,fp16=0.005'")


def gate_settings_from_args(args: argparse.Namespace) -> GateSettings:
    return GateSettings(threshold=parse_fraction(args.threshold),
                        memory_threshold=parse_fraction(args.memory_threshold),
                        accuracy_thresholds=parse_accuracy_thresholds(args.accuracy_threshold),
                        drift_allowance=parse_fraction(getattr(args, "drift_allowance", "20%")))


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", help="pytest-benchmark JSON, `deploybench run` JSON, or a storage id like 0001")
    parser.add_argument("current", help="the run to judge, in the same forms")
    add_threshold_arguments(parser)
    parser.add_argument("--drift-allowance", default=f"{DEFAULT_DRIFT_ALLOWANCE:.0%}",
                        help="run-to-run drift assumed between two runs without history (default 20%%)")
    parser.add_argument("--interleave", choices=("auto", "always", "never"), default="auto", nargs="?",
                        const="always",
                        help="re-run both artifacts interleaved in one process to cancel drift: `auto` (the "
                             "default) whenever both runs' artifacts are on this machine")
    parser.add_argument("--threads", type=int, default=None, help="threads per engine for --interleave")
    parser.add_argument("--history", default=None, metavar="STORAGE",
                        help="pytest-benchmark storage whose stored runs measure the drift (e.g. .benchmarks)")
    parser.add_argument("--storage", default=".benchmarks", help="where storage ids are looked up")
    parser.add_argument("--markdown", default=None, metavar="PATH", help="write the verdict table as Markdown")


def run_gate(baseline_ref: str, current_ref: str, settings: GateSettings, storage: str | Path = ".benchmarks",
             history_storage: str | Path | None = None, interleaved: str | bool = "auto",
             threads: int | None = None, log: Callable[[str], Any] = print) -> list[Verdict]:
    """Load two runs and gate them (the modes: see ``deploybench.harness.gate``); returns the verdicts.
    Raises ``NothingCompared`` when no cell is in both runs."""
    baseline, base_path = load_run(baseline_ref, storage)
    current, cur_path = load_run(current_ref, storage)
    history = (history_medians(history_storage, exclude=[cur_path], machine=machine_of(cur_path, history_storage))
               if history_storage else None)
    return judge(baseline, current, settings, str(base_path), str(cur_path), history=history,
                 interleaved=interleaved, threads=threads, log=lambda text: log(f"deploybench gate: {text}"))


def judge(baseline: list, current: list, settings: GateSettings, base_label: str, cur_label: str,
          history: dict | None = None, interleaved: str | bool = "auto", threads: int | None = None,
          log: Callable[[str], Any] = print) -> list[Verdict]:
    """Gate two lists of results: byte-identical artifacts are ``unchanged`` untimed, the other shared
    cells are re-run interleaved (``auto``: those whose two artifacts are on this machine), and what
    cannot be re-run is judged from the two runs (latency then ``inconclusive``)."""
    check_overlap(baseline, current, base_label, cur_label)
    mode = {True: "always", False: "never"}.get(interleaved, interleaved)
    same = same_artifact_ids(shared_pairs(baseline, current))
    found = None
    if mode != "never":
        pairs = [p for p in pairs_to_interleave(baseline, current, require_files=mode == "auto")
                 if p[1].cell.id not in same]
        found = interleave_pairs(pairs, settings, threads, log=log)
    return gate_results(baseline, current, settings, history=history, interleaved=found, same_artifact=same)


def gate_command(args: argparse.Namespace) -> int:
    """`deploybench gate`: 0 when nothing regressed, 1 on a regression, 2 on bad input."""
    try:
        settings = gate_settings_from_args(args)
        verdicts = run_gate(args.baseline, args.current, settings, storage=getattr(args, "storage", ".benchmarks"),
                            history_storage=getattr(args, "history", None),
                            interleaved=getattr(args, "interleave", "auto"), threads=getattr(args, "threads", None))
        if getattr(args, "markdown", None):
            write_text_atomic(args.markdown, markdown_verdicts(verdicts))
    except DeployBenchError as exc:
        print(f"deploybench gate: {exc}", file=sys.stderr)
        return 2
    return print_verdicts(verdicts, "deploybench gate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploybench gate", description="Gate a run against a baseline.")
    add_gate_arguments(parser)
    return gate_command(parser.parse_args(argv))


__all__ = ["add_gate_arguments", "add_threshold_arguments", "gate_command", "gate_settings_from_args", "main", "parse_accuracy_thresholds", "judge", "parse_fraction", "run_gate"]

if __name__ == "__main__":
    sys.exit(main())
