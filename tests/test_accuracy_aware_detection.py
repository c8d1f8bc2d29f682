"""Accuracy-aware int8 (``int8ac``) of a detector holds what the harness judges a detector by: the mAP@0.5
drop after post-processing (``map_drop``), not cosine of the raw heatmaps and box distances."""

from __future__ import annotations

import numpy as np
import pytest

from deploybench.converters.accuracy_control import (AccuracyTarget, accuracy_target, detection_figures,
                                                     int8_criteria)
from deploybench.harness.measure.tolerance import check_tolerance
from deploybench.models.detector import TASK_CONFIG
from deploybench.spec import Accuracy, Cell, DeployBenchError, ModelSpec, TensorSpec
from deploybench.spec.tolerances import DETECTION_TOLERANCES

NAMES = ("heatmap", "box")


def _detector_spec(**tolerances) -> ModelSpec:
    return ModelSpec(name="det", inputs=(TensorSpec("image", ("batch", 3, 128, 128)),), factory=object,
                     output_names=NAMES, task="detection", task_config=dict(TASK_CONFIG), tolerances=dict(tolerances))


def test_a_detectors_int8ac_holds_the_map_drop_its_cell_is_judged_by_not_cosine():
    spec = _detector_spec()
    assert int8_criteria(spec) == {"map_drop": DETECTION_TOLERANCES["int8ac"]["map_drop"]} == {"map_drop": 0.03}
    # what check_tolerance judges a detector's int8ac cell by: the same keys
    judged = Accuracy(cosine=0.5, per_output={"detection": {"map50_drop": 0.01}})
    passed, message = check_tolerance(judged, "int8ac")
    assert passed and message == "int8ac: map50_drop 0.01 <= 0.03"  # a cosine of 0.5 is not judged
    # a model's or a run's overrides are held as they are judged: int8's apply to int8ac, None switches off
    assert int8_criteria(_detector_spec(int8={"map_drop": 0.01, "cosine": 0.9})) == {"map_drop": 0.01, "cosine": 0.9}
    assert int8_criteria(spec, {"map_drop": None, "cosine": 0.95}) == {"cosine": 0.95}
    with pytest.raises(DeployBenchError, match="nothing to keep"):
        int8_criteria(spec, {"map_drop": None})
    # a classifier never holds a detector's criterion
    classifier = ModelSpec(name="cls", inputs=spec.inputs, factory=object, task="classification",
                           tolerances={"int8": {"map_drop": 0.1}})
    assert "map_drop" not in int8_criteria(classifier)


def _outputs(peaks: list[tuple[int, int, int, float]]) -> list[np.ndarray]:
    """One image's (heatmap 1×4×16×16, box 1×4×16×16): a score at each (class, row, col) and 12-pixel
    distances to every side."""
    heatmap = np.zeros((1, 4, 16, 16), np.float32)
    for cls, row, col, score in peaks:
        heatmap[0, cls, row, col] = score
    return [heatmap, np.full((1, 4, 16, 16), 12.0, np.float32)]


