"""Reading every results format deploybench meets (a ``deploybench run`` matrix, a merged matrix, a
pytest-benchmark JSON) as ``Result`` objects, and writing any file atomically."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploybench.harness.measure.stats import percentile
from deploybench.spec import DeployBenchError, LatencyStats, Result

_CELL_KEYS = ("model", "format", "backend", "precision")


def results_document(results: list[Result], machine: Mapping[str, Any], settings: Mapping[str, Any],
                     created: str | None = None, version: str | None = None, incomplete: str = "",
                     with_samples: bool = True) -> dict[str, Any]:
    """The JSON document of a results file (``cells.SCHEMA``): schema, deploybench_version, created,
    incomplete, machine, settings, cells. Written here so that every writer writes the same one."""
    from datetime import datetime, timezone

    import deploybench
    from deploybench.harness.results.cells import SCHEMA

    machines = {}
    if machine and "machine_id" not in machine and all(isinstance(v, Mapping) for v in machine.values()):
        # several machines (a run on targets): written as ``merge`` writes them, so merge, report and gate read it
        machines = {str(k): dict(v) for k, v in machine.items()}
        machine = {"machine_id": "+".join(machines), "merged": True, "cpu": f"{len(machines)} machines"}
    return {"schema": SCHEMA, "deploybench_version": version or deploybench.__version__,
            "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "incomplete": incomplete, "machine": dict(machine), **({"machines": machines} if machines else {}),
            "settings": dict(settings), "cells": [r.to_dict(with_samples=with_samples) for r in results]}


def write_results(path: str | Path, document: Mapping[str, Any]) -> Path:
    """Write a ``results_document`` atomically (``write_text_atomic``) and return the path."""
    return write_text_atomic(path, json.dumps(document, indent=1, default=str, allow_nan=False))


def check_writable(path: str | Path | None) -> None:
    """Refuse an output that cannot be written before anything is measured: a directory, a missing
    folder, a read-only folder or file. ``deploybench run``, ``compare`` and the pytest plugin call it."""
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise DeployBenchError(f"{path} is a directory; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise DeployBenchError(f"cannot write {path}: folder {folder} does not exist")
    if target.exists() and not os.access(target, os.W_OK):
        raise DeployBenchError(f"cannot write {path}: permission denied")
    probe = folder / f".{target.name}.{secrets.token_hex(6)}.probe"
    try:  # a real file: os.access says yes to root on /sys or a read-only mount
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise DeployBenchError(f"cannot write {path}: {(exc.strerror or 'not writable').lower()}") from None


def write_results_or_keep(path: str | Path, document: Mapping[str, Any]) -> tuple[Path, str]:
    """``write_results``; when that fails (a disk filled up, a folder went away during the run), the same
    document in a new file in the temporary folder, so no measurement is lost. Returns (the file written,
    the failure's one line or "")."""
    try:
        return write_results(path, document), ""
    except DeployBenchError as exc:
        import tempfile

        handle, kept = tempfile.mkstemp(prefix="deploybench-results-", suffix=".json")
        os.close(handle)
        return write_results(kept, document), str(exc)


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The parsed JSON of ``path``. A missing, unreadable or malformed file raises one line naming
    ``what`` it should have been, the file, and ``fix`` (how to get a good one); nothing is written."""
    path = Path(path)
    if not path.is_file():
        raise DeployBenchError(f"{what} {str(path)!r} does not exist; {fix}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DeployBenchError(f"{what} {str(path)!r} is not valid JSON ({_first_line(exc)}); {fix}") from None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` so that a reader sees the old file or the new one, never half.

    The text goes to a temporary file in the same folder (a rename is atomic only within one file
    system), is flushed to disk, and replaces ``path``; on any error the temporary file is removed and
    ``path`` is untouched. The file is created like ``open()`` would (0666 less the umask), not with
    ``mkstemp``'s 0600, so a report stays readable by the CI user who publishes it. An OS error
    raises a one-line ``DeployBenchError`` naming the path.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise DeployBenchError(f"cannot write {str(target)!r} ({exc.strerror or _first_line(exc)}); "
                               "choose a writable path") from None
    return target


def load_results_file(path: str | Path) -> tuple[list[Result], dict[str, Any], dict[str, Any]]:
    """(results, machine, settings) of a ``deploybench run`` / ``deploybench merge`` JSON or a
    pytest-benchmark JSON. A merged file's machine is its ``machines`` mapping ``{machine_id: machine}``
    and each of its cells has ``Result.machine_id``."""
    path = Path(path)
    data = read_json(path, "results file", "pass a JSON written by `deploybench run --output`, "
                                           "`deploybench merge` or pytest --benchmark-json")
    try:
        return results_from_json(data)
    except DeployBenchError as exc:
        raise DeployBenchError(f"results file {str(path)!r}: {exc}") from None


def results_from_json(data: Any) -> tuple[list[Result], dict[str, Any], dict[str, Any]]:
    """(results, machine, settings) from the parsed JSON of a run, a merged matrix or pytest-benchmark.

    Any document that is not what it claims to be (a list where an object belongs, text where a number
    does) is one ``DeployBenchError`` line: a results file may come from anywhere."""
    try:
        return _results_from_json(data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise DeployBenchError(f"malformed ({type(exc).__name__}: {_first_line(exc)})") from None


def _results_from_json(data: Any) -> tuple[list[Result], dict[str, Any], dict[str, Any]]:
    if not isinstance(data, dict):
        raise DeployBenchError("expected a JSON object with 'cells' (deploybench) or 'benchmarks' (pytest-benchmark)")
    if "cells" in data:
        cells = data["cells"]
        if not isinstance(cells, list):
            raise DeployBenchError("'cells' must be a list of results")
        results = [result_from_cell(c, i) for i, c in enumerate(cells)]
        machine = data.get("machine") or {}
        if (machine.get("merged") or not machine) and data.get("machines"):
            machine = data["machines"]
        return results, dict(machine), dict(data.get("settings") or {})
    if "benchmarks" in data:
        return _results_from_pytest_benchmark(data)
    raise DeployBenchError("no 'cells' (deploybench run JSON) nor 'benchmarks' (pytest-benchmark JSON) in it")


def result_from_cell(cell: Any, index: int) -> Result:
    """The ``Result`` of cell number ``index`` of a results file; a one-line error naming what is wrong."""
    if not isinstance(cell, Mapping):
        raise DeployBenchError(f"cell #{index} is not an object")
    missing = [k for k in _CELL_KEYS if k not in cell]
    if missing:
        raise DeployBenchError(f"cell #{index} lacks {', '.join(missing)}")
    if not all(isinstance(cell[k], str) and cell[k] for k in _CELL_KEYS):
        raise DeployBenchError(f"cell #{index}: {', '.join(_CELL_KEYS)} must be names (non-empty strings)")
    samples = cell.get("samples_ms") or []
    if not isinstance(samples, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in samples):
        raise DeployBenchError(f"cell #{index} ({cell['model']}): samples_ms must be a list of milliseconds")
    try:
        result = Result.from_dict(cell)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise DeployBenchError(f"cell #{index} ({cell.get('model')}) is malformed: {_first_line(exc)}") from None
    _check_figures(result, index)
    return result


def _check_figures(result: Result, index: int) -> None:
    """The figures the gate and the reports compute with are numbers (or absent)."""
    figures = [result.throughput_ips, result.peak_rss_mb, result.baseline_rss_mb, result.load_ms,
               result.first_inference_ms, *(vars(result.latency_ms).values() if result.latency_ms else ()),
               *((result.accuracy.metric_value, result.accuracy.max_abs_error, result.accuracy.cosine,
                  result.accuracy.top1_agreement) if result.accuracy else ())]
    if any(value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)))
           for value in figures):
        raise DeployBenchError(f"cell #{index} ({result.cell.model}) has a figure that is not a number")


def _results_from_pytest_benchmark(data: Mapping[str, Any]) -> tuple[list[Result], dict[str, Any], dict[str, Any]]:
    """Results from pytest-benchmark JSON: the cell and its figures in ``extra_info``, timing in ``stats``."""
    results = []
    for i, bench in enumerate(data.get("benchmarks") or []):
        info = dict(bench.get("extra_info") or {})
        # deploybench.harness.suite stores the whole Result under "result"; a user's own benchmark
        # (and files of deploybench 0.1.0) give the cell under "cell" and the figures flat.
        payload = dict(info.get("result") or info)
        cell_info = payload.pop("cell", None)
        if isinstance(cell_info, Mapping):
            payload.update(cell_info)
        params = bench.get("params") or {}
        for key in _CELL_KEYS:
            payload.setdefault(key, params.get(key) or params.get("fmt" if key == "format" else key))
        if not all(payload.get(k) for k in _CELL_KEYS):
            continue  # a benchmark that is not a deploybench cell
        result = result_from_cell(payload, i)
        stats = bench.get("stats") or {}
        if result.latency_ms is None and stats.get("median") is not None:
            result.latency_ms = _latency_from_benchmark_stats(stats)
        if not result.samples_ms and stats.get("data"):
            result.samples_ms = [float(s) * 1000.0 for s in stats["data"]]
        if result.throughput_ips is None and stats.get("ops"):
            result.throughput_ips = float(stats["ops"])
        results.append(result)
    settings = {"source": "pytest-benchmark", "commit": (data.get("commit_info") or {}).get("id")}
    machine = dict(data.get("machine_info") or {})
    machines = machine.get("deploybench_machines")
    if isinstance(machines, Mapping) and machines:  # cells that ran on targets (pytest --target)
        by_target = {str(block.get("target") or "local"): key for key, block in machines.items()}
        for result in results:
            result.machine_id = by_target.get(result.cell.target or "local", result.machine_id)
        blocks = {str(k): dict(v) for k, v in machines.items()}
        return results, blocks if len(blocks) > 1 else next(iter(blocks.values())), settings
    if isinstance(machine.get("cpu"), Mapping):
        machine["cpu"] = machine["cpu"].get("brand_raw") or machine["cpu"].get("arch") or ""
    if "node" in machine and "machine_id" not in machine:
        machine["machine_id"] = machine["node"]
    return results, machine, settings


# deploybench's LatencyStats field -> pytest-benchmark's stats key
_STATS_KEYS = {"mean": "mean", "median": "median", "min": "min", "max": "max", "stdev": "stddev", "iqr": "iqr"}


def _latency_from_benchmark_stats(stats: Mapping[str, Any]) -> LatencyStats:
    """pytest-benchmark keeps seconds and no tail percentiles; deploybench keeps milliseconds and p90-p99
    (taken from the raw samples when saved with --benchmark-save-data, else the max stands in)."""
    ms = {key: float(stats.get(src) or 0.0) * 1000.0 for key, src in _STATS_KEYS.items()}
    samples = sorted(float(s) * 1000.0 for s in stats.get("data") or [])
    tail = {f"p{q}": percentile(samples, q) if samples else ms["max"] for q in (90, 95, 99)}
    return LatencyStats(n=int(stats.get("rounds") or len(samples)), **ms, **tail,
                        cv=(ms["stdev"] / ms["mean"]) if ms["mean"] else 0.0)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


__all__ = ["check_writable", "write_results_or_keep", "load_results_file", "read_json", "result_from_cell", "results_from_json", "write_text_atomic"]
