"""A ``Recommendation`` as the terminal table, Markdown for a pull request, JSON and an HTML section: one set
of rows (``front_rows``, ``rejected_rows``) laid out four ways, figures formatted as the matrix tables do."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from deploybench.harness.recommend.budgets import Budgets, percent
from deploybench.harness.recommend.decide import Broken
from deploybench.harness.recommend.figures import CellFigures
from deploybench.harness.recommend.recommendation import ModelRecommendation, Recommendation, Rejection
from deploybench.harness.report.html import RECOMMENDED_MARK
from deploybench.harness.report.markdown import markdown_cell, markdown_table
from deploybench.harness.report.table import UNSTABLE_MARK, is_unstable, machine_line, number

SCHEMA = "deploybench.recommendation/1"
FRONT_HEADERS = ("", "format", "backend", "precision", "variant", "median ms", "p99 ms", "ips", "accuracy drop",
                 "peak MB", "size MB", "held-out")
REJECTED_HEADERS = ("cell", "median ms", "p99 ms", "accuracy drop", "peak MB", "size MB", "broke")
LEGEND = (f"{RECOMMENDED_MARK} recommended; the other rows of the Pareto front fit every budget too and are each "
          f"better on accuracy drop, memory or size, slower by the ranking figure; {UNSTABLE_MARK} unstable timing")


def _unstable(figures: CellFigures) -> str:
    return UNSTABLE_MARK if is_unstable(figures.result) else ""


def _drop(figures: CellFigures) -> str:
    return "–" if figures.drop.value is None else percent(figures.drop.value)


def _figures_cells(figures: CellFigures) -> list[str]:
    return [number(figures.median_ms), number(figures.p99_ms), number(figures.throughput_ips, 1), _drop(figures),
            number(figures.peak_mb, 1), number(figures.size_mb, 2)]


def front_table(answer: ModelRecommendation) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a model's Pareto front, the recommended cell first and marked; ``held-out`` says
    whether each cell's accuracy is confirmed on held-out data. The variant column only when a cell has one."""
    def confirmed(f: CellFigures) -> str:
        held_out = answer.confirmations.get(f.cell_id)
        return "–" if held_out is None else f"yes ({held_out.samples})" if held_out.confirmed else "no"

    rows = [[(RECOMMENDED_MARK if f is answer.recommended else "") + _unstable(f), f.result.cell.format, f.result.cell.backend,
             f.result.cell.precision, f.result.cell.variant or "–", *_figures_cells(f), confirmed(f)]
            for f in answer.front]
    variant = FRONT_HEADERS.index("variant")
    if all(row[variant] == "–" for row in rows):
        return [h for i, h in enumerate(FRONT_HEADERS) if i != variant], [row[:variant] + row[variant + 1:]
                                                                          for row in rows]
    return list(FRONT_HEADERS), rows


def dominated_lines(answer: ModelRecommendation) -> list[str]:
    """One line per cell that fits but is off the front, naming the front cell that beats it."""
    return [f"{d.figures.cell_id}: fits, but {d.by.cell_id} is no worse on any figure and better on one"
            for d in answer.dominated]


def rejected_rows(rejections: Sequence[Rejection]) -> list[list[str]]:
    """``REJECTED_HEADERS`` rows: each rejected cell, its figures and every budget it broke."""
    rows = []
    for r in rejections:
        cells = _figures_cells(r.figures)
        name = r.figures.cell_id + (f" {UNSTABLE_MARK}" if _unstable(r.figures) else "")
        rows.append([name, cells[0], cells[1], *cells[3:], "; ".join(b.text for b in r.broken)])
    return rows


def _figure_line(answer: ModelRecommendation) -> str:
    """What the accuracy drop of a model's cells is measured on, once for the model."""
    chosen = answer.recommended or (answer.rejected[0].figures if answer.rejected else None)
    if chosen is None:
        return ""
    basis = {f.drop.figure for f in [*answer.front, *(r.figures for r in answer.rejected)]}
    figure = chosen.drop.figure if len(basis) == 1 else "/".join(sorted(basis))
    kind = "task metric on held-out data" if chosen.drop.task_metric else "agreement with the fp32 reference"
    return f"accuracy drop: on {figure} ({kind}); {'recommended' if answer.recommended else 'closest'}: " \
           f"{chosen.drop.basis}"


