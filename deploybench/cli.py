"""``deploybench``: run the matrix, recommend a cell, list models and backends, and (wired lazily) gate,
history, report, merge, targets.

Every error a user can cause is printed as one line ``deploybench: error: ...`` on stderr with
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from .harness.pipeline.settings import (DEFAULT_BACKENDS, DEFAULT_MODELS, DEFAULT_PRECISIONS, add_options,
                                        settings_from_options)
from .spec import DeployBenchError, parse_csv

PROG = "deploybench"
EXIT_OK, EXIT_CELL_FAILED, EXIT_USAGE, EXIT_NO_CELL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Subcommands owned by other modules: name -> (module, add-arguments function, command function, help).
LAZY_COMMANDS = {
    "gate": ("deploybench.harness.gate.command", "add_gate_arguments", "gate_command",
             "fail (exit 1) when a run regressed against a baseline in speed, memory or accuracy"),
    "compare": ("deploybench.harness.gate.compare", "add_compare_arguments", "compare_command",
                "build both sides of a change here (two git refs, model files or results files) and gate "
                "it with both measured interleaved; exit 1 on a regression"),
    "verdicts": ("deploybench.harness.gate.compare", "add_verdicts_arguments", "verdicts_command",
                 "join the verdicts of several `compare --json` files (CI jobs) into one table and exit status"),
    "history": ("deploybench.harness.results.history", "add_history_arguments", "history_command",
                "show the stored runs of this machine and the trend of each cell"),
    "report": ("deploybench.harness.report.command", "add_report_arguments", "report_command",
               "write a Markdown or HTML report (with plots) of a results file"),
    "merge": ("deploybench.harness.results.merge", "add_merge_arguments", "merge_command",
              "merge the results files of several shards or machines into one"),
    "targets": ("deploybench.harness.remote.command", "add_targets_arguments", "targets_command",
                "list the remote targets (ssh://) and probe each: reachable, Python, runtimes, CPU and memory"),
}

RUN_EPILOG = """\
exit status: 0 when every cell is ok or skipped (a backend missing here is a skip, with its reason),
1 when any cell failed or timed out, 2 for a usage error (bad option, unknown model or backend,
an --output that cannot be written; one written at the end falls back to a file it names),
3 when no cell matched the models, backends, precisions, --formats and --shard asked for,
130 when interrupted (Ctrl-C or SIGTERM): the cells measured so far are written, marked incomplete,
and `--resume RESULTS` runs only the missing ones.

