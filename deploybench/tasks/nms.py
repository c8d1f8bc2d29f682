"""Class-aware non-maximum suppression (OpenCV's, and a numpy reference) and box IoU: shared by every
backend's post-processing and by the detection metrics."""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float = 0.5,
        max_detections: int = 0) -> np.ndarray:
    """Indices of the boxes kept by class-aware NMS, best score first.

    Boxes of different classes never suppress each other; within a class a box is dropped when
    its IoU with a better-scoring kept box exceeds ``iou_threshold``. ``max_detections`` > 0 caps
    the count. Uses OpenCV's ``cv2.dnn.NMSBoxesBatched``, else ``nms_numpy`` (a device with only the runtime
    install has no OpenCV; the two keep the same boxes).
    """
    try:
        import cv2
    except ImportError:
        return nms_numpy(boxes, scores, class_ids, iou_threshold, max_detections)

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # A list of 4-tuples of floats selects OpenCV's Rect2d overload (an array would round to int pixels).
    rects = [tuple(row) for row in xywh.tolist()]
    keep = cv2.dnn.NMSBoxesBatched(rects, np.asarray(scores, np.float32).tolist(),
                                   np.asarray(class_ids, np.int64).astype(np.int32).tolist(), -np.inf,
                                   float(iou_threshold))
    keep = np.asarray(keep, np.int64).reshape(-1)
    # OpenCV's own top_k cuts the candidates before suppression, not the survivors: cap here instead.
    order = np.argsort(-np.asarray(scores)[keep], kind="stable")
    return keep[order][:max_detections] if max_detections > 0 else keep[order]


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float = 0.5,
              max_detections: int = 0) -> np.ndarray:
    """The same as ``nms`` in plain numpy (a reference for tests and a fallback without OpenCV)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_detections and len(keep) >= max_detections:
            break
        rest = order[position + 1:]
        rest = rest[(class_ids[rest] == class_ids[i]) & ~suppressed[rest]]
        if len(rest) == 0:
            continue
        top_left = np.maximum(boxes[i, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        suppressed[rest[iou > iou_threshold]] = True
    return np.asarray(keep, np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix len(a)×len(b) of xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


__all__ = ["box_iou", "nms", "nms_numpy"]
