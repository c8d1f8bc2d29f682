"""How a model a user names becomes a ``ModelSpec``: a zoo name, ``path/to/file.py:factory`` (input shapes
from ``--input-shape 1x3x64x64``, or a factory returning a ``ModelSpec``), an exported file (``.onnx``,
``.tflite``, OpenVINO ``.xml``: its inputs come from the file), or an ``nn.Module`` plus example inputs;
and ``ModelSource``, how another process gets the same model.

It sits above ``models`` (the zoo) and ``converters`` (which read model files), so neither imports the
other back. Calling a user's factory runs their code: the harness does that in a worker process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .converters import spec_from_file as model_from_artifact
from .models import ARTIFACT_SUFFIXES, MODELS, model_from_module
from .spec import DeployBenchError, ModelSpec, TensorSpec, input_text, parse_input, parse_input_parts, parse_shape


def get_model(ref: str, input_shapes: Sequence[Sequence[int] | TensorSpec] | None = None) -> ModelSpec:
    """Resolve a zoo name, a ``file.py:factory`` or an artifact path to a ``ModelSpec``. ``input_shapes``:
    a factory's inputs, as shapes (float noise) or ``TensorSpec``s (names, dtypes, value ranges)."""
    ref = str(ref)
    if ref in MODELS:
        if input_shapes:
            raise DeployBenchError(f"--input-shape is for a user's model file; zoo model {ref!r} has fixed inputs")
        spec = MODELS.get(ref)()
        spec.ref = ref
        return spec
    path_text, _, factory_name = ref.rpartition(":") if ".py:" in ref else (ref, "", "")
    if factory_name:
        return _from_python_file(Path(path_text), factory_name, input_shapes, ref)
    path = Path(ref)
    if path.suffix.lower() in ARTIFACT_SUFFIXES or path.exists():
        return model_from_artifact(path)
    raise DeployBenchError(f"unknown model {ref!r}; choose a zoo model ({', '.join(MODELS.names())}), "
                           "a file.py:factory, or an exported .onnx/.tflite/.xml file")


def model_spec(obj: Any, example_inputs: Any = None, name: str | None = None) -> ModelSpec:
    """Anything a user may hand the API, as a ``ModelSpec``: a spec, a name/path, or an nn.Module."""
    if isinstance(obj, ModelSpec):
        return obj
    if isinstance(obj, (str, Path)):
        return get_model(str(obj))
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise DeployBenchError("PyTorch is needed for an nn.Module source") from exc
    if isinstance(obj, torch.nn.Module):
        if example_inputs is None:
            raise DeployBenchError(f"{type(obj).__name__}: pass example_inputs (a tensor, a tuple of tensors or "
                                   "a mapping name -> tensor) with an nn.Module")
        return model_from_module(obj, example_inputs, name=name)
    raise DeployBenchError(f"cannot use {type(obj).__name__} as a model; pass an nn.Module, a ModelSpec, "
                           "a zoo name or a model file")


