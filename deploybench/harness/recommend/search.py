"""Search where it pays: which cells to measure next, decided from the results so far, so the prune amounts
and calibration sizes a recommendation could ship are explored without measuring their cross-product.

Every decision is a pure function of (base cells, results so far, budgets, search space): ``next_cells``
measures nothing and reads no clock, so each rule is tested on made-up results; ``search_run`` is the loop
that measures what it asks for under a time budget.

The rules, each because of what the dimension can and cannot do:

- The base cells (no pruning, the default calibration) are measured first: every later step is judged
  against its line's base.
- Prune amounts are tried in increasing order on each line whose base runs and keeps the accuracy budget.
  A line stops at the first amount that breaks the accuracy budget (more pruning removes more channels,
  it cannot win accuracy back) or that does not beat the best of its line so far by more than the noise
  (on the ranking figure, or on size or memory when a budget is set on them; an artifact that is smaller
  without a size budget to meet is no reason to prune further). The noise is a floor (``NOISE``, what two
  runs of one cell differ by on a shared machine) and, by median, the two medians' own 95% intervals:
  a gain must clear both. Neither sees the machine's load change between two cells; only interleaving
  (``deploybench compare``) does, so a recommendation resting on a small gain says so (``caveats``). Without an accuracy budget pruning is not
  explored: a pruned model can never keep its precision's tolerance, so it could never be recommended.
- Larger calibration sets are tried only on int8 lines whose base missed the accuracy budget (or its
  tolerance), in increasing size; a line stops at the first size that meets the budget (larger sets cost
  conversion time and win nothing more a budget asks for) or that does not lower the accuracy drop.
- Lines are explored breadth first, most promising (best base by the ranking figure) first: with the
  time budget spent, what is left unexplored is the larger step on the less promising lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from deploybench.harness.recommend.budgets import MEDIAN, THROUGHPUT, Budgets
from deploybench.harness.recommend.decide import DROP_RESOLUTION, broken_budgets, rank_value
from deploybench.harness.recommend.figures import CellFigures, cell_figures, group_key
from deploybench.spec import INT8_PRECISIONS, Cell, DeployBenchError, Result

DEFAULT_PRUNES = (0.1, 0.25, 0.5)
DEFAULT_CALIBRATIONS = (256, 1024)
# Two measurements of one cell on a shared machine differ by this much (the recommendation's TOO_CLOSE):
# a step has to beat its line's best by more to count as a gain.
NOISE = 0.05
ACCURACY_BUDGETS = ("tolerance", "accuracy_drop")
PRUNE, CALIBRATION = "prune", "calibration"


@dataclass(frozen=True)
class SearchSpace:
    """The steps each dimension may take (prune fractions, calibration sample counts), in the order tried,
    and the relative ``noise`` a latency gain must beat."""

    prunes: tuple[float, ...] = DEFAULT_PRUNES
    calibrations: tuple[int, ...] = DEFAULT_CALIBRATIONS
    noise: float = NOISE

    def __post_init__(self):
        from deploybench.converters.calibration import DEFAULT_SAMPLES

        prunes = tuple(sorted({float(p) for p in self.prunes if p}))
        if any(not 0.0 < p < 1.0 for p in prunes):
            raise DeployBenchError(f"search prune amounts {list(self.prunes)} must be fractions in [0, 1), "
                                   "e.g. --prune 0.1,0.25,0.5")
        object.__setattr__(self, "prunes", prunes)
        # the default size is the base cell's: only larger sets are a step
        object.__setattr__(self, "calibrations", tuple(sorted({int(n) for n in self.calibrations
                                                               if int(n) > DEFAULT_SAMPLES})))
        if not 0.0 <= self.noise < 1.0:
            raise DeployBenchError(f"search noise {self.noise} must be a fraction in [0, 1), e.g. 0.05")


@dataclass(frozen=True)
class Stop:
    """Why a dimension of one line (``line``: its base cell's id) is explored no further."""

    line: str
    dimension: str
    reason: str

    def __str__(self) -> str:
        return f"{self.line} {self.dimension}: {self.reason}"


@dataclass
class Decision:
    """What to measure next (most promising line first; empty: the search is over) and every dimension
    closed so far, with why."""

    cells: list[Cell] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)


