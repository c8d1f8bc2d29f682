"""The matrix: plan every compatible (model, format, backend, precision) cell, run each, keep the results.

A cell never takes the run down: a backend that is missing is ``skipped`` with its reason, a
conversion or inference error is ``failed`` with a one-line reason, and a backend that crashes or
hangs is caught by the memory child (run first, as a canary) as ``failed`` / ``timeout``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.spec import (BACKEND_FORMATS, FORMAT_BACKENDS, PRECISIONS, STATUS_FAILED, STATUS_SKIPPED,
                    STATUS_TIMEOUT, Cell, DeployBenchError, ModelSpec, PrecisionNotSupported, Result)

from deploybench.harness.results.matrix import SCHEMA, Matrix, plain_table  # noqa: F401 - re-exported

# Formats a bring-your-own artifact can be converted to, besides running as it is.
ARTIFACT_CONVERSIONS: dict[str, tuple[str, ...]] = {"onnx": ("openvino", "tensorrt")}

# A precision a format or backend cannot express is a skipped cell (nothing is broken), not a failed
# one: converters and engines raise ``PrecisionNotSupported``; these words catch a third-party
# converter or engine that raises a plain DeployBenchError saying so.
_UNSUPPORTED_PRECISION = re.compile(
    r"not supported|unsupported|does not support|doesn't support|has no .*mode|only supports|only runs|"
    r"cannot (?:run|quantize|convert) .*(?:fp16|bf16|int8)|it runs:", re.IGNORECASE)


@dataclass
class RunSettings:
    """How each cell is measured. Validated on creation; every error says how to fix it.

    ``threads`` None lets each backend choose; ``dims`` overrides the size of dynamic axes
    (e.g. {"batch": 8}); ``tolerances`` overrides ``precision.TOLERANCES`` per precision.
    """

    threads: int | None = None
    seed: int = 0
    warmup_count: int = 10
    warmup_s: float = 0.2
    min_samples: int = 30
    min_time_s: float = 1.0
    max_samples: int = 100_000
    max_time_s: float = 60.0
    timeout_s: float = 300.0
    memory: bool = True
    memory_runs: int = 10
    cache_dir: str | None = None
    dims: dict[str, int] = field(default_factory=dict)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise DeployBenchError(f"threads {self.threads!r} must be a positive integer, or None to let "
                                   "each backend choose")
        if self.warmup_count < 0 or self.warmup_s < 0:
            raise DeployBenchError(f"warm-up count {self.warmup_count} and time {self.warmup_s} s must be >= 0")
        if self.min_samples < 1:
            raise DeployBenchError(f"min_samples {self.min_samples} must be at least 1 (e.g. 30)")
        if self.min_time_s < 0:
            raise DeployBenchError(f"min_time_s {self.min_time_s} must be >= 0 (e.g. 1.0)")
        if self.max_samples < self.min_samples:
            raise DeployBenchError(f"max_samples {self.max_samples} is below min_samples {self.min_samples}; "
                                   "raise max_samples")
        if self.max_time_s < self.min_time_s or self.max_time_s <= 0:
            raise DeployBenchError(f"max_time_s {self.max_time_s} must be positive and >= min_time_s "
                                   f"{self.min_time_s}")
        if self.timeout_s <= 0:
            raise DeployBenchError(f"timeout_s {self.timeout_s} must be positive (seconds per memory child)")
        if self.memory_runs < 1:
            raise DeployBenchError(f"memory_runs {self.memory_runs} must be at least 1")
        bad_dims = {k: v for k, v in self.dims.items() if not isinstance(v, int) or v < 1}
        if bad_dims:
            raise DeployBenchError(f"dims {bad_dims} must map axis names to positive integers, e.g. {{'batch': 8}}")
        unknown = set(self.tolerances) - set(PRECISIONS)
        if unknown:
            raise DeployBenchError(f"tolerances for unknown precision(s) {sorted(unknown)}; use {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- planning -------------------------------------------------------------------------------------
def _engine_precisions(backend: str) -> tuple[str, ...] | None:
    """The precisions the backend's engine class offers, or None when its module cannot be imported."""
    from deploybench.engines import engine_class

    try:
        return tuple(engine_class(backend).precisions)
    except DeployBenchError:
        raise
    except Exception:  # the engine module is missing or broken: run_cell reports it as a skip
        return None


def _check_backends(backends: Sequence[str]) -> None:
    from deploybench.engines import ENGINES

    known = ENGINES.names()
    for backend in backends:
        if backend not in known:
            raise DeployBenchError(f"unknown backend {backend!r}; choose from: {', '.join(known)}")


