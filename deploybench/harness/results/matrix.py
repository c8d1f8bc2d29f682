"""A matrix: all results of a run, the machine and the settings; saved and loaded as JSON."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploybench.spec import STATUS_FAILED, STATUS_TIMEOUT, DeployBenchError, Result

SCHEMA = "deploybench.matrix/1"


def _version() -> str:
    import deploybench

    return deploybench.__version__


@dataclass
class Matrix:
    """All results of a run, the machine and the settings: save/load as JSON, show as a table."""

    results: list[Result]
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    deploybench_version: str = field(default_factory=_version)

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        """The JSON document: schema, deploybench_version, created, machine, settings, cells."""
        return {"schema": SCHEMA, "deploybench_version": self.deploybench_version, "created": self.created,
                "machine": self.machine, "settings": self.settings,
                "cells": [r.to_dict(with_samples=with_samples) for r in self.results]}

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` atomically (a temporary file renamed over it) and return the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(self.to_dict(), stream, indent=1, default=str, allow_nan=False)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "matrix") -> Matrix:
        """A ``Matrix`` from its JSON document; a one-line error for a document of another kind."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA or not isinstance(data.get("cells"), list):
            raise DeployBenchError(f"{source} is not a deploybench matrix (expected schema {SCHEMA!r} and a "
                                   "'cells' list); write it with `deploybench run --output`")
        try:
            results = [Result.from_dict(cell) for cell in data["cells"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DeployBenchError(f"{source} has a malformed cell ({type(exc).__name__}: {exc}); "
                                   "regenerate it with `deploybench run --output`") from None
        return cls(results=results, machine=dict(data.get("machine") or {}),
                   settings=dict(data.get("settings") or {}), created=str(data.get("created", "")),
                   deploybench_version=str(data.get("deploybench_version", "")))

    @classmethod
    def load(cls, path: str | Path) -> Matrix:
        """Read a matrix saved by ``save``; raises a one-line ``DeployBenchError`` for a missing or malformed file."""
        from deploybench.harness.results.io import read_json

        data = read_json(path, "matrix file", "regenerate it with `deploybench run --output`")
        return cls.from_dict(data, source=f"matrix file {path}")

    def table(self) -> str:
        """The matrix as a terminal table (the report module's, or a plain fallback)."""
        try:
            from deploybench.harness.report.render import terminal_table
        except ImportError:
            return plain_table(self.results)
        return terminal_table(self.results, machine=self.machine)

    def _repr_html_(self) -> str:
        try:
            from deploybench.harness.report.render import html_report
            return html_report(self.results, machine=self.machine)
        except Exception:  # the report module is optional here; a notebook still gets a table
            from tabulate import tabulate

            return tabulate(_rows(self.results), headers="keys", tablefmt="html")

    def best(self, model: str | None = None) -> Result | None:
        """The ok cell with the lowest median latency (of ``model`` when given), or None."""
        candidates = [r for r in self.results if r.ok and r.latency_ms
                      and (model is None or r.cell.model == model)]
        return min(candidates, key=lambda r: r.latency_ms.median, default=None)

    def problems(self) -> list[Result]:
        """Cells that did not run ok (skipped, failed, timeout), in run order."""
        return [r for r in self.results if not r.ok]

    @property
    def failed(self) -> bool:
        """True when any cell failed or timed out (skips are not failures)."""
        return any(r.status in (STATUS_FAILED, STATUS_TIMEOUT) for r in self.results)


def _rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        lat, acc = r.latency_ms, r.accuracy
        rows.append({
            "model": r.cell.model, "format": r.cell.format, "backend": r.cell.backend, "precision": r.cell.precision,
            "status": r.status,
            "median ms": f"{lat.median:.3f}" if lat else "",
            "p90 ms": f"{lat.p90:.3f}" if lat else "",
            "ips": f"{r.throughput_ips:.1f}" if r.throughput_ips else "",
            "load ms": f"{r.load_ms:.0f}" if r.load_ms is not None else "",
            "peak MB": f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "",
            "size KB": f"{r.artifact_bytes / 1024:.0f}" if r.artifact_bytes else "",
            "max abs err": f"{acc.max_abs_error:.2e}" if acc and acc.max_abs_error is not None else "",
            "metric": f"{acc.metric} {acc.metric_value:.4f}" if acc and acc.metric_value is not None else "",
        })
    return rows


def plain_table(results: Sequence[Result]) -> str:
    """A tabulate table of the results: one row per cell with latency, memory, size and error."""
    from tabulate import tabulate

    text = tabulate(_rows(results), headers="keys", tablefmt="simple")
    problems = [r for r in results if not r.ok]
    if problems:
        text += f"\n\nnot run ({len(problems)}):\n" + "\n".join(
            f"  {r.status:8} {r.cell.id}: {r.reason}" for r in problems)
    return text


