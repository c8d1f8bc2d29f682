"""``shapes_detector``: a small single-stage anchor-free detector trained here on generated shapes.

Images are 128×128 RGB drawn with OpenCV: a random background (flat colour, a gradient and noise)
with one to four non-overlapping shapes — circle, square, triangle, cross — of random size, colour
and position. Ground-truth boxes are exact: each is the bounding box of the shape's own mask.

The network is CenterNet/FCOS-like at stride 8 (a 16×16 grid): Conv-BN-ReLU blocks, then two heads,
``heatmap`` (sigmoid class scores, N×4×16×16) and ``box`` (distances left, top, right, bottom from
each cell centre, in input pixels, N×4×16×16). Decoding and NMS are ``deploybench.tasks.detection``'s,
driven by the spec's ``task_config``. Training is seeded and takes a few minutes on one CPU
thread; the weights are cached by ``_data.cached_weights`` so it happens once per cache.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from ..spec import ModelSpec, TensorSpec
from ._data import cached_weights, one_training_thread

CLASS_NAMES = ("circle", "square", "triangle", "cross")
INPUT_SIZE = 128
STRIDE = 8
TRAIN_SEED = 0
HELD_OUT_SEED = 1234
HELD_OUT_IMAGES = 200
DEFAULT_STEPS = 1200
DEFAULT_WIDTH = 32

TASK_CONFIG = {
    "input_size": [INPUT_SIZE, INPUT_SIZE],
    "class_names": list(CLASS_NAMES),
    "levels": [{"scores": "heatmap", "boxes": "box", "stride": STRIDE}],
    "box_encoding": "ltrb",        # distances from the cell centre, in input pixels
    "score_activation": "none",    # the graph already applies the sigmoid
    "score_threshold": 0.3,
    "eval_score_threshold": 0.05,  # mAP ranks detections, so it wants the low-score ones too
    "iou_threshold": 0.5,
    "max_detections": 100,
    "pad_value": 114,
    "nms": "outside",
}


def default_recipe(steps: int = DEFAULT_STEPS, width: int = DEFAULT_WIDTH, train_images: int = 4000) -> dict:
    """The training recipe; its hash names the cached weights file."""
    return {"model": "shapes_detector", "version": 1, "seed": TRAIN_SEED, "steps": steps, "width": width,
            "batch_size": 32, "lr": 3e-3, "weight_decay": 1e-4, "train_images": train_images,
            "input_size": INPUT_SIZE, "stride": STRIDE, "classes": list(CLASS_NAMES)}


# ---- data -----------------------------------------------------------------------------------------
def _draw_shape(mask: np.ndarray, kind: str, cx: int, cy: int, radius: int, rng: np.random.Generator) -> None:
    import cv2

    if kind == "circle":
        cv2.circle(mask, (cx, cy), radius, 255, -1)
    elif kind == "square":
        cv2.rectangle(mask, (cx - radius, cy - radius), (cx + radius, cy + radius), 255, -1)
    elif kind == "triangle":
        angle = rng.uniform(0, 2 * np.pi)
        corners = [(cx + radius * np.cos(angle + k * 2 * np.pi / 3), cy + radius * np.sin(angle + k * 2 * np.pi / 3))
                   for k in range(3)]
        cv2.fillPoly(mask, [np.round(np.array(corners)).astype(np.int32)], 255)
    else:  # cross: two bars a third of the size wide
        half = max(1, radius // 3)
        cv2.rectangle(mask, (cx - radius, cy - half), (cx + radius, cy + half), 255, -1)
        cv2.rectangle(mask, (cx - half, cy - radius), (cx + half, cy + radius), 255, -1)


def generate_shapes(n: int, seed: int, size: int = INPUT_SIZE, max_shapes: int = 4
                    ) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """(images uint8 N×size×size×3 RGB, ground truth per image ``{"boxes": K×4 xyxy, "class_ids": K}``).

    Box coordinates are pixel edges: a shape covering pixel columns 10..19 has x1=10, x2=20.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    truths = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        tilt = rng.uniform(-60, 60, (2, 3))
        background = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1] + rng.normal(0, rng.uniform(2, 18),
                                                                                            (size, size, 3))
        image = np.clip(background, 0, 255)
        boxes, classes = [], []
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            for _attempt in range(20):
                radius = int(rng.integers(7, 25))
                cx, cy = (int(v) for v in rng.integers(radius, size - radius, 2))
                candidate = np.array([cx - radius - 1, cy - radius - 1, cx + radius + 2, cy + radius + 2])
                if all(candidate[2] <= b[0] or candidate[0] >= b[2] or candidate[3] <= b[1] or candidate[1] >= b[3]
                       for b in boxes):
                    break
            else:
                continue
            kind_id = int(rng.integers(len(CLASS_NAMES)))
            mask = np.zeros((size, size), np.uint8)
            _draw_shape(mask, CLASS_NAMES[kind_id], cx, cy, radius, rng)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - base).sum() < 150:  # keep the shape visible against the background
                colour = rng.uniform(0, 255, 3)
            image[mask > 0] = colour + rng.normal(0, 4, (int((mask > 0).sum()), 3))
            boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32))
            classes.append(kind_id)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
        truths.append({"boxes": np.array(boxes, np.float32).reshape(-1, 4), "class_ids": np.array(classes, np.int64)})
    return images, truths


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W×3 → float32 N×3×H×W in [0, 1] (what the detector takes)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


