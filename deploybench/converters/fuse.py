"""Fold BatchNorm into the layer before it (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear) for inference.

Pairs are found on the ``torch.fx`` graph, so wiring outside ``nn.Sequential`` (ResNet's
conv -> bn -> relu inside a block) is found too. When the model cannot be traced, adjacent named
children (conv declared right before its bn) are taken as pairs instead; that is a guess about the
wiring, so the parity check on example inputs is what proves the result.

The fused layer replaces the conv in place and the BatchNorm becomes ``nn.Identity``, so the model
keeps its own class and attribute names.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import DeployBenchError, ModelSpec


@dataclass
class FusedModel:
    """What ``fuse_model_for_deployment`` returns.

    ``module``: the fused copy, in eval mode (the original is untouched).
    ``fused``: the (layer, batchnorm) qualified-name pairs that were folded.
    ``max_abs_diff``: the largest absolute difference between original and fused outputs on the
    example inputs; ``tolerance``: what it had to stay within (``atol + rtol * max |output|``). ``method``: "fx" (graph walk) or "children" (adjacent named children, used when
    tracing failed). ``notes``: why candidate pairs were left alone.
    """

    module: Any
    fused: list[tuple[str, str]]
    max_abs_diff: float
    tolerance: float = 0.0
    method: str = "fx"
    notes: list[str] = field(default_factory=list)

    @property
    def batchnorms_left(self) -> int:
        """How many BatchNorm layers the fused module still has."""
        from torch import nn

        return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())


def fuse_model_for_deployment(model: Any, example_inputs: Any = None, atol: float = 1e-4,
                              rtol: float = 1e-5) -> FusedModel:
    """Fold every BatchNorm that directly follows a Conv/ConvTranspose/Linear into it; return a ``FusedModel``.

    ``model`` is an ``nn.Module`` or a ``ModelSpec``. ``example_inputs`` (a tensor or array, a tuple
    of them, or a mapping name -> tensor) feed the parity check; for a ``ModelSpec`` they default to
    its seeded inputs. Raises ``DeployBenchError`` naming the max abs diff when the fused model's
    outputs differ from the original's by more than ``atol + rtol * max |original output|`` (the
    relative part because fp32 rounding alone moves logits of size 400 by ~4e-4).
    """
    import torch

    source, args = _module_and_args(model, example_inputs, purpose="fusing")
    original = source.eval()
    fused_module = copy.deepcopy(original).eval()

    notes: list[str] = []
    try:
        pairs, skipped = _pairs_from_fx(fused_module)
        method = "fx"
        notes.extend(skipped)
    except Exception as exc:  # untraceable forward (data-dependent control flow, ...)
        pairs = _pairs_from_children(fused_module)
        method = "children"
        notes.append(f"torch.fx could not trace {type(original).__name__} ({type(exc).__name__}); "
                     "paired adjacent named children instead")

    fused: list[tuple[str, str]] = []
    for layer_name, bn_name in pairs:
        layer = fused_module.get_submodule(layer_name)
        bn = fused_module.get_submodule(bn_name)
        replacement = _fold(layer, bn)
        if replacement is None:
            notes.append(f"{layer_name}+{bn_name}: {type(layer).__name__} and {type(bn).__name__} do not fold")
            continue
        fused_module.set_submodule(layer_name, replacement)
        fused_module.set_submodule(bn_name, torch.nn.Identity())
        fused.append((layer_name, bn_name))

    max_abs_diff, output_scale = _max_abs_diff(original, fused_module, args)
    tolerance = atol + rtol * output_scale
    if not max_abs_diff <= tolerance:  # also catches NaN
        raise DeployBenchError(
            f"fusing {type(original).__name__} changed its outputs: max abs diff {max_abs_diff:.3g} > tolerance "
            f"{tolerance:.3g} (atol {atol:g} + rtol {rtol:g} x max |output| {output_scale:.3g}) "
            f"(method {method}, pairs {', '.join('+'.join(p) for p in fused) or 'none'}); "
            "check the forward really applies each BatchNorm right after its layer, or raise atol")
    return FusedModel(fused_module, fused, max_abs_diff, tolerance, method, notes)


# ---- finding pairs ------------------------------------------------------------------------------

def _layer_types():
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _is_foldable_bn(module) -> bool:
    from torch import nn

    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and module.running_mean is not None and module.running_var is not None)


def _pairs_from_fx(module) -> tuple[list[tuple[str, str]], list[str]]:
    """(layer, bn) pairs where the bn's only input is the layer's output and each is called once."""
    import torch.fx

    graph = torch.fx.symbolic_trace(module).graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, skipped = [], []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_foldable_bn(module.get_submodule(node.target)):
            continue
        producer = node.args[0] if node.args else None
        if not isinstance(producer, torch.fx.Node) or producer.op != "call_module":
            continue
        layer = module.get_submodule(producer.target)
        if not isinstance(layer, _layer_types()):
            continue
        if calls[producer.target] > 1 or calls[node.target] > 1:
            skipped.append(f"{producer.target}+{node.target}: a module is called more than once, not fused")
        elif len(producer.users) > 1:
            skipped.append(f"{producer.target}+{node.target}: {producer.target}'s output is also used "
                           "before normalization, not fused")
        else:
            pairs.append((producer.target, node.target))
    return pairs, skipped


def _pairs_from_children(module) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in module.named_modules():
        children = list(parent.named_children())
        for (first_name, first), (second_name, second) in zip(children, children[1:]):
            if isinstance(first, _layer_types()) and _is_foldable_bn(second):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + first_name, prefix + second_name))
    return pairs


def _fold(layer, bn):
    """The layer with ``bn`` folded in, or None when their channel counts do not match."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    layer, bn = layer.eval(), bn.eval()
    if isinstance(layer, nn.Linear):
        if layer.out_features != bn.num_features:
            return None
        return fuse_linear_bn_eval(layer, bn)
    transpose = isinstance(layer, nn.modules.conv._ConvTransposeNd)
    if layer.out_channels != bn.num_features:
        return None
    # ConvTranspose keeps output channels on weight dim 1: fuse_conv_bn_eval handles it with transpose=True.
    return fuse_conv_bn_eval(layer, bn, transpose=transpose)


