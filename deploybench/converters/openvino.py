"""OpenVINO IR format (.xml + .bin): from a PyTorch model, a bring-your-own .onnx, or an existing IR.

Precisions:
  fp32  weights saved as fp32 (``compress_to_fp16=False``; ``ov.save_model`` would halve them).
  fp16  weights saved compressed to fp16: the artifact really is half the size; the CPU plugin
        decompresses them and runs at the engine's INFERENCE_PRECISION_HINT (f16 for an fp16 cell).
  bf16  the fp32 IR: bf16 is an execution mode (the runtime's precision hint), not a weight format.
  int8  NNCF post-training quantization (FakeQuantize ops, int8 weights) calibrated on the shared
        samples of ``calibration.calibration_inputs``.
  int8ac  accuracy-aware int8: the same, then NNCF's accuracy control keeps the layers that break the
        int8 tolerance in floating point (``openvino_accuracy``); ``ops_in_fp32`` names them.
The artifact's precision is also written into the IR's rt_info, so ``read_artifact`` knows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec import INT8_PRECISIONS, Artifact, DeployBenchError, ModelSpec, PrecisionNotSupported, TensorSpec
from .calibration import DEFAULT_SAMPLES, calibration_inputs

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8ac")
RT_INFO_PRECISION = ["deploybench", "precision"]
_OV_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32",
              "i8": "int8", "u8": "uint8", "boolean": "bool"}
_NUMPY_TO_OV = {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32", "int8": "i8", "uint8": "u8",
                "bool": "boolean", "bfloat16": "f32"}


def convert(spec: ModelSpec, out_dir: Path, precision: str, **options: Any) -> Artifact:
    """Write ``model.xml``/``model.bin`` of ``spec`` in ``precision`` into ``out_dir``; return the ``Artifact``.

    Options for int8: ``calibration_size`` (default 64), ``seed``, ``preset`` ("performance" or
    "mixed"), ``model_type`` ("transformer" for attention models), ``subset_size``; for int8ac also
    ``accuracy_criteria`` (default: the int8 tolerance), ``accuracy_margin``, ``validation_size``.
    """
    import openvino as ov

    if precision not in PRECISIONS:
        raise PrecisionNotSupported(f"OpenVINO IR has no {precision!r} artifact; choose from: {', '.join(PRECISIONS)}")
    if precision != "fp32" and spec.factory is not None:
        model, metadata = _cached_fp32_model(spec, Path(out_dir))
    else:
        model, metadata = _source_model(spec)
    if precision in INT8_PRECISIONS:
        model = _quantize(spec, model, metadata, accuracy_aware=precision == "int8ac", **options)
    compress = precision == "fp16"
    metadata.update({"compress_to_fp16": compress, "weights": "fp16" if compress else (
        "int8" if precision in INT8_PRECISIONS else "fp32")})
    if precision in ("fp16", "bf16"):
        metadata["note"] = f"{precision} runs through the engine's INFERENCE_PRECISION_HINT"
    model.set_rt_info(precision, RT_INFO_PRECISION)
    xml = Path(out_dir) / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=compress)
    inputs, outputs = model_tensor_specs(model, spec.inputs)
    return Artifact(format="openvino", path=xml, precision=precision, inputs=inputs, outputs=outputs,
                    files=(xml, xml.with_suffix(".bin")), metadata=metadata)


def _cached_fp32_model(spec: ModelSpec, out_dir: Path):
    """The fp32 IR of a PyTorch model, through the cache: out_dir is a fresh directory inside the
    conversion cache, so fp16, bf16 and int8 share one (slow) trace of the module."""
    from .cache import ConversionCache

    fp32 = ConversionCache(out_dir.parent).get_or_convert(spec, "openvino", "fp32", {}, convert)
    return _read(fp32.path), {"source": "torch", "traced_in": fp32.path.parent.name}


def _source_model(spec: ModelSpec):
    """(ov.Model in fp32, metadata) from the PyTorch module, the user's .onnx, or the user's IR."""
    import openvino as ov

    if spec.factory is None:
        path = Path(spec.source_path)
        if spec.source_format == "onnx":
            try:
                model = ov.convert_model(str(path))
            except Exception as exc:
                raise DeployBenchError(f"OpenVINO cannot convert {path}: {_reason(exc)}") from exc
            return model, {"source": "onnx"}
        if spec.source_format == "openvino":
            return _read(path), {"source": "openvino"}
        raise DeployBenchError(f"model {spec.name!r} is a {spec.source_format} file; OpenVINO converts a PyTorch "
                               "model, an .onnx file or an IR .xml")
    import torch

    module = spec.build()
    examples = tuple(torch.from_numpy(a) for a in spec.make_inputs(seed=0).values())
    shapes = [(ov.PartialShape([-1 if isinstance(d, str) else d for d in t.shape]),
               getattr(ov.Type, _NUMPY_TO_OV[t.dtype])) for t in spec.inputs]
    try:
        model = ov.convert_model(module, example_input=examples if len(examples) > 1 else examples[0], input=shapes)
    except Exception as exc:
        raise DeployBenchError(f"OpenVINO conversion of model {spec.name!r} failed: {type(exc).__name__}: {exc}"
                               .splitlines()[0]) from exc
    if len(model.outputs) != len(spec.output_names):
        raise DeployBenchError(f"model {spec.name!r} converted to {len(model.outputs)} OpenVINO outputs but names "
                               f"{len(spec.output_names)} ({', '.join(spec.output_names)}); fix its output_names")
    for port, name in zip(model.inputs, spec.input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, spec.output_names):
        port.get_tensor().set_names({name})
    return model, {"source": "torch"}


def _quantize(spec: ModelSpec, model, metadata: dict[str, Any], calibration_size: int = DEFAULT_SAMPLES,
              seed: int = 0, preset: str = "performance", model_type: str | None = None,
              subset_size: int | None = None, accuracy_aware: bool = False, **options: Any):
    import nncf

    if _stamped_precision(model) not in (None, "fp32"):
        raise DeployBenchError(f"model {spec.name!r} is already {_stamped_precision(model)}; int8 quantization "
                               "starts from an fp32 model")
    calibration = calibration_inputs(spec, calibration_size, seed=seed)
    if accuracy_aware:
        from .openvino_accuracy import quantize_with_accuracy_control

        quantized, notes = quantize_with_accuracy_control(spec, model, calibration, preset=preset,
                                                          model_type=model_type, subset_size=subset_size, **options)
        metadata.update(notes)
        return quantized
    names = [port.get_any_name() for port in model.inputs]
    dataset = nncf.Dataset(calibration.samples, lambda sample: {n: sample[n] for n in names})
    quantized = nncf.quantize(
        model, dataset, preset=getattr(nncf.QuantizationPreset, preset.upper()),
        subset_size=subset_size or len(calibration.samples), fast_bias_correction=True,
        model_type=nncf.ModelType.TRANSFORMER if model_type == "transformer" else None)
    metadata.update({"quantizer": f"nncf {nncf.__version__}", "preset": preset, "fast_bias_correction": True,
                     "model_type": model_type, **calibration.describe()})
    return quantized


# ---- reading -----------------------------------------------------------------------------------
def read_artifact(path: Path) -> Artifact:
    """An ``Artifact`` for an existing IR ``.xml`` (its ``.bin`` beside it): input/output TensorSpecs and the
    precision (stamped by deploybench, else int8 with FakeQuantize ops, fp16 with fp16 weights, else fp32)."""
    path = Path(path)
    model = _read(path)
    inputs, outputs = model_tensor_specs(model)
    precision = _stamped_precision(model) or guess_precision(model)
    bin_path = path.with_suffix(".bin")
    return Artifact(format="openvino", path=path, precision=precision, inputs=inputs, outputs=outputs,
                    files=(path, bin_path) if bin_path.exists() else (path,), metadata={"source": "openvino"})


def _read(path: Path):
    import openvino as ov

    if not path.is_file():
        raise DeployBenchError(f"OpenVINO IR {path} does not exist")
    bin_path = path.with_suffix(".bin")
    with path.open("rb") as handle:
        head = handle.read(1 << 20).decode("utf-8", errors="replace")
    if "<net" not in head:
        raise DeployBenchError(f"{path} is not an OpenVINO IR .xml (no <net> element); re-export it with "
                               "openvino.save_model")
    if "<!DOCTYPE" in head or "<!ENTITY" in head:  # an IR never declares entities; a billion-laughs file does
        raise DeployBenchError(f"{path} declares a DOCTYPE or XML entities, which no OpenVINO IR has; refusing it: "
                               "re-export it with openvino.save_model")
    if not bin_path.exists() and 'element_type=' in head and '"Const"' in head:
        raise DeployBenchError(f"{path} has no weights file {bin_path.name} beside it; copy the .bin next to the .xml")
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:
        raise DeployBenchError(f"{path} is not a readable OpenVINO IR ({_reason(exc)}); re-export it or check the "
                               ".xml and .bin are complete") from exc


def _reason(exc: Exception) -> str:
    """OpenVINO's own words: its messages open with the C++ file that threw and end with what is wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else 'no message'}"


