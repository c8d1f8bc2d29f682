"""Engines: one module per backend, all behind ``InferenceEngine``. Never imports the harness.

A new backend is one file with an ``InferenceEngine`` subclass and one line in ``ENGINES`` (or an
entry point in the ``deploybench.engines`` group of another package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._registry import Registry
from ..spec import Artifact, DeployBenchError
from .base import InferenceEngine

ENGINES = Registry("backend", "deploybench.engines", {
    "torch": "deploybench.engines.pytorch:TorchEngine",
    "onnxruntime": "deploybench.engines.onnxruntime:OnnxRuntimeEngine",
    "openvino": "deploybench.engines.openvino:OpenVINOEngine",
    "tflite": "deploybench.engines.tflite:TFLiteEngine",
    "coreml": "deploybench.engines.coreml:CoreMLEngine",
    "tensorrt": "deploybench.engines.tensorrt:TensorRTEngine",
})


def engine_class(backend: str) -> type[InferenceEngine]:
    """The ``InferenceEngine`` subclass for ``backend`` (a one-line error names the known backends)."""
    return ENGINES.get(backend)


def engine_classes() -> dict[str, type[InferenceEngine]]:
    """Every registered backend's engine class, built-in or from another package; one whose module
    cannot be imported is left out here (``backend_status`` lists it with the reason)."""
    classes = {}
    for name in ENGINES.names():
        try:
            classes[name] = engine_class(name)
        except Exception:  # a broken third-party engine must not hide the others
            continue
    return classes


def backends_for_format(fmt: str) -> list[str]:
    """The backends whose engine class runs ``fmt`` files, in registration order."""
    return [name for name, cls in engine_classes().items() if fmt in cls.formats]


def backend_availability(backend: str) -> tuple[bool, str]:
    """(True, version) if ``backend`` can run here, else (False, why not)."""
    return engine_class(backend).availability()


def backend_status() -> list[dict[str, Any]]:
    """Every registered backend: available or not, version or the reason, formats and precisions."""
    rows = []
    for name in ENGINES.names():
        try:
            cls = engine_class(name)
        except Exception as exc:  # the engine module itself is missing or broken
            rows.append({"backend": name, "available": False, "version": None,
                         "reason": f"{type(exc).__name__}: {exc}".splitlines()[0], "formats": [], "precisions": []})
            continue
        available, detail = cls.availability()
        rows.append({"backend": name, "available": available,
                     "version": detail if available else None, "reason": None if available else detail,
                     "formats": list(cls.formats), "precisions": list(cls.precisions)})
    return rows


def create_deployer(artifact_or_model: Any, backend: str | None = None, precision: str | None = None,
                    threads: int | None = None, **options: Any) -> InferenceEngine:
    """A loaded ``InferenceEngine`` for an ``Artifact``, an artifact path, an ``nn.Module`` or a ``ModelSpec``.

    When ``backend`` is None it is chosen from the artifact's format (the first backend that can
    run it here). Raises ``DeployBenchError`` naming the artifact and the backends that could
    run it when none can.
    """
    artifact = _as_artifact(artifact_or_model, options.pop("example_inputs", None))
    if backend is None:
        candidates = backends_for_format(artifact.format)
        reasons = []
        for candidate in candidates:
            available, detail = backend_availability(candidate)
            if available:
                backend = candidate
                break
            reasons.append(f"{candidate}: {detail}")
        if backend is None:
            raise DeployBenchError(f"no backend can run {artifact.format} artifact {artifact.path} here "
                                   f"({'; '.join(reasons) or 'no backend reads this format'})")
    cls = engine_class(backend)
    available, detail = cls.availability()
    if not available:
        raise DeployBenchError(f"backend {backend!r} cannot run here: {detail}")
    engine = cls(artifact, precision=precision, threads=threads, **options)
    return engine.load()


def _as_artifact(obj: Any, example_inputs: Any = None) -> Artifact:
    """The artifact of anything ``create_deployer`` accepts (a torch one carries its in-memory module)."""
    if isinstance(obj, Artifact):
        return obj
    if isinstance(obj, (str, Path)):
        from ..converters import artifact_from_path

        return artifact_from_path(Path(obj))
    from ..resolve import model_spec

    spec = model_spec(obj, example_inputs=example_inputs)
    if spec.factory is None:
        from ..converters import artifact_from_path

        return artifact_from_path(spec.source_path)
    from ..converters import torch_artifact

    return torch_artifact(spec)


__all__ = ["ENGINES", "InferenceEngine", "backend_availability", "backend_status", "backends_for_format",
           "create_deployer", "engine_class", "engine_classes"]
