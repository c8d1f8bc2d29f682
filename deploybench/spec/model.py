"""What a model is and what a converter makes of it: tensors, models, artifacts; the project's errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DeployBenchError(Exception):
    """The one project error: its message is one line that names the thing that is wrong and the fix."""


class NotSupported(DeployBenchError):
    """A cell asks for what this format, backend or CPU cannot do: nothing is broken, the cell is skipped."""


class PrecisionNotSupported(NotSupported):
    """A format or backend cannot express the asked precision."""


class ShapeNotSupported(NotSupported):
    """An artifact or backend cannot take the cell's input shape (a TFLite file fixed to batch 1)."""


# The built-in formats and backends are registered in ``converters.CONVERTERS`` and ``engines.ENGINES``;
# which backend runs which format is said only by each engine class (``InferenceEngine.formats``).
# ``int8ac`` is accuracy-aware int8: int8 with the layers that break the int8 tolerance kept in floating
# point (NNCF's accuracy control on OpenVINO, a sensitivity pass on ONNX Runtime). No dash in the name:
# cell ids are dash-separated.
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8ac")
# Precisions whose artifact is quantized to int8 (calibrated on ``converters.calibration`` samples).
INT8_PRECISIONS = ("int8", "int8ac")

STATUS_OK, STATUS_SKIPPED, STATUS_FAILED, STATUS_TIMEOUT = "ok", "skipped", "failed", "timeout"

_DTYPES = {"float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"}


