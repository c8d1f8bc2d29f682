"""Detection: NMS, letterbox, decode, mAP, agreement, and equal Detections on every backend."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploybench.spec import DeployBenchError, ModelSpec, TensorSpec
from deploybench.tasks.detection import Detections, Letterbox, decode_dense, letterbox, postprocess
from deploybench.tasks.nms import box_iou, nms, nms_numpy
from deploybench.tasks.metrics import detection_agreement, mean_average_precision

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ---- NMS ------------------------------------------------------------------------------------------
def test_nms_is_class_aware_and_uses_the_iou_threshold():
    boxes = np.array([[0, 0, 10, 10],        # 0: best of class 0
                      [0.4, 0.4, 10.4, 10.4],  # 1: IoU 0.92 with 0, same class -> suppressed
                      [0, 0, 10, 10],        # 2: same place, class 1 -> survives
                      [20, 20, 30, 30],      # 3: elsewhere -> survives
                      [0, 0, 10, 5.2]])      # 4: IoU exactly 0.52 with box 0
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    classes = np.array([0, 0, 1, 0, 0])
    assert nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, classes, 0.53).tolist() == [0, 2, 3, 4]
    assert nms(boxes, scores, classes, 0.5, max_detections=2).tolist() == [0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).tolist() == []


def test_nms_keeps_sub_pixel_boxes_apart():
    """Float boxes: OpenCV's integer Rect overload would round these two into one pixel box."""
    boxes = np.array([[0.1, 0.1, 0.9, 0.9], [0.5, 0.5, 1.3, 1.3]])  # IoU 0.143
    assert nms(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.3).tolist() == [0, 1]


def test_opencv_nms_equals_numpy_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 200, (400, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 60, (400, 2))], axis=1)
    scores, classes = rng.uniform(size=400), rng.integers(0, 3, 400)
    np.testing.assert_array_equal(nms(boxes, scores, classes, 0.45), nms_numpy(boxes, scores, classes, 0.45))


# ---- letterbox ------------------------------------------------------------------------------------
def test_letterbox_pads_the_short_side_and_centres_the_image():
    image = np.full((50, 100, 3), 200, np.uint8)
    canvas, fit = letterbox(image, (128, 128))
    assert canvas.shape == (128, 128, 3)
    assert (fit.scale_x, fit.scale_y, fit.pad_x, fit.pad_y) == (1.28, 1.28, 0, 32)
    assert (canvas[:32] == 114).all() and (canvas[32:96] == 200).all() and (canvas[96:] == 114).all()
    np.testing.assert_allclose(fit.to_input([[0, 0, 100, 50]]), [[0, 32, 128, 96]])


@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 2000), width=st.integers(1, 2000), input_h=st.sampled_from([64, 96, 128, 640]),
       input_w=st.sampled_from([64, 128, 320]), corners=st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_letterbox_round_trip(height, width, input_h, input_w, corners):
    fit = Letterbox.fit((height, width), (input_h, input_w))
    x1, x2 = sorted(corners[:2])
    y1, y2 = sorted(corners[2:])
    box = np.array([[x1 * width, y1 * height, x2 * width, y2 * height]])
    forward = fit.to_input(box)
    assert (forward[:, [0, 2]] >= -1e-3).all() and (forward[:, [0, 2]] <= input_w + 1e-3).all()
    assert (forward[:, [1, 3]] >= -1e-3).all() and (forward[:, [1, 3]] <= input_h + 1e-3).all()
    np.testing.assert_allclose(fit.to_image(forward), box, atol=1.0)
    anywhere = np.array([[-50, -50, input_w + 50, input_h + 50], [0, 0, input_w, input_h]], np.float32)
    back = fit.to_image(anywhere)
    assert (back >= 0).all() and (back[:, [0, 2]] <= width).all() and (back[:, [1, 3]] <= height).all()


# ---- decode and postprocess -----------------------------------------------------------------------
CONFIG = {"input_size": [32, 32], "class_names": ["a", "b"], "score_threshold": 0.3, "iou_threshold": 0.5,
          "levels": [{"scores": "heatmap", "boxes": "box", "stride": 8}], "max_detections": 10}


