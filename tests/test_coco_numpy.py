"""deploybench.tasks.coco_numpy gives pycocotools' COCOeval figures bit for bit, and mean_average_precision
falls back on it where pycocotools cannot be imported (a device install)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploybench.tasks import metrics
from deploybench.tasks.coco_numpy import bbox_iou, coco_bbox_ap
from deploybench.tasks.detection import Detections
from deploybench.tasks.metrics import mean_average_precision

pytest.importorskip("pycocotools")  # the reference every figure here is checked against
from pycocotools import mask as mask_utils  # noqa: E402

SIZE = (480, 640)


def det(boxes, scores, classes) -> Detections:
    return Detections(np.asarray(boxes, np.float64).reshape(-1, 4), scores, classes, SIZE)


def gt(boxes, classes) -> dict:
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "class_ids": np.asarray(classes)}


def assert_same(detections, truths) -> tuple[float, float]:
    """numpy's (AP@0.5:0.95, AP@0.5) equal pycocotools' exactly, on the inputs deploybench builds."""
    images = metrics._coco_images(detections, truths)
    ours = coco_bbox_ap(images)
    reference = metrics._pycocotools_ap(images, [d.image_size for d in detections])
    assert ours == reference
    return ours


A = [[10, 10, 50, 50], [60, 60, 90, 100], [200, 100, 260, 180]]


def test_bbox_iou_is_maskapi_bbiou_bit_for_bit():
    rng = np.random.default_rng(3)
    dt = np.vstack([rng.uniform(-5, 30, (40, 2)).round(1), [[0, 0], [10, 0], [5, 5], [1e6, 1e6]]])
    dt = np.hstack([dt, np.vstack([rng.uniform(-2, 20, (40, 2)).round(1), [[10, 10], [10, 10], [0, 0], [1e7, 3]]])])
    gt_ = np.vstack([dt[::3], [[0, 0, 10, 10], [np.nan, 0, 5, 5], [2, 2, -3, 4]]])
    ours = bbox_iou(dt, gt_)
    theirs = mask_utils.iou(dt.tolist(), gt_.tolist(), [0] * len(gt_))
    np.testing.assert_array_equal(ours, theirs)  # NaN where theirs is NaN, every other float identical
    assert ours[41, len(dt[::3])] == 0.0  # [10,0,10,10] only touches [0,0,10,10] at x=10: no overlap


HAND_MADE = {
    "perfect": ([det(A, [0.9, 0.8, 0.7], [0, 0, 1])], [gt(A, [0, 0, 1])]),
    "an image without detections": ([det(A[:2], [0.9, 0.8], [0, 0]), det([], [], [])],
                                    [gt(A[:2], [0, 0]), gt(A[2:], [0])]),
    "an image without ground truth": ([det(A[:2], [0.9, 0.8], [0, 0]), det(A[2:], [0.95], [0])],
                                      [gt(A[:2], [0, 0]), gt([], [])]),
    "a class only in detections": ([det(A, [0.9, 0.8, 0.7], [0, 3, 0])], [gt(A, [0, 0, 0])]),
    "a class only in ground truth": ([det(A[:2], [0.9, 0.8], [0, 0])], [gt(A, [0, 0, 5])]),
    "duplicate detections and truths": ([det(A[:1] * 3 + A[1:2], [0.9, 0.9, 0.4, 0.6], [0, 0, 0, 0])],
                                        [gt(A[:1] * 2 + A[1:2] * 2, [0, 0, 0, 0])]),
    "tied scores across images": ([det(A[:2], [0.5, 0.5], [0, 0]), det([[12, 12, 48, 52], [0, 0, 5, 5]], [0.5, 0.5], [0, 0])],
                                  [gt(A[:2], [0, 0]), gt(A[:1], [0])]),
    "IoU exactly 0.5 and 0.75": ([det([[0, 0, 10, 5], [20, 0, 30, 7.5]], [0.9, 0.8], [0, 0])],
                                 [gt([[0, 0, 10, 10], [20, 0, 30, 10]], [0, 0])]),
    "boxes touching at an edge": ([det([[10, 0, 20, 10], [0, 10, 10, 20]], [0.9, 0.8], [0, 0])],
                                  [gt([[0, 0, 10, 10]], [0])]),
    "tiny boxes": ([det([[1, 1, 1.001, 1.001], [1, 1, 1.0005, 1.001], [5, 5, 5, 6]], [0.9, 0.8, 0.7], [0, 0, 0])],
                   [gt([[1, 1, 1.001, 1.001], [5, 5, 5, 6]], [0, 0])]),
    # area above 1e10 is outside COCO's "all" range: that truth is ignored, and so is an unmatched huge detection
    "huge boxes": ([det([[0, 0, 2e5, 2e5], [0, 0, 1e5, 0.5e5], [3e5, 3e5, 5e5, 5e5]], [0.9, 0.8, 0.7], [0, 0, 0])],
                   [gt([[0, 0, 2e5, 2e5], [0, 0, 1e5, 0.5e5]], [0, 0])]),
    "inverted boxes (negative area)": ([det([[50, 50, 10, 10], [10, 10, 50, 50]], [0.9, 0.8], [0, 0])],
                                       [gt([[50, 50, 10, 10], [10, 10, 50, 50]], [0, 0])]),
    "NaN box and score": ([det([[np.nan, 0, 10, 10], [0, 0, 10, 10], [0, 0, 9, 10]], [0.9, np.nan, 0.8], [0, 0, 0])],
                          [gt([[0, 0, 10, 10], [0, 0, 10, 9]], [0, 0])]),
}


@pytest.mark.parametrize("case", list(HAND_MADE))
def test_hand_made_cases_equal_pycocotools(case):
    detections, truths = HAND_MADE[case]
    assert_same(detections, truths)


def test_hand_made_cases_are_not_all_trivial():
    # the cases must reach partial figures, not only 0 and 1 (which a broken implementation could also give)
    figures = {case: assert_same(*HAND_MADE[case]) for case in HAND_MADE}
    assert figures["perfect"] == (1.0, 1.0)
    assert figures["boxes touching at an edge"] == (0.0, 0.0)
    assert figures["a class only in ground truth"] == (0.5, 0.5)  # class 5: AP 0, in the mean
    # class 3 (detections only) is out of the mean: as if its detection were not there
    assert figures["a class only in detections"] == assert_same([det(A[::2], [0.9, 0.7], [0, 0])], [gt(A, [0, 0, 0])])
    assert figures["IoU exactly 0.5 and 0.75"][1] == 1.0  # IoU 0.5 matches at the 0.5 threshold
    assert sum(0.0 < ap < 1.0 for ap, _ in figures.values()) >= 8


def test_no_ground_truth_at_all_is_minus_one_as_in_coco_and_zero_from_mean_average_precision():
    detections, truths = [det(A, [0.9, 0.8, 0.7], [0, 0, 1])], [gt([], [])]
    assert assert_same(detections, truths) == (-1.0, -1.0)
    assert mean_average_precision(detections, truths) == {"map50": 0.0, "map50_95": 0.0}
    assert mean_average_precision([det([], [], [])], [gt(A, [0, 0, 1])]) == {"map50": 0.0, "map50_95": 0.0}


def test_more_than_100_detections_in_an_image_keeps_the_best_100_per_class():
    rng = np.random.default_rng(7)
    truth = rng.uniform(0, 600, (30, 2))
    truth = np.hstack([truth, truth + rng.uniform(5, 60, (30, 2))])
    jitter = rng.normal(0, 3, (150, 4))
    found = truth[rng.integers(0, 30, 150)] + jitter
    classes = rng.integers(0, 2, 150)
    scores = rng.choice([0.2, 0.4, 0.6, 0.8], 150)  # many ties, so the stable order matters
    detections = [det(found, scores, np.where(np.arange(150) < 120, 0, classes)), det(found[:20], scores[:20], 0 * classes[:20])]
    truths = [gt(truth, rng.integers(0, 2, 30)), gt(truth[:10], np.zeros(10))]
    ap, ap50 = assert_same(detections, truths)
    assert 0.0 < ap < ap50 < 1.0
    # and the cut at 100 matters here: with every detection kept the figures differ
    images = metrics._coco_images(detections, truths)
    assert coco_bbox_ap(images, max_dets=150) != (ap, ap50)


def box_sets(max_boxes: int):
    # coordinates on a coarse grid (shared edges, equal boxes, IoU exactly at thresholds) or anywhere
    coordinate = st.one_of(st.integers(0, 8).map(lambda v: v * 10.0), st.floats(0, 100, width=32))
    box = st.tuples(coordinate, coordinate, st.floats(0.5, 60, width=32), st.floats(0.5, 60, width=32)).map(
        lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])
    return st.lists(st.tuples(box, st.integers(0, 2)), max_size=max_boxes)


score = st.one_of(st.sampled_from([0.25, 0.5, 0.75]), st.floats(0, 1, width=32))


@st.composite
def image_sets(draw):
    detections, truths = [], []
    for _ in range(draw(st.integers(1, 4))):
        truth = draw(box_sets(6))
        truths.append(gt([b for b, _ in truth], [c for _, c in truth]))
        # detections near the truths (so some match) and anywhere
        found = [(b, c) for (b, c) in truth if draw(st.booleans())]
        found = [([v + draw(st.sampled_from([0.0, 1.0, -2.0, 5.0])) for v in b], c if draw(st.integers(0, 4)) else 1 - c)
                 for b, c in found] + draw(box_sets(6))
        detections.append(det([b for b, _ in found], draw(st.lists(score, min_size=len(found), max_size=len(found))),
                              [c for _, c in found]))
    return detections, truths


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_sets())
def test_random_image_sets_equal_pycocotools(sets):
    detections, truths = sets
    if not any(len(d) for d in detections):  # pycocotools' loadRes cannot take an empty result list
        assert mean_average_precision(detections, truths) == {"map50": 0.0, "map50_95": 0.0}
        return
    assert_same(detections, truths)


def test_mean_average_precision_without_pycocotools(monkeypatch):
    detections, truths = HAND_MADE["duplicate detections and truths"]
    detections = detections + HAND_MADE["tied scores across images"][0]
    truths = truths + HAND_MADE["tied scores across images"][1]
    calls = []
    numpy_ap = metrics.coco_bbox_ap
    monkeypatch.setattr(metrics, "coco_bbox_ap", lambda *a, **k: calls.append(1) or numpy_ap(*a, **k))
    with_pycocotools = mean_average_precision(detections, truths)
    assert calls == []  # where pycocotools is installed it stays the reference
    for name in [n for n in sys.modules if n == "pycocotools" or n.startswith("pycocotools.")] + ["pycocotools"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import pycocotools...` now raises ImportError
    with pytest.raises(ImportError):
        import pycocotools.cocoeval  # noqa: F401
    without = mean_average_precision(detections, truths)
    assert calls == [1]
    assert without == with_pycocotools
    assert 0.0 < without["map50_95"] < without["map50"] < 1.0
