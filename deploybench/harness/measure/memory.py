"""Peak memory of loading and running one artifact, measured in a fresh child process.

The child (``python -m deploybench.harness.measure._memory_child``) imports the backend library, records
the baseline RSS of that idle interpreter, loads the artifact, runs inference, and reports the
peak RSS (the kernel's high-water mark: VmHWM on Linux, else ``getrusage(RUSAGE_SELF).ru_maxrss``,
and psutil samples after load and after each run). A fresh process per cell keeps
one cell's allocations out of another's figure, and makes the child a canary: a backend that
crashes or hangs takes down the child, never the run. The matrix runs it before the in-process
timing for that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploybench.harness.measure.process import CHILD_PLUGIN_ENV, DEFAULT_TIMEOUT_S, child_env, exit_description, kill_group
from deploybench.resolve import ModelSource
from deploybench.spec import STATUS_FAILED, STATUS_OK, STATUS_TIMEOUT, Artifact, DeployBenchError



@dataclass
class Memory:
    """Peak and baseline RSS in MB of a child that loaded the artifact and ran it; ``status`` ok, skipped (the
    backend lacks the precision or shape here), failed or timeout."""

    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None
    load_rss_mb: float | None = None
    status: str = STATUS_OK
    reason: str = ""
    sampled_peak_rss_mb: float | None = None
    outputs_checksum: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def delta_rss_mb(self) -> float | None:
        """What loading and running added over the idle interpreter with the backend imported."""
        if self.peak_rss_mb is None or self.baseline_rss_mb is None:
            return None
        return self.peak_rss_mb - self.baseline_rss_mb

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark_memory_usage(artifact_or_ref: Artifact | str | Path, backend: str, precision: str, inputs,
                           threads: int | None = None, runs: int = 10, timeout_s: float = DEFAULT_TIMEOUT_S,
                           model_source: ModelSource | str | None = None,
                           static_dims: dict[str, int] | None = None) -> Memory:
    """Return a ``Memory`` (peak/baseline/load RSS in MB, status, reason) of a fresh child process.

    ``artifact_or_ref`` is an ``Artifact``, an artifact path, or for the torch backend a model ref
    (zoo name or ``file.py:factory@shape``) the child rebuilds. A torch artifact with no file (a
    model built in memory) needs ``model_source`` (a ``ModelSource`` or a ref): the child builds the
    same model from it. ``static_dims`` compiles for the inputs' shape as the timed engine does
    (``InferenceEngine.static_dims``). ``inputs`` is an array or a mapping name -> array. A child killed by a
    signal is ``failed`` with the signal's name in the reason; one still running after ``timeout_s``
    is killed with its process group and is ``timeout``.
    """
    if runs < 1:
        raise DeployBenchError(f"runs {runs} must be at least 1, e.g. 10")
    if isinstance(model_source, str):
        model_source = ModelSource(ref=model_source)
    request: dict[str, Any] = {"backend": backend, "precision": precision, "threads": threads, "runs": runs,
                               "static_dims": static_dims}
    if isinstance(artifact_or_ref, Artifact):
        request["artifact"] = _artifact_payload(artifact_or_ref)
    elif backend == "torch" and not Path(str(artifact_or_ref)).exists():
        model_source = ModelSource(ref=str(artifact_or_ref))
    else:
        request["artifact_path"] = str(artifact_or_ref)
    if backend == "torch" and request.get("artifact") and not Path(request["artifact"]["path"]).exists() \
            and model_source is None:
        return Memory(status=STATUS_FAILED,
                      reason="a torch model with no file needs model_source (a zoo name, file.py:factory or "
                             "the ModelSource of a model built in memory) so a fresh process can build it")

    with tempfile.TemporaryDirectory(prefix="deploybench-memory-") as work:
        work_dir = Path(work)
        named = inputs if not isinstance(inputs, np.ndarray) else {"__single__": inputs}
        np.savez(work_dir / "inputs.npz", **{k: np.asarray(v) for k, v in named.items()})
        request["inputs_npz"] = str(work_dir / "inputs.npz")
        request["result_json"] = str(work_dir / "result.json")
        if model_source is not None:
            request["model_source"] = model_source.to_dict(payload_path=work_dir / "model.pickle")
        (work_dir / "request.json").write_text(json.dumps(request, default=str))
        return _run_child(work_dir, timeout_s)


def _artifact_payload(artifact: Artifact) -> dict[str, Any]:
    data = artifact.to_dict()
    data.pop("size_bytes", None)
    return data


def _run_child(work_dir: Path, timeout_s: float) -> Memory:
    import time

    command = [sys.executable, "-m", "deploybench.harness.measure._memory_child", str(work_dir / "request.json")]
    start = time.perf_counter()
    # A session of its own, so a timeout kills the child and anything it started (compiler workers).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=child_env())
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(process)
        process.communicate()
        return Memory(status=STATUS_TIMEOUT, wall_s=time.perf_counter() - start,
                      reason=f"memory child did not finish within the {timeout_s:g} s limit; killed "
                             "(raise --timeout if the model is just slow)")
    wall_s = time.perf_counter() - start
    if process.returncode < 0:
        return Memory(status=STATUS_FAILED, wall_s=wall_s,
                      reason=f"memory child {exit_description(process.returncode)}")
    result_path = work_dir / "result.json"
    if result_path.exists():
        try:
            data = json.loads(result_path.read_text())
        except ValueError:
            data = None
        if isinstance(data, dict):
            memory = Memory(**{k: v for k, v in data.items() if k in Memory.__dataclass_fields__})
            memory.wall_s = wall_s
            return memory
    last_line = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return Memory(status=STATUS_FAILED, wall_s=wall_s,
                  reason=f"memory child exited with code {process.returncode}: {last_line or 'no message'}")


__all__ = ["CHILD_PLUGIN_ENV", "Memory", "benchmark_memory_usage"]
