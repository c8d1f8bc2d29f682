"""TFLite (LiteRT) format: PyTorch -> .tflite with litert-torch, quantized with ai-edge-quantizer.

- fp32: ``litert_torch.convert`` (torch.export underneath). The PyTorch NCHW signature is kept at
  the boundary (a TRANSPOSE to NHWC sits inside the graph), recorded as ``metadata["layout"]``.
- fp16: fp16 weights (ai-edge-quantizer ``float_casting``, 16 bits); inputs, outputs and compute
  stay float32.
- int8: full-integer static quantization (ai-edge-quantizer ``static_wi8_ai8``) calibrated on the
  model's real calibration samples; inputs and outputs become int8 with a scale / zero point,
  which the tflite engine applies so callers still pass and get float32.

fp16 and int8 start from the fp32 artifact (``deploy_model(spec, "tflite")``), so the slow
litert-torch export happens once per model.

A dynamic axis that litert-torch cannot keep (its JAX lowering needs concrete shapes for many
ops) is fixed to the spec's default size, and ``metadata["fixed_axes"]`` says so.

A bring-your-own ``.onnx`` is converted with onnx2tf (the optional ``[tensorflow]`` extra).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import Artifact, DeployBenchError, ModelSpec, PrecisionNotSupported, TensorSpec

SIGNATURE_KEY = "serving_default"
CALIBRATION_SAMPLES = 64

_NUMPY_DTYPES = {"float32": "float32", "float16": "float16", "int8": "int8", "uint8": "uint8",
                 "int32": "int32", "int64": "int64", "bool": "bool", "int16": "int32"}


def convert(spec: ModelSpec, out_dir: Path, precision: str = "fp32", **options: Any) -> Artifact:
    """Write ``model.tflite`` into ``out_dir`` and return its Artifact.

    Options: ``dynamic_batch`` (default True: try to keep dynamic axes, fix them when litert-torch
    cannot), ``calibration_samples`` (int8, default 64), ``show_progress`` (litert-torch's log).
    """
    out_dir = Path(out_dir)
    if precision not in ("fp32", "fp16", "int8"):
        raise PrecisionNotSupported(f"tflite has no {precision!r} conversion; use fp32, fp16 or int8")
    if spec.factory is None:
        if spec.source_format == "onnx":
            return _convert_from_onnx(spec, out_dir, precision, **options)
        raise DeployBenchError(f"cannot convert a {spec.source_format} file to tflite; start from PyTorch or .onnx")
    if precision == "fp32":
        return _convert_from_torch(spec, out_dir, dynamic_batch=options.get("dynamic_batch", True),
                                   show_progress=bool(options.get("show_progress", False)))
    from . import deploy_model

    float_options = {k: v for k, v in options.items() if k == "dynamic_batch"}
    # The fp32 artifact comes from the same cache as this conversion (out_dir is a fresh sibling
    # entry inside the cache root), so the slow litert-torch export runs once per model.
    source = deploy_model(spec, "tflite", output_dir=out_dir.parent, precision="fp32", **float_options)
    if precision == "fp16":
        return _quantize_fp16(spec, source, out_dir)
    return _quantize_int8(spec, source, out_dir, int(options.get("calibration_samples", CALIBRATION_SAMPLES)))


# ---- PyTorch -> fp32 ---------------------------------------------------------------------------
def _convert_from_torch(spec: ModelSpec, out_dir: Path, dynamic_batch: bool = True,
                        show_progress: bool = False) -> Artifact:
    import torch

    try:
        import litert_torch
    except ImportError as exc:  # tox -e core: one line that says what to install, never a traceback
        raise DeployBenchError(f"converting a PyTorch model to tflite needs litert-torch, which is not importable "
                               f"here ({type(exc).__name__}: {exc}); pip install 'deploybench[tflite]'") from None

    module = spec.build()
    # litert-torch prints a progress tree on stdout for every export; a benchmark run would drown in it.
    shown = litert_torch.config.show_progress
    litert_torch.config.show_progress = show_progress
    try:
        return _export(litert_torch, torch, module, spec, out_dir, dynamic_batch)
    finally:
        litert_torch.config.show_progress = shown


def _export(litert_torch, torch, module, spec: ModelSpec, out_dir: Path, dynamic_batch: bool) -> Artifact:
    dynamic_names = sorted({name for t in spec.inputs for name in t.dynamic_axes.values()})
    # Trace with size 2 on dynamic axes: torch.export specializes a size-1 axis to a constant.
    trace_dims = {**spec.dims, **{name: max(2, spec.dims.get(name, 1)) for name in dynamic_names}}
    metadata: dict[str, Any] = {"layout": "NCHW kept at the boundary (as in PyTorch)",
                                "converter": "litert_torch", "signature": SIGNATURE_KEY}
    edge_model = None
    if dynamic_names and dynamic_batch:
        dims = {name: torch.export.Dim(_dim_name(name), min=1, max=4096) for name in dynamic_names}
        dynamic_shapes = tuple({axis: dims[name] for axis, name in t.dynamic_axes.items()} or None
                               for t in spec.inputs)
        sample = _sample_args(spec, trace_dims)
        try:
            edge_model = litert_torch.convert(module, sample, dynamic_shapes=dynamic_shapes)
        except Exception as exc:  # litert-torch's JAX lowering rejects symbolic shapes for many ops
            metadata["dynamic_axes_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if edge_model is None:
        fixed = {name: int(spec.dims.get(name, 1)) for name in dynamic_names}
        if fixed:
            metadata["fixed_axes"] = fixed
        try:
            edge_model = litert_torch.convert(module, _sample_args(spec, spec.dims))
        except Exception as exc:
            raise DeployBenchError(f"litert-torch cannot convert {spec.name} to tflite: "
                                   f"{type(exc).__name__}: {exc}".splitlines()[0][:400]) from exc
    path = out_dir / "model.tflite"
    edge_model.export(str(path))
    artifact = read_artifact(path)
    return _name_like_spec(spec, artifact, "fp32", metadata)


def _dim_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name) or "dim"


def _sample_args(spec: ModelSpec, dims: dict[str, int]):
    import torch

    return tuple(torch.from_numpy(array) for array in spec.make_inputs(seed=0, dims=dims).values())


def _name_like_spec(spec: ModelSpec, artifact: Artifact, precision: str, metadata: dict[str, Any]) -> Artifact:
    """The artifact with the spec's input/output names; the TFLite signature names go to metadata."""
    if len(artifact.inputs) != len(spec.inputs) or len(artifact.outputs) != len(spec.output_names):
        raise DeployBenchError(
            f"{artifact.path.name} has {len(artifact.inputs)} inputs / {len(artifact.outputs)} outputs; "
            f"{spec.name} has {len(spec.inputs)} / {len(spec.output_names)}: the model's forward() must take "
            "its inputs positionally and return a tensor or a flat tuple")
    fixed = metadata.get("fixed_axes", {})
    inputs = []
    for source, tensor in zip(spec.inputs, artifact.inputs):
        # Keep the spec's axis names where the file kept them dynamic; fixed axes become ints.
        shape = tuple(d if isinstance(d, int) or d not in fixed else int(fixed[d]) for d in source.shape)
        inputs.append(TensorSpec(source.name, shape, source.dtype, source.value_range))
    outputs = [TensorSpec(name, tensor.shape, "float32") for name, tensor in zip(spec.output_names, artifact.outputs)]
    metadata = {**artifact.metadata, **metadata,
                "input_names": {s.name: t.name for s, t in zip(spec.inputs, artifact.inputs)},
                "output_names": {n: t.name for n, t in zip(spec.output_names, artifact.outputs)}}
    return Artifact(format="tflite", path=artifact.path, precision=precision, inputs=tuple(inputs),
                    outputs=tuple(outputs), files=artifact.files, metadata=metadata)


# ---- fp32 -> fp16 / int8 -----------------------------------------------------------------------
def _quantize_fp16(spec: ModelSpec, source: Artifact, out_dir: Path) -> Artifact:
    from ai_edge_quantizer import qtyping, quantizer

    quant = quantizer.Quantizer(str(source.path))
    quant.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                 algorithm_key="float_casting")
    result = quant.quantize(enable_progress_report=False)
    path = out_dir / "model.tflite"
    path.write_bytes(bytes(result.quantized_model))
    return _derived_artifact(source, path, "fp16", {"quantization": "fp16 weights (ai-edge-quantizer float_casting), "
                                                                    "float32 inputs, outputs and compute"})


