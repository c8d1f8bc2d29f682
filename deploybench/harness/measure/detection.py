"""A detector's figures in a cell: mAP next to the reference's, agreement of its detections with the
reference's, and latency end to end (pre-processing + inference + post-processing) next to inference alone.

Plain module (no pytest): ``precision.benchmark_precision`` and ``matrix.run_cell`` call it for a model
whose ``spec.task`` is ``"detection"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from deploybench.spec import DeployBenchError, ModelSpec

# Images timed end to end per cell: enough for a stable median of a per-image figure, few enough
# that a slow post-processing step does not dominate the run.
E2E_IMAGES = 32
E2E_WARMUP_IMAGES = 4

Infer = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def _detections_of(infer: Infer, inputs: Mapping[str, np.ndarray], count: int, config: Mapping[str, Any]
                   ) -> tuple[list, list]:
    """(detections at the evaluation score threshold, detections at the deployment threshold) per image."""
    from deploybench.tasks.detection import postprocess, score_thresholds

    eval_threshold, deploy_threshold = score_thresholds(config)
    for_map, deployed = [], []
    for i in range(count):
        outputs = infer({name: array[i:i + 1] for name, array in inputs.items()})
        for_map.append(postprocess(outputs, config, score_threshold=eval_threshold))
        deployed.append(postprocess(outputs, config, score_threshold=deploy_threshold))
    return for_map, deployed


def _reference_side(reference: Infer, spec: ModelSpec, inputs, truths, count: int) -> dict[str, Any]:
    """The reference's detections and mAP, kept on the reference object: every cell of a model shares them."""
    from deploybench.tasks.metrics import mean_average_precision

    key = (spec.name, count)
    cache = getattr(reference, "_detection_quality_cache", None)
    if cache is None:
        cache = {}
        try:
            reference._detection_quality_cache = cache
        except AttributeError:  # a bound method or builtin: no place to keep it, compute per cell
            pass
    if key not in cache:
        for_map, deployed = _detections_of(reference, inputs, count, spec.task_config)
        cache[key] = {"deployed": deployed, **mean_average_precision(for_map, list(truths[:count]))}
    return cache[key]


def detection_quality(infer: Infer, reference: Infer, spec: ModelSpec, limit: int | None = None
                      ) -> dict[str, dict[str, float]]:
    """A detector's mAP on its held-out set next to the reference's, and how its detections agree.

    Returns ``{"detection": {"map50", "map50_95", "reference_map50", "reference_map50_95",
    "map50_drop", "map50_95_drop", "images"}, "detection_agreement": {"matched", "lost", "added",
    "mean_iou", "mean_score_delta", "score_threshold"}}``. A drop is reference minus cell (positive:
    the cell is worse). Agreement compares detections at the model's deployment ``score_threshold``.
    """
    from deploybench.tasks.detection import score_thresholds
    from deploybench.tasks.metrics import detection_agreement, mean_average_precision

    if spec.eval_data is None:
        raise DeployBenchError(f"detector {spec.name!r} has no held-out data (eval_data); give its ModelSpec an "
                               "eval_data callable returning (inputs, ground-truth boxes)")
    inputs, truths = spec.eval_data()
    count = len(truths) if limit is None else min(int(limit), len(truths))
    if count == 0:
        raise DeployBenchError(f"detector {spec.name!r}: eval_data has no images; give at least one with its boxes")
    for_map, deployed = _detections_of(infer, inputs, count, spec.task_config)
    found = mean_average_precision(for_map, list(truths[:count]))
    expected = _reference_side(reference, spec, inputs, truths, count)
    agreement = detection_agreement(deployed, expected["deployed"])
    return {
        "detection": {
            "map50": found["map50"], "map50_95": found["map50_95"],
            "reference_map50": expected["map50"], "reference_map50_95": expected["map50_95"],
            "map50_drop": expected["map50"] - found["map50"],
            "map50_95_drop": expected["map50_95"] - found["map50_95"],
            "images": count,
        },
        "detection_agreement": {**agreement, "score_threshold": score_thresholds(spec.task_config)[1]},
    }


def held_out_images(spec: ModelSpec, count: int) -> list[np.ndarray]:
    """Up to ``count`` held-out images as H×W×3 uint8 RGB: the eval inputs with the model's pre-processing
    (``scale``, ``mean``, ``std`` of ``task_config``) undone."""
    if spec.eval_data is None:
        raise DeployBenchError(f"model {spec.name!r} has no held-out data (eval_data) to time end to end")
    inputs, _ = spec.eval_data()
    if len(inputs) != 1:
        raise DeployBenchError(f"model {spec.name!r} takes {len(inputs)} inputs; end-to-end timing needs one image")
    batch = np.asarray(next(iter(inputs.values())))[:count]
    if batch.ndim != 4:
        raise DeployBenchError(f"model {spec.name!r}: held-out inputs have shape {list(batch.shape)}, "
                               "not N×C×H×W images")
    config = spec.task_config
    pixels = batch.transpose(0, 2, 3, 1).astype(np.float64)
    if "std" in config:
        pixels *= np.asarray(config["std"], np.float64)
    if "mean" in config:
        pixels += np.asarray(config["mean"], np.float64)
    pixels /= float(config.get("scale", 1 / 255))
    return list(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def end_to_end_latency(engine: Any, spec: ModelSpec, images: int = E2E_IMAGES,
                       warmup_images: int = E2E_WARMUP_IMAGES) -> dict[str, Any]:
    """Per-image latency of ``predict`` over held-out images, end to end and per stage.

    Returns ``{"e2e_ms": median per-image total, "stage_ms": {"preprocess", "inference", "postprocess"}
    (median of each), "e2e_images": images timed}``, all in milliseconds.
    """
    from deploybench.tasks import predict_timed

    pictures = held_out_images(spec, images)
    if warmup_images:
        predict_timed(engine, pictures[:warmup_images])
    found, _ = predict_timed(engine, pictures)
    stages = ("preprocess", "inference", "postprocess")
    per_image = {stage: [float(item.timing_ms.get(stage, 0.0)) for item in found] for stage in stages}
    totals = [sum(per_image[stage][i] for stage in stages) for i in range(len(found))]
    return {"e2e_ms": float(np.median(totals)),
            "stage_ms": {stage: float(np.median(values)) for stage, values in per_image.items()},
            "e2e_images": len(found)}


__all__ = ["E2E_IMAGES", "detection_quality", "end_to_end_latency", "held_out_images"]