def _model_lines(answer: ModelRecommendation, budgets: Budgets) -> list[str]:
    """The terminal text of one model: the answer, how to reproduce it, the front, rejected and not run."""
    from tabulate import tabulate

    def table(headers, rows) -> list[str]:
        return ["    " + line for line in tabulate(rows, headers=headers, tablefmt="simple",
                                                     disable_numparse=True).splitlines()]

    budget_text = ", ".join(budgets.limits()) or "the tolerances"
    lines = [""]
    if answer.recommended is not None:
        cell = answer.recommended.result.cell
        lines.append(f"{answer.name}: recommended {cell.format} / {cell.backend} / {cell.precision}"
                     + (f" ({cell.variant})" if cell.variant else "") + f"  [{cell.id}]")
        lines.append(f"  accuracy: {answer.held_out.text}")
        lines.append(f"  reproduce: {answer.command}")
        lines.extend(f"  caveat: {note}" for note in answer.caveats(budgets))
        lines.append(f"  {_figure_line(answer)}")
        lines.append(f"  Pareto front of the {len(answer.front)} cell(s) that fit (latency, accuracy drop, memory, size):")
        lines.extend(table(*front_table(answer)))
        if answer.dominated:
            lines.append(f"  fit, but off the front ({len(answer.dominated)}):")
            lines.extend(f"    {line}" for line in dominated_lines(answer))
        if answer.rejected:
            lines.append(f"  rejected ({len(answer.rejected)}):")
            lines.extend(table(REJECTED_HEADERS, rejected_rows(answer.rejected)))
    else:
        lines.append(f"{answer.name}: NOTHING FITS ({budget_text})")
        if answer.rejected:
            lines.append(f"  {_figure_line(answer)}")
            lines.append(f"  closest of the {len(answer.rejected)} cell(s) that ran, and what each broke:")
            lines.extend(table(REJECTED_HEADERS, rejected_rows(answer.closest)))
        else:
            lines.append("  no cell of it ran ok" + (" in this scenario" if answer.other_scenario else ""))
    if answer.other_scenario:
        lines.append(f"  ({answer.other_scenario} cell(s) measured another scenario and were not weighed)")
    if answer.not_run:
        lines.append(f"  not run ({len(answer.not_run)}):")
        lines.extend(f"    {r.status:8} {r.cell.id}: {r.reason or 'no reason given'}" for r in answer.not_run)
    return lines


def terminal_recommendation(recommendation: Recommendation) -> str:
    """The recommendation as plain text: the budgets, then per model the answer, its Pareto front, the
    rejected cells with the budget each broke, and the cells that did not run."""
    lines = [f"recommendation under: {recommendation.budgets.describe()}"]
    if recommendation.source:
        lines.append(f"from: {recommendation.source}")
    if recommendation.machine:
        lines.append(f"machine: {machine_line(recommendation.machine)}")
    if not recommendation.models:
        lines.append("no cell to recommend from")
    for answer in recommendation.models:
        lines.extend(_model_lines(answer, recommendation.budgets))
    if any(m.fits for m in recommendation.models):
        lines += ["", f"legend: {LEGEND}"]
    missing = [m.name for m in recommendation.models if not m.fits]
    if missing:
        lines += ["", f"nothing fits for {', '.join(missing)}: loosen a budget, or measure more cells"]
    if recommendation.search:
        lines += ["", *recommendation.search]
    return "\n".join(lines) + "\n"


