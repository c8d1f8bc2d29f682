"""Stored runs: pytest-benchmark storage (``.benchmarks/<machine_id>/NNNN_<commit>_<date>.json``, as
written by ``--benchmark-autosave``) plus ``deploybench run`` JSON files. Plain module, read-only:
a stored file is never modified; a malformed one is reported in one line and skipped.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.harness.results.io import read_json, results_from_json
from deploybench.harness.results.cells import median_ms
from deploybench.spec import DeployBenchError, Result

_RUN_NAME = re.compile(r"^(?P<id>\d{4})_(?P<rest>.*)$")


@dataclass
class StoredRun:
    """One stored run: ``id`` (``0001``, or the file stem), ``machine`` (the storage folder), ``datetime``,
    ``path``, ``commit`` (when the file records it) and its parsed JSON."""

    id: str
    machine: str
    datetime: str
    path: Path
    commit: str | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    def results(self) -> list[Result]:
        """The run's cells as ``Result`` objects, rebuilt from each benchmark's ``extra_info`` (or the run JSON)."""
        return results_from_json(self.data)[0]


def _read_run(path: Path, machine: str) -> StoredRun:
    data = read_json(path, "stored run", "it is skipped; delete or restore it")
    if not isinstance(data, dict) or not ("benchmarks" in data or "cells" in data):
        raise DeployBenchError(f"{path}: neither a pytest-benchmark file ('benchmarks') nor a deploybench run ('cells')")
    match = _RUN_NAME.match(path.stem)
    commit_info = data.get("commit_info") or {}
    commit = commit_info.get("id") or (data.get("settings") or {}).get("commit")
    stamp = data.get("datetime") or data.get("created") or commit_info.get("time") or ""
    run_machine = machine or str((data.get("machine") or {}).get("machine_id") or "")
    return StoredRun(id=match.group("id") if match else path.stem, machine=run_machine, datetime=str(stamp),
                     path=path, commit=commit, data=data)


def list_runs(storage: str | Path = ".benchmarks", warn: bool | Callable[[str], Any] = True) -> list[StoredRun]:
    """Every readable run under ``storage``, per machine folder, oldest first.

    ``storage`` is a pytest-benchmark storage directory (``<machine_id>/NNNN_*.json``; JSON files
    directly inside it are deploybench run files or pytest-benchmark JSONs) or one JSON file. A
    malformed file gives one warning line naming it (``warn``: True prints to stderr, a callable
    receives the line, False stays silent) and is skipped.
    """
    root = Path(storage)
    if root.is_file():
        candidates = [(root, "")]
    elif root.is_dir():
        candidates = [(p, p.parent.name) for p in sorted(root.glob("*/*.json"))]
        candidates += [(p, "") for p in sorted(root.glob("*.json"))]
    else:
        return []
    runs = []
    for path, machine in candidates:
        try:
            runs.append(_read_run(path, machine))
        except DeployBenchError as exc:
            if warn:
                line = f"deploybench history: skipping {exc}"
                warn(line) if callable(warn) else print(line, file=sys.stderr)
    runs.sort(key=lambda r: (r.machine, r.id, r.datetime))
    return runs


def find_run(run_id: str, storage: str | Path = ".benchmarks") -> Path:
    """The path of stored run ``run_id`` (e.g. ``0001``); one-line error when absent or ambiguous."""
    root = Path(storage)
    matches = sorted(root.glob(f"*/{run_id}_*.json")) if root.is_dir() else []
    if not matches:
        raise DeployBenchError(f"no stored run {run_id!r} in {root}; list them with `deploybench history "
                               f"--storage {root}`")
    if len(matches) > 1:
        raise DeployBenchError(f"stored run {run_id!r} exists for several machines ({', '.join(p.parent.name for p in matches)}); "
                               "pass the file path instead")
    return matches[0]


def _cell_median(run: StoredRun, cell_id: str) -> float | None:
    return next((median_ms(r) for r in run.results() if r.cell.id == cell_id and r.ok), None)


def history_table(runs: list[StoredRun], cell_id: str | None = None) -> str:
    """Runs per machine (id, date, commit, cells) and, for ``cell_id``, that cell's median per run."""
    from tabulate import tabulate

    lines = []
    for machine in dict.fromkeys(r.machine for r in runs):
        rows = []
        for run in (r for r in runs if r.machine == machine):
            row = [run.id, run.datetime, (run.commit or "–")[:12], len(run.results())]
            if cell_id:
                median = _cell_median(run, cell_id)
                row.append("–" if median is None else f"{median:.4g}")
            rows.append(row)
        headers = ["run", "date", "commit", "cells"] + ([f"{cell_id} median ms"] if cell_id else [])
        lines.append(f"machine: {machine or '(run files)'}")
        lines.append(tabulate(rows, headers=headers, tablefmt="simple"))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n" if lines else "no stored runs\n"


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=".benchmarks", help="pytest-benchmark storage or a run JSON (default .benchmarks)")
    parser.add_argument("--cell", default=None, help="show this cell's median per run, e.g. digits_cnn-onnx-onnxruntime-fp32")


def history_command(args: argparse.Namespace) -> int:
    """`deploybench history`: 0 after listing (even an empty storage), 2 when the storage path does not exist."""
    storage = Path(args.storage)
    if not storage.exists():
        print(f"deploybench history: storage {storage} does not exist; run pytest with --benchmark-autosave first",
              file=sys.stderr)
        return 2
    runs = list_runs(storage)
    if not runs:
        print(f"no stored runs in {storage}; fill it with `pytest --benchmark-autosave` (each run of the "
              "benchmarks adds one), or pass --storage a results JSON from `deploybench run --output`")
        return 0
    print(history_table(runs, getattr(args, "cell", None)), end="")
    return 0


__all__ = ["StoredRun", "add_history_arguments", "find_run", "history_command", "history_table", "list_runs"]
