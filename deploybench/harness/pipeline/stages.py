"""The one cell pipeline: from a resolved model to a measured ``Result``, stage by stage.

    availability -> convert -> memory -> load -> first_inference -> time -> reference -> accuracy

Each stage is a small function; ``run_cell`` runs them in order and names the stage that stopped a
cell (``Result.stage``). It runs where model code may run: in a worker process (``worker.py``), or in
the caller's process with ``--in-process``. ``deploybench run``, the pytest plugin and the gate all
reach it through a worker; nothing else converts, loads or times a cell.

What stops a cell: ``NotSupported`` (a precision or a shape a converter or an engine cannot take) is a skip; a backend
that cannot run here is a skip; any other error fails the cell with its one-line reason. A crash or
a hang is seen by the worker's parent, which names the stage it was in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from deploybench.harness.pipeline.settings import RunSettings
from deploybench.resolve import ModelSource
from deploybench.spec import (INT8_PRECISIONS, OFFLINE, SINGLE_STREAM, STATIC, STATUS_FAILED, STATUS_SKIPPED, Artifact, Cell, DeployBenchError, ModelSpec,
                              NotSupported, PrecisionNotSupported, Result, ShapeNotSupported, ToleranceCheck)

# What a cell can be asked to measure; the pytest plugin asks only for what its selected tests need.
TIME, MEMORY, ACCURACY = "time", "memory", "accuracy"
MEASURES = (TIME, MEMORY, ACCURACY)

# Notes a converter leaves in its artifact's metadata that a person reading a result wants to see.
_ARTIFACT_NOTES = ("fingerprint", "fixed_axes", "fixed_dims", "dynamic_axes", "fp32_ops", "ops_in_fp32", "calibration",
                   "calibration_source", "reference", "opset", "nms", "compress_to_fp16", "inference_precision",
                   "quantization", "accuracy_criteria", "validation_plain_int8", "validation_int8ac",
                   "validation_met")


class CellStopped(Exception):
    """A stage decided the cell cannot go on: ``status`` (skipped / failed / timeout) and a one-line reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def one_line(exc: BaseException) -> str:
    """An exception as one line: a deploybench error's own message, else 'Type: message'."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    if isinstance(exc, DeployBenchError) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class ModelSession:
    """A model resolved in this process, and what its cells share: the reference run (made on first use)
    and the ``source`` a fresh process (the memory child) can rebuild the same model from."""

    def __init__(self, spec: ModelSpec, source: ModelSource | None, isolation: str):
        self.spec, self.source, self.isolation = spec, source, isolation
        self._reference = None

    def reference(self):
        """The fp32 reference (PyTorch eager, or a model file's own fp32 run), made once per model."""
        if self._reference is None:
            from deploybench.harness.measure.accuracy import make_reference

            self._reference = make_reference(self.spec)
        return self._reference

    def inputs(self, settings: RunSettings):
        return self.spec.make_inputs(seed=settings.seed, dims=settings.dims)

    def artifact(self, cell: Cell, settings: RunSettings) -> Artifact:
        """The cell's artifact: converted here (a session on a device is handed the one converted for it)."""
        return convert(self.spec, cell, settings)

    def close(self) -> None:
        if self._reference is not None:
            self._reference.close()
            self._reference = None


# ---- the stages ------------------------------------------------------------------------------------
def check_availability(cell: Cell) -> str:
    """The backend's version; a backend that cannot run here, or lacks the precision, stops the cell as a skip."""
    from deploybench.engines import engine_class

    cls = engine_class(cell.backend)
    available, detail = cls.availability()
    if not available:
        raise CellStopped(STATUS_SKIPPED, f"{cell.backend} cannot run here: {detail}")
    if cell.precision not in cls.precisions:
        raise PrecisionNotSupported(f"backend {cell.backend} has no {cell.precision} mode; it runs: "
                                    f"{', '.join(cls.precisions)}")
    return detail


def convert(spec: ModelSpec, cell: Cell, settings: RunSettings, cpu_flags: frozenset[str] | None = None) -> Artifact:
    """The cell's artifact, from the conversion cache when it is there (a torch cell: the model itself); an
    int8 cell calibrated on ``settings.calibration_data`` when given; an int8ac artifact holding the very
    criteria the cell is judged by (the run's tolerance overrides included). ``cpu_flags``: the CPU it
    will run on when that is another machine's (a target's), else this one."""
    from deploybench.converters import cpu_defaults, deploy_model, torch_artifact
    from deploybench.harness.pipeline.variant import calibration_options, cell_model

    spec = cell_model(spec, cell)
    if cell.format == "torch":
        return torch_artifact(spec, precision=cell.precision)
    if cell.precision in INT8_PRECISIONS and settings.calibration_data and not spec.calibration_source:
        from deploybench.converters.calibration import use_calibration_file

        use_calibration_file(spec, settings.calibration_data)
    options = {**(cpu_defaults(cell.format, cell.precision, cpu_flags) if cpu_flags is not None else {}),
               **calibration_options(cell)}
    if cell.precision == "int8ac":
        from deploybench.converters.accuracy_control import int8_criteria

        options["accuracy_criteria"] = int8_criteria(spec, settings.tolerance_overrides(cell.precision,
                                                                                         spec.tolerances))
    return deploy_model(spec, cell.format, output_dir=settings.cache_dir, precision=cell.precision, **options)


def run_dims(spec: ModelSpec, settings: RunSettings) -> dict[str, int]:
    """The size of every dynamic axis of the model a cell runs at: the model's defaults, then the run's
    and the cell's own."""
    axes = {name for t in spec.inputs for name in t.dynamic_axes.values()}
    return {name: size for name, size in {**spec.dims, **settings.dims}.items() if name in axes}


def check_shape(spec: ModelSpec, cell: Cell, artifact: Artifact, settings: RunSettings) -> None:
    """A cell asking for an axis the model does not have, or a size its artifact cannot take (a TFLite file
    fixed to batch 1), is a skip that says which."""
    axes = {name for t in spec.inputs for name in t.dynamic_axes.values()}
    missing = [name for name in cell.dim_sizes if name not in axes]
    if missing:
        raise ShapeNotSupported(f"{spec.name} has no dynamic axis {', '.join(map(repr, missing))}; its dynamic axes: "
                                f"{', '.join(sorted(axes)) or 'none'}")
    dims = run_dims(spec, settings)
    for want, took in ((t, next((a for a in artifact.inputs if a.name == t.name), None)) for t in spec.inputs):
        shape = want.concrete_shape(dims)
        if took is not None and not took.accepts(shape):
            raise ShapeNotSupported(f"{artifact.path.name} takes {took.name} {list(took.shape)}; this cell measures "
                                    f"{list(shape)} ({', '.join(f'{k}={v}' for k, v in cell.dims) or 'default sizes'})")


def compile_options(cell: Cell, dims: dict[str, int]) -> dict[str, Any]:
    """The engine options that make a backend compile for ``dims`` (``run_dims``) when the cell's ``shapes``
    is static and the backend compiles for shapes; nothing for one that runs the artifact's own shapes."""
    from deploybench.engines import engine_class

    if cell.shapes != STATIC or not engine_class(cell.backend).compiles_for_shapes:
        return {}
    return {"static_dims": dict(dims)}


def scenario_options(cell: Cell) -> dict[str, Any]:
    """Engine options of the cell's scenario: offline and server load for throughput (OpenVINO's THROUGHPUT
    hint and its streams), single-stream for one request's latency."""
    from deploybench.engines import engine_class

    return {} if cell.scenario == SINGLE_STREAM else dict(engine_class(cell.backend).throughput_options)


def engine_options(cell: Cell, spec: ModelSpec, settings: RunSettings) -> dict[str, Any]:
    """Everything the cell asks of its engine beyond format and precision: its shape and its scenario."""
    return {**compile_options(cell, run_dims(spec, settings)), **scenario_options(cell)}


def record_artifact(artifact: Artifact, started: float, result: Result) -> None:
    on_disk = bool(artifact.files) and artifact.path.exists()
    result.conversion_s = artifact.conversion_s or (0.0 if artifact.cached else time.perf_counter() - started)
    result.artifact_bytes = artifact.size_bytes if on_disk else None
    result.artifact_path = str(artifact.path) if on_disk else None
    result.extra["artifact"] = {**{k: v for k, v in artifact.metadata.items() if k in _ARTIFACT_NOTES},
                                "cached": artifact.cached}


def measure_memory(session: ModelSession, cell: Cell, artifact: Artifact, settings: RunSettings, inputs,
                   result: Result) -> None:
    """Peak RSS of load + inference in a fresh process; a crash or hang there stops the cell."""
    from deploybench.harness.measure.memory import benchmark_memory_usage

    source = session.source
    if cell.format == "torch" and cell.prune:  # a fresh process rebuilds the model from its source: unpruned
        result.extra["memory"] = "not measured: the memory child rebuilds the unpruned model"
        return
    if cell.format == "torch" and source is None:
        try:
            source = ModelSource.of(session.spec)
        except DeployBenchError as exc:
            result.extra["memory"] = f"not measured: {exc}"
            return
    memory = benchmark_memory_usage(artifact, cell.backend, cell.precision, inputs, threads=settings.threads,
                                    runs=settings.memory.runs, timeout_s=settings.timeout_s,
                                    model_source=source if cell.format == "torch" else None,
                                    **compile_options(cell, run_dims(session.spec, settings)))
    if not memory.ok:
        raise CellStopped(memory.status, memory.reason)
    result.peak_rss_mb, result.baseline_rss_mb = memory.peak_rss_mb, memory.baseline_rss_mb
    result.load_rss_mb = memory.load_rss_mb


def load(cell: Cell, artifact: Artifact, settings: RunSettings, **engine_options):
    from deploybench.engines import create_deployer

    return create_deployer(artifact, backend=cell.backend, precision=cell.precision, threads=settings.threads,
                           **engine_options)


def time_engine(engine, spec: ModelSpec, inputs, settings: RunSettings, result: Result) -> None:
    """Steady-state latency under the timing rules, in the cell's scenario; a detector also gets its
    end-to-end latency."""
    from deploybench.harness.measure.timing import benchmark_inference

    if result.cell.scenario != SINGLE_STREAM:
        return time_scenario(engine, inputs, settings, result)
    timing = benchmark_inference(engine, inputs, first_inference_ms=result.first_inference_ms,
                                 rules=settings.timing)
    result.latency_ms, result.samples_ms = timing.stats, timing.samples_ms
    result.throughput_ips, result.unstable = timing.throughput_ips, timing.unstable
    result.stopped_by, result.warmup_count = timing.stopped_by, timing.warmup_count
    result.extra.update(timing.extra)
    if spec.task == "detection":
        from deploybench.harness.measure.detection import end_to_end_latency

        try:
            result.extra.update(end_to_end_latency(engine, spec))
        except Exception as exc:  # the inference figures already measured stand
            result.extra["e2e_error"] = one_line(exc)


def time_scenario(engine, inputs, settings: RunSettings, result: Result) -> None:
    """offline: the highest throughput on the backend's own parallel requests, each request's time as the
    latency. server: the highest Poisson rate whose p99 stays within the budget; its throughput is that
    rate's items per second, and the latency columns stay empty (the p99 at each rate tried is in
    ``scenario_figures``)."""
    if result.cell.scenario == OFFLINE:
        from deploybench.harness.measure.scenarios import run_offline

        offline = run_offline(engine, inputs, min_time_s=settings.timing.min_time_s,
                              max_time_s=settings.timing.time_cap_s)
        result.latency_ms, result.throughput_ips = offline.latency, offline.samples_per_s
        result.scenario_figures = offline.to_dict()
        return
    from deploybench.harness.measure.rate_search import find_max_rate
    from deploybench.harness.measure.timing import batch_size_of

    rules = settings.server
    search = find_max_rate(engine, inputs, rules.p99_budget_ms, trial_s=rules.trial_s, max_time_s=rules.max_time_s,
                           seed=settings.seed)
    result.scenario_figures = search.to_dict()
    if search.max_rate_per_s is not None:
        result.throughput_ips = search.max_rate_per_s * batch_size_of(inputs)
    if not search.met:
        raise CellStopped(STATUS_FAILED, search.message)


def judge_accuracy(engine, session: ModelSession, cell: Cell, inputs, reference, settings: RunSettings,
                   result: Result) -> None:
    """Errors against the reference on the same seeded (or held-out real) inputs, and the tolerance verdict."""
    from deploybench.harness.measure.accuracy import benchmark_precision
    from deploybench.harness.measure.tolerance import check_tolerance

    spec = session.spec
    result.accuracy = benchmark_precision(engine, reference, inputs, spec=spec, dims=settings.dims)
    passed, message = check_tolerance(result.accuracy, cell.precision,
                                      settings.tolerance_overrides(cell.precision, spec.tolerances))
    result.tolerance = ToleranceCheck(passed, message)


def run_cell(session: ModelSession, cell: Cell, settings: RunSettings, measures: Collection[str] = MEASURES,
             on_stage: Callable[[str], Any] | None = None) -> Result:
    """Measure one cell and return its ``Result``; an error ends the cell, never the caller.

    ``measures`` picks what to measure (time, memory, accuracy); ``on_stage(name)`` is called as
    each stage starts, so a process watching from outside knows where a crash or hang happened.
    """
    settings = settings.for_cell(cell)
    result = Result(cell=cell, seed=settings.seed, model_ref=session.source.ref if session.source else None,
                    isolation=session.isolation)
    stage = ""

    def enter(name: str) -> None:
        nonlocal stage
        stage = name
        if on_stage is not None:
            on_stage(name)

    engine = None
    try:
        enter("availability")
        result.backend_version = check_availability(cell)
        enter("convert")
        started = time.perf_counter()
        artifact = session.artifact(cell, settings)
        record_artifact(artifact, started, result)
        check_shape(session.spec, cell, artifact, settings)
        result.dims_ran = run_dims(session.spec, settings)
        inputs = session.inputs(settings)
        if MEMORY in measures and settings.memory.enabled:
            enter("memory")
            measure_memory(session, cell, artifact, settings, inputs, result)
        if TIME in measures or ACCURACY in measures:
            enter("load")
            engine = load(cell, artifact, settings, **engine_options(cell, session.spec, settings))
            result.load_ms = engine.load_ms
            enter("first_inference")
            from deploybench.harness.measure.timing import time_first_inference

            _, result.first_inference_ms = time_first_inference(engine, inputs)
            result.precision_ran = engine.runtime_notes.get("precision_ran", cell.precision)
            if TIME in measures:
                enter("time")
                time_engine(engine, session.spec, inputs, settings, result)
            if ACCURACY in measures:
                enter("reference")
                reference = session.reference()
                reference(inputs)
                enter("accuracy")
                judge_accuracy(engine, session, cell, inputs, reference, settings, result)
            result.extra["runtime_notes"] = dict(engine.runtime_notes)
    except CellStopped as stop:
        result.not_run(stop.status, stage, stop.reason if stop.status == STATUS_SKIPPED else f"{stage}: {stop.reason}")
    except NotSupported as exc:
        result.not_run(STATUS_SKIPPED, stage, one_line(exc))
    except Exception as exc:
        result.not_run(STATUS_FAILED, stage, f"{stage}: {one_line(exc)}")
    finally:
        if engine is not None:
            try:
                engine.close()
            except Exception as exc:  # a close error must not hide what was measured
                result.extra["close_error"] = one_line(exc)
    return result


__all__ = ["ACCURACY", "MEASURES", "MEMORY", "TIME", "CellStopped", "ModelSession", "check_availability",
           "check_shape", "compile_options", "engine_options", "run_dims", "convert", "judge_accuracy", "load", "measure_memory", "one_line", "run_cell", "scenario_options", "time_engine", "time_scenario"]
