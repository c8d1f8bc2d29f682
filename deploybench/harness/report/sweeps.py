"""How a cell scales along what a run swept (batch size, a named axis, threads): the series and their plot.

A run with ``--batch-sizes 1,8,32`` measures each (format, backend, precision) at three batches; this
joins those cells into one line per (format, backend, precision and whatever else set them apart), so a
reader sees throughput climb and latency grow with the batch, side by side per backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from deploybench.spec import Cell, Result

THREADS = "threads"
_DASHES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v")


@dataclass
class Series:
    """One line: the cells of one (model, format, backend, precision, other variant) along ``axis``."""

    model: str
    label: str
    backend: str
    axis: str
    points: list[tuple[int, Result]] = field(default_factory=list)


def _axis_value(cell: Cell, axis: str) -> int | None:
    return (cell.threads or None) if axis == THREADS else cell.dim_sizes.get(axis)


def _without(cell: Cell, axis: str) -> Cell:
    if axis == THREADS:
        return dataclasses.replace(cell, threads=0)
    return dataclasses.replace(cell, dims=tuple((name, size) for name, size in cell.dims if name != axis))


def swept_axes(results: Sequence[Result]) -> list[str]:
    """The axes some model of ``results`` was measured at more than one value of, in a stable order."""
    axes = []
    for axis in [*dict.fromkeys(name for r in results for name, _ in r.cell.dims), THREADS]:
        for model in {r.cell.model for r in results}:
            values = {_axis_value(r.cell, axis) for r in results if r.cell.model == model}
            if len(values - {None}) > 1:
                axes.append(axis)
                break
    return axes


def scaling_series(results: Sequence[Result], axis: str) -> list[Series]:
    """The lines along ``axis``: ok cells grouped by everything but that axis, each with two points or more."""
    lines: dict[tuple, Series] = {}
    for r in results:
        value = _axis_value(r.cell, axis)
        if not r.ok or r.latency_ms is None or value is None:
            continue
        rest = _without(r.cell, axis).variant
        label = "/".join((r.cell.format, r.cell.backend, r.cell.precision)) + (f" {rest}" if rest else "")
        key = (r.cell.model, r.machine_id, label)
        where = r.cell.target or r.machine_id
        series = lines.setdefault(key, Series(r.cell.model + (f" @ {where}" if where else ""), label,
                                              r.cell.backend, axis))
        series.points.append((value, r))
    for series in lines.values():
        series.points.sort(key=lambda point: point[0])
    return [s for s in lines.values() if len(s.points) > 1]


def scaling_svg(series: Sequence[Series], title: str) -> str:
    """Median latency and throughput against the swept axis, one line per series, coloured by backend."""
    from deploybench.harness.report.plots import (
        _FALLBACK_COLOR,
        BACKEND_COLORS,
        _pyplot,
        _to_svg,
        mpl_text,
    )

    plt = _pyplot()
    fig, (latency_ax, throughput_ax) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    seen: dict[str, int] = {}
    for line in series:
        xs = [x for x, _ in line.points]
        # one colour per backend; its lines told apart by their dash and marker
        nth = seen[line.backend] = seen.get(line.backend, -1) + 1
        style = dict(color=BACKEND_COLORS.get(line.backend, _FALLBACK_COLOR), linestyle=_DASHES[nth % len(_DASHES)],
                     marker=_MARKERS[nth % len(_MARKERS)], label=mpl_text(line.label))
        latency_ax.plot(xs, [r.latency_ms.median for _, r in line.points], **style)
        throughput_ax.plot(xs, [r.throughput_ips or 0.0 for _, r in line.points], **style)
    axis = series[0].axis if series else ""
    for ax, name in ((latency_ax, "median latency per call (ms)"), (throughput_ax, "throughput (items/s)")):
        ax.set_xscale("log", base=2)
        ticks = sorted({x for line in series for x, _ in line.points})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("threads" if axis == THREADS else f"{axis} size")
        ax.set_ylabel(name)
    throughput_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(mpl_text(title), fontsize=10)
    return _to_svg(fig)


def scaling_lines(results: Sequence[Result]) -> list[str]:
    """One text line per series, for the terminal and Markdown: 'onnx/openvino/fp32 by batch: 1 → 82 items/s,
    8 → 210 items/s (2.6x)'."""
    lines = []
    for axis in swept_axes(results):
        for s in scaling_series(results, axis):
            first, last = s.points[0][1].throughput_ips, s.points[-1][1].throughput_ips
            steps = ", ".join(f"{x} → {r.throughput_ips:,.0f}/s" for x, r in s.points if r.throughput_ips)
            gain = f" ({last / first:.1f}x)" if first and last else ""
            lines.append(f"{s.model} {s.label} by {axis}: {steps}{gain}")
    return lines


__all__ = ["Series", "THREADS", "scaling_lines", "scaling_series", "scaling_svg", "swept_axes"]
