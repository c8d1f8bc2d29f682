"""Child processes of deploybench (the memory child, the pipeline's workers): their environment, and how
a child that crashed or hung is named and stopped. Plain module: no pytest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


# Seconds a child (or one stage of a cell in a worker) may run before it is killed as a timeout. A TFLite
# conversion of ResNet-18 took 95 s on a busy 2-core box; the limit is for hangs, not slow models.
DEFAULT_TIMEOUT_S = 300.0

# Files (joined by os.pathsep) every child runs before anything else, so a test or a third party can
# register an engine that only exists in their code.
CHILD_PLUGIN_ENV = "DEPLOYBENCH_CHILD_PLUGINS"


def run_child_plugins() -> None:
    """In a child: run the files named by ``CHILD_PLUGIN_ENV``."""
    import runpy

    for plugin in filter(None, os.environ.get(CHILD_PLUGIN_ENV, "").split(os.pathsep)):
        runpy.run_path(plugin)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child that must import this very deploybench, and the modules
    a model built here was defined in (a user's conftest.py, a test file): this process's ``sys.path``."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])
    paths = [package_root, *(p for p in sys.path if p and Path(p).is_dir()), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    env.update(extra or {})
    return env


def kill_group(process: subprocess.Popen) -> None:
    """Kill the child and everything it started (it runs in a session of its own)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def resident_mb(processes) -> float:
    """The resident memory of ``processes`` (psutil.Process objects) together, in MB; one that ended
    meanwhile counts nothing."""
    import psutil

    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_description(returncode: int) -> str:
    """'killed by SIGSEGV' for a signal, 'exited with code 3' otherwise."""
    return f"killed by {signal_name(-returncode)}" if returncode < 0 else f"exited with code {returncode}"


__all__ = ["CHILD_PLUGIN_ENV", "DEFAULT_TIMEOUT_S", "child_env", "run_child_plugins", "exit_description", "kill_group", "resident_mb", "signal_name"]
