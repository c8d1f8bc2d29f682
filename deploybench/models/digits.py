"""``digits_cnn``: a small Conv-BN-ReLU classifier trained here on scikit-learn's 8×8 digits.

The data set ships inside scikit-learn, training is deterministic and takes a few seconds on one
CPU thread, and the weights are cached on disk after the first run. It is the zoo's model with
a real task metric: top-1 on a fixed, stratified 30 % held-out split.
"""

from __future__ import annotations

import functools

import numpy as np

from ..spec import ModelSpec, TensorSpec
from ._data import cached_weights, one_training_thread

# Pixel values of load_digits are 0..16; the network sees (x / 16 - MEAN) / STD, with MEAN and STD
# measured once on the training split (rounded, so they are constants of the recipe).
PIXEL_MEAN = 0.30
PIXEL_STD = 0.38

TRAINING_RECIPE = {
    "model": "digits_cnn", "version": 1, "split_seed": 0, "test_size": 0.3, "seed": 0,
    "epochs": 12, "batch_size": 64, "lr": 0.01, "weight_decay": 1e-4,
    "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD,
}

# Measured with TRAINING_RECIPE (torch 2.13 CPU): 536 of 540 held-out images right.
HELD_OUT_TOP1 = 0.993


@functools.cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, held-out images, held-out labels): images float32 N×1×8×8, scaled."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = ((digits.data.astype(np.float32) / 16.0 - PIXEL_MEAN) / PIXEL_STD).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TRAINING_RECIPE["test_size"], stratify=labels,
        random_state=TRAINING_RECIPE["split_seed"])
    return train_x, train_y, test_x, test_y


def digits_network():
    """The untrained network: three Conv-BN-ReLU blocks, max pooling, a Linear head (1×1×8×8 → 10)."""
    from torch import nn

    def block(in_channels: int, out_channels: int) -> list:
        return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), nn.MaxPool2d(2),   # 8x8 -> 4x4
        *block(32, 64), nn.MaxPool2d(2),                  # 4x4 -> 2x2
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 2 * 2, 10),
    )


def _train() -> dict:
    """Train digits_network on the training split; return its state_dict. Deterministic on CPU."""
    import torch

    recipe = TRAINING_RECIPE
    with one_training_thread():
        torch.manual_seed(recipe["seed"])
        network = digits_network()
        train_x, train_y, _, _ = _split()
        images, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
        optimizer = torch.optim.AdamW(network.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe["epochs"])
        shuffle = torch.Generator().manual_seed(recipe["seed"])
        network.train()
        for _ in range(recipe["epochs"]):
            order = torch.randperm(len(images), generator=shuffle)
            for start in range(0, len(order), recipe["batch_size"]):
                batch = order[start:start + recipe["batch_size"]]
                loss = torch.nn.functional.cross_entropy(network(images[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
        return network.state_dict()


def build_digits_cnn():
    """The trained network in eval mode (trained on first use, then loaded from the weight cache)."""
    network = digits_network()
    network.load_state_dict(cached_weights("digits_cnn", TRAINING_RECIPE, _train))
    return network.eval()


def eval_data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The held-out split: ({"image": float32 N×1×8×8}, int64 labels N), N = 540."""
    _, _, test_x, test_y = _split()
    return {"image": test_x.copy()}, test_y.copy()


def calibration_data(n: int) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` training images in a seeded order, each ``{"image": float32 1×1×8×8}``."""
    train_x, _, _, _ = _split()
    order = np.random.default_rng(TRAINING_RECIPE["seed"]).permutation(len(train_x))[:max(int(n), 0)]
    return [{"image": train_x[i:i + 1].copy()} for i in order]


def digits_cnn() -> ModelSpec:
    """The zoo entry: the spec is cheap; the network is trained or loaded only by ``spec.build()``."""
    return ModelSpec(
        name="digits_cnn",
        inputs=(TensorSpec("image", ("batch", 1, 8, 8), "float32", value_range=(-0.8, 1.9)),),
        factory=build_digits_cnn,
        output_names=("logits",),
        task="classification",
        dims={"batch": 1},
        eval_data=eval_data,
        calibration_data=calibration_data,
        description=("8x8 digits CNN (3x Conv-BN-ReLU, 2x max pool, Linear), trained on scikit-learn digits; "
                     f"held-out top-1 {HELD_OUT_TOP1:.3f} on a stratified 30% split (540 images)"),
        task_config={"num_classes": 10, "labels": [str(d) for d in range(10)]},
    )
