"""The rows every report shows (one per cell, grouped per model and machine, the best cell marked) and
the terminal table built from them. Markdown and HTML lay out the same rows."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploybench.harness.report.notes import PRECISION, STATUS, Footnotes, hit_time_cap, time_cap_text
from deploybench.harness.report.sweeps import scaling_lines
from deploybench.harness.results.cells import best_cell
from deploybench.spec import SINGLE_STREAM, Accuracy, LatencyStats, Result

BEST_MARK = "★"
UNSTABLE_MARK = "~"
BEST_LEGEND = f"{BEST_MARK} fastest median among ok cells that pass accuracy"
THROUGHPUT_LEGEND = f"in offline and server groups {BEST_MARK} marks the highest throughput"

COLUMNS = ("", "format", "backend", "precision", "median ms", "p99 ms", "± IQR", "ips", "load ms", "first ms",
           "peak MB", "size MB", "max abs err", "metric", "status")

# A detector's table adds its mAP@0.5:0.95, its mAP@0.5 change against the reference and its latency end
# to end (pre + inference + post per image), so a slow post-processing step shows next to "median ms".
DETECTOR_COLUMNS = ("mAP50-95", "mAP Δ", "e2e ms")
DETECTOR_LEGEND = ("mAP Δ: map50 minus the reference's (negative: the cell lost mAP); e2e ms: median per "
                   "image of pre-processing + inference + post-processing over held-out images "
                   "(median ms is inference alone)")


def model_key(result: Result) -> str:
    """The group a cell is shown in: its model at its sizes, threads and scenario (``resnet18 b8 t2``: a
    batch of 8 is not compared with a batch of 1 by latency), and its machine in a merged matrix
    (speeds of two machines are not compared)."""
    name = " ".join(filter(None, (result.cell.model, result.cell.variant)))
    return f"{name} @ {result.machine_id}" if result.machine_id and not result.cell.target else name


@dataclass
class ModelGroup:
    """What each report shows of one model (on one machine): its ok cells, the best and the reference."""

    name: str  # model_key
    rows: list[Result]
    best: Result | None
    reference: str | None  # what the errors are measured against


def model_groups(results: Iterable[Result]) -> list[ModelGroup]:
    """One ``ModelGroup`` per model (and machine) with an ok cell, in name order, its cells sorted by
    format, backend and precision."""
    grouped: dict[str, list[Result]] = {}
    for r in results:
        if r.ok:
            grouped.setdefault(model_key(r), []).append(r)
    groups = []
    for name, rows in sorted(grouped.items(), key=lambda item: _natural(item[0])):
        rows.sort(key=lambda r: (r.cell.format, r.cell.backend, r.cell.precision))
        reference = next((r.accuracy.reference for r in rows if r.accuracy and r.accuracy.reference), None)
        groups.append(ModelGroup(name, rows, best_cell(rows), reference))
    return groups


def _natural(text: str) -> list:
    """'resnet18 b8' before 'resnet18 b32': numbers in a name compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def best_cells(results: Iterable[Result]) -> dict[str, Result]:
    """{model_key: its ``best_cell``}; groups without one are absent."""
    return {group.name: group.best for group in model_groups(results) if group.best is not None}


