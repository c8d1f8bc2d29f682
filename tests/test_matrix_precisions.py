"""Issue 5 across the matrix: int8 keeps accuracy, fp32 matches PyTorch, every asked cell ends ok or
skipped with a reason, and each cell names the reference its errors are against."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from deploybench.converters import deploy_model
from deploybench.engines import backend_availability, create_deployer
from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.matrix import run_one_cell
from deploybench.harness.run import run_deployment_benchmark
from deploybench.harness.pipeline.plan import plan_cells
from deploybench.harness.pipeline.settings import MemoryRules, RunSettings
from deploybench.harness.measure.accuracy import make_reference, task_metric
from deploybench.harness.report.table import terminal_table
from deploybench.resolve import get_model, model_spec
from deploybench.spec import Cell

QUICK = RunSettings(threads=1, timing=TimingRules(warmup_count=1, warmup_s=0.0, min_samples=3, min_time_s=0.0),
                    memory=MemoryRules(enabled=False))
INT8_BACKENDS = [("onnx", "onnxruntime"), ("openvino", "openvino"),
                 pytest.param("tflite", "tflite", marks=pytest.mark.slow)]  # litert-torch export: ~30 s cold


def _require(backend: str) -> None:
    available, why = backend_availability(backend)
    if not available:
        pytest.skip(f"{backend} cannot run here: {why}")


def _top1(spec, fmt: str, backend: str, precision: str) -> float:
    with create_deployer(deploy_model(spec, fmt, precision=precision), backend=backend, precision=precision,
                         threads=1) as engine:
        assert engine.runtime_notes.get("fallback") is None
        return task_metric(engine.infer, spec)["value"]


@pytest.fixture(scope="module")
def digits():
    return get_model("digits_cnn")


@pytest.mark.precision
@pytest.mark.parametrize(("fmt", "backend"), INT8_BACKENDS)
def test_digits_int8_loses_at_most_one_point_of_held_out_top1(digits, fmt, backend):
    _require(backend)
    fp32 = _top1(digits, fmt, backend, "fp32")
    int8 = _top1(digits, fmt, backend, "int8")
    assert fp32 > 0.95  # a trained model, so a drop is measurable
    assert int8 >= fp32 - 0.01, f"{backend} int8 top-1 {int8:.4f} vs fp32 {fp32:.4f}"


@pytest.mark.slow
@pytest.mark.precision
@pytest.mark.parametrize(("fmt", "backend"), [("onnx", "onnxruntime"), ("openvino", "openvino"),
                                              ("onnx", "openvino"), ("tflite", "tflite")])
def test_resnet18_fp32_cells_match_torch_to_1e_4(fmt, backend):
    _require(backend)
    spec = get_model("resnet18")
    reference = make_reference(spec)
    try:
        with create_deployer(deploy_model(spec, fmt), backend=backend, precision="fp32", threads=2) as engine:
            for seed in range(3):
                inputs = spec.make_inputs(seed=seed)
                got = engine.infer(inputs)
                want = reference(inputs)
                for name, value in want.items():
                    error = float(np.abs(got[name].astype(np.float64) - value).max())
                    assert error <= 1e-4, f"{fmt}/{backend} output {name!r} seed {seed}: max abs error {error:.2e}"
    finally:
        reference.close()


@pytest.mark.openvino  # it runs the file on ONNX Runtime and OpenVINO
def test_a_bring_your_own_onnx_is_judged_against_its_own_fp32_run(small_cnn_spec, tmp_path):
    exported = deploy_model(small_cnn_spec, "onnx")
    own_file = tmp_path / "user_model.onnx"  # no sidecar, no PyTorch source: only the file
    shutil.copyfile(exported.path, own_file)
    spec = model_spec(str(own_file))
    assert spec.factory is None

    matrix = run_deployment_benchmark([spec], backends=["onnxruntime", "openvino"], precisions=["fp32", "int8"],
                                      settings=QUICK, progress=False)
    ok = [r for r in matrix.results if r.ok]
    assert {r.cell.backend for r in ok} == {"onnxruntime", "openvino"}
    assert not matrix.failed, [(r.cell.id, r.reason) for r in matrix.problems()]
    assert {r.accuracy.reference for r in ok} == {"onnxruntime fp32 (onnx file)"}
    own_run = next(r for r in ok if r.cell == Cell(spec.name, "onnx", "onnxruntime", "fp32"))
    assert own_run.accuracy.max_abs_error == 0.0  # the reference is this very run
    assert "errors vs onnxruntime fp32 (onnx file)" in terminal_table(matrix.results)


def test_precisions_a_backend_cannot_express_are_skips_with_reasons(small_cnn_spec):
    cells = plan_cells([small_cnn_spec], ["torch", "onnxruntime"], ["bf16", "int8"], include_unsupported=True)
    assert {c.id for c in cells} == {"small_cnn-torch-torch-bf16", "small_cnn-torch-torch-int8",
                                     "small_cnn-onnx-onnxruntime-bf16", "small_cnn-onnx-onnxruntime-int8"}
    for cell in (Cell("small_cnn", "torch", "torch", "int8"), Cell("small_cnn", "onnx", "onnxruntime", "bf16")):
        result = run_one_cell(small_cnn_spec, cell, QUICK)
        assert result.status == "skipped", result.reason
        assert f"backend {cell.backend} has no {cell.precision} mode; it runs:" in result.reason
        assert "\n" not in result.reason


def test_coreml_and_tensorrt_cells_are_skips_with_reasons_not_failures(small_cnn_spec):
    matrix = run_deployment_benchmark([small_cnn_spec], backends=["coreml", "tensorrt"],
                                      precisions=["fp32", "fp16", "bf16", "int8"], settings=QUICK, progress=False)
    by_backend = {}
    for result in matrix.results:
        by_backend.setdefault(result.cell.backend, []).append(result)
    assert set(by_backend) == {"coreml", "tensorrt"}
    for backend, results in by_backend.items():
        assert [r.cell.precision for r in results] == ["fp32", "fp16", "bf16", "int8"]
        available, why = backend_availability(backend)
        for result in results:
            if available:
                assert result.status in ("ok", "skipped"), (result.cell.id, result.reason)
            else:
                assert result.status == "skipped" and result.stage == "availability"
                assert result.reason == f"{backend} cannot run here: {why}"
            assert result.status == "ok" or result.reason
    assert not matrix.failed


def test_a_model_can_switch_off_a_criterion_that_means_nothing_for_it():
    """resnet18's untrained head makes top-1 agreement a tie-break; its int8 cells are judged on error figures."""
    from deploybench.harness.measure.tolerance import check_tolerance
    from deploybench.resolve import get_model
    from deploybench.spec import Accuracy

    accuracy = Accuracy(max_abs_error=0.2, cosine=0.998, top1_agreement=0.7)
    passed, message = check_tolerance(accuracy, "int8")
    assert not passed and "top1_agreement 0.7 is below 0.9" in message
    overrides = get_model("resnet18").tolerances["int8"]
    passed, message = check_tolerance(accuracy, "int8", overrides)
    assert passed, message
    passed, message = check_tolerance(Accuracy(cosine=0.95, top1_agreement=0.7), "int8", overrides)
    assert not passed and "cosine" in message
