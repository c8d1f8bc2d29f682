"""NMS inside an ONNX graph: the decode of a dense detection head and a ``NonMaxSuppression`` node appended
to an exported detector, for a deployment that wants boxes, not heatmaps, out of the runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..spec import Artifact, DeployBenchError, TensorSpec
from .detection import cell_centres, score_thresholds


def onnx_with_nms(artifact: Artifact, out_dir: str | Path | None = None, score_threshold: float | None = None,
                  iou_threshold: float | None = None, max_detections: int | None = None) -> Artifact:
    """A copy of an ONNX detector whose graph ends in decode + ``NonMaxSuppression``.

    Reads the dense-head description from ``artifact.metadata["task_config"]``, appends the decode
    (cell centres ± distances), a ``NonMaxSuppression`` node (class-aware: ONNX runs it per class)
    and ``GatherND`` nodes, and writes ``<stem>_nms.onnx`` into ``out_dir`` (default: next to the
    original). Returns the new ``Artifact`` with ``metadata["nms"] = "in_graph"`` and outputs
    det_boxes (K×4, input pixels), det_scores (K,), det_classes (K,), det_batch_index (K,).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if artifact.format != "onnx":
        raise DeployBenchError(f"in-graph NMS is for ONNX artifacts; {artifact.path.name} is {artifact.format}")
    config = dict(artifact.metadata.get("task_config") or {})
    if config.get("decoder") or not config.get("levels"):
        raise DeployBenchError(f"{artifact.path.name}: in-graph NMS needs a dense head described by "
                               "task_config['levels'] (a custom decoder hook cannot be put in the graph)")
    model = onnx.load(str(artifact.path))
    graph = model.graph
    known = {o.name for o in graph.output}
    in_h, in_w = (int(v) for v in config["input_size"])
    score_threshold = score_thresholds(config)[1] if score_threshold is None else float(score_threshold)
    iou_threshold = float(config.get("iou_threshold", 0.5) if iou_threshold is None else iou_threshold)
    max_detections = int(config.get("max_detections", 100) if max_detections is None else max_detections)
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name=f"nms_{name}"))
        return f"nms_{name}"

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [f"nms_{name}"], name=f"nms_{name}_node", **attrs))
        return f"nms_{name}"

    level_boxes, level_scores = [], []
    for k, level in enumerate(config["levels"]):
        for key in ("scores", "boxes") + (("centerness",) if level.get("centerness") else ()):
            if level[key] not in known:
                raise DeployBenchError(f"{artifact.path.name} has no output {level[key]!r} named in "
                                       f"task_config['levels']; its outputs are {sorted(known)}")
        stride = float(level["stride"])
        height, width = int(round(in_h / stride)), int(round(in_w / stride))
        scores = node("Cast", [level["scores"]], f"scores_f32_{k}", to=TensorProto.FLOAT)
        scores = node("Reshape", [scores, const(f"score_shape_{k}", np.array([0, 0, -1], np.int64))], f"scores_{k}")
        if config.get("score_activation") == "sigmoid":
            scores = node("Sigmoid", [scores], f"scores_sig_{k}")
        if level.get("centerness"):
            centre = node("Cast", [level["centerness"]], f"ctr_f32_{k}", to=TensorProto.FLOAT)
            centre = node("Reshape", [centre, const(f"ctr_shape_{k}", np.array([0, 1, -1], np.int64))], f"ctr_{k}")
            if config.get("score_activation") == "sigmoid":
                centre = node("Sigmoid", [centre], f"ctr_sig_{k}")
            scores = node("Sqrt", [node("Mul", [scores, centre], f"scores_ctr_{k}")], f"scores_sqrt_{k}")
        boxes = node("Cast", [level["boxes"]], f"boxes_f32_{k}", to=TensorProto.FLOAT)
        boxes = node("Reshape", [boxes, const(f"box_shape_{k}", np.array([0, 4, -1], np.int64))], f"boxes_flat_{k}")
        boxes = node("Transpose", [boxes], f"ltrb_{k}", perm=[0, 2, 1])
        centres = cell_centres(height, width, stride)
        centres_xyxy = np.concatenate([centres, centres], axis=1)[None].astype(np.float32)
        signs = np.array([[[-1, -1, 1, 1]]], np.float32)
        boxes = node("Mul", [boxes, const(f"signs_{k}", signs)], f"signed_{k}")
        level_boxes.append(node("Add", [boxes, const(f"centres_{k}", centres_xyxy)], f"boxes_{k}"))
        level_scores.append(scores)
    boxes = level_boxes[0] if len(level_boxes) == 1 else node("Concat", level_boxes, "boxes", axis=1)
    scores = level_scores[0] if len(level_scores) == 1 else node("Concat", level_scores, "scores", axis=2)
    # ONNX's NonMaxSuppression takes (y1, x1, y2, x2) corners; IoU is the same for (x1, y1, x2, y2).
    selected = node("NonMaxSuppression", [boxes, scores, const("max_out", np.array([max_detections], np.int64)),
                                          const("iou", np.array([iou_threshold], np.float32)),
                                          const("score", np.array([score_threshold], np.float32))],
                    "selected", center_point_box=0)
    batch_box = node("Gather", [selected, const("batch_box_cols", np.array([0, 2], np.int64))], "batch_box", axis=1)
    nodes.append(helper.make_node("GatherND", [boxes, batch_box], ["det_boxes"], name="nms_det_boxes"))
    nodes.append(helper.make_node("GatherND", [scores, selected], ["det_scores"], name="nms_det_scores"))
    nodes.append(helper.make_node("Gather", [selected, const("class_col", np.array(1, np.int64))], ["det_classes"],
                                  name="nms_det_classes", axis=1))
    nodes.append(helper.make_node("Gather", [selected, const("batch_col", np.array(0, np.int64))],
                                  ["det_batch_index"], name="nms_det_batch_index", axis=1))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    while len(graph.output):
        graph.output.pop()
    graph.output.extend([
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["detections", 4]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["detections"]),
        helper.make_tensor_value_info("det_classes", TensorProto.INT64, ["detections"]),
        helper.make_tensor_value_info("det_batch_index", TensorProto.INT64, ["detections"]),
    ])
    onnx.checker.check_model(model)
    out_dir = Path(out_dir) if out_dir else artifact.path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{artifact.path.stem}_nms.onnx"
    onnx.save(model, str(out_path))
    config.update({"nms": "in_graph", "score_threshold": score_threshold, "iou_threshold": iou_threshold,
                   "max_detections": max_detections})
    outputs = (TensorSpec("det_boxes", ("detections", 4)), TensorSpec("det_scores", ("detections",)),
               TensorSpec("det_classes", ("detections",), "int64"),
               TensorSpec("det_batch_index", ("detections",), "int64"))
    metadata = {**artifact.metadata, "nms": "in_graph", "task": "detection", "task_config": config,
                "source_artifact": str(artifact.path)}
    return Artifact(format="onnx", path=out_path, precision=artifact.precision, inputs=artifact.inputs,
                    outputs=outputs, files=(out_path,), metadata=metadata)


__all__ = ["onnx_with_nms"]
