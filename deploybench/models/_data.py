"""Data and weights the zoo shares: real photo crops, BatchNorm statistics from them, and a weight cache.

The photos are the two that ship inside scikit-learn (``load_sample_images``: china.jpg and
flower.jpg), so nothing is downloaded at run time. Weights that take seconds to make (training,
BatchNorm re-estimation) are cached under ``$DEPLOYBENCH_CACHE/weights/`` keyed by a hash of the
recipe that made them, so a rerun loads the same bytes and the conversion cache's content hash
stays stable.
"""

from __future__ import annotations

import contextlib

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Bump when the file layout of cached weights changes, so old files are not misread.
WEIGHTS_FORMAT_VERSION = 1


def weights_dir() -> Path:
    """Where cached weights live: ``$DEPLOYBENCH_CACHE/weights`` (default ``.deploybench-cache/weights``)."""
    return Path(os.environ.get("DEPLOYBENCH_CACHE", ".deploybench-cache")) / "weights"


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """A short stable hash of a recipe (any JSON-serialisable mapping)."""
    payload = json.dumps({"format": WEIGHTS_FORMAT_VERSION, **recipe}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def weights_path(name: str, recipe: Mapping[str, Any]) -> Path:
    """The file that holds (or will hold) the weights ``recipe`` makes for model ``name``."""
    return weights_dir() / f"{name}-{recipe_key(recipe)}.pt"


def cached_weights(name: str, recipe: Mapping[str, Any], build_fn: Callable[[], Mapping[str, Any]]) -> dict:
    """Return the state_dict ``build_fn()`` makes for ``recipe``, loading it from disk when already made.

    The file is written to a temporary sibling and renamed into place, so concurrent processes
    (pytest-xdist, one process per cell) never read a half-written file. An unreadable file is
    rebuilt.
    """
    import torch

    path = weights_path(name, recipe)
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged or foreign file: make the weights again
            pass
    state = {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v) for k, v in build_fn().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            torch.save(state, temp_file)
        os.chmod(temp_name, 0o644)  # mkstemp makes it private; the cache is shared like the conversion cache
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return state


@functools.cache
def _sample_photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(np.ascontiguousarray(image) for image in load_sample_images().images)


def real_images(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` seeded crops of scikit-learn's two sample photos, float32 N×3×size×size, ImageNet-normalised.

    Each crop is a random region (8%-100% of the photo's area, aspect 3:4 to 4:3, like
    torchvision's RandomResizedCrop) resized to ``size``, flipped left-right half the time.
    """
    import cv2

    rng = np.random.default_rng(seed)
    photos = _sample_photos()
    batch = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        for _ in range(10):
            area = height * width * rng.uniform(0.08, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            crop_w, crop_h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                break
        else:  # the centre square, as RandomResizedCrop falls back to
            crop_w = crop_h = min(height, width)
        top = int(rng.integers(height - crop_h + 1))
        left = int(rng.integers(width - crop_w + 1))
        crop = photo[top:top + crop_h, left:left + crop_w]
        interpolation = cv2.INTER_AREA if crop_w > size else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=interpolation)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        batch[i] = ((crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return batch


def image_calibration_data(n: int, size: int = 224, seed: int = 1, input_name: str = "image") -> list[dict]:
    """Up to ``n`` input dicts ``{input_name: 1×3×size×size}`` of real photo crops (for int8 calibration).

    The default seed differs from the one used for BatchNorm statistics, so calibration sees crops
    the statistics were not estimated on.
    """
    images = real_images(max(int(n), 0), size, seed)
    return [{input_name: images[i:i + 1]} for i in range(len(images))]


def estimate_batchnorm_statistics(module, images: np.ndarray, batch_size: int = 16) -> None:
    """Replace every BatchNorm's running mean/var with their cumulative average over ``images``.

    Runs the module in train mode under no_grad with ``momentum=None`` (a true average over all
    batches rather than an exponential one), then restores each momentum and eval mode. Weights
    are not touched.
    """
    import torch
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    module.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                module(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        module.eval()


def scale_classifier_head(module, head, images: np.ndarray, logit_std: float = 2.0, batch_size: int = 16) -> float:
    """Rescale the final Linear ``head`` so the logits on ``images`` have standard deviation ``logit_std``.

    A seeded network's logits are tiny (torchvision's MobileNetV3 head starts at std 0.01), so top-1
    would hinge on differences near float rounding; a trained classifier's logits spread over a few
    units, and so do these after scaling (a data-dependent init in the spirit of LSUV).
    Returns the factor applied.
    """
    import torch

    module.eval()
    with torch.no_grad():
        logits = torch.cat([module(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
                            for start in range(0, len(images), batch_size)])
        factor = float(logit_std / max(float(logits.std()), 1e-12))
        head.weight.mul_(factor)
        if head.bias is not None:
            head.bias.mul_(factor)
    return factor


# The ImageNet-architecture zoo models have seeded, untrained 1000-class heads: on real crops their
# top logits are near ties, so int8 rounding flips the argmax (top-1 agreement 0.67-0.81 measured)
# while the outputs still agree (cosine 0.997-0.999). Top-1 agreement there measures tie-breaking,
# not accuracy: judge their int8 cells on the error figures and report top-1 agreement unjudged.
UNTRAINED_HEAD_TOLERANCES = {"int8": {"top1_agreement": None}}


def image_classifier_spec(name: str, network_fn, head_of, recipe: dict, description: str):
    """A zoo ``ModelSpec`` for an ImageNet-architecture network written from code.

    Its weights are seeded (``network_fn`` initialises them), its BatchNorm statistics estimated on
    real photo crops and its head (``head_of(network)``, the last Linear) scaled so the logits spread
    like a trained model's; all of it made once and cached under ``recipe``'s hash. Input ``image``
    (batch × 3 × size × size, ImageNet-normalised), output ``logits``; no eval set (the class scores
    carry no meaning); calibration data are crops of the same real photos.
    """
    from ..spec import ModelSpec, TensorSpec

    def make_weights() -> dict:
        import torch

        torch.manual_seed(recipe["init_seed"])
        network = network_fn()
        images = real_images(recipe["bn_images"], recipe["image_size"], recipe["bn_image_seed"])
        estimate_batchnorm_statistics(network, images, recipe["bn_batch"])
        scale_classifier_head(network, head_of(network), images, recipe["logit_std"], recipe["bn_batch"])
        return network.state_dict()

    def build():
        network = network_fn()
        network.load_state_dict(cached_weights(name, recipe, make_weights))
        return network.eval()

    def calibration_data(n: int) -> list[dict]:
        return image_calibration_data(n, recipe["image_size"])

    size = recipe["image_size"]
    return ModelSpec(name=name, inputs=(TensorSpec("image", ("batch", 3, size, size), "float32"),), factory=build,
                     output_names=("logits",), task="classification", dims={"batch": 1}, eval_data=None,
                     calibration_data=calibration_data, description=description,
                     task_config={"num_classes": 1000}, tolerances=UNTRAINED_HEAD_TOLERANCES)


@contextlib.contextmanager
def one_training_thread():
    """Train the zoo's networks on one thread, then give the caller back its thread count.

    One thread sums floats in one order, so a recipe gives the same weights (and the same cache
    key's contents) on every machine; and on a busy 2-core machine two OpenMP threads wait on each
    other ~10x longer than one works alone.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
