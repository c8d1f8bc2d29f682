"""Converters: one module per format, plus the passes that prepare a model. Never imports the harness.

Every converter is a function ``convert(model: ModelSpec, out_dir: Path, precision: str, **options)
-> Artifact`` that writes its files into ``out_dir`` (a fresh temporary directory) and returns the
artifact. ``deploy_model`` wraps it with the on-disk cache, so a second run does not re-export.
A new format is one module and one line in ``CONVERTERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._registry import Registry
from ..spec import INT8_PRECISIONS, Artifact, DeployBenchError, ModelSpec, NotSupported, TensorSpec
from .cache import ConversionCache, default_cache_dir, model_fingerprint

CONVERTERS = Registry("format", "deploybench.converters", {
    "torch": "deploybench.converters.pytorch:convert",
    "onnx": "deploybench.converters.onnx:convert",
    "openvino": "deploybench.converters.openvino:convert",
    "tflite": "deploybench.converters.tflite:convert",
    "coreml": "deploybench.converters.coreml:convert",
    "tensorrt": "deploybench.converters.tensorrt:convert",
})

# File suffix -> format, for bring-your-own artifacts.
SUFFIX_FORMATS = {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite", ".mlpackage": "coreml",
                  ".mlmodel": "coreml", ".plan": "tensorrt", ".engine": "tensorrt", ".pt2": "torch"}


def deploy_model(model: Any, target: str, output_dir: str | Path | None = None, example_inputs: Any = None,
                 precision: str = "fp32", cache: bool = True, **options: Any) -> Artifact:
    """Export ``model`` to ``target`` format and return the ``Artifact``.

    ``model`` is a ``ModelSpec``, an ``nn.Module`` (with ``example_inputs``) or a path to an exported
    file (``deploybench.deploy_model`` also takes a zoo name or a ``file.py:factory``). The artifact records its path(s), format, precision, input/output specs,
    size on disk, conversion time and what the conversion did (``metadata``). Results are cached
    under ``output_dir`` (default: ``$DEPLOYBENCH_CACHE`` or ``.deploybench-cache``) by a content
    hash of the weights, graph, options and tool versions; ``cache=False`` converts anew. Processes
    asking for the same conversion at once run it once: the others wait for it and read the result.
    """
    spec = _as_spec(model, example_inputs)
    _check_torch(spec)
    convert = CONVERTERS.get(target)
    if spec.factory is None and spec.source_format == target:
        artifact = artifact_from_path(spec.source_path)
        # a file already in the asked precision (an int8 file a host quantized for a device) is its own artifact
        if precision in ("fp32", artifact.precision):
            return artifact
    store = ConversionCache(Path(output_dir) if output_dir else default_cache_dir())
    options = {**cpu_defaults(target, precision), **accuracy_defaults(spec, precision), **options}
    from .pytorch import trust_folder

    trust_folder(store.root)
    return store.get_or_convert(spec, target, precision, options, convert, use_cache=cache)


def cpu_defaults(target: str, precision: str, flags: frozenset[str] | None = None) -> dict[str, Any]:
    """Options whose right value depends on the CPU the artifact will run on (this one, or ``flags``).

    ONNX Runtime int8 on an x86 CPU without VNNI: 7-bit weights (``reduce_range``), since 8-bit ones
    saturate its u8 x s8 kernels (digits_cnn lost 1.1 points of top-1 on an AVX2-only AMD EPYC; 7-bit
    weights kept all of it). They are resolved before the cache key is made, so they become part of it.
    """
    from ..cpu import int8_saturates

    if target == "onnx" and precision in INT8_PRECISIONS:
        return {"reduce_range": int8_saturates(flags)}
    return {}


def accuracy_defaults(spec: ModelSpec, precision: str) -> dict[str, Any]:
    """An int8ac artifact holds the int8 criteria of ``spec`` (its own overrides included): resolved here,
    before the cache key is made, so an artifact built for other criteria is never reused."""
    if precision != "int8ac":
        return {}
    from .accuracy_control import int8_criteria

    return {"accuracy_criteria": int8_criteria(spec)}


def _as_spec(model: Any, example_inputs: Any) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, (str, Path)):
        return spec_from_file(Path(model))
    from ..models import model_from_module

    if example_inputs is None:
        raise DeployBenchError(f"{type(model).__name__}: pass example_inputs (a tensor, a tuple of tensors or a "
                               "mapping name -> tensor) with an nn.Module, or a ModelSpec")
    return model_from_module(model, example_inputs)


def spec_from_file(path: Path) -> ModelSpec:
    """A bring-your-own artifact as a model: its inputs and outputs come from the file."""
    artifact = artifact_from_path(path)
    dims = {axis: 1 for t in artifact.inputs for axis in t.dynamic_axes.values()}
    return ModelSpec(name=Path(path).stem, inputs=artifact.inputs, factory=None,
                     output_names=tuple(t.name for t in artifact.outputs), dims=dims,
                     source_path=Path(path), source_format=artifact.format, ref=str(path),
                     task=artifact.metadata.get("task", "generic"),
                     task_config=artifact.metadata.get("task_config", {}))



def _check_torch(spec: ModelSpec) -> None:
    """A PyTorch source is built and exported with torch; a device with only the runtime install has none,
    which is a skip that says where such a model converts, not a ModuleNotFoundError from its factory."""
    import importlib.util

    if spec.factory is not None and importlib.util.find_spec("torch") is None:
        raise NotSupported(f"{spec.name} is a PyTorch model and torch is not installed here: convert it on a host "
                           "(pip install 'deploybench[host]') or run its exported file")


def torch_artifact(spec: ModelSpec, precision: str = "fp32") -> Artifact:
    """The in-memory 'artifact' of a PyTorch source: no file; the model's nn.Module (built here) and specs."""
    _check_torch(spec)
    return Artifact(format="torch", path=Path(f"<{spec.name}>"), precision=precision, inputs=spec.inputs,
                    outputs=tuple(TensorSpec(n, ()) for n in spec.output_names), files=(),
                    metadata={"model": spec.name, "task": spec.task, "task_config": spec.task_config,
                              # what a byte digest is to a file: two equal fingerprints run the same model
                              "fingerprint": model_fingerprint(spec)},
                    module=spec.build())