def test_the_map_drop_is_measured_after_post_processing_against_the_references_detections():
    target = accuracy_target(_detector_spec())
    assert target.output_names == NAMES and target.task_config["score_threshold"] == 0.3
    assert target.required("map_drop") == pytest.approx(0.03 * 0.75)  # a quarter of the headroom to 0
    reference = [_outputs([(0, 3, 3, 0.9), (2, 10, 11, 0.8)]), _outputs([(1, 7, 7, 0.95)])]

    same = target.figures(reference, reference)
    assert same["map_drop"] == 0.0 and same["map50"] == same["reference_map50"] == pytest.approx(1.0)
    assert (same["matched"], same["lost"], same["added"]) == (3, 0, 0)
    assert target.margin_of(same) == pytest.approx(0.0225)

    # raw outputs nearly equal (cosine ~0.997) but one object gone: the detector lost a third of its objects
    lost = [_outputs([(0, 3, 3, 0.9), (2, 10, 11, 0.0)]), reference[1]]
    cosine_of_heatmaps = float(np.dot(lost[0][0].ravel(), reference[0][0].ravel())
                               / np.linalg.norm(lost[0][0]) / np.linalg.norm(reference[0][0]))
    figures = target.figures(lost, reference)
    assert (figures["matched"], figures["lost"], figures["added"]) == (2, 1, 0)
    assert figures["map_drop"] == pytest.approx(1 / 3)  # class 2 (one of three classes with objects) has AP 0
    assert target.margin_of(figures) < 0 < cosine_of_heatmaps
    assert "map_drop 0.3333 (holds <= 0.0225)" in target.describe(figures)

    # a score that drops under the deployment threshold but stays ranked at the eval one costs no mAP
    dimmer = [_outputs([(0, 3, 3, 0.9), (2, 10, 11, 0.2)]), reference[1]]
    assert detection_figures(dimmer, reference, NAMES, TASK_CONFIG)["map_drop"] == 0.0


def test_a_map_drop_target_without_the_detectors_post_processing_is_refused():
    with pytest.raises(DeployBenchError, match="detector's criterion"):
        AccuracyTarget({"map_drop": 0.03})


@pytest.mark.onnxruntime
def test_an_onnx_int8ac_detector_build_validates_on_the_map_drop_and_the_cell_is_judged_alike():
    """The seeded firing detector (seconds to build), with a loose map_drop plain int8 holds: no sensitivity
    pass, so this stays fast. Its build validates on the map drop, and the cell's verdict agrees."""
    from test_accuracy_aware import QUICK
    from test_detector_matrix import firing_detector_spec

    from deploybench.harness.pipeline.matrix import run_one_cell
    from deploybench.models.detector import _calibration_data

    spec = firing_detector_spec()
    spec.calibration_data = _calibration_data  # real images: random noise makes no detections worth holding
    spec.tolerances = {"int8": {"map_drop": 0.5}}
    result = run_one_cell(spec, Cell(spec.name, "onnx", "onnxruntime", "int8ac"), QUICK)
    assert result.ok, result.reason
    built = result.extra["artifact"]
    assert built["accuracy_criteria"] == {"map_drop": 0.5}
    assert "validation met: map_drop" in built["quantization"] and "cosine" not in built["quantization"]
    for figures in (built["validation_plain_int8"], built["validation_int8ac"]):
        assert {"map_drop", "map50", "reference_map50", "matched", "lost", "added"} <= set(figures)
        assert figures["reference_map50"] == pytest.approx(1.0)  # the reference against its own detections
    assert built["validation_met"] is True and built["ops_in_fp32"] == []
    # the cell is judged by the same criterion the build held, with the same verdict
    assert result.tolerance.message.startswith("int8ac: map50_drop")
    assert result.passes_accuracy == built["validation_met"]


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.openvino
def test_trained_detector_int8ac_holds_the_map_drop_on_both_backends_and_its_cells_agree():
    """The zoo's trained shapes_detector (trained once per cache, ~1 min): on ONNX Runtime and OpenVINO the
    int8ac build holds the cell's own criterion, and the cell's verdict and drop agree with the build's."""
    from test_accuracy_aware import QUICK

    from deploybench.harness.pipeline.matrix import run_one_cell
    from deploybench.resolve import get_model

    spec = get_model("shapes_detector")
    for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        result = run_one_cell(spec, Cell(spec.name, fmt, backend, "int8ac"), QUICK)
        assert result.ok, result.reason
        built = result.extra["artifact"]
        assert built["accuracy_criteria"] == {"map_drop": 0.03}
        assert built["validation_met"] is True and result.passes_accuracy, (built, result.tolerance.message)
        assert result.tolerance.message.startswith("int8ac: map50_drop")
        # both measure a drop well under the limit: on validation samples and on the judge's held-out set
        assert built["validation_int8ac"]["map_drop"] <= 0.0225
        assert result.accuracy.per_output["detection"]["map50_drop"] <= 0.03
