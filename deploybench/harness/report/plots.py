"""Plots of a matrix as inline SVG strings (matplotlib, Agg backend), for the self-contained HTML report.

Every function returns the ``<svg ...>...</svg>`` element only (no XML prolog), so it can be pasted into
HTML. Text stays text (``svg.fonttype = none``), which matplotlib writes XML-escaped.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploybench.harness.measure.tolerance import TOLERANCES
from deploybench.spec import Result

# Colour per backend, so one backend reads the same in every plot.
BACKEND_COLORS = {
    "torch": "#ee4c2c", "onnxruntime": "#1f77b4", "openvino": "#7b2cbf", "tflite": "#ff9f1c",
    "coreml": "#2a9d8f", "tensorrt": "#76b900",
}
_FALLBACK_COLOR = "#666666"
_PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "^", "int8": "D", "int8ac": "P"}
_LOG_SPAN = 20.0  # latencies spanning more than this factor get a log axis
# Errors against the reference below the fp32 tolerance are float rounding (reordered sums): plotted
# on a log axis, 1e-8 against 1e-6 would look like a real difference.
ERROR_FLOOR = TOLERANCES["fp32"]["atol"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display here, and no GUI backend ever
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({
        "svg.fonttype": "none", "svg.hashsalt": "deploybench", "font.size": 9,
        "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3,
    })
    return plt


def _to_svg(fig) -> str:
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def cell_label(result: Result, with_model: bool = False) -> str:
    """'onnx/onnxruntime/fp32' (and the model in front when asked)."""
    cell = result.cell
    label = f"{cell.format}/{cell.backend}/{cell.precision}"
    if cell.target or result.machine_id:
        label += f" @{cell.target or result.machine_id}"
    return mpl_text(f"{cell.model}: {label}" if with_model else label)


def mpl_text(text: str) -> str:
    """A name shown verbatim: a '$' would otherwise start matplotlib mathtext (and may fail to parse)."""
    return str(text).replace("$", r"\$")


def _color(result: Result) -> str:
    return BACKEND_COLORS.get(result.cell.backend, _FALLBACK_COLOR)


def _wants_log(values: Sequence[float]) -> bool:
    positive = [v for v in values if v and v > 0]
    return bool(positive) and max(positive) / min(positive) > _LOG_SPAN


def _empty(title: str, message: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.set_title(mpl_text(title))
    ax.text(0.5, 0.4, message, ha="center", va="center", color="#777777", transform=ax.transAxes)
    return _to_svg(fig)


def latency_distribution_svg(results: Sequence[Result], title: str = "Latency distribution") -> str:
    """A horizontal box plot of each ok cell's raw latency samples (ms); cells without samples are left out."""
    rows = [r for r in results if r.ok and r.samples_ms]
    if not rows:
        return _empty(title, "no latency samples recorded")
    rows.sort(key=lambda r: r.latency_ms.median if r.latency_ms else _median(r.samples_ms), reverse=True)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 0.9 + 0.34 * len(rows)))
    box = ax.boxplot([r.samples_ms for r in rows], orientation="horizontal", widths=0.6, patch_artist=True,
                     showfliers=True, flierprops={"markersize": 2, "alpha": 0.4},
                     medianprops={"color": "black"})
    for patch, r in zip(box["boxes"], rows):
        patch.set_facecolor(_color(r))
        patch.set_alpha(0.55)
    ax.set_yticks(range(1, len(rows) + 1), [cell_label(r, with_model=len({x.cell.model for x in rows}) > 1)
                                              for r in rows])
    if _wants_log([s for r in rows for s in (min(r.samples_ms), max(r.samples_ms))]):
        ax.set_xscale("log")
    ax.set_xlabel("latency per inference (ms)")
    ax.set_title(mpl_text(title))
    return _to_svg(fig)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def accuracy_axis(results: Sequence[Result]) -> tuple[str, bool]:
    """(what the y axis shows, higher is better): the task metric when every point has one and it tells the
    cells apart, else the max abs error against the reference."""
    with_metric = [r for r in results if r.accuracy and r.accuracy.metric_value is not None]
    with_error = [r for r in results if r.accuracy and r.accuracy.max_abs_error is not None]
    if with_metric and len(with_metric) == len(results):
        values = [r.accuracy.metric_value for r in with_metric]
        if max(values) - min(values) > 1e-9 or len(with_error) < len(results):
            return (with_metric[0].accuracy.metric or "metric"), True
    return "max abs error vs reference", False