def number(value: float | None, digits: int = 2) -> str:
    """A figure with as many digits as its size deserves; '–' when missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.{digits}f}"
    return f"{value:.3g}"  # sub-millisecond latencies keep three significant digits


def _error(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return "0" if value == 0 else f"{value:.1e}"


def _spread(latency: LatencyStats | None) -> str:
    """IQR as a percentage of the median: robust where a few stalls on a shared machine blow up the cv."""
    if latency is None or not latency.median:
        return "–"
    spread = latency.iqr / latency.median * 100
    return f"{spread:.0f}%" if spread >= 10 else f"{spread:.1f}%"


def _metric(accuracy: Accuracy | None) -> str:
    if accuracy is None or accuracy.metric_value is None:
        return "–"
    return f"{accuracy.metric or 'metric'} {accuracy.metric_value:.3f}"


def is_unstable(result: Result) -> bool:
    """Too noisy to trust: a wide latency spread, or a timed loop the --max-time cap cut short."""
    return result.unstable or (result.ok and hit_time_cap(result))


def _status(result: Result) -> str:
    text = "ok (accuracy fails)" if result.ok and not result.passes_accuracy else result.status
    if result.ok and hit_time_cap(result):
        reached, goal = result.extra.get("median_ci"), result.extra.get("median_ci_goal")
        # a median pinned down within its goal means the cap cut the minimum calls short, not the precision
        short = isinstance(reached, (int, float)) and not (isinstance(goal, (int, float)) and reached <= goal)
        at = f" with the median known to ±{reached:.1%}" if short else ""
        return f"{text} unstable ({time_cap_text(result)}{at})"
    return text + " unstable" if result.unstable else text


def cell_row(result: Result, is_best: bool, footnotes: Footnotes | None = None) -> list[str]:
    """The ``COLUMNS`` of one cell, as text; with ``footnotes``, the markers of its notes
    (``notes.cell_notes``) follow its precision and its status."""
    lat = result.latency_ms
    size_mb = result.artifact_bytes / 1e6 if result.artifact_bytes is not None else None
    accuracy = result.accuracy
    mark = (BEST_MARK if is_best else "") + (UNSTABLE_MARK if is_unstable(result) else "")
    def markers(column: str) -> str:
        return footnotes.markers(result, column) if footnotes is not None else ""

    return [
        mark, result.cell.format, result.cell.backend, result.cell.precision + markers(PRECISION),
        number(lat.median if lat else None), number(lat.p99 if lat else None), _spread(lat),
        number(result.throughput_ips, 1), number(result.load_ms, 1), number(result.first_inference_ms, 1),
        number(result.peak_rss_mb, 1), number(size_mb, 2),
        _error(accuracy.max_abs_error if accuracy else None), _metric(accuracy),
        _status(result) + markers(STATUS),
    ]


def _detection(result: Result) -> Mapping[str, float]:
    return (result.accuracy.per_output.get("detection") if result.accuracy else None) or {}


def is_detector(rows: Sequence[Result]) -> bool:
    # e2e_ms is a note (extra) the detector pipeline leaves even when no accuracy ran
    return any(_detection(r) or "e2e_ms" in r.extra for r in rows)


def _detector_cells(result: Result) -> list[str]:
    detection = _detection(result)
    map50_95, drop = detection.get("map50_95"), detection.get("map50_drop")
    return [f"{map50_95:.3f}" if map50_95 is not None else "–",
            f"{0.0 - drop:+.3f}" if drop is not None and math.isfinite(drop) else "–",  # 0.0 - 0.0 is +0.0
            number(result.extra.get("e2e_ms"))]


def with_detector_columns(headers: Sequence[str], table: list[list[str]], rows: Sequence[Result]
                          ) -> tuple[Sequence[str], list[list[str]]]:
    """The detector columns inserted before the last (status) column, for a detector's table only."""
    if not is_detector(rows):
        return headers, table
    return ([*headers[:-1], *DETECTOR_COLUMNS, headers[-1]],
            [[*line[:-1], *_detector_cells(r), line[-1]] for line, r in zip(table, rows)])


def _machine_name(key: str, machine: Mapping[str, Any]) -> str:
    """A machine of a run on targets is named by its target too (``box (3f2a…)``, ``local (3f2a…)``)."""
    return f"{machine['target']} ({key})" if machine.get("target") else key


def machine_line(machine: Mapping[str, Any] | None) -> str:
    """'cpu, arch, N cores, M GiB, os, python'; a merged matrix's ``{machine_id: machine}`` one per id."""
    if not machine:
        return ""
    if "machine_id" not in machine and all(isinstance(v, Mapping) for v in machine.values()):
        return "; ".join(f"{_machine_name(key, value)}: {machine_line(value)}" for key, value in machine.items())
    parts = [str(machine.get("cpu") or "")]
    if machine.get("arch"):
        parts.append(str(machine["arch"]))
    cores = machine.get("cores") or machine.get("cores_usable") or machine.get("cores_logical")
    if cores:
        parts.append(f"{cores} cores")
    if machine.get("memory_gib"):
        parts.append(f"{float(machine['memory_gib']):.1f} GiB")
    for key in ("os", "python"):
        if machine.get(key):
            parts.append(str(machine[key]))
    return ", ".join(p for p in parts if p)


