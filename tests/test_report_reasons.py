"""What the reports say about a cell beyond its figures (why its accuracy fails, random calibration, a
timing cut short by the --max-time cap) in every format, and what the HTML plots draw: the Pareto front
of the cells that pass accuracy, runs of one minute apart in history, no rounding noise for fp32."""

from __future__ import annotations

import html
import json
import re

import pytest

from deploybench.converters.calibration import SOURCE_RANDOM, SOURCE_REAL
from deploybench.harness.measure.timing import STOPPED_BY_MAX_TIME
from deploybench.harness.measure.tolerance import check_tolerance
from deploybench.harness.report.html import history_series, html_report
from deploybench.harness.report.markdown import markdown_report
from deploybench.harness.report.plots import ERROR_FLOOR, history_svg, speed_accuracy, speed_accuracy_svg
from deploybench.harness.report.table import terminal_table
from deploybench.spec import Accuracy, Cell, LatencyStats, Result, ToleranceCheck

from test_report import measured


def judged(result: Result, **figures) -> Result:
    """``result`` with accuracy ``figures`` judged by the real tolerance check of its precision."""
    result.accuracy = Accuracy(reference="torch fp32", **figures)
    result.tolerance = ToleranceCheck(*check_tolerance(result.accuracy, result.cell.precision))
    return result


@pytest.fixture
def failing_int8() -> Result:
    cell = judged(measured("digits_cnn", "onnx", "onnxruntime", "int8", median=0.5),
                  max_abs_error=0.4, cosine=0.951, top1_agreement=0.97)
    assert not cell.tolerance.passed
    return cell


@pytest.fixture
def fp32() -> Result:
    return judged(measured("digits_cnn", "onnx", "onnxruntime", median=1.0), max_abs_error=2e-6, cosine=1.0)


REASON = "int8: cosine 0.951 is below 0.98 by 0.029"


def _row(text: str, fmt: str, backend: str, precision: str = "") -> str:
    """The table line of the cell (terminal or Markdown)."""
    pattern = re.compile(rf"\b{fmt}[\s|]+{backend}[\s|]+{precision}")
    return next(line for line in text.splitlines() if pattern.search(line))


def test_accuracy_failure_reason_is_in_every_format(failing_int8, fp32):
    assert failing_int8.tolerance.message == REASON
    results = [fp32, failing_int8]

    table = terminal_table(results)
    assert _row(table, "onnx", "onnxruntime", "int8").rstrip().endswith("ok (accuracy fails) [1]")
    assert "[1] accuracy fails: " + REASON in table.splitlines()
    assert "[2]" not in table  # the passing cell has no note

    markdown = markdown_report(results)
    assert "ok (accuracy fails) [1] |" in _row(markdown, "onnx", "onnxruntime", "int8")
    assert "- [1] accuracy fails: " + REASON in markdown.splitlines()

    page = html_report(results)
    status_cell = re.search(r'<td class="[^"]*" title="([^"]*)">ok \(accuracy fails\) \[1\]</td>', page)
    assert status_cell and html.unescape(status_cell.group(1)) == "accuracy fails: " + REASON  # the tooltip
    assert f"<li>[1] accuracy fails: {REASON}</li>" in page  # and the visible text


def test_random_calibration_is_said_in_every_format(failing_int8, fp32):
    random_calibration = measured("digits_cnn", "openvino", "openvino", "int8", median=0.4)
    random_calibration.extra["artifact"] = {"calibration": SOURCE_RANDOM, "cached": False}
    real_calibration = measured("digits_cnn", "onnx", "openvino", "int8", median=0.6)
    real_calibration.extra["artifact"] = {"calibration": SOURCE_REAL}
    results = [fp32, random_calibration, real_calibration]
    note = f"int8 calibration used {SOURCE_RANDOM}"

    table = terminal_table(results)
    assert "int8 [1]" in _row(table, "openvino", "openvino")
    assert "[1]" not in _row(table, "onnx", "openvino")
    assert any(line.startswith(f"[1] {note}") for line in table.splitlines())
    assert note in markdown_report(results)
    page = html_report(results)
    assert f'title="{html.escape(note)}' in page and f"<li>[1] {html.escape(note)}" in page


def test_cell_stopped_by_the_time_cap_is_marked_unstable_with_the_cap(fp32):
    capped = measured("digits_cnn", "openvino", "openvino", median=1.0)
    capped.samples_ms = [10.0] * 999 + [9.9]  # 10 s of calls: the cap stopped it, not the rules
    capped.stopped_by = STOPPED_BY_MAX_TIME
    capped.extra["median_ci"] = 0.031  # what the timing reached: +-3.1 %, short of its goal
    results = [fp32, capped]

    table = terminal_table(results)
    row = _row(table, "openvino", "openvino")
    status = "ok unstable (hit the 10 s cap with the median known to ±3.1%) [1]"
    assert row.startswith("~") and status in row
    assert "unstable" not in _row(table, "onnx", "onnxruntime")
    assert "[1] unstable: the timing hit the --max-time cap before the median's 95% confidence interval" in table
    assert "unstable (the time cap came before the median was pinned down): digits_cnn-openvino" in table
    assert status in markdown_report(results)
    assert status + "</td>" in html_report(results)


