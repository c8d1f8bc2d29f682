"""Cells on a target: the worker runs on the device, over the target's transport, speaking the same frames.

For each model a ``RemoteWorker`` starts ``python -m deploybench.harness.pipeline.worker --device`` in the
target's Python and working folder. The model's own worker here (a ``Worker``) converts each cell's
artifact for the device's CPU and answers the device's reference requests; ``ArtifactStore`` copies an
artifact's files into ``artifacts/<digest>/`` there once (an artifact already there is never sent again).
Everything else (a crash or hang mid-cell, a stage limit) is the ``Worker``'s own handling, so a cell on a
device fails the way it fails here: with the signal or the limit, and the stage. A device's worker that
cannot start (no Python there, no deploybench) fails the model's cells there with the command to fix it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Collection
from typing import Any

from deploybench.harness.measure.process import signal_name
from deploybench.harness.pipeline.frames import error_frame
from deploybench.harness.pipeline.plan import ModelInfo
from deploybench.harness.pipeline.serving import OUT_OF_MEMORY_EXIT
from deploybench.harness.pipeline.settings import RunSettings
from deploybench.harness.pipeline.shipping import Shipment, device_settings
from deploybench.harness.pipeline.stages import MEASURES
from deploybench.harness.pipeline.worker import MODEL_STAGES, Worker, WorkerDied
from deploybench.harness.remote.targets import Target
from deploybench.harness.remote.transport import ConnectError, Transport, TransportError, open_transport
from deploybench.spec import (STATUS_FAILED, STATUS_SKIPPED, Cell, DeployBenchError, NotSupported, Result)

# The device worker's own cache folder (a TensorRT plan built there), inside the target's working folder.
DEVICE_CACHE = "cache"
# Exit status of a shell that did not find the command: the Python named for the target is not there.
COMMAND_NOT_FOUND = 127
FORMATS_THAT_TRAVEL = "onnx, openvino, tflite, coreml (tensorrt is built there from onnx)"


class Device:
    """One target for the run: its transport (connected on first use), its machine block once a worker
    there has told it, the artifacts already sent there, and why it cannot be used when it cannot."""

    def __init__(self, target: Target, transport: Transport):
        self.target, self.transport = target, transport
        self.machine: dict[str, Any] | None = None
        self.unreachable: WorkerDied | None = None  # no session could be opened: every cell there fails with it
        self.sent: set[str] = set()
        self.availability: dict[tuple[str, str], tuple[bool, str]] = {}

    def shell(self, command: str) -> str:
        """``command`` in the target's working folder (made when missing)."""
        folder = shlex.quote(self.target.workdir) if not self.target.workdir.startswith("~/") \
            else "~/" + shlex.quote(self.target.workdir[2:])
        return f"mkdir -p {folder} && cd {folder} && {command}"

    def path(self, relative: str) -> str:
        return f"{self.target.workdir.rstrip('/')}/{relative}"

    def send(self, shipment: Shipment, timeout: float) -> str:
        """Copy the artifact's files to ``artifacts/<digest>`` there unless they are there already; the
        folder relative to the working folder. A ``.complete`` file is written last, so a copy cut short
        is sent again, never used half."""
        folder = f"artifacts/{shipment.digest[:32]}"
        if shipment.digest in self.sent:
            return folder
        check = self.transport.run(self.shell(f"test -f {folder}/.complete"), timeout=timeout)
        if check.exit_status != 0:
            for name, _ in shipment.files:
                self.transport.put(shipment.root / name, self.path(f"{folder}/{name}"), timeout=timeout)
            done = self.transport.run(self.shell(f"touch {folder}/.complete"), timeout=timeout)
            if done.exit_status != 0:
                raise TransportError(f"target {self.target.name}: could not mark {folder} complete: "
                                     f"{done.stderr.decode(errors='replace').strip()[:200]}")
        self.sent.add(shipment.digest)
        return folder

    def close(self) -> None:
        self.transport.close()


