"""Backends side by side: each model's cells against its baseline cell (speed-up, memory, accuracy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploybench.harness.report.matrix import Matrix
from deploybench.spec import DeployBenchError


@dataclass
class Comparison:
    """Each model's cells against its baseline cell: speed-up, memory ratio, accuracy delta, best first."""

    baseline: str
    rows: list[dict[str, Any]]

    def table(self) -> str:
        """The comparison as a terminal table."""
        from tabulate import tabulate

        return tabulate(self._display_rows(), headers="keys", tablefmt="simple")

    def _repr_html_(self) -> str:
        from tabulate import tabulate

        return tabulate(self._display_rows(), headers="keys", tablefmt="html")

    def _display_rows(self) -> list[dict[str, Any]]:
        def fmt(value, pattern):
            return pattern.format(value) if value is not None else ""

        return [{"model": r["model"], "cell": r["cell"], "status": r["status"],
                 "median ms": fmt(r["median_ms"], "{:.3f}"), "speed-up": fmt(r["speedup"], "{:.2f}x"),
                 "memory ratio": fmt(r["memory_ratio"], "{:.2f}"),
                 "accuracy delta": fmt(r["accuracy_delta"], "{:+.4f}"),
                 "max abs err": fmt(r["max_abs_error"], "{:.2e}")} for r in self.rows]


def compare_backends(matrix_or_results, baseline: str = "torch", model: str | None = None) -> Comparison:
    """Return a ``Comparison``: each cell of each model against the baseline cell (same model, ``baseline``
    backend in its native format, fp32): speed-up = baseline median / cell median, memory ratio =
    cell peak RSS / baseline peak RSS, accuracy delta = cell metric - baseline metric. Rows are
    ordered per model by speed-up, fastest first; figures are None where either side lacks them."""
    results = matrix_or_results.results if isinstance(matrix_or_results, Matrix) else list(matrix_or_results)
    models = list(dict.fromkeys(r.cell.model for r in results if model is None or r.cell.model == model))
    if model is not None and not models:
        raise DeployBenchError(f"no cells of model {model!r} in these results; "
                               f"models present: {', '.join(sorted({r.cell.model for r in results}))}")
    rows = []
    for name in models:
        cells = [r for r in results if r.cell.model == name]
        candidates = [r for r in cells if r.cell.backend == baseline and r.cell.precision == "fp32" and r.ok]
        native = _formats_of(baseline)
        candidates.sort(key=lambda r: native.index(r.cell.format) if r.cell.format in native else len(native))
        base = candidates[0] if candidates else None
        model_rows = []
        for r in cells:
            median = r.latency_ms.median if r.latency_ms else None
            base_median = base.latency_ms.median if base and base.latency_ms else None
            metric = r.accuracy.metric_value if r.accuracy else None
            base_metric = base.accuracy.metric_value if base and base.accuracy else None
            model_rows.append({
                "model": name, "cell": r.cell.id, "format": r.cell.format, "backend": r.cell.backend,
                "precision": r.cell.precision, "status": r.status, "is_baseline": r is base,
                "median_ms": median,
                "speedup": base_median / median if median and base_median else None,
                "memory_ratio": r.peak_rss_mb / base.peak_rss_mb if base and r.peak_rss_mb and base.peak_rss_mb
                else None,
                "accuracy_delta": metric - base_metric if metric is not None and base_metric is not None else None,
                "max_abs_error": r.accuracy.max_abs_error if r.accuracy else None,
            })
        model_rows.sort(key=lambda row: (row["speedup"] is None, -(row["speedup"] or 0)))
        rows.extend(model_rows)
    return Comparison(baseline=baseline, rows=rows)


def _formats_of(backend: str) -> tuple[str, ...]:
    """The backend's formats, its native one first (what its engine class says); () for an unknown one."""
    from deploybench.engines import ENGINES, engine_class

    return tuple(engine_class(backend).formats) if backend in ENGINES.names() else ()


__all__ = ["Comparison", "compare_backends"]