def _quantize_int8(spec: ModelSpec, source: Artifact, out_dir: Path, samples: int) -> Artifact:
    from ai_edge_quantizer import quantizer, recipe

    feeds, origin = _calibration_feeds(spec, samples)
    input_names = source.metadata.get("input_names") or {t.name: t.name for t in source.inputs}
    fixed_shapes = {t.name: t.concrete_shape(source.metadata.get("fixed_axes", {})) for t in source.inputs}
    calibration = []
    for feed in feeds:
        sample = {}
        for name, array in feed.items():
            array = np.asarray(array, dtype=np.float32)
            if name in fixed_shapes and array.shape != fixed_shapes[name] and array.ndim == len(fixed_shapes[name]):
                # The file has a fixed batch axis: a larger calibration batch is cut to its size.
                array = array[: fixed_shapes[name][0]]
            sample[input_names.get(name, name)] = array
        calibration.append(sample)
    quant = quantizer.Quantizer(str(source.path), recipe.static_wi8_ai8())
    try:
        ranges = quant.calibrate({SIGNATURE_KEY: calibration}, num_threads=1)
        result = quant.quantize(ranges, enable_progress_report=False)
    except Exception as exc:
        raise DeployBenchError(f"int8 quantization of {spec.name} for tflite failed: "
                               f"{type(exc).__name__}: {exc}".splitlines()[0][:400]) from exc
    path = out_dir / "model.tflite"
    path.write_bytes(bytes(result.quantized_model))
    quantized = read_artifact(path)
    return _derived_artifact(source, path, "int8", {
        "quantization": "full-integer static int8 (ai-edge-quantizer static_wi8_ai8): int8 weights, "
                        "activations, inputs and outputs",
        "calibration": origin, "calibration_samples": len(calibration),
        "io_quantization": quantized.metadata.get("io_quantization", {}),
    })