def cell_formats(spec: ModelSpec, backend: str) -> tuple[str, ...]:
    """The formats ``backend`` runs for ``spec``: its native formats from a PyTorch source; for an artifact,
    the artifact's own format (if the backend reads it) and what the artifact converts to."""
    if spec.factory is not None:
        return BACKEND_FORMATS.get(backend, ())
    source = spec.source_format
    reachable = {source, *ARTIFACT_CONVERSIONS.get(source, ())}
    native = [f for f in BACKEND_FORMATS.get(backend, ()) if f in reachable]
    if backend in FORMAT_BACKENDS.get(source, ()) and source not in native:
        native.append(source)
    return tuple(native)


def plan_cells(specs: Iterable[ModelSpec], backends: Sequence[str], precisions: Sequence[str],
               formats: Sequence[str] | None = None, include_unsupported: bool = False) -> list[Cell]:
    """Every compatible cell, in model / backend / format / precision order. Builds and converts nothing.

    Precisions are filtered by each backend's engine class, unless ``include_unsupported``: then
    those cells stay, for ``run_cell`` to report as skipped with the reason (a full matrix shows
    every asked cell). An unknown backend or precision is a one-line ``DeployBenchError`` naming
    the known ones.
    """
    _check_backends(backends)
    for precision in precisions:
        if precision not in PRECISIONS:
            raise DeployBenchError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    cells: list[Cell] = []
    for spec in specs:
        for backend in backends:
            offered = _engine_precisions(backend)
            for fmt in cell_formats(spec, backend):
                if formats is not None and fmt not in formats:
                    continue
                for precision in precisions:
                    if include_unsupported or offered is None or precision in offered:
                        cells.append(Cell(spec.name, fmt, backend, precision))
    return list(dict.fromkeys(cells))


def select_shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard ``index`` of ``count``, numbered from 1 as CI matrices number their jobs.

    Chosen by a stable hash of ``cell.id``, so the same cell lands in the same shard on every
    machine, and the shards partition the cells."""
    if count < 1 or not 1 <= index <= count:
        raise DeployBenchError(f"shard {index}/{count} is out of range: use 1 <= index <= count, e.g. 1/4")
    return [c for c in cells if int(hashlib.sha256(c.id.encode()).hexdigest()[:16], 16) % count == index - 1]


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4): shard i of n, 1 <= i <= n; a one-line error for anything else.

    The CLI's ``--shard`` and the pytest plugin's ``--shard`` both read it, so a CI matrix job
    numbered i runs the same cells whichever of the two it calls."""
    index, _, count = str(text).partition("/")
    try:
        pair = int(index), int(count)
    except ValueError:
        pair = (0, 0)
    if pair[1] < 1 or not 1 <= pair[0] <= pair[1]:
        raise DeployBenchError(f"bad --shard {text!r}: write i/n with 1 <= i <= n, e.g. 1/4")
    return pair


# ---- running one cell -----------------------------------------------------------------------------
def _one_line(exc: BaseException, with_type: bool = False) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, DeployBenchError) and not with_type:
        return message or "DeployBenchError"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _is_unsupported_precision(exc: BaseException, precision: str) -> bool:
    if isinstance(exc, PrecisionNotSupported):
        return True
    if not isinstance(exc, DeployBenchError) or precision == "fp32":
        return False
    message = str(exc)
    return precision in message and bool(_UNSUPPORTED_PRECISION.search(message))


def _rebuildable_ref(spec: ModelSpec) -> str | None:
    """The ref a fresh process can rebuild the PyTorch model from, or None (a module made in memory)."""
    from deploybench.models import MODELS

    ref = spec.ref or ""
    return ref if ref in MODELS.names() or ".py:" in ref else None


def _artifact_notes(artifact) -> dict[str, Any]:
    keep = ("fixed_axes", "fixed_dims", "dynamic_axes", "fp32_ops", "ops_in_fp32", "calibration",
            "calibration_source", "reference", "opset", "nms", "compress_to_fp16", "inference_precision",
            "quantization")
    notes = {k: v for k, v in artifact.metadata.items() if k in keep}
    notes["cached"] = artifact.cached
    return notes


def _convert(spec: ModelSpec, cell: Cell, settings: RunSettings):
    from deploybench.converters import deploy_model, torch_artifact

    if cell.format == "torch":
        return torch_artifact(spec, precision=cell.precision)
    return deploy_model(spec, cell.format, output_dir=settings.cache_dir, precision=cell.precision)