def next_cells(base: Sequence[Cell], results: Iterable[Result], budgets: Budgets, space: SearchSpace) -> Decision:
    """The cells to measure next, given the ``results`` so far: the base cells not yet measured, else one
    step per open (line, dimension). Pure: no cell is run and no clock is read."""
    measured = {r.cell: r for r in results}
    missing = [c for c in base if c not in measured]
    if missing:
        return Decision(cells=missing)
    figures = _figures(measured.values(), budgets)
    decision = Decision()
    if space.prunes and budgets.accuracy_drop is None:
        decision.stops.append(Stop("*", PRUNE, "not explored: no accuracy budget (--max-accuracy-drop); a pruned "
                                              "model never keeps its precision's tolerance, so it could not be chosen"))
    for line in sorted(base, key=lambda c: _promise(figures.get(c), budgets)):
        for dimension, step in ((PRUNE, _next_prune), (CALIBRATION, _next_calibration)):
            if dimension == PRUNE and (not space.prunes or budgets.accuracy_drop is None):
                continue
            if dimension == CALIBRATION and (not space.calibrations or line.precision not in INT8_PRECISIONS):
                continue
            cell, reason = step(line, measured, figures, budgets, space)
            if cell is not None:
                decision.cells.append(cell)
            elif reason:
                decision.stops.append(Stop(line.id, dimension, reason))
    return decision


def _figures(results: Iterable[Result], budgets: Budgets) -> dict[Cell, CellFigures]:
    """Each ok cell's figures, its accuracy drop against its own group's reference (as ``recommend`` weighs it)."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault(group_key(r), []).append(r)
    return {f.result.cell: f for rows in groups.values() for f in cell_figures(rows, budgets)}


def _promise(figures: CellFigures | None, budgets: Budgets) -> tuple[int, float]:
    value = rank_value(figures, budgets) if figures is not None else None
    return (1, 0.0) if value is None else (0, value)


def _accuracy_broken(figures: CellFigures, budgets: Budgets) -> str:
    return "; ".join(b.text for b in broken_budgets(figures, budgets) if b.budget in ACCURACY_BUDGETS)


def _not_run(cell: Cell, measured: dict[Cell, Result], figures: dict[Cell, CellFigures]) -> str:
    """Why a measured cell has no figures to weigh (it did not run, or ran another scenario); empty if it has."""
    result = measured[cell]
    if not result.ok:
        return f"{cell.id} {result.status}: {result.reason or 'no reason given'}"
    return "" if cell in figures else f"{cell.id} measured another scenario than the one weighed"


def _walk(line: Cell, dimension: str, values, measured, figures) -> tuple[list, Cell | None, str]:
    """One dimension of a line, step by step in order: the steps measured so far as (value, cell), then what
    ends the walk: the next cell to measure, or why a step did not run, or neither (every value measured)."""
    steps = []
    for value in values:
        cell = dataclasses.replace(line, **{dimension: value})
        if cell not in measured:
            return steps, cell, ""
        why = _not_run(cell, measured, figures)
        if why:
            return steps, None, f"stopped: {why}"
        steps.append((value, cell))
    return steps, None, ""


def _next_prune(line: Cell, measured, figures, budgets: Budgets, space: SearchSpace) -> tuple[Cell | None, str]:
    why = _not_run(line, measured, figures)
    if why:
        return None, f"not explored: {why}"
    broken = _accuracy_broken(figures[line], budgets)
    if broken:
        return None, f"not explored: the unpruned cell already breaks accuracy ({broken}); pruning cannot win it back"
    best = figures[line]
    steps, next_cell, stopped = _walk(line, PRUNE, space.prunes, measured, figures)
    for amount, cell in steps:
        broken = _accuracy_broken(figures[cell], budgets)
        if broken:
            return None, f"stopped at {_amount(amount)}: {broken}; more pruning cannot win accuracy back"
        gain = _gain(figures[cell], best, budgets, space.noise)
        if not gain:
            return None, (f"stopped at {_amount(amount)}: no gain over {best.cell_id} beyond the noise "
                          f"({_compare(figures[cell], best, budgets, space.noise)})")
        best = figures[cell]
    return next_cell, stopped or ("" if next_cell else f"every amount tried ({', '.join(map(_amount, space.prunes))})")


def _gain(step: CellFigures, best: CellFigures, budgets: Budgets, noise: float) -> bool:
    """Whether ``step`` beats ``best`` by more than ``noise``: on the ranking figure, or on a figure a budget
    limits (size, peak memory). By median, it must also beat the two medians' own uncertainty."""
    pairs = [(rank_value(step, budgets), rank_value(best, budgets))]
    if budgets.size_mb is not None:
        pairs.append((step.size_mb, best.size_mb))
    if budgets.peak_mb is not None:
        pairs.append((step.peak_mb, best.peak_mb))
    gains = [new is not None and old is not None and new < old - noise * abs(old) for new, old in pairs]
    if gains[0] and budgets.rank_by == MEDIAN:
        gains[0] = step.median_ms + median_halfwidth(step) < best.median_ms - median_halfwidth(best)
    return any(gains)


