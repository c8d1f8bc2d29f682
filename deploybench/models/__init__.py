"""The built-in zoo (``MODELS``: ``digits_cnn``, ``resnet18``, ...) and ``model_from_module``: any
``nn.Module`` plus example inputs as a ``ModelSpec``. Resolving a ref a user types (a zoo name, a
``file.py:factory``, a model file) is ``deploybench.resolve``'s, above this room and the converters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._registry import Registry
from ..spec import DeployBenchError, ModelSpec, TensorSpec

MODELS = Registry("model", "deploybench.models", {
    "digits_cnn": "deploybench.models.digits:digits_cnn",
    "resnet18": "deploybench.models.resnet:resnet18",
    "mobilenet_v3": "deploybench.models.mobilenet:mobilenet_v3",
    "tiny_transformer": "deploybench.models.transformer:tiny_transformer",
    "shapes_detector": "deploybench.models.detector:shapes_detector",
})

ARTIFACT_SUFFIXES = (".onnx", ".tflite", ".xml", ".mlpackage", ".plan", ".engine")


def list_models() -> list[str]:
    return MODELS.names()


def model_from_module(module: Any, example_inputs: Any, name: str | None = None,
                      output_names: Sequence[str] | None = None, dynamic_batch: bool = True,
                      task: str = "generic", value_ranges: Mapping[str, tuple[float, float]] | None = None
                      ) -> ModelSpec:
    """A ``ModelSpec`` for a user's ``nn.Module`` and its example inputs (arrays or tensors).

    Input names are the mapping's keys, else ``input`` / ``input_0``, ``input_1``...; axis 0 is a
    dynamic ``batch`` axis unless ``dynamic_batch=False``. Output names are read from one forward
    pass unless given. ``value_ranges`` bounds the seeded values deploybench generates per input
    (``{"input_ids": (0, 30522), "attention_mask": (0, 2)}``; integers exclude the high end): token
    ids must stay inside the vocabulary, a mask 0 or 1.
    """
    import torch

    if isinstance(example_inputs, Mapping):
        named = dict(example_inputs)
    else:
        items = list(example_inputs) if isinstance(example_inputs, (list, tuple)) else [example_inputs]
        named = {("input" if len(items) == 1 else f"input_{i}"): x for i, x in enumerate(items)}
    arrays = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in named.items()}
    unknown = set(value_ranges or {}) - set(arrays)
    if unknown:
        raise DeployBenchError(f"value_ranges for unknown input(s) {sorted(unknown)}; the inputs are {list(arrays)}")
    specs = []
    for key, array in arrays.items():
        shape: list[int | str] = list(array.shape)
        if dynamic_batch and shape:
            shape[0] = "batch"
        value_range = (value_ranges or {}).get(key)
        specs.append(TensorSpec(key, tuple(shape), str(array.dtype),
                                tuple(map(float, value_range)) if value_range is not None else None))
    module.eval()
    if output_names is None:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(a) for a in arrays.values()])
        count = len(out) if isinstance(out, (list, tuple)) else len(out) if isinstance(out, Mapping) else 1
        output_names = list(out) if isinstance(out, Mapping) else (
            ["output"] if count == 1 else [f"output_{i}" for i in range(count)])
    batch = int(next(iter(arrays.values())).shape[0]) if arrays and next(iter(arrays.values())).ndim else 1
    name = name or type(module).__name__
    return ModelSpec(name=name, inputs=tuple(specs), factory=lambda: module, output_names=tuple(output_names),
                     task=task, dims={"batch": batch}, ref=None, _module=module)


__all__ = ["ARTIFACT_SUFFIXES", "MODELS", "list_models", "model_from_module"]
