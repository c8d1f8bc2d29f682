"""Parallel requests: a pool of inference requests an engine can keep in flight at once.

``engine.open_requests(n)`` returns a ``RequestPool``. ``submit`` never blocks: a request waits in
the pool's FIFO queue until one of its ``size`` slots is free, as in a server, and the callback
gets a ``Completion`` with the time it started running and the time it finished
(``time.perf_counter_ns``). What the pool really runs (slots, streams, hint) is in ``notes`` and in
the engine's ``runtime_notes["requests"]``.

``ThreadRequestPool`` runs each slot in a Python thread calling a blocking ``run(feed)``: the base
engine's default (one slot: the base class cannot know whether a backend overlaps calls), ONNX
Runtime (``session.run`` releases the GIL and is thread-safe), OpenVINO (one ``InferRequest`` per
slot; ``infer`` releases the GIL) and TFLite (one slot). No Python code runs in a backend's threads.
"""

from __future__ import annotations

import abc
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec import DeployBenchError


@dataclass
class Completion:
    """One finished request: when it started running and finished (``perf_counter_ns``), its error
    (None when it ran) and its outputs (only when the pool was opened with ``outputs=True``)."""

    started_ns: int
    done_ns: int
    error: BaseException | None = None
    outputs: dict[str, np.ndarray] | None = None


OnDone = Callable[[Completion], None]


class RequestPool(abc.ABC):
    """Up to ``size`` requests in flight at once; more wait in a FIFO queue. Use as a context manager."""

    def __init__(self, engine: Any, size: int, want_outputs: bool = False):
        if size < 1:
            raise DeployBenchError(f"a request pool needs at least 1 request, not {size}")
        self.engine = engine
        self.size = int(size)
        self.want_outputs = want_outputs
        self.notes: dict[str, Any] = {"requests": self.size}
        self._lock = threading.Condition()
        self._outstanding = 0  # submitted and not completed (queued + running)
        self._closed = False
        self._on_close: list[Callable[[], Any]] = []

    def on_close(self, release: Callable[[], Any]) -> None:
        """Call ``release`` when the pool closes, after its slots stopped (engines a backend opened for it)."""
        self._on_close.append(release)

    def submit(self, inputs: Any, on_done: OnDone | None = None) -> None:
        """Queue one request on ``inputs`` (checked like ``engine.infer``'s); never blocks on the model."""
        if self._closed:
            raise DeployBenchError(f"the request pool of {self.engine!r} is closed: open another one")
        feed = self.engine.check_inputs(inputs)
        with self._lock:
            self._outstanding += 1
        self._submit_impl(feed, on_done)

    @property
    def outstanding(self) -> int:
        """Requests submitted and not yet completed (waiting in the queue or running)."""
        return self._outstanding

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until every submitted request completed; False when ``timeout`` seconds passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._outstanding == 0, timeout)

    def cancel_pending(self) -> int:
        """Drop the requests still waiting for a slot (their callbacks never run); returns how many."""
        dropped = self._drain_pending()
        with self._lock:
            self._outstanding -= dropped
            self._lock.notify_all()
        return dropped

    def close(self) -> None:
        """Drop waiting requests, let running ones finish, release the slots."""
        if not self._closed:
            self.cancel_pending()
            self.wait_all(timeout=60)
            self._closed = True
            self._close_impl()
            for release in self._on_close:
                release()

    def __enter__(self) -> RequestPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _finished(self, completion: Completion, on_done: OnDone | None) -> None:
        """Called by a slot when a request is done: the callback first, then the count."""
        try:
            if on_done is not None:
                on_done(completion)
        finally:
            with self._lock:
                self._outstanding -= 1
                self._lock.notify_all()

    @abc.abstractmethod
    def _submit_impl(self, feed: dict[str, np.ndarray], on_done: OnDone | None) -> None: ...

    @abc.abstractmethod
    def _drain_pending(self) -> int: ...

    def _close_impl(self) -> None:
        """Release the slots; the default has nothing to release."""


class ThreadRequestPool(RequestPool):
    """``size`` Python threads, each calling ``run(feed)`` (a blocking call that releases the GIL while
    the backend computes) on requests taken from one FIFO queue. ``run`` is one callable for every
    slot, or a list of one per slot (a backend whose slots each own a request object)."""

    def __init__(self, engine: Any, size: int, run: Callable[[dict[str, np.ndarray]], Any] | list[Callable],
                 want_outputs: bool = False):
        super().__init__(engine, size, want_outputs)
        runs = list(run) if isinstance(run, (list, tuple)) else [run] * self.size
        if len(runs) != self.size:
            raise DeployBenchError(f"{len(runs)} run callables for {self.size} slots: give one per slot")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, args=(runs[i],), name=f"deploybench-request-{i}",
                                          daemon=True) for i in range(self.size)]
        for thread in self._threads:
            thread.start()

    def _submit_impl(self, feed, on_done) -> None:
        self._queue.put((feed, on_done))

    def _work(self, run: Callable[[dict[str, np.ndarray]], Any]) -> None:
        clock = time.perf_counter_ns
        while True:
            item = self._queue.get()
            if item is None:
                return
            feed, on_done = item
            started = clock()
            error, outputs = None, None
            try:
                raw = run(feed)
                if self.want_outputs:
                    outputs = self.engine._standardize(raw)
            except BaseException as exc:  # reported to the caller through the completion
                error = exc
            self._finished(Completion(started, clock(), error, outputs), on_done)

    def _drain_pending(self) -> int:
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return dropped
            dropped += 1

    def _close_impl(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=60)


__all__ = ["Completion", "OnDone", "RequestPool", "ThreadRequestPool"]
