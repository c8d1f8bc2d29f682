"""One self-contained HTML page of one or more runs: per model the table, latency distributions and
speed against accuracy; peak memory; the gate's verdicts first; each cell's median across stored runs
with the gate's regressions marked. Inline CSS and SVG, nothing fetched, no script."""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploybench.harness.gate.statistics import REGRESSION, UNCHANGED
from deploybench.harness.gate.verdict import LATENCY, Verdict, by_severity, gate_results, verdict_summary
from deploybench.harness.report import load, plots, sweeps
from deploybench.harness.report.notes import PRECISION, STATUS, Footnotes, cell_notes
from deploybench.harness.report.table import (BEST_LEGEND, COLUMNS, cell_row, cells_not_run, is_unstable, machine_line,
                                              model_groups, number, ratio_text, with_detector_columns)
from deploybench.harness.results.history import StoredRun, list_runs
from deploybench.spec import OFFLINE, SERVER, Cell, Result

# The recommendation's mark (``deploybench recommend``, whose section arrives rendered: report does not
# import it).
RECOMMENDED_MARK = "✔"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1250px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin:1.4em 0 .4em}.muted{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0 1em}.scroll{overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f4f6;white-space:normal;vertical-align:bottom}th.t,td.t{text-align:left}
td.note{white-space:normal;min-width:16em}td.status{white-space:normal;min-width:7em;max-width:14em}
tr.best td{background:#fff7d6;font-weight:600}
tr.recommended td{background:#dcfce7;font-weight:600}tr.recommended td:first-child{color:#0a7a2f}td[title]{text-decoration:underline dotted;cursor:help}
ul.notes{font-size:.82em;color:#444;margin:-.6em 0 1em;padding-left:1.2em;list-style:none}
tr.unstable td{color:#8a5a00}tr.fails td{color:#a12}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:12px;align-items:start}
.plot{border:1px solid #eee;border-radius:6px;padding:6px;background:#fff;min-width:0}
.plot svg{max-width:100%;height:auto;display:block;margin:auto}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
.verdict-regression{color:#b00020;font-weight:700}.verdict-improvement{color:#0a7a2f}
.verdict-inconclusive{color:#8a5a00}ul.reasons li{margin:.2em 0}code{background:#f3f4f6;padding:0 3px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_METRIC = COLUMNS.index("metric")


def _table(rows: Sequence[Result], best: Result | None, recommended: Collection[str] = ()) -> str:
    """The cells' table, narrow enough for a laptop screen: status right after the cell's name, headers
    that wrap, a metric shared by every row named once in its header; notes as tooltips and listed below.
    A cell whose id is in ``recommended`` is marked as the recommendation."""
    footnotes = Footnotes()
    headers, table = with_detector_columns(COLUMNS, [cell_row(r, r is best, footnotes) for r in rows], rows)
    headers, table = list(headers), [list(line) for line in table]
    for line, r in zip(table, rows):
        if r.cell.id in recommended:
            line[0] = RECOMMENDED_MARK + line[0]
    metric_names = {r.accuracy.metric if r.accuracy else None for r in rows}
    if len(metric_names) == 1 and None not in metric_names:
        (headers[_METRIC],) = metric_names
        for line, r in zip(table, rows):
            value = r.accuracy.metric_value
            line[_METRIC] = f"{value:.3f}" if value is not None else "–"
    status = len(headers) - 1
    order = [0, 1, 2, 3, status, *range(4, status)]
    classes = {i: "t" for i in (0, 1, 2, 3, _METRIC)} | {status: "t status"}  # left-aligned text columns
    noted = {3: PRECISION, status: STATUS}  # a note's text is also the tooltip of its marker's cell

    def td(r: Result, line: list[str], i: int) -> str:
        attributes = f' class="{classes[i]}"' if i in classes else ""
        tip = "; ".join(n.text for n in cell_notes(r) if n.column == noted.get(i))
        if tip:
            attributes += f' title="{_e(tip)}"'
        return f"<td{attributes}>{_e(line[i])}</td>"

    head = "".join(f'<th class="{classes[i]}">{_e(headers[i])}</th>' if i in classes else f"<th>{_e(headers[i])}</th>"
                   for i in order)
    body = []
    for r, line in zip(rows, table):
        marks = [c for c, on in (("best", r is best), ("recommended", r.cell.id in recommended),
                                 ("unstable", is_unstable(r)),
                                 ("fails", not r.passes_accuracy)) if on]
        body.append(f'<tr class="{" ".join(marks)}">{"".join(td(r, line, i) for i in order)}</tr>')
    notes = "".join(f"<li>{_e(text)}</li>" for text in footnotes.lines())
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            + (f"<ul class='notes'>{notes}</ul>" if notes else ""))


def _plot(svg: str) -> str:
    return f'<div class="plot">{svg}</div>'


def _verdicts_html(verdicts: Iterable[Verdict]) -> str:
    verdicts = by_severity(verdicts)
    if not verdicts:
        return "<p class='muted'>no comparable cells</p>"
    parts = [f"<p><strong>{_e(verdict_summary(verdicts))}</strong></p>"]

    def table(subset: Sequence[Verdict]) -> str:
        notes = {v.reason for v in subset}
        shared = notes.pop() if len(subset) > 1 and len(notes) == 1 else None
        body = "".join(
            f"<tr><td class='t'>{_e(v.cell)}</td><td class='t'>{_e(v.metric)}</td>"
            f"<td class='t verdict-{_e(v.verdict)}'>{_e(v.verdict)}</td>"
            f"<td>{_e(ratio_text(v.ratio, v.ci))}</td><td>{_e(number(v.baseline))}</td>"
            f"<td>{_e(number(v.current))}</td>"
            + ("" if shared is not None else f"<td class='t note'>{_e(v.reason)}</td>") + "</tr>" for v in subset)
        note = f"<p class='muted'>note: {_e(shared)}</p>" if shared else ""
        return (note + "<table><thead><tr><th class='t'>cell</th><th class='t'>figure</th><th class='t'>verdict</th>"
                "<th>ratio [CI]</th><th>baseline</th><th>current</th>"
                + ("" if shared is not None else "<th class='t'>note</th>")
                + f"</tr></thead><tbody>{body}</tbody></table>")

    changed = [v for v in verdicts if v.verdict != UNCHANGED]
    unchanged = [v for v in verdicts if v.verdict == UNCHANGED]
    if changed:
        parts.append(table(changed))
    if unchanged:
        parts.append(f"<details><summary>{len(unchanged)} unchanged</summary>{table(unchanged)}</details>")
    return "".join(parts)


def _run_html(label: str, results: Sequence[Result], machine: Mapping[str, Any] | None,
              recommended: Collection[str] = ()) -> str:
    parts = [f"<h2>{_e(label)}</h2>"]
    if machine:
        parts.append(f"<p class='muted'>machine: {_e(machine_line(machine))}</p>")
        libraries = machine.get("libraries") or machine.get("versions")
        if isinstance(libraries, Mapping) and libraries:
            parts.append("<p class='muted'>versions: "
                         + _e(", ".join(f"{k} {v}" for k, v in libraries.items() if v)) + "</p>")
    ok = [r for r in results if r.ok]
    legend = BEST_LEGEND + (f"; {RECOMMENDED_MARK} the recommendation" if recommended else "")
    parts.append(f"<p class='muted'>{len(ok)} of {len(results)} cells ran; {_e(legend)}</p>")
    for group in model_groups(results):
        parts.append(f"<h3>{_e(group.name)}</h3>")
        if group.reference:
            parts.append(f"<p class='muted'>errors against {_e(group.reference)}</p>")
        parts.append(_table(group.rows, group.best, recommended))
        parts.append("<div class='plots'>"
                     + _plot(plots.latency_distribution_svg(group.rows, title=f"{group.name}: latency distribution"))
                     + _plot(plots.speed_accuracy_svg(group.rows, title=f"{group.name}: speed vs accuracy"))
                     + "</div>")
    for axis in sweeps.swept_axes(ok):
        for model in dict.fromkeys(r.cell.model for r in ok):
            series = [s for s in sweeps.scaling_series(ok, axis) if s.points[0][1].cell.model == model]
            if series:
                parts.append(f"<h3>{_e(model)}: scaling with {_e(axis)}</h3>")
                parts.append(_plot(sweeps.scaling_svg(series, title=f"{model}: latency and throughput by {axis}")))
    for model in dict.fromkeys(r.cell.model for r in ok):
        rows = [r for r in ok if r.cell.model == model]
        if any(r.cell.scenario == OFFLINE for r in rows):
            parts.append(f"<h3>{_e(model)}: latency against throughput</h3>")
            parts.append(_plot(load.latency_throughput_svg(rows, title=f"{model}: single-stream and offline")))
        if any(r.cell.scenario == SERVER and r.scenario_figures for r in results if r.cell.model == model):
            parts.append(f"<h3>{_e(model)}: server</h3>")
            parts.append(_plot(load.server_curve_svg([r for r in results if r.cell.model == model],
                                                     title=f"{model}: p99 against offered rate")))
    if ok:
        parts.append("<h3>Peak memory</h3>")
        parts.append(_plot(plots.memory_svg(ok, title=f"{label}: peak memory per cell")))
    else:
        parts.append("<p><strong>no cell ran successfully</strong></p>")
    others = cells_not_run(results)
    if others:
        items = "".join(f"<li><strong>{_e(r.status)}</strong> <code>{_e(r.cell.id)}</code>"
                        + (f" @ {_e(r.machine_id)}" if r.machine_id and not r.cell.target else "")
                        + f": {_e(r.reason or 'no reason given')}</li>" for r in others)
        parts.append(f"<details><summary>{len(others)} cells not run (skipped / failed)</summary>"
                     f"<ul class='reasons'>{items}</ul></details>")
    return "\n".join(parts)


# Stored runs to plot: a storage path, StoredRun objects, or (label, results) pairs.
History = str | Path | Iterable[StoredRun | tuple[str, Sequence[Result]]]


def _history_runs(history: History | None) -> list[tuple[str, list[Result]]]:
    """[(run label, results)] in time order, from a storage path, StoredRun objects or (label, results) pairs."""
    if history is None:
        return []
    if isinstance(history, (str, Path)):
        history = list_runs(history)
    runs = []
    for item in history:
        if isinstance(item, StoredRun):
            when = item.datetime
            # to the second: runs of one minute (a CI retry, a loop of runs) are apart on the plot too
            label = "\n".join(x for x in (when[:19].replace("T", " "), (item.commit or "")[:8] or item.id) if x)
            runs.append((when, label, item.results()))
        else:
            label, results = item
            runs.append(("", str(label), list(results)))
    if all(when for when, _, _ in runs):
        runs.sort(key=lambda run: run[0])
    return [(label, results) for _, label, results in runs]


def history_series(runs: Sequence[tuple[str, Sequence[Result]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{model: {cell label: [{"run", "index", "median", "regression"}]}} across runs, in run order.

    ``index`` is the run's position in ``runs`` (its x on the plot: two runs never share one, whatever
    their labels). A point is a regression when the gate (``gate_results``) finds its latency
    regressed against the medians of the cell's earlier runs (its history mode: two runs alone are
    never judged).
    """
    per_model: dict[str, dict[str, list[dict[str, Any]]]] = {}
    previous: dict[Cell, Result] = {}
    earlier_medians: dict[str, list[float]] = {}
    for index, (label, results) in enumerate(runs):
        verdicts = gate_results(list(previous.values()), results,
                                history={cell_id: list(m) for cell_id, m in earlier_medians.items()})
        regressed = {v.cell for v in verdicts if v.verdict == REGRESSION and v.metric == LATENCY}
        for r in results:
            if not r.ok or r.latency_ms is None:
                continue
            name = f"{r.cell.format}/{r.cell.backend}/{r.cell.precision}"
            per_model.setdefault(r.cell.model, {}).setdefault(name, []).append(
                {"run": label, "index": index, "median": r.latency_ms.median, "regression": r.cell.id in regressed})
            previous[r.cell] = r
            earlier_medians.setdefault(r.cell.id, []).append(r.latency_ms.median)
    return per_model


def html_report(runs: Sequence[tuple[str, Sequence[Result], Mapping[str, Any] | None]] | Sequence[Result],
                history: History | None = None, verdicts: Iterable[Verdict] | None = None,
                title: str = "deploybench report", machine: Mapping[str, Any] | None = None,
                recommendation: Any = None) -> str:
    """One self-contained HTML page (inline CSS and SVG, nothing fetched): per run the matrix tables,
    latency distributions, speed vs accuracy with the Pareto front and peak memory; then each model's
    median latency across the ``history`` runs (StoredRun objects, (label, results) pairs or a storage
    path) with regressions marked. Gate ``verdicts`` come first when given, then a ``recommendation``
    (``deploybench.recommend``'s: its ``html()`` section, and its cells marked in the tables). A plain
    list of Results is one run (with ``machine``)."""
    runs = list(runs)
    if runs and isinstance(runs[0], Result):  # one run given as its results
        runs = [("matrix", runs, machine)]
    created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{_e(title)}</h1>", f"<p class='muted'>generated {_e(created)} · "
            f"{sum(len(r) for _, r, _ in runs)} cells in {len(runs)} run(s)</p>"]
    if verdicts is not None:
        body.append("<h2>Gate verdicts</h2>")
        body.append(_verdicts_html(verdicts))
    recommended = set(recommendation.recommended_ids) if recommendation is not None else set()
    if recommendation is not None:
        body.append(recommendation.html())
    for label, results, machine in runs:
        body.append(_run_html(label, list(results), machine, recommended))
    history_runs = _history_runs(history)
    if history is not None:
        body.append("<h2>History</h2>")
        if len(history_runs) < 2:
            body.append(f"<p class='muted'>{len(history_runs)} stored run(s): at least two are needed</p>")
        else:
            body.append("<p class='muted'>median latency of each cell across stored runs; "
                        "a red ring marks a regression against the run before</p><div class='plots'>")
            for model, series in sorted(history_series(history_runs).items()):
                body.append(_plot(plots.history_svg(series, title=f"{model}: median latency across runs")))
            body.append("</div>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


__all__ = ["history_series", "html_report"]
