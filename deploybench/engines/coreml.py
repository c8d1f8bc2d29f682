"""CoreML backend: ``coremltools.models.MLModel(path, compute_units=...).predict``. Runs on macOS only.

On Linux the coreml format is still converted and validated (names and shapes); this engine then
reports itself unavailable with the reason, so its cells are skipped, not failed.
"""

from __future__ import annotations

import platform
from typing import Any, ClassVar

import numpy as np

from ..spec import DeployBenchError
from .base import InferenceEngine

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


class CoreMLEngine(InferenceEngine):
    """Options: ``compute_units`` (one of ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE; default CPU_ONLY so
    latency is comparable with the other CPU backends)."""

    backend: ClassVar[str] = "coreml"
    formats: ClassVar[tuple[str, ...]] = ("coreml",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    requires: ClassVar[str] = "coremltools"

    @classmethod
    def _platform_problem(cls) -> str | None:
        if platform.system() != "Darwin":
            return (f"CoreML prediction needs macOS (this is {platform.system()}); a run here still "
                    "converts the .mlpackage and checks its input and output names and shapes")
        return None

    def _load_impl(self) -> None:
        problem = self._platform_problem()
        if problem:
            raise DeployBenchError(problem)
        import coremltools as ct

        units = str(self.options.get("compute_units", "CPU_ONLY")).upper()
        if units not in COMPUTE_UNITS:
            raise DeployBenchError(f"unknown CoreML compute_units {units!r}; choose from: {', '.join(COMPUTE_UNITS)}")
        try:
            self._model = ct.models.MLModel(str(self.artifact.path), compute_units=ct.ComputeUnit[units])
        except Exception as exc:
            raise DeployBenchError(f"CoreML cannot load {self.artifact.path} ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'corrupt package'}); "
                                   "convert it again") from None
        # CoreML has no thread setting: it schedules its own work.
        self.runtime_notes.update({"compute_units": units, "threads": "not settable in CoreML"})

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, Any]:
        outputs = self._model.predict(feed)
        return {name: np.asarray(outputs[name]) for name in self.output_names}

    def _close_impl(self) -> None:
        self._model = None