def check_choice(kind: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise one line naming it and the choices."""
    if value not in choices:
        raise DeployBenchError(f"unknown {kind} {value!r}; choose from: {', '.join(choices)}")
    return value


def parse_csv(text: str | Sequence[str] | None) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']; a list passes through; None -> []."""
    if text is None:
        return []
    if isinstance(text, str):
        return [part.strip() for part in text.split(",") if part.strip()]
    return [str(part) for part in text]


def parse_fraction(text: str | float, what: str = "threshold") -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a one-line error naming ``what`` otherwise. A bare number of 1 or
    more ('5') is refused: read as a fraction it would mean 500 % and silently pass a 1.6x slower cell."""
    if isinstance(text, (int, float)):
        return float(text)
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DeployBenchError(f"{what} {text!r} is not a number; write 5% or 0.05") from None
    if not raw.endswith("%") and value >= 1:
        raise DeployBenchError(f"{what} {raw} is ambiguous: write {raw}% for a percentage, or a fraction "
                               "below 1 such as 0.05")
    return value


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output: shape (an int per fixed axis, a name per dynamic axis) and dtype.

    ``value_range`` bounds the seeded values of generated inputs: ``(0, vocab)`` for token ids.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise DeployBenchError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}; use one of {sorted(_DTYPES)}")
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """{axis index: axis name} for the axes whose size is not fixed."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, dims: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The shape with each named axis replaced from ``dims`` (a missing name means 1)."""
        dims = dims or {}
        return tuple(d if isinstance(d, int) else int(dims.get(d, 1)) for d in self.shape)

    def accepts(self, shape: Sequence[int]) -> bool:
        """True if an array of ``shape`` fits this spec (same rank, fixed axes equal)."""
        return len(shape) == len(self.shape) and all(
            isinstance(want, str) or want == got for want, got in zip(self.shape, shape)
        )

    def random(self, rng: np.random.Generator, dims: Mapping[str, int] | None = None) -> np.ndarray:
        """A seeded array of this spec: uniform in value_range, or standard normal for floats."""
        shape = self.concrete_shape(dims)
        if self.dtype.startswith(("int", "uint")) or self.dtype == "bool":
            low, high = self.value_range or (0, 2 if self.dtype == "bool" else 100)
            # a constant (=16000) given as (c, c): integers draw below HIGH, so the one value is c
            return rng.integers(int(low), max(int(high), int(low) + 1), size=shape).astype(self.dtype)
        if self.value_range is not None:
            low, high = self.value_range
            values = rng.uniform(low, high, size=shape)
        else:
            values = rng.standard_normal(size=shape)
        return values.astype(np.float32 if self.dtype == "bfloat16" else self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "value_range": list(self.value_range) if self.value_range else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        value_range = data.get("value_range")
        return cls(data["name"], tuple(data["shape"]), data.get("dtype", "float32"),
                   tuple(value_range) if value_range else None)


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x64x64' -> (1, 3, 64, 64), with a one-line error for anything else."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise DeployBenchError(f"bad input shape {text!r}: write positive sizes joined by 'x', e.g. 1x3x64x64")
    return shape


def parse_input(text: str) -> TensorSpec:
    """'input_ids:1x32:int64:0..1000' -> a TensorSpec with a dynamic batch axis: NAME:SHAPE[:DTYPE[:VALUES]].

    VALUES is ``LOW..HIGH`` (integers: HIGH excluded, as token ids below a vocabulary size), ``mask``
    (0 or 1) or ``=VALUE`` (always VALUE, e.g. a sample rate); floats default to standard normal noise."""
    name, shape, dtype, value_range = parse_input_parts(text)
    if shape is None:
        raise DeployBenchError(f"bad --input {text!r}: a factory's input needs its SHAPE, e.g. input_ids:1x32:int64")
    return TensorSpec(name, ("batch", *shape[1:]), dtype or "float32", value_range)


def parse_input_parts(text: str) -> tuple[str, tuple[int, ...] | None, str | None, tuple[float, float] | None]:
    """NAME:SHAPE[:DTYPE[:VALUES]] -> (name, shape, dtype, value range), None for a part left empty: for an
    exported file's input an empty SHAPE or DTYPE keeps the file's own (``sr::int64:=16000``, a scalar)."""
    parts = str(text).split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0].strip():
        raise DeployBenchError(f"bad --input {text!r}: write NAME:SHAPE[:DTYPE[:VALUES]], e.g. "
                               "input_ids:1x32:int64:0..1000 or attention_mask:1x32:int64:mask")
    name, shape_text = parts[0].strip(), parts[1].strip()
    dtype = parts[2].strip() if len(parts) > 2 and parts[2].strip() else None
    if dtype is not None and dtype not in _DTYPES:
        raise DeployBenchError(f"bad --input {text!r}: unknown dtype {dtype!r}; one of {', '.join(sorted(_DTYPES))}")
    values = parts[3].strip() if len(parts) > 3 else ""
    try:
        shape = parse_shape(shape_text) if shape_text else None
    except DeployBenchError as exc:
        raise DeployBenchError(f"bad --input {text!r}: {exc}") from None
    try:
        value_range = None
        if values == "mask":
            value_range = (0.0, 2.0)
        elif values.startswith("="):
            constant = float(values[1:])
            value_range = (constant, constant + 1 if (dtype or "").startswith(("int", "uint")) else constant)
        elif values:
            low, sep, high = values.partition("..")
            value_range = (float(low), float(high)) if sep else None
            if value_range is None or value_range[0] > value_range[1]:
                raise ValueError
    except ValueError:
        raise DeployBenchError(f"bad values {values!r} in --input {text!r}: write LOW..HIGH, mask or =VALUE") from None
    return name, shape, dtype, value_range


def input_text(spec: TensorSpec, batch: int = 1) -> str:
    """The ``parse_input`` form of ``spec`` (its batch axis at ``batch``): how a ref carries it to a worker."""
    shape = "x".join(str(batch if isinstance(d, str) else d) for d in spec.shape)
    low_high = spec.value_range
    values = "" if low_high is None else f":{low_high[0]:g}..{low_high[1]:g}"
    return f"{spec.name}:{shape}:{spec.dtype}{values}"


@dataclass
class ModelSpec:
    """A source network plus what it needs to run.

    ``factory`` builds the ``torch.nn.Module`` (None for a bring-your-own artifact, whose file is
    ``source_path`` in ``source_format``). ``dims`` gives the default size of each dynamic axis.
    ``eval_data()`` returns (inputs, labels) of a held-out set for the task metric;
    ``calibration_data(n)`` returns up to n input dicts of real data for int8 calibration.
    ``ref`` is how a fresh process finds the same model again: a zoo name, ``path.py:factory``
    (plus shapes) or an artifact path. ``tolerances`` overrides the default accuracy tolerances
    per precision for this model (``{"int8": {"top1_agreement": 0.0}}``), for a model whose
    outputs make a default criterion meaningless; the run's own overrides still win.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    factory: Callable[[], Any] | None = None
    output_names: tuple[str, ...] = ("output",)
    task: str = "generic"  # "classification", "detection" or "generic"
    dims: dict[str, int] = field(default_factory=lambda: {"batch": 1})
    eval_data: Callable[[], tuple[dict[str, np.ndarray], np.ndarray]] | None = None
    calibration_data: Callable[[int], list[dict[str, np.ndarray]]] | None = None
    source_path: Path | None = None
    source_format: str = "torch"
    ref: str | None = None
    description: str = ""
    task_config: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    calibration_source: str = ""  # where a user's calibration data came from (file, digest): part of the cache key
    _module: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        self.output_names = tuple(self.output_names)
        if self.factory is None and self.source_path is None:
            raise DeployBenchError(f"model {self.name!r}: give a factory (nn.Module) or a source_path (artifact)")
        if self.ref is None:
            self.ref = str(self.source_path) if self.source_path else self.name

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def build(self):
        """The ``nn.Module`` in eval mode, built once and kept."""
        if self.factory is None:
            raise DeployBenchError(f"model {self.name!r} is a {self.source_format} file with no PyTorch source")
        if self._module is None:
            module = self.factory()
            module.eval()
            self._module = module
        return self._module

    def make_inputs(self, seed: int = 0, dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Seeded inputs, identical for every backend given the same seed and dims."""
        rng = np.random.default_rng(seed)
        merged = {**self.dims, **(dims or {})}
        return {t.name: t.random(rng, merged) for t in self.inputs}


@dataclass
class Artifact:
    """A converted model on disk and what is known about it.

    ``path`` is the main file (``.onnx``, ``.xml``, ``.tflite``, ``.mlpackage`` directory, ``.plan``);
    ``files`` every file that belongs to it. ``precision`` is what the artifact holds;
    ``metadata`` records what the conversion did (opset, tool versions, fixed dynamic axes,
    ops left in fp32, where NMS runs, the reference used, ...).
    """

    format: str
    path: Path
    precision: str = "fp32"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    files: tuple[Path, ...] = ()
    conversion_s: float = 0.0
    cached: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    # A ``torch`` artifact of a model built in this process carries its nn.Module: it has no file.
    module: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.path = Path(self.path)
        self.inputs, self.outputs = tuple(self.inputs), tuple(self.outputs)
        self.files = tuple(Path(f) for f in self.files) or (self.path,)

    @property
    def size_bytes(self) -> int:
        total = 0
        for f in self.files:
            if f.is_dir():
                total += sum(p.stat().st_size for p in f.rglob("*") if p.is_file())
            elif f.exists():
                total += f.stat().st_size
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "path": str(self.path), "precision": self.precision,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "files": [str(f) for f in self.files], "conversion_s": self.conversion_s,
            "size_bytes": self.size_bytes, "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(
            format=data["format"], path=Path(data["path"]), precision=data.get("precision", "fp32"),
            inputs=tuple(TensorSpec.from_dict(t) for t in data.get("inputs", ())),
            outputs=tuple(TensorSpec.from_dict(t) for t in data.get("outputs", ())),
            files=tuple(Path(f) for f in data.get("files", ())), conversion_s=data.get("conversion_s", 0.0),
            metadata=dict(data.get("metadata", {})),
        )
