"""Classification: ``Classifications`` (top-k ids and probabilities), pre-processing and top-1 accuracy."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import DeployBenchError


@dataclass
class Classifications:
    """The top-k classes of one image: ``class_ids`` (k,) int64 and their ``probabilities`` (k,) float32,
    best first. ``class_names`` are filled when the model's task_config names its classes."""

    class_ids: np.ndarray
    probabilities: np.ndarray
    class_names: tuple[str, ...] = ()
    timing_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float32).reshape(-1)
        if len(self.class_ids) != len(self.probabilities):
            raise DeployBenchError(f"Classifications: {len(self.class_ids)} class ids but "
                                   f"{len(self.probabilities)} probabilities; give one probability per id")
        self.class_names = tuple(self.class_names)

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def top1(self) -> int:
        """The best class id."""
        return int(self.class_ids[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready lists: class_ids, probabilities, class_names, timing_ms."""
        return {"class_ids": self.class_ids.tolist(), "probabilities": self.probabilities.tolist(),
                "class_names": list(self.class_names), "timing_ms": dict(self.timing_ms)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Classifications:
        return cls(np.asarray(data["class_ids"]), np.asarray(data["probabilities"]),
                   tuple(data.get("class_names", ())), dict(data.get("timing_ms", {})))

    @classmethod
    def from_logits(cls, logits: np.ndarray, top_k: int = 5, class_names: Sequence[str] = (),
                    already_probabilities: bool = False) -> Classifications:
        """The top ``top_k`` of one row of logits (softmax applied unless ``already_probabilities``)."""
        row = np.asarray(logits, dtype=np.float64).reshape(-1)
        probabilities = row if already_probabilities else softmax(row)
        k = max(1, min(int(top_k), row.size))
        order = np.argsort(-probabilities, kind="stable")[:k]
        names = tuple(class_names[i] for i in order) if len(class_names) == row.size else ()
        return cls(order, probabilities[order], names)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    shifted = logits - np.max(logits, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)


def logits_output(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The classifier's score output: the one named ``logits`` if any, else the first."""
    if "logits" in outputs:
        return np.asarray(outputs["logits"])
    return np.asarray(next(iter(outputs.values())))


def evaluate_classification(infer, inputs: Mapping[str, np.ndarray], labels: np.ndarray,
                            limit: int | None = None) -> dict[str, Any]:
    """{"metric": "top1_accuracy", "value": fraction correct, "n": samples}, one sample per call."""
    labels = np.asarray(labels).reshape(-1)
    count = len(labels) if limit is None else min(int(limit), len(labels))
    if count == 0:
        raise DeployBenchError("classification eval_data has no samples; give at least one labelled input")
    rows = []
    for i in range(count):
        outputs = infer({name: array[i:i + 1] for name, array in inputs.items()})
        rows.append(logits_output(outputs).reshape(1, -1)[0])
    predicted = np.argmax(np.stack(rows), axis=1)
    return {"metric": "top1_accuracy", "value": float(np.mean(predicted == labels[:count])), "n": int(count)}


def preprocess_image(image: np.ndarray, size: tuple[int, int], config: Mapping[str, Any]) -> np.ndarray:
    """One RGB image resized to ``size`` (h, w), scaled to [0, 1], normalized by task_config
    ``mean``/``std`` and laid out as 1×C×H×W float32."""
    import cv2

    height, width = size
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:
            image = image[:, :, None]
    scale = float(config.get("scale", 1 / 255 if image.dtype == np.uint8 else 1.0))
    array = image.astype(np.float32) * scale
    if "mean" in config:
        array = array - np.asarray(config["mean"], np.float32)
    if "std" in config:
        array = array / np.asarray(config["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def predict_classifications(engine, images, top_k: int | None = None, **options: Any):
    """``Classifications`` for one image, or a list of them for several (see ``tasks.predict``)."""
    from . import as_image_list, image_input, timed_infer

    config = {**(engine.artifact.metadata.get("task_config") or {}), **options}
    name, size = image_input(engine)
    image_list, single = as_image_list(images)
    top_k = int(top_k or config.get("top_k", 5))
    results = []
    for image in image_list:
        start = time.perf_counter()
        feed = {name: preprocess_image(image, size, config)}
        pre_ms = (time.perf_counter() - start) * 1e3
        outputs, infer_ms = timed_infer(engine, feed)
        start = time.perf_counter()
        result = Classifications.from_logits(logits_output(outputs)[0], top_k, config.get("class_names", ()),
                                             already_probabilities=bool(config.get("outputs_probabilities")))
        post_ms = (time.perf_counter() - start) * 1e3
        result.timing_ms = {"preprocess": pre_ms, "inference": infer_ms, "postprocess": post_ms,
                            "total": pre_ms + infer_ms + post_ms}
        results.append(result)
    return results[0] if single else results


__all__ = ["Classifications", "evaluate_classification", "predict_classifications", "preprocess_image", "softmax"]
