"""A cell and what it measured: the ``Result`` every entry point writes and every report reads."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploybench.spec.model import STATUS_OK


# How requests reach a cell, named as MLPerf LoadGen names them: one at a time (latency), all at once
# (the highest throughput), or arriving at random at a target rate (latency under load).
SINGLE_STREAM, OFFLINE, SERVER = "single-stream", "offline", "server"
SCENARIOS = (SINGLE_STREAM, OFFLINE, SERVER)
# Compile for the cell's shape, as a deployment with a fixed input does; or keep the dynamic axes.
STATIC, DYNAMIC = "static", "dynamic"


@dataclass(frozen=True, order=True)
class Cell:
    """One (model, format, backend, precision), at the shape, threads and scenario it names.

    ``dims`` sets dynamic axes (``(("batch", 8),)``: batch 8; an axis not named takes the model's
    default); ``threads`` 0 leaves the thread count to the run's setting (or the backend);
    ``shapes`` is ``static`` (compiled for the cell's shape) or ``dynamic``; ``prune`` is the fraction of
    conv channels structured pruning removes (0: the model as it is); ``calibration`` the number of int8
    calibration samples (0: the converter's default); ``target`` names the device it runs on (``run --target
    pi``), empty for this machine. The id names only what differs from the defaults:
    ``resnet18-onnx-openvino-fp32``, ``resnet18-onnx-openvino-fp32-b8-t2``,
    ``tiny_transformer-onnx-onnxruntime-fp32-seq256-dynamic-offline``, ``resnet18-onnx-openvino-int8-pr30-cal256``,
    ``resnet18-onnx-onnxruntime-fp32@pi``.
    """

    model: str
    format: str
    backend: str
    precision: str
    dims: tuple[tuple[str, int], ...] = ()
    threads: int = 0
    shapes: str = STATIC
    scenario: str = SINGLE_STREAM
    prune: float = 0.0
    calibration: int = 0
    target: str = ""

    def __post_init__(self):
        object.__setattr__(self, "dims", tuple((str(name), int(size)) for name, size in self.dims))
        object.__setattr__(self, "prune", float(self.prune))
        object.__setattr__(self, "calibration", int(self.calibration))

    @property
    def id(self) -> str:
        where = f"@{self.target}" if self.target else ""
        return "-".join([self.model, self.format, self.backend, self.precision, *self._variant_parts()]) + where

    @property
    def variant(self) -> str:
        """What sets this cell apart from its model's plain cell, e.g. ``b8 t2 offline @pi``; empty when nothing."""
        return " ".join(self._variant_parts() + ([f"@{self.target}"] if self.target else []))

    def _variant_parts(self) -> list[str]:
        parts = [f"b{size}" if name == "batch" else f"{name}{size}" for name, size in self.dims]
        parts += [f"t{self.threads}"] if self.threads else []
        parts += [self.shapes] if self.shapes != STATIC else []
        parts += [self.scenario] if self.scenario != SINGLE_STREAM else []
        parts += [f"pr{self.prune * 100:g}"] if self.prune else []
        return parts + ([f"cal{self.calibration}"] if self.calibration else [])

    @property
    def dim_sizes(self) -> dict[str, int]:
        return dict(self.dims)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dims"] = dict(self.dims)
        for name in ("prune", "calibration"):  # an unpruned, default-calibrated cell reads as it did before
            if not data[name]:
                del data[name]
        if not self.target:  # a cell of this machine reads as it did before cells had targets
            del data["target"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        """A cell from a results file; files written before cells had dims, threads, shapes, a scenario, a
        prune amount and a calibration size read as the plain cell they measured."""
        return cls(data["model"], data["format"], data["backend"], data["precision"],
                   dims=tuple((data.get("dims") or {}).items()), threads=int(data.get("threads") or 0),
                   shapes=data.get("shapes") or STATIC, scenario=data.get("scenario") or SINGLE_STREAM,
                   prune=float(data.get("prune") or 0.0), calibration=int(data.get("calibration") or 0),
                   target=str(data.get("target") or ""))


@dataclass
class LatencyStats:
    """Steady-state latency in milliseconds over ``n`` samples."""

    n: int
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float
    stdev: float
    cv: float
    iqr: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class Accuracy:
    """Agreement of a cell's outputs with the reference, and the task metric on held-out data."""

    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    max_rel_error: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    metric: str | None = None
    metric_value: float | None = None
    atol_to_pass: float | None = None
    rtol_to_pass: float | None = None
    reference: str | None = None  # which run the errors are against, e.g. "torch fp32"
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)
    # How many real held-out inputs the errors, cosine and top-1 agreement were computed on (None: on
    # seeded or given inputs), so a results file says whether its agreement figures rest on real data.
    held_out_inputs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ToleranceCheck:
    """Whether a cell's accuracy met its precision's tolerance, and the figures that decided it."""

    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "message": self.message}


