"""ONNX format: export a PyTorch model, and make its fp16 and int8 (QDQ) variants.

``convert`` writes one self-contained ``model.onnx`` (weights inlined) into ``out_dir``.
fp16 and int8 start from the fp32 graph: for a PyTorch model that graph is the cached fp32
export (a sibling entry of ``out_dir`` in the conversion cache), for a bring-your-own ``.onnx``
the file itself; int8 and int8ac (accuracy-aware int8) are made in ``onnx_int8``. ``bf16`` is the
fp32 graph labelled bf16: bf16 execution is the backend's precision hint (OpenVINO), not a graph
rewrite; ONNX Runtime has no bf16 mode on CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import Artifact, DeployBenchError, ModelSpec, PrecisionNotSupported, TensorSpec
from .onnx_external import data_files_of, external_tensors
from .onnx_int8 import CALIBRATION_METHODS

DEFAULT_OPSET = 18
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8ac")
# Kept in fp32 by the fp16 pass: reductions and normalisations lose range or precision in fp16,
# and Resize / NMS-like ops have no fp16 kernel on ONNX Runtime's CPU provider.
FP16_SENSITIVE_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "Softmax", "LogSoftmax", "Resize",
                      "InstanceNormalization", "GroupNormalization", "Pow", "Sqrt", "Exp", "Erf")
PRECISION_KEY = "deploybench.precision"

_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8",
                9: "bool"}


def convert(spec: ModelSpec, out_dir: Path, precision: str, opset: int | None = None, **options: Any) -> Artifact:
    """Write ``model.onnx`` of ``spec`` in ``precision`` into ``out_dir`` and return its ``Artifact``.

    Options: ``opset`` (default 18); for int8 ``calibration_size`` (default 64),
    ``calibration_method`` (MinMax, Entropy, Percentile), ``activation_type`` (QUInt8 or QInt8),
    ``per_channel`` (default True); for int8ac also ``accuracy_criteria`` (default: the int8 tolerance),
    ``accuracy_margin``, ``validation_size`` (``onnx_int8``); for fp16 ``fp32_ops`` (op types kept in fp32).
    """
    if precision not in PRECISIONS:
        raise PrecisionNotSupported(f"ONNX has no {precision!r} artifact; choose from: {', '.join(PRECISIONS)}")
    out_dir = Path(out_dir)
    target = out_dir / "model.onnx"
    if precision == "fp32" and spec.factory is not None:
        return export_torch(spec, target, opset=opset)
    source = _fp32_source(spec, out_dir, opset)
    if precision in ("fp32", "bf16"):
        shutil.copyfile(source.path, target)
        metadata = {**source.metadata, "source": "onnx" if spec.factory is None else "torch"}
        if precision == "bf16":
            metadata["note"] = "fp32 graph: bf16 runs through the backend's inference precision hint"
        _stamp_precision(target, precision)
        return _artifact(target, precision, metadata)
    if precision == "fp16":
        return _to_fp16(source, target, options.get("fp32_ops", FP16_SENSITIVE_OPS))
    return _to_int8(spec, source, target, precision, **options)


# ---- export ------------------------------------------------------------------------------------
def export_torch(spec: ModelSpec, target: Path, opset: int | None = None) -> Artifact:
    """Export ``spec``'s PyTorch module to ``target`` (fp32, dynamic axes named as in the TensorSpecs)
    with the dynamo exporter, falling back to the TorchScript exporter; returns the checked ``Artifact``."""
    import torch

    module = spec.build()
    # torch.export specializes an axis whose example size is 0 or 1: trace dynamic axes at >= 2.
    trace_dims = {name: max(2, int(spec.dims.get(name, 1))) for t in spec.inputs for name in t.dynamic_axes.values()}
    examples = tuple(torch.from_numpy(a) for a in spec.make_inputs(seed=0, dims=trace_dims).values())
    opset = opset or DEFAULT_OPSET
    metadata: dict[str, Any] = {"source": "torch", "opset_requested": opset}
    try:
        _export_dynamo(module, examples, spec, target, opset)
        metadata["exporter"] = "dynamo"
    except Exception as exc:  # the dynamo exporter rejects some models the TorchScript one takes
        metadata["exporter"] = "torchscript"
        metadata["dynamo_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        target.unlink(missing_ok=True)
        try:
            _export_torchscript(module, examples, spec, target, opset)
        except Exception as exc2:
            raise DeployBenchError(f"ONNX export of model {spec.name!r} failed with both exporters "
                                   f"({metadata['dynamo_error']}; torchscript: "
                                   f"{type(exc2).__name__}: {exc2})".splitlines()[0]) from exc2
    _inline_external_data(target)
    metadata.update(_check(target))
    _stamp_precision(target, "fp32", drop_trace=True)
    return _artifact(target, "fp32", metadata)


def _export_dynamo(module, examples, spec: ModelSpec, target: Path, opset: int) -> None:
    import torch

    dims: dict[str, Any] = {}
    dynamic_shapes = tuple(
        {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in t.dynamic_axes.items()} or None
        for t in spec.inputs)
    torch.onnx.export(module, examples, str(target), dynamo=True, opset_version=opset,
                      input_names=list(spec.input_names), output_names=list(spec.output_names),
                      dynamic_shapes=dynamic_shapes if any(dynamic_shapes) else None,
                      external_data=False, verbose=False)


def _export_torchscript(module, examples, spec: ModelSpec, target: Path, opset: int) -> None:
    import torch

    dynamic_axes = {t.name: t.dynamic_axes for t in spec.inputs if t.dynamic_axes}
    batch_axes = {axis: name for t in spec.inputs for axis, name in t.dynamic_axes.items() if axis == 0}
    for name in spec.output_names:  # outputs follow the inputs' leading (batch) axis
        if batch_axes:
            dynamic_axes[name] = dict(batch_axes)
    torch.onnx.export(module, examples, str(target), dynamo=False, opset_version=opset,
                      input_names=list(spec.input_names), output_names=list(spec.output_names),
                      dynamic_axes=dynamic_axes or None)


def _inline_external_data(target: Path) -> None:
    """Small models live in one file: pull any external tensor data back into the .onnx."""
    import onnx

    model = onnx.load(str(target), load_external_data=False)
    locations = _external_locations(model)
    if not locations:
        return
    model = onnx.load(str(target), load_external_data=True)
    if model.ByteSize() < 1_800_000_000:  # protobuf's 2 GB ceiling
        for tensor in model.graph.initializer:
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
        onnx.save(model, str(target))
        for name in locations:
            (target.parent / name).unlink(missing_ok=True)


def _external_locations(model) -> list[str]:
    return sorted({entry.value for t in external_tensors(model) for entry in t.external_data
                   if entry.key == "location"})


def _check(path: Path) -> dict[str, Any]:
    """Check the graph with onnx (full check where it passes) and that ONNX Runtime loads it."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    info: dict[str, Any] = {"opset": _opset(model)}
    try:
        onnx.checker.check_model(model, full_check=True)
        info["full_check"] = True
    except Exception as exc:  # full_check also runs strict shape inference, which some valid graphs fail
        onnx.checker.check_model(model)
        info["full_check"] = False
        info["full_check_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise DeployBenchError(f"ONNX Runtime cannot load the exported {path}: "
                               f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return info


def _fp32_source(spec: ModelSpec, out_dir: Path, opset: int | None) -> Artifact:
    """The fp32 graph a precision pass starts from: the user's file, or the cached fp32 export."""
    if spec.factory is None:
        if spec.source_format != "onnx":
            raise DeployBenchError(f"model {spec.name!r} is a {spec.source_format} file; only a PyTorch model or an "
                                   ".onnx file converts to ONNX")
        return read_artifact(Path(spec.source_path))
    from .cache import ConversionCache

    # out_dir is a fresh directory inside the conversion cache: the fp32 export lives beside it,
    # so fp16, bf16 and int8 of the same model share one export.
    options = {"opset": opset} if opset else {}
    return ConversionCache(out_dir.parent).get_or_convert(spec, "onnx", "fp32", options, convert)


# ---- fp16 --------------------------------------------------------------------------------------
def _to_fp16(source: Artifact, target: Path, fp32_ops) -> Artifact:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source.path))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    present = {node.op_type for node in model.graph.node}
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    _sort_nodes(half.graph)  # the pass appends its input casts last; the checker wants graph order
    onnx.save(half, str(target))
    metadata = {"source_precision": source.precision, "fp32_ops": sorted(present & set(blocked)),
                "keep_io_types": True, "opset": _opset(half)}
    metadata.update(_check(target))
    _stamp_precision(target, "fp16")
    return _artifact(target, "fp16", metadata)


