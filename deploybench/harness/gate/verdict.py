"""Verdicts: every cell measured in both runs gets one per gated figure (latency, peak memory, each
accuracy figure), from the statistics of ``gate.statistics`` in the best mode the inputs allow."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.harness.gate.statistics import (CONFIDENCE, DEFAULT_DRIFT_ALLOWANCE, DEFAULT_THRESHOLD, IMPROVEMENT,
                                                 INCONCLUSIVE, MIN_HISTORY_RUNS, REGRESSION, UNCHANGED,
                                                 compare_interleaved, compare_two_runs, compare_with_history)
from deploybench.harness.results.history import find_run, list_runs
from deploybench.harness.results.io import load_results_file
from deploybench.harness.results.cells import median_ms
from deploybench.spec import SINGLE_STREAM, STATUS_FAILED, STATUS_TIMEOUT, DeployBenchError, Result

MODE_INTERLEAVED, MODE_HISTORY, MODE_TWO_RUN = "interleaved", "history", "two-run"
MODE_SAME_ARTIFACT = "same artifact"
# The figures gated besides "accuracy:<figure>": a cell's status (ran / failed), its artifact as a
# whole (byte-identical on both sides), latency and peak memory.
STATUS, ARTIFACT, LATENCY, MEMORY = "status", "artifact", "latency", "memory"
# Worst first: the order of every verdict table and summary.
SEVERITY = (REGRESSION, INCONCLUSIVE, IMPROVEMENT, UNCHANGED)

DEFAULT_MEMORY_THRESHOLD = 0.10
# Absolute drop of the accuracy figure (metric, top-1 agreement, cosine) allowed per precision.
DEFAULT_ACCURACY_THRESHOLDS = {"fp32": 0.001, "fp16": 0.005, "bf16": 0.01, "int8": 0.01, "int8ac": 0.01}


@dataclass
class Verdict:
    """One gated figure of one cell: ``verdict`` with the ratio current/baseline and its interval."""

    cell: str
    metric: str  # LATENCY, MEMORY or "accuracy:<figure>"
    verdict: str
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    baseline: float | None = None
    current: float | None = None
    mode: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "metric": self.metric, "verdict": self.verdict, "ratio": self.ratio,
                "ci": list(self.ci) if self.ci else None, "baseline": self.baseline, "current": self.current,
                "mode": self.mode, "reason": self.reason}


@dataclass
class GateSettings:
    """The gate's thresholds: latency and memory as fractions, accuracy as an absolute drop per precision."""

    threshold: float = DEFAULT_THRESHOLD
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    accuracy_thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACCURACY_THRESHOLDS))
    drift_allowance: float = DEFAULT_DRIFT_ALLOWANCE
    confidence: float = CONFIDENCE
    min_history_runs: int = MIN_HISTORY_RUNS

    def __post_init__(self):
        for name in ("threshold", "memory_threshold", "drift_allowance"):
            value = getattr(self, name)
            if not 0 <= value < 10:
                raise DeployBenchError(f"{name.replace('_', '-')} {value} is out of range; give a fraction like 0.05 "
                                       "or a percentage like 5%")
        if not 0.5 <= self.confidence < 1:
            raise DeployBenchError(f"confidence {self.confidence} must lie in [0.5, 1), e.g. 0.99")


def _latency_verdict(cell_id: str, base: Result, cur: Result, settings: GateSettings,
                     history: Sequence[float] | None, interleaved: Any | None) -> Verdict | None:
    if base.cell.scenario != SINGLE_STREAM:
        # an offline or server figure is items per second from a whole load run; the interleaved re-run
        # times one request at a time, so it cannot judge it: shown, never judged
        before, after = base.throughput_ips, cur.throughput_ips
        return Verdict(cell_id, LATENCY, INCONCLUSIVE, after / before if before and after else None, None, before,
                       after, MODE_TWO_RUN, f"{base.cell.scenario} throughput (items/s) from two separate runs: shown, "
                       "not judged; gate the single-stream cell of the same model for latency")
    base_median, cur_median = median_ms(base), median_ms(cur)
    if interleaved is not None and interleaved.ratios:
        # the medians beside the ratio are the interleaved blocks', not the two runs'
        verdict, ratio, low, high = compare_interleaved(interleaved.ratios, settings.threshold, settings.confidence)
        return Verdict(cell_id, LATENCY, verdict, ratio, (low, high), float(np.median(interleaved.baseline_ms)),
                       float(np.median(interleaved.current_ms)), MODE_INTERLEAVED,
                       f"{len(interleaved.ratios)} interleaved block pairs of {interleaved.calls} calls")
    if base_median is None or cur_median is None:
        return None
    cur_samples = cur.samples_ms or [cur_median]
    if history:
        verdict, ratio, low, high = compare_with_history(history, cur_samples, settings.threshold,
                                                         settings.confidence, settings.min_history_runs,
                                                         settings.drift_allowance)
        note = f"against {len(history)} stored runs"
        if len(history) < settings.min_history_runs:
            note += (f" (fewer than {settings.min_history_runs}: drift unknown, "
                     f"allowance {settings.drift_allowance:.0%})")
        return Verdict(cell_id, LATENCY, verdict, ratio, (low, high), base_median, cur_median, MODE_HISTORY, note)
    base_samples = base.samples_ms or [base_median]
    _verdict, ratio, low, high = compare_two_runs(base_samples, cur_samples, settings.threshold,
                                                  settings.drift_allowance, settings.confidence)
    # Two runs cannot tell a change from drift between them (identical files have read 0.61x on a busy
    # box): the ratio is shown, never judged. `deploybench compare` measures both sides interleaved.
    return Verdict(cell_id, LATENCY, INCONCLUSIVE, ratio, (low, high), base_median, cur_median, MODE_TWO_RUN,
                   "two separate runs: drift between them is not measured, so latency is not judged; "
                   "`deploybench compare` or --interleave judges it")


