"""The transport interface: what deploybench needs from a way of reaching a device, and nothing more.

Four verbs and a close: ``run`` a command to its end (bounded), ``start`` a long-running process whose
stdin and stdout are local pipes, ``put`` and ``get`` a file. ``start`` returns a ``RemoteProcess`` shaped
like ``subprocess.Popen`` (``stdin``/``stdout`` binary files with real file descriptors, ``poll``,
``wait``, ``kill``, ``returncode``), so the worker's frame reader, which selects on a descriptor with a
deadline, can read a worker on a device exactly as it reads one here.

A transport is one module with one subclass (``ssh.SshTransport``), named in ``targets.TRANSPORTS``.
Every failure is a ``TransportError`` (a ``DeployBenchError``: one line naming the target and the fix);
``ConnectError`` marks the ones before a session existed, i.e. the target is unreachable.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from deploybench.harness.remote.targets import TRANSPORTS, Target
from deploybench.spec import DeployBenchError

DEFAULT_TIMEOUT_S = 15.0


class TransportError(DeployBenchError):
    """A remote step failed: the connection dropped, a command outlived its timeout, a copy failed."""


class ConnectError(TransportError):
    """No session: the host is unreachable, refused the key, or its host key is not trusted."""


@dataclass(frozen=True)
class CommandResult:
    """A finished remote command. ``exit_status`` is negative (-signal) when a signal ended it."""

    exit_status: int
    stdout: bytes
    stderr: bytes


class RemoteProcess(Protocol):
    """A long-running process on the target, with local pipes for its stdin and stdout."""

    stdin: BinaryIO  # write frames here; closing it is end-of-file there
    stdout: BinaryIO  # read frames here; ``fileno()`` is a real pipe, so ``select`` works

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class Transport(ABC):
    """How deploybench reaches one target. Connects on first use; every step is bounded by ``timeout``."""

    def __init__(self, target: Target, timeout: float = DEFAULT_TIMEOUT_S):
        if not timeout > 0:
            raise DeployBenchError(f"timeout {timeout} must be a positive number of seconds, e.g. 15")
        self.target, self.timeout = target, float(timeout)

    @abstractmethod
    def connect(self) -> None:
        """Open the session now (otherwise the first step does); raises ``ConnectError``."""

    @abstractmethod
    def run(self, command: str, *, input: bytes | None = None, timeout: float | None = None) -> CommandResult:
        """Run ``command`` in the target's shell with ``input`` on its stdin; at ``timeout`` the command
        is killed and ``TransportError`` raised. A non-zero exit is a result, not an error."""

    @abstractmethod
    def start(self, command: str, *, stderr: BinaryIO | None = None) -> RemoteProcess:
        """Start ``command`` with pipes for stdin and stdout (``stderr`` goes to that file, else is dropped)."""

    @abstractmethod
    def put(self, local: Path, remote: str, *, timeout: float | None = None) -> None:
        """Copy ``local`` to ``remote`` (relative to the login folder), atomically: never half a file there."""

    @abstractmethod
    def get(self, remote: str, local: Path, *, timeout: float | None = None) -> None:
        """Copy ``remote`` to ``local``."""

    @abstractmethod
    def close(self) -> None:
        """End the session and everything started through it; safe to call twice."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_transport(target: Target, timeout: float = DEFAULT_TIMEOUT_S) -> Transport:
    """The transport ``target.transport`` names (not yet connected)."""
    module_name, _, class_name = TRANSPORTS[target.transport].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(target, timeout)


__all__ = ["CommandResult", "ConnectError", "DEFAULT_TIMEOUT_S", "RemoteProcess", "Transport", "TransportError",
           "open_transport"]