def test_pareto_front_leaves_out_cells_that_fail_accuracy(failing_int8, fp32):
    slower_fp32 = judged(measured("digits_cnn", "openvino", "openvino", median=2.0), max_abs_error=1e-6, cosine=1.0)
    passing_int8 = judged(measured("digits_cnn", "openvino", "openvino", "int8", median=0.7), max_abs_error=0.02,
                          cosine=0.999, top1_agreement=1.0)
    rows = [fp32, slower_fp32, passing_int8, failing_int8]  # the failing cell is the fastest: a front would start at it
    data = speed_accuracy(rows)
    failing = data.rows.index(failing_int8)
    assert data.fails == [failing]
    assert failing not in data.front
    # slower_fp32 is off the front: under the error floor it is no more accurate than fp32, only slower
    assert [data.rows[i] for i in data.front] == [passing_int8, fp32]
    svg = speed_accuracy_svg(rows)
    assert "onnx/onnxruntime/int8 (fails accuracy)" in svg
    assert "Pareto front (*) of cells that pass accuracy" in svg
    assert "onnx/onnxruntime/int8 *" not in svg


def _xtick_count(svg: str) -> int:
    return len(re.findall(r'<g id="xtick_\d+"', svg))


def test_history_runs_of_the_same_minute_get_their_own_x(tmp_path):
    for stem, created, median in (("a", "2025-03-01T10:15:05+00:00", 8.0), ("b", "2025-03-01T10:15:48+00:00", 12.0)):
        (tmp_path / f"{stem}.json").write_text(json.dumps({
            "schema": "deploybench.matrix/1", "created": created, "machine": {}, "settings": {},
            "cells": [measured("m", "onnx", "onnxruntime", median=median).to_dict()]}))
    page = html_report([], history=str(tmp_path))
    (svg,) = [s for s in re.findall(r"<svg\b.*?</svg>", page, flags=re.S) if "median latency across runs" in s]
    assert _xtick_count(svg) == 2
    assert "2025-03-01 10:15:05" in svg and "2025-03-01 10:15:48" in svg


def test_history_runs_with_equal_labels_stay_apart():
    runs = [("nightly", [measured("m", "onnx", "onnxruntime", median=8.0, seed=i)]) for i in range(3)]
    points = history_series(runs)["m"]["onnx/onnxruntime/fp32"]
    assert [p["index"] for p in points] == [0, 1, 2]
    assert _xtick_count(history_svg({"onnx/onnxruntime/fp32": points})) == 3


def test_fp32_rounding_errors_are_not_plotted_as_differences():
    rows = [judged(measured("m", fmt, backend, median=median, seed=i), max_abs_error=error, cosine=1.0)
            for i, (fmt, backend, median, error) in enumerate((("torch", "torch", 3.0, 0.0),
                                                               ("onnx", "onnxruntime", 1.0, 3e-8),
                                                               ("openvino", "openvino", 2.0, 1.2e-8)))]
    assert speed_accuracy(rows).all_at_floor
    svg = speed_accuracy_svg(rows, title="m: speed vs accuracy")
    assert "below 0.0001 (float rounding): they are equally accurate" in svg
    assert "Pareto" not in svg and "onnx/onnxruntime/fp32" not in svg  # no points drawn


def test_errors_below_the_floor_are_drawn_at_it_next_to_real_errors():
    fp32_rows = [judged(measured("m", "onnx", backend, median=m), max_abs_error=e, cosine=1.0)
                 for backend, m, e in (("onnxruntime", 1.0, 3e-8), ("openvino", 2.0, 1.2e-8))]
    int8 = judged(measured("m", "onnx", "onnxruntime", "int8", median=0.5), max_abs_error=0.02, cosine=0.999,
                  top1_agreement=1.0)
    data = speed_accuracy([*fp32_rows, int8])
    assert not data.all_at_floor
    assert sorted(y for _, y in data.points) == [ERROR_FLOOR, ERROR_FLOOR, 0.02]
    assert "float rounding, drawn at" in speed_accuracy_svg([*fp32_rows, int8])