def _memory_verdict(cell_id: str, base: Result, cur: Result, settings: GateSettings) -> Verdict | None:
    if not base.peak_rss_mb or not cur.peak_rss_mb:
        return None
    ratio = cur.peak_rss_mb / base.peak_rss_mb
    limit = 1 + settings.memory_threshold
    verdict = REGRESSION if ratio > limit else IMPROVEMENT if ratio < 1 / limit else UNCHANGED
    return Verdict(cell_id, MEMORY, verdict, ratio, None, base.peak_rss_mb, cur.peak_rss_mb, "",
                   f"peak RSS MB, threshold +{settings.memory_threshold:.0%}")


_ACCURACY_FIGURES = ("metric_value", "top1_agreement", "cosine")


def _accuracy_verdicts(cell_id: str, base: Result, cur: Result, settings: GateSettings) -> list[Verdict]:
    if base.accuracy is None or cur.accuracy is None:
        return []
    allowed = settings.accuracy_thresholds.get(cur.cell.precision,
                                               DEFAULT_ACCURACY_THRESHOLDS.get(cur.cell.precision, 0.01))
    verdicts = []
    for figure in _ACCURACY_FIGURES:
        before, after = getattr(base.accuracy, figure), getattr(cur.accuracy, figure)
        if before is None or after is None:
            continue
        drop = before - after
        name = cur.accuracy.metric if figure == "metric_value" and cur.accuracy.metric else figure
        verdict = REGRESSION if drop > allowed else IMPROVEMENT if drop < -allowed else UNCHANGED
        verdicts.append(Verdict(cell_id, f"accuracy:{name}", verdict, (after / before) if before else None, None,
                                before, after, "", f"drop {drop:+.4f}, allowed {allowed:g} for {cur.cell.precision}"))
    return verdicts


def _status_verdict(cell_id: str, base: Result, cur: Result) -> Verdict | None:
    """A cell that ran before and fails now is a regression of its own (a model that no longer converts
    or loads); one that failed before and runs now an improvement. Skips (a backend missing here) are
    not changes of the model."""
    if base.ok and cur.status == STATUS_FAILED or base.ok and cur.status == STATUS_TIMEOUT:
        return Verdict(cell_id, STATUS, REGRESSION, None, None, None, None, "", f"ran before; now {cur.status}: "
                       f"{cur.reason}".splitlines()[0])
    if cur.ok and base.status in (STATUS_FAILED, STATUS_TIMEOUT):
        return Verdict(cell_id, STATUS, IMPROVEMENT, None, None, None, None, "", f"{base.status} before; runs now")
    return None


def gate_results(baseline: Iterable[Result], current: Iterable[Result], settings: GateSettings | None = None,
                 history: Mapping[str, Sequence[float]] | None = None,
                 interleaved: Mapping[str, Any] | None = None,
                 same_artifact: Collection[str] = ()) -> list[Verdict]:
    """Verdicts for every cell in both ``baseline`` and ``current``: a status change, else (both ran)
    latency, memory and each accuracy figure. A cell on one side only is ``inconclusive`` with the
    side it is missing from, so a renamed or new cell is listed, never silently ungated.

    ``history`` maps a cell id to stored run medians (ms); ``interleaved`` maps a cell id to the
    ``Interleaved`` block pairs of a re-run of both artifacts; ``same_artifact`` holds the ids of
    cells whose two artifacts are byte-identical: unchanged without being timed.
    """
    settings = settings or GateSettings()
    base_by_id = {r.cell.id: r for r in baseline}
    current = list(current)
    verdicts: list[Verdict] = []
    current_ids = {r.cell.id for r in current}
    verdicts += [Verdict(cell_id, STATUS, INCONCLUSIVE, reason="in the baseline only: not gated")
                 for cell_id in base_by_id if cell_id not in current_ids]
    for cur in current:
        cell_id = cur.cell.id
        base = base_by_id.get(cell_id)
        if base is None:
            verdicts.append(Verdict(cell_id, STATUS, INCONCLUSIVE, reason="new: not in the baseline, not gated"))
            continue
        status = _status_verdict(cell_id, base, cur)
        if status is not None:
            verdicts.append(status)
            continue
        if not (base.ok and cur.ok):
            continue
        if cell_id in same_artifact:
            verdicts.append(Verdict(cell_id, ARTIFACT, UNCHANGED, 1.0, None, None, None, MODE_SAME_ARTIFACT,
                                    "identical artifacts (same bytes; torch: same code and weights): nothing to measure"))
            continue
        latency = _latency_verdict(cell_id, base, cur, settings, (history or {}).get(cell_id),
                                   (interleaved or {}).get(cell_id))
        if latency:
            verdicts.append(latency)
        memory = _memory_verdict(cell_id, base, cur, settings)
        if memory:
            verdicts.append(memory)
        verdicts.extend(_accuracy_verdicts(cell_id, base, cur, settings))
    return verdicts


