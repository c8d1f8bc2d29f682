"""Reports of a matrix: terminal table, Markdown for a PR, self-contained HTML, and the report CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from deploybench.harness.gate.verdict import Verdict
from deploybench.harness.report.command import add_report_arguments, report_command
from deploybench.harness.report.html import history_series, html_report
from deploybench.harness.report.markdown import markdown_report
from deploybench.harness.report.table import BEST_MARK, best_cells, terminal_table
from deploybench.harness.results.io import load_results_file
from deploybench.spec import Accuracy, Cell, LatencyStats, Result, ToleranceCheck

EVIL = "<script>alert(1)</script>"


def measured(model, fmt, backend, precision="fp32", median=1.0, error=1e-6, metric=None, seed=0, peak=200.0,
             unstable=False, tolerance=None) -> Result:
    """An ok Result whose stats are computed from seeded samples around ``median`` ms."""
    samples = median * np.clip(1 + 0.05 * np.random.default_rng(seed).standard_normal(60), 0.5, None)
    q25, q75 = np.percentile(samples, [25, 75])
    latency = LatencyStats(n=len(samples), mean=float(samples.mean()), median=float(np.median(samples)),
                           p90=float(np.percentile(samples, 90)), p95=float(np.percentile(samples, 95)),
                           p99=float(np.percentile(samples, 99)), min=float(samples.min()), max=float(samples.max()),
                           stdev=float(samples.std()), cv=float(samples.std() / samples.mean()), iqr=float(q75 - q25))
    accuracy = Accuracy(max_abs_error=error, metric="top1" if metric is not None else None, metric_value=metric,
                        reference="torch fp32")
    return Result(Cell(model, fmt, backend, precision), latency_ms=latency, throughput_ips=1000 / median,
                  load_ms=40.0, first_inference_ms=3 * median, peak_rss_mb=peak, baseline_rss_mb=90.0,
                  artifact_bytes=2_000_000, accuracy=accuracy, tolerance=tolerance, unstable=unstable,
                  samples_ms=samples.tolist())


def not_run(model, fmt, backend, status, reason) -> Result:
    return Result(Cell(model, fmt, backend, "fp32"), status=status, reason=reason)


@pytest.fixture
def matrix() -> list[Result]:
    return [
        measured("resnet18", "torch", "torch", median=12.0, error=0.0, metric=0.71),
        measured("resnet18", "onnx", "onnxruntime", median=8.0, error=2e-5, metric=0.71),
        measured("resnet18", "openvino", "openvino", median=6.0, error=3e-5, metric=0.70, peak=260.0),
        # fastest of all, but its accuracy check failed: it must not be the best cell
        measured("resnet18", "openvino", "openvino", "int8", median=3.0, error=4e-2, metric=0.52, unstable=True,
                 tolerance=ToleranceCheck(False, "int8: max_abs_error 0.04 > 0.01")),
        not_run("resnet18", "tflite", "tflite", "skipped", "ai_edge_litert is not installed: pip install deploybench[tflite]"),
        not_run("resnet18", "onnx", "openvino", "failed", "RuntimeError: unsupported op Foo"),
        measured("digits_cnn", "torch", "torch", median=0.3, error=0.0, metric=0.98),
        measured("digits_cnn", "onnx", "onnxruntime", median=0.05, error=1e-6, metric=0.98),
        measured(EVIL, "onnx", "onnxruntime", median=1.0),
    ]


def test_best_cell_is_fastest_that_passes_accuracy(matrix):
    best = best_cells(matrix)
    assert best["resnet18"].cell == Cell("resnet18", "openvino", "openvino", "fp32")
    assert best["digits_cnn"].cell == Cell("digits_cnn", "onnx", "onnxruntime", "fp32")


def test_terminal_table_marks_best_and_lists_skips_with_reasons(matrix):
    text = terminal_table(matrix, machine={"cpu": "TestCPU", "cores": 2, "machine_id": "m1"})
    assert text.startswith("machine: TestCPU, 2 cores")
    best_rows = [line for line in text.splitlines() if line.startswith(BEST_MARK)]
    assert len(best_rows) == 3  # one per model
    resnet_best = next(line for line in best_rows if "openvino" in line)
    assert re.search(r"openvino\s+openvino\s+fp32\s+6\.\d\d", resnet_best)
    int8_row = next(line for line in text.splitlines() if "int8" in line and "openvino" in line)
    assert "accuracy fails" in int8_row and "unstable" in int8_row and not int8_row.startswith(BEST_MARK)
    tail = text[text.index("not run (2):"):]
    assert "resnet18-tflite-tflite-fp32: ai_edge_litert is not installed: pip install deploybench[tflite]" in tail
    assert "resnet18-onnx-openvino-fp32: RuntimeError: unsupported op Foo" in tail
    # skipped cells are listed apart, not as rows of the tables
    assert not any(line.split()[:2] == ["tflite", "tflite"] for line in text[:text.index("not run")].splitlines())
    assert "unstable (the time cap came before the median was pinned down): resnet18-openvino-openvino-int8" in text


def test_markdown_puts_verdicts_first_and_folds_skips(matrix):
    verdicts = [
        Verdict("resnet18-onnx-onnxruntime-fp32", "latency", "unchanged", ratio=1.01),
        Verdict("resnet18-openvino-openvino-fp32", "latency", "regression", ratio=1.25, ci=(1.12, 1.40),
                baseline=4.8, current=6.0),
    ]
    text = markdown_report(matrix, verdicts=verdicts, machine={"cpu": "TestCPU", "cores": 2})
    assert text.index("## deploybench gate") < text.index("## deploybench matrix")
    assert "**1 regression, 1 unchanged**" in text or "**1 unchanged, 1 regression**" in text
    regression_row = next(line for line in text.splitlines() if "| regression |" in line)
    assert "resnet18-openvino-openvino-fp32" in regression_row and "1.250× [1.120, 1.400]" in regression_row
    details = text[text.index("<details><summary>2 cells not run"):]
    assert "ai_edge_litert is not installed" in details and details.rstrip().endswith("</details>")
    assert EVIL not in text and "&lt;script&gt;" in text


def test_html_is_self_contained_and_escapes_names(matrix):
    history = [(f"run{i}", [measured("resnet18", "onnx", "onnxruntime", median=8.0 * (1.5 if i == 2 else 1.0), seed=i),
                            measured(EVIL, "onnx", "onnxruntime", median=1.0, seed=i)]) for i in range(3)]
    page = html_report([(f"run {EVIL}", matrix, {"cpu": EVIL, "cores": 2, "machine_id": "m1"})],
                       history=history, title=f"report {EVIL}")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()  # no script at all: not the model's, not a CDN's
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    titles = " ".join(svgs)
    for kind in ("latency distribution", "speed vs accuracy", "peak memory per cell", "median latency across runs"):
        assert kind in titles, kind
    # the model name reaches the SVG text, escaped
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in svg for svg in svgs)


def test_history_marks_the_slower_run_as_regression():
    runs = [(f"run{i}", [measured("m", "onnx", "onnxruntime", median=8.0 * (1.5 if i == 2 else 1.0), seed=i)])
            for i in range(4)]
    series = history_series(runs)["m"]["onnx/onnxruntime/fp32"]
    assert [p["regression"] for p in series] == [False, False, True, False]


def test_pareto_front_keeps_only_undominated_points():
    from deploybench.harness.report.plots import pareto_front

    points = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.93), (0.5, 0.80), (4.0, 0.99)]
    assert pareto_front(points, higher_is_better=True) == [3, 0, 1, 4]
    errors = [(1.0, 1e-3), (2.0, 1e-6), (3.0, 1e-4)]
    assert pareto_front(errors, higher_is_better=False) == [0, 1]


def _run_json(path, results, machine_id="m1"):
    path.write_text(json.dumps({"schema": "deploybench.matrix/1", "deploybench_version": "0.1.0",
                                "created": "2025-01-01T00:00:00", "settings": {},
                                "machine": {"cpu": "TestCPU", "cores": 2, "machine_id": machine_id},
                                "cells": [r.to_dict() for r in results]}))
    return path


def _cli(argv):
    parser = add_report_arguments(argparse.ArgumentParser())
    return report_command(parser.parse_args(argv))


def test_report_cli_writes_markdown_and_html(tmp_path, matrix, capsys):
    results = _run_json(tmp_path / "run.json", matrix)
    assert _cli([str(results), "--markdown", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html")]) == 0
    printed = capsys.readouterr().out
    assert "not run (2):" in printed and BEST_MARK in printed
    assert "## deploybench matrix" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.html").read_text().count("<svg") >= 5


def test_report_no_table_writes_files_without_printing_the_matrix_again(tmp_path, matrix, capsys):
    results = _run_json(tmp_path / "run.json", matrix)  # `make demo`: the run already printed the table
    assert _cli([str(results), "--no-table", "--markdown", str(tmp_path / "r.md")]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"markdown report: {tmp_path / 'r.md'}"]
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "report demo-results.json --no-table" in makefile


def test_report_cli_puts_the_gate_verdicts_against_a_baseline_first(tmp_path, matrix):
    baseline = _run_json(tmp_path / "base.json", matrix)
    fatter = [measured("resnet18", "openvino", "openvino", median=12.0, error=3e-5, metric=0.70, peak=300.0)
              if r.cell == Cell("resnet18", "openvino", "openvino", "fp32") else r for r in matrix]
    current = _run_json(tmp_path / "run.json", fatter)
    assert _cli([str(current), "--gate", str(baseline), "--markdown", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert text.index("## deploybench gate") < text.index("## deploybench matrix")
    rows = [line for line in text.splitlines() if "resnet18-openvino-openvino-fp32" in line]
    regression_row = next(line for line in rows if "| regression |" in line)
    assert "| memory |" in regression_row  # +15 % peak memory, judged from each run's own figure
    latency_row = next(line for line in rows if "| latency |" in line)
    assert "| inconclusive |" in latency_row and "not judged" in latency_row  # two runs: drift unknown


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ('{"cells": [{"model": "m"}]}', "cell #0 lacks format, backend, precision"),
    ('[1, 2]', "expected a JSON object"),
])
def test_report_cli_on_malformed_json_exits_2_with_one_line(tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert _cli([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and expected in err


def test_report_cli_on_missing_file_exits_2(tmp_path, capsys):
    assert _cli([str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err and "does not exist" in err


def test_reads_pytest_benchmark_json(tmp_path):
    cell = measured("digits_cnn", "onnx", "onnxruntime", median=0.5)
    samples_s = [s / 1000 for s in cell.samples_ms]
    data = {"machine_info": {"node": "host1", "cpu": {"brand_raw": "TestCPU"}},
            "commit_info": {"id": "abc"},
            "benchmarks": [{"name": "test_speed[digits_cnn-onnx-onnxruntime-fp32]",
                            "extra_info": {**cell.cell.to_dict(), "peak_rss_mb": 123.0,
                                           "accuracy": {"max_abs_error": 2e-6}},
                            "stats": {"min": min(samples_s), "max": max(samples_s), "mean": float(np.mean(samples_s)),
                                      "stddev": float(np.std(samples_s)), "median": float(np.median(samples_s)),
                                      "iqr": 0.0001, "rounds": len(samples_s), "ops": 2000.0, "data": samples_s}},
                           {"name": "test_unrelated", "extra_info": {}, "stats": {"median": 0.1}}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    results, machine, _ = load_results_file(path)
    assert len(results) == 1
    (result,) = results
    assert result.cell == cell.cell and result.peak_rss_mb == 123.0
    assert result.latency_ms.median == pytest.approx(float(np.median(cell.samples_ms)))
    assert result.latency_ms.p99 == pytest.approx(float(np.percentile(cell.samples_ms, 99)))
    assert result.accuracy.max_abs_error == 2e-6
    assert machine["cpu"] == "TestCPU" and machine["machine_id"] == "host1"


def test_a_stored_pytest_run_on_targets_reads_back_with_each_cells_machine(tmp_path):
    # what `pytest --target pi --target local` stores: pytest-benchmark's block for this machine, and
    # deploybench's {machine_id: block} of every machine the cells ran on
    here, there = measured("digits_cnn", "onnx", "onnxruntime"), measured("digits_cnn", "onnx", "onnxruntime")
    there.cell = dataclasses.replace(there.cell, target="pi")
    machines = {"host1": {"machine_id": "host1", "cpu": "Xeon", "target": "local"},
                "board7": {"machine_id": "board7", "cpu": "Cortex-A76", "target": "pi"}}
    data = {"machine_info": {"node": "host1", "cpu": {"brand_raw": "Xeon"}, "deploybench_machines": machines},
            "benchmarks": [{"name": f"test_speed[{r.cell.id}]", "extra_info": {"result": r.to_dict()}, "stats": {}}
                           for r in (here, there)]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    results, machine, _ = load_results_file(path)
    assert machine == machines
    assert [(r.cell.id, r.machine_id) for r in results] == [("digits_cnn-onnx-onnxruntime-fp32", "host1"),
                                                            ("digits_cnn-onnx-onnxruntime-fp32@pi", "board7")]