def hand_made_outputs() -> dict[str, np.ndarray]:
    """A 4×4 grid (stride 8): class 0 at cell (row 1, col 2) centre (20, 12), its neighbour weaker; class 1
    at cell (3, 0) centre (4, 28)."""
    heatmap = np.zeros((1, 2, 4, 4), np.float32)
    box = np.full((1, 4, 4, 4), 2.0, np.float32)
    heatmap[0, 0, 1, 2], box[0, :, 1, 2] = 0.9, [4, 6, 8, 10]      # -> [16, 6, 28, 22]
    heatmap[0, 0, 1, 3], box[0, :, 1, 3] = 0.6, [12, 6, 0, 10]     # -> [16, 6, 28, 22] again: suppressed
    heatmap[0, 1, 3, 0], box[0, :, 3, 0] = 0.8, [4, 4, 4, 4]       # -> [0, 24, 8, 32]
    heatmap[0, 1, 0, 0] = 0.2                                       # below the threshold
    return {"heatmap": heatmap, "box": box}


def test_decode_dense_places_boxes_around_cell_centres():
    boxes, scores = decode_dense(hand_made_outputs(), CONFIG)
    assert boxes.shape == (16, 4) and scores.shape == (16, 2)
    np.testing.assert_allclose(boxes[1 * 4 + 2], [16, 6, 28, 22])
    np.testing.assert_allclose(boxes[3 * 4 + 0], [0, 24, 8, 32])
    assert scores[6, 0] == pytest.approx(0.9)


def test_postprocess_thresholds_suppresses_and_rescales():
    found = postprocess(hand_made_outputs(), CONFIG)
    assert found.class_ids.tolist() == [0, 1] and found.labels == ["a", "b"]
    np.testing.assert_allclose(found.scores, [0.9, 0.8])
    np.testing.assert_allclose(found.boxes, [[16, 6, 28, 22], [0, 24, 8, 32]])
    # the same outputs for a 64x128 image letterboxed into 32x32 (scale 0.25, pad_y 8)
    fit = Letterbox.fit((64, 128), (32, 32))
    found = postprocess(hand_made_outputs(), CONFIG, fit)
    assert found.image_size == (64, 128)
    np.testing.assert_allclose(found.boxes, [[64, 0, 112, 56], [0, 64, 32, 64]])


def test_detections_round_trip_and_validation():
    found = Detections(np.array([[1, 2, 3, 4.5]]), [0.5], [2], (10, 20), ("a", "b", "c"),
                       keypoints=np.ones((1, 2, 3)))
    again = Detections.from_dict(found.to_dict())
    np.testing.assert_array_equal(again.boxes, found.boxes)
    np.testing.assert_array_equal(again.keypoints, found.keypoints)
    assert again.class_ids.dtype == np.int64 and again.labels == ["c"] and again.image_size == (10, 20)
    assert len(again) == 1 and len(Detections.empty((5, 5))) == 0
    with pytest.raises(DeployBenchError, match="one score and class per box"):
        Detections(np.zeros((2, 4)), [0.1], [0], (5, 5))


# ---- metrics --------------------------------------------------------------------------------------
TRUTH = [{"boxes": np.array([[10, 10, 50, 50], [60, 60, 90, 100]]), "class_ids": np.array([0, 0])},
         {"boxes": np.array([[0, 0, 20, 20]]), "class_ids": np.array([1])}]


