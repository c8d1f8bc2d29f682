"""The small dataclasses every room of deploybench shares.

Vocabulary (one meaning each, everywhere):
  model      a source network plus what it needs to run (``ModelSpec``)
  format     an artifact on disk (``Artifact.format``): torch, onnx, openvino, tflite, coreml, tensorrt
  backend    a runtime that executes a format: torch, onnxruntime, openvino, tflite, coreml, tensorrt
  precision  numeric mode of a cell: fp32, fp16, bf16, int8, int8ac (accuracy-aware int8)
  cell       one (model, format, backend, precision)
  result     what a cell measured (``Result``)
  matrix     all cells of a run

This module imports nothing heavy: numpy only. PyTorch is imported lazily by ``ModelSpec.build``.
"""

from deploybench.spec.cell import (DYNAMIC, OFFLINE, SCENARIOS, SERVER, SINGLE_STREAM, STAGES, STATIC, Accuracy, Cell,
                                   LatencyStats, Result, ToleranceCheck)
from deploybench.spec.model import (INT8_PRECISIONS, PRECISIONS, STATUS_FAILED, STATUS_OK, STATUS_SKIPPED,
                                    STATUS_TIMEOUT, Artifact,
                                    DeployBenchError, ModelSpec, NotSupported, PrecisionNotSupported,
                                    ShapeNotSupported, TensorSpec, check_choice,
                                    input_text, parse_csv, parse_fraction, parse_input,
                                    parse_input_parts, parse_shape)

__all__ = ["DYNAMIC", "INT8_PRECISIONS", "OFFLINE", "PRECISIONS", "SCENARIOS", "SERVER", "SINGLE_STREAM", "STAGES", "STATIC", "STATUS_FAILED", "STATUS_OK", "STATUS_SKIPPED", "STATUS_TIMEOUT", "Accuracy",
           "Artifact", "Cell", "DeployBenchError", "LatencyStats", "ModelSpec", "NotSupported", "PrecisionNotSupported",
           "Result", "ShapeNotSupported",
           "TensorSpec", "ToleranceCheck", "check_choice", "input_text", "parse_csv", "parse_fraction", "parse_input", "parse_input_parts",
           "parse_shape"]
