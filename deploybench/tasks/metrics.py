"""Detection metrics: COCO mAP (pycocotools, or its numpy twin without it), and how far one backend's detections agree with a reference's."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import DeployBenchError
from .coco_numpy import Image, coco_bbox_ap
from .detection import Detections, postprocess, score_thresholds
from .nms import box_iou



def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between the flattened arrays: 1.0 when both are zero, 0.0 when only one is."""
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    if norm == 0:
        return 1.0 if not a64.any() and not b64.any() else 0.0
    return float(np.dot(a64, b64) / norm)

def _boxes_and_classes(item: Any) -> tuple[np.ndarray, np.ndarray]:
    """(boxes K×4 xyxy, class ids K) of a ``Detections`` or a ground-truth dict {"boxes", "class_ids"}."""
    if isinstance(item, Detections):
        return item.boxes, item.class_ids
    if isinstance(item, Mapping) and "boxes" in item and "class_ids" in item:
        return (np.asarray(item["boxes"], np.float64).reshape(-1, 4),
                np.asarray(item["class_ids"], np.int64).reshape(-1))
    raise DeployBenchError(f"ground truth must be Detections or a dict with 'boxes' and 'class_ids'; "
                           f"got {type(item).__name__}")


def _coco_images(detections: Sequence[Detections], ground_truth: Sequence[Any]) -> list[Image]:
    """Each image's boxes as COCO takes them: (x, y, w, h), w and h subtracted in the boxes' own dtype
    (float32 for ``Detections``) and then made float64, as ``float(box[2] - box[0])`` does."""
    def xywh(boxes: np.ndarray) -> np.ndarray:
        return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]],
                        axis=1).astype(np.float64)

    images = []
    for found, truth in zip(detections, ground_truth):
        boxes, class_ids = _boxes_and_classes(truth)
        images.append(Image(xywh(boxes), class_ids.astype(np.int64), xywh(found.boxes),
                            found.scores.astype(np.float64), found.class_ids.astype(np.int64)))
    return images


