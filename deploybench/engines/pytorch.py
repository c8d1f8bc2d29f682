"""The ``torch`` backend: an in-memory ``nn.Module`` (eager) or a ``torch.export`` ``.pt2`` file.

fp16 and bf16 run the fp32 weights under ``torch.autocast("cpu", dtype=...)``: conv and linear
run in the lower precision, numerically sensitive ops stay fp32, as PyTorch users run it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import DeployBenchError
from .base import InferenceEngine

_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class TorchEngine(InferenceEngine):
    """Run a PyTorch model on CPU.

    The artifact's own ``module`` (an in-memory model, see ``converters.torch_artifact``) or ``module=``
    runs eagerly; without either, the artifact's ``.pt2`` is loaded with ``torch.export.load(...).module()``.
    ``threads`` sets ``torch.set_num_threads`` while the engine is loaded; ``close()`` restores it.
    """

    backend = "torch"
    formats = ("torch",)
    # fp16 conv/linear run on CPU in this PyTorch (autocast), slowly but correctly.
    precisions = ("fp32", "bf16", "fp16")
    requires = "torch"

    def _load_impl(self) -> None:
        import torch

        module = self.options.get("module") or self.artifact.module
        if module is None:
            path = Path(self.artifact.path)
            if not path.is_file():
                raise DeployBenchError(f"torch artifact {path} is not a file: pass module= (an nn.Module) "
                                       "or a .pt2 written by deploy_model(model, 'torch')")
            from ..converters.pytorch import load_program

            module = load_program(path).module()
            self.runtime_notes["loaded"] = "torch.export ExportedProgram"
        else:
            if not isinstance(module, torch.nn.Module):
                raise DeployBenchError(f"module= must be a torch.nn.Module, not {type(module).__name__}")
            module.eval()
            self.runtime_notes["loaded"] = "eager nn.Module"
        self._module = module
        self._previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        autocast = _AUTOCAST_DTYPES.get(self.precision)
        self._autocast_dtype = getattr(torch, autocast) if autocast else None
        if autocast:
            self.runtime_notes["autocast"] = autocast
            self.runtime_notes["precision_ran"] = (f"{self.precision} autocast: conv, linear and matmul in "
                                                   f"{self.precision}; norms, softmax and reductions in fp32")

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, Any] | list | tuple:
        import contextlib

        import torch

        args = [torch.from_numpy(feed[t.name]) for t in self.inputs]  # int64 token ids pass through as they are
        autocast = (torch.autocast("cpu", dtype=self._autocast_dtype) if self._autocast_dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self._module(*args)
        return _to_numpy(out)

    def _close_impl(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self._previous_threads)
        self._module = None


def _to_numpy(out: Any) -> Mapping[str, np.ndarray] | list[np.ndarray]:
    """A tensor -> [array]; tuple/list (nested) -> flat list; dict -> {name: array}. Floats come out as float32."""
    import torch

    def array(tensor) -> np.ndarray:
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.cpu().numpy()

    if isinstance(out, torch.Tensor):
        return [array(out)]
    if isinstance(out, Mapping):
        return {str(k): array(v) for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (list, tuple)):
        flat: list[np.ndarray] = []
        for item in out:
            flat.extend(_to_numpy(item) if not isinstance(item, Mapping) else _to_numpy(item).values())
        return flat
    raise DeployBenchError(f"the torch model returned {type(out).__name__}; deploybench reads a tensor, "
                           "a tuple/list or a dict of tensors")


__all__ = ["TorchEngine"]
