"""Reports of a matrix: a terminal table, a Markdown summary for a PR, and one self-contained HTML page.

Plain module: no pytest import. Heavy plotting lives in ``plots.py`` and is imported only by
``html_report``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploybench.spec import Accuracy, Cell, DeployBenchError, LatencyStats, Result

BEST_MARK = "★"
UNSTABLE_MARK = "~"

RUN_SCHEMA = "deploybench.matrix/1"


# ---------------------------------------------------------------------------------------------
# reading result files
# ---------------------------------------------------------------------------------------------

def load_results_file(path: str | Path) -> tuple[list[Result], dict[str, Any], dict[str, Any]]:
    """Read a ``deploybench run`` / ``deploybench merge`` JSON or a pytest-benchmark JSON.

    Returns (results, machine, settings). A merged file's cells keep their ``machine_id`` in
    ``Result.extra["machine_id"]``; its machine is the ``machines`` mapping.
    """
    from deploybench.harness.results.io import read_json

    path = Path(path)
    data = read_json(path, "results file", "pass a JSON written by `deploybench run --output`, "
                                           "`deploybench merge` or pytest --benchmark-json")
    try:
        return results_from_json(data)
    except DeployBenchError as exc:
        raise DeployBenchError(f"results file {str(path)!r}: {exc}") from None


def results_from_json(data: Any) -> tuple[list[Result], dict[str, Any], dict[str, Any]]:
    """(results, machine, settings) from the parsed JSON of a run, a merged matrix or pytest-benchmark."""
    if not isinstance(data, dict):
        raise DeployBenchError("expected a JSON object with 'cells' (deploybench) or 'benchmarks' (pytest-benchmark)")
    if "cells" in data:
        cells = data["cells"]
        if not isinstance(cells, list):
            raise DeployBenchError("'cells' must be a list of results")
        results = [_result_from_cell(c, i) for i, c in enumerate(cells)]
        machine = data.get("machine") or {}
        if (machine.get("merged") or not machine) and data.get("machines"):
            machine = data["machines"]  # a merged matrix: {machine_id: machine}
        return results, dict(machine), dict(data.get("settings") or {})
    if "benchmarks" in data:
        return _results_from_pytest_benchmark(data)
    raise DeployBenchError("no 'cells' (deploybench run JSON) nor 'benchmarks' (pytest-benchmark JSON) in it")


def _result_from_cell(cell: Any, index: int) -> Result:
    if not isinstance(cell, Mapping):
        raise DeployBenchError(f"cell #{index} is not an object")
    missing = [k for k in ("model", "format", "backend", "precision") if k not in cell]
    if missing:
        raise DeployBenchError(f"cell #{index} lacks {', '.join(missing)}")
    try:
        result = Result.from_dict(cell)
    except (TypeError, ValueError, KeyError) as exc:
        raise DeployBenchError(f"cell #{index} ({cell.get('model')}) is malformed: {_first_line(exc)}") from None
    if cell.get("machine_id") and "machine_id" not in result.extra:
        result.extra["machine_id"] = cell["machine_id"]
    return result


_STATS_KEYS = {"n": "rounds", "mean": "mean", "median": "median", "min": "min", "max": "max",
               "stdev": "stddev", "iqr": "iqr"}


def _results_from_pytest_benchmark(data: Mapping[str, Any]):
    """Rebuild Results from pytest-benchmark JSON: cell and figures in ``extra_info``, timing in ``stats``."""
    results = []
    for i, bench in enumerate(data.get("benchmarks") or []):
        info = dict(bench.get("extra_info") or {})
        # The plugin may store the whole Result.to_dict() under "result", or its fields flat.
        payload = dict(info.get("result") or info.get("deploybench") or info)
        cell_info = payload.get("cell")
        if isinstance(cell_info, Mapping):
            payload.update(cell_info)
        if not all(k in payload for k in ("model", "format", "backend", "precision")):
            params = bench.get("params") or {}
            for key in ("model", "format", "backend", "precision"):
                payload.setdefault(key, params.get(key) or params.get("fmt" if key == "format" else key))
        if not all(payload.get(k) for k in ("model", "format", "backend", "precision")):
            continue  # a benchmark that is not a deploybench cell
        if isinstance(payload.get("cell"), Mapping):
            payload.pop("cell")
        result = _result_from_cell(payload, i)
        stats = bench.get("stats") or {}
        if result.latency_ms is None and stats.get("median") is not None:
            result.latency_ms = _latency_from_benchmark_stats(stats)
        if not result.samples_ms and stats.get("data"):
            result.samples_ms = [float(s) * 1000.0 for s in stats["data"]]
        if result.throughput_ips is None and stats.get("ops"):
            result.throughput_ips = float(stats["ops"])
        results.append(result)
    machine = dict(data.get("machine_info") or {})
    if "cpu" in machine and isinstance(machine["cpu"], Mapping):
        machine["cpu"] = machine["cpu"].get("brand_raw") or machine["cpu"].get("arch") or ""
    if "node" in machine and "machine_id" not in machine:
        machine["machine_id"] = machine["node"]
    settings = {"source": "pytest-benchmark", "commit": (data.get("commit_info") or {}).get("id")}
    return results, machine, settings


def _latency_from_benchmark_stats(stats: Mapping[str, Any]) -> LatencyStats:
    """pytest-benchmark keeps seconds; deploybench keeps milliseconds."""
    ms = {key: float(stats.get(src) or 0.0) * 1000.0 for key, src in _STATS_KEYS.items() if key != "n"}
    samples = sorted(float(s) * 1000.0 for s in stats.get("data") or [])
    mean = ms["mean"]
    return LatencyStats(
        n=int(stats.get("rounds") or len(samples) or 0), mean=mean, median=ms["median"],
        p90=_percentile(samples, 90) if samples else ms["max"],
        p95=_percentile(samples, 95) if samples else ms["max"],
        p99=_percentile(samples, 99) if samples else ms["max"],
        min=ms["min"], max=ms["max"], stdev=ms["stdev"],
        cv=(ms["stdev"] / mean) if mean else 0.0, iqr=ms["iqr"],
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


# ---------------------------------------------------------------------------------------------
# the facts a table shows
# ---------------------------------------------------------------------------------------------

def passes_accuracy(result: Result) -> bool:
    """False when the precision check recorded a failure: ``extra['tolerance']['passed']`` (what the
    precision harness writes) or a plain ``accuracy_ok`` / ``accuracy_passed`` flag; True when unchecked."""
    tolerance = result.extra.get("tolerance")
    if isinstance(tolerance, Mapping) and tolerance.get("passed") is not None:
        return bool(tolerance["passed"])
    for key in ("accuracy_ok", "accuracy_passed", "within_tolerance"):
        if key in result.extra and result.extra[key] is not None:
            return bool(result.extra[key])
    return True


def best_cells(results: Iterable[Result]) -> dict[str, Result]:
    """{model: the ok cell with the fastest median among those that pass accuracy} (models without one absent)."""
    best: dict[str, Result] = {}
    for r in results:
        if not r.ok or r.latency_ms is None or r.latency_ms.median is None or not passes_accuracy(r):
            continue
        key = _model_key(r)
        if key not in best or r.latency_ms.median < best[key].latency_ms.median:
            best[key] = r
    return best


def _model_key(result: Result) -> str:
    """Cells of one model on different machines are compared per machine."""
    machine_id = result.extra.get("machine_id")
    return f"{result.cell.model} @ {machine_id}" if machine_id else result.cell.model


def _group_by_model(results: Iterable[Result]) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(_model_key(r), []).append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: (r.cell.format, r.cell.backend, r.cell.precision))
    return dict(sorted(groups.items()))


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.{digits}f}"
    return f"{value:.3g}"  # sub-millisecond latencies keep three significant digits


def _err(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return "0" if value == 0 else f"{value:.1e}"


def _spread(latency: LatencyStats | None) -> str:
    """IQR as a percentage of the median: robust where a few stalls on a shared machine blow up the cv."""
    if latency is None or not latency.median:
        return "–"
    spread = latency.iqr / latency.median * 100
    return f"{spread:.0f}%" if spread >= 10 else f"{spread:.1f}%"


def _metric(accuracy: Accuracy | None) -> str:
    if accuracy is None or accuracy.metric_value is None:
        return "–"
    name = accuracy.metric or "metric"
    return f"{name} {accuracy.metric_value:.3f}"


def _status_text(result: Result) -> str:
    text = result.status
    if result.ok and not passes_accuracy(result):
        text = "ok (accuracy fails)"
    if result.unstable:
        text += " unstable"
    return text


COLUMNS = ("", "format", "backend", "precision", "median ms", "p99 ms", "± IQR", "ips", "load ms", "first ms",
           "peak MB", "size MB", "max abs err", "metric", "status")


def _row(result: Result, is_best: bool) -> list[str]:
    lat = result.latency_ms
    size_mb = result.artifact_bytes / 1e6 if result.artifact_bytes is not None else None
    accuracy = result.accuracy
    mark = (BEST_MARK if is_best else "") + (UNSTABLE_MARK if result.unstable else "")
    return [
        mark, result.cell.format, result.cell.backend, result.cell.precision,
        _num(lat.median if lat else None), _num(lat.p99 if lat else None), _spread(lat),
        _num(result.throughput_ips, 1), _num(result.load_ms, 1), _num(result.first_inference_ms, 1),
        _num(result.peak_rss_mb, 1), _num(size_mb, 2),
        _err(accuracy.max_abs_error if accuracy else None), _metric(accuracy), _status_text(result),
    ]


# A detector's table adds its mAP@0.5:0.95, its mAP@0.5 change against the reference and its latency end
# to end (pre + inference + post per image), so a slow post-processing step shows next to "median ms".
DETECTOR_COLUMNS = ("mAP50-95", "mAP Δ", "e2e ms")
DETECTOR_LEGEND = ("mAP Δ: map50 minus the reference's (negative: the cell lost mAP); e2e ms: median per "
                   "image of pre-processing + inference + post-processing over held-out images "
                   "(median ms is inference alone)")


def _is_detector(rows: Sequence[Result]) -> bool:
    return any("detection" in r.extra or "e2e_ms" in r.extra for r in rows)


def _detector_cells(result: Result) -> list[str]:
    detection = result.extra.get("detection") or {}
    map50_95, drop = detection.get("map50_95"), detection.get("map50_drop")
    return [f"{map50_95:.3f}" if map50_95 is not None else "–",
            f"{0.0 - drop:+.3f}" if drop is not None and math.isfinite(drop) else "–",  # 0.0 - 0.0 is +0.0
            _num(result.extra.get("e2e_ms"))]


def _with_detector_columns(headers: Sequence[str], table: list[list[str]], rows: Sequence[Result]
                           ) -> tuple[Sequence[str], list[list[str]]]:
    """The detector columns inserted before the last (status) column, for a detector's table only."""
    if not _is_detector(rows):
        return headers, table
    return ([*headers[:-1], *DETECTOR_COLUMNS, headers[-1]],
            [[*line[:-1], *_detector_cells(r), line[-1]] for line, r in zip(table, rows)])


