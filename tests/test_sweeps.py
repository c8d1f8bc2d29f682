"""Cells measured at the shape they deploy: batch, dims and thread sweeps, static against dynamic compiles."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.matrix import run_one_cell
from deploybench.harness.pipeline.plan import plan_cells
from deploybench.harness.pipeline.settings import (MemoryRules, RunSettings, Sweep, add_options,
                                                   settings_from_options)
from deploybench.spec import Cell, DeployBenchError, Result

FAST = dict(timing=TimingRules(min_samples=10, min_time_s=0.05, max_time_s=1.0), memory=MemoryRules(enabled=False))


def _settings(*argv: str) -> RunSettings:
    parser = argparse.ArgumentParser()
    add_options(parser.add_argument, edge="cli")
    args = parser.parse_args(list(argv))
    return settings_from_options(lambda dest: getattr(args, dest, None))


def test_a_cell_id_names_only_what_differs_from_the_plain_cell():
    plain = Cell("resnet18", "onnx", "openvino", "fp32")
    swept = Cell("resnet18", "onnx", "openvino", "fp32", dims=(("batch", 8), ("seq", 64)), threads=2,
                 shapes="dynamic", scenario="offline")
    assert plain.id == "resnet18-onnx-openvino-fp32" and plain.variant == ""
    assert swept.id == "resnet18-onnx-openvino-fp32-b8-seq64-t2-dynamic-offline"
    assert swept.variant == "b8 seq64 t2 dynamic offline"
    assert Result.from_dict(Result(swept).to_dict()).cell == swept


def test_a_results_file_written_before_sweeps_reads_as_plain_cells():
    old = {"model": "digits_cnn", "format": "onnx", "backend": "onnxruntime", "precision": "fp32", "status": "ok"}
    assert Result.from_dict(old).cell == Cell("digits_cnn", "onnx", "onnxruntime", "fp32")


def test_the_command_line_sweeps_every_combination_and_one_thread_count_is_no_sweep():
    settings = _settings("--batch-sizes", "1,8", "--dims", "seq=16,64", "--threads", "1,2", "--shapes", "static,dynamic")
    assert settings.threads is None
    variants = settings.sweep.variants()
    assert len(variants) == 2 * 2 * 2 * 2
    assert {v["dims"] for v in variants} == {(("batch", b), ("seq", s)) for b in (1, 8) for s in (16, 64)}
    single = _settings("--threads", "2")
    assert single.threads == 2 and single.sweep == Sweep()


@pytest.mark.parametrize("argv", [["--batch-sizes", "0"], ["--batch-sizes", "1,1"], ["--dims", "seq"],
                                  ["--dims", "=4"], ["--shapes", "frozen"], ["--threads", "two"]])
def test_a_bad_sweep_option_is_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        _settings(*argv)
    assert stop.value.code == 2
    assert len([line for line in capsys.readouterr().err.splitlines() if "error:" in line]) == 1


def test_a_sweep_refuses_the_batch_twice_and_unknown_scenarios():
    with pytest.raises(DeployBenchError, match="batch is swept twice"):
        Sweep(batch_sizes=(1,), dims=(("batch", (2,)),))
    with pytest.raises(DeployBenchError, match="unknown scenario"):
        Sweep(scenarios=("burst",))


def test_pyproject_values_give_the_same_sweep_as_the_command_line():
    values = {"threads": [1, 2], "batch_sizes": 8, "dims": {"seq": [16, 64]}}
    settings = settings_from_options(values.get)
    assert settings.sweep == _settings("--threads", "1,2", "--batch-sizes", "8", "--dims", "seq=16,64").sweep


def test_planning_drops_the_dynamic_variant_of_a_backend_that_does_not_compile_for_shapes(small_cnn_spec):
    sweep = Sweep(batch_sizes=(1, 4), shapes=("static", "dynamic"))
    cells = plan_cells([small_cnn_spec], ["torch", "onnxruntime"], ["fp32"], sweep=sweep)
    by_backend = {backend: sorted(c.id for c in cells if c.backend == backend) for backend in ("torch", "onnxruntime")}
    assert by_backend["torch"] == ["small_cnn-torch-torch-fp32-b1", "small_cnn-torch-torch-fp32-b4"]
    assert len(by_backend["onnxruntime"]) == 4 and "small_cnn-onnx-onnxruntime-fp32-b4-dynamic" in by_backend["onnxruntime"]


@pytest.mark.parametrize("fmt,backend", [("onnx", "onnxruntime"),
                                        pytest.param("openvino", "openvino", marks=pytest.mark.openvino),
                                        pytest.param("onnx", "openvino", marks=pytest.mark.openvino)])
def test_static_and_dynamic_compiles_give_the_same_outputs_and_say_which_ran(small_cnn_spec, fmt, backend):
    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer

    artifact = deploy_model(small_cnn_spec, fmt, precision="fp32")
    inputs = small_cnn_spec.make_inputs(seed=3, dims={"batch": 4})
    with create_deployer(artifact, backend=backend, static_dims={"batch": 4}) as static, \
            create_deployer(artifact, backend=backend) as dynamic:
        assert static.runtime_notes["shapes"] == "static input 4x3x16x16"
        assert dynamic.runtime_notes["shapes"] == "dynamic"
        np.testing.assert_allclose(static.infer(inputs)["logits"], dynamic.infer(inputs)["logits"], atol=1e-5)
        dynamic.infer(small_cnn_spec.make_inputs(dims={"batch": 2}))  # a dynamic axis takes any size
        with pytest.raises(DeployBenchError, match=r"compiled .* for \[4, 3, 16, 16\]"):
            static.infer(small_cnn_spec.make_inputs(dims={"batch": 2}))


def test_a_static_batch_engine_is_judged_on_any_number_of_samples(small_cnn_spec):
    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer
    from deploybench.harness.measure.accuracy import any_batch

    artifact = deploy_model(small_cnn_spec, "onnx", precision="fp32")
    samples = small_cnn_spec.make_inputs(seed=5, dims={"batch": 10})
    with create_deployer(artifact, backend="onnxruntime", static_dims={"batch": 4}) as static, \
            create_deployer(artifact, backend="onnxruntime") as dynamic:
        got = any_batch(static)(samples)["logits"]
        assert got.shape == (10, 5)  # chunks of 4, 4 and 2 padded to 4, the padding's outputs dropped
        np.testing.assert_allclose(got, dynamic.infer(samples)["logits"], atol=1e-5)
        assert any_batch(dynamic) == dynamic.infer


@pytest.mark.openvino
@pytest.mark.tflite
def test_swept_cells_run_at_their_batch_and_threads_and_a_fixed_file_skips_with_its_shape(small_cnn_spec):
    ran = run_one_cell(small_cnn_spec, Cell("small_cnn", "onnx", "openvino", "fp32", dims=(("batch", 4),), threads=1),
                       RunSettings(**FAST))
    assert ran.status == "ok", ran.reason
    notes = ran.extra["runtime_notes"]
    assert notes["shapes"] == "static input 4x3x16x16" and notes["threads"] == 1
    assert ran.accuracy.top1_agreement == 1.0 and ran.tolerance.passed
    # items per second count every item of a batch: 4 per call
    assert ran.throughput_ips == pytest.approx(4 * 1e3 / ran.latency_ms.mean, rel=0.5)
    skipped = run_one_cell(small_cnn_spec, Cell("small_cnn", "tflite", "tflite", "fp32", dims=(("batch", 4),)),
                           RunSettings(**FAST))
    assert skipped.status == "skipped" and skipped.stage == "convert"
    assert skipped.reason == "model.tflite takes input [1, 3, 16, 16]; this cell measures [4, 3, 16, 16] (batch=4)"


def test_an_axis_the_model_does_not_have_is_a_skip_naming_its_axes(small_cnn_spec):
    result = run_one_cell(small_cnn_spec, Cell("small_cnn", "onnx", "onnxruntime", "fp32", dims=(("seq", 16),)),
                          RunSettings(**FAST))
    assert (result.status, result.reason) == ("skipped", "small_cnn has no dynamic axis 'seq'; its dynamic axes: batch")


@pytest.mark.slow
def test_the_cli_sweeps_sequence_lengths_and_writes_the_dims(tmp_path):
    """tiny_transformer at three lengths: static cells skip the held-out metric (its data are 32 tokens long)
    but are still judged on seeded inputs at their own length."""
    output = tmp_path / "sweep.json"
    done = subprocess.run([sys.executable, "-m", "deploybench.cli", "run", "--models", "tiny_transformer",
                           "--backends", "onnxruntime", "--dims", "seq=16,64,256", "--no-memory", "--min-time", "0.1",
                           "--no-progress", "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    cells = {cell["dims"]["seq"]: cell for cell in json.loads(output.read_text())["cells"]}
    assert set(cells) == {16, 64, 256}
    for cell in cells.values():
        assert cell["status"] == "ok" and cell["tolerance"]["passed"]
        assert cell["extra"]["runtime_notes"]["shapes"] == f"static tokens 1x{cell['dims']['seq']}"
    assert "tiny_transformer seq256" in done.stdout  # each length is a group of its own in the table


def _measured(backend: str, batch: int, median_ms: float, threads: int = 0) -> Result:
    from deploybench.spec import LatencyStats

    stats = LatencyStats(n=30, mean=median_ms, median=median_ms, p90=median_ms, p95=median_ms, p99=median_ms,
                         min=median_ms, max=median_ms, stdev=0.0, cv=0.0, iqr=0.0)
    return Result(Cell("resnet18", "onnx", backend, "fp32", dims=(("batch", batch),), threads=threads),
                  latency_ms=stats, throughput_ips=batch * 1e3 / median_ms)


def test_reports_show_each_size_as_its_own_group_and_how_throughput_scales():
    from deploybench.harness.report.html import html_report
    from deploybench.harness.report.markdown import markdown_report
    from deploybench.harness.report.table import terminal_table

    results = [_measured("onnxruntime", 1, 10.0), _measured("onnxruntime", 8, 40.0),
               _measured("openvino", 1, 8.0), _measured("openvino", 8, 64.0)]
    text = terminal_table(results)
    assert text.index("resnet18 b1") < text.index("resnet18 b8")  # each batch a table of its own
    assert "resnet18 onnx/onnxruntime/fp32 by batch: 1 → 100/s, 8 → 200/s (2.0x)" in text
    assert "resnet18 onnx/openvino/fp32 by batch: 1 → 125/s, 8 → 125/s (1.0x)" in text
    assert "### Scaling (throughput, items/s)" in markdown_report(results)
    page = html_report(results)
    assert "resnet18: scaling with batch" in page and page.count("<svg") >= 5
    plain = [_measured("onnxruntime", 1, 10.0)]
    assert "scaling" not in terminal_table(plain) and "scaling with" not in html_report(plain)


def test_a_thread_sweep_is_a_series_of_its_own_beside_the_batch():
    from deploybench.harness.report.sweeps import scaling_series, swept_axes

    results = [_measured("onnxruntime", b, 10.0 * b / t, threads=t) for b in (1, 8) for t in (1, 2)]
    assert swept_axes(results) == ["batch", "threads"]
    by_threads = {s.label: [x for x, _ in s.points] for s in scaling_series(results, "threads")}
    assert by_threads == {"onnx/onnxruntime/fp32 b1": [1, 2], "onnx/onnxruntime/fp32 b8": [1, 2]}


@pytest.mark.openvino
def test_the_gates_interleaved_rerun_runs_a_swept_cell_at_its_own_shape_and_threads(small_cnn_spec):
    from deploybench.harness.gate.interleave import _engine_for

    result = run_one_cell(small_cnn_spec, Cell("small_cnn", "onnx", "openvino", "fp32", dims=(("batch", 4),), threads=1),
                          RunSettings(**FAST))
    assert result.status == "ok", result.reason
    assert result.dims_ran == {"batch": 4}
    again = Result.from_dict(json.loads(json.dumps(result.to_dict())))  # as the gate reads it from a file
    engine, inputs = _engine_for(again, RunSettings())
    try:
        assert inputs["input"].shape == (4, 3, 16, 16)
        assert engine.runtime_notes["shapes"] == "static input 4x3x16x16" and engine.runtime_notes["threads"] == 1
    finally:
        engine.close()


@pytest.mark.openvino
def test_a_static_compile_the_backend_cannot_do_falls_back_to_dynamic_and_says_so():
    """OpenVINO 2026.4's low-precision passes throw on tiny_transformer's int8 QDQ graph made static
    (found by `make demo`); the cell is then measured dynamic, and its notes and the table say so."""
    from deploybench.harness.report.table import terminal_table

    result = run_one_cell("tiny_transformer", Cell("tiny_transformer", "onnx", "openvino", "int8"),
                          RunSettings(**FAST))
    assert result.status == "ok", result.reason
    notes = result.extra["runtime_notes"]
    if notes.get("static_compile_failed"):
        assert notes["shapes"] == "dynamic"
        assert "measured with dynamic shapes: the backend's static compile failed" in terminal_table([result])
    else:  # a later OpenVINO compiles it: then the static compile is what ran
        assert notes["shapes"] == "static tokens 1x32"