# Formats a bring-your-own file converts to, besides running as it is (onnx -> OpenVINO IR, TensorRT plan).
CONVERSIONS_FROM_FILE: dict[str, tuple[str, ...]] = {"onnx": ("openvino", "tensorrt")}


def artifact_from_path(path: Path) -> Artifact:
    """An ``Artifact`` for a file someone already exported, its inputs and outputs read from the file.

    A sidecar ``artifact.json`` written by ``deploy_model`` is used when present. Raises a one-line
    error for a missing path, an unknown suffix, or a file the format's reader rejects.
    """
    path = Path(path)
    if not path.exists():
        raise DeployBenchError(f"model file {path} does not exist")
    if not (path.is_file() or path.is_dir()):  # a pipe or a device: reading it would never end
        raise DeployBenchError(f"model file {path} is not a regular file; pass the exported file itself")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    cached = ConversionCache(path.parent.parent).load(path.parent, mark_cached=True)
    # Written by deploy_model, its sidecar knows more than the file says; a third-party format is known only by it.
    if cached is not None and fmt in (None, cached.format) and cached.path.resolve() == path.resolve():
        return cached
    if fmt is None:
        raise DeployBenchError(f"{path}: unknown model file type {path.suffix!r}; "
                               f"deploybench reads {', '.join(sorted(SUFFIX_FORMATS))}")
    module = CONVERTERS.get(fmt).__module__
    import importlib

    reader = getattr(importlib.import_module(module), "read_artifact", None)
    if reader is None:
        raise DeployBenchError(f"{path}: reading existing {fmt} files is not supported")
    return reader(path)


__all__ = ["CONVERSIONS_FROM_FILE", "CONVERTERS", "SUFFIX_FORMATS", "accuracy_defaults", "cpu_defaults", "spec_from_file", "artifact_from_path", "deploy_model", "torch_artifact"]
