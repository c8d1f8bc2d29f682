"""``deploybench recommend [RESULTS] [budgets]``: decide from a results file, or run the cells first (``--models``,
through the one pipeline ``deploybench run`` uses: the CLI hands its ``run_matrix`` in), then print the
recommendation and write it as JSON, Markdown and an HTML report with the recommended cells marked."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from deploybench.harness.recommend.budgets import ACCURACY_FIGURES, AUTO, RANKINGS, Budgets, parse_amount
from deploybench.harness.recommend.recommendation import Recommendation, recommend
from deploybench.harness.results.io import check_writable, load_results_file, write_text_atomic
from deploybench.spec import SCENARIOS, SINGLE_STREAM, DeployBenchError, parse_fraction

PROG = "deploybench recommend"
# The CLI's conventions (deploybench.cli): 2 is a usage error, 3 nothing to work on, 130 interrupted; 1 is
# the answer "no", as the gate's regression is: here, no cell fits a model's budgets.
EXIT_FITS, EXIT_NOTHING_FITS, EXIT_USAGE, EXIT_NO_CELL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

RECOMMEND_DESCRIPTION = """\
For each model, the one cell (format, backend, precision and settings) to ship under budgets on accuracy
drop, latency, peak memory and artifact size; the alternatives on the Pareto front; every rejected cell
with the budget it broke; and whether the accuracy behind the choice is confirmed on held-out data
that calibration never saw. Decides from a RESULTS file, or runs the cells first when --models is
given (with run's options: --backends, --precisions, --threads, ...)."""

RECOMMEND_EPILOG = """\
units: an accuracy drop is a fraction of the figure's 0..1 scale, written 1% or 0.01 (one point of top-1;
a bare 1 is refused as ambiguous, as gate's --threshold does); latency in ms, memory and size in MB as
the tables show them, throughput in items/s; a value may carry its unit (20ms, 200MB).

exit status: 0 when every model got a recommendation, 1 when nothing fits for at least one model (the
closest cells are named with what each broke), 2 for a usage error or a bad results file (one line),
3 when there is no cell to decide from (an empty file, no cell matched, none in --scenario),
130 when a run was interrupted (its cells are written to --output; nothing is recommended).

examples:
  deploybench recommend results.json --max-accuracy-drop 1% --max-p99-ms 20 --max-peak-mb 200
  deploybench recommend --models digits_cnn,resnet18 --backends onnxruntime,openvino --precisions fp32,int8 \\
      --max-accuracy-drop 1% --output results.json --markdown recommendation.md --html report.html
  deploybench recommend results.json --scenario offline --min-throughput 100 --json recommendation.json
  deploybench recommend --models resnet18 --backends onnxruntime,openvino --precisions fp32,int8 \\
      --max-accuracy-drop 1% --search-time 10m
"""


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    """The results file, the budgets and the outputs of ``deploybench recommend`` (run's options come from the CLI)."""
    parser.add_argument("results", nargs="?", metavar="RESULTS",
                        help="a deploybench run / merge JSON or a pytest-benchmark JSON to decide from "
                             "(or give --models to run the cells first)")
    budgets = parser.add_argument_group("budgets (a cell must keep every one given)")
    budgets.add_argument("--max-accuracy-drop", metavar="DROP",
                         help="largest drop of the accuracy figure below the fp32 reference's: 1%% or 0.01 "
                              "(the task metric where the model has one, e.g. held-out top-1; else 1 - cosine)")
    budgets.add_argument("--max-median-ms", metavar="MS", help="largest median latency per request")
    budgets.add_argument("--max-p99-ms", metavar="MS", help="largest p99 latency per request")
    budgets.add_argument("--max-peak-mb", metavar="MB",
                         help="largest peak resident memory of loading and running the cell (the tables' peak MB)")
    budgets.add_argument("--max-size-mb", metavar="MB", help="largest artifact on disk (the tables' size MB)")
    budgets.add_argument("--min-throughput", metavar="IPS", help="smallest throughput, items per second")
    choice = parser.add_argument_group("how the choice is made")
    choice.add_argument("--scenario", choices=SCENARIOS, default=None,
                        help="the scenario the deployment serves; cells of other scenarios are not weighed "
                             "(default: single-stream, or the one scenario the cells ran)")
    choice.add_argument("--rank-by", choices=RANKINGS, default=None,
                        help="among the cells that fit, recommend the lowest median (default for single-stream) "
                             "or p99, or the highest throughput (default for offline and server)")
    choice.add_argument("--accuracy-figure", choices=ACCURACY_FIGURES, default=AUTO,
                        help="what the accuracy drop is measured on: auto (the task metric, else 1 - cosine), "
                             "metric, agreement (1 - top-1 agreement with the reference), cosine")
    choice.add_argument("--allow-tolerance-failures", action="store_true",
                        help="weigh cells that miss their precision's accuracy tolerance too (refused by default)")
    search = parser.add_argument_group("search (with --models)")
    search.add_argument("--search-time", metavar="TIME", default=None,
                        help="instead of every cell of the cross-product, measure the base cells, then explore prune "
                             "amounts (--prune, default 0.1,0.25,0.5) and larger int8 calibration sets "
                             "(--calibration-samples, default 256,1024) where they can still win, for at most TIME "
                             "(e.g. 10m, 90s); what was not explored is said, with why")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--json", metavar="FILE", help="write the recommendation as JSON")
    outputs.add_argument("--markdown", metavar="FILE", help="write the recommendation as Markdown (a PR comment)")
    outputs.add_argument("--html", metavar="FILE",
                         help="write the HTML report of the cells with the recommendation first and its cells marked")


def budgets_from_args(args: argparse.Namespace, scenario: str = SINGLE_STREAM) -> Budgets:
    """The ``Budgets`` the options name (``scenario`` unless --scenario names one); a bad value is one line
    naming the option."""
    def amount(option: str, unit: str):
        text = getattr(args, option.replace("-", "_"))
        return None if text is None else parse_amount(text, unit, f"--{option}")

    drop = None if args.max_accuracy_drop is None else parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop")
    return Budgets(accuracy_drop=drop, median_ms=amount("max-median-ms", "ms"), p99_ms=amount("max-p99-ms", "ms"),
                   peak_mb=amount("max-peak-mb", "MB"), size_mb=amount("max-size-mb", "MB"),
                   min_throughput=amount("min-throughput", "ips"), scenario=args.scenario or scenario,
                   rank_by=args.rank_by,
                   accuracy_figure=args.accuracy_figure, allow_tolerance_failures=args.allow_tolerance_failures)


def measured_scenario(results) -> str:
    """The scenario weighed when --scenario names none: single-stream when any cell ran it, else the one
    scenario the cells ran (a run of --scenarios offline alone is decided on offline)."""
    ran = {r.cell.scenario for r in results if r.ok}
    return ran.pop() if len(ran) == 1 else SINGLE_STREAM


def recommend_command(args: argparse.Namespace, run: Callable, no_cell: Callable[[argparse.Namespace], int]) -> int:
    """Decide and print; ``run(args)`` runs the cells when --models is given (the CLI's ``run_matrix``), and
    ``no_cell(args)`` says that the selection matched none. Errors propagate as one-line ``DeployBenchError``."""
    budgets_from_args(args)  # a bad budget is refused before anything is read or run
    if args.results and args.models:
        raise DeployBenchError(f"give either a RESULTS file ({args.results}) or --models to run, not both: "
                               "run first with `deploybench run --output FILE`, then recommend from FILE")
    if args.results and args.output:
        raise DeployBenchError("--output writes the results of a run; with a RESULTS file nothing is run "
                               "(use --json FILE for the recommendation)")
    if getattr(args, "search_time", None) is not None:
        from deploybench.harness.recommend.search_run import parse_duration

        parse_duration(args.search_time)
        if args.results or getattr(args, "resume", None) or getattr(args, "shard", None):
            raise DeployBenchError("--search-time runs the cells it chooses: give --models, without a RESULTS file, "
                                   "--resume or --shard")
        if getattr(args, "target", None):
            raise DeployBenchError("--search-time searches on this machine only: measure a target's cells with "
                                   "`deploybench run --target NAME --output FILE`, then recommend from FILE")
    if not args.results and not args.models:
        raise DeployBenchError("name a RESULTS file to decide from, or --models (with --backends and --precisions) "
                               "to run the cells first, e.g. deploybench recommend results.json --max-accuracy-drop 1%")
    for path in (args.json, args.markdown, args.html):
        check_writable(path)  # refused before anything is run or read
    if args.results:
        results, machine, settings = load_results_file(args.results)
        source = args.results
        from deploybench.harness.report.matrix import Matrix

        matrix = Matrix(results=results, machine=machine, settings=settings)
    else:
        matrix = run(args)
        if args.output:
            written, kept = matrix.save_or_keep(args.output)
            if kept:
                print(f"{PROG}: {kept}; the results were kept in {written}", file=sys.stderr)
                return EXIT_USAGE
        if not matrix.results and not matrix.incomplete:
            return no_cell(args)
        if matrix.incomplete:
            print(f"{PROG}: {matrix.incomplete}; nothing is recommended from a run cut short", file=sys.stderr)
            return EXIT_INTERRUPTED
        source = f"this run ({args.output})" if args.output else "this run"
    budgets = budgets_from_args(args, measured_scenario(matrix.results))
    recommendation = recommend(matrix, budgets)
    recommendation.source = source
    from deploybench.harness.recommend.search_run import search_lines

    recommendation.search = search_lines(matrix)
    if not any(m.front or m.rejected or m.not_run for m in recommendation.models):
        print(f"{PROG}: no cell of {source} measured the {budgets.scenario} scenario"
              + (f" (its cells: {_scenarios_in(matrix.results)})" if matrix.results else ": it has no cell"),
              file=sys.stderr)
        return EXIT_NO_CELL
    print(recommendation.table(), end="")
    _write_outputs(args, recommendation, matrix)
    return EXIT_FITS if recommendation.fits else EXIT_NOTHING_FITS


def _scenarios_in(results) -> str:
    return ", ".join(sorted({r.cell.scenario for r in results}))


def _write_outputs(args: argparse.Namespace, recommendation: Recommendation, matrix) -> None:
    if args.json:
        write_text_atomic(args.json, json.dumps(recommendation.to_dict(), indent=1, default=str, allow_nan=False))
        print(f"json: {args.json}")
    if args.markdown:
        write_text_atomic(args.markdown, recommendation.markdown())
        print(f"markdown: {args.markdown}")
    if args.html:
        from deploybench.harness.report.html import html_report

        label = recommendation.source
        write_text_atomic(args.html, html_report([(label, matrix.results, matrix.machine)],
                                                 recommendation=recommendation))
        print(f"html report: {args.html}")


__all__ = ["EXIT_FITS", "EXIT_NOTHING_FITS", "EXIT_NO_CELL", "RECOMMEND_DESCRIPTION", "RECOMMEND_EPILOG",
           "add_recommend_arguments", "budgets_from_args", "recommend_command"]
