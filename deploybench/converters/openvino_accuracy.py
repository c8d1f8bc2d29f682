"""Accuracy-aware int8 of an OpenVINO model: NNCF's ``quantize_with_accuracy_control``.

NNCF quantizes the model as plain int8 does, validates it, and while the accuracy drop exceeds the
budget ranks the groups of quantizers by their contribution to the drop and reverts the worst to
floating point, one group at a time. Its validation function here is the int8 tolerance itself
(``accuracy_control.AccuracyTarget``; a detector's mAP drop after post-processing): the metric is how far the least-met criterion sits above what
is required, clipped at 0 and shifted by 1, so the fp32 model scores 1 and a budget (``max_drop``) of 0
means "every criterion holds". Per-sample cosines rank the groups.
"""

from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import ModelSpec
from .accuracy_control import (AccuracyTarget, HEADROOM_MARGIN, VALIDATION_SAMPLES, accuracy_target, describe,
                               per_sample_cosine, reference_outputs, validation_samples)
from .calibration import Calibration


def quantize_with_accuracy_control(spec: ModelSpec, model, calibration: Calibration, *, preset: str = "performance",
                                   model_type: str | None = None, subset_size: int | None = None,
                                   accuracy_criteria: dict[str, float] | None = None,
                                   accuracy_margin: float = HEADROOM_MARGIN,
                                   validation_size: int = VALIDATION_SAMPLES, **_: Any):
    """(int8ac ov.Model, metadata) of the fp32 ``model``: int8 with the layers that break the int8 tolerance
    on held-out validation samples kept in floating point."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    target = accuracy_target(spec, accuracy_criteria, accuracy_margin)
    names = [port.get_any_name() for port in model.inputs]
    samples, source = validation_samples(spec, len(calibration.samples), validation_size)
    fp32 = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    references, reference = reference_outputs(spec, samples, functools.partial(_run, fp32, names=names))
    fp32 = None  # its compiled threads would compete with NNCF's
    items = [{"index": i, "inputs": sample} for i, sample in enumerate(samples)]

    def validate(compiled, data) -> tuple[float, list[float]]:
        data = list(data)
        outputs = [_run(compiled, item["inputs"], names) for item in data]
        wanted = [references[item["index"]] for item in data]
        # 1 + the shortfall: the fp32 model scores 1 (NNCF divides by the initial metric, so not 0)
        return 1.0 + min(target.margin_of(target.figures(outputs, wanted)), 0.0), per_sample_cosine(outputs, wanted)

    with tempfile.TemporaryDirectory(prefix="deploybench-int8ac-") as scratch:
        quantized = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(calibration.samples, lambda sample: {n: sample[n] for n in names}),
            nncf.Dataset(items, lambda item: {n: item["inputs"][n] for n in names}), validate,
            max_drop=0.0, drop_type=nncf.DropType.ABSOLUTE,
            preset=getattr(nncf.QuantizationPreset, preset.upper()),
            subset_size=subset_size or len(calibration.samples), fast_bias_correction=True,
            model_type=nncf.ModelType.TRANSFORMER if model_type == "transformer" else None,
            # the fully quantized model, written before any layer is reverted: what plain int8 would be
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(intermediate_model_dir=scratch))
        plain = ov.Core().read_model(str(Path(scratch) / "intermediate_model.xml"))
        kept = sorted(_quantized_ops(plain) - _quantized_ops(quantized))
        core = ov.Core()
        before = _figures(core, plain, samples, names, references, target)
        # nothing reverted: the result is the plain model (its weights compressed), already measured
        after = _figures(core, quantized, samples, names, references, target) if kept else before
    metadata = describe(target, source, reference, before, after, kept, f"nncf {nncf.__version__} "
                        "quantize_with_accuracy_control")
    metadata.update({"quantizer": f"nncf {nncf.__version__}", "preset": preset, "fast_bias_correction": True,
                     "model_type": model_type, **calibration.describe()})
    return quantized, metadata


def _run(compiled, sample, names) -> list[np.ndarray]:
    result = compiled({n: sample[n] for n in names})
    return [np.asarray(result[port]) for port in compiled.outputs]


def _figures(core, model, samples, names, references, target: AccuracyTarget) -> dict[str, float]:
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return target.figures([_run(compiled, s, names) for s in samples], references)


def _quantized_ops(model) -> set[str]:
    """Names of the ops that take an input in int8: through a FakeQuantize, or from int8 weights (a
    compressed weight is an int8 Constant decompressed by Convert / Subtract / Multiply)."""
    quantized = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("FakeQuantize", *_DECOMPRESSION, *_DATA_MOVEMENT):
            continue
        if any(_from_int8(port.get_source_output().get_node()) for port in op.inputs()):
            quantized.add(f"{op.get_type_name()} {_label(op)}")
    return quantized


def _label(op) -> str:
    """The op's friendly name; for an op OpenVINO fused and renamed (a Convolution called ``Multiply_11397``
    after its BatchNorm was folded in), the PyTorch module path of the op it feeds, which names the layer."""
    name = op.get_friendly_name()
    if not re.fullmatch(r"[A-Za-z]+_\d+", name) or op.get_output_size() == 0:
        return name
    for target in op.output(0).get_target_inputs():
        consumer = target.get_node().get_friendly_name()
        if consumer.startswith("__module."):
            return f"{consumer.split('/')[0]} ({name})"
    return name


_DECOMPRESSION = ("Convert", "Subtract", "Multiply")
# Ops that move int8 data without computing on it: not layers a reader would call "kept in fp32".
_DATA_MOVEMENT = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "VariadicSplit", "Gather",
                  "StridedSlice", "ShapeOf", "Result")
_INT8_TYPES = ("i8", "u8", "i4", "u4")


def _from_int8(node, depth: int = 0) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_output_element_type(0).get_type_name() in _INT8_TYPES
    if kind in _DECOMPRESSION and depth < 3:
        return _from_int8(node.input_value(0).get_node(), depth + 1)
    return False


__all__ = ["quantize_with_accuracy_control"]
