"""The frames a worker and its parent exchange: length-prefixed pickles over a pipe, read with a deadline
(a hung worker must not hang the parent), and errors that keep their kind across the boundary."""

from __future__ import annotations

import os
import pickle
import select
import struct
import time
from collections.abc import Callable
from typing import Any

from deploybench.harness.pipeline.stages import one_line
from deploybench.spec import DeployBenchError, NotSupported, PrecisionNotSupported, ShapeNotSupported

HEADER = struct.Struct("!Q")
# How often a waiting reader lets its caller look at the worker (its memory) when asked to.
WATCH_INTERVAL_S = 0.1


class WorkerError(DeployBenchError):
    """An unexpected error raised in a worker, rebuilt in the parent with its type and first line."""


def send_frame(stream, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


# The kinds of error that cross the boundary as themselves: a skip stays a skip, a usage error one line.
_KINDS = {"skip": PrecisionNotSupported, "skip-shape": ShapeNotSupported, "skip-other": NotSupported,
          "usage": DeployBenchError}


def error_frame(exc: BaseException) -> tuple[str, str, str]:
    kind = next((name for name, cls in _KINDS.items() if type(exc) is cls), None)
    if kind is None:
        kind = "skip-other" if isinstance(exc, NotSupported) else "usage" if isinstance(exc, DeployBenchError) \
            else "error"
    return ("error", kind, one_line(exc))


def rebuild_error(kind: str, message: str) -> DeployBenchError:
    return _KINDS.get(kind, WorkerError)(message)


class FrameReader:
    """Frames from a pipe, waiting at most until a deadline (a hang must not hang the parent)."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def _fill(self, size: int, deadline: float, watch: Callable[[], None] | None) -> None:
        while len(self.buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], min(remaining, WATCH_INTERVAL_S)
                                        if watch else remaining)
            if watch is not None:
                watch()
            if not ready:
                continue
            chunk = os.read(self.fd, max(size - len(self.buffer), 1 << 16))
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def read(self, deadline: float, watch: Callable[[], None] | None = None) -> Any:
        """The next frame; ``watch()`` is called every ``WATCH_INTERVAL_S`` while waiting."""
        self._fill(HEADER.size, deadline, watch)
        (size,) = HEADER.unpack(self.buffer[:HEADER.size])
        self._fill(HEADER.size + size, deadline, watch)
        data, self.buffer = self.buffer[HEADER.size:HEADER.size + size], self.buffer[HEADER.size + size:]
        return pickle.loads(data)


__all__ = ["HEADER", "WATCH_INTERVAL_S", "FrameReader", "WorkerError", "error_frame", "rebuild_error", "send_frame"]
