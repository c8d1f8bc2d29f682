"""Fixtures shared by deploybench's own tests: small real models made here, and a cache per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def conversion_cache(tmp_path_factory) -> Path:
    """One conversion cache for the whole test session, so a model is exported once per format."""
    root = Path(os.environ.get("DEPLOYBENCH_TEST_CACHE") or tmp_path_factory.mktemp("deploybench-cache"))
    previous = os.environ.get("DEPLOYBENCH_CACHE")
    os.environ["DEPLOYBENCH_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("DEPLOYBENCH_CACHE", None)
    else:
        os.environ["DEPLOYBENCH_CACHE"] = previous


# tests marked with a backend need its packages; without them (tox -e core) they skip and say why
_NEEDS = {"openvino": ("openvino",), "tflite": ("litert_torch", "ai_edge_litert")}


def pytest_collection_modifyitems(config, items):
    import importlib.util

    missing = {marker: [m for m in modules if importlib.util.find_spec(m) is None]
               for marker, modules in _NEEDS.items()}
    for item in items:
        for marker, absent in missing.items():
            if absent and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(absent)} (not installed here: "
                                                        f"pip install 'deploybench[{marker}]')"))


def make_small_cnn(seed: int = 0):
    """Conv+BN+ReLU, depthwise conv, pooling and a Linear head, with seeded weights and non-trivial BN statistics."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    net.train()
    with torch.no_grad():  # realistic running statistics instead of the (0, 1) defaults
        for _ in range(4):
            net(torch.randn(8, 3, 16, 16) * 2 + 0.5)
    return net.eval()


@pytest.fixture(scope="session")
def small_cnn_spec():
    """A ModelSpec of make_small_cnn with a dynamic batch axis, input 1x3x16x16, output 'logits'."""
    from deploybench.models import model_from_module

    net = make_small_cnn()
    return model_from_module(net, np.zeros((1, 3, 16, 16), np.float32), name="small_cnn", output_names=["logits"],
                             task="classification")


# The SSH server and client HOME of the remote tests (tests/ssh_fixtures.py).
from ssh_fixtures import client_home, keys, server  # noqa: E402,F401


@pytest.fixture(scope="session")
def device_python(tmp_path_factory) -> Path:
    """A device's Python: a venv without PyTorch holding deploybench[runtime], onnxruntime and openvino
    (tests/device_env.py), shared by the device and remote tests."""
    from device_env import device_venv

    return device_venv(tmp_path_factory.mktemp("device") / "venv", ("onnxruntime", "openvino"))