def _reference_of(rows: Sequence[Result]) -> str | None:
    for r in rows:
        if r.accuracy and r.accuracy.reference:
            return r.accuracy.reference
    return None


def _machine_line(machine: Mapping[str, Any] | None) -> str:
    if not machine:
        return ""
    if "machine_id" not in machine and all(isinstance(v, Mapping) for v in machine.values()):
        return "; ".join(f"{key}: {_machine_line(value)}" for key, value in machine.items())
    parts = [str(machine.get("cpu") or "")]
    if machine.get("arch"):
        parts.append(str(machine["arch"]))
    cores = machine.get("cores") or machine.get("cores_usable") or machine.get("cores_logical")
    if cores:
        parts.append(f"{cores} cores")
    if machine.get("memory_gib"):
        parts.append(f"{float(machine['memory_gib']):.1f} GiB")
    for key in ("os", "python"):
        if machine.get(key):
            parts.append(str(machine[key]))
    return ", ".join(p for p in parts if p)


def _not_ok(results: Iterable[Result]) -> list[Result]:
    return sorted((r for r in results if not r.ok), key=lambda r: (r.status, r.cell))


# ---------------------------------------------------------------------------------------------
# terminal
# ---------------------------------------------------------------------------------------------

def terminal_table(results: Sequence[Result], machine: Mapping[str, Any] | None = None) -> str:
    """The matrix as plain text: one table per model, then skipped / failed cells with their reasons.

    The best cell of each model (fastest median among ok cells that pass accuracy) is marked ★,
    unstable cells ~ and 'unstable' in their status.
    """
    from tabulate import tabulate

    results = list(results)
    lines: list[str] = []
    if machine:
        lines.append(f"machine: {_machine_line(machine)}")
    best = best_cells(results)
    for model, rows in _group_by_model(results).items():
        shown = [r for r in rows if r.ok]
        if not shown:
            continue
        reference = _reference_of(shown)
        lines.append("")
        lines.append(f"{model}" + (f"  (errors vs {reference})" if reference else ""))
        headers, table = _with_detector_columns(COLUMNS, [_row(r, best.get(model) is r) for r in shown], shown)
        lines.append(tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
        if _is_detector(shown):
            lines.append(DETECTOR_LEGEND)
    if not any(r.ok for r in results):
        lines.append("no cell ran successfully")
    unstable = [r for r in results if r.ok and r.unstable]
    if unstable:
        lines.append("")
        lines.append(f"{UNSTABLE_MARK} unstable (latency spread too wide to trust): "
                     + ", ".join(r.cell.id for r in unstable))
    others = _not_ok(results)
    if others:
        lines.append("")
        lines.append(f"not run ({len(others)}):")
        for r in others:
            where = f" @ {r.extra['machine_id']}" if r.extra.get("machine_id") else ""
            lines.append(f"  {r.status:8} {r.cell.id}{where}: {r.reason or 'no reason given'}")
    if best:
        lines.append("")
        lines.append(f"legend: {BEST_MARK} fastest median among ok cells that pass accuracy, {UNSTABLE_MARK} unstable")
    return "\n".join(lines).lstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------

_VERDICT_ICONS = {"regression": "❌", "improvement": "✅", "unchanged": "➖", "inconclusive": "❔"}


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if not isinstance(obj, Mapping) and hasattr(obj, name):
            return getattr(obj, name)
    return default


def _verdict_rows(verdicts: Iterable[Any]) -> list[dict[str, Any]]:
    """Verdicts as plain dicts, whatever shape the gate hands over (dataclass or dict)."""
    rows = []
    for v in verdicts:
        cell = _get(v, "cell", "cell_id", "id")
        if isinstance(cell, Cell):
            cell = cell.id
        elif isinstance(cell, Mapping):
            cell = Cell(cell["model"], cell["format"], cell["backend"], cell["precision"]).id
        ci = _get(v, "ci", "confidence_interval")
        if ci is None and _get(v, "ci_low") is not None:
            ci = (_get(v, "ci_low"), _get(v, "ci_high"))
        rows.append({
            "cell": str(cell), "metric": _get(v, "metric", "figure", "field", default="median"),
            "verdict": str(_get(v, "verdict", "status", "kind", default="")),
            "ratio": _get(v, "ratio"), "ci": ci,
            "baseline": _get(v, "baseline", "baseline_value", "before"),
            "current": _get(v, "current", "current_value", "after"),
            "reason": _get(v, "reason", "note", default="") or "",
        })
    order = {"regression": 0, "inconclusive": 1, "improvement": 2, "unchanged": 3}
    rows.sort(key=lambda r: (order.get(r["verdict"], 4), r["cell"], str(r["metric"])))
    return rows


def _ratio_text(ratio: Any, ci: Any) -> str:
    if ratio is None:
        return "–"
    text = f"{float(ratio):.3f}×"
    if ci and len(ci) == 2 and ci[0] is not None and ci[1] is not None:
        text += f" [{float(ci[0]):.3f}, {float(ci[1]):.3f}]"
    return text


def _md_escape(text: Any) -> str:
    """Table cells: a pipe would split the cell, and HTML tags in a model name must not render."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows)
    return "\n".join(out)


def markdown_report(results: Sequence[Result], verdicts: Iterable[Any] | None = None,
                    machine: Mapping[str, Any] | None = None) -> str:
    """Markdown for a PR comment: gate verdicts first (if given), then one table per model,
    then skipped / failed cells folded in a ``<details>``."""
    results = list(results)
    parts: list[str] = []
    if verdicts is not None:
        rows = _verdict_rows(verdicts)
        counts = {}
        for r in rows:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        summary = ", ".join(f"{n} {name}" for name, n in counts.items()) or "no comparable cells"
        parts.append("## deploybench gate")
        parts.append(f"**{summary}**")
        shown = [r for r in rows if r["verdict"] != "unchanged"]
        notes = {r["reason"] for r in shown}
        if len(shown) > 1 and len(notes) == 1 and notes != {""}:  # one shared note: say it once
            parts.append(f"_note: {_md_escape(notes.pop())}_")
            shown = [{**r, "reason": ""} for r in shown]
        if shown:
            parts.append(_md_table(
                ["", "cell", "figure", "verdict", "ratio [CI]", "baseline", "current", "note"],
                [[_VERDICT_ICONS.get(r["verdict"], ""), r["cell"], r["metric"], r["verdict"],
                  _ratio_text(r["ratio"], r["ci"]), _num(_as_float(r["baseline"])),
                  _num(_as_float(r["current"])), r["reason"]] for r in shown]))
        unchanged = [r for r in rows if r["verdict"] == "unchanged"]
        if unchanged:
            parts.append(f"<details><summary>{len(unchanged)} unchanged</summary>\n\n"
                         + _md_table(["cell", "figure", "ratio [CI]"],
                                     [[r["cell"], r["metric"], _ratio_text(r["ratio"], r["ci"])] for r in unchanged])
                         + "\n\n</details>")
    parts.append("## deploybench matrix")
    if machine:
        parts.append(f"_machine: {_md_escape(_machine_line(machine))}_")
    best = best_cells(results)
    headers = ["", "format", "backend", "precision", "median ms", "p99 ms", "± IQR", "peak MB", "size MB",
               "max abs err", "metric", "status"]
    for model, rows in _group_by_model(results).items():
        ok_rows = [r for r in rows if r.ok]
        if not ok_rows:
            continue
        table_rows = []
        for r in ok_rows:
            full = _row(r, best.get(model) is r)
            table_rows.append([full[0], *full[1:7], full[10], full[11], full[12], full[13], full[14]])
        reference = _reference_of(ok_rows)
        parts.append(f"### {_md_escape(model)}" + (f" (errors vs {_md_escape(reference)})" if reference else ""))
        model_headers, table_rows = _with_detector_columns(headers, table_rows, ok_rows)
        parts.append(_md_table(model_headers, table_rows))
        if _is_detector(ok_rows):
            parts.append(f"_{_md_escape(DETECTOR_LEGEND)}_")
    if not any(r.ok for r in results):
        parts.append("_no cell ran successfully_")
    others = _not_ok(results)
    if others:
        # <code>, not backticks: entities inside a code span would show literally
        items = "\n".join(f"- **{_md_escape(r.status)}** <code>{_md_escape(r.cell.id)}</code>: "
                          f"{_md_escape(r.reason or 'no reason given')}" for r in others)
        parts.append(f"<details><summary>{len(others)} cells not run (skipped / failed)</summary>\n\n{items}\n\n</details>")
    return "\n\n".join(parts) + "\n"


def _as_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# html
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1250px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin:1.4em 0 .4em}.muted{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0 1em}.scroll{overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f4f6}th.t,td.t{text-align:left}td.note{white-space:normal;min-width:16em}tr.best td{background:#fff7d6;font-weight:600}
tr.unstable td{color:#8a5a00}tr.fails td{color:#a12}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:12px;align-items:start}
.plot{border:1px solid #eee;border-radius:6px;padding:6px;background:#fff;min-width:0}
.plot svg{max-width:100%;height:auto;display:block;margin:auto}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
.verdict-regression{color:#b00020;font-weight:700}.verdict-improvement{color:#0a7a2f}
.verdict-inconclusive{color:#8a5a00}ul.reasons li{margin:.2em 0}code{background:#f3f4f6;padding:0 3px}
"""

_HTML_COLUMNS = COLUMNS


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(rows: Sequence[Result], best: Result | None) -> str:
    headers, table = _with_detector_columns(_HTML_COLUMNS, [_row(r, r is best) for r in rows], rows)
    text_columns = {0, 1, 2, 3, 13, len(headers) - 1}  # left-aligned: names, the metric and the status
    head = "".join(f'<th class="t">{_e(c)}</th>' if i in text_columns else f"<th>{_e(c)}</th>"
                   for i, c in enumerate(headers))
    body = []
    for r, cells in zip(rows, table):
        classes = [c for c, on in (("best", r is best), ("unstable", r.unstable),
                                   ("fails", not passes_accuracy(r))) if on]
        tds = "".join(f'<td class="t">{_e(v)}</td>' if i in text_columns else f"<td>{_e(v)}</td>"
                      for i, v in enumerate(cells))
        body.append(f'<tr class="{" ".join(classes)}">{tds}</tr>')
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _plot(svg: str) -> str:
    return f'<div class="plot">{svg}</div>'


def _verdicts_html(verdicts: Iterable[Any]) -> str:
    rows = _verdict_rows(verdicts)
    if not rows:
        return "<p class='muted'>no comparable cells</p>"
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    parts = [f"<p><strong>{_e(', '.join(f'{n} {name}' for name, n in counts.items()))}</strong></p>"]

    def table(subset):
        notes = {r["reason"] for r in subset}
        shared = notes.pop() if len(subset) > 1 and len(notes) == 1 else None
        body = "".join(
            f"<tr><td class='t'>{_e(r['cell'])}</td><td class='t'>{_e(r['metric'])}</td>"
            f"<td class='t verdict-{_e(r['verdict'])}'>{_e(r['verdict'])}</td>"
            f"<td>{_e(_ratio_text(r['ratio'], r['ci']))}</td><td>{_e(_num(_as_float(r['baseline'])))}</td>"
            f"<td>{_e(_num(_as_float(r['current'])))}</td>"
            + ("" if shared is not None else f"<td class='t note'>{_e(r['reason'])}</td>") + "</tr>" for r in subset)
        note = f"<p class='muted'>note: {_e(shared)}</p>" if shared else ""
        return (note + "<table><thead><tr><th class='t'>cell</th><th class='t'>figure</th><th class='t'>verdict</th>"
                "<th>ratio [CI]</th><th>baseline</th><th>current</th>"
                + ("" if shared is not None else "<th class='t'>note</th>")
                + f"</tr></thead><tbody>{body}</tbody></table>")

    changed = [r for r in rows if r["verdict"] != "unchanged"]
    unchanged = [r for r in rows if r["verdict"] == "unchanged"]
    if changed:
        parts.append(table(changed))
    if unchanged:
        parts.append(f"<details><summary>{len(unchanged)} unchanged</summary>{table(unchanged)}</details>")
    return "".join(parts)


def _run_html(label: str, results: Sequence[Result], machine: Mapping[str, Any] | None) -> str:
    from deploybench.harness.report import plots

    parts = [f"<h2>{_e(label)}</h2>"]
    if machine:
        parts.append(f"<p class='muted'>machine: {_e(_machine_line(machine))}</p>")
        libraries = machine.get("libraries") or machine.get("versions")
        if isinstance(libraries, Mapping) and libraries:
            parts.append("<p class='muted'>versions: "
                         + _e(", ".join(f"{k} {v}" for k, v in libraries.items() if v)) + "</p>")
    ok = [r for r in results if r.ok]
    parts.append(f"<p class='muted'>{len(ok)} of {len(results)} cells ran; "
                 f"{BEST_MARK} marks the fastest median among ok cells that pass accuracy</p>")
    best = best_cells(results)
    for model, rows in _group_by_model(results).items():
        ok_rows = [r for r in rows if r.ok]
        if not ok_rows:
            continue
        reference = _reference_of(ok_rows)
        parts.append(f"<h3>{_e(model)}</h3>")
        if reference:
            parts.append(f"<p class='muted'>errors against {_e(reference)}</p>")
        parts.append(_html_table(ok_rows, best.get(model)))
        parts.append("<div class='plots'>"
                     + _plot(plots.latency_distribution_svg(ok_rows, title=f"{model}: latency distribution"))
                     + _plot(plots.speed_accuracy_svg(ok_rows, title=f"{model}: speed vs accuracy"))
                     + "</div>")
    if ok:
        parts.append("<h3>Peak memory</h3>")
        parts.append(_plot(plots.memory_svg(ok, title=f"{label}: peak memory per cell")))
    if not ok:
        parts.append("<p><strong>no cell ran successfully</strong></p>")
    others = _not_ok(results)
    if others:
        items = "".join(f"<li><strong>{_e(r.status)}</strong> <code>{_e(r.cell.id)}</code>"
                        + (f" @ {_e(r.extra['machine_id'])}" if r.extra.get("machine_id") else "")
                        + f": {_e(r.reason or 'no reason given')}</li>" for r in others)
        parts.append(f"<details><summary>{len(others)} cells not run (skipped / failed)</summary>"
                     f"<ul class='reasons'>{items}</ul></details>")
    return "\n".join(parts)


def _history_runs(history: Any) -> list[tuple[str, list[Result]]]:
    """[(run label, results)] in time order, from StoredRun-like objects, (label, results) pairs, or a storage path."""
    if history is None:
        return []
    if isinstance(history, (str, Path)):
        try:
            from deploybench.harness.results.history import list_runs
        except ImportError:
            raise DeployBenchError("--history needs deploybench.harness.results.history, which is missing here; "
                                   "drop --history or update deploybench") from None
        history = list_runs(str(history))
    runs = []
    for item in history:
        if isinstance(item, tuple):
            label, results = item[0], list(item[1])
            when = ""
        else:
            results = list(item.results())
            when = str(_get(item, "datetime", default="") or "")
            label = " ".join(str(x) for x in (when[:16], (_get(item, "commit", default="") or "")[:8]) if x) \
                or str(_get(item, "id", default="run"))
        runs.append((when, str(label), results))
    if all(when for when, _, _ in runs):
        runs.sort(key=lambda run: run[0])
    return [(label, results) for _, label, results in runs]


def history_series(runs: Sequence[tuple[str, Sequence[Result]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{model: {cell label: [{"run", "median", "regression"}]}} across runs, in run order.

    A point is a regression when the gate (if installed) says so against the previous run, or, without the
    gate, when its median exceeds the previous one by more than both runs' IQR and by over 5%.
    """
    per_model: dict[str, dict[str, list[dict[str, Any]]]] = {}
    previous: dict[Cell, Result] = {}
    for label, results in runs:
        flagged = _regressed_cells(list(previous.values()), results)
        for r in results:
            if not r.ok or r.latency_ms is None:
                continue
            model_series = per_model.setdefault(r.cell.model, {})
            name = f"{r.cell.format}/{r.cell.backend}/{r.cell.precision}"
            model_series.setdefault(name, []).append(
                {"run": label, "median": r.latency_ms.median, "regression": r.cell in flagged})
            previous[r.cell] = r
    return per_model


def _regressed_cells(baseline: Sequence[Result], current: Sequence[Result]) -> set[Cell]:
    if not baseline:
        return set()
    try:
        from deploybench.harness.gate import verdict as gate
    except ImportError:
        gate = None
    compare = getattr(gate, "gate_results", None) if gate else None
    if compare is not None:
        try:
            verdicts = compare(list(baseline), list(current))
        except Exception:  # the gate's own error must not take the report down; fall back below
            verdicts = None
        if verdicts is not None:
            by_id = {r.cell.id: r.cell for r in current}
            return {by_id[str(v.cell)] for v in verdicts
                    if v.verdict == "regression" and str(v.metric).startswith("latency") and str(v.cell) in by_id}
    before = {r.cell: r for r in baseline if r.ok and r.latency_ms}
    flagged = set()
    for r in current:
        old = before.get(r.cell)
        if not r.ok or r.latency_ms is None or old is None:
            continue
        gap = r.latency_ms.median - old.latency_ms.median
        if gap > max(r.latency_ms.iqr, old.latency_ms.iqr) and r.latency_ms.median > 1.05 * old.latency_ms.median:
            flagged.add(r.cell)
    return flagged


def html_report(runs: Sequence[tuple[str, Sequence[Result], Mapping[str, Any] | None]] | Sequence[Result],
                history: Any = None, verdicts: Iterable[Any] | None = None, title: str = "deploybench report",
                machine: Mapping[str, Any] | None = None) -> str:
    """One self-contained HTML page (inline CSS and SVG, nothing fetched): per run the matrix tables,
    latency distributions, speed vs accuracy with the Pareto front and peak memory; then each model's
    median latency across the ``history`` runs (StoredRun objects, (label, results) pairs or a storage
    path) with regressions marked. Gate ``verdicts`` come first when given. A plain list of Results
    is one run (with ``machine``)."""
    from deploybench.harness.report import plots

    runs = list(runs)
    if runs and isinstance(runs[0], Result):  # one run given as its results
        runs = [("matrix", runs, machine)]
    created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{_e(title)}</h1>", f"<p class='muted'>generated {_e(created)} · "
            f"{sum(len(r) for _, r, _ in runs)} cells in {len(runs)} run(s)</p>"]
    if verdicts is not None:
        body.append("<h2>Gate verdicts</h2>")
        body.append(_verdicts_html(verdicts))
    for label, results, machine in runs:
        body.append(_run_html(label, list(results), machine))
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


# ---------------------------------------------------------------------------------------------
# command line: deploybench report
# ---------------------------------------------------------------------------------------------

def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``deploybench report RESULTS... [--html F] [--markdown F] [--history DIR] [--gate BASELINE]``."""
    parser.add_argument("results", nargs="+", metavar="RESULTS",
                        help="deploybench run / merge JSON files, or pytest-benchmark JSON files")
    parser.add_argument("--html", metavar="FILE", help="write one self-contained HTML report here")
    parser.add_argument("--markdown", metavar="FILE", help="write a Markdown summary (for a PR comment) here")
    parser.add_argument("--history", metavar="DIR", help="pytest-benchmark storage whose runs to plot (.benchmarks)")
    parser.add_argument("--gate", metavar="BASELINE", help="baseline results JSON to put gate verdicts first")
    return parser


def report_command(args: argparse.Namespace) -> int:
    """Print the terminal table of each RESULTS file and write the asked-for reports; 2 on a user error."""
    import sys

    try:
        loaded = [(Path(p).name, *load_results_file(p)[:2]) for p in args.results]
        verdicts = _gate_verdicts(args.gate, [r for _, results, _ in loaded for r in results]) if args.gate else None
        for label, results, machine in loaded:
            if len(loaded) > 1:
                print(f"== {label}")
            print(terminal_table(results, machine))
        if args.markdown:
            every = [r for _, results, _ in loaded for r in results]
            machine = loaded[0][2] if len(loaded) == 1 else None
            _write(args.markdown, markdown_report(every, verdicts=verdicts, machine=machine))
            print(f"markdown report: {args.markdown}")
        if args.html:
            _write(args.html, html_report(loaded, history=args.history, verdicts=verdicts))
            print(f"html report: {args.html}")
    except DeployBenchError as exc:
        print(f"deploybench report: {exc}", file=sys.stderr)
        return 2
    return 0


def _write(path: str, text: str) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DeployBenchError(f"cannot write {path!r} ({exc.strerror}); choose a writable path") from None


def _gate_verdicts(baseline_path: str, current: Sequence[Result]) -> list[Any]:
    """Verdicts of the regression gate (``harness/gate.py``) of ``current`` against the baseline file."""
    baseline, _, _ = load_results_file(baseline_path)
    try:
        from deploybench.harness.gate import verdict as gate
    except ImportError:
        raise DeployBenchError("--gate needs deploybench.harness.gate.verdict, which is not installed here; "
                               "drop --gate or update deploybench") from None
    return list(gate.gate_results(list(baseline), list(current)))
