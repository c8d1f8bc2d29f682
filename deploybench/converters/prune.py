"""Pruning: zero small weights (``l1_unstructured``) or remove whole conv channels (``structured``).

Unstructured pruning keeps every tensor's shape, so the model is no smaller on disk; only a sparse
runtime profits. Structured pruning rebuilds the layers with fewer channels, so the parameter
count, the serialized size and the work all drop. It only touches chains it can prove safe on the
``torch.fx`` graph:

    Conv -> [BatchNorm] -> [elementwise activation / dropout]* -> Conv (groups=1)
    Conv -> [BatchNorm] -> [activation]* -> [pool] -> flatten -> Linear

where every module is called once and every intermediate value has one user. Convs whose output
also feeds a residual addition, a concatenation, a depthwise/grouped conv or anything else are
left whole and named in the report's ``skipped``.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from typing import Any

from ..spec import DeployBenchError, ModelSpec
from .fuse import _module_and_args, flatten_outputs

PRUNE_METHODS = ("l1_unstructured", "structured")


@dataclass
class PruneReport:
    """What ``prune_model`` returns.

    ``module``: the pruned copy (the original is untouched). ``sparsity``: the fraction of the
    prunable (Conv/Linear) weights that are zero (l1_unstructured) or were removed (structured).
    ``params_*``: parameter counts; ``bytes_*``: size of the ``torch.save``d state dict.
    ``pruned``: the layers that lost weights or channels; ``skipped``: layers left whole and why.
    """

    module: Any
    method: str
    amount: float
    sparsity: float
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    pruned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def prune_model(model: Any, amount: float, method: str = "l1_unstructured", example_inputs: Any = None) -> PruneReport:
    """Prune ``amount`` (0..1) of the Conv/Linear weights of ``model``; return a ``PruneReport``.

    ``method="l1_unstructured"`` zeroes the smallest-magnitude weights of each layer
    (``torch.nn.utils.prune.l1_unstructured`` made permanent with ``prune.remove``).
    ``method="structured"`` removes the output channels with the smallest L1 norm
    (the ``ln_structured`` ranking, n=1) from each safe conv chain and rebuilds its BatchNorm and
    consumer; it needs ``example_inputs`` (or a ``ModelSpec``) to check that the pruned model runs
    and gives outputs of the same shapes.
    """
    import torch

    if method not in PRUNE_METHODS:
        raise DeployBenchError(f"unknown prune method {method!r}; choose from: {', '.join(PRUNE_METHODS)}")
    if not 0.0 <= float(amount) < 1.0:
        raise DeployBenchError(f"prune amount {amount!r} must be a fraction in [0, 1), e.g. 0.3")
    if method == "structured" or example_inputs is not None or isinstance(model, ModelSpec):
        source, args = _module_and_args(model, example_inputs, purpose=f"{method} pruning of")
    elif isinstance(model, torch.nn.Module):
        source, args = model, None
    else:
        raise DeployBenchError(f"pruning needs an nn.Module or a ModelSpec, not {type(model).__name__}")

    pruned_module = copy.deepcopy(source).eval()
    prunable_before = _prunable_weight_count(pruned_module)
    params_before, bytes_before = _param_count(pruned_module), _serialized_bytes(pruned_module)
    if method == "l1_unstructured":
        pruned, skipped = _l1_unstructured(pruned_module, float(amount))
        zeros = sum(int((w == 0).sum()) for w in _prunable_weights(pruned_module))
        sparsity = zeros / max(prunable_before, 1)
    else:
        pruned, skipped = _structured(pruned_module, float(amount))
        sparsity = 1.0 - _prunable_weight_count(pruned_module) / max(prunable_before, 1)

    if args is not None:
        _check_same_output_shapes(source, pruned_module, args, method)
    return PruneReport(pruned_module, method, float(amount), sparsity, params_before, _param_count(pruned_module),
                       bytes_before, _serialized_bytes(pruned_module), pruned, skipped)


# ---- measuring ----------------------------------------------------------------------------------

def _prunable_layers(module):
    from torch import nn

    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def _prunable_weights(module):
    return [m.weight.detach() for _, m in _prunable_layers(module)]


def _prunable_weight_count(module) -> int:
    return sum(w.numel() for w in _prunable_weights(module))


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _serialized_bytes(module) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _check_same_output_shapes(original, pruned, args, method: str) -> None:
    import torch

    with torch.inference_mode():
        before = [tuple(t.shape) for t in flatten_outputs(original(*args))]
        try:
            after = [tuple(t.shape) for t in flatten_outputs(pruned(*args))]
        except Exception as exc:
            raise DeployBenchError(f"{method} pruning broke {type(original).__name__}: it no longer runs "
                                   f"({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if before != after:
        raise DeployBenchError(f"{method} pruning changed the output shapes of {type(original).__name__} "
                               f"from {before} to {after}; prune less or use l1_unstructured")


# ---- unstructured -------------------------------------------------------------------------------

def _l1_unstructured(module, amount: float) -> tuple[list[str], list[str]]:
    from torch.nn.utils import prune

    pruned = []
    for name, layer in _prunable_layers(module):
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")  # bake the mask into the weight: no more weight_orig / weight_mask
        pruned.append(name)
    return pruned, []


# ---- structured ---------------------------------------------------------------------------------

def _passthrough_module(m) -> bool:
    from torch import nn

    return isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
                          nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d,
                          nn.Dropout1d, nn.Dropout3d))


def _pool_module(m) -> bool:
    from torch import nn

    return isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d))


_PASSTHROUGH_FUNCTIONS = {"relu", "relu6", "hardswish", "silu", "gelu", "sigmoid", "tanh", "leaky_relu", "dropout",
                          "elu", "mish", "hardsigmoid"}
_POOL_FUNCTIONS = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                   "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"}


def _function_name(node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target)) if node.op in ("call_function", "call_method") else ""


@dataclass
class _Chain:
    conv: str
    bn: str | None
    consumer: str          # a conv or a linear
    consumer_kind: str     # "conv" or "linear"


def _structured(module, amount: float) -> tuple[list[str], list[str]]:
    import torch.fx
    from torch import nn

    try:
        roots = [("", torch.fx.symbolic_trace(module).graph)]
    except Exception as exc:
        # Sequentials are always traceable: prune inside them when the whole model is not.
        roots = []
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Sequential) and not any(name.startswith(r + ".") for r, _ in roots if r):
                try:
                    roots.append((name, torch.fx.symbolic_trace(sub).graph))
                except Exception:
                    continue
        if not roots:
            return [], [f"{type(module).__name__}: torch.fx cannot trace it ({type(exc).__name__}) and it has "
                        "no nn.Sequential; nothing pruned"]

    chains, skipped = [], []
    for prefix, graph in roots:
        found, why_not = _find_chains(module, graph, prefix)
        chains.extend(found)
        skipped.extend(why_not)

    pruned = []
    for chain in chains:
        conv = module.get_submodule(chain.conv)
        keep = _channels_to_keep(conv.weight.detach(), amount)
        if keep.numel() == conv.out_channels:
            skipped.append(f"{chain.conv}: amount {amount} removes no channel of {conv.out_channels}")
            continue
        module.set_submodule(chain.conv, _conv_keep_outputs(conv, keep))
        if chain.bn is not None:
            module.set_submodule(chain.bn, _bn_keep(module.get_submodule(chain.bn), keep))
        consumer = module.get_submodule(chain.consumer)
        if chain.consumer_kind == "conv":
            module.set_submodule(chain.consumer, _conv_keep_inputs(consumer, keep))
        else:
            module.set_submodule(chain.consumer, _linear_keep_inputs(consumer, keep, conv.out_channels))
        pruned.append(f"{chain.conv}: {conv.out_channels} -> {keep.numel()} channels")
    return pruned, skipped


def _find_chains(module, graph, prefix: str) -> tuple[list[_Chain], list[str]]:
    from torch import nn

    def qualified(target: str) -> str:
        return f"{prefix}.{target}" if prefix else target

    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def sub(node):
        return module.get_submodule(qualified(node.target)) if node.op == "call_module" else None

    chains, skipped = [], []
    for node in graph.nodes:
        conv = sub(node)
        if not isinstance(conv, nn.modules.conv._ConvNd) or isinstance(conv, nn.modules.conv._ConvTransposeNd):
            continue
        name = qualified(node.target)
        if conv.groups != 1:
            skipped.append(f"{name}: grouped/depthwise conv, its channels are tied to its input's")
            continue
        if calls[node.target] > 1:
            skipped.append(f"{name}: called more than once")
            continue
        bn_name, current, reason = None, node, None
        while reason is None:
            if len(current.users) != 1:
                reason = ("its output feeds several consumers (a residual addition or a branch)"
                          if len(current.users) > 1 else "its output is unused")
                break
            user = next(iter(current.users))
            if user.args[:1] != (current,):
                reason = f"it is not the first argument of {user.name}"
                break
            module_user = sub(user)
            if user.op == "output":
                reason = "it is a model output"
            elif (isinstance(module_user, (nn.modules.batchnorm._BatchNorm, nn.modules.conv._ConvNd, nn.Linear))
                  and calls[user.target] > 1):
                # a stateless module (one ReLU reused, as torchvision's BasicBlock does) may be shared
                reason = f"{qualified(user.target)} is called more than once"
            elif (isinstance(module_user, nn.modules.batchnorm._BatchNorm) and bn_name is None
                  and module_user.num_features == conv.out_channels):
                bn_name = qualified(user.target)
            elif _passthrough_module(module_user) or _function_name(user) in _PASSTHROUGH_FUNCTIONS:
                pass
            elif _pool_module(module_user) or _function_name(user) in _POOL_FUNCTIONS:
                pass
            elif isinstance(module_user, nn.Flatten) or _function_name(user) == "flatten":
                start_dim = _flatten_start_dim(user, module_user)
                if start_dim != 1:
                    reason = "it is flattened from a dim other than 1"
                    break
                flat, linear_node = user, next(iter(user.users)) if len(user.users) == 1 else None
                while linear_node is not None and linear_node.args[:1] == (flat,) and (
                        _passthrough_module(sub(linear_node)) or _function_name(linear_node) in _PASSTHROUGH_FUNCTIONS):
                    flat = linear_node  # dropout / activation on the flat features keeps their order
                    linear_node = next(iter(flat.users)) if len(flat.users) == 1 else None
                linear = sub(linear_node) if linear_node is not None else None
                if (isinstance(linear, nn.Linear) and linear_node.args[:1] == (flat,)
                        and calls[linear_node.target] == 1 and linear.in_features % conv.out_channels == 0):
                    chains.append(_Chain(name, bn_name, qualified(linear_node.target), "linear"))
                else:
                    reason = "its flattened output does not go straight into one Linear"
                break
            elif isinstance(module_user, nn.modules.conv._ConvNd):
                if isinstance(module_user, nn.modules.conv._ConvTransposeNd) or module_user.groups != 1:
                    reason = f"it feeds grouped/depthwise or transposed conv {qualified(user.target)}"
                else:
                    chains.append(_Chain(name, bn_name, qualified(user.target), "conv"))
                break
            else:
                reason = f"it feeds {user.name} ({user.op} {_function_name(user) or type(module_user).__name__})"
            current = user
        if reason is not None:
            skipped.append(f"{name}: {reason}")
    return chains, skipped


def _flatten_start_dim(node, module_user) -> int | None:
    if module_user is not None:
        return module_user.start_dim if module_user.end_dim == -1 else None
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start if end == -1 and isinstance(start, int) else None


def _channels_to_keep(weight, amount: float):
    """Indices (sorted) of the output channels with the largest L1 norm: ln_structured's ranking, n=1."""
    import torch

    norms = weight.abs().flatten(1).sum(dim=1)
    count = max(1, weight.shape[0] - int(round(amount * weight.shape[0])))
    return torch.topk(norms, count).indices.sort().values


def _conv_like(conv, in_channels: int, out_channels: int):
    new = type(conv)(in_channels, out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                     padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    return new.train(conv.training)


def _conv_keep_outputs(conv, keep):
    import torch

    new = _conv_like(conv, conv.in_channels, keep.numel())
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[keep])
    return new


def _conv_keep_inputs(conv, keep):
    import torch

    new = _conv_like(conv, keep.numel(), conv.out_channels)
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, keep])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _bn_keep(bn, keep):
    import torch

    new = type(bn)(keep.numel(), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats,
                   device=(bn.weight if bn.affine else bn.running_mean).device)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _linear_keep_inputs(linear, keep, channels: int):
    """The Linear after flatten, reading only the kept channels' ``in_features / channels`` columns each."""
    import torch
    from torch import nn

    per_channel = linear.in_features // channels
    columns = (keep[:, None] * per_channel + torch.arange(per_channel)[None, :]).flatten()
    new = nn.Linear(columns.numel(), linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, columns])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new.train(linear.training)


__all__ = ["PRUNE_METHODS", "PruneReport", "prune_model"]