def _stamped_precision(model) -> str | None:
    try:
        value = str(model.get_rt_info(RT_INFO_PRECISION))
    except Exception:  # not stamped by deploybench
        return None
    return value if value in PRECISIONS else None


def guess_precision(model) -> str:
    """int8 if the graph has FakeQuantize (or mostly int8 weights), fp16 if its weights are mostly fp16."""
    import math

    elements: dict[str, int] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return "int8"
        if kind == "Constant":
            element = op.get_output_element_type(0).get_type_name()
            elements[element] = elements.get(element, 0) + math.prod(op.get_output_shape(0))
    if elements.get("i8", 0) + elements.get("u8", 0) > elements.get("f32", 0) + elements.get("f16", 0):
        return "int8"
    if elements.get("f16", 0) > elements.get("f32", 0):
        return "fp16"
    return "fp32"


def model_tensor_specs(model, known_inputs: tuple[TensorSpec, ...] = ()
                       ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of an ``ov.Model`` as TensorSpecs.

    The IR keeps no axis names: inputs take theirs from ``known_inputs`` (the model's spec) when
    given; any other dynamic leading axis is the batch (named as in the known inputs, else
    ``batch``), and other dynamic axes are ``<tensor>_<axis>``.
    """
    known = {t.name: t for t in known_inputs}
    leading = next((t.shape[0] for t in known_inputs if t.shape and isinstance(t.shape[0], str)), "batch")

    def spec_of(port, use_known: bool, fallback: str) -> TensorSpec:
        # A tensor without a name (an IR written by hand or by another tool) is known by its position.
        name = port.get_any_name() if port.get_names() else fallback
        if use_known and name in known:
            return known[name]
        dtype = _OV_DTYPES.get(port.get_element_type().get_type_name(), "float32")
        shape: list[int | str] = []
        partial = port.get_partial_shape()
        if partial.rank.is_dynamic:
            raise DeployBenchError(f"OpenVINO tensor {name!r} has a dynamic rank; deploybench needs a known rank")
        for axis, dim in enumerate(partial):
            if dim.is_static:
                shape.append(dim.get_length())
            else:
                shape.append(leading if axis == 0 else f"{name}_{axis}")
        return TensorSpec(name, tuple(shape), dtype)

    return (tuple(spec_of(p, True, f"input_{i}") for i, p in enumerate(model.inputs)),
            tuple(spec_of(p, False, f"output_{i}") for i, p in enumerate(model.outputs)))


__all__ = ["PRECISIONS", "convert", "guess_precision", "model_tensor_specs", "read_artifact"]
