"""``recommend(results, budgets)``: per model, the one cell to ship under the budgets, the alternatives on the
Pareto front, every rejected cell with what it broke, and the cells that did not run with their reason."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.harness.recommend.budgets import Budgets
from deploybench.harness.recommend.decide import (Broken, broken_budgets, choose, closeness, dominates, objectives,
                                                  rank_value)
from deploybench.harness.recommend.figures import CellFigures, cell_figures, group_key, group_name
from deploybench.harness.recommend.held_out import HeldOut, confirm_held_out
from deploybench.spec import DYNAMIC, SERVER, SINGLE_STREAM, DeployBenchError, Result

# How many rejected cells a "nothing fits" answer names as the closest.
CLOSEST = 3
# A runner-up closer than this to the recommended cell by the ranking figure is too close to call from one
# run: two runs of the same cell differ by more on a shared machine (README, "CI gating").
TOO_CLOSE = 0.05


@dataclass
class Rejection:
    """A cell that ran but does not fit: its figures and every budget it broke."""

    figures: CellFigures
    broken: list[Broken]


@dataclass
class Dominated:
    """A cell that fits every budget but is off the front: ``by`` is a front cell no worse on any objective."""

    figures: CellFigures
    by: CellFigures


@dataclass
class ModelRecommendation:
    """The answer for one model (at its sizes, on one machine): ``recommended`` (None: nothing fits) with
    its ``held_out`` confirmation and ``command``; the Pareto ``front`` of the fitting cells (recommended
    first) and each front cell's ``confirmations``; the fitting cells off the front (``dominated``);
    ``rejected`` cells closest first; ``not_run`` (skipped, failed, timeout); ``other_scenario``: how many
    of its cells measured another scenario than the one asked about."""

    name: str
    recommended: CellFigures | None
    front: list[CellFigures]
    rejected: list[Rejection]
    not_run: list[Result]
    other_scenario: int = 0
    dominated: list[Dominated] = field(default_factory=list)
    confirmations: dict[str, HeldOut] = field(default_factory=dict)
    command: str | None = None

    @property
    def held_out(self) -> HeldOut | None:
        """Whether the recommended cell's accuracy is confirmed on held-out data (None: nothing fits)."""
        return self.confirmations.get(self.recommended.cell_id) if self.recommended is not None else None

    @property
    def fits(self) -> bool:
        return self.recommended is not None

    @property
    def alternatives(self) -> list[CellFigures]:
        """The front less the recommended cell: each better on accuracy, memory or size, slower."""
        return [f for f in self.front if f is not self.recommended]

    @property
    def closest(self) -> list[Rejection]:
        return self.rejected[:CLOSEST]

    def caveats(self, budgets: Budgets) -> list[str]:
        """What should make a reader re-measure before shipping: a recommended cell whose timing the time cap
        cut short, or a runner-up too close to call."""
        if self.recommended is None:
            return []
        from deploybench.harness.report.table import is_unstable

        notes = []
        chosen = self.recommended
        if is_unstable(chosen.result):
            notes.append(f"{chosen.cell_id}'s timing is unstable (the time cap came before its median was pinned "
                         "down): re-measure it on a quieter machine before trusting the ranking")
        others = [f for f in [*self.front[1:], *(d.figures for d in self.dominated)]
                  if rank_value(f, budgets) is not None]
        best = rank_value(chosen, budgets)
        if others and best:
            runner_up = min(others, key=lambda f: rank_value(f, budgets))
            gap = abs(rank_value(runner_up, budgets) - best) / abs(best)
            if gap < TOO_CLOSE:
                notes.append(f"{runner_up.cell_id} is within {gap:.1%} of it by {budgets.rank_by}: closer than "
                             "run-to-run drift, either may be the faster (`deploybench compare` settles it)")
        return notes


@dataclass
class Recommendation:
    """The answer for every model of a run; renders as the terminal table (``table()``), Markdown
    (``markdown()``), JSON (``to_dict()``) and an HTML section (``html()``, which the HTML report shows
    above its tables with the recommended rows marked)."""

    budgets: Budgets
    models: list[ModelRecommendation]
    machine: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    search: list[str] = field(default_factory=list)  # a search's account: what it tried, where and why it stopped

    @property
    def fits(self) -> bool:
        """True when every model got a recommendation."""
        return bool(self.models) and all(m.fits for m in self.models)

    @property
    def recommended_ids(self) -> dict[str, str]:
        """{cell id: its model group's name} of every recommended cell (what the HTML report marks)."""
        return {m.recommended.cell_id: m.name for m in self.models if m.recommended is not None}

    def table(self) -> str:
        from deploybench.harness.recommend.render import terminal_recommendation

        return terminal_recommendation(self)

    def markdown(self) -> str:
        from deploybench.harness.recommend.render import markdown_recommendation

        return markdown_recommendation(self)

    def html(self) -> str:
        from deploybench.harness.recommend.render import html_recommendation

        return html_recommendation(self)

    def to_dict(self) -> dict[str, Any]:
        from deploybench.harness.recommend.render import recommendation_dict

        return recommendation_dict(self)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        return self.html()


