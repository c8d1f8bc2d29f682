"""Prepare a PyTorch model for a target format: fuse BatchNorm, prune if asked, and say what the target needs.

``prepare_model_for_deployment`` and ``optimize_model_for_deployment`` are one function under the
two names the design used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..spec import PRECISIONS, DeployBenchError, ModelSpec, check_choice
from .fuse import FusedModel, fuse_model_for_deployment
from .prune import PRUNE_METHODS, PruneReport, prune_model

# What each target does with a prepared module, for the report.
_TARGET_NOTES = {
    "torch": "torch.export keeps the module as it is; fusing saves the BatchNorm ops at run time",
    "onnx": "fusing is harmless for ONNX: onnxruntime folds Conv+BN itself, the graph is just smaller",
    "openvino": "fusing is harmless for OpenVINO: its transformations fold Conv+BN as well",
    "tensorrt": "fusing is harmless for TensorRT: it fuses Conv+BN+ReLU itself",
    "tflite": "no channels-last switch is needed: the TFLite converter transposes NCHW to NHWC itself",
    "coreml": "no channels-last switch is needed: Core ML takes NCHW inputs",
}


@dataclass
class PreparedModel:
    """What ``prepare_model_for_deployment`` returns.

    ``module``: the prepared ``nn.Module`` (eval mode; the original is untouched).
    ``spec``: a ``ModelSpec`` whose factory returns ``module`` (name suffixed ``+fused``, ``+pruned50``),
    ready for ``deploy_model(prepared.spec, target)``; None when an ``nn.Module`` came without
    example inputs. ``fusion`` / ``pruning``: the reports of the passes that ran (None if not run).
    ``notes``: what the target needs, and which precision step is left to the converter.
    """

    module: Any
    target: str
    precision: str
    spec: ModelSpec | None = None
    fusion: FusedModel | None = None
    pruning: PruneReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fused(self) -> list[tuple[str, str]]:
        """The (layer, batchnorm) pairs that were folded."""
        return list(self.fusion.fused) if self.fusion else []


def optimize_model_for_deployment(model: Any, target: str, example_inputs: Any = None, fuse: bool = True,
                                  prune: float | None = None, prune_method: str = "l1_unstructured",
                                  precision: str = "fp32", atol: float = 1e-4, rtol: float = 1e-5) -> PreparedModel:
    """Fuse (Conv/Linear + BatchNorm), then prune ``prune`` of the weights if given; return a ``PreparedModel``.

    ``model`` is an ``nn.Module`` (with ``example_inputs`` for the parity check) or a ``ModelSpec``;
    ``target`` is the format it will be converted to. Pruning runs after fusion so structured
    pruning rebuilds fused convs and there is no BatchNorm to keep in step. ``precision`` is not
    applied here: fp16/bf16/int8 happen in the target's converter or engine, and the notes say so.
    ``prepare_model_for_deployment`` is the same function.
    """
    import torch

    from . import CONVERTERS

    check_choice("target format", target, CONVERTERS.names())
    check_choice("precision", precision, PRECISIONS)
    if prune is not None and prune_method not in PRUNE_METHODS:
        raise DeployBenchError(f"unknown prune method {prune_method!r}; choose from: {', '.join(PRUNE_METHODS)}")
    if isinstance(model, ModelSpec):
        spec, module = model, model.build()
        if example_inputs is None:
            example_inputs = model.make_inputs(seed=0)
    elif isinstance(model, torch.nn.Module):
        spec, module = None, model
    else:
        raise DeployBenchError(f"preparing needs an nn.Module or a ModelSpec, not {type(model).__name__}; "
                               "load a zoo model with deploybench.get_model(name)")

    notes = [_TARGET_NOTES[target]]
    fusion = pruning = None
    prepared, suffixes = module, []
    if fuse:
        fusion = fuse_model_for_deployment(prepared, example_inputs, atol=atol, rtol=rtol)
        prepared = fusion.module
        suffixes.append("fused")
        notes.extend(fusion.notes)
    if prune:
        pruning = prune_model(prepared, prune, prune_method, example_inputs=example_inputs)
        prepared = pruning.module
        suffixes.append(f"pruned{int(round(prune * 100))}" + ("s" if prune_method == "structured" else ""))
        notes.extend(pruning.skipped)
    if prepared is module:
        import copy

        prepared = copy.deepcopy(module)
    prepared.eval()
    if precision != "fp32":
        notes.append(f"{precision} is applied by the {target} converter/engine "
                     f"(deploy_model(..., precision={precision!r})), not by preparation")

    new_spec = None
    if spec is not None:
        new_spec = _derived_spec(spec, prepared, suffixes)
    elif example_inputs is not None:
        from ..models import model_from_module

        new_spec = model_from_module(prepared, example_inputs, name="+".join([type(module).__name__, *suffixes]))
    return PreparedModel(prepared, target, precision, new_spec, fusion, pruning, notes)


prepare_model_for_deployment = optimize_model_for_deployment


def _derived_spec(spec: ModelSpec, prepared: Any, suffixes: list[str]) -> ModelSpec:
    name = "+".join([spec.name, *suffixes])
    # ref names the unprepared model, which a fresh process could rebuild but not re-prepare: keep
    # the name as ref so nobody measures the original by mistake under the prepared model's name.
    return dataclasses.replace(spec, name=name, factory=lambda: prepared, _module=prepared, ref=name,
                               description=(spec.description + f" (prepared: {', '.join(suffixes) or 'copy'})").strip())


__all__ = ["PreparedModel", "optimize_model_for_deployment", "prepare_model_for_deployment"]
