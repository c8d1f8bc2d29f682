"""Detection: ``Detections``, letterbox, decode of a dense head, class-aware NMS, rescale — once for every backend.

A detector's ``task_config`` (copied into ``artifact.metadata["task_config"]``) drives everything, so
``predict`` works from an artifact alone::

    {"input_size": [128, 128], "class_names": [...],
     "levels": [{"scores": "heatmap", "boxes": "box", "stride": 8, "centerness": None}],
     "box_encoding": "ltrb",          # distances left/top/right/bottom from each cell centre, input pixels
     "score_activation": "none",      # or "sigmoid" when the graph returns logits
     "score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 100, "pad_value": 114,
     "decoder": None}                 # or "module:function" / "file.py:function" for a head of another design

A ``decoder`` hook takes ``(outputs, config)`` for one image and returns ``(boxes K×4 xyxy in input
pixels, scores K×C)``; thresholds, NMS and rescaling stay shared.

NMS runs outside the graph by default (OpenCV's class-aware ``cv2.dnn.NMSBoxesBatched``). For ONNX,
``onnx_nms.onnx_with_nms`` appends the decode plus a ``NonMaxSuppression`` node to an exported graph; such an
artifact has ``metadata["nms"] == "in_graph"`` and outputs ``det_boxes``, ``det_scores``, ``det_classes``
and ``det_batch_index``, which ``postprocess`` reads directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import DeployBenchError
from .nms import box_iou, nms

IN_GRAPH_OUTPUTS = ("det_boxes", "det_scores", "det_classes", "det_batch_index")


@dataclass
class Detections:
    """The objects found in one image.

    ``boxes`` float32 N×4 (x1, y1, x2, y2) in the ORIGINAL image's pixels, ``scores`` float32 (N,),
    ``class_ids`` int64 (N,), ``image_size`` (height, width) of the original image; optional
    ``keypoints`` N×K×3. Sorted by score, best first. ``timing_ms`` holds the milliseconds of each
    stage (preprocess, inference, postprocess, total) when made by ``predict``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    image_size: tuple[int, int]
    class_names: tuple[str, ...] = ()
    keypoints: np.ndarray | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.class_ids):
            raise DeployBenchError(f"Detections: {len(self.boxes)} boxes, {len(self.scores)} scores and "
                                   f"{len(self.class_ids)} class ids; give one score and class per box")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.class_names = tuple(self.class_names)
        if self.keypoints is not None:
            self.keypoints = np.asarray(self.keypoints, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def labels(self) -> list[str]:
        """Class name of each detection (the id as text when the model names no classes)."""
        return [self.class_names[c] if 0 <= c < len(self.class_names) else str(c) for c in self.class_ids]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready lists: boxes, scores, class_ids, image_size, class_names, keypoints, timing_ms."""
        return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "class_ids": self.class_ids.tolist(),
                "image_size": list(self.image_size), "class_names": list(self.class_names),
                "keypoints": None if self.keypoints is None else self.keypoints.tolist(),
                "timing_ms": dict(self.timing_ms)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detections:
        keypoints = data.get("keypoints")
        return cls(np.asarray(data["boxes"], np.float32), np.asarray(data["scores"], np.float32),
                   np.asarray(data["class_ids"], np.int64), tuple(data["image_size"]),
                   tuple(data.get("class_names", ())), None if keypoints is None else np.asarray(keypoints),
                   dict(data.get("timing_ms", {})))

    @classmethod
    def empty(cls, image_size: tuple[int, int], class_names: Sequence[str] = ()) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), image_size, tuple(class_names))


# ---- letterbox ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Letterbox:
    """How an image of ``image_size`` (h, w) was fitted into ``input_size`` (h, w): scale per axis, padding."""

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    @classmethod
    def fit(cls, image_size: Sequence[int], input_size: Sequence[int]) -> Letterbox:
        """Keep the aspect ratio, centre the resized image, pad the rest."""
        height, width = int(image_size[0]), int(image_size[1])
        in_h, in_w = int(input_size[0]), int(input_size[1])
        if min(height, width, in_h, in_w) <= 0:
            raise DeployBenchError(f"cannot letterbox an image of size {height}x{width} into {in_h}x{in_w}: "
                                   "sizes must be positive")
        scale = min(in_h / height, in_w / width)
        new_w = min(in_w, max(1, int(round(width * scale))))
        new_h = min(in_h, max(1, int(round(height * scale))))
        # Per-axis scales from the rounded size, so mapping forward and back is exact.
        return cls((height, width), (in_h, in_w), new_w / width, new_h / height, (in_w - new_w) // 2,
                   (in_h - new_h) // 2)

    @property
    def resized_size(self) -> tuple[int, int]:
        return (int(round(self.image_size[0] * self.scale_y)), int(round(self.image_size[1] * self.scale_x)))

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes xyxy in image pixels → input pixels."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return (boxes * scale + pad).astype(np.float32)

    def to_image(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Boxes xyxy in input pixels → the original image's pixels, clipped to the image."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        out = (boxes - pad) / scale
        if clip:
            height, width = self.image_size
            out = np.clip(out, 0, [width, height, width, height])
        return out.astype(np.float32)


def letterbox(image: np.ndarray, input_size: Sequence[int], pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """(the image resized with its aspect ratio kept and padded to ``input_size`` (h, w), the ``Letterbox``)."""
    import cv2

    fit = Letterbox.fit(image.shape[:2], input_size)
    new_h, new_w = fit.resized_size
    channels = image.shape[2] if image.ndim == 3 else 1
    if (new_h, new_w) == image.shape[:2]:
        resized = image
    else:
        shrinking = new_h < image.shape[0] or new_w < image.shape[1]
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    resized = resized.reshape(new_h, new_w, channels)
    canvas = np.full((fit.input_size[0], fit.input_size[1], channels), pad_value, dtype=image.dtype)
    canvas[fit.pad_y:fit.pad_y + new_h, fit.pad_x:fit.pad_x + new_w] = resized
    return canvas, fit


def preprocess(image: np.ndarray, config: Mapping[str, Any]) -> tuple[np.ndarray, Letterbox]:
    """(1×C×H×W float32 input, ``Letterbox``) for one RGB uint8 image: letterbox, scale to [0, 1],
    optional ``mean``/``std`` from the config, NCHW layout."""
    size = config.get("input_size")
    if not size:
        raise DeployBenchError("detector task_config has no input_size: set it to [height, width]")
    canvas, fit = letterbox(image, size, int(config.get("pad_value", 114)))
    array = canvas.astype(np.float32) * np.float32(config.get("scale", 1 / 255 if image.dtype == np.uint8 else 1.0))
    if "mean" in config:
        array -= np.asarray(config["mean"], np.float32)
    if "std" in config:
        array /= np.asarray(config["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None]), fit


# ---- decode ---------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cell_centres(height: int, width: int, stride: float) -> np.ndarray:
    """(h*w)×2 (x, y) centres of a feature map's cells in input pixels, row-major."""
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    return np.stack([(xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride], axis=1)


def decode_dense(outputs: Mapping[str, np.ndarray], config: Mapping[str, Any], index: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(boxes M×4 xyxy in input pixels, scores M×C) of image ``index`` from dense per-level head outputs."""
    levels = config.get("levels")
    if not levels:
        raise DeployBenchError("detector task_config has no 'levels' (score/box output names and strides) "
                               "and no 'decoder'; describe the head in task_config")
    activation = config.get("score_activation", "none")
    all_boxes, all_scores = [], []
    for level in levels:
        for key in ("scores", "boxes"):
            if level[key] not in outputs:
                raise DeployBenchError(f"detector output {level[key]!r} named in task_config['levels'] is missing; "
                                       f"the model returned {sorted(outputs)}")
        scores = np.asarray(outputs[level["scores"]][index], np.float32)     # C×h×w
        distances = np.asarray(outputs[level["boxes"]][index], np.float32)   # 4×h×w
        classes, height, width = scores.shape
        scores = scores.reshape(classes, -1).T
        if activation == "sigmoid":
            scores = _sigmoid(scores)
        if level.get("centerness"):
            centerness = np.asarray(outputs[level["centerness"]][index], np.float32).reshape(-1, 1)
            if activation == "sigmoid":
                centerness = _sigmoid(centerness)
            scores = np.sqrt(scores * centerness)
        centres = cell_centres(height, width, float(level["stride"]))
        ltrb = distances.reshape(4, -1).T
        all_boxes.append(np.concatenate([centres - ltrb[:, :2], centres + ltrb[:, 2:]], axis=1))
        all_scores.append(scores)
    return np.concatenate(all_boxes), np.concatenate(all_scores)


def _load_hook(reference: str):
    """The function named by ``"package.module:function"`` or ``"path/to/file.py:function"``."""
    module_name, _, function = reference.rpartition(":")
    if not module_name or not function:
        raise DeployBenchError(f"decoder {reference!r}: write it as 'module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.exists():
            raise DeployBenchError(f"decoder file {path} does not exist; fix task_config['decoder']")
        loader_spec = importlib.util.spec_from_file_location(f"deploybench_decoder_{abs(hash(str(path)))}", path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    hook = getattr(module, function, None)
    if not callable(hook):
        raise DeployBenchError(f"decoder {reference!r}: {module_name} has no function {function!r}")
    return hook


_HOOKS: dict[str, Any] = {}


def decode(outputs: Mapping[str, np.ndarray], config: Mapping[str, Any], index: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """(boxes M×4 xyxy in input pixels, scores M×C) of image ``index``.

    Uses the config's ``decoder`` hook when it names one, else ``decode_dense``.
    """
    reference = config.get("decoder")
    if reference:
        if reference not in _HOOKS:
            _HOOKS[reference] = _load_hook(reference)
        single = {name: np.asarray(array)[index:index + 1] for name, array in outputs.items()}
        boxes, scores = _HOOKS[reference](single, config)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(len(boxes), -1)
    return decode_dense(outputs, config, index)


# ---- postprocess ----------------------------------------------------------------------------------
def score_thresholds(config: Mapping[str, Any]) -> tuple[float, float]:
    """(evaluation, deployment) score thresholds of a detector's ``config``: mAP ranks detections, so it is
    computed on the low-score ones too (``eval_score_threshold``); what a user is shown, and what
    agreement compares, is cut at ``score_threshold``."""
    return float(config.get("eval_score_threshold", 0.05)), float(config.get("score_threshold", 0.3))


def postprocess(outputs: Mapping[str, np.ndarray], config: Mapping[str, Any], fit: Letterbox | None = None,
                index: int = 0, score_threshold: float | None = None) -> Detections:
    """``Detections`` of image ``index`` from raw outputs: decode, score threshold, class-aware NMS,
    rescale to the original image and clip. ``fit`` None means the image is the input itself."""
    size = config.get("input_size")
    if fit is None:
        if not size:
            raise DeployBenchError("detector task_config has no input_size: set it to [height, width]")
        fit = Letterbox.fit(size, size)
    threshold = score_thresholds(config)[1] if score_threshold is None else float(score_threshold)
    max_detections = int(config.get("max_detections", 100))
    names = tuple(config.get("class_names", ()))
    if all(name in outputs for name in IN_GRAPH_OUTPUTS[:3]):
        boxes = np.asarray(outputs["det_boxes"], np.float32).reshape(-1, 4)
        scores = np.asarray(outputs["det_scores"], np.float32).reshape(-1)
        classes = np.asarray(outputs["det_classes"]).reshape(-1).astype(np.int64)
        if "det_batch_index" in outputs:
            mine = np.asarray(outputs["det_batch_index"]).reshape(-1) == index
            boxes, scores, classes = boxes[mine], scores[mine], classes[mine]
        mine = scores > threshold  # the graph's threshold may be lower than the one asked for now
        boxes, scores, classes = boxes[mine], scores[mine], classes[mine]
        keep = np.argsort(-scores, kind="stable")[:max_detections]
    else:
        candidate_boxes, class_scores = decode(outputs, config, index)
        cells, classes = np.nonzero(class_scores > threshold)
        boxes, scores = candidate_boxes[cells], class_scores[cells, classes]
        keep = nms(boxes, scores, classes, float(config.get("iou_threshold", 0.5)), max_detections)
    return Detections(fit.to_image(boxes[keep]), scores[keep], classes[keep], fit.image_size, names)


def predict_detections(engine, images, **options: Any):
    """``Detections`` for one image, or a list of them for several (see ``tasks.predict``)."""
    from . import as_image_list, image_input, timed_infer

    config = {**(engine.artifact.metadata.get("task_config") or {}), **options}
    name, size = image_input(engine)
    config.setdefault("input_size", list(size))
    image_list, single = as_image_list(images)
    results = []
    for image in image_list:
        start = time.perf_counter()
        tensor, fit = preprocess(image, config)
        pre_ms = (time.perf_counter() - start) * 1e3
        outputs, infer_ms = timed_infer(engine, {name: tensor})
        start = time.perf_counter()
        result = postprocess(outputs, config, fit)
        post_ms = (time.perf_counter() - start) * 1e3
        result.timing_ms = {"preprocess": pre_ms, "inference": infer_ms, "postprocess": post_ms,
                            "total": pre_ms + infer_ms + post_ms}
        results.append(result)
    return results[0] if single else results


__all__ = ["Detections", "IN_GRAPH_OUTPUTS", "Letterbox", "box_iou", "cell_centres", "decode", "decode_dense",
           "score_thresholds",
           "letterbox", "nms", "postprocess", "predict_detections", "preprocess"]