def run_cell(spec: ModelSpec, cell: Cell, settings: RunSettings | None = None, reference=None,
             inputs: Mapping | None = None) -> Result:
    """Measure one cell and return its ``Result``; any error becomes a ``failed`` result, never an exception.

    Steps: availability (else ``skipped``), conversion (cached), the memory child (canary: a crash
    or hang ends the cell as ``failed`` / ``timeout``), then in-process load, first inference,
    steady-state latency and accuracy against ``reference`` (made from ``spec`` when None).
    """
    from deploybench.engines import backend_availability, engine_class

    settings = settings or RunSettings()
    result = Result(cell=cell)
    try:
        available, detail = backend_availability(cell.backend)
    except Exception as exc:
        available, detail = False, _one_line(exc)
    if not available:
        result.status, result.reason = STATUS_SKIPPED, detail
        return result
    result.extra["backend_version"] = detail
    offered = engine_class(cell.backend).precisions
    if cell.precision not in offered:
        result.status = STATUS_SKIPPED
        result.reason = f"backend {cell.backend} has no {cell.precision} mode; it runs: {', '.join(offered)}"
        return result

    inputs = dict(inputs) if inputs is not None else spec.make_inputs(seed=settings.seed, dims=settings.dims)
    own_reference = None
    engine = None
    try:
        start = time.perf_counter()
        try:
            artifact = _convert(spec, cell, settings)
        except Exception as exc:
            if _is_unsupported_precision(exc, cell.precision):
                result.status, result.reason = STATUS_SKIPPED, _one_line(exc)
            else:
                result.status = STATUS_FAILED
                result.reason = f"conversion to {cell.format} failed: {_one_line(exc, with_type=True)}"
            return result
        result.conversion_s = artifact.conversion_s if artifact.conversion_s else \
            (0.0 if artifact.cached else time.perf_counter() - start)
        result.artifact_bytes = artifact.size_bytes if artifact.files and artifact.path.exists() else None
        # What the gate's interleaved mode needs to run this cell again beside a newer one.
        result.extra["model_ref"] = spec.ref
        if artifact.files and artifact.path.exists():
            result.extra["artifact_path"] = str(artifact.path)
        result.extra["artifact"] = _artifact_notes(artifact)

        if settings.memory:
            stop = _measure_memory(spec, cell, artifact, settings, inputs, result)
            if stop:
                return result

        from deploybench.engines import create_deployer
        from deploybench.harness.measure.accuracy import check_tolerance, make_reference
        from deploybench.harness.measure.timing import benchmark_inference, time_first_inference

        options = {"module": spec.build()} if cell.format == "torch" else {}
        engine = create_deployer(artifact, backend=cell.backend, precision=cell.precision,
                                 threads=settings.threads, **options)
        result.load_ms = engine.load_ms
        _, result.first_inference_ms = time_first_inference(engine, inputs)
        timing = benchmark_inference(
            engine, inputs, warmup_count=settings.warmup_count, warmup_s=settings.warmup_s,
            min_samples=settings.min_samples, min_time_s=settings.min_time_s, max_samples=settings.max_samples,
            max_time_s=settings.max_time_s, first_inference_ms=result.first_inference_ms)
        result.latency_ms, result.samples_ms = timing.stats, timing.samples_ms
        result.throughput_ips, result.unstable = timing.throughput_ips, timing.unstable
        result.extra["stopped_by"] = timing.stopped_by
        result.extra["warmup_count"] = timing.warmup_count
        if spec.task == "detection":
            _time_end_to_end(engine, spec, result)

        from deploybench.harness.measure.accuracy import benchmark_precision

        if reference is None:
            reference = own_reference = make_reference(spec)
        result.accuracy = benchmark_precision(engine, reference, inputs, spec=spec, dims=settings.dims)
        passed, message = check_tolerance(result.accuracy, cell.precision,
                                          {**spec.tolerances.get(cell.precision, {}),
                                           **settings.tolerances.get(cell.precision, {})})
        result.extra["tolerance"] = {"passed": passed, "message": message}
        for key in ("detection", "detection_agreement"):
            if key in result.accuracy.per_output:
                result.extra[key] = dict(result.accuracy.per_output[key])
        result.extra["runtime_notes"] = dict(engine.runtime_notes)
        # What computed, when it is not plainly the cell's precision (ops left in fp32, a fallback).
        result.extra["precision_ran"] = engine.runtime_notes.get("precision_ran", cell.precision)
    except Exception as exc:
        if _is_unsupported_precision(exc, cell.precision):
            result.status, result.reason = STATUS_SKIPPED, _one_line(exc)
        else:
            result.status, result.reason = STATUS_FAILED, _one_line(exc)
    finally:
        if engine is not None:
            try:
                engine.close()
            except Exception as exc:  # a close error must not hide what was measured
                result.extra["close_error"] = _one_line(exc)
        if own_reference is not None:
            own_reference.close()
    return result


def _time_end_to_end(engine, spec: ModelSpec, result: Result) -> None:
    """A detector's latency end to end (pre + inference + post) and per stage into ``result.extra``; a
    failure there is recorded as ``extra["e2e_error"]``: the inference figures already measured stand."""
    from deploybench.harness.measure.detection import end_to_end_latency

    try:
        result.extra.update(end_to_end_latency(engine, spec))
    except Exception as exc:
        result.extra["e2e_error"] = _one_line(exc, with_type=True)


