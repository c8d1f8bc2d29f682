"""The decision itself, plain arithmetic on ``CellFigures``: which budgets a cell breaks and by how much, the
Pareto front of the cells that fit, the one recommended, and the closest cells when nothing fits.

The recommended cell is the best by ``Budgets.rank_by`` among the cells that fit every budget, ties
broken by accuracy drop, then peak memory, then size. Compared on that same tuple of objectives, no
other fitting cell can dominate it, so it is always on the front: the front's other cells are the
alternatives (each better than it on accuracy, memory or size, worse on speed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from deploybench.harness.recommend.budgets import MEDIAN, P99, THROUGHPUT, Budgets, percent
from deploybench.harness.recommend.figures import CellFigures

# Accuracy drops closer than this are one drop on the front: a cosine of 0.9999998 against 0.9999999 is
# float rounding, and without this every fp32 cell would be an "alternative" for a millionth of a point.
DROP_RESOLUTION = 1e-4


@dataclass(frozen=True)
class Broken:
    """One budget a cell broke: which, in words (``p99 23.1 ms > 20 ms (+16%)``), and how far past its limit
    relative to it (``overshoot``: infinite where the figure was not measured, so a cell nobody measured
    is never the "closest"; 1.0 for a missed tolerance)."""

    budget: str
    text: str
    overshoot: float


def broken_budgets(figures: CellFigures, budgets: Budgets) -> list[Broken]:
    """Every budget ``figures`` breaks; empty when the cell fits. A figure a budget needs but the cell did not
    measure breaks it: a recommendation never rests on a figure nobody measured."""
    broken = []
    result = figures.result
    # A pruned model is another model: its precision's tolerance (fidelity of the conversion) cannot hold, and
    # the accuracy budget is what judges it; without one it stays judged by the tolerance, and rejected.
    judged_by_budget = bool(result.cell.prune) and budgets.accuracy_drop is not None
    if not budgets.allow_tolerance_failures and not result.passes_accuracy and not judged_by_budget:
        message = result.tolerance.message if result.tolerance else ""
        broken.append(Broken("tolerance", f"fails its precision's tolerance ({message})", 1.0))
    if budgets.accuracy_drop is not None:
        drop = figures.drop.value
        if drop is None:
            broken.append(Broken("accuracy_drop", f"accuracy drop not measured ({figures.drop.basis})", math.inf))
        elif drop > budgets.accuracy_drop:
            broken.append(Broken("accuracy_drop", f"{figures.drop.figure} drop {percent(drop)} > "
                                                  f"{percent(budgets.accuracy_drop)} "
                                                  f"(by {(drop - budgets.accuracy_drop) * 100:.2g} points)",
                                 _overshoot(drop, budgets.accuracy_drop)))
    for name, label, unit, value in (("median_ms", "median", "ms", figures.median_ms),
                                     ("p99_ms", "p99", "ms", figures.p99_ms),
                                     ("peak_mb", "peak memory", "MB", figures.peak_mb),
                                     ("size_mb", "size", "MB", figures.size_mb)):
        limit = getattr(budgets, name)
        if limit is None:
            continue
        if value is None:
            broken.append(Broken(name, f"{label} not measured{_why_missing(name, figures)}", math.inf))
        elif value > limit:
            broken.append(Broken(name, f"{label} {value:.3g} {unit} > {limit:g} {unit} "
                                       f"(+{_overshoot(value, limit):.0%})", _overshoot(value, limit)))
    if budgets.min_throughput is not None:
        value = figures.throughput_ips
        if value is None:
            broken.append(Broken("min_throughput", "throughput not measured", math.inf))
        elif value < budgets.min_throughput:
            shortfall = (budgets.min_throughput - value) / budgets.min_throughput if budgets.min_throughput else 0.0
            broken.append(Broken("min_throughput", f"throughput {value:.3g} items/s < {budgets.min_throughput:g} "
                                                   f"(-{shortfall:.0%})", shortfall))
    if rank_value(figures, budgets) is None:
        broken.append(Broken(budgets.rank_by, f"no {budgets.rank_by} measured to rank it by", math.inf))
    return broken


def _overshoot(value: float, limit: float) -> float:
    return (value - limit) / limit if limit > 0 else math.inf


def _why_missing(name: str, figures: CellFigures) -> str:
    if name == "peak_mb":
        return " (run without --no-memory)"
    if name == "size_mb" and figures.result.cell.format == "torch":
        return " (a torch cell has no artifact)"
    return ""


def rank_value(figures: CellFigures, budgets: Budgets) -> float | None:
    """The figure cells are ranked by, lower is better: median or p99 ms, or minus the throughput."""
    if budgets.rank_by == MEDIAN:
        return figures.median_ms
    if budgets.rank_by == P99:
        return figures.p99_ms
    if budgets.rank_by == THROUGHPUT:
        return -figures.throughput_ips if figures.throughput_ips is not None else None
    raise ValueError(budgets.rank_by)


def objectives(figures: CellFigures, budgets: Budgets) -> tuple[float, float, float, float]:
    """(rank figure, accuracy drop at ``DROP_RESOLUTION``, peak MB, size MB), all lower-is-better; a figure
    not measured is the worst (infinite): it can never make a cell look better."""
    def known(value: float | None) -> float:
        return math.inf if value is None else float(value)

    drop = figures.drop.value
    return (known(rank_value(figures, budgets)),
            math.inf if drop is None else round(drop / DROP_RESOLUTION) * DROP_RESOLUTION,
            known(figures.peak_mb), known(figures.size_mb))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, in the order of ``points``."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def choose(fitting: Sequence[CellFigures], budgets: Budgets) -> tuple[CellFigures | None, list[CellFigures]]:
    """(the recommended cell or None, the Pareto front of ``fitting`` best first, the recommended leading)."""
    if not fitting:
        return None, []
    ranked = sorted(fitting, key=lambda f: (objectives(f, budgets), f.cell_id))
    points = [objectives(f, budgets) for f in ranked]
    front = [ranked[i] for i in pareto_front(points)]
    return ranked[0], front


def closeness(broken: Sequence[Broken]) -> tuple[int, float]:
    """How far a rejected cell is from fitting: fewest budgets broken, then the least total overshoot."""
    return len(broken), sum(min(b.overshoot, _FAR) for b in broken)


# An overshoot past a limit of zero, or of a figure not measured, is infinite; counted as this, so sums
# still order the other cells.
_FAR = 1e9


__all__ = ["Broken", "DROP_RESOLUTION", "broken_budgets", "choose", "closeness", "dominates", "objectives",
           "pareto_front", "rank_value"]