def _accuracy_value(result: Result, use_metric: bool) -> float | None:
    if result.accuracy is None:
        return None
    return result.accuracy.metric_value if use_metric else result.accuracy.max_abs_error


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy, by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1] if higher_is_better else points[i][1]))
    front, best = [], None
    for i in order:
        value = points[i][1]
        if best is None or (value > best if higher_is_better else value < best):
            front.append(i)
            best = value
    return front


@dataclass
class SpeedAccuracy:
    """What the speed-vs-accuracy plot draws for one model's ok cells with both figures.

    ``points`` are (median ms, accuracy) per row, an error below ``floor`` raised to it; ``front``
    indexes the rows on the Pareto front, found among the rows that pass accuracy only (a fast cell
    with wrong outputs is no trade-off); ``fails`` indexes the rows that miss their tolerance."""

    label: str
    higher_is_better: bool
    rows: list[Result]
    points: list[tuple[float, float]]
    front: list[int]
    fails: list[int]
    floor: float | None  # errors are drawn no lower than this (None: the axis is a task metric)

    @property
    def all_at_floor(self) -> bool:
        """Every error is float rounding: the y axis would only show noise."""
        return self.floor is not None and all(y <= self.floor for _, y in self.points)


def speed_accuracy(results: Sequence[Result]) -> SpeedAccuracy | None:
    """The ``SpeedAccuracy`` of the ok cells of ``results`` that have a latency and an accuracy figure;
    None when no cell has both."""
    rows = [r for r in results if r.ok and r.latency_ms and r.accuracy is not None]
    label, higher_is_better = accuracy_axis(rows)
    rows = [r for r in rows if _accuracy_value(r, higher_is_better) is not None]
    if not rows:
        return None
    floor = None if higher_is_better else ERROR_FLOOR
    points = [(r.latency_ms.median, float(_accuracy_value(r, higher_is_better))) for r in rows]
    if floor is not None:
        # below the floor the ranking of errors is rounding noise: such cells are equally accurate
        points = [(x, max(y, floor)) for x, y in points]
    passing = [i for i, r in enumerate(rows) if r.passes_accuracy]
    front = [passing[i] for i in pareto_front([points[i] for i in passing], higher_is_better)]
    fails = [i for i, r in enumerate(rows) if not r.passes_accuracy]
    return SpeedAccuracy(label, higher_is_better, rows, points, front, fails, floor)


def speed_accuracy_svg(results: Sequence[Result], title: str = "Speed vs accuracy") -> str:
    """Median latency (ms, x) against the task metric or the max abs error (y) for the ok cells of one model,
    with the Pareto front of the cells that pass accuracy drawn as a step line and the failing cells hollow.
    When every error is below ``ERROR_FLOOR`` it says so instead of plotting rounding noise."""
    data = speed_accuracy(results)
    if data is None:
        return _empty(title, "no cell has both a latency and an accuracy figure")
    if data.all_at_floor:
        return _empty(title, f"every cell's {data.label} is below {data.floor:g} (float rounding): "
                             "they are equally accurate;\nthe latency plot compares their speed")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    # colour = backend, marker = precision; labels in the legend, since close points would overwrite each other
    for i, (r, (x, y)) in enumerate(zip(data.rows, data.points)):
        on_front, fails = i in data.front, i in data.fails
        ax.scatter([x], [y], s=70 if on_front else 40, marker=_PRECISION_MARKERS.get(r.cell.precision, "o"),
                   facecolors="none" if fails else _color(r), edgecolors=_color(r) if fails else
                   ("black" if on_front else "none"), linewidths=1.5 if fails else 1.2, zorder=3,
                   label=cell_label(r) + (" *" if on_front else "") + (" (fails accuracy)" if fails else ""))
    front_points = [data.points[i] for i in data.front]
    if len(front_points) > 1:
        xs, ys = zip(*front_points)
        ax.step(xs, ys, where="post", color="black", linewidth=1, linestyle="--",
                label="Pareto front (*) of cells that pass accuracy", zorder=2)
    if _wants_log([p[0] for p in data.points]):
        ax.set_xscale("log")
    if not data.higher_is_better:
        # errors span orders of magnitude (fp32 ~1e-6, int8 ~1e-2); no point sits below the floor
        ax.set_yscale("log")
        top = max(y for _, y in data.points)
        ax.set_ylim(data.floor / 2, max(top * 2, data.floor * 10))
        ax.axhspan(data.floor / 2, data.floor, color="#999999", alpha=0.15, zorder=1,
                   label=f"below {data.floor:g}: float rounding, drawn at {data.floor:g}")
    else:
        ax.margins(y=0.12)
    ax.margins(x=0.08)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.set_xlabel("median latency (ms, lower is better)")
    ax.set_ylabel(f"{mpl_text(data.label)} ({'higher' if data.higher_is_better else 'lower'} is better)")
    ax.set_title(mpl_text(title))
    return _to_svg(fig)


