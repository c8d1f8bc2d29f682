"""Join matrices from several machines or CI shards into one matrix with the machine as a dimension.

Each merged cell carries its ``machine_id`` (``Result.machine_id``) and the merged file keeps a
``machines`` mapping ``{machine_id: machine}``. Two inputs that measured the same cell on the same
machine are refused: one of them would silently win.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploybench.harness.results.io import read_json, result_from_cell, write_text_atomic
from deploybench.harness.results.cells import SCHEMA
from deploybench.spec import Cell, DeployBenchError


def machine_id_of(machine: Mapping[str, Any] | None) -> str:
    """The machine's ``machine_id``, or a short stable hash of its description when it has none."""
    machine = dict(machine or {})
    if machine.get("machine_id"):
        return str(machine["machine_id"])
    described = {k: machine.get(k) for k in ("cpu", "cores", "memory_gib", "os", "python") if machine.get(k)}
    if not described:
        return "unknown"
    return hashlib.sha1(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _load(source: Any, index: int) -> tuple[str, dict[str, Any]]:
    """(name used in messages, matrix dict) from a path, a dict, or a Matrix-like object."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        data = read_json(path, "results file to merge", "pass JSON files written by `deploybench run --output` "
                                                         "or pytest --deploybench-json")
        name = str(path)
    elif isinstance(source, Mapping):
        data, name = dict(source), f"input #{index + 1}"
    elif hasattr(source, "to_dict"):
        data, name = source.to_dict(), f"input #{index + 1}"
    else:
        raise DeployBenchError(f"cannot merge input #{index + 1} ({type(source).__name__}): "
                               "pass a results JSON path, a matrix dict or a Matrix")
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise DeployBenchError(f"cannot merge {name}: it has no 'cells' list; is it a `deploybench run` JSON?")
    return name, data


def merge_matrices(sources: Sequence[Any], machine_id: str | None = None) -> dict[str, Any]:
    """One matrix dict (``SCHEMA``) holding every cell of ``sources`` with its ``machine_id``.

    ``sources`` are paths, matrix dicts or Matrix-like objects (with ``to_dict()``); an already merged matrix
    may be merged again. ``machine_id`` labels every input as one machine kind (CI shards run on different
    ephemeral runners of one kind); the runners' own ids are kept in that machine's ``runners``.
    Raises DeployBenchError when two sources hold the same cell for the same machine.
    """
    if not sources:
        raise DeployBenchError("nothing to merge: pass at least one results JSON")
    machines: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[Cell, str], str] = {}
    cells: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    versions: set[str] = set()
    for index, source in enumerate(sources):
        name, data = _load(source, index)
        machine = dict(data.get("machine") or {})
        own_id = machine_id_of(machine) if machine and not machine.get("merged") else None
        for known_id, known in (data.get("machines") or {}).items():
            machines.setdefault(str(known_id), dict(known))
        if own_id:
            machines.setdefault(own_id, {**machine, "machine_id": own_id})
        if data.get("deploybench_version"):
            versions.add(str(data["deploybench_version"]))
        if machine_id:
            runners = sorted({*(str(k) for k in (data.get("machines") or {})), *([own_id] if own_id else [])})
            kind = machines.setdefault(machine_id, {**(machine if own_id else {}), "machine_id": machine_id,
                                                    "runners": []})
            kind["runners"] = sorted({*kind.get("runners", []), *runners})
            for runner in runners:
                if runner != machine_id and runner in machines and "runners" not in machines[runner]:
                    del machines[runner]
        for position, cell in enumerate(data["cells"]):
            try:
                result = result_from_cell(cell, position)
            except DeployBenchError as exc:
                raise DeployBenchError(f"cannot merge {name}: {exc}") from None
            result.machine_id = machine_id or result.machine_id or own_id or machine_id_of(None)
            key = (result.cell, result.machine_id)
            if key in seen:
                raise DeployBenchError(f"cell {result.cell.id} on machine {result.machine_id} is in both {seen[key]} "
                                       f"and {name}; drop one of them or give each run its own shard")
            seen[key] = name
            cells.append(result.to_dict())
        shards.append({"source": name, "created": data.get("created"), "settings": data.get("settings") or {},
                       "cells": len(data["cells"]), "incomplete": str(data.get("incomplete") or "")})
    machines = dict(sorted(machines.items()))
    if len(machines) == 1:
        machine_summary = next(iter(machines.values()))
    else:
        machine_summary = {"machine_id": "+".join(machines) or "unknown", "merged": True,
                           "cpu": f"{len(machines)} machines"}
    return {
        "schema": SCHEMA,
        "deploybench_version": ", ".join(sorted(versions)) or None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # an interrupted shard leaves the merged matrix short of its cells too
        "incomplete": "; ".join(f"{s['source']}: {s['incomplete']}" for s in shards if s["incomplete"]),
        "machine": machine_summary,
        "machines": machines,
        "settings": {"merged_from": shards},
        "cells": cells,
    }


def add_merge_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``deploybench merge A.json B.json ... --output merged.json``."""
    parser.add_argument("inputs", nargs="+", metavar="RESULTS", help="results JSON files of shards or machines")
    parser.add_argument("--output", "-o", required=True, metavar="FILE", help="where to write the merged matrix")
    parser.add_argument("--machine-id", metavar="KIND", default=None,
                        help="label every input as this machine kind (e.g. linux-x86 for shards of one CI runner kind)")
    return parser


def merge_command(args: argparse.Namespace) -> int:
    """Write the merged matrix; 0 on success, 2 with one line on stderr on a user error."""
    try:
        merged = merge_matrices(args.inputs, machine_id=getattr(args, "machine_id", None))
        write_text_atomic(args.output, json.dumps(merged, indent=1))
    except DeployBenchError as exc:
        print(f"deploybench merge: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(merged['cells'])} cells from {len(args.inputs)} files "
          f"({len(merged['machines'])} machine(s)) into {args.output}")
    return 0