@functools.cache
def held_out_set() -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """({"image": float32 200×3×128×128}, ground truth per image) of the fixed held-out set."""
    images, truths = generate_shapes(HELD_OUT_IMAGES, HELD_OUT_SEED)
    return {"image": to_input(images)}, truths


# ---- network --------------------------------------------------------------------------------------
def detector_network(width: int = DEFAULT_WIDTH, num_classes: int = len(CLASS_NAMES)):
    """The untrained network: 1×3×128×128 in [0, 1] → (heatmap N×C×16×16, box N×4×16×16)."""
    import torch
    from torch import nn

    def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list:
        return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU()]

    class ShapesDetector(nn.Module):
        def __init__(self):
            super().__init__()
            half = width * 3 // 4
            self.backbone = nn.Sequential(
                # a 4x4 patch stem: cheap on a CPU, and the shapes are far larger than 4 pixels
                nn.Conv2d(3, half, 4, 4, bias=False), nn.BatchNorm2d(half), nn.ReLU(),   # 128 -> 32
                *block(half, half), *block(half, width, 2),                               # 32 -> 16
                *block(width, width), *block(width, width, dilation=2), *block(width, width, dilation=4),
            )
            self.heatmap_head = nn.Sequential(*block(width, width), nn.Conv2d(width, num_classes, 1))
            self.box_head = nn.Sequential(*block(width, width), nn.Conv2d(width, 4, 1))
            nn.init.constant_(self.heatmap_head[-1].bias, -4.0)  # focal-loss prior: few cells hold an object

        def forward(self, image):
            features = self.backbone(image)
            heatmap = torch.sigmoid(self.heatmap_head(features))
            box = torch.exp(self.box_head(features).clamp(max=6.0)) * STRIDE
            return heatmap, box

        def raw(self, image):
            features = self.backbone(image)
            return self.heatmap_head(features), self.box_head(features).clamp(max=6.0)

    return ShapesDetector()