def markdown_recommendation(recommendation: Recommendation) -> str:
    """Markdown for a pull request: per model the answer, the command, the front; rejected cells folded."""
    budget_text = ", ".join(recommendation.budgets.limits()) or "the tolerances"
    parts = ["## deploybench recommendation", f"_{markdown_cell(recommendation.budgets.describe())}_"]
    if recommendation.machine:
        parts.append(f"_machine: {markdown_cell(machine_line(recommendation.machine))}_")
    for answer in recommendation.models:
        if answer.recommended is not None:
            cell = answer.recommended.result.cell
            parts.append(f"### {markdown_cell(answer.name)}: {cell.format} / {cell.backend} / {cell.precision}"
                         + (f" ({markdown_cell(cell.variant)})" if cell.variant else ""))
            parts.append(f"- accuracy: {markdown_cell(answer.held_out.text)}\n- {markdown_cell(_figure_line(answer))}\n"
                         f"- reproduce: `{answer.command}`"
                         + "".join(f"\n- caveat: {markdown_cell(note)}" for note in answer.caveats(recommendation.budgets)))
            parts.append(markdown_table(*front_table(answer)))
            if answer.dominated:
                parts.append(f"<details><summary>{len(answer.dominated)} fit, but off the front</summary>\n\n"
                             + "\n".join(f"- {markdown_cell(line)}" for line in dominated_lines(answer)) + "\n\n</details>")
            shown, title = answer.rejected, f"{len(answer.rejected)} rejected"
        else:
            parts.append(f"### {markdown_cell(answer.name)}: nothing fits ({markdown_cell(budget_text)})")
            shown, title = answer.closest, f"closest {len(answer.closest)} of {len(answer.rejected)}"
            if shown:
                parts.append(f"_{markdown_cell(_figure_line(answer))}_")
        if shown:
            table = markdown_table(REJECTED_HEADERS, rejected_rows(shown))
            parts.append(table if not answer.fits else f"<details><summary>{title}</summary>\n\n{table}\n\n</details>")
        if answer.not_run:
            items = "\n".join(f"- **{markdown_cell(r.status)}** <code>{markdown_cell(r.cell.id)}</code>: "
                              f"{markdown_cell(r.reason or 'no reason given')}" for r in answer.not_run)
            parts.append(f"<details><summary>{len(answer.not_run)} not run</summary>\n\n{items}\n\n</details>")
    if any(m.fits for m in recommendation.models):
        parts.append(f"_{markdown_cell(LEGEND)}_")
    if recommendation.search:
        parts.append("\n".join([f"**{markdown_cell(recommendation.search[0])}**",
                                *(f"- {markdown_cell(line.strip())}" for line in recommendation.search[1:])]))
    return "\n\n".join(parts) + "\n"


def _figures_dict(figures: CellFigures) -> dict[str, Any]:
    cell = figures.result.cell
    return {"cell": cell.id, **cell.to_dict(), "median_ms": figures.median_ms, "p99_ms": figures.p99_ms,
            "throughput_ips": figures.throughput_ips, "peak_mb": figures.peak_mb, "size_mb": figures.size_mb,
            "accuracy_drop": figures.drop.value, "accuracy_figure": figures.drop.figure,
            "accuracy_basis": figures.drop.basis, "task_metric": figures.drop.task_metric}


def recommendation_dict(recommendation: Recommendation) -> dict[str, Any]:
    """The JSON document: schema, source, budgets, machine, fits, and per model the recommended cell (or
    null), its held-out confirmation and command, the front, the rejected cells with what each broke,
    the closest when nothing fits, and the cells not run."""
    models = []
    for answer in recommendation.models:
        models.append({
            "model": answer.name, "fits": answer.fits,
            "recommended": _figures_dict(answer.recommended) if answer.recommended else None,
            "held_out": answer.held_out.to_dict() if answer.held_out else None, "command": answer.command,
            "caveats": answer.caveats(recommendation.budgets),
            "front": [{**_figures_dict(f), "held_out": answer.confirmations[f.cell_id].to_dict()}
                      for f in answer.front],
            "dominated": [{"cell": d.figures.cell_id, "by": d.by.cell_id} for d in answer.dominated],
            "rejected": [{**_figures_dict(r.figures), "broken": [_broken_dict(b) for b in r.broken]}
                         for r in answer.rejected],
            "closest": [] if answer.fits else [r.figures.cell_id for r in answer.closest],
            "not_run": [{"cell": r.cell.id, "status": r.status, "stage": r.stage, "reason": r.reason}
                        for r in answer.not_run],
            "other_scenario": answer.other_scenario})
    return {"schema": SCHEMA, "source": recommendation.source, "budgets": recommendation.budgets.to_dict(),
            "machine": recommendation.machine, "fits": recommendation.fits, "models": models,
            "search": list(recommendation.search)}


