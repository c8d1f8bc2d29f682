"""The child process of ``benchmark_memory_usage``: ``python -m deploybench.harness.measure._memory_child request.json``.

It writes ``result.json`` with the figures, or with status "failed" and a one-line reason for a
Python exception; a crash or a hang is seen by the parent from the exit signal or the clock.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from pathlib import Path


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _max_rss_mb() -> float:
    """Peak RSS of this process in MB.

    On Linux, ``ru_maxrss`` survives ``execve``: a child spawned (vfork + exec) from a parent
    holding 1 GB of PyTorch starts with ru_maxrss = 1 GB. ``VmHWM`` of /proc/self/status is the
    high-water mark of this process's own address space, so it is used where it exists.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _checksum(outputs) -> dict[str, float]:
    import numpy as np

    return {name: float(np.asarray(value, dtype=np.float64).sum()) for name, value in outputs.items()}


def measure(request: dict) -> dict:
    import importlib

    import numpy as np

    from deploybench.engines import create_deployer, engine_class
    from deploybench.spec import Artifact

    from deploybench.harness.measure.process import run_child_plugins

    run_child_plugins()

    backend = request["backend"]
    cls = engine_class(backend)
    if cls.requires:
        importlib.import_module(cls.requires)  # the library's own footprint belongs to the baseline
    with np.load(request["inputs_npz"]) as archive:
        inputs = {name: archive[name] for name in archive.files}
    if list(inputs) == ["__single__"]:
        inputs = inputs["__single__"]

    if request.get("artifact"):
        artifact = Artifact.from_dict(request["artifact"])
    elif request.get("artifact_path"):
        from deploybench.converters import artifact_from_path

        artifact = artifact_from_path(Path(request["artifact_path"]))
    else:
        artifact = None
    if backend == "torch" and (artifact is None or not artifact.path.exists()):
        from deploybench.converters import torch_artifact
        from deploybench.resolve import ModelSource

        spec = ModelSource.from_dict(request["model_source"]).resolve()
        # built before the baseline: the weights are the model, not the load
        artifact = torch_artifact(spec, precision=request["precision"])
    baseline = _rss_mb()
    engine = create_deployer(artifact, backend=backend, precision=request["precision"],
                             threads=request.get("threads"), static_dims=request.get("static_dims"))
    load_rss = _rss_mb()
    peak_sampled = load_rss
    outputs = {}
    try:
        for _ in range(int(request["runs"])):
            outputs = engine.infer(inputs)
            peak_sampled = max(peak_sampled, _rss_mb())
    finally:
        engine.close()
    return {"status": "ok", "reason": "", "baseline_rss_mb": baseline, "load_rss_mb": load_rss,
            "peak_rss_mb": max(_max_rss_mb(), peak_sampled), "sampled_peak_rss_mb": peak_sampled,
            "outputs_checksum": _checksum(outputs)}


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    result_path = Path(request["result_json"])
    try:
        result = measure(request)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a one-line reason for the parent
        from deploybench.spec import NotSupported  # imported only now: the figures are of the backend alone

        if isinstance(exc, NotSupported):  # a precision or shape the backend lacks here: a skip, as in the worker
            result, code = {"status": "skipped", "reason": str(exc).strip().splitlines()[0]}, 0
        else:
            message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0] if str(exc) else type(exc).__name__
            result, code = {"status": "failed", "reason": message}, 1
            traceback.print_exc()
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
