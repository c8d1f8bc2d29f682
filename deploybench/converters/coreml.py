"""CoreML format: PyTorch -> ``model.mlpackage`` (ML Program) with coremltools.

The model is traced with ``torch.jit.trace`` (coremltools 9's mature PyTorch frontend; its
``torch.export`` frontend names outputs after internal ops and is still marked beta) and converted
with ``convert_to="mlprogram"``:

- fp32: ``compute_precision=FLOAT32``;
- fp16: ``compute_precision=FLOAT16`` (fp16 weights and compute);
- int8: WEIGHT-ONLY int8 (``coremltools.optimize.coreml.linear_quantize_weights``, per-channel
  symmetric) on the fp32 program: activations and compute stay float.

Inputs and outputs carry the spec's names; a dynamic axis becomes a ``ct.RangeDim`` (when an op
needs known sizes, the axis is fixed to the spec's default and ``metadata["fixed_axes"]`` says so). The package
is validated here (on Linux too): its inputs and outputs must match the spec by name and shape,
else a one-line error. Running it needs macOS (the coreml engine says so elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..spec import Artifact, DeployBenchError, ModelSpec, PrecisionNotSupported, TensorSpec
from ._paths import stays_inside

DEFAULT_TARGET = "iOS16"  # ML Program with quantized-weight ops (constexpr_affine_dequantize)
MAX_DYNAMIC_SIZE = 4096
# Smallest weight (elements) that int8 quantization touches; smaller ones stay float.
DEFAULT_WEIGHT_THRESHOLD = 512
_OUTPUTS_KEY = "deploybench.outputs"
_INPUTS_KEY = "deploybench.inputs"

_CT_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float32", "INT32": "int32", "INT8": "int8"}


def convert(spec: ModelSpec, out_dir: Path, precision: str = "fp32", **options: Any) -> Artifact:
    """Write ``model.mlpackage`` into ``out_dir``, validate it, and return its Artifact.

    Options: ``minimum_deployment_target`` (default ``"iOS16"``), ``weight_threshold`` (int8).
    """
    import coremltools as ct

    if precision not in ("fp32", "fp16", "int8"):
        raise PrecisionNotSupported(f"coreml has no {precision!r} conversion; use fp32, fp16 or int8")
    if spec.factory is None:
        raise DeployBenchError(f"{spec.source_path}: CoreML conversion starts from a PyTorch model, "
                               f"not a {spec.source_format} file")
    target_name = str(options.get("minimum_deployment_target", DEFAULT_TARGET))
    target = getattr(ct.target, target_name, None)
    if target is None:
        raise DeployBenchError(f"unknown CoreML minimum_deployment_target {target_name!r}; use e.g. iOS16, macOS13")
    outputs = _torch_output_specs(spec)
    metadata: dict[str, Any] = {}
    dynamic_names = sorted({name for t in spec.inputs for name in t.dynamic_axes.values()})
    try:
        mlmodel = _convert_torch(spec, precision, target, outputs, fixed={})
    except DeployBenchError as exc:
        if not dynamic_names:
            raise
        # Some ops (adaptive pooling to a size other than 1, ...) need every size known: fix the
        # dynamic axes to the spec's default sizes and record it, rather than fail the model.
        fixed = {name: int(spec.dims.get(name, 1)) for name in dynamic_names}
        mlmodel = _convert_torch(spec, precision, target, outputs, fixed=fixed)
        metadata.update({"fixed_axes": fixed, "dynamic_axes_error": str(exc)[:300]})
        outputs = tuple(TensorSpec(t.name, tuple(fixed.get(d, d) if isinstance(d, str) else d for d in t.shape),
                                   t.dtype) for t in outputs)
    inputs = tuple(TensorSpec(t.name, tuple(metadata.get("fixed_axes", {}).get(d, d) if isinstance(d, str) else d
                                            for d in t.shape), t.dtype, t.value_range) for t in spec.inputs)
    metadata.update({
        "frontend": "torch.jit.trace", "convert_to": "mlprogram", "minimum_deployment_target": target_name,
        "compute_precision": "float16" if precision == "fp16" else "float32",
        "layout": "NCHW (as in PyTorch)",
    })
    if precision == "int8":
        threshold = int(options.get("weight_threshold", DEFAULT_WEIGHT_THRESHOLD))
        mlmodel = _quantize_weights_int8(mlmodel, threshold)
        metadata["quantization"] = (f"weight-only int8 (linear_symmetric, per channel, weights of >= {threshold} "
                                    "elements); activations and compute stay float32")
    mlmodel.user_defined_metadata[_INPUTS_KEY] = json.dumps([t.to_dict() for t in inputs])
    mlmodel.user_defined_metadata[_OUTPUTS_KEY] = json.dumps([t.to_dict() for t in outputs])
    path = Path(out_dir) / "model.mlpackage"
    mlmodel.save(str(path))
    artifact = read_artifact(path)
    validate(artifact, spec, fixed_axes=metadata.get("fixed_axes"))
    artifact.precision = precision
    artifact.metadata.update(metadata)
    return artifact


def _torch_output_specs(spec: ModelSpec) -> tuple[TensorSpec, ...]:
    """Output specs from one forward pass; an axis equal to the batch of a dynamic-batch model is named."""
    import torch

    module = spec.build()
    with torch.inference_mode():
        out = module(*(torch.from_numpy(a) for a in spec.make_inputs(seed=0).values()))
    values = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
    if len(values) != len(spec.output_names):
        raise DeployBenchError(f"{spec.name} returns {len(values)} outputs but names {len(spec.output_names)} "
                               f"({', '.join(spec.output_names)}); fix output_names")
    batch_dynamic = any(t.dynamic_axes.get(0) == "batch" for t in spec.inputs)
    specs = []
    for name, value in zip(spec.output_names, values):
        shape: list[int | str] = list(value.shape)
        if batch_dynamic and shape and shape[0] == spec.dims.get("batch", 1):
            shape[0] = "batch"
        specs.append(TensorSpec(name, tuple(shape), "float32"))
    return tuple(specs)


def _convert_torch(spec: ModelSpec, precision: str, target, outputs: tuple[TensorSpec, ...], fixed: dict[str, int]):
    import coremltools as ct
    import numpy as np
    import torch

    module = spec.build()
    example = tuple(torch.from_numpy(a) for a in spec.make_inputs(seed=0).values())
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, example if len(example) > 1 else example[0])
    except Exception as exc:
        raise DeployBenchError(f"torch.jit.trace of {spec.name} failed ({type(exc).__name__}: {exc}); CoreML "
                               "conversion needs a traceable forward()".splitlines()[0][:400]) from exc
    inputs = []
    for tensor in spec.inputs:
        shape = tuple(d if isinstance(d, int) else int(fixed[d]) if d in fixed else
                      ct.RangeDim(1, MAX_DYNAMIC_SIZE, default=int(spec.dims.get(d, 1)), symbol=d)
                      for d in tensor.shape)
        dtype = np.float32 if tensor.dtype in ("float32", "bfloat16", "float16") else np.int32
        inputs.append(ct.TensorType(name=tensor.name, shape=ct.Shape(shape), dtype=dtype))
    compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    try:
        return ct.convert(traced, inputs=inputs, outputs=[ct.TensorType(name=t.name) for t in outputs],
                          convert_to="mlprogram", compute_precision=compute, minimum_deployment_target=target)
    except Exception as exc:
        raise DeployBenchError(f"coremltools cannot convert {spec.name}: {type(exc).__name__}: "
                               f"{exc}".splitlines()[0][:400]) from exc


def _quantize_weights_int8(mlmodel, weight_threshold: int):
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=weight_threshold))
    return linear_quantize_weights(mlmodel, config=config)


def validate(artifact: Artifact, spec: ModelSpec, fixed_axes: dict[str, int] | None = None) -> None:
    """Raise a one-line DeployBenchError if the package's inputs/outputs differ from the spec's
    (a dynamic axis listed in ``fixed_axes`` must have that size)."""
    fixed_axes = fixed_axes or {}
    got_inputs = {t.name: t for t in artifact.inputs}
    if list(got_inputs) != list(spec.input_names):
        raise DeployBenchError(f"{artifact.path}: CoreML inputs {list(got_inputs)} differ from {spec.name}'s "
                               f"{list(spec.input_names)}; convert again")
    for source in spec.inputs:
        want = TensorSpec(source.name, tuple(fixed_axes.get(d, d) if isinstance(d, str) else d
                                             for d in source.shape), source.dtype)
        got = got_inputs[want.name]
        fixed_ok = len(got.shape) == len(want.shape) and all(
            isinstance(w, str) == isinstance(g, str) and (isinstance(w, str) or w == g)
            for w, g in zip(want.shape, got.shape))
        if not fixed_ok:
            raise DeployBenchError(f"{artifact.path}: CoreML input {want.name!r} has shape {list(got.shape)}, "
                                   f"{spec.name} has {list(want.shape)}; convert again")
    got_outputs = [t.name for t in artifact.outputs]
    if got_outputs != list(spec.output_names):
        raise DeployBenchError(f"{artifact.path}: CoreML outputs {got_outputs} differ from {spec.name}'s "
                               f"{list(spec.output_names)}; convert again")


def read_artifact(path: Path) -> Artifact:
    """An Artifact for a .mlpackage / .mlmodel, read from its spec without loading it (works on Linux)."""
    path = Path(path)
    try:
        import coremltools as ct
    except ImportError as exc:
        raise DeployBenchError(f"reading {path.name} needs coremltools: pip install coremltools") from exc
    if path.is_dir():
        _check_package(path)
    try:
        model = ct.models.MLModel(str(path), skip_model_load=True)
        proto = model.get_spec()
    except Exception as exc:
        raise DeployBenchError(f"{path} is not a readable CoreML model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'}); re-export it") from None
    if proto.WhichOneof("Type") is None or not proto.description.output:  # an empty file parses as an empty spec
        raise DeployBenchError(f"{path} holds no CoreML model (no model type or no outputs); re-export it")
    user = dict(proto.description.metadata.userDefined)
    inputs = tuple(_feature_spec(f, i) for i, f in enumerate(proto.description.input))
    if _INPUTS_KEY in user:  # our own package: keep the spec's axis names and value ranges
        saved = {t["name"]: TensorSpec.from_dict(t) for t in json.loads(user[_INPUTS_KEY])}
        inputs = tuple(saved.get(t.name, t) for t in inputs)
    outputs = tuple(_feature_spec(f, i) for i, f in enumerate(proto.description.output))
    if _OUTPUTS_KEY in user:
        saved = {t["name"]: TensorSpec.from_dict(t) for t in json.loads(user[_OUTPUTS_KEY])}
        outputs = tuple(saved.get(t.name, t) for t in outputs)
    files = (path,)
    return Artifact(format="coreml", path=path, precision="fp32", inputs=inputs, outputs=outputs, files=files,
                    metadata={"model_type": proto.WhichOneof("Type"),
                              "specification_version": int(proto.specificationVersion),
                              "coremltools_source": user.get("com.github.apple.coremltools.source", "")})


def _check_package(path: Path) -> None:
    """Refuse an .mlpackage whose manifest items or symlinks lead outside it, before coremltools reads them."""
    try:
        items = json.loads((path / "Manifest.json").read_text())["itemInfoEntries"].values()
        locations = [str(item["path"]) for item in items]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # coremltools names what is wrong with the manifest itself
    for location in locations:
        if not stays_inside(path / "Data", location):
            raise DeployBenchError(f"{path}: manifest item path {location!r} leaves the package; refusing to read it: "
                                   "re-export the model or copy the whole .mlpackage")
    for item in path.rglob("*"):
        if item.is_symlink() and not stays_inside(path, item.relative_to(path)):
            raise DeployBenchError(f"{path}: {item.relative_to(path)} is a symlink leaving the package; refusing to "
                                   "read it: copy the whole .mlpackage without links")


def _feature_spec(feature, index: int) -> TensorSpec:
    array = feature.type.multiArrayType
    dtype = _CT_DTYPES.get(type(array).ArrayDataType.Name(array.dataType), "float32")
    if array.WhichOneof("ShapeFlexibility") == "shapeRange":
        shape = tuple(int(r.lowerBound) if r.lowerBound == r.upperBound else ("batch" if axis == 0 else f"dim{axis}")
                      for axis, r in enumerate(array.shapeRange.sizeRanges))
    else:
        shape = tuple(int(d) for d in array.shape)
    return TensorSpec(feature.name, shape, dtype)


__all__ = ["convert", "read_artifact", "validate"]
