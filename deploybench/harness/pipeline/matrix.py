"""The matrix: plan every compatible (model, format, backend, precision) cell, run each, keep the results.

A cell never takes the run down: a backend that is missing is ``skipped`` with its reason, a
conversion or inference error is ``failed`` with a one-line reason, and a backend that crashes or
hangs is caught by the memory child (run first, as a canary) as ``failed`` / ``timeout``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploybench.spec import (BACKEND_FORMATS, FORMAT_BACKENDS, PRECISIONS, STATUS_FAILED, STATUS_SKIPPED,
                    STATUS_TIMEOUT, Cell, DeployBenchError, ModelSpec, PrecisionNotSupported, Result)

SCHEMA = "deploybench.matrix/1"

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


# ---- the matrix -----------------------------------------------------------------------------------
def _version() -> str:
    import deploybench

    return deploybench.__version__


@dataclass
class Matrix:
    """All results of a run, the machine and the settings: save/load as JSON, show as a table."""

    results: list[Result]
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    deploybench_version: str = field(default_factory=_version)

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        """The JSON document: schema, deploybench_version, created, machine, settings, cells."""
        return {"schema": SCHEMA, "deploybench_version": self.deploybench_version, "created": self.created,
                "machine": self.machine, "settings": self.settings,
                "cells": [r.to_dict(with_samples=with_samples) for r in self.results]}

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` atomically (a temporary file renamed over it) and return the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(self.to_dict(), stream, indent=1, default=str, allow_nan=False)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "matrix") -> Matrix:
        """A ``Matrix`` from its JSON document; a one-line error for a document of another kind."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA or not isinstance(data.get("cells"), list):
            raise DeployBenchError(f"{source} is not a deploybench matrix (expected schema {SCHEMA!r} and a "
                                   "'cells' list); write it with `deploybench run --output`")
        try:
            results = [Result.from_dict(cell) for cell in data["cells"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DeployBenchError(f"{source} has a malformed cell ({type(exc).__name__}: {exc}); "
                                   "regenerate it with `deploybench run --output`") from None
        return cls(results=results, machine=dict(data.get("machine") or {}),
                   settings=dict(data.get("settings") or {}), created=str(data.get("created", "")),
                   deploybench_version=str(data.get("deploybench_version", "")))

    @classmethod
    def load(cls, path: str | Path) -> Matrix:
        """Read a matrix saved by ``save``; raises a one-line ``DeployBenchError`` for a missing or malformed file."""
        from deploybench.harness.results.io import read_json

        data = read_json(path, "matrix file", "regenerate it with `deploybench run --output`")
        return cls.from_dict(data, source=f"matrix file {path}")

    def table(self) -> str:
        """The matrix as a terminal table (the report module's, or a plain fallback)."""
        try:
            from deploybench.harness.report.render import terminal_table
        except ImportError:
            return plain_table(self.results)
        return terminal_table(self.results, machine=self.machine)

    def _repr_html_(self) -> str:
        try:
            from deploybench.harness.report.render import html_report
            return html_report(self.results, machine=self.machine)
        except Exception:  # the report module is optional here; a notebook still gets a table
            from tabulate import tabulate

            return tabulate(_rows(self.results), headers="keys", tablefmt="html")

    def best(self, model: str | None = None) -> Result | None:
        """The ok cell with the lowest median latency (of ``model`` when given), or None."""
        candidates = [r for r in self.results if r.ok and r.latency_ms
                      and (model is None or r.cell.model == model)]
        return min(candidates, key=lambda r: r.latency_ms.median, default=None)

    def problems(self) -> list[Result]:
        """Cells that did not run ok (skipped, failed, timeout), in run order."""
        return [r for r in self.results if not r.ok]

    @property
    def failed(self) -> bool:
        """True when any cell failed or timed out (skips are not failures)."""
        return any(r.status in (STATUS_FAILED, STATUS_TIMEOUT) for r in self.results)


def _rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        lat, acc = r.latency_ms, r.accuracy
        rows.append({
            "model": r.cell.model, "format": r.cell.format, "backend": r.cell.backend, "precision": r.cell.precision,
            "status": r.status,
            "median ms": f"{lat.median:.3f}" if lat else "",
            "p90 ms": f"{lat.p90:.3f}" if lat else "",
            "ips": f"{r.throughput_ips:.1f}" if r.throughput_ips else "",
            "load ms": f"{r.load_ms:.0f}" if r.load_ms is not None else "",
            "peak MB": f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "",
            "size KB": f"{r.artifact_bytes / 1024:.0f}" if r.artifact_bytes else "",
            "max abs err": f"{acc.max_abs_error:.2e}" if acc and acc.max_abs_error is not None else "",
            "metric": f"{acc.metric} {acc.metric_value:.4f}" if acc and acc.metric_value is not None else "",
        })
    return rows


def plain_table(results: Sequence[Result]) -> str:
    """A tabulate table of the results: one row per cell with latency, memory, size and error."""
    from tabulate import tabulate

    text = tabulate(_rows(results), headers="keys", tablefmt="simple")
    problems = [r for r in results if not r.ok]
    if problems:
        text += f"\n\nnot run ({len(problems)}):\n" + "\n".join(
            f"  {r.status:8} {r.cell.id}: {r.reason}" for r in problems)
    return text


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


# ---- comparison -----------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Each model's cells against its baseline cell: speed-up, memory ratio, accuracy delta, best first."""

    baseline: str
    rows: list[dict[str, Any]]

    def table(self) -> str:
        """The comparison as a terminal table."""
        from tabulate import tabulate

        return tabulate(self._display_rows(), headers="keys", tablefmt="simple")

    def _repr_html_(self) -> str:
        from tabulate import tabulate

        return tabulate(self._display_rows(), headers="keys", tablefmt="html")

    def _display_rows(self) -> list[dict[str, Any]]:
        def fmt(value, pattern):
            return pattern.format(value) if value is not None else ""

        return [{"model": r["model"], "cell": r["cell"], "status": r["status"],
                 "median ms": fmt(r["median_ms"], "{:.3f}"), "speed-up": fmt(r["speedup"], "{:.2f}x"),
                 "memory ratio": fmt(r["memory_ratio"], "{:.2f}"),
                 "accuracy delta": fmt(r["accuracy_delta"], "{:+.4f}"),
                 "max abs err": fmt(r["max_abs_error"], "{:.2e}")} for r in self.rows]


def compare_backends(matrix_or_results, baseline: str = "torch", model: str | None = None) -> Comparison:
    """Return a ``Comparison``: each cell of each model against the baseline cell (same model, ``baseline``
    backend in its native format, fp32): speed-up = baseline median / cell median, memory ratio =
    cell peak RSS / baseline peak RSS, accuracy delta = cell metric - baseline metric. Rows are
    ordered per model by speed-up, fastest first; figures are None where either side lacks them."""
    results = matrix_or_results.results if isinstance(matrix_or_results, Matrix) else list(matrix_or_results)
    models = list(dict.fromkeys(r.cell.model for r in results if model is None or r.cell.model == model))
    if model is not None and not models:
        raise DeployBenchError(f"no cells of model {model!r} in these results; "
                               f"models present: {', '.join(sorted({r.cell.model for r in results}))}")
    rows = []
    for name in models:
        cells = [r for r in results if r.cell.model == name]
        candidates = [r for r in cells if r.cell.backend == baseline and r.cell.precision == "fp32" and r.ok]
        native = BACKEND_FORMATS.get(baseline, ())
        candidates.sort(key=lambda r: native.index(r.cell.format) if r.cell.format in native else len(native))
        base = candidates[0] if candidates else None
        model_rows = []
        for r in cells:
            median = r.latency_ms.median if r.latency_ms else None
            base_median = base.latency_ms.median if base and base.latency_ms else None
            metric = r.accuracy.metric_value if r.accuracy else None
            base_metric = base.accuracy.metric_value if base and base.accuracy else None
            model_rows.append({
                "model": name, "cell": r.cell.id, "format": r.cell.format, "backend": r.cell.backend,
                "precision": r.cell.precision, "status": r.status, "is_baseline": r is base,
                "median_ms": median,
                "speedup": base_median / median if median and base_median else None,
                "memory_ratio": r.peak_rss_mb / base.peak_rss_mb if base and r.peak_rss_mb and base.peak_rss_mb
                else None,
                "accuracy_delta": metric - base_metric if metric is not None and base_metric is not None else None,
                "max_abs_error": r.accuracy.max_abs_error if r.accuracy else None,
            })
        model_rows.sort(key=lambda row: (row["speedup"] is None, -(row["speedup"] or 0)))
        rows.extend(model_rows)
    return Comparison(baseline=baseline, rows=rows)


__all__ = ["ARTIFACT_CONVERSIONS", "Comparison", "Matrix", "RunSettings", "SCHEMA", "cell_formats",
           "compare_backends", "parse_shard", "plain_table", "plan_cells", "run_cell", "run_deployment_benchmark",
           "select_shard"]
