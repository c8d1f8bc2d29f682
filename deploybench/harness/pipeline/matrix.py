"""Running a matrix: every model in a worker of its own, its cells through the one pipeline, the results
back typed. The parent plans, shows progress and keeps results; it never runs model code.

A cell never takes the run down: a backend missing here is ``skipped`` with its reason, an error is
``failed`` with its one-line reason and stage, and a worker that crashes or hangs fails the cell it
was running (with the signal or the limit, and the stage) while every other cell still reports.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deploybench.harness.pipeline.plan import ModelInfo, plan_cells, select_shard
from deploybench.harness.pipeline.settings import DEFAULT_BACKENDS, DEFAULT_PRECISIONS, RunSettings
from deploybench.harness.pipeline.stages import MEASURES
from deploybench.harness.pipeline.worker import InProcessWorker, Worker, WorkerDied, make_worker
from deploybench.spec import Cell, DeployBenchError, ModelSpec, Result

Runner = Worker | InProcessWorker


def _info_without_running(model: Any) -> ModelInfo:
    """What can be said of a model whose worker crashed while resolving it, from its ref alone."""
    if isinstance(model, ModelSpec):
        return ModelInfo.of(model)
    from deploybench.converters import SUFFIX_FORMATS

    ref = str(model)
    base = ref.partition("@")[0]
    path_text = base.rpartition(":")[0] if ".py:" in base else base
    fmt = SUFFIX_FORMATS.get(Path(path_text).suffix.lower())
    name = Path(path_text).stem if (".py:" in base or fmt) else base
    return ModelInfo(name=name, ref=ref, torch_source=fmt is None, source_format=fmt or "torch")


def open_workers(models: Iterable[Any], settings: RunSettings, verbose: bool = False,
                 folder: str | Path | None = None) -> list[tuple[ModelInfo, Runner]]:
    """One worker per model, with the model resolved in it: [(info, worker)], in the given order.

    A user's mistake (a wrong path, a shape that does not fit) raises its one-line ``DeployBenchError``
    before anything is measured; a crash while resolving leaves a worker whose cells fail with it.
    """
    opened: list[tuple[ModelInfo, Runner]] = []
    try:
        for model in models:
            worker = make_worker(model, settings, verbose, folder)
            opened.append((_info_without_running(model), worker))
            try:
                opened[-1] = (worker.open(), worker)
            except WorkerDied:
                pass  # the worker keeps the crash; each of the model's cells reports it
    except BaseException:
        close_workers(worker for _, worker in opened)
        raise
    seen: dict[str, Any] = {}
    for info, _ in opened:
        if info.name in seen:
            close_workers(worker for _, worker in opened)
            raise DeployBenchError(f"two models are named {info.name!r} ({seen[info.name]} and {info.ref}); "
                                   "give them distinct names")
        seen[info.name] = info.ref
    return opened


def close_workers(workers: Iterable[Runner]) -> None:
    for worker in workers:
        worker.close()


class Progress:
    """A tqdm bar on stderr naming the cell and the stage it is in; silent when off.

    A stage still running after ``announce_after`` seconds (training a zoo model, a slow export,
    calibration) also gets one line of its own above the bar, so a long wait is never silent."""

    def __init__(self, total: int, enabled: bool, announce_after: float = 5.0):
        import threading

        self._bar = None
        self._stage, self._since, self._said = "", 0.0, True
        self._lock, self._done = threading.Lock(), threading.Event()
        try:
            from tqdm import tqdm
        except ImportError:  # a device with only the runtime install: no bar, the table still comes
            enabled = False
        if enabled:
            self._bar = tqdm(total=total, file=sys.stderr, unit="cell", dynamic_ncols=True, leave=False)
            threading.Thread(target=self._watch, args=(announce_after,), daemon=True).start()

    def _watch(self, after: float) -> None:
        import time

        while not self._done.wait(min(0.5, after / 4)):
            with self._lock:
                if self._said or time.monotonic() - self._since < after or self._bar is None:
                    continue
                self._said = True
                self._bar.write(f"{self._stage}… (still running after {after:.0f} s)", file=sys.stderr)

    def describe(self, text: str) -> None:
        import time

        with self._lock:
            self._stage, self._since, self._said = text, time.monotonic(), False
            if self._bar is not None:
                self._bar.set_description_str(text)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        self._done.set()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or a termination signal arrived during a run: what was measured so far is kept."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM (a CI runner cancelling the job, ``kill``) into ``RunInterrupted`` in this process,
    so a run writes what it measured before it goes; Ctrl-C already arrives as KeyboardInterrupt."""
    import signal

    def interrupt(number, frame):
        raise RunInterrupted("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


def worker_key(model: str, target: str = "") -> str:
    """The key of the worker that runs a model's cells on a target (``""``: this machine)."""
    return f"{model}@{target}" if target else model


def run_cells(workers: Mapping[str, Runner], cells: Sequence[Cell], measures: Collection[str] = MEASURES,
              progress: Progress | None = None, results: list[Result] | None = None) -> list[Result]:
    """Each cell's ``Result`` from its model's worker on its target (``workers`` by ``worker_key``), in the
    order of ``cells``, appended to ``results`` (a list the caller keeps: when the run is interrupted, it
    holds every cell finished so far)."""
    results = [] if results is None else results
    for cell in cells:
        def on_stage(stage: str, cell_id: str = cell.id) -> None:
            if progress is not None:
                progress.describe(f"{cell_id}: {stage}")

        on_stage("start")
        results.append(workers[worker_key(cell.model, cell.target)].run_cell(cell, measures, on_stage))
        if progress is not None:
            progress.advance()
    return results


@dataclass
class Run:
    """What a run of a matrix produced: the results in plan order, the run's settings as recorded, and
    ``incomplete``: why it stopped before every cell ran (empty when it finished)."""

    results: list[Result]
    settings: dict[str, Any]
    incomplete: str = ""
    devices: list = field(default_factory=list)  # the targets measured on (``remote_worker.Device``), closed


def run_matrix(models, backends: Sequence[str] = DEFAULT_BACKENDS, precisions: Sequence[str] = DEFAULT_PRECISIONS,
               settings: RunSettings | None = None, progress: bool = True, shard: tuple[int, int] | None = None,
               formats: Sequence[str] | None = None, verbose: bool = False,
               resume: Sequence[Result] = (), targets: Sequence[Any] = ()) -> Run:
    """Run every compatible cell of ``models`` x ``backends`` x ``precisions``, each model in a worker.

    ``models``: zoo names, refs (``file.py:factory@1x3x64x64``, a model file) or ``ModelSpec`` objects
    (``model_from_module``). ``shard=(index, count)`` runs one shard of the cells, numbered from 1.
    ``resume``: results of an earlier (interrupted) run of the same cells, kept as they are: only the
    cells they lack are run. Ctrl-C or ``RunInterrupted`` ends the run with the cells finished so far.
    ``targets``: the machines to measure on (``remote.targets.Target``; ``None`` in the list is this one);
    empty: this machine. Every cell is planned once per target, its ``target`` naming it.
    Progress goes to stderr (tqdm).
    """
    from deploybench.harness.pipeline.plan import check_backends, check_precisions

    settings = settings or RunSettings()
    if isinstance(models, (str, Path, ModelSpec)) or not isinstance(models, Iterable):
        models = [models]
    models = list(models)
    check_backends(backends)  # a typo costs nothing: checked before any worker starts
    check_precisions(precisions)
    # no bar while resolving: a user's mistake found there is one line on a clean stderr
    opened = open_workers(models, settings, verbose)
    runners: dict[str, Runner] = {info.name: worker for info, worker in opened}
    devices: list = []
    try:
        cells = plan_cells([info for info, _ in opened], list(backends), list(precisions), formats=formats,
                           include_unsupported=True, sweep=settings.sweep)
        if targets:
            cells, devices, remote = on_targets(targets, opened, cells, settings, verbose)
            runners.update(remote)
        if shard is not None:
            cells = select_shard(cells, *shard)
        done = {r.cell.id: r for r in resume}
        results: list[Result] = []
        bar = Progress(total=len(cells) - sum(cell.id in done for cell in cells), enabled=progress)
        incomplete = ""
        try:
            run_cells(runners, [c for c in cells if c.id not in done], progress=bar, results=results)
        except KeyboardInterrupt as stop:
            incomplete = f"interrupted ({stop.args[0] if stop.args else 'Ctrl-C'}) after {len(results)} of " \
                         f"{len(cells) - len(done)} cells; `--resume` runs the rest"
        finally:
            bar.close()
    finally:
        close_workers(runners.values())
        for device in devices:
            device.close()
    measured = {r.cell.id: r for r in results}
    ordered = [done.get(cell.id) or measured.get(cell.id) for cell in cells]
    return Run(results=[r for r in ordered if r is not None], incomplete=incomplete, settings={
        **settings.to_dict(), "models": [info.ref or info.name for info, _ in opened], "backends": list(backends),
        "precisions": list(precisions), "shard": list(shard) if shard else None,
        "worker_starts": {key: worker.starts for key, worker in runners.items()},
        "targets": [t.address if t is not None else "local" for t in targets] or None},
        devices=devices)


def matrix_machine(results: Sequence[Result], here: dict[str, Any], devices: Iterable[Any] = ()) -> dict[str, Any]:
    """The machine block of a matrix: this machine's when every cell ran here; when some ran on targets,
    ``{machine_id: block}`` of each machine the cells ran on (a merged matrix's form), each block naming its
    target and each cell its ``machine_id``."""
    machines: dict[str, dict[str, Any]] = {}
    if any(not r.cell.target for r in results):
        machines[here["machine_id"]] = {**here, "target": "local"}
    by_target = {}
    for device in (d for d in devices if d.machine):
        key = device.machine["machine_id"]
        if key in machines:  # one host reached twice (ssh to itself, another Python): kept apart
            key = f"{key}@{device.target.name}"
        machines[key] = {**device.machine, "machine_id": key, "target": device.target.name}
        by_target[device.target.name] = key
    if not by_target:
        return here
    for result in results:
        result.machine_id = by_target.get(result.cell.target, here["machine_id"])
    return next(iter(machines.values())) if len(machines) == 1 else machines


def on_targets(targets: Sequence[Any], opened, cells: Sequence[Cell], settings: RunSettings, verbose: bool = False
               ) -> tuple[list[Cell], list, dict[str, Runner]]:
    """Every cell once per target (``None``: this machine), the targets' devices (not yet connected), and a
    worker on each device for each model, sharing the model's worker here (by ``worker_key``)."""
    from deploybench.harness.pipeline.remote_worker import RemoteWorker, open_devices

    for info, worker in opened:
        if not isinstance(worker, Worker) and any(t is not None for t in targets):
            raise DeployBenchError(f"model {info.name} runs in this process ({worker.isolation}); a target's cells "
                                   "are converted and judged by a worker process here: drop --in-process, or give "
                                   "the model as a ref a process can resolve (file.py:factory, a model file)")
    devices = open_devices([t for t in targets if t is not None], settings)
    workers = {worker_key(info.name, device.target.name): RemoteWorker(worker, device, settings, verbose)
               for device in devices for info, worker in opened}
    return [replace(cell, target=t.name if t is not None else "") for t in targets for cell in cells], devices, workers


def run_one_cell(model, cell: Cell, settings: RunSettings | None = None,
                 measures: Collection[str] = MEASURES) -> Result:
    """Measure one cell of ``model`` (a ref or a ModelSpec) in a worker of its own (or in this process
    with ``settings.in_process``): the same pipeline ``run_matrix`` runs."""
    with make_worker(model, settings or RunSettings()) as worker:
        try:
            worker.open()
        except WorkerDied:
            pass  # run_cell reports the crash as the cell's
        return worker.run_cell(cell, measures)


__all__ = ["Progress", "Run", "RunInterrupted", "close_workers", "matrix_machine", "on_targets", "worker_key", "stop_on_sigterm", "open_workers", "run_cells", "run_matrix", "run_one_cell"]