class RemoteWorker(Worker):
    """A model's worker on a target; ``local`` is the model's worker here (conversion and the reference)."""

    def __init__(self, local: Worker, device: Device, settings: RunSettings, verbose: bool = False):
        super().__init__(None, device_settings(settings, DEVICE_CACHE), verbose)
        self.local, self.device, self.host_settings = local, device, settings
        self.isolation = f"worker on {device.target.name}"

    # the process there
    def _launch(self):
        command = f"exec {self.device.target.python} -m deploybench.harness.pipeline.worker --device"
        if self.host_settings.max_memory_mb:
            command += f" --max-memory {self.host_settings.max_memory_mb:g}"
        return self.device.transport.start(self.device.shell(command), stderr=self._log)

    def _open_request(self) -> tuple:
        return ("open-shipped", self._model, self.verbose, self.isolation)

    def _kill(self, process) -> None:
        process.kill()

    def _exit_text(self, returncode: int) -> str:
        target = self.device.target
        if returncode == COMMAND_NOT_FOUND:
            return f"could not start: no `{target.python}` on {target.name}; set python = \"/path/to/python3\" for it"
        last = self._last_log_line()
        if "No module named deploybench" in last or "No module named 'deploybench'" in last:
            return (f"could not start: {target.name} has no deploybench under `{target.python}`; install it there: "
                    f"{target.python} -m pip install 'deploybench[runtime]' and the runtimes to measure")
        if returncode == OUT_OF_MEMORY_EXIT:
            return f"stopped on {target.name}"
        if returncode < 0:  # OpenSSH reports the signal itself
            return f"killed by {signal_name(-returncode)} on {target.name}"
        if 128 < returncode < 160:  # the shell's way of saying a signal ended the command
            return f"killed by {signal_name(returncode - 128)} on {target.name}"
        return f"{super()._exit_text(returncode)} on {target.name}"

    def _answer(self, question: tuple) -> tuple:
        if question[0] != "reference":
            return super()._answer(question)
        try:
            return ("ok", self.local._call(("reference", question[1]), stage="reference"))
        except WorkerDied as died:
            return ("error", "error", f"the reference on this machine: {died.reason}")
        except Exception as exc:
            return error_frame(exc)

    def _host(self, message: tuple, stage: str) -> Any:
        """A request to the model's worker here, started again if it crashed on an earlier cell."""
        if self.local.broken is not None:
            raise self.local.broken
        self.local.open()
        try:
            return self.local._call(message, stage=stage)
        except WorkerDied as died:
            if died.stage in MODEL_STAGES:  # the model's own crash (its reference): every later cell would meet it
                self.local.broken = died
            raise

    def open(self) -> ModelInfo:
        self._forget_if_gone()
        if self._process is None:
            if self.device.unreachable is not None:
                raise self.device.unreachable
            self._model = self._host(("device-model",), stage="reference")
            self.info = self.local.info
            try:
                try:
                    self._start()
                except TransportError as exc:  # no session, or the command could not be started there
                    self._discard_process()
                    died = WorkerDied(STATUS_FAILED, "connect", f"connect: {exc}")
                    if isinstance(exc, ConnectError):
                        self.device.unreachable = died
                    raise died from None
                if self.device.machine is None:
                    self.device.machine = self._call(
                        ("call", "deploybench.harness.measure.machine:machine_info", ()), stage="start")
            except WorkerDied as died:
                self.broken = died
                raise
        return self.info

    # the cells
    def run_cell(self, cell: Cell, measures: Collection[str] = MEASURES,
                 on_stage: Callable[[str], Any] | None = None) -> Result:
        result = Result(cell=cell, isolation=self.isolation, seed=self.settings.seed)
        target = self.device.target
        stage = "availability"
        try:
            if cell.format == "torch":
                raise NotSupported(f"a torch cell runs the model's own code, which stays on this machine; {target.name} "
                                   f"runs the formats that travel: {FORMATS_THAT_TRAVEL}")
            if target.backends and cell.backend not in target.backends:
                raise NotSupported(f"target {target.name} tries only {', '.join(target.backends)} (its backends field)")
            if self.broken is not None:
                raise self.broken
            self.open()
            self._check_available(cell)
            stage = "convert"
            if on_stage is not None:
                on_stage(stage)
            shipment = self._host(("ship", cell, self.host_settings, self._cpu_flags()), stage="convert")
            stage = "copy"
            if on_stage is not None:
                on_stage(stage)
            folder = self.device.send(shipment, timeout=self.settings.timeout_s)
            self.open()  # started again if it ended while this machine converted
            result = self._call(("shipped-cell", cell, self.settings, tuple(measures), shipment.at(folder)),
                                stage="", on_stage=on_stage)
        except WorkerDied as died:  # a device worker that could not start is ``broken`` (``open``); one that died
            result.not_run(died.status, died.stage, died.reason)  # mid-cell is started afresh for the next cell
        except NotSupported as exc:
            result.not_run(STATUS_SKIPPED, stage, str(exc))
        except DeployBenchError as exc:
            result.not_run(STATUS_FAILED, stage, f"{stage}: {exc}")
        result.machine_id = (self.device.machine or {}).get("machine_id") or result.machine_id
        return result

    def _check_available(self, cell: Cell) -> None:
        """Whether the device runs the cell's backend and precision, asked before anything is converted."""
        key = (cell.backend, cell.precision)
        if key not in self.device.availability:
            self.device.availability[key] = self._call(
                ("call", "deploybench.harness.pipeline.shipping:availability_here", key), stage="availability")
        available, detail = self.device.availability[key]
        if not available:
            raise NotSupported(detail.replace("cannot run here", f"cannot run on {self.device.target.name}"))

    def _cpu_flags(self) -> frozenset[str]:
        flags = (self.device.machine or {}).get("cpu_flags") or {}
        return frozenset(name for name, present in flags.items() if present)


def open_devices(targets, settings: RunSettings, connect_timeout: float | None = None) -> list[Device]:
    """A ``Device`` per target, not yet connected; a session opens with the first cell there."""
    from deploybench.harness.remote.transport import DEFAULT_TIMEOUT_S

    return [Device(target, open_transport(target, connect_timeout or DEFAULT_TIMEOUT_S)) for target in targets]


__all__ = ["DEVICE_CACHE", "Device", "RemoteWorker", "open_devices"]