def has_regression(verdicts: Iterable[Verdict]) -> bool:
    return any(v.verdict == REGRESSION for v in verdicts)


def by_severity(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """The verdicts worst first (``SEVERITY``), then by cell and figure."""
    rank = {name: i for i, name in enumerate(SEVERITY)}
    return sorted(verdicts, key=lambda v: (rank.get(v.verdict, len(rank)), v.cell, v.metric))


def verdict_summary(verdicts: Iterable[Verdict]) -> str:
    """'1 regression, 3 unchanged' (worst first), or 'no comparable cells'."""
    counts: dict[str, int] = {}
    for v in by_severity(verdicts):
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in counts.items()) or "no comparable cells"


def verdict_table(verdicts: Sequence[Verdict], markdown: bool = False) -> str:
    """The verdicts as a text (or GitHub Markdown) table, regressions first."""
    from tabulate import tabulate

    rows = []
    for v in by_severity(verdicts):
        ratio = "–" if v.ratio is None else f"{v.ratio:.3f}"
        if v.ci:
            ratio += f" [{v.ci[0]:.3f}, {v.ci[1]:.3f}]"
        rows.append([v.cell, v.metric, v.verdict, ratio, _fmt(v.baseline), _fmt(v.current), v.mode, v.reason])
    headers = ["cell", "figure", "verdict", "ratio [CI]", "baseline", "current", "mode", "note"]
    return tabulate(rows, headers=headers, tablefmt="github" if markdown else "simple")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def markdown_verdicts(verdicts: Sequence[Verdict], title: str = "deploybench gate") -> str:
    """A Markdown section: a one-line summary and the verdict table."""
    return f"## {title}\n\n**{verdict_summary(verdicts)}**\n\n{verdict_table(verdicts, markdown=True)}\n"


# ---------------------------------------------------------------------------------------------
# the runs to gate, and the history that measures drift
# ---------------------------------------------------------------------------------------------

def load_run(ref: str, storage: str | Path = ".benchmarks") -> tuple[list[Result], Path]:
    """(results, path) of a pytest-benchmark JSON, a ``deploybench run`` JSON, or a storage id like ``0001``."""
    path = Path(ref)
    if not path.is_file() and ref.isdigit():
        path = find_run(ref, storage)
    results, _machine, _settings = load_results_file(path)
    return results, path


def history_medians(storage: str | Path, exclude: Iterable[Path] = (), machine: str | None = None
                    ) -> dict[str, list[float]]:
    """{cell id: [median ms per stored run, oldest first]} of the runs in ``storage`` except ``exclude``.

    With ``machine``, only that machine's runs count: another machine's speed is not drift.
    """
    skip = {Path(p).resolve() for p in exclude}
    medians: dict[str, list[float]] = {}
    for run in list_runs(storage, warn=False):
        if Path(run.path).resolve() in skip or (machine and run.machine and run.machine != machine):
            continue
        for result in run.results():
            median = median_ms(result) if result.ok else None
            if median:
                medians.setdefault(result.cell.id, []).append(median)
    return medians


def machine_of(path: Path, storage: str | Path) -> str | None:
    """The machine a stored run file belongs to: its folder inside ``storage``, else the machine it records."""
    for run in list_runs(path, warn=False):
        folder = Path(path).resolve().parent
        if folder.parent == Path(storage).resolve():
            return folder.name  # a pytest-benchmark storage file: its machine folder
        return run.machine or None
    return None


__all__ = ["DEFAULT_ACCURACY_THRESHOLDS", "DEFAULT_MEMORY_THRESHOLD", "LATENCY", "MEMORY", "SEVERITY", "GateSettings",
           "Verdict", "by_severity", "gate_results", "has_regression", "history_medians", "load_run", "machine_of",
           "markdown_verdicts", "verdict_summary", "verdict_table"]
