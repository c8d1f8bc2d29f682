"""A matrix: all results of a run, the machine and the settings, and the report built from them. Saved and
loaded as JSON through ``results`` (the schema's one home); shown as the terminal table or, in a
notebook, as the HTML report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploybench.harness.report.table import terminal_table
from deploybench.harness.results.cells import SCHEMA, best_cell
from deploybench.harness.results.io import (read_json, result_from_cell, results_document, write_results,
                                            write_results_or_keep)
from deploybench.spec import STATUS_FAILED, STATUS_TIMEOUT, DeployBenchError, Result


def _version() -> str:
    import deploybench

    return deploybench.__version__


@dataclass
class Matrix:
    """All results of a run, the machine and the settings: save/load as JSON, show as a table.
    ``incomplete`` says why the run stopped before all its cells ran (empty when it finished)."""

    results: list[Result]
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    deploybench_version: str = field(default_factory=_version)
    incomplete: str = ""

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        """The JSON document: schema, deploybench_version, created, incomplete, machine, settings, cells."""
        return results_document(self.results, self.machine, self.settings, self.created, self.deploybench_version,
                                self.incomplete, with_samples)

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` atomically (``write_text_atomic``) and return the path."""
        return write_results(path, self.to_dict())

    def save_or_keep(self, path: str | Path) -> tuple[Path, str]:
        """``save``, or when ``path`` cannot be written at the end of a run, a file in the temporary
        folder: (the file written, the failure's one line or "")."""
        return write_results_or_keep(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "matrix") -> Matrix:
        """A ``Matrix`` from its JSON document; a one-line error for a document of another kind."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA or not isinstance(data.get("cells"), list):
            raise DeployBenchError(f"{source} is not a deploybench matrix (expected schema {SCHEMA!r} and a "
                                   "'cells' list); write it with `deploybench run --output`")
        try:
            results = [result_from_cell(cell, i) for i, cell in enumerate(data["cells"])]
        except DeployBenchError as exc:
            raise DeployBenchError(f"{source}: {exc}; regenerate it with `deploybench run --output`") from None
        machine = dict(data.get("machine") or {})
        if machine.get("merged") and isinstance(data.get("machines"), Mapping):  # {machine_id: machine}
            machine = dict(data["machines"])
        return cls(results=results, machine=machine,
                   settings=dict(data.get("settings") or {}), created=str(data.get("created", "")),
                   deploybench_version=str(data.get("deploybench_version", "")),
                   incomplete=str(data.get("incomplete") or ""))

    @classmethod
    def load(cls, path: str | Path) -> Matrix:
        """Read a matrix saved by ``save``; raises a one-line ``DeployBenchError`` for a missing or malformed file."""
        data = read_json(path, "matrix file", "regenerate it with `deploybench run --output`")
        return cls.from_dict(data, source=f"matrix file {path}")

    def table(self) -> str:
        """The matrix as the terminal table (one table per model, then cells not run)."""
        return terminal_table(self.results, machine=self.machine)

    def _repr_html_(self) -> str:
        from deploybench.harness.report.html import html_report  # matplotlib: only in a notebook

        return html_report(self.results, machine=self.machine)

    def best(self, model: str | None = None) -> Result | None:
        """``best_cell`` of this matrix: the fastest ok cell (of ``model``) that passes accuracy, or None."""
        return best_cell(self.results, model)

    def problems(self) -> list[Result]:
        """Cells that did not run ok (skipped, failed, timeout), in run order."""
        return [r for r in self.results if not r.ok]

    @property
    def failed(self) -> bool:
        """True when any cell failed or timed out (skips are not failures)."""
        return any(r.status in (STATUS_FAILED, STATUS_TIMEOUT) for r in self.results)


__all__ = ["Matrix"]