def cells_not_run(results: Iterable[Result]) -> list[Result]:
    """Skipped, failed and timed-out cells, by status then cell."""
    return sorted((r for r in results if not r.ok), key=lambda r: (r.status, r.cell))


def ratio_text(ratio: float | None, ci: Sequence[float] | None) -> str:
    """'1.250× [1.120, 1.400]' of a gate verdict."""
    if ratio is None:
        return "–"
    text = f"{ratio:.3f}×"
    return text + f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else text


def simple_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Rows under headers in tabulate's "simple" layout, cells as given. tabulate draws it where it is
    installed; a device that has only the runtime install (no tabulate) still prints its results,
    in the layout "simple" gives text cells: left-aligned columns two spaces apart."""
    try:
        from tabulate import tabulate
    except ImportError:
        text = [[str(h) for h in headers], *([("" if c is None else str(c)) for c in row] for row in rows)]
        # tabulate's minimum: a header and two spaces
        widths = [max(len(text[0][i]) + 2, *(len(row[i]) for row in text[1:])) for i in range(len(headers))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in text]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def terminal_table(results: Sequence[Result], machine: Mapping[str, Any] | None = None) -> str:
    """The matrix as plain text: one table per model, then skipped / failed cells with their reasons.

    The best cell of each model (``best_cell``) is marked ★, unstable cells ~ and 'unstable' in
    their status; a cell's notes (why its accuracy fails, random calibration, a timing cut short by the
    cap) are numbered markers in its row and numbered lines under its table.
    """
    results = list(results)
    lines: list[str] = []
    if machine:
        lines.append(f"machine: {machine_line(machine)}")
    groups = model_groups(results)
    for group in groups:
        lines.append("")
        lines.append(group.name + (f"  (errors vs {group.reference})" if group.reference else ""))
        footnotes = Footnotes()
        headers, table = with_detector_columns(
            COLUMNS, [cell_row(r, r is group.best, footnotes) for r in group.rows], group.rows)
        lines.append(simple_table(table, headers))
        lines.extend(footnotes.lines())
        if is_detector(group.rows):
            lines.append(DETECTOR_LEGEND)
    scaling = scaling_lines([r for r in results if r.ok])
    if scaling:
        lines.append("")
        lines.append("scaling (throughput, items/s):")
        lines.extend(f"  {line}" for line in scaling)
    if not results:
        lines.append("no cell matched the models, backends, precisions, formats and shard asked for")
    elif not any(r.ok for r in results):
        lines.append("no cell ran successfully")
    unstable = [r for r in results if r.ok and is_unstable(r)]
    if unstable:
        lines.append("")
        lines.append(f"{UNSTABLE_MARK} unstable (the time cap came before the median was pinned down): "
                     + ", ".join(r.cell.id for r in unstable))
    others = cells_not_run(results)
    if others:
        lines.append("")
        lines.append(f"not run ({len(others)}):")
        for r in others:
            where = f" @ {r.machine_id}" if r.machine_id and not r.cell.target else ""
            lines.append(f"  {r.status:8} {r.cell.id}{where}: {r.reason or 'no reason given'}")
    if any(group.best for group in groups):
        lines.append("")
        by_throughput = any(r.cell.scenario != SINGLE_STREAM for r in results)
        lines.append(f"legend: {BEST_LEGEND}, {UNSTABLE_MARK} unstable" + (f"; {THROUGHPUT_LEGEND}" if by_throughput else ""))
    return "\n".join(lines).lstrip("\n") + "\n"


__all__ = ["BEST_MARK", "COLUMNS", "DETECTOR_COLUMNS", "UNSTABLE_MARK", "ModelGroup", "best_cells", "model_groups",
           "model_key", "simple_table", "terminal_table"]