def recommend(results: Any, budgets: Budgets | Mapping[str, Any] | None = None) -> Recommendation:
    """The ``Recommendation`` for ``results`` under ``budgets``.

    ``results``: a ``Matrix`` (``run_deployment_benchmark``'s), a list of ``Result``, or the path of a
    results file (``deploybench run --output``, ``merge``, pytest-benchmark JSON). ``budgets``: a
    ``Budgets`` or a mapping of its fields, e.g. ``{"accuracy_drop": "1%", "p99_ms": 20, "peak_mb": 200}``.
    """
    budgets = Budgets.coerce(budgets)
    results, machine, settings, source = _read(results)
    grouped: dict[tuple, list[Result]] = {}
    for r in results:
        grouped.setdefault(group_key(r), []).append(r)
    models = [_recommend_model(key, rows, budgets, settings) for key, rows in
              sorted(grouped.items(), key=lambda item: group_name(item[0]))]
    return Recommendation(budgets, models, machine, source)


def _read(results: Any) -> tuple[list[Result], dict[str, Any], dict[str, Any], str]:
    """(results, machine, settings, where they came from) of a Matrix, a list of Results or a results file."""
    if isinstance(results, (str, Path)):
        from deploybench.harness.results.io import load_results_file

        loaded, machine, settings = load_results_file(results)
        return loaded, machine, settings, str(results)
    if hasattr(results, "results") and hasattr(results, "settings"):  # a Matrix
        return list(results.results), dict(results.machine), dict(results.settings), "this run"
    if isinstance(results, Sequence) and all(isinstance(r, Result) for r in results):
        return list(results), {}, {}, "the results given"
    raise DeployBenchError(f"recommend() takes a Matrix, a list of Result or a results file path, not "
                           f"{type(results).__name__}")


def _recommend_model(key: tuple, rows: list[Result], budgets: Budgets, settings: Mapping[str, Any]
                     ) -> ModelRecommendation:
    figures = cell_figures(rows, budgets)
    fitting, rejected = [], []
    for f in figures:
        broken = broken_budgets(f, budgets)
        if broken:
            rejected.append(Rejection(f, broken))
        else:
            fitting.append(f)
    rejected.sort(key=lambda r: (closeness(r.broken), r.figures.cell_id))
    recommended, front = choose(fitting, budgets)
    not_run = sorted((r for r in rows if not r.ok), key=lambda r: (r.status, r.cell))
    other = sum(1 for r in rows if r.ok and r.cell.scenario != budgets.scenario)
    on_front = {id(f) for f in front}
    dominated = [Dominated(f, next(g for g in front if dominates(objectives(g, budgets), objectives(f, budgets))))
                 for f in fitting if id(f) not in on_front]
    answer = ModelRecommendation(group_name(key), recommended, front, rejected, not_run, other, dominated)
    answer.confirmations = {f.cell_id: confirm_held_out(f, settings) for f in front}
    if recommended is not None:
        answer.command = run_command_line(recommended.result, settings)
    return answer


def run_command_line(result: Result, settings: Mapping[str, Any] | None = None) -> str:
    """The ``deploybench run`` command that measures this one cell again, with the settings that shaped it:
    threads, sizes, the dynamic compile, the scenario, the prune amount, the calibration size and data,
    tolerance overrides and seed."""
    settings = dict(settings or {})
    cell = result.cell
    words = ["deploybench", "run", "--models", result.model_ref or cell.model, "--formats", cell.format,
             "--backends", cell.backend, "--precisions", cell.precision]
    threads = cell.threads or settings.get("threads")
    if threads:
        words += ["--threads", str(threads)]
    dims = {**(settings.get("dims") or {}), **cell.dim_sizes}
    if "batch" in dims:
        words += ["--batch-sizes", str(dims.pop("batch"))]
    for name, size in dims.items():
        words += ["--dims", f"{name}={size}"]
    if cell.shapes == DYNAMIC:
        words += ["--shapes", DYNAMIC]
    if cell.scenario != SINGLE_STREAM:
        words += ["--scenarios", cell.scenario]
        budget = (settings.get("server") or {}).get("p99_budget_ms")
        if cell.scenario == SERVER and budget is not None:
            words += ["--p99-budget-ms", f"{budget:g}"]
    for precision, criteria in sorted((settings.get("tolerances") or {}).items()):
        for name, value in sorted((criteria or {}).items()):
            words += ["--tolerance", f"{precision}:{name}={value}"]
    if cell.prune:
        words += ["--prune", f"{cell.prune:g}"]
    if cell.calibration:
        words += ["--calibration-samples", str(cell.calibration)]
    if settings.get("calibration_data") and "int8" in cell.precision:
        words += ["--calibration-data", str(settings["calibration_data"])]
    if settings.get("seed"):
        words += ["--seed", str(settings["seed"])]
    return " ".join(shlex.quote(word) for word in words)


__all__ = ["CLOSEST", "Dominated", "ModelRecommendation", "Recommendation", "Rejection", "recommend", "run_command_line"]