examples:
  deploybench run --models digits_cnn --backends torch,onnxruntime,openvino --output results.json
  deploybench run --models my_net.py:build --input-shape 1x3x224x224 --backends onnxruntime,openvino
  deploybench run --models bert.py:build --input input_ids:1x32:int64:0..30522 --input attention_mask:1x32:int64:mask
  deploybench run --models model.onnx --backends onnxruntime,openvino --shard 1/2
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors read like every other deploybench error: one line, exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise DeployBenchError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The ``deploybench`` argument parser with every subcommand (lazy ones wired if their module exists)."""
    parser = _Parser(prog=PROG, description="Convert a model to every deployment format, run it on every "
                                            "backend, and measure speed, memory and accuracy as a matrix.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    run = commands.add_parser("run", help="run the matrix of models x backends x precisions and print it",
                              description="Run every compatible (model, format, backend, precision) cell and "
                                          "print the matrix.", epilog=RUN_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(run)
    run.set_defaults(handler=run_command)

    from .harness.recommend.command import RECOMMEND_DESCRIPTION, RECOMMEND_EPILOG, add_recommend_arguments

    recommend = commands.add_parser("recommend", help="the cell to ship per model under budgets on accuracy drop, "
                                                      "latency, memory and size, from a results file or a run",
                                    description=RECOMMEND_DESCRIPTION, epilog=RECOMMEND_EPILOG,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recommend_arguments(recommend)
    add_run_arguments(recommend, models_default=None, mlflow=False)
    recommend.set_defaults(handler=recommend_command)

    models = commands.add_parser("models", help="list the built-in model zoo",
                                 description="List the built-in models with their task, inputs and description.")
    models.set_defaults(handler=models_command)

    backends = commands.add_parser("backends", help="list backends: available here or why not, formats, precisions",
                                   description="List every backend: available or not (and why), its version, "
                                               "the formats it runs and its precisions.")
    backends.set_defaults(handler=backends_command)

    for name, (module_name, add_name, command_name, help_text) in LAZY_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
            add_arguments, command = getattr(module, add_name), getattr(module, command_name)
        except (ImportError, AttributeError):
            sub.set_defaults(handler=_unavailable(name))
            continue
        add_arguments(sub)
        sub.set_defaults(handler=command)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, models_default: str | None = ",".join(DEFAULT_MODELS),
                      mlflow: bool = True) -> None:
    """What ``deploybench run`` runs and how it measures it; ``deploybench recommend`` takes the same options
    (with no default model: without --models it decides from a results file; no MLflow sink)."""
    parser.add_argument("--models", default=models_default,
                        help="comma-separated zoo names, file.py:factory refs or exported .onnx/.tflite/.xml files "
                             f"(default: {models_default or 'none'})")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help=f"comma-separated backends (default: {','.join(DEFAULT_BACKENDS)}); "
                             "see `deploybench backends`")
    parser.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS),
                        help="comma-separated precisions: fp32, fp16, bf16, int8, int8ac (accuracy-aware int8) "
                             f"(default: {','.join(DEFAULT_PRECISIONS)})")
    parser.add_argument("--formats", default=None, help="only these formats (comma-separated), e.g. onnx,openvino")
    parser.add_argument("--input-shape", action="append", default=None, metavar="SHAPE",
                        help="input shape of a file.py:factory model, e.g. 1x3x64x64; repeat once per input")
    parser.add_argument("--input", action="append", default=None, metavar="NAME:SHAPE[:DTYPE[:VALUES]]",
                        help="a named input of a file.py:factory model, for token ids and masks: VALUES is LOW..HIGH "
                             "(integers exclude HIGH), mask (0 or 1) or =VALUE, e.g. input_ids:1x32:int64:0..30522 "
                             "attention_mask:1x32:int64:mask; repeat once per input. For an exported .onnx/.tflite/"
                             ".xml file it sizes and fills the file's own inputs: input:1x512 sr::int64:=16000 (an "
                             "empty SHAPE or DTYPE keeps the file's)")
    parser.add_argument("--output", "-o", default=None, help="write the matrix as JSON to this file")
    add_options(parser.add_argument, edge="cli")
    parser.add_argument("--resume", default=None, metavar="RESULTS",
                        help="keep the cells of an earlier (interrupted) results file and run only the missing ones")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="run only shard I of N (1 <= I <= N), e.g. 1/4; shards partition the cells")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--verbose", action="store_true",
                        help="show what the workers print: converters' own warnings and log lines (hidden by default)")
    parser.add_argument("--target", action="append", default=None, metavar="NAME",
                        help="measure on this machine instead of here: a name of [tool.deploybench.targets] or "
                             "ssh://user@host[:port]; `local` is this machine; repeat for several (see `deploybench "
                             "targets`); the cells of each get @NAME")
    parser.add_argument("--targets-file", type=Path, default=None, metavar="FILE.toml",
                        help="more targets, one [NAME] table each, as in [tool.deploybench.targets]")
    if mlflow:
        parser.add_argument("--mlflow", metavar="URI", default=None,
                            help="also log every cell as an MLflow run to this tracking URI (needs deploybench[mlflow])")


def _unavailable(name: str):
    def handler(args) -> int:
        raise DeployBenchError(f"`{PROG} {name}` is not available in this build")

    return handler


def run_matrix(args: argparse.Namespace):
    """Plan and run the cells ``args`` name (``run``'s options) through the one pipeline; returns the ``Matrix``.
    ``deploybench run`` and ``deploybench recommend --models ...`` both run through here."""
    from .harness.pipeline.matrix import stop_on_sigterm
    from .harness.run import run_deployment_benchmark
    from .harness.pipeline.plan import parse_shard
    from .harness.report.matrix import Matrix

    shard = parse_shard(args.shard) if args.shard else None
    request = run_request(args)
    resume = Matrix.load(args.resume) if args.resume else None
    from .harness.remote.targets import targets_to_run

    targets = targets_to_run(args.target, args.targets_file) if args.target else ()
    stop_on_sigterm()
    return run_deployment_benchmark(**request, progress=not args.no_progress, shard=shard, verbose=args.verbose,
                                    resume=resume, targets=targets)


def search_matrix(args: argparse.Namespace):
    """``deploybench recommend --search-time``: the cells ``args`` name, searched under the time budget through
    the same workers and pipeline ``run_matrix`` uses; returns the ``Matrix``."""
    from .harness.pipeline.matrix import stop_on_sigterm
    from .harness.recommend.command import budgets_from_args
    from .harness.recommend.search_run import parse_duration
    from .harness.recommend.search_run import search_matrix as search

    request = run_request(args)
    stop_on_sigterm()
    return search(**request, budgets=budgets_from_args(args), budget_s=parse_duration(args.search_time),
                  progress=not args.no_progress, verbose=args.verbose)


def run_request(args: argparse.Namespace) -> dict:
    """What ``args`` ask to run: models, backends, precisions, settings and formats, each checked (one line)."""
    from .harness.results.io import check_writable

    refs = parse_csv(args.models)
    backends = parse_csv(args.backends)
    precisions = parse_csv(args.precisions)
    if not refs:
        raise DeployBenchError("--models is empty: name at least one model, e.g. --models digits_cnn")
    if not backends or not precisions:
        raise DeployBenchError("--backends and --precisions need at least one name each, e.g. --backends onnxruntime")
    check_writable(args.output)  # refused now, not after every cell was measured
    settings = settings_from_options(lambda dest: getattr(args, dest, None))
    from .resolve import ref_with_inputs

    inputs = [*(args.input_shape or ()), *(args.input or ())]
    from .models import MODELS

    if inputs and all(ref in MODELS.names() for ref in refs):  # an option that cannot apply is an error
        raise DeployBenchError(f"--input-shape and --input are for a file.py:factory or an exported model file; "
                               f"zoo model(s) {', '.join(refs)} take the inputs they declare: size a dynamic axis "
                               "with --dims AXIS=N instead")
    models = [ref_with_inputs(ref, inputs) for ref in refs]
    return dict(models=models, backends=backends, precisions=precisions, settings=settings,
                formats=parse_csv(args.formats) or None)


def no_cell_matched(args: argparse.Namespace) -> int:
    """Say that the selection matched no cell, naming it; returns ``EXIT_NO_CELL``."""
    asked = " ".join(f"--{name} {','.join(parse_csv(getattr(args, name)))}"
                     for name in ("models", "backends", "precisions"))
    asked += f" --formats {args.formats}" if args.formats else ""
    asked += f" --shard {args.shard} (an empty shard)" if args.shard else ""
    print(f"{PROG}: no cell matched {asked}", file=sys.stderr)
    return EXIT_NO_CELL


def run_command(args: argparse.Namespace) -> int:
    """``deploybench run``: plan, run and print the matrix; 0 if no cell failed, 1 otherwise, 130 when
    interrupted (after writing what was measured)."""
    matrix = run_matrix(args)
    kept = ""
    if args.output:
        written, kept = matrix.save_or_keep(args.output)
    if not matrix.results and not matrix.incomplete:
        return no_cell_matched(args)
    print(matrix.table())
    if kept:
        print(f"{PROG}: {kept}; the results were kept in {written}", file=sys.stderr)
        return EXIT_USAGE
    if args.output:
        print(f"\nwrote {args.output}")
    if matrix.incomplete:
        print(f"{PROG}: {matrix.incomplete}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.mlflow:
        from .harness.report.mlflow_sink import log_matrix

        run_ids = log_matrix(matrix.results, matrix.machine, args.mlflow, settings=matrix.settings)
        print(f"logged {len(run_ids)} MLflow runs to {args.mlflow}")
    return EXIT_CELL_FAILED if matrix.failed else EXIT_OK


def recommend_command(args: argparse.Namespace) -> int:
    """``deploybench recommend``: the body is ``harness.recommend.command``; it runs cells through ``run_matrix``."""
    from .harness.recommend.command import recommend_command as decide

    return decide(args, run=search_matrix if getattr(args, "search_time", None) else run_matrix,
                  no_cell=no_cell_matched)


def models_command(args: argparse.Namespace) -> int:
    """``deploybench models``: the zoo, one row per model."""
    from deploybench.harness.report.table import simple_table  # the device has no tabulate: its fallback
    from deploybench.models import MODELS
    from deploybench.resolve import get_model

    rows = []
    for name in MODELS.names():
        try:
            spec = get_model(name)
        except Exception as exc:  # a zoo entry whose module is missing here is listed, not fatal
            rows.append([name, "-", "-", f"unavailable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"])
            continue
        inputs = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))} {t.dtype}" for t in spec.inputs)
        rows.append([name, spec.task, inputs, spec.description])
    print(simple_table(rows, headers=["model", "task", "inputs", "description"]))
    return EXIT_OK


def backends_command(args: argparse.Namespace) -> int:
    """``deploybench backends``: each backend, available or why not, formats and precisions."""
    from deploybench.engines import ENGINES, engine_class

    rows = []
    for name in ENGINES.names():
        try:
            cls = engine_class(name)
            available, detail = cls.availability()
            formats, precisions = ", ".join(cls.formats), ", ".join(cls.precisions)
        except Exception as exc:  # the engine module itself is missing or broken
            available, formats, precisions = False, "-", "-"
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        rows.append([name, "yes" if available else "no", detail, formats, precisions])
    from deploybench.harness.report.table import simple_table  # the device has no tabulate: its fallback

    print(simple_table(rows, headers=["backend", "available", "version / why not", "formats", "precisions"]))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deploybench`` console script; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args.handler(args) or 0)
    except DeployBenchError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