def _sort_nodes(graph) -> None:
    """Reorder ``graph.node`` topologically (stable: ready nodes keep their original order)."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):  # a cycle or a missing producer: leave it for the checker to name
            ordered.extend(remaining)
            break
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)


# ---- int8 --------------------------------------------------------------------------------------
def _to_int8(spec: ModelSpec, source: Artifact, target: Path, precision: str, **options: Any) -> Artifact:
    from .onnx_int8 import to_int8

    target, metadata = to_int8(spec, source, target, precision=precision, **options)
    metadata.update(_check(target))
    _stamp_precision(target, precision)
    return _artifact(target, precision, metadata)


# ---- reading -----------------------------------------------------------------------------------
def read_artifact(path: Path) -> Artifact:
    """An ``Artifact`` for an existing ``.onnx`` file: its input/output TensorSpecs, opset and precision
    (stamped by deploybench, else guessed: int8 with QuantizeLinear nodes, fp16 if most weights are fp16).
    Without the onnx package (a device with only a runtime) the file's header is read from its bytes and
    the runtime that loads it is its checker."""
    try:
        import onnx
    except ImportError:
        return _read_without_onnx(Path(path))

    path = Path(path)
    model = _parse(path)
    data_files = data_files_of(model, path)
    try:
        # Given the path, the checker looks for external data beside the model; given the proto, in the cwd.
        onnx.checker.check_model(str(path) if data_files else model)
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if not model.graph.output:
        raise DeployBenchError(f"{path} has no graph outputs: not a usable ONNX model; re-export it")
    props = {p.key: p.value for p in model.metadata_props}
    precision = props.get(PRECISION_KEY) or guess_precision(model)
    return _artifact(path, precision, {"opset": _opset(model)}, model=model, files=(path, *data_files))


def _read_without_onnx(path: Path) -> Artifact:
    from .onnx_wire import load_header

    if not path.is_file():
        raise DeployBenchError(f"ONNX model {path} does not exist or is not a file")
    model = load_header(path)
    if not model.graph.output:
        raise DeployBenchError(f"{path} has no graph outputs: not a usable ONNX model; re-export it")
    props = {p.key: p.value for p in model.metadata_props}
    precision = props.get(PRECISION_KEY) or guess_precision(model)
    return _artifact(path, precision, {"opset": _opset(model), "checked": "not here (no onnx package)"},
                     model=model, files=(path,))


def external_data_files(path: Path) -> list[Path]:
    """The files an ``.onnx`` keeps tensor data in, each checked to lie in the model's folder and be complete."""
    try:
        import onnx  # noqa: F401
    except ImportError:  # only onnx checks external data: a file with any is refused, one without has none
        from .onnx_wire import load_header

        load_header(Path(path))
        return []
    return data_files_of(_parse(Path(path)), Path(path))


