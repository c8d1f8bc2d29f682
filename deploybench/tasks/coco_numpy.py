"""COCO bbox AP (what pycocotools' COCOeval reports as AP and AP50) in numpy alone.

A device install has numpy but not pycocotools, and a cell's mAP there is set against the reference's
mAP computed on the host with pycocotools: the two must be the same number, not a close one. So this
follows cocoeval.py (pycocotools 2.0) step by step for what deploybench gives it — every annotation
``iscrowd`` 0, area range "all", one ``max_dets`` — including its orders of operations, its stable
sorts and its quirks (which are marked). tests/test_coco_numpy.py checks it against pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# Built exactly as cocoeval.Params builds them: np.arange would give slightly different floats.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
AREA_ALL = (0 ** 2, 1e5 ** 2)  # COCO's "all" still drops boxes with an area outside it (e.g. negative)


class Image(NamedTuple):
    """One image as COCO sees it: boxes (x, y, w, h) float64 in annotation order."""

    gt_boxes: np.ndarray  # G×4
    gt_classes: np.ndarray  # G
    dt_boxes: np.ndarray  # D×4
    dt_scores: np.ndarray  # D float64
    dt_classes: np.ndarray  # D


def bbox_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """D×G IoU as maskApi.c's bbIou computes it for non-crowd ground truth.

    Corners come from x + w (not a stored x2), and the union is (da + ga) - i, in that order, so the
    floats are bit-for-bit those of the C code. np.fmin/fmax ignore a NaN as C's fmin/fmax do, and
    the C code only zeroes an overlap whose width or height is <= 0 (a NaN one goes through).
    """
    d, g = dt[:, None, :], gt[None, :, :]
    w = np.fmin(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.fmax(d[..., 0], g[..., 0])
    h = np.fmin(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.fmax(d[..., 1], g[..., 1])
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter)
    return np.where((w <= 0) | (h <= 0), 0.0, iou)


def _outside(area: np.ndarray) -> np.ndarray:
    return (area < AREA_ALL[0]) | (area > AREA_ALL[1])


def _evaluate_image(gt: np.ndarray, dt: np.ndarray, scores: np.ndarray, max_dets: int):
    """COCOeval.evaluateImg for one image and category: (scores, matched T×D, ignored T×D, gt ignored)."""
    gt_ignore = _outside(gt[:, 2] * gt[:, 3])
    # Ignored ground truth goes last (stable), detections best first (stable), as COCOeval orders them.
    gt_order = np.argsort(gt_ignore, kind="mergesort")
    gt, gt_ignore = gt[gt_order], gt_ignore[gt_order]
    order = np.argsort(-scores, kind="mergesort")[:max_dets]
    dt, scores = dt[order], scores[order]
    n_thr, n_dt, n_gt = len(IOU_THRESHOLDS), len(dt), len(gt)
    dt_matched = np.zeros((n_thr, n_dt), bool)
    dt_ignore = np.zeros((n_thr, n_dt), bool)
    if n_dt and n_gt:
        ious = bbox_iou(dt, gt).tolist()  # plain floats: the loop below is COCOeval's, comparison by comparison
        ignore = gt_ignore.tolist()
        for t, threshold in enumerate(IOU_THRESHOLDS):
            gt_taken = [False] * n_gt
            for i in range(n_dt):
                best, m = min([threshold, 1 - 1e-10]), -1
                for j in range(n_gt):
                    if gt_taken[j]:
                        continue
                    # Once matched to a counted box, never move on to an ignored one.
                    if m > -1 and not ignore[m] and ignore[j]:
                        break
                    # `<`, not `>=`: a tie goes to the later box, and a NaN IoU is taken (as COCOeval does).
                    if ious[i][j] < best:
                        continue
                    best, m = ious[i][j], j
                if m == -1:
                    continue
                dt_ignore[t, i] = ignore[m]
                dt_matched[t, i] = True
                gt_taken[m] = True
    # An unmatched detection whose own area is outside the range is not counted as a false positive.
    dt_ignore |= ~dt_matched & _outside(dt[:, 2] * dt[:, 3])[None, :]
    return scores, dt_matched, dt_ignore, gt_ignore


def _precision(evaluated: list, n_counted: int) -> np.ndarray:
    """COCOeval.accumulate for one category: T×R interpolated precision."""
    scores = np.concatenate([e[0] for e in evaluated])
    order = np.argsort(-scores, kind="mergesort")  # ties keep image order, as in COCOeval
    matched = np.concatenate([e[1] for e in evaluated], axis=1)[:, order]
    ignored = np.concatenate([e[2] for e in evaluated], axis=1)[:, order]
    tp_sum = np.cumsum(matched & ~ignored, axis=1).astype(dtype=float)
    fp_sum = np.cumsum(~matched & ~ignored, axis=1).astype(dtype=float)
    out = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
        recall = tp / n_counted
        precision = tp / (fp + tp + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision at >= recall
        at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        # Recall levels never reached keep precision 0 (COCOeval's IndexError stops filling there).
        reached = at < len(tp)
        out[t, reached] = precision[at[reached]]
    return out


def coco_bbox_ap(images: Sequence[Image], max_dets: int = 100) -> tuple[float, float]:
    """(AP@0.5:0.95, AP@0.5) as COCOeval.summarize reports them (stats[0], stats[1]); -1.0 with no
    category that has counted ground truth, as COCO reports it."""
    gt_classes = np.concatenate([np.asarray(im.gt_classes, np.int64).reshape(-1) for im in images] + [
        np.zeros(0, np.int64)])
    categories = np.unique(gt_classes)  # a class only in detections has precision -1 and drops out anyway
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(categories)))
    for k, category in enumerate(categories.tolist()):
        evaluated, n_counted = [], 0
        for im in images:
            gt = np.asarray(im.gt_boxes, np.float64).reshape(-1, 4)[np.asarray(im.gt_classes) == category]
            pick = np.asarray(im.dt_classes) == category
            dt = np.asarray(im.dt_boxes, np.float64).reshape(-1, 4)[pick]
            if len(gt) == 0 and len(dt) == 0:
                continue
            result = _evaluate_image(gt, dt, np.asarray(im.dt_scores, np.float64)[pick], max_dets)
            evaluated.append(result)
            n_counted += int(np.count_nonzero(~result[3]))
        if n_counted:
            precision[:, :, k] = _precision(evaluated, n_counted)
    # np.mean over the kept values in (threshold, recall, category) order: summarize's sum, same rounding.
    both = precision[precision > -1]
    at50 = precision[:1][precision[:1] > -1]
    return (float(np.mean(both)) if both.size else -1.0, float(np.mean(at50)) if at50.size else -1.0)


__all__ = ["AREA_ALL", "IOU_THRESHOLDS", "Image", "RECALL_THRESHOLDS", "bbox_iou", "coco_bbox_ap"]