# ---- parity -------------------------------------------------------------------------------------

def _module_and_args(model: Any, example_inputs: Any, purpose: str) -> tuple[Any, tuple]:
    """(nn.Module, positional example tensors) for a module or a ModelSpec."""
    import torch

    if isinstance(model, ModelSpec):
        module = model.build()
        if example_inputs is None:
            example_inputs = model.make_inputs(seed=0)
    elif isinstance(model, torch.nn.Module):
        module = model
    else:
        raise DeployBenchError(f"{purpose} needs an nn.Module or a ModelSpec, not {type(model).__name__}")
    if example_inputs is None:
        raise DeployBenchError(f"{purpose} {type(module).__name__}: pass example_inputs (or a ModelSpec) so the "
                               "result can be checked against the original")
    return module, as_tensor_args(example_inputs)


def as_tensor_args(example_inputs: Any) -> tuple:
    """A tensor, array, sequence or mapping of them, as a tuple of tensors in order."""
    import torch

    if isinstance(example_inputs, Mapping):
        items: Sequence = list(example_inputs.values())
    elif isinstance(example_inputs, (list, tuple)):
        items = list(example_inputs)
    else:
        items = [example_inputs]
    return tuple(x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x)) for x in items)


def flatten_outputs(out: Any) -> list:
    """Every tensor in a module's output (tensor, tuple/list, dict, nested), in order."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def _max_abs_diff(reference, candidate, args: tuple) -> tuple[float, float]:
    """(max abs difference between the two models' float outputs, max abs value of the reference's)."""
    import torch

    with torch.inference_mode():
        expected = flatten_outputs(reference(*args))
        got = flatten_outputs(candidate(*args))
    pairs = [(a, b) for a, b in zip(expected, got) if a.is_floating_point() and a.numel()]
    scale = max((float(a.abs().max()) for a, _ in pairs), default=0.0)
    if len(expected) != len(got) or any(a.shape != b.shape for a, b in zip(expected, got)):
        return float("inf"), scale
    return max((float((a.double() - b.double()).abs().max()) for a, b in pairs), default=0.0), scale


__all__ = ["FusedModel", "fuse_model_for_deployment"]