def test_map_perfect_missed_and_wrong_class():
    perfect = [Detections(TRUTH[0]["boxes"], [0.9, 0.8], [0, 0], (128, 128)),
               Detections(TRUTH[1]["boxes"], [0.7], [1], (128, 128))]
    assert mean_average_precision(perfect, TRUTH) == {"map50": 1.0, "map50_95": 1.0}
    # class 0 finds one of two boxes: recall stops at 0.5, so COCO's 101-point AP is 51/101; class 1 is perfect
    one_missed = [Detections(TRUTH[0]["boxes"][:1], [0.9], [0], (128, 128)), perfect[1]]
    assert mean_average_precision(one_missed, TRUTH)["map50"] == pytest.approx((51 / 101 + 1) / 2)
    wrong_class = [Detections(TRUTH[0]["boxes"], [0.9, 0.8], [1, 1], (128, 128)), Detections.empty((128, 128))]
    assert mean_average_precision(wrong_class, TRUTH)["map50"] == 0.0
    # a box at IoU 0.72 counts at the IoU thresholds 0.5..0.7 (5 of 10): that class's AP@0.5:0.95 is 0.5
    loose = [perfect[0], Detections([[0, 0, 20, 14.4]], [0.7], [1], (128, 128))]
    scores = mean_average_precision(loose, TRUTH)
    assert scores["map50"] == 1.0
    assert scores["map50_95"] == pytest.approx((1.0 + 0.5) / 2)


def test_map_of_an_image_with_more_than_100_detections_is_coco_at_100_per_image():
    # 100 perfect boxes then 20 strays scored lower: COCO keeps the best 100 per image and class, so the
    # strays drop out and both figures are 1 (before, AP@0.5:0.95 came back 0 past 100 detections)
    corners = np.arange(100, dtype=np.float64)[:, None] * 10 + np.array([0, 0, 8, 8])
    strays = corners[:20] + 1000
    found = Detections(np.vstack([corners, strays]), np.r_[np.linspace(0.9, 0.5, 100), np.full(20, 0.1)],
                       np.zeros(120), (2000, 2000))
    assert mean_average_precision([found], [{"boxes": corners, "class_ids": np.zeros(100)}]) == {
        "map50": 1.0, "map50_95": 1.0}


