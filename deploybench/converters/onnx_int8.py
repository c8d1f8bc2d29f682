"""int8 ONNX (QDQ) with ONNX Runtime's static quantizer, plain or accuracy-aware (``int8ac``).

Plain int8 quantizes every node ``quantize_static`` can. Accuracy-aware int8 starts from the same
graph, calibration and options, then finds the nodes that break the int8 tolerance
(``accuracy_control.AccuracyTarget``) on held-out validation samples. A sensitivity pass quantizes
each quantized node alone (``nodes_to_quantize=[node]``, the rest fp32) and measures the damage it does
by itself: small quantization errors add up roughly in power, so the damage of the whole graph is about
the sum of these, and leaving the worst nodes in fp32 removes the most of it. The nodes are then
excluded (``nodes_to_exclude``) most damaging first, the count found by bisection (quantizing with more
nodes excluded is, to within noise, never less accurate), until the tolerance holds. The calibration
ranges are computed once and reused by every re-quantization (``calibration_cache_path``), so a step
costs a graph rewrite and a validation, not a calibration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import Artifact, DeployBenchError, ModelSpec
from .accuracy_control import (HEADROOM_MARGIN, VALIDATION_SAMPLES, AccuracyTarget, accuracy_target, describe,
                               reference_outputs, validation_samples)
from .calibration import DEFAULT_SAMPLES, calibration_inputs

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def to_int8(spec: ModelSpec, source: Artifact, target: Path, precision: str = "int8",
            calibration_size: int = DEFAULT_SAMPLES, calibration_method: str = "MinMax",
            activation_type: str = "QUInt8", per_channel: bool = True, seed: int = 0, reduce_range: bool = False,
            accuracy_criteria: dict[str, float] | None = None, accuracy_margin: float = HEADROOM_MARGIN,
            validation_size: int = VALIDATION_SAMPLES, **_: Any) -> tuple[Path, dict[str, Any]]:
    """Write the ``precision`` (int8 or int8ac) QDQ graph of the fp32 ``source`` to ``target``; return
    (target, metadata). reduce_range: 7-bit weights, for a CPU whose int8 kernels saturate (see
    deploybench.cpu); deploy_model picks it for this CPU before the cache key is made."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration_method not in CALIBRATION_METHODS:
        raise DeployBenchError(f"unknown calibration_method {calibration_method!r}; choose from: "
                               f"{', '.join(CALIBRATION_METHODS)}")
    if activation_type not in ("QUInt8", "QInt8"):
        raise DeployBenchError(f"unknown activation_type {activation_type!r}; choose QUInt8 or QInt8")
    if source.precision != "fp32":
        raise DeployBenchError(f"{source.path} is already {source.precision}; int8 quantization starts from an fp32 "
                               "model")
    calibration = calibration_inputs(spec, calibration_size, seed=seed)
    preprocessed = target.with_name("preprocessed.onnx")
    ranges = target.with_name("calibration_ranges.json")
    # ONNX Runtime's symbolic shape inference dumps "sym_shape_infer_temp.onnx" (+ external data) into
    # the working directory when it gives up: keep that litter inside the entry being written.
    with contextlib.chdir(target.parent):
        try:
            quant_pre_process(str(source.path), str(preprocessed), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some graphs; the optimizer alone still helps
            quant_pre_process(str(source.path), str(preprocessed), skip_symbolic_shape=True)
    _remove(target.parent, "sym_shape_infer_temp*", "*.data")

    class SamplesReader(CalibrationDataReader):
        def __init__(self, samples: list[dict[str, np.ndarray]]):
            self._samples = samples
            self._iter = iter(samples)

        def get_next(self):
            return next(self._iter, None)

        def rewind(self):
            self._iter = iter(self._samples)

    def quantize(output: Path, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Path:
        quantize_static(str(preprocessed), str(output), SamplesReader(calibration.samples),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, calibration_method), reduce_range=reduce_range,
                        nodes_to_exclude=list(exclude), nodes_to_quantize=list(only) if only else None,
                        calibration_cache_path=str(ranges))
        return output

    try:
        quantize(target)
        metadata: dict[str, Any] = {}
        if precision == "int8ac":
            criteria = accuracy_target(spec, accuracy_criteria, accuracy_margin)
            metadata = hold_accuracy(spec, criteria, source.path, target, quantize, calibration_size, validation_size)
    finally:
        preprocessed.unlink(missing_ok=True)
        ranges.unlink(missing_ok=True)
        _remove(target.parent, "*augmented*", "sensitivity-*.onnx")
    metadata.update({"quant_format": "QDQ", "per_channel": per_channel, "activation_type": activation_type,
                     "weight_type": "QInt8", "reduce_range": reduce_range, "calibration_method": calibration_method,
                     **calibration.describe()})
    return target, metadata


def _remove(folder: Path, *patterns: str) -> None:
    for pattern in patterns:
        for leftover in folder.glob(pattern):
            leftover.unlink()


def hold_accuracy(spec: ModelSpec, target: AccuracyTarget, fp32_path: Path, output: Path,
                  quantize: Callable[..., Path], calibration_size: int, validation_size: int) -> dict[str, Any]:
    """Exclude the most sensitive nodes from quantization until ``target`` holds on the validation samples;
    the int8ac graph is left at ``output``. Returns the metadata that says what was kept in fp32."""
    samples, source = validation_samples(spec, calibration_size, validation_size)
    fp32 = _Runner(fp32_path)
    references, reference = reference_outputs(spec, samples, fp32.run)

    def figures(path: Path) -> dict[str, float]:
        return target.figures(_Runner(path).run_all(samples), references)

    plain = figures(output)
    after, kept = plain, []
    if target.margin_of(plain) < 0:
        ranked = _rank_by_sensitivity(quantized_nodes(output), output, quantize, figures, target)
        after, kept = _exclude_until_held(ranked, output, quantize, figures, target)
    return describe(target, source, reference, plain, after, kept, "ONNX Runtime sensitivity pass + "
                    "quantize_static(nodes_to_exclude)")


def _rank_by_sensitivity(nodes: Sequence[str], output: Path, quantize, figures, target: AccuracyTarget
                         ) -> list[str]:
    """``nodes``, most damaging first: by the margin left with that node alone quantized."""
    scored = []
    for index, node in enumerate(nodes):
        trial = quantize(output.with_name(f"sensitivity-{index}.onnx"), only=[node])
        scored.append((target.margin_of(figures(trial)), index, node))
        trial.unlink()
    return [node for _, _, node in sorted(scored)]


def _exclude_until_held(ranked: Sequence[str], output: Path, quantize, figures, target: AccuracyTarget
                        ) -> tuple[dict[str, float], list[str]]:
    """(figures, excluded nodes) of the shortest prefix of ``ranked`` whose exclusion meets ``target``, found
    by bisection between plain int8 (fails) and every node excluded; every node when even that fails. The
    graph of the answer is left at ``output``."""
    measured: dict[int, dict[str, float]] = {}  # in the order quantized: the last one is the graph at output

    def holds(count: int) -> bool:
        measured.pop(count, None)
        measured[count] = figures(quantize(output, ranked[:count]))
        return target.margin_of(measured[count]) >= 0

    failing, holding = 0, len(ranked)
    if holds(holding):
        while holding - failing > 1:
            middle = (failing + holding) // 2
            if holds(middle):
                holding = middle
            else:
                failing = middle
    if list(measured)[-1] != holding:
        quantize(output, ranked[:holding])
    return measured[holding], list(ranked[:holding])


def quantized_nodes(path: Path) -> list[str]:
    """Names of the nodes of a QDQ graph that take an input through a DequantizeLinear: the nodes quantized."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [node.name for node in graph.node
            if node.op_type not in _QDQ_OPS and node.name and any(name in dequantized for name in node.input)]


class _Runner:
    """An ONNX Runtime session over a graph, run on samples one batch at a time."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def run(self, sample: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(v) for v in self.session.run(None, {n: sample[n] for n in self.names})]

    def run_all(self, samples: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
        return [self.run(sample) for sample in samples]


__all__ = ["CALIBRATION_METHODS", "hold_accuracy", "quantized_nodes", "to_int8"]