def median_halfwidth(figures: CellFigures) -> float:
    """The half-width of the median's 95% interval, 1.57 IQR / sqrt(n) (McGill, Tukey and Larsen's notches):
    what the measurement itself says about its median, from the typed latency figures."""
    latency = figures.result.latency_ms
    if latency is None or not latency.n:
        return 0.0
    return 1.57 * latency.iqr / latency.n ** 0.5


def _compare(step: CellFigures, best: CellFigures, budgets: Budgets, noise: float) -> str:
    new, old = rank_value(step, budgets), rank_value(best, budgets)
    if new is None or old is None:
        return f"{budgets.rank_by} not measured"
    unit = "items/s" if budgets.rank_by == THROUGHPUT else "ms"
    sizes = f", size {step.size_mb:.3g} against {best.size_mb:.3g} MB" if step.size_mb and best.size_mb else ""
    spread = (f" (±{median_halfwidth(step):.2g} and ±{median_halfwidth(best):.2g}, 95% intervals)"
              if budgets.rank_by == MEDIAN else "")
    return f"{budgets.rank_by} {abs(new):.4g} against {abs(old):.4g} {unit}{spread}{sizes}; noise floor {noise:.0%}"


def _next_calibration(line: Cell, measured, figures, budgets: Budgets, space: SearchSpace
                      ) -> tuple[Cell | None, str]:
    why = _not_run(line, measured, figures)
    if why:
        return None, f"not explored: {why}"
    if not _accuracy_broken(figures[line], budgets):
        return None, "not explored: the default calibration already keeps the accuracy budget"
    best = figures[line]
    steps, next_cell, stopped = _walk(line, CALIBRATION, space.calibrations, measured, figures)
    for samples, cell in steps:
        if not _accuracy_broken(figures[cell], budgets):
            return None, f"stopped at {samples} samples: accuracy kept; larger sets cost conversion time for nothing"
        new, old = figures[cell].drop.value, best.drop.value
        if new is None or old is None or not new < old - DROP_RESOLUTION:
            return None, (f"stopped at {samples} samples: accuracy did not improve "
                          f"({_drop_text(new)} against {_drop_text(old)} of {best.cell_id})")
        best = figures[cell]
    return next_cell, stopped or ("" if next_cell else f"every size tried ({', '.join(map(str, space.calibrations))})")


def _amount(amount: float) -> str:
    return f"{amount:.0%}"


def _drop_text(value: float | None) -> str:
    return "not measured" if value is None else f"drop {value:.4g}"


__all__ = ["CALIBRATION", "DEFAULT_CALIBRATIONS", "DEFAULT_PRUNES", "Decision", "NOISE", "PRUNE", "SearchSpace",
           "Stop", "next_cells"]