def test_detection_agreement_counts_matches_losses_and_additions():
    reference = Detections([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [0, 0, 1], (64, 64))
    found = Detections([[0, 0, 10, 11], [40, 40, 50, 50], [5, 50, 15, 60]], [0.85, 0.7, 0.4], [0, 0, 1], (64, 64))
    result = detection_agreement(found, reference)
    assert (result["matched"], result["lost"], result["added"]) == (1, 2, 2)
    assert result["mean_iou"] == pytest.approx(100 / 110)
    assert result["mean_score_delta"] == pytest.approx(0.05)
    same = detection_agreement([reference], [reference])
    assert (same["matched"], same["lost"], same["added"], same["mean_iou"]) == (3, 0, 0, 1.0)


# ---- the whole pipeline on every backend -----------------------------------------------------------
def lively_detector_spec() -> ModelSpec:
    """The shapes detector's network with seeded weights and a head biased to fire: a pipeline test, not accuracy."""
    import torch

    from deploybench.models.detector import INPUT_SIZE, TASK_CONFIG, detector_network

    torch.manual_seed(3)
    net = detector_network()
    net.train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm statistics of real-looking inputs
            net(torch.rand(4, 3, INPUT_SIZE, INPUT_SIZE))
        net.heatmap_head[-1].bias.fill_(0.0)
        net.heatmap_head[-1].weight.mul_(100.0)
    net.eval()
    return ModelSpec(name="lively_detector", inputs=(TensorSpec("image", ("batch", 3, INPUT_SIZE, INPUT_SIZE)),),
                     factory=lambda: net, output_names=("heatmap", "box"), task="detection",
                     task_config={**TASK_CONFIG, "score_threshold": 0.72})


@pytest.fixture(scope="module")
def scene_images():
    from deploybench.models.detector import generate_shapes

    images, _ = generate_shapes(2, seed=11)
    tall = np.ascontiguousarray(np.repeat(images[0], 3, axis=0)[:301, :97])   # 301x97: letterboxed with padding
    return [images[1], tall]


def assert_same_detections(found: Detections, reference: Detections):
    assert len(found) == len(reference) > 0
    assert found.image_size == reference.image_size
    np.testing.assert_array_equal(found.class_ids, reference.class_ids)
    np.testing.assert_allclose(found.boxes, reference.boxes, atol=1.0)
    np.testing.assert_allclose(found.scores, reference.scores, atol=1e-3)


@pytest.mark.onnxruntime
@pytest.mark.openvino
def test_detections_equal_on_torch_onnxruntime_openvino_and_with_nms_in_graph(scene_images, tmp_path):
    from deploybench.converters import deploy_model
    from deploybench.engines import backend_availability, create_deployer
    from deploybench.tasks import predict_timed
    from deploybench.tasks.onnx_nms import onnx_with_nms

    spec = lively_detector_spec()
    onnx_artifact = deploy_model(spec, "onnx")
    in_graph = onnx_with_nms(onnx_artifact, tmp_path)
    assert in_graph.metadata["nms"] == "in_graph"
    with create_deployer(spec, backend="torch") as engine:
        reference, stages = predict_timed(engine, scene_images)
    assert stages["total"] >= stages["inference"] > 0
    runs = [(onnx_artifact, "onnxruntime"), (in_graph, "onnxruntime")]
    if backend_availability("openvino")[0]:
        runs += [(onnx_artifact, "openvino"), (in_graph, "openvino")]
    for artifact, backend in runs:
        with create_deployer(artifact, backend=backend) as engine:
            found = engine.predict(scene_images)
        for one, ref in zip(found, reference):
            assert_same_detections(one, ref)
        for one in found:  # boxes lie inside the original image
            height, width = one.image_size
            assert (one.boxes >= 0).all() and (one.boxes[:, [0, 2]] <= width).all()
            assert (one.boxes[:, [1, 3]] <= height).all()


@pytest.mark.onnxruntime
def test_user_fcos_detector_gives_equal_detections_on_torch_and_onnxruntime(scene_images):
    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer

    sys.path.insert(0, str(EXAMPLES))
    try:
        from fcos_detector import fcos_detector
    finally:
        sys.path.remove(str(EXAMPLES))
    spec = fcos_detector()
    with create_deployer(spec, backend="torch") as engine:
        reference = engine.predict(scene_images)
    with create_deployer(deploy_model(spec, "onnx"), backend="onnxruntime") as engine:
        found = engine.predict(scene_images)
    for one, ref in zip(found, reference):
        assert_same_detections(one, ref)
    with pytest.raises(DeployBenchError, match="decoder hook"):
        from deploybench.tasks.onnx_nms import onnx_with_nms

        onnx_with_nms(deploy_model(spec, "onnx"))


def test_box_iou_matrix():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


# ---- the trained detector --------------------------------------------------------------------------
def test_a_briefly_trained_shapes_detector_already_finds_shapes():
    """100 steps on 400 images (~15 s): the training recipe, targets and loss work (the full one is slow)."""
    from deploybench.engines import create_deployer
    from deploybench.models.detector import shapes_detector
    from deploybench.tasks import evaluate

    spec = shapes_detector(steps=100, train_images=400)
    with create_deployer(spec, backend="torch") as engine:
        result = evaluate(engine.infer, spec, limit=40)
    assert result["n"] == 40
    assert result["value"] > 0.25  # measured 0.41; an untrained head scores ~0


@pytest.mark.slow
def test_shapes_detector_reaches_map50_of_0_8_on_held_out_images():
    from deploybench.engines import create_deployer
    from deploybench.resolve import get_model
    from deploybench.tasks import evaluate

    spec = get_model("shapes_detector")
    with create_deployer(spec, backend="torch") as engine:
        result = evaluate(engine.infer, spec)
    assert result["metric"] == "map50" and result["n"] == 200
    assert result["value"] >= 0.8
    assert 0.3 <= result["map50_95"] <= result["value"]


@pytest.mark.slow
@pytest.mark.onnxruntime
def test_shapes_detector_keeps_its_map_on_onnxruntime():
    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer
    from deploybench.resolve import get_model
    from deploybench.tasks import evaluate

    spec = get_model("shapes_detector")
    with create_deployer(spec, backend="torch") as engine:
        reference = evaluate(engine.infer, spec, limit=60)
    with create_deployer(deploy_model(spec, "onnx"), backend="onnxruntime") as engine:
        found = evaluate(engine.infer, spec, limit=60)
    assert found["value"] == pytest.approx(reference["value"], abs=0.01)
