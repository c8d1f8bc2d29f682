"""What a reader must know about a cell beyond its figures, shown the same way in every report: a marker
``[n]`` in the cell's row and the numbered note under its table. The notes say why a cell's accuracy
check failed, that its int8 calibration ran on random inputs, and that the ``--max-time`` cap stopped
its timing before the stopping rules held (its median is not pinned down)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deploybench.converters.calibration import SOURCE_RANDOM
from deploybench.harness.measure.timing import STOPPED_BY_MAX_TIME
from deploybench.spec import Result

# Where a note's marker goes: the column the note qualifies.
PRECISION, STATUS = "precision", "status"


@dataclass(frozen=True)
class CellNote:
    column: str  # PRECISION or STATUS
    text: str


def calibration_source(result: Result) -> str | None:
    """Where the cell's int8 calibration samples came from, as the converter recorded it (None: no calibration).

    The pipeline copies the artifact's notes into ``extra["artifact"]``: ``calibration_source`` when the
    converter names it so, ``calibration`` in results written before."""
    notes = result.extra.get("artifact")
    if not isinstance(notes, Mapping):
        return None
    source = notes.get("calibration_source") or notes.get("calibration")
    return str(source) if source else None


def hit_time_cap(result: Result) -> bool:
    """True when the ``--max-time`` cap, not the stopping rules, ended the cell's timed loop."""
    return result.stopped_by == STOPPED_BY_MAX_TIME


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 9.5 else f"{value:.2g}"


def time_cap_text(result: Result) -> str:
    """'hit the 10 s cap', or 'hit the time cap' when the result does not tell the cap's size.

    The timing stage records the cap in ``extra["time_cap_s"]`` (a model too slow to reach the minimum
    samples runs on to a larger one, which the timed seconds then show). Without it, the cap lies between
    the timed seconds without the loop's last call and with it (the loop stopped on the first call that
    ended past the cap): the total is worth naming only when that last call is a small share of it."""
    samples = result.samples_ms
    total_s = sum(samples) / 1000 if samples else 0.0
    cap = result.extra.get("time_cap_s")
    if isinstance(cap, (int, float)) and cap > 0 and total_s <= 1.5 * cap:
        return f"hit the {_seconds(cap)} s cap"
    if total_s > 0 and samples[-1] / 1000 < 0.05 * total_s:
        return f"hit the {_seconds(total_s)} s cap"
    return "hit the time cap"


def cell_notes(result: Result) -> list[CellNote]:
    """The notes of one cell, in the order their markers appear in its row."""
    notes = []
    source = calibration_source(result)
    if source and source.startswith(SOURCE_RANDOM.split()[0]):
        notes.append(CellNote(PRECISION, f"{result.cell.precision} calibration used {source}: give "
                                         "--calibration-data FILE.npz (or the model calibration_data) for a "
                                         "representative accuracy"))
    kept = (result.extra.get("artifact") or {}).get("ops_in_fp32")
    if result.cell.precision == "int8ac" and isinstance(kept, list):
        shown = ", ".join(map(str, kept[:8])) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
        notes.append(CellNote(PRECISION, f"int8ac kept {len(kept)} op(s) in fp32 to hold the int8 tolerance: {shown}"
                              if kept else "int8ac kept no op in fp32: plain int8 held the int8 tolerance on the "
                                           "validation samples"))
    layers = (result.extra.get("runtime_notes") or {}).get("layer_precisions")
    if result.cell.precision in ("fp16", "bf16") and isinstance(layers, dict) and layers.get("f32"):
        # the backend's own mixed precision: which layers it kept in fp32, so a bf16 figure is read as what ran
        notes.append(CellNote(PRECISION, f"{result.cell.precision} on {result.cell.backend} ran mixed: "
                                         f"{result.precision_ran}"))
    if result.ok and not result.passes_accuracy:
        notes.append(CellNote(STATUS, f"accuracy fails: {result.tolerance.message}"))
    failed_static = (result.extra.get("runtime_notes") or {}).get("static_compile_failed")
    if failed_static:
        notes.append(CellNote(STATUS, f"measured with dynamic shapes: the backend's static compile failed "
                                      f"({failed_static})"))
    scenario = scenario_text(result)
    if scenario:
        notes.append(CellNote(STATUS, scenario))
    if result.ok and hit_time_cap(result):
        # one text for every capped cell, so a run of many shares one footnote; the status names the cap
        notes.append(CellNote(STATUS, "unstable: the timing hit the --max-time cap before the median's 95% "
                                      "confidence interval was within --median-ci of it, so the figure may move "
                                      "between runs; a quieter machine or a higher --max-time settles it"))
    return notes


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def scenario_text(result: Result) -> str | None:
    """What an offline run or a server's rate search found, in one line (None for a single-stream cell)."""
    figures = result.scenario_figures
    if not figures:
        return None
    if "samples_per_s" in figures:  # offline
        requests = figures.get("requests")
        return (f"offline: {_rate(figures['samples_per_s'])} items/s with {requests} request{'s' * (requests != 1)} "
                f"in flight (measured overlap {figures.get('mean_in_flight', 0):.2f}); latency columns: each "
                "request's time")
    budget, rate = figures.get("p99_budget_ms"), figures.get("max_rate_per_s")
    passed = [t for t in figures.get("trials", []) if t.get("rate_per_s") == rate]
    at_rate = f", p99 {passed[-1]['p99_ms']:.3g} ms there" if passed else ""
    sure = (f"; the limit lies in {_rate(figures['sure_low'])}-{_rate(figures['sure_high'])}/s with the noise counted"
            if figures.get("sure_low") and figures.get("sure_high") else "")
    if rate is None:
        return f"server: {figures.get('message') or f'no rate met p99 <= {budget} ms'}"
    return (f"server: at most {_rate(rate)} requests/s keep p99 <= {budget:g} ms{at_rate} "
            f"({len(figures.get('trials', []))} trials{sure})")


class Footnotes:
    """Numbered notes under one table; the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def marker(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def markers(self, result: Result, column: str) -> str:
        """' [1] [2]': the markers of ``result``'s notes on ``column`` ('' when none)."""
        return "".join(f" {self.marker(n.text)}" for n in cell_notes(result) if n.column == column)

    def lines(self) -> list[str]:
        return [f"[{i}] {text}" for i, text in enumerate(self.texts, start=1)]

    def __bool__(self) -> bool:
        return bool(self.texts)


__all__ = ["CellNote", "Footnotes", "calibration_source", "cell_notes", "hit_time_cap", "time_cap_text"]
