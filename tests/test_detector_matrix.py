"""The detector in the matrix: mAP per cell against torch fp32, agreement of detections, latency end to
end next to inference alone, a detection tolerance, and the detector columns of the reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploybench.spec import Accuracy, Cell, LatencyStats, ModelSpec, Result, TensorSpec

def fast_settings(**overrides):
    from deploybench.harness.measure.timing import TimingRules
    from deploybench.harness.pipeline.settings import MemoryRules, RunSettings

    return RunSettings(memory=MemoryRules(enabled=False),
                       timing=TimingRules(warmup_count=2, warmup_s=0.0, min_samples=5, min_time_s=0.05), **overrides)
FEW_IMAGES = 16


def firing_detector_spec() -> ModelSpec:
    """The shapes detector's network with seeded weights and a head biased to fire, evaluated on the first
    held-out images: many detections for agreement and timing, in seconds (a pipeline test, not accuracy)."""
    import torch

    from deploybench.models.detector import INPUT_SIZE, TASK_CONFIG, detector_network, held_out_set

    torch.manual_seed(3)
    net = detector_network()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # one pass sets the running statistics to that batch's
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(held_out_set()[0]["image"][100:104]))
        net.heatmap_head[-1].bias.fill_(0.0)
        net.heatmap_head[-1].weight.mul_(5.0)  # scores spread over (0, 1), not saturated at 1
    net.eval()

    def few_held_out_images():
        inputs, truths = held_out_set()
        return {name: array[:FEW_IMAGES] for name, array in inputs.items()}, truths[:FEW_IMAGES]

    return ModelSpec(name="firing_detector", inputs=(TensorSpec("image", ("batch", 3, INPUT_SIZE, INPUT_SIZE)),),
                     factory=lambda: net, output_names=("heatmap", "box"), task="detection",
                     eval_data=few_held_out_images, task_config={**TASK_CONFIG, "score_threshold": 0.9})


@pytest.mark.onnxruntime
def test_run_cell_of_a_detector_reports_map_agreement_and_end_to_end_latency():
    from deploybench.harness.pipeline.matrix import run_one_cell
    from deploybench.harness.report.markdown import markdown_report
    from deploybench.harness.report.table import terminal_table

    spec = firing_detector_spec()
    result = run_one_cell(spec, Cell(spec.name, "onnx", "onnxruntime", "fp32"), fast_settings(threads=1))
    assert result.ok, result.reason

    assert result.accuracy.metric == "map50"
    detection = result.accuracy.per_output["detection"]
    assert detection["images"] == FEW_IMAGES
    assert result.accuracy.metric_value == detection["map50"]
    assert 0.0 <= detection["map50_95"] <= detection["map50"] <= 1.0
    assert abs(detection["map50"] - detection["reference_map50"]) <= 0.005
    assert detection["map50_drop"] == pytest.approx(detection["reference_map50"] - detection["map50"])

    agreement = result.accuracy.per_output["detection_agreement"]
    assert agreement["matched"] > 50  # the firing head finds dozens of boxes in 16 images
    assert agreement["lost"] + agreement["added"] <= 0.02 * agreement["matched"]
    assert agreement["mean_iou"] > 0.999 and agreement["mean_score_delta"] < 1e-3

    stages = result.extra["stage_ms"]
    assert set(stages) == {"preprocess", "inference", "postprocess"}
    assert all(value > 0 for value in stages.values())
    assert result.extra["e2e_ms"] >= stages["inference"]
    assert result.extra["e2e_images"] == FEW_IMAGES  # all the held-out images there are (32 are asked for)

    assert result.tolerance.passed
    assert "map50_drop" in result.tolerance.message  # judged on mAP, not on raw heatmaps

    for text in (terminal_table([result]), markdown_report([result])):
        assert "mAP Δ" in text and "e2e ms" in text
        assert "+0.000" in text  # an fp32 cell loses nothing


def test_detection_tolerance_judges_the_map_drop_not_the_raw_outputs():
    from deploybench.harness.measure.tolerance import DETECTION_TOLERANCES, check_tolerance

    from deploybench.spec import PRECISIONS

    assert set(DETECTION_TOLERANCES) == set(PRECISIONS)  # int8ac is judged as int8
    # raw box outputs in pixels miss fp32's atol 1e-4, but the detections (and so the mAP) are the same
    fp32 = Accuracy(max_abs_error=2e-3, cosine=0.99999, metric="map50", metric_value=0.9,
                    per_output={"detection": {"map50": 0.9, "map50_drop": 0.001}})
    passed, message = check_tolerance(fp32, "fp32")
    assert passed and "map50_drop 0.001 <= 0.005" in message
    int8 = Accuracy(cosine=0.9, metric="map50", metric_value=0.85,
                    per_output={"detection": {"map50": 0.85, "map50_drop": 0.05}})
    passed, message = check_tolerance(int8, "int8")
    assert not passed and "map50_drop 0.05 exceeds map_drop 0.03 by 0.02" in message
    assert check_tolerance(int8, "int8", {"map_drop": 0.06})[0]
    # a model without detection figures keeps the raw-output criteria
    assert not check_tolerance(Accuracy(max_abs_error=2e-3), "fp32")[0]


def _result(model: str, backend: str, precision: str, per_output: dict, extra: dict) -> Result:
    latency = LatencyStats(n=30, mean=1.0, median=1.0, p90=1.1, p95=1.2, p99=1.3, min=0.9, max=1.5, stdev=0.1,
                           cv=0.1, iqr=0.1)
    return Result(Cell(model, "onnx", backend, precision), latency_ms=latency,
                  accuracy=Accuracy(metric="map50", metric_value=0.9, per_output=per_output), extra=extra)


def test_reports_show_detector_columns_only_for_detectors():
    from deploybench.harness.report.html import html_report
    from deploybench.harness.report.markdown import markdown_report
    from deploybench.harness.report.table import terminal_table

    detector = _result("det", "onnxruntime", "int8",
                       {"detection": {"map50": 0.90, "map50_95": 0.61, "map50_drop": 0.012}}, {"e2e_ms": 3.25})
    classifier = _result("cls", "onnxruntime", "fp32", {}, {})
    text = terminal_table([detector, classifier])  # one table per model, in name order: cls, then det
    cls_table, det_table = text[:text.index("\ndet")], text[text.index("\ndet"):]
    assert "mAP Δ" in det_table and "-0.012" in det_table and "0.610" in det_table and "3.25" in det_table
    assert "mAP Δ" not in cls_table and "e2e ms" not in cls_table
    markdown = markdown_report([detector, classifier])
    det_md = markdown[markdown.index("### det"):]
    assert "| mAP50-95 | mAP Δ | e2e ms | status |" in det_md and "| 0.610 | -0.012 | 3.25 |" in det_md
    assert "mAP Δ" not in markdown[markdown.index("### cls"):markdown.index("### det")]
    page = html_report([detector])
    # the HTML puts the status right after the cell's name, so a wide detector table never hides it
    assert '<th class="t status">status</th>' in page and "<th>mAP Δ</th><th>e2e ms</th></tr>" in page
    assert "<td>-0.012</td>" in page


def test_shapes_detector_plans_every_compatible_cell():
    from deploybench.engines import engine_class
    from deploybench.harness.pipeline.plan import plan_cells
    from deploybench.resolve import get_model

    spec = get_model("shapes_detector")
    cells = plan_cells([spec], ["torch", "onnxruntime", "openvino", "tflite"], ["fp32", "int8"])
    expected = {("torch", "torch", p) for p in ("fp32", "int8") if p in engine_class("torch").precisions}
    expected |= {(fmt, backend, p) for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino"),
                                                          ("onnx", "openvino"), ("tflite", "tflite"))
                 for p in ("fp32", "int8")}
    assert {(c.format, c.backend, c.precision) for c in cells} == expected
    assert {c.model for c in cells} == {"shapes_detector"}
    assert spec._module is None  # planning builds (and trains) nothing


# ---- the trained detector ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.openvino
def test_trained_detector_matrix_keeps_fp32_map_and_reports_the_int8_drop():
    from deploybench.harness.run import run_deployment_benchmark
    from deploybench.harness.report.table import terminal_table
    from deploybench.resolve import get_model

    spec = get_model("shapes_detector")
    matrix = run_deployment_benchmark([spec], backends=("torch", "onnxruntime", "openvino"),
                                      precisions=("fp32", "int8"), settings=fast_settings(), progress=False)
    assert not matrix.failed, [(r.cell.id, r.reason) for r in matrix.problems()]
    by_cell = {(r.cell.format, r.cell.backend, r.cell.precision): r for r in matrix.results if r.ok}
    assert {("onnx", "onnxruntime", "int8"), ("openvino", "openvino", "int8"),
            ("onnx", "openvino", "fp32")} <= set(by_cell)
    torch_map = by_cell["torch", "torch", "fp32"].accuracy.per_output["detection"]["map50"]
    assert torch_map >= 0.8
    for (fmt, backend, precision), result in by_cell.items():
        detection, agreement = result.accuracy.per_output["detection"], result.accuracy.per_output["detection_agreement"]
        assert detection["reference_map50"] == pytest.approx(torch_map)
        assert detection["map50_95"] <= detection["map50"]
        assert result.extra["e2e_ms"] >= result.extra["stage_ms"]["inference"] > 0
        if precision == "fp32":
            assert abs(detection["map50"] - torch_map) <= 0.005, result.cell.id
            assert agreement["lost"] + agreement["added"] <= 0.01 * agreement["matched"], result.cell.id
            assert agreement["mean_iou"] > 0.99
        else:
            assert math.isfinite(detection["map50_drop"])
            assert detection["map50_drop"] == pytest.approx(torch_map - detection["map50"])
            assert agreement["matched"] > 0.8 * (agreement["matched"] + agreement["lost"])
    assert "mAP Δ" in terminal_table(matrix.results)


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.openvino
def test_trained_detector_predicts_equal_detections_on_torch_onnxruntime_and_openvino():
    from deploybench.converters import deploy_model
    from deploybench.engines import backend_availability, create_deployer
    from deploybench.harness.measure.detection import held_out_images
    from deploybench.resolve import get_model

    spec = get_model("shapes_detector")
    images = held_out_images(spec, 24)
    with create_deployer(spec, backend="torch") as engine:
        reference = engine.predict(images)
    assert sum(len(found) for found in reference) >= 24  # every image holds at least one shape
    backends = ["onnxruntime"] + (["openvino"] if backend_availability("openvino")[0] else [])
    onnx_artifact = deploy_model(spec, "onnx")
    for backend in backends:
        with create_deployer(onnx_artifact, backend=backend) as engine:
            found = engine.predict(images)
        for one, ref in zip(found, reference):
            assert len(one) == len(ref), backend
            np.testing.assert_array_equal(one.class_ids, ref.class_ids)
            np.testing.assert_allclose(one.boxes, ref.boxes, atol=1.0)