def _from_python_file(path: Path, factory_name: str, input_shapes, ref: str) -> ModelSpec:
    if not path.exists():
        raise DeployBenchError(f"model file {path} does not exist")
    module_name = "deploybench_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise DeployBenchError(f"{path} is not a Python file deploybench can import")
    user_module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = user_module
    try:
        loader_spec.loader.exec_module(user_module)
    except Exception as exc:
        raise DeployBenchError(f"importing {path} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    factory = getattr(user_module, factory_name, None)
    if not callable(factory):
        raise DeployBenchError(f"{path} has no callable {factory_name!r}")
    try:
        built = factory()
    except DeployBenchError:
        raise
    except Exception as exc:
        raise DeployBenchError(f"{ref}: calling {factory_name}() failed: {type(exc).__name__}: {exc}"
                               .splitlines()[0]) from exc
    if isinstance(built, ModelSpec):
        built.ref = ref
        return built
    if not input_shapes:
        raise DeployBenchError(f"{ref}: give its inputs with --input-shape 1x3x64x64, or --input "
                               "NAME:SHAPE:DTYPE:VALUES for token ids and masks (e.g. input_ids:1x32:int64:0..1000)")
    import numpy as np
    import torch

    if all(isinstance(t, TensorSpec) for t in input_shapes):
        rng = np.random.default_rng(0)
        examples: Any = {t.name: torch.from_numpy(t.random(rng)) for t in input_shapes}
        ranges = {t.name: t.value_range for t in input_shapes if t.value_range is not None}
        described = "; ".join(input_text(t) for t in input_shapes)
    else:
        examples, ranges = [torch.randn(*shape) for shape in input_shapes], {}
        examples = examples if len(examples) > 1 else examples[0]
        described = ",".join("x".join(map(str, s)) for s in input_shapes)
    try:
        spec = model_from_module(built, examples, name=path.stem, value_ranges=ranges)
    except Exception as exc:
        raise DeployBenchError(f"{ref} does not accept the input(s) {described}: "
                               f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
    spec.ref = ref + "@" + described.replace("; ", ";")
    spec.factory = factory
    spec._module = built.eval()
    return spec


def is_rebuildable_ref(ref: str | None) -> bool:
    """True when a fresh process can rebuild the model from ``ref``: a zoo name, a ``file.py:factory``, a file."""
    if not ref:
        return False
    base = _split_ref(ref)[0]
    return base in MODELS.names() or ".py:" in base or Path(base).suffix.lower() in ARTIFACT_SUFFIXES


class ModelSource:
    """How another process (a worker, the memory child) gets the same model: a ref it resolves (zoo
    name, ``file.py:factory@shape``, a model file) or, for a model built in this process, the
    ``ModelSpec`` itself serialized with cloudpickle (classes of ``__main__`` and lambdas travel by
    value; classes of importable modules by name, so the other process needs the same ``sys.path``).
    """

    def __init__(self, ref: str | None = None, payload: bytes | None = None, label: str = ""):
        if (ref is None) == (payload is None):
            raise DeployBenchError("a ModelSource is a ref or a payload, exactly one of them")
        self.ref, self.payload, self.label = ref, payload, label or ref or "model"

    @classmethod
    def of(cls, model: Any) -> ModelSource:
        """A source for a ref (str or path) or a ``ModelSpec``; raises ``DeployBenchError`` naming the model
        when a spec cannot be serialized (a local object cloudpickle cannot reach)."""
        if isinstance(model, (str, Path)):
            return cls(ref=str(model))
        spec = model_spec(model)
        import cloudpickle

        try:
            return cls(payload=cloudpickle.dumps(spec), label=spec.name)
        except Exception as exc:
            raise DeployBenchError(f"model {spec.name!r} cannot be sent to another process "
                                   f"({type(exc).__name__}: {exc})".splitlines()[0]) from None

    def resolve(self) -> ModelSpec:
        """The ``ModelSpec``, built in this process (user code runs here: call it in a worker)."""
        if self.ref is not None:
            return resolve_ref(self.ref)
        import pickle

        spec = pickle.loads(self.payload)
        if not isinstance(spec, ModelSpec):
            raise DeployBenchError(f"model source {self.label!r} holds a {type(spec).__name__}, not a ModelSpec")
        return spec

    def to_dict(self, payload_path: Path | None = None) -> dict[str, Any]:
        """JSON for a child process: the ref, or the path of a file holding the payload (written here)."""
        if self.ref is not None:
            return {"ref": self.ref, "label": self.label}
        if payload_path is None:
            raise DeployBenchError("a payload model source needs a file to travel in JSON")
        Path(payload_path).write_bytes(self.payload)
        return {"payload_path": str(payload_path), "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSource:
        if data.get("ref"):
            return cls(ref=str(data["ref"]), label=str(data.get("label", "")))
        return cls(payload=Path(data["payload_path"]).read_bytes(), label=str(data.get("label", "")))


def _split_ref(ref: str) -> tuple[str, str]:
    """(model, inputs) of a ref: a ``file.py:factory`` or an exported file may carry inputs after ``@``
    (a path that merely contains an ``@`` keeps it: the inputs follow a model file's suffix)."""
    if ".py:" in ref:
        base, _, inputs = ref.partition("@")
        return base, inputs
    base, at, inputs = ref.rpartition("@")
    if at and Path(base).suffix.lower() in ARTIFACT_SUFFIXES:
        return base, inputs
    return ref, ""


def resolve_ref(ref: str) -> ModelSpec:
    """Inverse of ``ModelSpec.ref``: rebuild the same model in a fresh process."""
    base, inputs = _split_ref(ref)
    if inputs and ".py:" not in base:
        return with_file_inputs(get_model(base), inputs.split(";"))
    return get_model(base, parse_inputs(inputs.replace(";", ",").split(",")) if inputs else None)


def with_file_inputs(spec: ModelSpec, texts: Sequence[str]) -> ModelSpec:
    """An exported file's model with its inputs sized and valued by ``--input NAME:SHAPE[:DTYPE[:VALUES]]``:
    SHAPE sizes the input's dynamic axes (its fixed axes must match), DTYPE must be the file's, VALUES
    bounds the seeded values (``sr::int64:=16000``). An input the file lacks, or one that does not fit,
    is a one-line error naming the file and the input."""
    file = spec.source_path.name if spec.source_path else spec.name
    by_name = {t.name: t for t in spec.inputs}
    dims, sized_by = dict(spec.dims), {}
    for text in texts:
        name, shape, dtype, value_range = parse_input_parts(text)
        tensor = by_name.get(name)
        if tensor is None:
            raise DeployBenchError(f"{file} has no input {name!r}; its inputs: "
                                   + ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in spec.inputs))
        if dtype is not None and dtype != tensor.dtype:
            raise DeployBenchError(f"{file} input {name!r} is {tensor.dtype}, not {dtype}: leave DTYPE empty "
                                   f"({name}:SHAPE::VALUES) or write {tensor.dtype}")
        if shape is not None:
            if len(shape) != len(tensor.shape):
                raise DeployBenchError(f"{file} input {name!r} has shape {list(tensor.shape)}; --input gave "
                                       f"{'x'.join(map(str, shape))} (leave SHAPE empty for a scalar: {name}::...)")
            for axis, (have, want) in enumerate(zip(tensor.shape, shape)):
                if isinstance(have, int) and have != want:
                    raise DeployBenchError(f"{file} input {name!r} axis {axis} is fixed at {have}, not {want}")
                if isinstance(have, str):
                    if have in sized_by and dims[have] != want:
                        raise DeployBenchError(f"{file}: axis {have!r} is {dims[have]} in {sized_by[have]!r} and "
                                               f"{want} in {name!r}; one axis has one size")
                    dims[have], sized_by[have] = want, name
        if value_range is not None:
            by_name[name] = dataclasses.replace(tensor, value_range=value_range)
    spec.inputs = tuple(by_name[t.name] for t in spec.inputs)
    spec.dims = dims
    spec.ref = f"{spec.ref}@{';'.join(texts)}"
    return spec


def parse_inputs(texts: Sequence[str]) -> list[tuple[int, ...]] | list[TensorSpec]:
    """``--input-shape`` values (``1x3x64x64``) or ``--input`` values (``NAME:SHAPE[:DTYPE[:VALUES]]``), not mixed."""
    named = [":" in text for text in texts]
    if any(named) and not all(named):
        raise DeployBenchError(f"inputs {list(texts)} mix bare shapes and NAME:SHAPE forms: use one of the two")
    return [parse_input(text) for text in texts] if all(named) else [parse_shape(text) for text in texts]


def ref_with_inputs(ref: str, inputs: Sequence[str] | None) -> str:
    """The ref a worker resolves: a ``file.py:factory`` or an exported file with its inputs after ``@`` (one
    home for the form, for ``run`` and ``compare``); a zoo model as it is. A file's inputs are checked here,
    so a name it lacks is refused before any worker starts."""
    if ref.endswith(".py"):
        raise DeployBenchError(f"{ref}: name the factory function too, e.g. {ref}:build_model")
    if not inputs or ref in MODELS.names():
        return ref
    if ".py:" not in ref:
        spec = get_model(ref)  # the file's own inputs, read once: checked here, rebuilt in the worker
        if any(":" not in text for text in inputs):
            raise DeployBenchError(f"{ref}: a model file's inputs are named; size them with --input NAME:SHAPE "
                                   f"(e.g. --input {spec.inputs[0].name}:1x512), not --input-shape")
        return with_file_inputs(spec, inputs).ref
    parsed = parse_inputs(inputs)
    text = ";".join(input_text(t) for t in parsed) if isinstance(parsed[0], TensorSpec) else \
        ",".join("x".join(map(str, shape)) for shape in parsed)
    return f"{ref.partition('@')[0]}@{text}"


def deploy_model(model: Any, target: str, output_dir: str | Path | None = None, example_inputs: Any = None,
                 precision: str = "fp32", cache: bool = True, **options: Any):
    """Export ``model`` (an ``nn.Module`` with ``example_inputs``, a ``ModelSpec``, a zoo name, a
    ``file.py:factory`` or a model file) to ``target`` format and return the ``Artifact``: the model
    resolved here, then ``converters.deploy_model`` (cached by a content hash of weights, graph,
    options and tool versions under ``output_dir``, default ``$DEPLOYBENCH_CACHE`` or ``.deploybench-cache``)."""
    from .converters import deploy_model as convert

    return convert(model_spec(model, example_inputs=example_inputs), target, output_dir=output_dir,
                   precision=precision, cache=cache, **options)


__all__ = ["ModelSource", "deploy_model", "get_model", "is_rebuildable_ref", "model_from_artifact", "model_spec",
           "parse_inputs", "ref_with_inputs", "resolve_ref", "with_file_inputs"]
