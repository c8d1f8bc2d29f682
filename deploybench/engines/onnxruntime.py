"""ONNX Runtime backend: an ``.onnx`` artifact on the CPU execution provider, in its own precision."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..spec import DeployBenchError
from .base import InferenceEngine, kept_in_float
from .requests import RequestPool, ThreadRequestPool

PROVIDERS = ("CPUExecutionProvider",)


class OnnxRuntimeEngine(InferenceEngine):
    """Runs ONNX on ONNX Runtime's CPU provider with every graph optimization on.

    The engine's precision is the artifact's: an fp16 or int8 graph is made by the converter
    (``deploy_model(..., precision=...)``), so an fp32 engine over an int8 artifact is refused.
    ``threads`` sets intra-op threads (inter-op is 1, execution sequential). Options:
    ``graph_optimization`` ("all", "extended", "basic", "disabled"), ``providers``, and ``spinning``
    (default True, as deployed): False stops idle intra-op threads from spinning, which two sessions
    run alternately in one process need (each one's spinning pool otherwise takes the cores the other
    is computing on: block ratios of two identical models spread over 0.24-4.3 with 2 threads).
    """

    backend = "onnxruntime"
    formats = ("onnx",)
    precisions = ("fp32", "fp16", "int8", "int8ac")
    requires = "onnxruntime"
    compiles_for_shapes = True

    def __init__(self, artifact, precision=None, threads=None, **options: Any):
        super().__init__(artifact, precision=precision, threads=threads, **options)
        if self.precision != artifact.precision:
            raise DeployBenchError(
                f"{artifact.path.name} is a {artifact.precision} ONNX model; ONNX Runtime runs it as "
                f"{artifact.precision}, not {self.precision}: convert with "
                f"deploy_model(..., 'onnx', precision={self.precision!r})")
        self._session = None
        self._output_names: list[str] = []

    def _load_impl(self) -> None:
        import onnxruntime as ort

        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        level = self.options.get("graph_optimization", "all")
        if level not in levels:
            raise DeployBenchError(f"unknown graph_optimization {level!r} for onnxruntime; choose from: "
                                   f"{', '.join(levels)}")
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = levels[level]
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.inter_op_num_threads = 1
        session_options.intra_op_num_threads = int(self.threads or 0)  # 0: one per physical core
        session_options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
        spinning = bool(self.options.get("spinning", True))
        if not spinning:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # A named dynamic axis fixed to its size lets the graph optimizer plan for known shapes.
        for axis, size in sorted(self._fixed_axes().items()):
            session_options.add_free_dimension_override_by_name(axis, size)
        providers = list(self.options.get("providers", PROVIDERS))
        try:
            self._session = ort.InferenceSession(str(self.artifact.path), sess_options=session_options,
                                                 providers=providers)
        except Exception as exc:
            raise DeployBenchError(f"onnxruntime cannot load {self.artifact.path}: "
                                   f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.runtime_notes.update({
            "providers": self._session.get_providers(), "onnxruntime": ort.__version__,
            "graph_optimization": level, "intra_op_threads": session_options.intra_op_num_threads,
            **({} if spinning else {"spinning": False}),
        })
        kept = self.artifact.metadata.get("fp32_ops")
        if self.precision == "fp16" and kept:
            self.runtime_notes["precision_ran"] = f"fp16 graph with {', '.join(kept)} kept in fp32"
        elif self.precision == "int8":
            self.runtime_notes["precision_ran"] = ("int8 QDQ: quantized ops run int8 kernels, ops without one "
                                                   "run fp32 between DequantizeLinear/QuantizeLinear")
        elif self.precision == "int8ac":
            self.runtime_notes["precision_ran"] = kept_in_float(self.artifact, "int8 QDQ")

    def _fixed_axes(self) -> dict[str, int]:
        """{dim_param: size} of the dynamic axes ``static_dims`` fixes."""
        shapes = self.static_shapes()
        if shapes is None:
            return {}
        return {name: shapes[t.name][axis] for t in self.inputs for axis, name in t.dynamic_axes.items()}

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, Any]:
        try:
            values = self._session.run(self._output_names, feed)
        except Exception as exc:
            raise DeployBenchError(f"onnxruntime failed running {self.artifact.path.name}: "
                                   f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        return dict(zip(self._output_names, values))

    def _open_requests_impl(self, n: int | None, outputs: bool) -> RequestPool:
        """``n`` threads calling ``session.run`` at once (thread-safe, and it releases the GIL). By default
        as many as the cores leave room for beside each run's intra-op threads: one when a run uses them all."""
        intra = int(self.runtime_notes.get("intra_op_threads") or 0)
        cores = os.cpu_count() or 1
        size = n or max(1, cores // (intra or cores))
        pool = ThreadRequestPool(self, size, self._infer_impl, want_outputs=outputs)
        pool.notes.update({"mode": "concurrent session.run calls from Python threads",
                           "intra_op_threads": intra, "cores": cores})
        return pool

    def _close_impl(self) -> None:
        self._session = None
