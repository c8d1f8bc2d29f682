"""TFLite (LiteRT) backend: ``ai_edge_litert.interpreter.Interpreter`` on the CPU.

Inputs and outputs are bound by the artifact's names through the name mapping the converter
stored (spec name -> TFLite signature name). Full-integer models take and give int8: this engine
quantizes inputs and dequantizes outputs with each tensor's scale and zero point, so callers
always pass and get float32.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from ..spec import DeployBenchError
from .base import InferenceEngine
from .requests import RequestPool, ThreadRequestPool


class TFLiteEngine(InferenceEngine):
    """Options: ``xnnpack`` (default True) applies LiteRT's default XNNPACK CPU delegate."""

    backend: ClassVar[str] = "tflite"
    formats: ClassVar[tuple[str, ...]] = ("tflite",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    requires: ClassVar[str] = "ai_edge_litert"

    def _load_impl(self) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from ..converters.tflite import _signature_details

        use_xnnpack = bool(self.options.get("xnnpack", True))
        resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self._interpreter = Interpreter(model_path=str(self.artifact.path), num_threads=self.threads,
                                            experimental_op_resolver_type=resolver)
        except Exception as exc:
            raise DeployBenchError(f"LiteRT cannot load {self.artifact.path} ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'corrupt file'}); "
                                   "re-export it") from None
        inputs, outputs = _signature_details(self._interpreter)
        input_names = self.artifact.metadata.get("input_names") or {t.name: t.name for t in self.inputs}
        output_names = self.artifact.metadata.get("output_names") or {t.name: t.name for t in self.outputs}
        try:
            self._input_details = {name: inputs[input_names[name]] for name in (t.name for t in self.inputs)}
            self._output_details = [outputs[output_names[name]] for name in self.output_names]
        except KeyError as exc:
            raise DeployBenchError(f"{self.artifact.path.name} has no tensor {exc.args[0]!r} (it has inputs "
                                   f"{sorted(inputs)}, outputs {sorted(outputs)}); convert it again") from None
        self._interpreter.allocate_tensors()
        self._current_shapes = {name: tuple(int(d) for d in details["shape"])
                                for name, details in self._input_details.items()}
        self.runtime_notes.update({
            "num_threads": self.threads,
            # AUTO applies the XNNPACK delegate to every op it supports on CPU builds of LiteRT.
            "xnnpack": "default XNNPACK delegate requested (AUTO op resolver)" if use_xnnpack else "disabled",
            "quantized_io": sorted(n for n, d in {**self._input_details,
                                                  **dict(zip(self.output_names, self._output_details))}.items()
                                   if d["quantization"][0]),
        })
        if self.precision == "fp16":
            # LiteRT dequantizes fp16 weights to fp32 at load (XNNPACK too, unless forced to fp16).
            self.runtime_notes["precision_ran"] = "fp16 weights, dequantized at load: compute in fp32"

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        interpreter = self._interpreter
        resized = False
        for name, array in feed.items():
            if array.shape != self._current_shapes[name]:
                self._resize(name, array.shape)
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, array in feed.items():
            details = self._input_details[name]
            interpreter.set_tensor(details["index"], _quantize(array, details))
        interpreter.invoke()
        return [_dequantize(interpreter.get_tensor(d["index"]), d) for d in self._output_details]

    def _resize(self, name: str, shape: tuple[int, ...]) -> None:
        details = self._input_details[name]
        signature = list(details.get("shape_signature", details["shape"]))
        for axis, (want, got) in enumerate(zip(signature, shape)):
            if want != -1 and want != got:
                raise DeployBenchError(f"input {name!r} of {self.artifact.path.name} has a fixed axis {axis} of "
                                       f"size {want}, got {got}; convert with that axis dynamic or feed size {want}")
        self._interpreter.resize_tensor_input(details["index"], list(shape), strict=True)
        self._current_shapes[name] = tuple(shape)

    def _open_requests_impl(self, n: int | None, outputs: bool) -> RequestPool:
        """By default one request at a time on the engine's interpreter (an interpreter runs one invoke at
        once): LiteRT's parallelism is inside the call, the interpreter's ``num_threads`` (XNNPACK's pool).
        ``n`` > 1 loads ``n`` interpreters of the same file for the pool and splits the threads between them
        (each at least one), as a server running one interpreter per worker does; ``invoke`` releases the
        GIL, so they overlap."""
        kernels = "XNNPACK" if self.options.get("xnnpack", True) else "builtin"
        if not n or n == 1:
            pool = ThreadRequestPool(self, 1, self._infer_impl, want_outputs=outputs)
            pool.notes["parallel"] = (f"one request at a time on one interpreter; inside it num_threads="
                                      f"{self.threads} ({kernels} kernels)")
            return pool
        threads = max(1, (self.threads or os.cpu_count() or 1) // n)
        engines = [self.__class__(self.artifact, self.precision, threads, self.static_dims, **self.options).load()
                   for _ in range(n)]
        pool = ThreadRequestPool(self, n, [engine._infer_impl for engine in engines], want_outputs=outputs)
        pool.notes["parallel"] = (f"{n} interpreters of the same file, one request each, num_threads={threads} "
                                  f"each ({kernels} kernels)")
        pool.on_close(lambda: [engine.close() for engine in engines])
        return pool

    def _close_impl(self) -> None:
        self._interpreter = None
        self._input_details, self._output_details = {}, []


def _quantize(array: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    scale, zero_point = details["quantization"]
    dtype = np.dtype(details["dtype"])
    if not scale:
        return array.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return np.clip(np.round(array / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(array: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    scale, zero_point = details["quantization"]
    if not scale:
        return array
    return ((array.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
