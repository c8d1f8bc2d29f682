"""deploybench: prepare a PyTorch model for deployment, convert it to every target format, run it on
every backend behind one ``InferenceEngine``, and measure speed, memory and accuracy as a matrix.

``import deploybench`` is light: every heavy library (torch, onnxruntime, openvino, ...) is imported
only by the function that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .spec import (Accuracy, Artifact, Cell, DeployBenchError, LatencyStats, ModelSpec, PrecisionNotSupported,
                   Result, TensorSpec)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "prepare_model_for_deployment": "deploybench.converters.prepare",
    "optimize_model_for_deployment": "deploybench.converters.prepare",
    "fuse_model_for_deployment": "deploybench.converters.fuse",
    "prune_model": "deploybench.converters.prune",
    "deploy_model": "deploybench.converters",
    "create_deployer": "deploybench.engines",
    "InferenceEngine": "deploybench.engines.base",
    "backend_status": "deploybench.engines",
    "get_model": "deploybench.resolve",
    "list_models": "deploybench.models",
    "model_from_module": "deploybench.models",
    "benchmark_inference": "deploybench.harness.measure.timing",
    "benchmark_memory_usage": "deploybench.harness.measure.memory",
    "benchmark_precision": "deploybench.harness.measure.accuracy",
    "run_deployment_benchmark": "deploybench.harness.run",
    "compare_backends": "deploybench.harness.report.compare",
    "Matrix": "deploybench.harness.report.matrix",
    "recommend": "deploybench.harness.recommend",
    "Budgets": "deploybench.harness.recommend",
    "Recommendation": "deploybench.harness.recommend",
    "search_recommend": "deploybench.harness.recommend.search_run",
    "Detections": "deploybench.tasks.detection",
    "Classifications": "deploybench.tasks.classification",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deploybench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["Accuracy", "Artifact", "Cell", "DeployBenchError", "LatencyStats", "ModelSpec", "PrecisionNotSupported",
           "Result", "TensorSpec", *_LAZY]
