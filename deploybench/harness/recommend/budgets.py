"""What a deployment may cost: the budgets a recommendation must keep, parsed once for the CLI and the API.

Units and spellings follow the rest of the CLI: an accuracy drop is a fraction written ``1%`` or
``0.01`` (a bare ``1`` is refused as ambiguous, as the gate's ``--threshold`` refuses it); latencies are
milliseconds, memory and size MB as the tables show them (``peak MB``, ``size MB``), throughput items
per second. A number may carry its unit (``20ms``, ``200MB``, ``50ips``); another unit is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from collections.abc import Mapping
from typing import Any

from deploybench.spec import SCENARIOS, SINGLE_STREAM, DeployBenchError, parse_fraction

MEDIAN, P99, THROUGHPUT = "median", "p99", "throughput"
RANKINGS = (MEDIAN, P99, THROUGHPUT)

# What each accuracy figure is: "auto" takes the task metric where the cell has one (held-out top-1,
# mAP@0.5) and falls back to cosine similarity with the fp32 reference, the one figure every cell of
# every task records; "agreement" is top-1 agreement with the reference (1 - agreement bounds how much
# top-1 can move, labels or not).
AUTO, METRIC, AGREEMENT, COSINE = "auto", "metric", "agreement", "cosine"
ACCURACY_FIGURES = (AUTO, METRIC, AGREEMENT, COSINE)


@dataclass(frozen=True)
class Budgets:
    """The limits a recommended cell keeps; None leaves a figure free.

    ``accuracy_drop``: how far the accuracy figure may fall below the fp32 reference's, as a fraction
    (0.01: one point of top-1). ``median_ms`` / ``p99_ms``: latency per request in ``scenario``.
    ``peak_mb``: peak resident memory of loading and running the cell. ``size_mb``: the artifact on
    disk. ``min_throughput``: items per second. ``rank_by`` picks the recommended cell among those that
    fit: the lowest median (single-stream default) or p99, or the highest throughput (offline and server
    default). Every cell must also pass its precision's tolerance (``Result.passes_accuracy``), as the
    table's ★ does, unless ``allow_tolerance_failures``.
    """

    accuracy_drop: float | None = None
    median_ms: float | None = None
    p99_ms: float | None = None
    peak_mb: float | None = None
    size_mb: float | None = None
    min_throughput: float | None = None
    scenario: str = SINGLE_STREAM
    rank_by: str | None = None
    accuracy_figure: str = AUTO
    allow_tolerance_failures: bool = False

    def __post_init__(self):
        for name in ("accuracy_drop", "median_ms", "p99_ms", "peak_mb", "size_mb", "min_throughput"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DeployBenchError(f"budget {name}={value!r}: give a finite number >= 0")
            object.__setattr__(self, name, float(value))
        if self.accuracy_drop is not None and self.accuracy_drop >= 1:
            raise DeployBenchError(f"budget accuracy_drop={self.accuracy_drop}: a drop is a fraction below 1 "
                                   "(0.01 or 1% for one point)")
        if self.scenario not in SCENARIOS:
            raise DeployBenchError(f"scenario {self.scenario!r}: choose one of {', '.join(SCENARIOS)}")
        if self.rank_by is None:
            object.__setattr__(self, "rank_by", MEDIAN if self.scenario == SINGLE_STREAM else THROUGHPUT)
        if self.rank_by not in RANKINGS:
            raise DeployBenchError(f"rank by {self.rank_by!r}: choose one of {', '.join(RANKINGS)}")
        if self.accuracy_figure not in ACCURACY_FIGURES:
            raise DeployBenchError(f"accuracy figure {self.accuracy_figure!r}: choose one of "
                                   f"{', '.join(ACCURACY_FIGURES)}")

    @classmethod
    def coerce(cls, budgets: Budgets | Mapping[str, Any] | None) -> Budgets:
        """A ``Budgets`` from itself, None (no limit), or a mapping of its fields whose values may be the
        CLI's spellings (``{"accuracy_drop": "1%", "p99_ms": "20ms", "peak_mb": 200}``)."""
        if budgets is None:
            return cls()
        if isinstance(budgets, Budgets):
            return budgets
        if not isinstance(budgets, Mapping):
            raise DeployBenchError(f"budgets must be a Budgets or a mapping of its fields, not {type(budgets).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(budgets) - known)
        if unknown:
            raise DeployBenchError(f"unknown budget(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
        values = dict(budgets)
        if isinstance(values.get("accuracy_drop"), str):
            values["accuracy_drop"] = parse_fraction(values["accuracy_drop"], "accuracy drop")
        for name, unit in _UNITS.items():
            if isinstance(values.get(name), str):
                values[name] = parse_amount(values[name], unit, name)
        return cls(**values)

    def limits(self) -> list[str]:
        """The budgets given, as people write them: ['accuracy drop <= 1.0%', 'p99 <= 20 ms']."""
        given = []
        if self.accuracy_drop is not None:
            given.append(f"accuracy drop <= {percent(self.accuracy_drop)}")
        for name, label, unit in (("median_ms", "median", "ms"), ("p99_ms", "p99", "ms"),
                                  ("peak_mb", "peak memory", "MB"), ("size_mb", "size", "MB")):
            value = getattr(self, name)
            if value is not None:
                given.append(f"{label} <= {value:g} {unit}")
        if self.min_throughput is not None:
            given.append(f"throughput >= {self.min_throughput:g} items/s")
        return given

    def describe(self) -> str:
        """One line: the budgets, the scenario and the ranking."""
        limits = ", ".join(self.limits()) or "no budget beyond each precision's tolerance"
        tolerance = "" if self.allow_tolerance_failures else "; every cell must pass its precision's tolerance"
        return f"{limits}{tolerance}; scenario {self.scenario}, fastest by {self.rank_by}"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Budget field -> its unit: the only suffix a value of it may carry.
_UNITS = {"median_ms": "ms", "p99_ms": "ms", "peak_mb": "MB", "size_mb": "MB", "min_throughput": "ips"}


def parse_amount(text: str | float, unit: str, what: str) -> float:
    """'20' or '20ms' -> 20.0 for unit 'ms'; a one-line error naming ``what`` for another unit, a percentage,
    a negative or a non-number."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    raw = str(text).strip()
    number = raw[:-len(unit)].strip() if raw.lower().endswith(unit.lower()) else raw
    try:
        value = float(number)
    except ValueError:
        raise DeployBenchError(f"{what} {text!r} is not a number of {unit}; write e.g. 20 or 20{unit}") from None
    if not math.isfinite(value) or value < 0:
        raise DeployBenchError(f"{what} {text!r}: give a finite number of {unit} >= 0")
    return value


def percent(fraction: float) -> str:
    """0.01 -> '1.0%', 0.00012 -> '0.012%', 1e-9 -> '0%': a drop in the units people budget it in (below a
    millionth it is float rounding, not a drop)."""
    value = fraction * 100
    if abs(fraction) < 1e-6:
        return "0%"
    return f"{value:.1f}%" if abs(value) >= 0.1 else f"{value:.2g}%"


__all__ = ["ACCURACY_FIGURES", "AGREEMENT", "AUTO", "Budgets", "COSINE", "MEDIAN", "METRIC", "P99", "RANKINGS",
           "THROUGHPUT", "parse_amount", "percent"]
