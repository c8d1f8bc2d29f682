"""Tasks: the standardized outputs of a model and its task metric, the same for every backend.

- ``evaluate(infer, spec)`` runs a model's held-out set through any ``infer`` callable (an engine's
  ``infer``, a torch reference) one sample at a time and returns the task metric.
- ``predict(engine, images)`` turns raw images into ``Classifications`` or ``Detections``: the pre- and
  post-processing live here once, so every backend shares them.
- ``predict_timed(engine, images)`` does the same and also returns milliseconds per stage
  (pre-processing, inference, post-processing), so latency end to end and inference alone can be
  reported side by side.

Imports only numpy at module level; OpenCV and pycocotools are imported by the functions that need them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..spec import DeployBenchError, ModelSpec

Infer = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

TASKS = ("classification", "detection")


def evaluate(infer: Infer, spec: ModelSpec, limit: int | None = None) -> dict[str, Any]:
    """The task metric of ``spec``'s held-out set run through ``infer``, one sample (batch 1) at a time.

    Returns ``{"metric": "top1_accuracy", "value": float, "n": int}`` for a classifier and
    ``{"metric": "map50", "value": float, "map50_95": float, "n": int}`` for a detector.
    ``limit`` evaluates only the first ``limit`` samples.
    """
    if spec.eval_data is None:
        raise DeployBenchError(f"model {spec.name!r} has no held-out data (eval_data); give its ModelSpec an "
                               "eval_data callable to measure a task metric")
    inputs, labels = spec.eval_data()
    if spec.task == "classification":
        from .classification import evaluate_classification

        return evaluate_classification(infer, inputs, labels, limit=limit)
    if spec.task == "detection":
        from .metrics import evaluate_detection

        return evaluate_detection(infer, inputs, labels, spec.task_config, limit=limit)
    raise DeployBenchError(f"model {spec.name!r} has task {spec.task!r}, which has no metric; "
                           f"set task to one of {', '.join(TASKS)}")


def predict(engine: Any, images: Any, **options: Any) -> Any:
    """Task outputs for raw images (H×W×3 uint8 RGB): ``Detections`` or ``Classifications``.

    A single image gives one object; a list of images (or an N×H×W×3 array) gives a list. Each
    object's ``timing_ms`` holds the milliseconds spent in pre-processing, inference and
    post-processing. Options override the model's ``task_config`` (e.g. ``score_threshold=0.3``,
    ``top_k=3``).
    """
    task = engine.artifact.metadata.get("task", "generic")
    if task == "detection":
        from .detection import predict_detections

        return predict_detections(engine, images, **options)
    if task == "classification":
        from .classification import predict_classifications

        return predict_classifications(engine, images, **options)
    raise DeployBenchError(f"{engine.artifact.path.name} has task {task!r}: predict needs a classifier or a "
                           "detector (set ModelSpec.task); use engine.infer for raw outputs")


def predict_timed(engine: Any, images: Any, **options: Any) -> tuple[Any, dict[str, float]]:
    """(``predict``'s result, milliseconds summed over the images per stage).

    The stages are ``preprocess``, ``inference``, ``postprocess`` and ``total`` (end to end),
    so a harness can report latency end to end next to inference alone.
    """
    start = time.perf_counter()
    result = predict(engine, images, **options)
    total = (time.perf_counter() - start) * 1e3
    items = result if isinstance(result, list) else [result]
    stages = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    for item in items:
        for stage in stages:
            stages[stage] += float(item.timing_ms.get(stage, 0.0))
    stages["total"] = total
    return result, stages


def as_image_list(images: Any) -> tuple[list[np.ndarray], bool]:
    """(list of H×W×C arrays, True if a single image was given) for an image, a list or an N×H×W×C array."""
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            return [images[:, :, None]], True
        if images.ndim == 3:
            return [images], True
        if images.ndim == 4:
            return list(images), False
        raise DeployBenchError(f"images must be H×W×C or N×H×W×C arrays; got shape {list(images.shape)}")
    if isinstance(images, (list, tuple)):
        out = [np.asarray(image) for image in images]
        for image in out:
            if image.ndim not in (2, 3):
                raise DeployBenchError(f"each image must be an H×W×C array; got shape {list(image.shape)}")
        return [image if image.ndim == 3 else image[:, :, None] for image in out], False
    raise DeployBenchError(f"images must be numpy arrays (H×W×3 RGB); got {type(images).__name__}")


def image_input(engine: Any) -> tuple[str, tuple[int, int]]:
    """(name, (height, width)) of an engine's single image input (N×C×H×W)."""
    if len(engine.inputs) != 1 or len(engine.inputs[0].shape) != 4:
        raise DeployBenchError(f"{engine.artifact.path.name} does not take one N×C×H×W image input "
                               f"({[list(t.shape) for t in engine.inputs]}); use engine.infer with arrays")
    spec = engine.inputs[0]
    height, width = spec.shape[2], spec.shape[3]
    config = engine.artifact.metadata.get("task_config") or {}
    if not isinstance(height, int) or not isinstance(width, int):
        size = config.get("input_size")
        if not size:
            raise DeployBenchError(f"{engine.artifact.path.name} has a dynamic image size: set "
                                   "task_config['input_size'] = [height, width]")
        height, width = int(size[0]), int(size[1])
    return spec.name, (int(height), int(width))


def timed_infer(engine: Any, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """(engine outputs, milliseconds the inference took)."""
    start = time.perf_counter()
    outputs = engine.infer(feed)
    return outputs, (time.perf_counter() - start) * 1e3


__all__ = ["TASKS", "evaluate", "predict", "predict_timed"]
