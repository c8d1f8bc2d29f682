"""Markdown for a pull-request comment: the gate's verdicts first, then one table per model, then the
cells that did not run, folded."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from deploybench.harness.gate.statistics import IMPROVEMENT, INCONCLUSIVE, REGRESSION, UNCHANGED
from deploybench.harness.gate.verdict import Verdict, by_severity, verdict_summary
from deploybench.harness.report.notes import Footnotes
from deploybench.harness.report.sweeps import scaling_lines
from deploybench.harness.report.table import (COLUMNS, DETECTOR_LEGEND, cell_row, cells_not_run, is_detector,
                                              machine_line, model_groups, number, ratio_text, with_detector_columns)
from deploybench.spec import Result

_VERDICT_ICONS = {REGRESSION: "❌", IMPROVEMENT: "✅", UNCHANGED: "➖", INCONCLUSIVE: "❔"}
# The terminal table's columns less ips, load ms and first ms: a PR comment stays narrow enough to read.
_SHOWN = (0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14)


def markdown_cell(text: Any) -> str:
    """Table cells: a pipe would split the cell, and HTML tags in a model name must not render."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(out)


def _verdicts_section(verdicts: Iterable[Verdict]) -> list[str]:
    verdicts = by_severity(verdicts)
    parts = ["## deploybench gate", f"**{verdict_summary(verdicts)}**"]
    shown = [v for v in verdicts if v.verdict != UNCHANGED]
    notes = [v.reason for v in shown]
    shared = len(shown) > 1 and len(set(notes)) == 1 and notes[0] != ""
    if shared:  # one note for every row: say it once
        parts.append(f"_note: {markdown_cell(notes[0])}_")
    if shown:
        parts.append(markdown_table(
            ["", "cell", "figure", "verdict", "ratio [CI]", "baseline", "current", "note"],
            [[_VERDICT_ICONS.get(v.verdict, ""), v.cell, v.metric, v.verdict, ratio_text(v.ratio, v.ci),
              number(v.baseline), number(v.current), "" if shared else v.reason] for v in shown]))
    unchanged = [v for v in verdicts if v.verdict == UNCHANGED]
    if unchanged:
        parts.append(f"<details><summary>{len(unchanged)} unchanged</summary>\n\n"
                     + markdown_table(["cell", "figure", "ratio [CI]"],
                              [[v.cell, v.metric, ratio_text(v.ratio, v.ci)] for v in unchanged])
                     + "\n\n</details>")
    return parts


def markdown_report(results: Sequence[Result], verdicts: Iterable[Verdict] | None = None,
                    machine: Mapping[str, Any] | None = None) -> str:
    """Markdown for a PR comment: gate ``verdicts`` first (if given), then one table per model,
    then skipped / failed cells folded in a ``<details>``."""
    results = list(results)
    parts: list[str] = [] if verdicts is None else _verdicts_section(verdicts)
    parts.append("## deploybench matrix")
    if machine:
        parts.append(f"_machine: {markdown_cell(machine_line(machine))}_")
    headers = [COLUMNS[i] for i in _SHOWN]
    for group in model_groups(results):
        footnotes = Footnotes()
        table_rows = [[full[i] for i in _SHOWN]
                      for full in (cell_row(r, r is group.best, footnotes) for r in group.rows)]
        parts.append(f"### {markdown_cell(group.name)}"
                     + (f" (errors vs {markdown_cell(group.reference)})" if group.reference else ""))
        parts.append(markdown_table(*with_detector_columns(headers, table_rows, group.rows)))
        if footnotes:  # a list: "[1]: text" would be a link definition, and vanish
            parts.append("\n".join(f"- {markdown_cell(line)}" for line in footnotes.lines()))
        if is_detector(group.rows):
            parts.append(f"_{markdown_cell(DETECTOR_LEGEND)}_")
    scaling = scaling_lines([r for r in results if r.ok])
    if scaling:
        parts.append("### Scaling (throughput, items/s)\n\n" + "\n".join(f"- {markdown_cell(line)}" for line in scaling))
    if not any(r.ok for r in results):
        parts.append("_no cell ran successfully_")
    others = cells_not_run(results)
    if others:
        # <code>, not backticks: entities inside a code span would show literally
        items = "\n".join(f"- **{markdown_cell(r.status)}** <code>{markdown_cell(r.cell.id)}</code>: "
                          f"{markdown_cell(r.reason or 'no reason given')}" for r in others)
        parts.append(f"<details><summary>{len(others)} cells not run (skipped / failed)</summary>\n\n{items}\n\n</details>")
    return "\n\n".join(parts) + "\n"


__all__ = ["markdown_report"]