# The pipeline stages, in order: a cell that did not end ``ok`` names the stage that stopped it.
STAGES = ("resolve", "reference", "availability", "convert", "memory", "load", "first_inference", "time",
          "accuracy")

# Typed fields that results files of deploybench 0.1.0 kept in ``extra``: read from there when absent.
_FIELDS_ONCE_IN_EXTRA = ("backend_version", "precision_ran", "stopped_by", "warmup_count", "load_rss_mb",
                         "model_ref", "artifact_path", "seed", "machine_id")


@dataclass
class Result:
    """What one cell measured. ``status`` is ok / skipped / failed / timeout, with ``reason`` and the
    ``stage`` of the pipeline that ended it.

    ``throughput_ips`` is items per second over the wall time of the timed loop (batch x calls /
    seconds), the same figure from every entry point. ``model_ref``, ``artifact_path`` and ``seed``
    are what a later process needs to measure this cell again (the gate's interleaved re-run), with
    ``dims_ran``: the size of every dynamic axis it ran at (the model's defaults and the cell's own).
    ``isolation`` says where the model code ran: ``worker`` (a process of its own) or
    ``in-process: <why>``. ``scenario_figures`` holds what an offline run (``OfflineResult``) or a server's
    rate search (``RateSearch``) measured, as a dict; a single-stream cell leaves it empty. ``extra`` holds backend-specific notes for people (what the runtime
    or the converter did); nothing reads it back.
    """

    cell: Cell
    status: str = STATUS_OK
    reason: str = ""
    stage: str = ""
    latency_ms: LatencyStats | None = None
    throughput_ips: float | None = None
    load_ms: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None
    load_rss_mb: float | None = None
    artifact_bytes: int | None = None
    conversion_s: float | None = None
    accuracy: Accuracy | None = None
    tolerance: ToleranceCheck | None = None
    unstable: bool = False
    stopped_by: str | None = None
    warmup_count: int | None = None
    backend_version: str | None = None
    precision_ran: str | None = None
    model_ref: str | None = None
    artifact_path: str | None = None
    seed: int = 0
    dims_ran: dict[str, int] = field(default_factory=dict)
    machine_id: str | None = None
    isolation: str = ""
    samples_ms: list[float] = field(default_factory=list)
    scenario_figures: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def passes_accuracy(self) -> bool:
        """False when the accuracy check ran and missed its tolerance; True when it passed or did not run."""
        return self.tolerance is None or self.tolerance.passed

    def not_run(self, status: str, stage: str, reason: str) -> Result:
        """Mark the cell skipped / failed / timeout at ``stage`` with a one-line ``reason``; returns self."""
        self.status, self.stage, self.reason = status, stage, reason
        return self

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        data = {**self.cell.to_dict()}
        for f in dataclasses.fields(self):
            if f.name in ("cell", "samples_ms"):
                continue
            value = getattr(self, f.name)
            data[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        if with_samples:
            data["samples_ms"] = list(self.samples_ms)
        return _finite(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        cell = Cell.from_dict(data)
        extra = dict(data.get("extra") or {})
        latency, accuracy, tolerance = data.get("latency_ms"), data.get("accuracy"), data.get("tolerance")
        if tolerance is None and isinstance(extra.get("tolerance"), Mapping):
            tolerance = extra.pop("tolerance")
        known = {f.name for f in dataclasses.fields(cls)} - {"cell", "latency_ms", "accuracy", "tolerance", "extra"}
        values = {name: data[name] for name in known if data.get(name) is not None}
        for name in _FIELDS_ONCE_IN_EXTRA:
            if name not in values and extra.get(name) is not None:
                values[name] = extra.pop(name)
        if "samples_ms" in values:
            values["samples_ms"] = list(values["samples_ms"])
        return cls(cell=cell, latency_ms=LatencyStats(**latency) if latency else None,
                   accuracy=Accuracy(**accuracy) if accuracy else None,
                   tolerance=ToleranceCheck(bool(tolerance.get("passed")), str(tolerance.get("message", "")))
                   if tolerance else None, extra=extra, **values)


def _finite(value):
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value
