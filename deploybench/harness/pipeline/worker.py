"""Workers: the processes where model code runs, so the parent only orchestrates.

One worker per model: it resolves the model (a zoo name, a user's ``file.py:factory``, a model file,
or a model built in the parent and sent pickled), then runs that model's cells through the one
pipeline (``stages.run_cell``) and sends each ``Result`` back. It stays alive across its model's
cells, so the price of a process (start-up, importing the libraries) is paid once per model.

The parent reads framed pickles from the worker's stdout (model code that prints is redirected to
the worker's stderr, which goes to a log) and hears each stage as it starts, so when the worker
crashes or hangs, the cell fails with the signal or the limit AND the stage. A crash while resolving
the model or running its reference fails the model's remaining cells; a crash in any other stage
fails that cell, and the next cell starts a fresh worker. Errors keep their kind across the pipe: a
``NotSupported`` (a precision or a shape) is still a skip, a ``DeployBenchError`` still one clear line.

``InProcessWorker`` is the same interface without the process (``--in-process``), for a debugger.

Run as ``python -m deploybench.harness.pipeline.worker``; nothing else is a public interface here.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from deploybench.harness.measure.process import child_env, exit_description, kill_group, run_child_plugins
from deploybench.harness.pipeline.frames import FrameReader, error_frame, rebuild_error, send_frame
from deploybench.harness.pipeline.plan import ModelInfo
from deploybench.harness.pipeline.serving import ISOLATED, quiet_converters
from deploybench.harness.pipeline.settings import RunSettings
from deploybench.harness.pipeline.stages import MEASURES, ModelSession, run_cell
from deploybench.resolve import ModelSource
from deploybench.spec import (STATUS_FAILED, STATUS_TIMEOUT, Cell, DeployBenchError, Result)

# Stages where a crash is the model's, not one cell's: every later cell of the model would meet it again.
MODEL_STAGES = ("resolve", "reference")
# The memory stage waits for its own child, which has the whole stage limit: give the worker a margin.
MEMORY_STAGE_MARGIN_S = 30.0


# ---- the parent's side -----------------------------------------------------------------------------
class WorkerDied(Exception):
    """The worker crashed (``failed``) or stopped answering (``timeout``) during ``stage``."""

    def __init__(self, status: str, stage: str, reason: str):
        super().__init__(reason)
        self.status, self.stage, self.reason = status, stage, reason


class Worker:
    """A worker process for one model, started on first use and again after a crash."""

    def __init__(self, source: ModelSource | None, settings: RunSettings, verbose: bool = False,
                 folder: str | Path | None = None):
        # folder: where the model's code is resolved from (a checkout of another commit), else here
        self.source, self.settings, self.verbose, self.folder = source, settings, verbose, folder
        self.info: ModelInfo | None = None
        self.broken: WorkerDied | None = None  # a crash while resolving or in the reference: the model's
        self.starts = 0
        self._process: subprocess.Popen | None = None
        self._reader: FrameReader | None = None
        self._log = None
        self._stage = ""
        self._busy = False

    # lifecycle
    def _start(self) -> None:
        self._log = None if self.verbose else tempfile.TemporaryFile(prefix="deploybench-worker-")
        self._process = self._launch()
        self._reader = FrameReader(self._process.stdout.fileno())
        self.starts += 1
        self._call(self._open_request(), stage="resolve" if self.source else "start")

    def _launch(self):
        """The worker process, with pipes for its stdin and stdout and its stderr to the log."""
        return subprocess.Popen(
            [sys.executable, "-m", "deploybench.harness.pipeline.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, start_new_session=True, env=child_env(), cwd=self.folder)

    def _open_request(self) -> tuple:
        return ("open", self.source, self.verbose)

    def _kill(self, process) -> None:
        """Kill the worker and everything it started (the memory child runs in a session of its own)."""
        import psutil

        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                continue
        kill_group(process)

    def _answer(self, question: tuple) -> tuple:
        """The reply to a worker's question (a device's worker asks its host for the reference)."""
        return error_frame(DeployBenchError(f"this worker's parent cannot answer {question[0]!r}"))

    def open(self) -> ModelInfo:
        """Start the worker and resolve the model there; a user's mistake raises one clear line, a crash
        raises ``WorkerDied`` (stage ``resolve``)."""
        self._forget_if_gone()
        if self._process is None:
            try:
                self._start()
                self.info = self._call(("info",), stage="resolve")
            except WorkerDied as died:
                self.broken = died
                raise
            except DeployBenchError:
                self._discard_process()
                raise
        return self.info

    def _forget_if_gone(self) -> None:
        """A worker that ended between requests (killed while idle, its device rebooted) is started afresh by
        the next one rather than failing it."""
        if self._process is not None and not self._busy and self._process.poll() is not None:
            self._discard_process()

    def close(self) -> None:
        if self._busy:  # interrupted mid-request: the worker is not listening
            self._discard_process()
        process, self._process = self._process, None
        if process is None:
            return
        try:
            send_frame(process.stdin, ("close",))
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self._kill(process)
            process.wait()
        finally:
            process.stdout.close()
            if self._log is not None:
                self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # requests
    def run_cell(self, cell: Cell, measures: Collection[str] = MEASURES,
                 on_stage: Callable[[str], Any] | None = None) -> Result:
        """The cell's ``Result``; a crash or hang of the worker is the cell's ``failed`` / ``timeout``."""
        if self.broken is not None:
            return Result(cell=cell, isolation=ISOLATED).not_run(self.broken.status, self.broken.stage,
                                                                  self.broken.reason)
        try:
            self.open()
            return self._call(("cell", cell, self.settings, tuple(measures)), stage="", on_stage=on_stage)
        except WorkerDied as died:
            if died.stage in MODEL_STAGES:
                self.broken = died
            return Result(cell=cell, isolation=ISOLATED).not_run(died.status, died.stage, died.reason)

    def call(self, target: str, *args: Any) -> Any:
        """``module:function(*args)`` run in the worker (a model of its own is not needed); its return value
        comes back, its error is raised here with its kind, a crash or hang raises ``WorkerDied``."""
        if self._process is None:
            self._start()
        return self._call(("call", target, args), stage="call")

    def _stage_limit(self, stage: str) -> float:
        margin = MEMORY_STAGE_MARGIN_S if stage == "memory" else 0.0
        return self.settings.timeout_s + margin

    def _call(self, message: tuple, stage: str, on_stage: Callable[[str], Any] | None = None) -> Any:
        self._stage, self._busy = stage, True
        try:
            send_frame(self._process.stdin, message)
        except (BrokenPipeError, OSError):
            self._died()
        deadline = time.monotonic() + self._stage_limit(stage)
        while True:
            try:
                frame = self._reader.read(deadline, self._watch_memory if self.settings.max_memory_mb and
                                          isinstance(self._process, subprocess.Popen) else None)
            except TimeoutError:
                self._hung()
            except (EOFError, pickle.UnpicklingError, struct.error):
                self._died()
            if frame[0] == "stage":
                self._stage = frame[1]
                deadline = time.monotonic() + self._stage_limit(self._stage)
                if on_stage is not None:
                    on_stage(self._stage)
            elif frame[0] == "ask":
                try:
                    send_frame(self._process.stdin, self._answer(frame[1]))
                except (BrokenPipeError, OSError):
                    self._died()
                deadline = time.monotonic() + self._stage_limit(self._stage)
            elif frame[0] == "ok":
                self._busy = False
                return frame[1]
            else:
                self._busy = False
                raise rebuild_error(frame[1], frame[2])

    def _watch_memory(self) -> None:
        """Kill the worker (and the processes it started) when their resident memory passes the limit."""
        import psutil

        from deploybench.harness.measure.process import resident_mb

        try:
            root = psutil.Process(self._process.pid)
            held = resident_mb([root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            return
        limit = self.settings.max_memory_mb
        if held > limit:
            stage = self._stage
            self._discard_process()
            raise WorkerDied(STATUS_FAILED, stage, f"{stage}: out of memory: the worker held {held:.0f} MB, "
                                                   f"over --max-memory {limit:g} MB; killed")

    def _hung(self) -> None:
        stage, limit = self._stage, self._stage_limit(self._stage)
        self._discard_process()
        raise WorkerDied(STATUS_TIMEOUT, stage, f"{stage}: no answer within {limit:g} s; worker killed "
                                                "(raise --cell-timeout if the model is just slow)")

    def _died(self) -> None:
        stage, process = self._stage, self._process
        try:
            returncode = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill(process)
            returncode = process.wait()
        last = self._last_log_line() if returncode >= 0 else ""
        text = self._exit_text(returncode)
        self._discard_process()
        known = text.startswith("could not start")  # the cause is already said, with its fix
        raise WorkerDied(STATUS_FAILED, stage, f"{stage}: worker {text}" + (f" ({last})" if last and not known else ""))

    def _exit_text(self, returncode: int) -> str:
        """How the worker ended, read before its log is closed; ``could not start: ...`` when that is known."""
        return exit_description(returncode)

    def _last_log_line(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def _discard_process(self) -> None:
        """Kill the worker and everything it started (the memory child runs in a session of its own)."""
        process, self._process = self._process, None
        self._busy = False
        if process is not None:
            self._kill(process)
            process.wait()
            for pipe in (process.stdout, process.stdin):
                with contextlib.suppress(OSError):  # a frame left in the buffer of a pipe nobody reads
                    pipe.close()
        if self._log is not None:
            self._log.close()
            self._log = None


class InProcessWorker:
    """The worker's interface run in this process (``--in-process``, or a model that cannot travel):
    the same pipeline, without isolation; ``isolation`` on each result says why."""

    def __init__(self, model: Any, settings: RunSettings, isolation: str, verbose: bool = False):
        self.model, self.settings, self.isolation, self.verbose = model, settings, isolation, verbose
        self.info: ModelInfo | None = None
        self.broken = None
        self.starts = 0
        self._session: ModelSession | None = None

    def open(self) -> ModelInfo:
        if self._session is None:
            from deploybench.resolve import model_spec

            if not self.verbose:
                quiet_converters()
            source = ModelSource(ref=str(self.model)) if isinstance(self.model, (str, Path)) else None
            spec = source.resolve() if source else model_spec(self.model)
            self._session = ModelSession(spec, source, self.isolation)
            self.info = ModelInfo.of(spec)
        return self.info

    def run_cell(self, cell: Cell, measures: Collection[str] = MEASURES,
                 on_stage: Callable[[str], Any] | None = None) -> Result:
        self.open()
        return run_cell(self._session, cell, self.settings, measures, on_stage)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> InProcessWorker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_worker(model: Any, settings: RunSettings, verbose: bool = False,
                folder: str | Path | None = None) -> Worker | InProcessWorker:
    """A worker process for ``model`` (a ref, a path or a ModelSpec), or the in-process one when the
    settings ask for it or the model cannot be sent to another process. ``folder``: the worker's
    working directory, where a relative ref and the modules it imports are found."""
    if folder is not None:
        return Worker(ModelSource.of(model), settings, verbose, folder)
    if settings.in_process:
        return InProcessWorker(model, settings, "in-process (--in-process: a crash ends the run)", verbose)
    try:
        source = ModelSource.of(model)
    except DeployBenchError as exc:
        return InProcessWorker(model, settings, f"in-process: {exc}", verbose)
    return Worker(source, settings, verbose)


def main() -> int:
    from deploybench.harness.pipeline.serving import end_with_parent, serve, watch_memory

    if "--device" in sys.argv[1:]:
        end_with_parent()
    if "--max-memory" in sys.argv[1:-1]:  # a device's worker watches itself: the host cannot see its processes
        watch_memory(float(sys.argv[sys.argv.index("--max-memory") + 1]))
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever model code prints goes to the log, never into the frames
    run_child_plugins()
    try:
        serve(sys.stdin.buffer, replies)
    finally:
        replies.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
