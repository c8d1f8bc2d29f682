"""Detection metrics: COCO mAP with pycocotools, and how far one backend's detections agree with a reference's."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec import DeployBenchError
from .detection import Detections, postprocess
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


def mean_average_precision(detections: Sequence[Detections], ground_truth: Sequence[Any]) -> dict[str, float]:
    """{"map50": COCO AP at IoU 0.5, "map50_95": COCO AP averaged over IoU 0.5:0.95} from pycocotools.

    ``ground_truth[i]`` (a ``Detections`` or ``{"boxes": K×4 xyxy, "class_ids": K}``) belongs to
    ``detections[i]``. Classes without ground truth are left out of the mean, as COCO does; with no
    ground truth at all both values are 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(ground_truth):
        raise DeployBenchError(f"{len(detections)} detection sets for {len(ground_truth)} ground-truth images; "
                               "give one of each per image")
    images, annotations, results = [], [], []
    classes: set[int] = set()
    for image_id, (found, truth) in enumerate(zip(detections, ground_truth), start=1):
        height, width = found.image_size
        images.append({"id": image_id, "height": height, "width": width})
        boxes, class_ids = _boxes_and_classes(truth)
        for box, cls in zip(boxes, class_ids):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls),
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0})
            classes.add(int(cls))
        for box, score, cls in zip(found.boxes, found.scores, found.class_ids):
            results.append({"image_id": image_id, "category_id": int(cls), "score": float(score),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
            classes.add(int(cls))
    if not annotations:
        return {"map50": 0.0, "map50_95": 0.0}
    if not results:
        return {"map50": 0.0, "map50_95": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth_api = COCO()
        truth_api.dataset = {"images": images, "annotations": annotations,
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
    map50_95, map50 = (float(v) for v in evaluation.stats[:2])
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
    (already at the model's input size) run alone, post-processed, scored with pycocotools."""
    count = len(truths) if limit is None else min(int(limit), len(truths))
    if count == 0:
        raise DeployBenchError("detection eval_data has no images; give at least one image with its boxes")
    threshold = float(config.get("eval_score_threshold", 0.05))
    detections = []
    for i in range(count):
        outputs = infer({name: array[i:i + 1] for name, array in inputs.items()})
        detections.append(postprocess(outputs, config, score_threshold=threshold))
    scores = mean_average_precision(detections, list(truths[:count]))
    return {"metric": "map50", "value": scores["map50"], "map50_95": scores["map50_95"], "n": int(count)}


__all__ = ["cosine_similarity", "detection_agreement", "evaluate_detection", "mean_average_precision"]