def _measure_memory(spec: ModelSpec, cell: Cell, artifact, settings: RunSettings, inputs, result: Result) -> bool:
    """Run the memory child and fill ``result``; True when the cell must stop (the child crashed or hung)."""
    from deploybench.harness.measure.memory import benchmark_memory_usage

    model_ref = _rebuildable_ref(spec) if cell.format == "torch" else None
    if cell.format == "torch" and model_ref is None and not artifact.path.exists():
        # A module built in this process (a test, a notebook) cannot be rebuilt by a fresh one:
        # the child loads its torch.export program instead.
        from deploybench.converters import deploy_model

        try:
            exported = deploy_model(spec, "torch", output_dir=settings.cache_dir, precision="fp32")
        except Exception as exc:
            result.extra["memory"] = f"not measured: no ref a fresh process can rebuild and {_one_line(exc)}"
            return False
        artifact = dataclasses.replace(exported, precision=cell.precision)
        result.extra["memory"] = "measured on the torch.export program (.pt2) of the in-memory module"
    memory = benchmark_memory_usage(artifact, cell.backend, cell.precision, inputs, threads=settings.threads,
                                    runs=settings.memory_runs, timeout_s=settings.timeout_s, model_ref=model_ref)
    if memory.status in (STATUS_FAILED, STATUS_TIMEOUT):
        result.status, result.reason = memory.status, memory.reason
        return True
    result.peak_rss_mb, result.baseline_rss_mb = memory.peak_rss_mb, memory.baseline_rss_mb
    result.extra["load_rss_mb"] = memory.load_rss_mb
    return False


def _as_specs(models, input_shapes=None) -> list[ModelSpec]:
    from deploybench.models import get_model, model_spec

    if isinstance(models, (str, Path, ModelSpec)) or not isinstance(models, Iterable):
        models = [models]
    specs = []
    for model in models:
        if isinstance(model, str) and input_shapes:
            specs.append(get_model(model, input_shapes))
        else:
            specs.append(model_spec(model))
    return specs


def run_deployment_benchmark(models, backends: Sequence[str] = ("torch", "onnxruntime", "openvino"),
                             precisions: Sequence[str] = ("fp32",), settings: RunSettings | None = None,
                             progress: bool = True, shard: tuple[int, int] | None = None,
                             formats: Sequence[str] | None = None) -> Matrix:
    """Run every compatible cell of ``models`` x ``backends`` x ``precisions`` and return the ``Matrix``.

    ``models``: zoo names, refs (``file.py:factory``, an ``.onnx`` path), ``ModelSpec`` objects or
    ``nn.Module`` objects already wrapped by ``model_from_module``. ``shard=(index, count)`` runs one
    shard of the cells, numbered from 1. Progress goes to stderr (tqdm) with the cell id as description.
    """
    from deploybench.harness.measure.machine import machine_info
    from deploybench.harness.measure.accuracy import make_reference

    settings = settings or RunSettings()
    specs = _as_specs(models)
    by_name = {}
    for spec in specs:
        if spec.name in by_name and by_name[spec.name] is not spec:
            raise DeployBenchError(f"two models are named {spec.name!r}; give them distinct names")
        by_name[spec.name] = spec
    cells = plan_cells(specs, list(backends), list(precisions), formats=formats, include_unsupported=True)
    if shard is not None:
        cells = select_shard(cells, *shard)
    matrix = Matrix(results=[], machine=machine_info(), settings={
        **settings.to_dict(), "models": [s.ref for s in specs], "backends": list(backends),
        "precisions": list(precisions), "shard": list(shard) if shard else None})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cells), file=sys.stderr, unit="cell", dynamic_ncols=True, leave=False)
    references: dict[str, Any] = {}
    try:
        for cell in cells:
            if bar is not None:
                bar.set_description(cell.id)
            spec = by_name[cell.model]
            reference = references.get(cell.model)
            if reference is None:
                try:
                    reference = references[cell.model] = make_reference(spec)
                except Exception as exc:
                    reason = f"no reference run for {cell.model}: {_one_line(exc)}"
                    matrix.results.append(Result(cell=cell, status=STATUS_FAILED, reason=reason))
                    if bar is not None:
                        bar.update(1)
                    continue
            inputs = spec.make_inputs(seed=settings.seed, dims=settings.dims)
            matrix.results.append(run_cell(spec, cell, settings, reference=reference, inputs=inputs))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for reference in references.values():
            reference.close()
    return matrix


__all__ = ["ARTIFACT_CONVERSIONS", "Matrix", "RunSettings", "SCHEMA", "cell_formats",
           "parse_shard", "plain_table", "plan_cells", "run_cell", "run_deployment_benchmark",
           "select_shard"]
