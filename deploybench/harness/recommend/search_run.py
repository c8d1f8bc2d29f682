"""The search's loop under a time budget (``search_loop``: any ``run(cell)``, any clock, so it is tested
without a model) and its real run (``search_matrix``: the models' workers and ``run_cells``, the very path
``deploybench run`` measures cells on), and ``search_recommend``, the API of ``recommend --search-time``.

The budget is wall time from the first cell. A cell is started only while the median time of the cells
measured so far still fits in what is left, so a run ends near its budget rather than one slow
conversion past it; a cell already running is never cut short (its figures would be worthless).
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.harness.recommend.budgets import Budgets
from deploybench.harness.recommend.search import SearchSpace, Stop, next_cells
from deploybench.spec import Cell, DeployBenchError, ModelSpec, Result

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float, option: str = "--search-time") -> float:
    """'10m', '90s', '1.5h' or 600 -> seconds; a one-line error naming ``option`` for anything else."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(text))
    seconds = float(match.group(1)) * _UNITS[match.group(2) or ""] if match else 0.0
    if not seconds > 0:
        raise DeployBenchError(f"bad {option} {text!r}: give a positive time, e.g. {option} 10m (or 90s, 1h)")
    return seconds


@dataclass
class SearchOutcome:
    """What a search measured (``results``, in the order measured), every dimension it closed and why
    (``stops``), the next steps it had not taken when the time budget was spent (``unexplored``), and the
    seconds it had and took."""

    results: list[Result]
    stops: list[Stop]
    unexplored: list[Cell]
    budget_s: float
    spent_s: float
    base: list[Cell] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The search in words, for the recommendation's output."""
        steps = len(self.results) - sum(r.cell in set(self.base) for r in self.results)
        lines = [f"search: {len(self.results)} cells measured ({steps} prune or calibration steps) in "
                 f"{self.spent_s:.0f} s of the {self.budget_s:.0f} s budget"]
        lines += [f"  {stop}" for stop in self.stops]
        if self.unexplored:
            lines.append(f"  not explored, the time budget was spent: {', '.join(c.id for c in self.unexplored)}"
                         " (and every larger step of their lines)")
        else:
            lines.append("  every open step was explored: the search ended before its budget")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"budget_s": self.budget_s, "spent_s": self.spent_s, "measured": [r.cell.id for r in self.results],
                "stops": [dataclasses.asdict(s) for s in self.stops], "unexplored": [c.id for c in self.unexplored],
                "summary": self.lines()}


def search_loop(base: Sequence[Cell], run: Callable[[Cell], Result], budgets: Budgets, space: SearchSpace,
                budget_s: float, clock: Callable[[], float] = time.monotonic,
                results: list[Result] | None = None) -> SearchOutcome:
    """Measure what ``next_cells`` asks for, a round at a time, until it asks for nothing or ``budget_s``
    is spent. ``results`` (a list the caller keeps) holds every cell measured, also when interrupted."""
    results = [] if results is None else results
    start, durations = clock(), []
    while True:
        decision = next_cells(base, results, budgets, space)
        for cell in decision.cells:
            left = budget_s - (clock() - start)
            if left <= 0 or (durations and statistics.median(durations) > left):
                final = next_cells(base, results, budgets, space)
                return SearchOutcome(results, final.stops, final.cells, budget_s, clock() - start, list(base))
            began = clock()
            results.append(run(cell))
            durations.append(clock() - began)
        if not decision.cells:
            return SearchOutcome(results, decision.stops, [], budget_s, clock() - start, list(base))


def search_matrix(models, backends: Sequence[str], precisions: Sequence[str], budgets: Budgets, budget_s: float,
                  settings=None, space: SearchSpace | None = None, formats: Sequence[str] | None = None,
                  progress: bool = True, verbose: bool = False):
    """Search the cells of ``models`` x ``backends`` x ``precisions`` (at the sizes, threads and scenarios of
    ``settings.sweep``) over ``space`` for ``budget_s`` seconds; returns the ``Matrix`` of every cell measured,
    its settings holding the search (``settings["search"]``). Each model runs in a worker of its own, as
    ``run_matrix`` runs it. Ctrl-C ends the search with the cells measured so far."""
    from deploybench.harness.measure.machine import machine_info
    from deploybench.harness.pipeline.matrix import Progress, close_workers, open_workers, run_cells
    from deploybench.harness.pipeline.plan import check_backends, check_precisions, plan_cells
    from deploybench.harness.pipeline.settings import RunSettings
    from deploybench.harness.report.matrix import Matrix

    settings = settings or RunSettings()
    sweep = settings.sweep
    space = space or SearchSpace(**{name: values for name, values in (("prunes", sweep.prunes),
                                                                      ("calibrations", sweep.calibrations))
                                    if any(values)})
    check_backends(backends)
    check_precisions(precisions)
    if isinstance(models, (str, Path, ModelSpec)) or not isinstance(models, Iterable):
        models = [models]
    models = list(models)
    base_sweep = dataclasses.replace(sweep, prunes=(0.0,), calibrations=(0,))  # the search takes those steps
    opened = open_workers(models, settings, verbose)
    results: list[Result] = []
    incomplete, outcome = "", None
    try:
        base = plan_cells([info for info, _ in opened], list(backends), list(precisions), formats=formats,
                          include_unsupported=True, sweep=base_sweep)
        workers = {info.name: worker for info, worker in opened}
        bar = Progress(total=None, enabled=progress)
        try:
            outcome = search_loop(base, lambda cell: run_cells(workers, [cell], progress=bar)[0], budgets, space,
                                  budget_s, results=results)
        except KeyboardInterrupt as stop:
            incomplete = f"interrupted ({stop.args[0] if stop.args else 'Ctrl-C'}) after {len(results)} cells"
        finally:
            bar.close()
    finally:
        close_workers(worker for _, worker in opened)
    recorded = {**settings.to_dict(), "models": [info.ref or info.name for info, _ in opened],
                "backends": list(backends), "precisions": list(precisions),
                "search": outcome.to_dict() if outcome else None}
    return Matrix(results=list(results), machine=machine_info(), settings=recorded, incomplete=incomplete)


def search_recommend(models, budgets: Budgets | dict | None = None, search_time: str | float = "10m",
                     backends: Sequence[str] = ("onnxruntime", "openvino"), precisions: Sequence[str] = ("fp32", "int8"),
                     settings=None, space: SearchSpace | None = None, **options):
    """``deploybench recommend --search-time``: search ``models`` for ``search_time`` (``'10m'``, seconds)
    and return the ``Recommendation`` of every cell measured, with the search's account in ``.search``."""
    from deploybench.harness.recommend.recommendation import recommend

    budgets = Budgets.coerce(budgets)
    matrix = search_matrix(models, backends, precisions, budgets, parse_duration(search_time), settings=settings,
                           space=space, **options)
    answer = recommend(matrix, budgets)
    answer.search = search_lines(matrix)
    return answer


def search_lines(matrix) -> list[str]:
    """The search's account kept in a matrix's settings (none for a matrix no search made)."""
    search = (matrix.settings or {}).get("search") or {}
    return list(search.get("summary") or [])


__all__ = ["SearchOutcome", "parse_duration", "search_lines", "search_loop", "search_matrix", "search_recommend"]