def memory_svg(results: Sequence[Result], title: str = "Peak memory") -> str:
    """Horizontal bars of each ok cell's peak RSS (MB), with the process baseline shaded when known."""
    rows = [r for r in results if r.ok and r.peak_rss_mb is not None]
    if not rows:
        return _empty(title, "no memory figure recorded")
    rows.sort(key=lambda r: r.peak_rss_mb)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * len(rows)))
    positions = range(len(rows))
    ax.barh(positions, [r.peak_rss_mb for r in rows], color=[_color(r) for r in rows], alpha=0.75)
    baselines = [r.baseline_rss_mb for r in rows]
    if any(b is not None for b in baselines):
        ax.barh(positions, [b or 0 for b in baselines], color="white", alpha=0.45, hatch="//",
                edgecolor="#999999", linewidth=0, label="process baseline")
        ax.legend(loc="lower right", fontsize=7)
    for y, r in zip(positions, rows):
        ax.text(r.peak_rss_mb, y, f" {r.peak_rss_mb:.0f}", va="center", fontsize=7)
    ax.set_yticks(list(positions), [cell_label(r, with_model=True) for r in rows])
    ax.set_xlabel("peak resident memory (MB)")
    ax.set_title(mpl_text(title))
    return _to_svg(fig)


def history_svg(series: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "Median latency across runs") -> str:
    """Lines of each cell's median (ms) across stored runs; points flagged ``regression`` get a red ring.

    ``series`` maps a cell label to points ``{"run": label, "index": position, "median": ms, "regression": bool}``
    in run order; a point's x is its run's ``index`` (runs with equal labels stay apart), or its label's
    order of appearance when points carry no index.
    """
    series = {k: [p for p in v if p.get("median") is not None] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return _empty(title, "no stored runs to compare")
    ticks: dict[Any, str] = {}  # the run's key -> its label, in order of appearance
    for points in series.values():
        for p in points:
            ticks.setdefault(_run_key(p), str(p["run"]))
    order = list(ticks)
    positions = {key: i for i, key in enumerate(sorted(order, key=lambda k: (k[0], order.index(k))))}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    medians = []
    marked_regression = False
    for name, points in sorted(series.items()):
        xs = [positions[_run_key(p)] for p in points]
        ys = [float(p["median"]) for p in points]
        medians.extend(ys)
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=mpl_text(name))
        bad = [(x, y) for x, y, p in zip(xs, ys, points) if p.get("regression")]
        if bad:
            bx, by = zip(*bad)
            ax.scatter(bx, by, s=90, facecolors="none", edgecolors="red", linewidths=1.5, zorder=4,
                       label=None if marked_regression else "regression")
            marked_regression = True
    ax.set_xticks(list(positions.values()), [mpl_text(_short(ticks[key])) for key in positions], rotation=30,
                  ha="right", fontsize=7)
    if _wants_log(medians):
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)  # from zero, so run-to-run noise does not look like a cliff
    ax.set_xlabel("stored run")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(mpl_text(title))
    if len(series) <= 12:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    return _to_svg(fig)


def _run_key(point: Mapping[str, Any]) -> tuple[int, str]:
    """A run's place on the history plot: its index when the point has one, else its label."""
    index = point.get("index")
    return (int(index), "") if index is not None else (-1, str(point["run"]))


def _short(text: str, limit: int = 22) -> str:
    """Each line of a tick label at most ``limit`` characters."""
    return "\n".join(line if len(line) <= limit else line[: limit - 1] + "…" for line in text.split("\n"))