def _broken_dict(broken: Broken) -> dict[str, Any]:
    # JSON has no infinity: the overshoot past a limit of zero is written as null
    overshoot = broken.overshoot if math.isfinite(broken.overshoot) else None
    return {"budget": broken.budget, "text": broken.text, "overshoot": overshoot}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# Text columns are left-aligned as in the report's own tables (class "t"); what a cell broke wraps ("note").
_HTML_TEXT_COLUMNS = {"": "t", "format": "t", "backend": "t", "precision": "t", "variant": "t", "held-out": "t",
                      "cell": "t", "broke": "t note"}


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], marked: int | None = None) -> str:
    classes = [f' class="{_HTML_TEXT_COLUMNS[h]}"' if h in _HTML_TEXT_COLUMNS else "" for h in headers]
    head = "".join(f"<th{c}>{_e(h)}</th>" for c, h in zip(classes, headers))
    marks = ['<tr class="recommended">' if i == marked else "<tr>" for i in range(len(rows))]
    body = "".join(mark + "".join(f"<td{c}>{_e(v)}</td>" for c, v in zip(classes, row)) + "</tr>"
                   for mark, row in zip(marks, rows))
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def html_recommendation(recommendation: Recommendation) -> str:
    """The HTML section the report shows above its tables: per model the answer, its confirmation and command,
    the front with the recommended row marked; rejected cells folded."""
    budget_text = ", ".join(recommendation.budgets.limits()) or "the tolerances"
    parts = ["<h2>Recommendation</h2>", f"<p class='muted'>{_e(recommendation.budgets.describe())}</p>"]
    for answer in recommendation.models:
        if answer.recommended is not None:
            cell = answer.recommended.result.cell
            parts.append(f"<h3>{_e(answer.name)}: {RECOMMENDED_MARK} {_e(cell.format)} / {_e(cell.backend)} / "
                         f"{_e(cell.precision)}{' (' + _e(cell.variant) + ')' if cell.variant else ''}</h3>")
            parts.append(f"<p>accuracy: {_e(answer.held_out.text)}<br>{_e(_figure_line(answer))}<br>"
                         f"reproduce: <code>{_e(answer.command)}</code>"
                         + "".join(f"<br>caveat: {_e(note)}" for note in answer.caveats(recommendation.budgets))
                         + "</p>")
            parts.append(_html_table(*front_table(answer), marked=0))
            if answer.dominated:
                items = "".join(f"<li>{_e(line)}</li>" for line in dominated_lines(answer))
                parts.append(f"<details><summary>{len(answer.dominated)} fit, but off the front</summary>"
                             f"<ul class='reasons'>{items}</ul></details>")
            shown, title = answer.rejected, f"{len(answer.rejected)} rejected"
        else:
            parts.append(f"<h3>{_e(answer.name)}: nothing fits ({_e(budget_text)})</h3>")
            shown, title = answer.closest, f"closest {len(answer.closest)} of {len(answer.rejected)}"
        if shown:
            table = _html_table(REJECTED_HEADERS, rejected_rows(shown))
            parts.append(f"<details><summary>{_e(title)}</summary>{table}</details>" if answer.fits else table)
    if recommendation.search:
        items = "".join(f"<li>{_e(line.strip())}</li>" for line in recommendation.search[1:])
        parts.append(f"<p>{_e(recommendation.search[0])}</p><ul class='reasons'>{items}</ul>")
    return "\n".join(parts)


__all__ = ["FRONT_HEADERS", "LEGEND", "RECOMMENDED_MARK", "REJECTED_HEADERS", "SCHEMA", "dominated_lines", "front_table",
           "html_recommendation", "markdown_recommendation", "recommendation_dict", "rejected_rows",
           "terminal_recommendation"]
