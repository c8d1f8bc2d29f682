"""The ``InferenceEngine`` contract. Each backend implements only the ``_*_impl`` methods.

The base class owns what every backend must do the same way: checking the state (loaded or
not), checking inputs against the artifact's input specs (names, rank, fixed axes, dtype),
returning an ordered ``{name: numpy array}`` with the artifact's output names whatever the
backend, timing the load, and closing. A subclass never sees a malformed input.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .._imports import quiet_import
from ..spec import Artifact, DeployBenchError, PrecisionNotSupported, TensorSpec
from .requests import RequestPool, ThreadRequestPool

Inputs = np.ndarray | Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class InferenceEngine(abc.ABC):
    """Load an artifact on one backend and run it.

    Usage::

        with create_deployer(artifact, backend="onnxruntime", threads=2) as engine:
            outputs = engine.infer(inputs)        # {"logits": ndarray, ...}

    ``infer`` takes one array (for a single-input model) or a mapping name -> array and returns an
    ordered mapping name -> ``numpy.ndarray`` (float outputs as float32) in the artifact's output
    order. ``inputs`` / ``outputs`` describe the tensors; ``load_ms`` is how long loading took.
    """

    backend: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    # Python module whose import proves the backend is installed, and whose version is reported.
    requires: ClassVar[str] = ""
    # True when the backend compiles for the input shapes it is given (``static_dims``) and runs a
    # dynamic axis slower than a fixed one; False when the artifact's own shapes are what runs.
    compiles_for_shapes: ClassVar[bool] = False

    def __init__(self, artifact: Artifact, precision: str | None = None, threads: int | None = None,
                 static_dims: Mapping[str, int] | None = None, **options: Any):
        if artifact.format not in self.formats:
            raise DeployBenchError(
                f"backend {self.backend!r} cannot run {artifact.format!r} artifact {artifact.path}; "
                f"it runs: {', '.join(self.formats)}")
        self.artifact = artifact
        self.precision = precision or artifact.precision
        if self.precision not in self.precisions:
            raise PrecisionNotSupported(
                f"backend {self.backend!r} has no {self.precision!r} mode; it runs: {', '.join(self.precisions)}")
        self.threads = threads
        # Sizes of the dynamic axes to compile for, as a deployment with a fixed input does; None keeps
        # the axes dynamic. Then every call must bring exactly those shapes.
        self.static_dims = dict(static_dims) if static_dims is not None else None
        self.options = options
        self.load_ms: float | None = None
        # What actually ran, when it differs from what was asked (ops left in fp32, a device fallback).
        self.runtime_notes: dict[str, Any] = {}
        self._loaded = False

    # ---- availability -------------------------------------------------------------------
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(True, version) if this backend can run here, else (False, the reason why not)."""
        try:
            module = quiet_import(cls.requires)
        except Exception as exc:  # ImportError, or a broken install raising anything else
            return False, f"{cls.requires} is not importable here ({type(exc).__name__}: {exc})".splitlines()[0]
        problem = cls._platform_problem()
        if problem:
            return False, problem
        return True, str(getattr(module, "__version__", "unknown"))

    @classmethod
    def _platform_problem(cls) -> str | None:
        """A reason this backend cannot run on this machine although it imports (no GPU, not macOS)."""
        return None

    # ---- lifecycle ----------------------------------------------------------------------
    def load(self) -> InferenceEngine:
        """Load the artifact; a second call does nothing. Returns self."""
        if not self._loaded:
            start = time.perf_counter()
            self._load_impl()
            self.load_ms = (time.perf_counter() - start) * 1e3
            self._note_shapes()
            self._loaded = True
        return self

    def close(self) -> None:
        if self._loaded:
            self._close_impl()
            self._loaded = False

    def __enter__(self) -> InferenceEngine:
        return self.load()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def loaded(self) -> bool:
        return self._loaded

    # ---- metadata -----------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.artifact.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.artifact.outputs

    def static_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """{input name: the shape compiled for} when ``static_dims`` was given, else None."""
        if self.static_dims is None:
            return None
        return {t.name: t.concrete_shape(self.static_dims) for t in self.inputs}

    def _note_shapes(self) -> None:
        """Say in ``runtime_notes`` which shapes the backend compiled for: a cell records what ran."""
        static, dynamic = self.static_shapes(), any(t.dynamic_axes for t in self.inputs)
        if not self.compiles_for_shapes:
            self.runtime_notes["shapes"] = "as the artifact declares them"
        elif static is None or not dynamic:
            self.runtime_notes["shapes"] = "dynamic" if dynamic else "static"
        else:
            self.runtime_notes["shapes"] = "static " + ", ".join(
                f"{name} {'x'.join(map(str, shape))}" for name, shape in static.items())

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    # ---- inference ----------------------------------------------------------------------
    def infer(self, inputs: Inputs) -> Outputs:
        """Run once. Inputs are checked against the input specs; outputs come back by name."""
        if not self._loaded:
            raise DeployBenchError(f"{self.backend} engine for {self.artifact.path} is not loaded: call load() "
                                   "or use it as a context manager")
        feed = self.check_inputs(inputs)
        raw = self._infer_impl(feed)
        return self._standardize(raw)

    # ---- parallel requests --------------------------------------------------------------
    # Engine options that make a loaded engine serve throughput rather than one stream's latency
    # (OpenVINO: the THROUGHPUT hint and its streams); the offline and server scenarios load with them.
    throughput_options: ClassVar[dict[str, Any]] = {}

    def open_requests(self, n: int | None = None, outputs: bool = False) -> RequestPool:
        """A ``RequestPool`` keeping up to ``n`` requests in flight (None: the backend's own choice).

        The base class runs one request at a time whatever ``n`` asks, since it cannot know whether a
        backend's calls may overlap; backends that can run several override ``_open_requests_impl``.
        What ran (requests, and the backend's streams or threads) goes to ``runtime_notes["requests"]``.
        Do not call ``infer`` on this engine while a pool is open.
        """
        if not self._loaded:
            raise DeployBenchError(f"{self.backend} engine for {self.artifact.path} is not loaded: call load() "
                                   "before open_requests")
        if n is not None and n < 1:
            raise DeployBenchError(f"open_requests({n}): ask for at least 1 request, or None for the backend's choice")
        pool = self._open_requests_impl(n, outputs)
        pool.notes.setdefault("requests_asked", n)
        self.runtime_notes["requests"] = dict(pool.notes)
        return pool

    def _open_requests_impl(self, n: int | None, outputs: bool) -> RequestPool:
        pool = ThreadRequestPool(self, 1, self._infer_impl, want_outputs=outputs)
        pool.notes["parallel"] = f"one request at a time: the {self.backend} engine does not overlap calls"
        return pool

    def check_inputs(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Name a lone array, and check every array's name, rank, fixed axes and dtype."""
        specs = {t.name: t for t in self.inputs}
        if isinstance(inputs, np.ndarray):
            if len(specs) != 1:
                raise DeployBenchError(f"{self.artifact.path.name} takes {len(specs)} inputs "
                                       f"({', '.join(specs)}): pass a mapping name -> array")
            inputs = {next(iter(specs)): inputs}
        unknown = set(inputs) - set(specs)
        missing = set(specs) - set(inputs)
        if unknown or missing:
            raise DeployBenchError(f"{self.artifact.path.name} takes inputs {sorted(specs)}; "
                                   f"got {sorted(inputs)}")
        feed = {}
        static = self.static_shapes() if self.compiles_for_shapes else None
        for name, spec in specs.items():
            array = np.asarray(inputs[name])
            if not spec.accepts(array.shape):
                raise DeployBenchError(f"input {name!r} of {self.artifact.path.name} has shape {list(array.shape)}; "
                                       f"it takes {list(spec.shape)}")
            if static is not None and tuple(array.shape) != static[name]:
                raise DeployBenchError(f"input {name!r} has shape {list(array.shape)}, but {self.backend} compiled "
                                       f"{self.artifact.path.name} for {list(static[name])}: load it with the "
                                       "static_dims of the inputs you pass, or static_dims=None for dynamic axes")
            want = np.float32 if spec.dtype == "bfloat16" else np.dtype(spec.dtype)
            if array.dtype != want:
                if np.issubdtype(array.dtype, np.floating) != np.issubdtype(want, np.floating):
                    raise DeployBenchError(f"input {name!r} of {self.artifact.path.name} is {array.dtype}; "
                                           f"it takes {spec.dtype}")
                array = array.astype(want)
            # not np.ascontiguousarray, which turns a scalar (a sample rate) into shape (1,)
            feed[name] = np.require(array, requirements="C")
        return feed

    def _standardize(self, raw: Mapping[str, Any] | list | tuple) -> Outputs:
        names = self.output_names
        if isinstance(raw, Mapping):
            values = [raw[n] for n in names] if names and all(n in raw for n in names) else list(raw.values())
        else:
            values = list(raw)
        if names and len(values) != len(names):
            raise DeployBenchError(f"{self.backend} returned {len(values)} outputs for {self.artifact.path.name}; "
                                   f"expected {len(names)} ({', '.join(names)})")
        out: Outputs = {}
        for i, value in enumerate(values):
            array = np.asarray(value)
            if array.dtype.kind == "f" and array.dtype != np.float32:
                array = array.astype(np.float32)
            out[names[i] if names else f"output_{i}"] = array
        return out

    # ---- task outputs -------------------------------------------------------------------
    def predict(self, images, **options):
        """Task output for raw images: ``Detections`` per image for detectors, ``Classifications``
        for classifiers. Pre- and post-processing are shared by every backend (``deploybench.tasks``)."""
        from ..tasks import predict

        return predict(self, images, **options)

    # ---- what a backend implements ------------------------------------------------------
    @abc.abstractmethod
    def _load_impl(self) -> None: ...

    @abc.abstractmethod
    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, Any] | list | tuple: ...

    def _close_impl(self) -> None:
        """Release the runtime's objects; the default drops nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.artifact.format}:{self.artifact.path.name} {self.precision}>"


def kept_in_float(artifact: Artifact, quantized: str, floating: str = "fp32") -> str:
    """What an accuracy-aware int8 (``int8ac``) artifact runs: ``quantized``, except the ops its converter kept
    in floating point to hold the int8 tolerance (``metadata["ops_in_fp32"]``), named; ``floating`` is the
    precision they run in (fp32, unless a backend was told to run its float ops in bf16)."""
    kept = list(artifact.metadata.get("ops_in_fp32") or [])
    if not kept:
        return f"{quantized}: accuracy-aware, no op needed to stay in floating point"
    shown = ", ".join(kept[:6]) + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")
    return f"{quantized}; {len(kept)} op(s) kept in {floating} to hold the int8 tolerance: {shown}"