def _derived_artifact(source: Artifact, path: Path, precision: str, extra: dict[str, Any]) -> Artifact:
    metadata = {k: v for k, v in source.metadata.items() if k not in ("tools", "io_quantization")}
    metadata.update(extra)
    return Artifact(format="tflite", path=path, precision=precision, inputs=source.inputs, outputs=source.outputs,
                    metadata=metadata)


def _calibration_feeds(spec: ModelSpec, samples: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """The calibration samples every int8 converter shares, and where they came from."""
    from .calibration import calibration_inputs

    calibration = calibration_inputs(spec, samples, 0)
    return list(calibration.samples), calibration.source


# ---- bring-your-own .onnx -> tflite (onnx2tf) ---------------------------------------------------
def _convert_from_onnx(spec: ModelSpec, out_dir: Path, precision: str, **options: Any) -> Artifact:
    try:
        import onnx2tf
    except ImportError as exc:
        raise DeployBenchError("converting .onnx to tflite needs onnx2tf and TensorFlow: "
                               "pip install deploybench[tensorflow]") from exc
    work = out_dir / "onnx2tf"
    work.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {
        "input_onnx_file_path": str(spec.source_path),
        "output_folder_path": str(work),
        # Keep the ONNX NCHW layout at the boundary so the same inputs feed every backend.
        "keep_ncw_or_nchw_or_ncdhw_input_names": list(spec.input_names),
        "copy_onnx_input_output_names_to_tflite": True,
        "non_verbose": True,
    }
    fixed = {name: int(spec.dims.get(name, 1)) for t in spec.inputs for name in t.dynamic_axes.values()}
    if fixed:
        kwargs["batch_size"] = int(next(iter(fixed.values())))
    if precision == "int8":
        # onnx2tf would download its MS-COCO sample set; give it local calibration arrays instead:
        # [[input name, npy path, mean, std], ...] with mean 0 / std 1 as the data is already normalized,
        # in the input's own layout (NCHW is kept at the boundary above).
        feeds, origin = _calibration_feeds(spec, int(options.get("calibration_samples", CALIBRATION_SAMPLES)))
        entries = []
        for name in spec.input_names:
            data = np.concatenate([np.asarray(f[name], np.float32) for f in feeds], axis=0)
            npy = work / f"calibration_{name}.npy"
            np.save(npy, data)
            entries.append([name, str(npy), 0.0, 1.0])
        kwargs["output_integer_quantized_tflite"] = True
        kwargs["custom_input_op_name_np_data_path"] = entries
        kwargs["input_output_quant_dtype"] = "int8"
    try:
        onnx2tf.convert(**kwargs)
    except Exception as exc:
        raise DeployBenchError(f"onnx2tf could not convert {spec.source_path}: "
                               f"{type(exc).__name__}: {exc}".splitlines()[0][:400]) from exc
    wanted = {"fp32": "_float32.tflite", "fp16": "_float16.tflite", "int8": "_full_integer_quant.tflite"}[precision]
    produced = sorted(work.glob(f"*{wanted}"))
    if not produced:
        raise DeployBenchError(f"onnx2tf wrote no *{wanted} for {spec.source_path}; check its log in {work}")
    path = out_dir / "model.tflite"
    shutil.copyfile(produced[0], path)
    shutil.rmtree(work, ignore_errors=True)
    artifact = read_artifact(path)
    metadata = {"converter": "onnx2tf", "layout": "NCHW kept at the boundary (keep_ncw_or_nchw_or_ncdhw_input_names)"}
    if fixed:
        metadata["fixed_axes"] = fixed
    return _name_like_spec(spec, artifact, precision, metadata)


# ---- reading a .tflite -------------------------------------------------------------------------
def read_artifact(path: Path) -> Artifact:
    """An Artifact for a .tflite file: inputs/outputs (a -1 in shape_signature is a dynamic axis)
    from its serving signature, or the graph's inputs/outputs when it has none."""
    path = Path(path)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise DeployBenchError(f"reading {path.name} needs ai-edge-litert: pip install ai-edge-litert") from exc
    try:
        interpreter = Interpreter(model_path=str(path))
    except Exception as exc:
        raise DeployBenchError(f"{path} is not a readable .tflite model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'}); re-export it") from None
    inputs, outputs = _signature_details(interpreter)
    io_quantization = {}
    for name, details in (*inputs.items(), *outputs.items()):
        scale, zero_point = details["quantization"]
        if scale:
            io_quantization[name] = [float(scale), int(zero_point)]
    return Artifact(format="tflite", path=path, precision="int8" if io_quantization else "fp32",
                    inputs=tuple(_tensor_spec(name, d) for name, d in inputs.items()),
                    outputs=tuple(_tensor_spec(name, d) for name, d in outputs.items()),
                    metadata={"signature": _signature_key(interpreter),
                              "input_names": {name: name for name in inputs},
                              "output_names": {name: name for name in outputs},
                              "io_quantization": io_quantization})


def _signature_key(interpreter) -> str | None:
    signatures = interpreter.get_signature_list()
    if not signatures:
        return None
    return SIGNATURE_KEY if SIGNATURE_KEY in signatures else next(iter(signatures))


def _signature_details(interpreter) -> tuple[dict[str, dict], dict[str, dict]]:
    """({signature input name: details}, {signature output name: details}), outputs in numeric order."""
    key = _signature_key(interpreter)
    if key is None:
        return ({d["name"]: d for d in interpreter.get_input_details()},
                {d["name"]: d for d in interpreter.get_output_details()})
    runner = interpreter.get_signature_runner(key)
    inputs = runner.get_input_details()
    outputs = runner.get_output_details()
    return dict(inputs), {name: outputs[name] for name in sorted(outputs, key=_natural_key)}


def _natural_key(name: str):
    """'output_10' after 'output_2'."""
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return head, int(tail) if tail else -1


def _tensor_spec(name: str, details: dict) -> TensorSpec:
    signature = details.get("shape_signature")
    shape_values = list(signature if signature is not None and len(signature) else details["shape"])
    shape = tuple("batch" if (d == -1 and i == 0) else f"dim{i}" if d == -1 else int(d)
                  for i, d in enumerate(shape_values))
    dtype = np.dtype(details["dtype"]).name
    if details["quantization"][0]:
        dtype = "float32"  # the engine quantizes / dequantizes at the boundary
    return TensorSpec(name, shape, _NUMPY_DTYPES.get(dtype, "float32"))


__all__ = ["convert", "read_artifact"]