def _parse(path: Path):
    """The graph of ``path`` without its external data, which ``data_files_of`` checks first."""
    import onnx

    if not path.is_file():
        raise DeployBenchError(f"ONNX model {path} does not exist or is not a file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> DeployBenchError:
    return DeployBenchError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}".splitlines()[0]
                            + "); re-export it or check the file is complete")


def guess_precision(model) -> str:
    """int8 if the graph quantizes (QuantizeLinear / QLinear* / MatMulInteger), fp16 if most weight bytes are fp16."""
    ops = {node.op_type for node in model.graph.node}
    if ops & {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"} or any(
            op.startswith("QLinear") for op in ops):
        return "int8"
    sizes: dict[int, int] = {}
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        sizes[tensor.data_type] = sizes.get(tensor.data_type, 0) + count
    if sizes.get(10, 0) > sizes.get(1, 0):
        return "fp16"
    return "fp32"


def _artifact(path: Path, precision: str, metadata: dict[str, Any], model=None,
              files: tuple[Path, ...] | None = None) -> Artifact:
    if model is None:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    inputs, outputs = graph_tensor_specs(model, path)
    return Artifact(format="onnx", path=path, precision=precision, inputs=inputs, outputs=outputs,
                    files=files or (path,), metadata=metadata)


def graph_tensor_specs(model, path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of an ONNX graph as TensorSpecs; a dim_param is a named dynamic axis."""
    initializers = {t.name for t in model.graph.initializer}

    def spec_of(value) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise DeployBenchError(f"{path}: tensor {value.name!r} has ONNX element type {tensor_type.elem_type}, "
                                   "which deploybench does not run; export it as float32/float16/int64/int32/uint8")
        shape: list[int | str] = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            else:
                shape.append(dim.dim_param or f"{value.name}_{axis}")
        return TensorSpec(value.name, tuple(shape), dtype)

    inputs = tuple(spec_of(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(spec_of(v) for v in model.graph.output)
    return inputs, outputs


def _opset(model) -> int | None:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _stamp_precision(path: Path, precision: str, drop_trace: bool = False) -> None:
    """Record the artifact's precision inside the file, so a reader does not have to guess it; with
    ``drop_trace``, drop the exporter's trace of where each node came from (``_drop_trace``)."""
    import onnx

    model = onnx.load(str(path))
    if drop_trace:
        _drop_trace(model)
    kept = [p for p in model.metadata_props if p.key != PRECISION_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=PRECISION_KEY, value=precision)
    onnx.save(model, str(path))


def _is_trace_key(key: str) -> bool:
    return key == "namespace" or key.startswith("pkg.torch.onnx.")


def _drop_trace(model) -> None:
    """Drop the node metadata the dynamo exporter writes: the exporting process's module names and
    source paths and lines. With it, the same network exported from another folder or from a file
    with one more comment has other bytes (the gate could not see that nothing changed), and a
    deployed file carries the paths of the machine that built it."""
    def nodes(graph):
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    yield from nodes(attribute.g)
                for subgraph in attribute.graphs:
                    yield from nodes(subgraph)

    every = [*nodes(model.graph), *(node for function in model.functions for node in function.node)]
    for node in every:
        kept = [p for p in node.metadata_props if not _is_trace_key(p.key)]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


__all__ = ["CALIBRATION_METHODS", "DEFAULT_OPSET", "FP16_SENSITIVE_OPS", "convert", "export_torch",
           "external_data_files", "graph_tensor_specs", "guess_precision", "read_artifact"]
