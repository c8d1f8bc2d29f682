"""The worker's side of the pipe: answer the parent's requests (resolve a model, run a cell, convert a cell
for a target, run the reference) until it says close. ``worker.main`` runs it; the parent's side is
``worker.Worker``."""

from __future__ import annotations

import os
import pickle
import sys
import time
from typing import Any

from deploybench.harness.pipeline.frames import HEADER, error_frame, rebuild_error, send_frame
from deploybench.harness.pipeline.plan import ModelInfo
from deploybench.harness.pipeline.stages import ModelSession, run_cell
from deploybench.spec import DeployBenchError

ISOLATED = "worker"


def quiet_converters() -> None:
    """Hide the exporters' and quantizers' own warnings (per-op notes, deprecations, missing torchvision
    ops) so the parent's progress bar and table stay readable; errors still show, and a cell's failure
    reason carries its own message. ``--verbose`` keeps everything."""
    import logging
    import warnings

    logging.getLogger().setLevel(logging.ERROR)
    for name in ("torch", "torch.onnx", "onnxscript", "nncf", "openvino", "coremltools", "absl", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def _read_message(requests) -> tuple | None:
    """The parent's next message, or None when it went away."""
    try:
        size = requests.read(HEADER.size)
        if len(size) < HEADER.size:
            return None
        return pickle.loads(requests.read(HEADER.unpack(size)[0]))
    except EOFError:
        return None


def serve(requests, replies) -> None:
    """Answer the parent's requests until it says close (or goes away)."""
    session: ModelSession | None = None

    def on_stage(name: str) -> None:
        send_frame(replies, ("stage", name))

    def ask(question: tuple) -> Any:
        """Ask the parent mid-request (a device's worker asks its host for the reference's outputs)."""
        send_frame(replies, ("ask", question))
        answer = _read_message(requests)
        if answer is None:
            raise EOFError("the parent went away")
        if answer[0] == "ok":
            return answer[1]
        raise rebuild_error(answer[1], answer[2])

    while True:
        message = _read_message(requests)
        if message is None:
            return
        kind = message[0]
        try:
            if kind == "close":
                return
            if kind == "open":
                source, verbose = message[1], message[2]
                if not verbose:
                    quiet_converters()
                session = ModelSession(source.resolve(), source, ISOLATED) if source is not None else None
                reply = None
            elif kind == "open-shipped":  # on a target: the model travelled without its code
                from deploybench.harness.pipeline.shipping import ShippedSession

                if not message[2]:
                    quiet_converters()
                session = ShippedSession(message[1], message[3], ask)
                reply = None
            elif kind == "shipped-cell":
                session.shipped = message[4]
                reply = run_cell(session, message[1], message[2], message[3], on_stage)
            elif kind == "ship":  # on the host, for a target
                from deploybench.harness.pipeline.shipping import ship_cell

                reply = ship_cell(session, message[1], message[2], message[3])
            elif kind == "device-model":
                from deploybench.harness.pipeline.shipping import device_model

                reply = device_model(session)
            elif kind == "reference":
                reply = session.reference()(message[1])
            elif kind == "call":
                import importlib

                module_name, _, name = message[1].partition(":")
                reply = getattr(importlib.import_module(module_name), name)(*message[2])
            elif kind == "info":
                reply = ModelInfo.of(session.spec)
            elif kind == "cell":
                reply = run_cell(session, message[1], message[2], message[3], on_stage)
            else:
                raise DeployBenchError(f"unknown worker request {kind!r}")
        except Exception as exc:
            send_frame(replies, error_frame(exc))
            continue
        send_frame(replies, ("ok", reply))


def end_with_parent() -> None:
    """On a device: when the SSH session that started this worker ends (the host went away, the connection
    dropped), end this worker and what it started, rather than run on unseen on someone's board."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        import psutil

        _end(psutil.Process().children(recursive=True), 1)

    threading.Thread(target=watch, daemon=True, name="deploybench-end-with-parent").start()


# The exit status of a device's worker that stopped itself over --max-memory: the host cannot watch a
# device's processes, so the worker watches its own. 75 (EX_TEMPFAIL) is clear of the shell's 128+signal.
OUT_OF_MEMORY_EXIT = 75


def watch_memory(limit_mb: float, interval_s: float = 0.2) -> None:
    """On a device: end this worker and what it started when their resident memory passes ``limit_mb``,
    saying so as the last line of its log (which the host reads when the worker ends)."""
    import threading

    import psutil

    from deploybench.harness.measure.process import resident_mb

    def watch() -> None:
        me = psutil.Process()
        while True:
            time.sleep(interval_s)
            children = me.children(recursive=True)
            held = resident_mb([me, *children])
            if held > limit_mb:
                print(f"out of memory: the worker held {held:.0f} MB, over --max-memory {limit_mb:g} MB; stopped",
                      file=sys.stderr, flush=True)
                _end(children, OUT_OF_MEMORY_EXIT)

    threading.Thread(target=watch, daemon=True, name="deploybench-max-memory").start()


def _end(children, status: int) -> None:
    """Kill what this worker started, then end it with ``status`` at once (a watch thread cannot unwind the
    main thread, which may be deep in a model's call)."""
    import psutil

    for child in children:
        try:
            child.kill()
        except psutil.Error:
            continue
    os._exit(status)


__all__ = ["ISOLATED", "OUT_OF_MEMORY_EXIT", "end_with_parent", "quiet_converters", "serve", "watch_memory"]
