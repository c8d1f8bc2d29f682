"""What machine a run happened on: cheap to collect (no heavy imports), stored with every matrix."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from deploybench.cpu import cpu_model_and_flags

# Distributions whose versions change what a cell measures.
LIBRARIES = ("deploybench", "torch", "onnx", "onnxruntime", "openvino", "nncf", "coremltools", "litert-torch",
             "ai-edge-litert", "tensorrt", "numpy")
# CPU features that decide which kernels (int8 VNNI, bf16, AMX tiles) a backend can use.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def library_versions() -> dict[str, str | None]:
    """{distribution: installed version or None} for the libraries in ``LIBRARIES``."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to read the topology in a container
        return None


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        return None


def machine_id() -> str:
    """A stable, anonymous id of this machine: a short hash of /etc/machine-id (or the hostname)."""
    source = ""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            source = Path(candidate).read_text().strip()
        except OSError:
            continue
        if source:
            break
    source = source or platform.node()
    return hashlib.sha256(source.encode()).hexdigest()[:12]


@lru_cache(maxsize=1)
def _static_info() -> dict[str, Any]:
    cpu, flags = cpu_model_and_flags()
    return {
        "machine_id": machine_id(),
        "host_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:12],
        "cpu": cpu,
        "arch": platform.machine(),
        "cores_physical": _physical_cores(),
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "libraries": library_versions(),
    }


def machine_info() -> dict[str, Any]:
    """{machine_id, cpu, arch, cores_physical/logical/usable, memory_gib, os, python, cpu_flags, libraries}.

    Hostnames are hashed, never stored. Collecting it imports nothing heavy (versions come from
    package metadata), so it is safe to call at collection time.
    """
    info = dict(_static_info())
    info["executable"] = sys.executable
    return info


def imported_packages(names: Sequence[str]) -> list[str]:
    """Which of the top-level packages ``names`` this process has imported: asked of a device's worker
    (a ``call`` request), it shows the libraries a run there really loaded, e.g. never torch."""
    return [name for name in names if name in sys.modules]


__all__ = ["CPU_FLAGS", "LIBRARIES", "imported_packages", "library_versions", "machine_id", "machine_info"]
