"""OpenVINO backend: an IR ``.xml`` or an ``.onnx`` on the CPU plugin, at an explicit inference precision.

The CPU plugin picks its own inference precision when none is set (bf16 on a CPU with AVX512-BF16
or AMX), so every engine sets ``INFERENCE_PRECISION_HINT`` explicitly and reads back what the
compiled model really runs; a mismatch raises instead of measuring the wrong thing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..spec import INT8_PRECISIONS, DeployBenchError, PrecisionNotSupported
from .base import InferenceEngine, kept_in_float
from .requests import RequestPool, ThreadRequestPool

# Engine precision -> INFERENCE_PRECISION_HINT. int8 and int8ac run the quantized ops in int8 and what
# NNCF left in floating point in f32, the precision NNCF validated them in: int8ac's kept ops in bf16 ran
# faster on MobileNetV3 (0.854 against 0.999 ms) but below the cosine int8ac was built to hold.
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32", "int8ac": "f32"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


class OpenVINOEngine(InferenceEngine):
    """Runs OpenVINO IR or ONNX on the CPU plugin.

    fp32/fp16/bf16 are execution modes of an fp32 (or fp16-compressed) model, chosen with the
    precision hint; int8 needs an int8 artifact (NNCF IR or a QDQ .onnx). Options:
    ``performance_hint`` (LATENCY by default), ``inference_precision`` (override the hint),
    ``allow_precision_fallback`` (note instead of raise when the CPU runs another precision),
    ``device`` (CPU). ``runtime_notes`` records the precision, threads and streams that ran.
    """

    backend = "openvino"
    formats = ("openvino", "onnx")
    precisions = ("fp32", "fp16", "bf16", "int8", "int8ac")
    requires = "openvino"
    compiles_for_shapes = True
    throughput_options = {"performance_hint": "THROUGHPUT"}

    def __init__(self, artifact, precision=None, threads=None, **options: Any):
        super().__init__(artifact, precision=precision, threads=threads, **options)
        quantized = {artifact.precision, self.precision} & set(INT8_PRECISIONS)
        if quantized and artifact.precision != self.precision:
            raise DeployBenchError(
                f"{artifact.path.name} is a {artifact.precision} model and OpenVINO cannot run it as {self.precision}: "
                f"convert with deploy_model(..., precision={self.precision!r})")
        if artifact.precision in ("fp16", "bf16") and self.precision != artifact.precision:
            raise DeployBenchError(
                f"{artifact.path.name} is a {artifact.precision} artifact; run it as {artifact.precision} or convert "
                f"with deploy_model(..., precision={self.precision!r})")
        self._compiled = None
        self._request = None
        self._input_names: dict[str, Any] = {}
        self._output_ports: list[Any] = []

    def _config(self) -> dict[str, Any]:
        hint = self.options.get("inference_precision") or PRECISION_HINTS[self.precision]
        performance = str(self.options.get("performance_hint", "LATENCY")).upper()
        if performance not in PERFORMANCE_HINTS:
            raise DeployBenchError(f"unknown performance_hint {performance!r} for openvino; choose from: "
                                   f"{', '.join(PERFORMANCE_HINTS)}")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": performance}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def _load_impl(self) -> None:
        import openvino as ov

        path = self.artifact.path
        core = ov.Core()
        config = self._config()
        device = self.options.get("device", "CPU")
        try:
            model = core.read_model(str(path))
            if self._reshape(model):
                try:
                    self._compiled = core.compile_model(model, device, config)
                except Exception as exc:
                    # OpenVINO 2026.4's low-precision passes fail on some QDQ graphs once their shapes are
                    # static (tiny_transformer int8: "AddTransformation ... index '0' out of range"), while the
                    # dynamic compile works: measure that one, and say so rather than lose the cell.
                    self.runtime_notes["static_compile_failed"] = _gist(exc)
                    self.static_dims = None
                    model = core.read_model(str(path))
            if self._compiled is None:
                self._compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise DeployBenchError(f"openvino cannot load {path}: {type(exc).__name__}: {_gist(exc)}") from exc
        ran = _precision_name(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        asked = config["INFERENCE_PRECISION_HINT"]
        self.runtime_notes.update({
            "openvino": ov.__version__, "device": device, "inference_precision": ran,
            "performance_hint": config["PERFORMANCE_HINT"],
            "threads": int(self._compiled.get_property("INFERENCE_NUM_THREADS")),
            "streams": int(self._compiled.get_property("NUM_STREAMS")),
        })
        if self.precision == "int8":
            # an IR from NNCF carries FakeQuantize; an int8 ONNX file, ONNX Runtime's QDQ pairs
            where = ("NNCF placed FakeQuantize" if self.artifact.format == "openvino"
                     else "the ONNX file's QDQ pairs quantize")
            self.runtime_notes["precision_ran"] = (f"int8 where {where}; the other ops in {ran} "
                                                   "(INFERENCE_PRECISION_HINT)")
        elif self.precision == "int8ac":
            self.runtime_notes["precision_ran"] = kept_in_float(self.artifact, f"int8, the other ops in {ran}",
                                                                _deploybench_name(ran))
        layers = layer_precisions(self._compiled)
        self.runtime_notes["layer_precisions"] = layers
        if self.precision in ("fp16", "bf16") and ran == asked:
            self.runtime_notes["precision_ran"] = mixed_precision_text(ran, layers)
        if ran != asked:
            message = (f"openvino on this {device} ran {path.name} in {ran}, not the {asked} asked for "
                       f"{self.precision}: this CPU has no {asked} support")
            if not self.options.get("allow_precision_fallback"):
                self._compiled = None
                raise PrecisionNotSupported(message + "; skip this precision or pass allow_precision_fallback=True")
            self.runtime_notes["fallback"] = message
            self.runtime_notes["precision_ran"] = ran
        self._request = self._compiled.create_infer_request()
        self._bind_ports()

    def _reshape(self, model) -> bool:
        """Fix the dynamic axes to ``static_dims`` before compiling (True when it did): a model compiled with a
        dynamic batch ran 1.35x slower than the same IR compiled static (as ``benchmark_app -shape`` does)."""
        static = self.static_shapes()
        if static is None or not any(t.dynamic_axes for t in self.inputs):
            return False
        import openvino as ov

        shapes = {}
        for i, spec in enumerate(self.inputs):
            port = next((p for p in model.inputs if spec.name in p.get_names()), model.inputs[i])
            shapes[port] = ov.PartialShape(list(static[spec.name]))
        model.reshape(shapes)
        return True

    def _bind_ports(self) -> None:
        """Match the artifact's tensor names to the compiled model's ports (by name, else by position)."""
        compiled_inputs = list(self._compiled.inputs)
        for i, spec in enumerate(self.inputs):
            port = next((p for p in compiled_inputs if spec.name in p.get_names()), None)
            if port is None:
                port = compiled_inputs[i]
            self._input_names[spec.name] = port
        compiled_outputs = list(self._compiled.outputs)
        self._output_ports = [next((p for p in compiled_outputs if spec.name in p.get_names()), compiled_outputs[i])
                              for i, spec in enumerate(self.outputs)] or compiled_outputs

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, Any] | list:
        try:
            return self._run(self._request, feed)
        except Exception as exc:
            raise DeployBenchError(f"openvino failed running {self.artifact.path.name}: "
                                   f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def _run(self, request, feed: dict[str, np.ndarray], outputs: bool = True, share_inputs: bool = False):
        """One call of ``request`` on ``feed``, bound by port; the outputs copied, since the request reuses
        its output buffers on the next call (None when not wanted)."""
        results = request.infer({self._input_names[name]: array for name, array in feed.items()},
                                share_inputs=share_inputs)
        return [np.array(results[port], copy=True) for port in self._output_ports] if outputs else None

    def _open_requests_impl(self, n: int | None, outputs: bool) -> RequestPool:
        """One ``InferRequest`` per slot, each run by a Python thread (``infer`` releases the GIL), by
        default the compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (as benchmark_app picks
        ``-nireq``). Only a model compiled with the THROUGHPUT hint (``throughput_options``) runs them
        in parallel streams; under LATENCY there is one stream and requests take turns in it.

        Not ``AsyncInferQueue``: with a Python completion callback, OpenVINO released the callback (and
        through it the last reference to the compiled model) in one of its stream threads, whose
        executor then joined itself and aborted the process (1 run in 3 of tests/test_scenarios.py)."""
        optimal = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        size = n or optimal
        runs = [functools.partial(self._run, self._compiled.create_infer_request(), outputs=outputs, share_inputs=True)
                for _ in range(size)]
        pool = ThreadRequestPool(self, size, runs, want_outputs=outputs)
        streams = self.runtime_notes.get("streams")
        pool.notes.update({"mode": "one InferRequest per Python thread", "performance_hint":
                           self.runtime_notes.get("performance_hint"), "streams": streams,
                           "threads": self.runtime_notes.get("threads"), "optimal_requests": optimal})
        if streams == 1 and pool.size > 1:
            pool.notes["parallel"] = ("one stream: requests take turns in it; load with "
                                      f"{self.throughput_options} for parallel streams")
        return pool

    def _close_impl(self) -> None:
        self._request = None
        self._compiled = None


# Runtime-model layer types that hold or move data rather than compute on it: not what "ran in bf16" counts.
_DATA_LAYERS = frozenset({"Input", "Output", "Const", "Reorder", "Reshape", "Convert", "ShapeOf", "Gather",
                          "StridedSlice", "Transpose", "Split", "Concatenation", "Broadcast"})


def layer_precisions(compiled) -> dict[str, dict[str, int]]:
    """{precision: {layer type: count}} of the compute layers as the CPU plugin compiled them (the runtime
    model's ``runtimePrecision``). A bf16 or f16 hint is a mixed precision: the plugin keeps the layers it
    judges sensitive (Softmax, some reductions) in f32, and this is where they show."""
    layers: dict[str, dict[str, int]] = {}
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except Exception:  # a plugin without a runtime model (another device): nothing to tell
        return layers
    for op in ops:
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        kind, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        if kind not in _DATA_LAYERS:
            counts = layers.setdefault(precision, {})
            counts[kind] = counts.get(kind, 0) + 1
    return {precision: dict(sorted(counts.items())) for precision, counts in sorted(layers.items())}


def mixed_precision_text(ran: str, layers: Mapping[str, Mapping[str, int]]) -> str:
    """'bf16 in 71 of 73 compute layers; kept in fp32: Softmax x2' from ``layer_precisions`` (OpenVINO's
    type names there, deploybench's precision names here)."""
    name = _deploybench_name(ran)
    total = sum(sum(counts.values()) for counts in layers.values())
    low = sum((layers.get(ran) or {}).values())
    kept = layers.get("f32") or {}
    if not kept:
        return f"{name} in all {total} compute layers" if total else name
    return (f"{name} in {low} of {total} compute layers; kept in fp32: "
            + ", ".join(f"{kind} x{count}" for kind, count in kept.items()))


def _deploybench_name(element_type: str) -> str:
    """OpenVINO's 'f32' / 'f16' / 'bf16' as deploybench names precisions: fp32, fp16, bf16."""
    return {"f16": "fp16", "f32": "fp32"}.get(element_type, element_type)


def _gist(exc: BaseException) -> str:
    """The line of an OpenVINO error that says what failed: its messages open with lines of source locations
    ('Exception from src/inference/src/cpp/core.cpp:117:') and name the cause last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith("Exception from ")]
    return (telling or lines or [type(exc).__name__])[-1][:300]


def _precision_name(value: Any) -> str:
    """'f32' / 'f16' / 'bf16' for the ov.Type (or string) a compiled model reports."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(name.lower(), name.lower())
