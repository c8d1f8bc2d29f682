"""``deploybench compare BASE [HEAD]``: build both sides of a change on this machine and gate it with
both measured side by side.

1. each side's models are resolved and converted in workers of their own (a git ref's in a
   worktree of that commit; the content-addressed conversion cache converts an unchanged model
   once); the head side is measured in full (latency, memory, accuracy);
2. a cell whose two artifacts are byte-identical is ``unchanged (same artifact)``: nothing is timed;
3. the base side is measured for the other cells, and each is re-run with both artifacts
   interleaved in one worker process, stopping at the first decided look (``gate.interleave``);
4. latency is judged on the interleaved block ratios, peak memory and accuracy on each side's own
   measurements; a cell that ran before and fails now is a regression of its own.

Exit status: 0 nothing regressed, 1 a regression, 2 bad input or no cell in both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploybench.harness.gate.pairs import check_overlap, interleave_pairs, print_verdicts, same_artifact_ids, shared_pairs
from deploybench.harness.gate.sources import WORKING_TREE, Side, open_sides
from deploybench.harness.gate.verdict import GateSettings, Verdict, gate_results, load_run, markdown_verdicts
from deploybench.harness.results.io import check_writable, write_text_atomic
from deploybench.spec import DeployBenchError, Result, parse_csv

SCHEMA = "deploybench.compare/1"
PROG = "deploybench compare"


def _stderr(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def measure_side(side: Side, backends: Sequence[str], precisions: Sequence[str], settings, formats=None,
                 shard=None, only: Callable[[Any], bool] | None = None, measures=None, verbose: bool = False,
                 progress: bool = True, universe: Iterable[str] = ()) -> list[Result]:
    """The cells of one side, each model in a worker resolving it in the side's folder. ``only``:
    measure just the cells it accepts; ``measures``: which figures (default all; ``()`` converts only;
    ``PLAN_ONLY`` plans only, the cells coming back as bare results); ``universe``: the ids both sides
    plan, so ``shard`` deals the same cells to the same shard on both."""
    from deploybench.harness.pipeline.matrix import Progress, close_workers, open_workers, run_cells
    from deploybench.harness.pipeline.plan import plan_cells, select_shard
    from deploybench.harness.pipeline.stages import MEASURES

    opened = open_workers(side.models, settings, verbose, folder=side.folder)
    try:
        cells = plan_cells([info for info, _ in opened], list(backends), list(precisions), formats=formats,
                           include_unsupported=True, sweep=settings.sweep)
        if shard is not None:
            cells = select_shard(cells, *shard, universe=universe)
        if only is not None:
            cells = [c for c in cells if only(c)]
        if measures == PLAN_ONLY:
            return [Result(cell) for cell in cells]
        bar = Progress(total=len(cells), enabled=progress)
        try:
            return run_cells({info.name: worker for info, worker in opened}, cells,
                             MEASURES if measures is None else measures, progress=bar)
        finally:
            bar.close()
    finally:
        close_workers(worker for _, worker in opened)


PLAN_ONLY = ("plan",)


def _planned_ids(base: Side, head: Side, backends, precisions, settings, formats, verbose: bool) -> set[str]:
    """The ids either side plans (all shards): the union both sides deal their shards from."""
    return {r.cell.id for side in (head, base) for r in measure_side(side, backends, precisions, settings, formats,
                                                                      measures=PLAN_ONLY, verbose=verbose)}


def _pairing_key(cell, by_position: bool):
    """What pairs a base cell with a head cell: its id, or (two model files) its format, backend and precision."""
    return (cell.format, cell.backend, cell.precision) if by_position else cell.id


def _as_head_cells(base: list[Result], head: list[Result]) -> list[Result]:
    """Two model files have two names: the base's cells take the head's model name, so each pairs with
    the head cell of the same format, backend and precision."""
    names = {r.cell.model for r in head}
    if len(names) != 1:
        return base
    name = names.pop()
    return [replace(r, cell=replace(r.cell, model=name)) for r in base]


def compare_sources(base: Side, head: Side, backends: Sequence[str], precisions: Sequence[str], settings,
                    gate: GateSettings, formats=None, shard=None, verbose: bool = False, progress: bool = True,
                    log: Callable[[str], Any] = _stderr) -> dict[str, Any]:
    """Build, measure and gate both sides; returns {"verdicts", "interleaved", "base", "head", "same_artifact"}."""
    started = time.monotonic()
    if base.results_file is not None:
        base_results, _ = load_run(str(base.results_file))
        head_results, _ = load_run(str(head.results_file))
        check_overlap(base_results, head_results, base.label, head.label)
        same = same_artifact_ids(shared_pairs(base_results, head_results))
    else:
        renamed = len(base.models) == 1 and base.models != head.models  # two model files, two names
        universe = _planned_ids(base, head, backends, precisions, settings, formats, verbose) \
            if shard is not None and not renamed else set()
        log(f"head {head.describe()}: building and measuring {', '.join(head.models)}")
        head_results = measure_side(head, backends, precisions, settings, formats, shard, verbose=verbose,
                                    progress=progress, universe=universe)
        log(f"base {base.describe()}: building")
        base_built = measure_side(base, backends, precisions, settings, formats, shard, measures=(),
                                  verbose=verbose, progress=progress, universe=universe)
        if renamed:
            base_built = _as_head_cells(base_built, head_results)
        check_overlap(base_built, head_results, f"base {base.describe()}", f"head {head.describe()}")
        same = same_artifact_ids(shared_pairs(base_built, head_results))
        changed = {r.cell.id for r in head_results if r.cell.id not in same}
        log(f"{len(same)} cell(s) with byte-identical artifacts; measuring the base side of {len(changed)}")
        wanted = {_pairing_key(r.cell, renamed) for r in head_results if r.cell.id in changed}
        base_measured = measure_side(base, backends, precisions, settings, formats, shard,
                                     only=lambda cell: _pairing_key(cell, renamed) in wanted,
                                     verbose=verbose, progress=progress, universe=universe) if changed else []
        if renamed:
            base_measured = _as_head_cells(base_measured, head_results)
        measured_ids = {r.cell.id for r in base_measured}
        base_results = base_measured + [r for r in base_built if r.cell.id not in measured_ids]
    # the base cells measured since were converted again from the cache: the same files, hashed once
    pairs = [p for p in shared_pairs(base_results, head_results) if p[1].cell.id not in same]
    log(f"interleaving {len(pairs)} cell(s): both artifacts in one process, until the verdict is decided")
    found = interleave_pairs(pairs, gate, settings.threads, log=log, folders=(base.folder, head.folder),
                             on_pair=lambda cell_id: log(f"  {cell_id}") if progress else None)
    verdicts = gate_results(base_results, head_results, gate, interleaved=found, same_artifact=same)
    return {"verdicts": verdicts, "interleaved": found, "base": base_results, "head": head_results,
            "same_artifact": sorted(same), "seconds": round(time.monotonic() - started, 1)}


def to_json(outcome: dict[str, Any], base: Side, head: Side, gate: GateSettings) -> dict[str, Any]:
    verdicts: list[Verdict] = outcome["verdicts"]
    return {
        "schema": SCHEMA,
        "base": base.to_dict(), "head": head.to_dict(),
        "settings": {"threshold": gate.threshold, "memory_threshold": gate.memory_threshold,
                     "accuracy_thresholds": gate.accuracy_thresholds, "confidence": gate.confidence},
        "regressed": any(v.verdict == "regression" for v in verdicts),
        "verdicts": [v.to_dict() for v in verdicts],
        "interleaved": {cell: found.to_dict() for cell, found in outcome["interleaved"].items()},
        "same_artifact": outcome["same_artifact"],
        "seconds": outcome.get("seconds"),
        "cells": {"base": [r.to_dict(with_samples=False) for r in outcome["base"]],
                  "head": [r.to_dict(with_samples=False) for r in outcome["head"]]},
    }


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from deploybench.harness.gate.command import add_threshold_arguments
    from deploybench.harness.pipeline.settings import DEFAULT_BACKENDS, DEFAULT_PRECISIONS, add_options

    parser.description = ("Build both sides of a change here and gate it with both measured side by side: two "
                          "git refs of your project (BASE is checked out in a temporary worktree), two model "
                          "files, or two results files whose artifacts are on this machine.")
    parser.add_argument("base", metavar="BASE", help="a git ref (main, origin/main, a commit), a model file, "
                                                     "or a results file")
    parser.add_argument("head", metavar="HEAD", nargs="?", default=WORKING_TREE,
                        help="the same form as BASE; for git, default `.`: the working tree as it is")
    parser.add_argument("--models", default=None,
                        help="git refs: the models to build on each side, comma-separated "
                             "(file.py:factory[@1x3x64x64], a model file, or a zoo name), paths as in this checkout")
    parser.add_argument("--input-shape", "--input", action="append", default=None, metavar="SHAPE",
                        help="inputs of file.py:factory models as in `deploybench run`: 1x3x224x224, or "
                             "NAME:SHAPE[:DTYPE[:VALUES]] (repeat per input)")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help="backends (comma-separated)")
    parser.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS), help="precisions (comma-separated)")
    parser.add_argument("--formats", default=None, help="only these formats (comma-separated)")
    parser.add_argument("--shard", default=None, metavar="I/N", help="only shard I of N of the cells (CI jobs)")
    add_options(parser.add_argument, edge="cli")
    add_threshold_arguments(parser)
    parser.add_argument("--markdown", default=None, metavar="PATH", help="write the verdicts as Markdown (a PR comment)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the verdicts, the raw block ratios and both sides' cells as JSON")
    parser.add_argument("--output", default=None, metavar="PATH",
                        help="also write the head side's cells as a results file (for `deploybench merge` and "
                             "`report`)")
    parser.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    parser.add_argument("--verbose", action="store_true", help="show the converters' own output")


def compare_command(args: argparse.Namespace) -> int:
    """`deploybench compare`: 0 when nothing regressed, 1 on a regression, 2 on bad input."""
    from deploybench.converters.cache import default_cache_dir
    from deploybench.harness.gate.command import gate_settings_from_args
    from deploybench.harness.pipeline.plan import check_backends, check_precisions, parse_shard
    from deploybench.harness.pipeline.settings import settings_from_options

    try:
        gate = gate_settings_from_args(args)
        settings = settings_from_options(lambda dest: getattr(args, dest, None))
        # one cache for both sides, wherever their workers run: an unchanged model converts once
        settings = replace(settings, cache_dir=str(Path(settings.cache_dir or default_cache_dir()).resolve()))
        backends, precisions = parse_csv(args.backends), parse_csv(args.precisions)
        check_backends(backends)
        check_precisions(precisions)
        for path in (args.markdown, args.json, args.output):
            check_writable(path)
        from deploybench.resolve import ref_with_inputs

        models = [ref_with_inputs(ref, args.input_shape) for ref in parse_csv(args.models)]
        shard = parse_shard(args.shard) if args.shard else None
        with open_sides(args.base, args.head, models) as (base, head):
            outcome = compare_sources(base, head, backends, precisions, settings, gate,
                                      formats=parse_csv(args.formats) or None, shard=shard,
                                      verbose=args.verbose, progress=not args.no_progress)
        verdicts = outcome["verdicts"]
        title = f"{PROG}: base {base.describe()} → head {head.describe()}"
        if args.markdown:
            write_text_atomic(args.markdown, markdown_verdicts(verdicts, title=title))
        if args.json:
            write_text_atomic(args.json, json.dumps(to_json(outcome, base, head, gate), indent=1))
        if args.output:
            _save_head(args.output, outcome["head"], settings, head)
    except DeployBenchError as exc:
        print(f"{PROG}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(title)
    return print_verdicts(verdicts, PROG)


def _save_head(path: str, results: list[Result], settings, head: Side) -> None:
    from deploybench.harness.measure.machine import machine_info
    from deploybench.harness.results.io import results_document, write_results

    write_results(path, results_document(results, machine_info(),
                                         {"source": "compare", "head": head.to_dict(), **settings.to_dict()}))


def add_verdicts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Join the verdicts of several `deploybench compare --json` files (one per CI job or "
                          "shard) into one table and one exit status.")
    parser.add_argument("files", nargs="+", metavar="VERDICTS", help="`deploybench compare --json` files")
    parser.add_argument("--markdown", default=None, metavar="PATH", help="write the joined verdicts as Markdown")


def load_verdicts(path: str) -> tuple[list[Verdict], str]:
    """(verdicts, title) of a ``deploybench compare --json`` file; a one-line error for anything else."""
    from deploybench.harness.results.io import read_json

    data = read_json(path, "a `deploybench compare --json` file", "write one with `deploybench compare ... --json PATH`")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DeployBenchError(f"{path} is not a `deploybench compare --json` file (schema {SCHEMA})")
    try:
        verdicts = [Verdict(**{**v, "ci": tuple(v["ci"]) if v.get("ci") else None}) for v in data["verdicts"]]
        title = f"base {data['base']['label']} → head {data['head']['label']}"
    except (KeyError, TypeError) as exc:
        raise DeployBenchError(f"{path}: malformed verdicts ({type(exc).__name__}: {exc})") from None
    return verdicts, title


def verdicts_command(args: argparse.Namespace) -> int:
    """`deploybench verdicts`: 0 when nothing regressed, 1 on a regression, 2 on bad input or a file
    that compared nothing."""
    try:
        joined: list[Verdict] = []
        titles = []
        for path in args.files:
            verdicts, title = load_verdicts(path)
            if not verdicts:
                raise DeployBenchError(f"{path} holds no verdict: its job compared nothing")
            joined += verdicts
            titles.append(title)
        if args.markdown:
            write_text_atomic(args.markdown, markdown_verdicts(joined, title=f"deploybench: {titles[0]}"
                                                               if len(set(titles)) == 1 else "deploybench gate"))
    except DeployBenchError as exc:
        print(f"deploybench verdicts: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return print_verdicts(joined, "deploybench verdicts")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    add_compare_arguments(parser)
    return compare_command(parser.parse_args(argv))


__all__ = ["SCHEMA", "add_compare_arguments", "add_verdicts_arguments", "compare_command", "compare_sources",
           "load_verdicts", "main", "measure_side", "verdicts_command"]

if __name__ == "__main__":
    sys.exit(main())