def test_a_capped_cell_without_samples_does_not_guess_the_cap():
    stats = LatencyStats(n=7, mean=1.0, median=1.0, p90=1.0, p95=1.0, p99=1.0, min=1.0, max=1.0, stdev=0.0, cv=0.0,
                         iqr=0.0)
    capped = Result(Cell("m", "onnx", "onnxruntime", "fp32"), latency_ms=stats, stopped_by=STOPPED_BY_MAX_TIME)
    table = terminal_table([capped])
    assert "ok unstable (hit the time cap) [1]" in table


def test_a_slow_last_call_does_not_pass_for_the_cap():
    capped = measured("m", "onnx", "onnxruntime", median=1.0)
    capped.samples_ms, capped.stopped_by = [3000.0, 3000.0, 3000.0, 3000.0], STOPPED_BY_MAX_TIME  # 12 s for a 10 s cap
    assert "ok unstable (hit the time cap) [1]" in terminal_table([capped])


def test_a_measured_cell_shows_all_three_notes(small_cnn_spec):
    """A real int8 cell of a model without calibration data, judged strictly and timed under a cap it
    cannot meet: the table says each of the three things, as the pipeline recorded them."""
    from deploybench.harness.measure.timing import TimingRules
    from deploybench.harness.pipeline.matrix import run_one_cell
    from deploybench.harness.pipeline.settings import MemoryRules, RunSettings

    settings = RunSettings(threads=1, in_process=True, memory=MemoryRules(enabled=False),
                           tolerances={"int8": {"cosine": 0.9999999}},
                           timing=TimingRules(warmup_count=1, warmup_s=0, min_time_s=0.1, max_time_s=0.3,
                                              median_ci=1e-6))
    # batch 64: a single 12 us call repeats to the timer's resolution on a quiet machine, which pins the
    # median exactly (interval width 0) and meets even this goal
    result = run_one_cell(small_cnn_spec, Cell("small_cnn", "onnx", "onnxruntime", "int8", dims=(("batch", 64),)),
                          settings)
    assert result.ok, result.reason
    assert result.stopped_by == STOPPED_BY_MAX_TIME and not result.tolerance.passed
    table = terminal_table([result])
    row = _row(table, "onnx", "onnxruntime", "int8")
    reached = result.extra["median_ci"]
    assert reached > 1e-6 and result.extra["median_ci_goal"] == 1e-6
    assert "int8 [1]" in row
    assert f"ok (accuracy fails) unstable (hit the 0.3 s cap with the median known to ±{reached:.1%}) [2] [3]" in row
    assert f"[1] int8 calibration used {SOURCE_RANDOM}" in table
    assert f"[2] accuracy fails: {result.tolerance.message}" in table and "cosine" in result.tolerance.message
    assert "[3] unstable: the timing hit the --max-time cap" in table


def test_html_table_puts_status_next_to_the_cell_and_names_a_shared_metric_once(fp32, failing_int8):
    fp32.accuracy.metric, fp32.accuracy.metric_value = "top1_accuracy", 0.993
    failing_int8.accuracy.metric, failing_int8.accuracy.metric_value = "top1_accuracy", 0.981
    page = html_report([fp32, failing_int8])
    head = re.search(r"<thead><tr>(.*?)</tr></thead>", page).group(1)
    headers = [html.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", head)]
    # a wide table scrolls its last columns out of sight at 1400 px: status must not be one of them
    assert headers[:5] == ["", "format", "backend", "precision", "status"]
    assert "top1_accuracy" in headers and "metric" not in headers
    assert "<td>0.981</td>" in page or '<td class="t">0.981</td>' in page


def test_a_mixed_bf16_cell_says_which_layers_the_backend_kept_in_f32(fp32):
    mixed = judged(measured("digits_cnn", "openvino", "openvino", "bf16", median=0.6), max_abs_error=0.01, cosine=0.9999)
    mixed.precision_ran = "bf16 in 3 of 4 compute layers; kept in fp32: Softmax x1"
    mixed.extra["runtime_notes"] = {"layer_precisions": {"bf16": {"Convolution": 3}, "f32": {"Softmax": 1}}}
    everywhere = judged(measured("digits_cnn", "onnx", "openvino", "bf16", median=0.6), max_abs_error=0.01,
                        cosine=0.9999)
    everywhere.extra["runtime_notes"] = {"layer_precisions": {"bf16": {"Convolution": 3}}}
    table = terminal_table([fp32, mixed, everywhere])
    note = "bf16 on openvino ran mixed: bf16 in 3 of 4 compute layers; kept in fp32: Softmax x1"
    assert "bf16 [1]" in _row(table, "openvino", "openvino", "bf16")
    assert f"[1] {note}" in table.splitlines()
    assert "[2]" not in table  # a cell that ran bf16 everywhere has nothing to add
    assert note in markdown_report([fp32, mixed]) and html.escape(note) in html_report([fp32, mixed])
