"""A user's own detector of another design: FCOS-style, two pyramid levels, its own decoder hook.

Unlike the built-in ``shapes_detector`` (one level, N×C×H×W maps), this head flattens its levels
into ``scores`` (N×M×C logits), ``boxes`` (N×M×4 distances left/top/right/bottom in input pixels) and
``centerness`` (N×M×1 logits), M = cells over both levels. deploybench cannot guess that layout, so
the spec's ``task_config["decoder"]`` names ``decode_fcos`` in this file; letterbox, thresholds,
class-aware NMS and rescaling stay deploybench's, the same for every backend.

Use it from the command line as ``examples/fcos_detector.py:fcos_detector``, or::

    spec = fcos_detector()
    artifact = deploy_model(spec, "onnx")
    with create_deployer(artifact, backend="onnxruntime") as engine:
        detections = engine.predict(image)          # a Detections in the image's pixels

The weights are random (seeded) with a biased head, which is enough to make detections that every
backend must reproduce; train it on ``deploybench.models.detector.generate_shapes`` for real ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploybench.spec import ModelSpec, TensorSpec

INPUT_SIZE = 128
STRIDES = (8, 16)
NUM_CLASSES = 4


def fcos_network(seed: int = 0):
    """A seeded FCOS-style network: 1×3×128×128 → (scores N×M×4, boxes N×M×4, centerness N×M×1), M = 16²+8²."""
    import torch
    from torch import nn

    def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(4, cout), nn.ReLU())

    class FCOS(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(block(3, 16, 2), block(16, 32, 2), block(32, 32, 2))   # stride 8
            self.down = block(32, 32, 2)                                                     # stride 16
            self.tower = block(32, 32)                                                       # shared by levels
            self.cls = nn.Conv2d(32, NUM_CLASSES, 3, padding=1)
            self.reg = nn.Conv2d(32, 4, 3, padding=1)
            self.ctr = nn.Conv2d(32, 1, 3, padding=1)
            self.scales = nn.Parameter(torch.ones(len(STRIDES)))

        def forward(self, image):
            p3 = self.stem(image)
            scores, boxes, centerness = [], [], []
            for level, features in enumerate((p3, self.down(p3))):
                features = self.tower(features)
                flat = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731 - N×C×H×W -> N×HW×C
                scores.append(flat(self.cls(features)))
                boxes.append(flat(torch.exp(self.scales[level] * self.reg(features)) * STRIDES[level]))
                centerness.append(flat(self.ctr(features)))
            return torch.cat(scores, 1), torch.cat(boxes, 1), torch.cat(centerness, 1)

    torch.manual_seed(seed)
    net = FCOS()
    with torch.no_grad():  # a biased head: some cells score high, and boxes are a few cells wide
        net.cls.weight.mul_(4.0)
        net.cls.bias.fill_(-1.0)
        net.reg.bias.fill_(0.5)
    return net.eval()


def anchor_points(input_size: int = INPUT_SIZE, strides=STRIDES) -> np.ndarray:
    """M×2 (x, y) cell centres over all levels, in the order the network flattens them."""
    points = []
    for stride in strides:
        cells = input_size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        points.append(np.stack([xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5], 1) * stride)
    return np.concatenate(points).astype(np.float32)


def decode_fcos(outputs, config):
    """deploybench decoder hook: (boxes M×4 xyxy in input pixels, scores M×C) for one image."""
    points = anchor_points(int(config["input_size"][0]), tuple(config["strides"]))
    logits = np.asarray(outputs["scores"], np.float64)[0]
    distances = np.asarray(outputs["boxes"], np.float32)[0]
    centerness = np.asarray(outputs["centerness"], np.float64)[0]
    scores = np.sqrt(1 / (1 + np.exp(-logits)) * (1 / (1 + np.exp(-centerness))))
    boxes = np.concatenate([points - distances[:, :2], points + distances[:, 2:]], axis=1)
    return boxes, scores.astype(np.float32)


def fcos_detector(seed: int = 0) -> ModelSpec:
    """The ModelSpec of the FCOS-style example detector, decoded by ``decode_fcos``."""
    return ModelSpec(
        name="fcos_example",
        inputs=(TensorSpec("image", ("batch", 3, INPUT_SIZE, INPUT_SIZE), "float32", (0.0, 1.0)),),
        factory=lambda: fcos_network(seed),
        output_names=("scores", "boxes", "centerness"),
        task="detection",
        description="FCOS-style two-level detector with its own decoder hook (seeded weights)",
        task_config={
            "input_size": [INPUT_SIZE, INPUT_SIZE], "strides": list(STRIDES),
            "class_names": ["circle", "square", "triangle", "cross"],
            "decoder": f"{Path(__file__).resolve()}:decode_fcos",
            "score_threshold": 0.5, "iou_threshold": 0.5, "max_detections": 50, "pad_value": 114,
        },
    )