def _targets(truths: list[dict], grid: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heatmap N×C×g×g Gaussian peaks, box N×4×g×g ltrb in pixels, box weight N×g×g)."""
    n = len(truths)
    heat = np.zeros((n, num_classes, grid, grid), np.float32)
    ltrb = np.ones((n, 4, grid, grid), np.float32)
    weight = np.zeros((n, grid, grid), np.float32)
    centres = (np.arange(grid, dtype=np.float32) + 0.5) * STRIDE
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    for i, truth in enumerate(truths):
        for (x1, y1, x2, y2), cls in zip(truth["boxes"], truth["class_ids"]):
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            sigma = max(0.6, min(x2 - x1, y2 - y1) / STRIDE / 6) * STRIDE
            gauss = np.exp(-((cx - mx) ** 2 + (cy - my) ** 2) / (2 * sigma ** 2))
            peak = (int(min(grid - 1, my // STRIDE)), int(min(grid - 1, mx // STRIDE)))
            gauss[peak] = 1.0
            heat[i, cls] = np.maximum(heat[i, cls], gauss)
            inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2) & (gauss > weight[i])
            inside[peak] = True
            weight[i][inside] = gauss[inside]
            distances = np.stack([cx - x1, cy - y1, x2 - cx, y2 - cy])
            ltrb[i][:, inside] = np.maximum(distances[:, inside], 0.5)
    return heat, ltrb, weight


def train_detector(recipe: dict, log: bool = False) -> dict:
    """Train the network of ``recipe`` on generated shapes; returns its state_dict."""
    import torch

    torch.manual_seed(recipe["seed"])
    with one_training_thread():
        if recipe["steps"] == 0:  # the seeded, untrained network (tests of the pipeline, not of accuracy)
            return detector_network(recipe["width"]).state_dict()
        images, truths = generate_shapes(recipe["train_images"], recipe["seed"])
        grid = INPUT_SIZE // STRIDE
        heat, ltrb, weight = _targets(truths, grid, len(CLASS_NAMES))
        inputs = torch.from_numpy(to_input(images))
        heat, ltrb, weight = torch.from_numpy(heat), torch.from_numpy(ltrb), torch.from_numpy(weight)
        net = detector_network(recipe["width"])
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe["lr"], total_steps=recipe["steps"],
                                                       pct_start=0.15)
        generator = torch.Generator().manual_seed(recipe["seed"])
        start = time.perf_counter()
        for step in range(recipe["steps"]):
            index = torch.randint(0, len(inputs), (recipe["batch_size"],), generator=generator)
            x, h, b, w = inputs[index], heat[index], ltrb[index], weight[index]
            if step % 2:  # left-right flip: swaps the left and right distances
                x, h, w = x.flip(-1), h.flip(-1), w.flip(-1)
                b = b.flip(-1)[:, [2, 1, 0, 3]]
            logits, log_box = net.raw(x)
            prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
            positive = h.eq(1.0).float()
            # CenterNet's penalty-reduced focal loss
            focal = -(positive * (1 - prob) ** 2 * torch.log(prob)
                      + (1 - positive) * (1 - h) ** 4 * prob ** 2 * torch.log(1 - prob))
            heat_loss = focal.sum() / positive.sum().clamp(min=1)
            box_error = (log_box - torch.log(b / STRIDE)).abs().sum(1)
            box_loss = (box_error * w).sum() / w.sum().clamp(min=1)
            # IoU loss on the same cells: sharpens boxes for mAP@0.5:0.95
            pred = torch.exp(log_box) * STRIDE
            inter = (torch.minimum(pred[:, 0], b[:, 0]) + torch.minimum(pred[:, 2], b[:, 2])) * \
                    (torch.minimum(pred[:, 1], b[:, 1]) + torch.minimum(pred[:, 3], b[:, 3]))
            union = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3]) + (b[:, 0] + b[:, 2]) * (b[:, 1] + b[:, 3])
            iou = inter / (union - inter).clamp(min=1e-6)
            iou_loss = ((1 - iou) * w).sum() / w.sum().clamp(min=1)
            loss = heat_loss + box_loss + 2 * iou_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if log and (step % 100 == 0 or step == recipe["steps"] - 1):
                print(f"step {step} loss {loss.item():.3f} heat {heat_loss.item():.3f} box {box_loss.item():.3f} "
                      f"iou {iou_loss.item():.3f} {time.perf_counter() - start:.0f}s", flush=True)
        net.eval()
        return net.state_dict()


def trained_detector(steps: int = DEFAULT_STEPS, width: int = DEFAULT_WIDTH, train_images: int = 4000):
    """The trained ``shapes_detector`` network (weights from the cache, else trained now)."""
    recipe = default_recipe(steps, width, train_images)
    net = detector_network(width)
    net.load_state_dict(cached_weights("shapes_detector", recipe, lambda: train_detector(recipe)))
    return net.eval()


def _calibration_data(n: int) -> list[dict[str, np.ndarray]]:
    images, _ = generate_shapes(max(int(n), 0), TRAIN_SEED + 7)
    inputs = to_input(images)
    return [{"image": inputs[i:i + 1]} for i in range(len(inputs))]


def shapes_detector(steps: int = DEFAULT_STEPS, width: int = DEFAULT_WIDTH, train_images: int = 4000) -> ModelSpec:
    """The ``shapes_detector`` ModelSpec (training, if needed, happens on first ``build()``).

    ``steps``/``width``/``train_images`` make smaller, quickly trained variants for tests
    (``shapes_detector(steps=150, train_images=600)``); ``steps=0`` is the seeded untrained network.
    """
    default = (steps, width, train_images) == (DEFAULT_STEPS, DEFAULT_WIDTH, 4000)
    name = "shapes_detector" if default else f"shapes_detector_s{steps}_w{width}_n{train_images}"
    return ModelSpec(
        name=name,
        inputs=(TensorSpec("image", ("batch", 3, INPUT_SIZE, INPUT_SIZE), "float32", (0.0, 1.0)),),
        factory=functools.partial(trained_detector, steps, width, train_images),
        output_names=("heatmap", "box"),
        task="detection",
        dims={"batch": 1},
        eval_data=held_out_set,
        calibration_data=_calibration_data,
        description="anchor-free detector (stride 8, 4 shape classes) trained here on generated 128x128 images",
        task_config=dict(TASK_CONFIG),
    )