def _pycocotools_ap(images: list[Image], image_sizes: list[tuple[int, int]]) -> tuple[float, float]:
    """(AP@0.5:0.95, AP@0.5) from pycocotools' COCOeval (stats[0], stats[1])."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations, results, classes = [], [], set()
    for image_id, (image, (height, width)) in enumerate(zip(images, image_sizes), start=1):
        for (x, y, w, h), cls in zip(image.gt_boxes.tolist(), image.gt_classes.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            classes.add(cls)
        for box, score, cls in zip(image.dt_boxes.tolist(), image.dt_scores.tolist(), image.dt_classes.tolist()):
            results.append({"image_id": image_id, "category_id": cls, "score": score, "bbox": box})
            classes.add(cls)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth_api = COCO()
        truth_api.dataset = {"images": [{"id": i, "height": h, "width": w}
                                        for i, (h, w) in enumerate(image_sizes, start=1)],
                             "annotations": annotations,
                             "categories": [{"id": c, "name": str(c)} for c in sorted(classes)]}
        truth_api.createIndex()
        found_api = truth_api.loadRes(results)
        evaluation = COCOeval(truth_api, found_api, "bbox")
        # COCO's own [1, 10, 100]: summarize() reads AP@0.5:0.95 at maxDets=100 whatever the list holds,
        # so a larger last entry (to keep every detection) made it -1, reported as 0, for any image with >100.
        evaluation.params.maxDets = [1, 10, 100]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def mean_average_precision(detections: Sequence[Detections], ground_truth: Sequence[Any]) -> dict[str, float]:
    """{"map50": COCO AP at IoU 0.5, "map50_95": COCO AP averaged over IoU 0.5:0.95} (bbox, at most
    100 detections per image and class).

    ``ground_truth[i]`` (a ``Detections`` or ``{"boxes": K×4 xyxy, "class_ids": K}``) belongs to
    ``detections[i]``. Classes without ground truth are left out of the mean, as COCO does; with no
    ground truth at all both values are 0. pycocotools computes it where it is installed (the host);
    elsewhere (a device install) ``coco_numpy`` does, to the same bits.
    """
    if len(detections) != len(ground_truth):
        raise DeployBenchError(f"{len(detections)} detection sets for {len(ground_truth)} ground-truth images; "
                               "give one of each per image")
    images = _coco_images(detections, ground_truth)
    if not any(len(image.gt_boxes) for image in images) or not any(len(image.dt_boxes) for image in images):
        return {"map50": 0.0, "map50_95": 0.0}
    try:
        import pycocotools.coco  # noqa: F401
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        map50_95, map50 = coco_bbox_ap(images, max_dets=100)
    else:
        map50_95, map50 = _pycocotools_ap(images, [found.image_size for found in detections])
    return {"map50": max(map50, 0.0), "map50_95": max(map50_95, 0.0)}


def detection_agreement(detections: Detections | Sequence[Detections],
                        reference: Detections | Sequence[Detections], iou: float = 0.5) -> dict[str, float]:
    """How one run's detections agree with a reference run's (e.g. a backend against torch fp32).

    Detections are matched greedily, highest IoU first, within the same class and at IoU ≥ ``iou``.
    Returns {"matched": pairs, "lost": reference detections with no match, "added": detections with
    no match in the reference, "mean_iou": mean IoU of the pairs, "mean_score_delta": mean absolute
    score difference of the pairs} (means are NaN with no pairs), summed over images.
    """
    found_list = [detections] if isinstance(detections, Detections) else list(detections)
    reference_list = [reference] if isinstance(reference, Detections) else list(reference)
    if len(found_list) != len(reference_list):
        raise DeployBenchError(f"{len(found_list)} detection sets against {len(reference_list)} reference sets; "
                               "compare the same images")
    matched = lost = added = 0
    ious, deltas = [], []
    for found, ref in zip(found_list, reference_list):
        overlap = box_iou(found.boxes, ref.boxes)
        overlap[found.class_ids[:, None] != ref.class_ids[None, :]] = -1.0
        pairs = []
        if overlap.size:
            rows, cols = np.nonzero(overlap >= iou)
            order = np.argsort(-overlap[rows, cols], kind="stable")
            used_found, used_ref = set(), set()
            for k in order:
                i, j = int(rows[k]), int(cols[k])
                if i in used_found or j in used_ref:
                    continue
                used_found.add(i)
                used_ref.add(j)
                pairs.append((i, j))
        matched += len(pairs)
        lost += len(ref) - len(pairs)
        added += len(found) - len(pairs)
        ious.extend(overlap[i, j] for i, j in pairs)
        deltas.extend(abs(float(found.scores[i]) - float(ref.scores[j])) for i, j in pairs)
    return {"matched": matched, "lost": lost, "added": added,
            "mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "mean_score_delta": float(np.mean(deltas)) if deltas else float("nan")}




def evaluate_detection(infer, inputs: Mapping[str, np.ndarray], truths: Sequence[Any], config: Mapping[str, Any],
                       limit: int | None = None) -> dict[str, Any]:
    """{"metric": "map50", "value": mAP@0.5, "map50_95": mAP@0.5:0.95, "n": images}: each input image
    (already at the model's input size) run alone, post-processed, scored as COCO does."""
    count = len(truths) if limit is None else min(int(limit), len(truths))
    if count == 0:
        raise DeployBenchError("detection eval_data has no images; give at least one image with its boxes")
    threshold = score_thresholds(config)[0]
    detections = []
    for i in range(count):
        outputs = infer({name: array[i:i + 1] for name, array in inputs.items()})
        detections.append(postprocess(outputs, config, score_threshold=threshold))
    scores = mean_average_precision(detections, list(truths[:count]))
    return {"metric": "map50", "value": scores["map50"], "map50_95": scores["map50_95"], "n": int(count)}


__all__ = ["cosine_similarity", "detection_agreement", "evaluate_detection", "mean_average_precision"]
