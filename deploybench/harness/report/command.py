"""``deploybench report RESULTS... [--html F] [--markdown F] [--history DIR] [--gate BASELINE]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploybench.harness.gate.verdict import gate_results
from deploybench.harness.report.html import html_report
from deploybench.harness.report.markdown import markdown_report
from deploybench.harness.report.table import terminal_table
from deploybench.harness.results.io import load_results_file, write_text_atomic
from deploybench.spec import DeployBenchError


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``deploybench report``."""
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="deploybench run / merge JSON files, or pytest-benchmark JSON files")
    parser.add_argument("--html", metavar="FILE", help="write one self-contained HTML report here")
    parser.add_argument("--markdown", metavar="FILE", help="write a Markdown summary (for a PR comment) here")
    parser.add_argument("--history", metavar="DIR", help="pytest-benchmark storage whose runs to plot (.benchmarks)")
    parser.add_argument("--gate", metavar="BASELINE", help="baseline results JSON to put gate verdicts first")
    parser.add_argument("--no-table", action="store_true",
                        help="write the files only, without the terminal table (`make demo`: the run printed it)")
    return parser


def report_command(args: argparse.Namespace) -> int:
    """Print the terminal table of each RESULTS file and write the asked-for reports; 2 on a user error."""
    try:
        loaded = [(Path(p).name, *load_results_file(p)[:2]) for p in args.results]
        every = [r for _, results, _ in loaded for r in results]
        verdicts = gate_results(load_results_file(args.gate)[0], every) if args.gate else None
        for label, results, machine in ([] if args.no_table else loaded):
            if len(loaded) > 1:
                print(f"== {label}")
            print(terminal_table(results, machine))
        if args.markdown:
            machine = loaded[0][2] if len(loaded) == 1 else None
            write_text_atomic(args.markdown, markdown_report(every, verdicts=verdicts, machine=machine))
            print(f"markdown report: {args.markdown}")
        if args.html:
            write_text_atomic(args.html, html_report(loaded, history=args.history, verdicts=verdicts))
            print(f"html report: {args.html}")
    except DeployBenchError as exc:
        print(f"deploybench report: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["add_report_arguments", "report_command"]
