"""The results room: atomic writes, the one best-cell rule, the one schema name, and no way back from
results or gate into the report."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import deploybench
from deploybench.harness.results import io
from deploybench.harness.results.io import write_text_atomic
from deploybench.harness.report.matrix import Matrix
from deploybench.harness.results.cells import SCHEMA, best_cell
from deploybench.spec import Cell, DeployBenchError, LatencyStats, Result, ToleranceCheck

PACKAGE = Path(deploybench.__file__).parent


def test_write_text_atomic_replaces_the_file_and_respects_the_umask(tmp_path):
    target = tmp_path / "out" / "report.md"
    old_umask = os.umask(0o027)
    try:
        assert write_text_atomic(target, "first ★") == target
        assert write_text_atomic(target, "second") == target
    finally:
        os.umask(old_umask)
    assert target.read_text(encoding="utf-8") == "second"
    assert target.stat().st_mode & 0o777 == 0o640  # as open() would make it, not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_a_failure_mid_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("previous")
    written = []

    def interrupted(fd):
        written.append(os.fstat(fd).st_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):  # not an OSError: it goes through unchanged
        write_text_atomic(target, "x" * 100_000)
    assert written == [100_000]  # the new text was in the temporary file when the write stopped
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_os_error_is_one_line_naming_the_path_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "gate.md"
    target.write_text("previous")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", disk_full)
    with pytest.raises(DeployBenchError) as caught:
        write_text_atomic(target, "new")
    message = str(caught.value)
    assert "\n" not in message and str(target) in message and "No space left on device" in message
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["gate.md"]


def _ok(model: str, backend: str, median: float, passed: bool | None = None) -> Result:
    latency = LatencyStats(n=10, mean=median, median=median, p90=median, p95=median, p99=median, min=median,
                           max=median, stdev=0.0, cv=0.0, iqr=0.0)
    tolerance = None if passed is None else ToleranceCheck(passed, "fp32: max_abs_error 0.2 > 1e-4")
    return Result(Cell(model, "onnx", backend, "fp32"), latency_ms=latency, tolerance=tolerance)


def test_best_cell_ignores_a_cell_that_fails_accuracy():
    wrong_but_fast = _ok("net", "openvino", 1.0, passed=False)
    checked = _ok("net", "onnxruntime", 3.0, passed=True)
    unchecked = _ok("net", "torch", 2.0)
    other_model = _ok("other", "onnxruntime", 0.5)
    skipped = Result(Cell("net", "tflite", "tflite", "fp32"), status="skipped", reason="not installed")
    results = [wrong_but_fast, checked, unchecked, other_model, skipped]
    assert best_cell(results, "net") is unchecked  # an unchecked cell is not a failing one
    assert best_cell([wrong_but_fast, checked], "net") is checked
    assert best_cell(results) is other_model
    assert best_cell([wrong_but_fast, skipped]) is None
    assert Matrix(results=results).best("net") is unchecked


def test_the_schema_name_is_written_once_in_the_package():
    places = [(path.relative_to(PACKAGE).as_posix(), text.count(SCHEMA))
              for path in sorted(PACKAGE.rglob("*.py")) if SCHEMA in (text := path.read_text(encoding="utf-8"))]
    assert places == [("harness/results/cells.py", 1)]


def test_gate_never_imports_the_report():
    for path in sorted((PACKAGE / "harness" / "gate").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in imported if "report" in name.split(".")], path.name


def test_importing_results_and_gate_loads_no_report_module():
    code = ("import sys\n"
            "import deploybench.harness.results.history, deploybench.harness.results.merge\n"
            "import deploybench.harness.gate.command\n"
            "print([m for m in sys.modules if m.startswith('deploybench.harness.report')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


KILLED_WRITER = """
import sys
from deploybench.harness.report.matrix import Matrix
from deploybench.spec import Cell, Result

path = sys.argv[1]
for generation in range(10**6):
    # big enough that a write takes a while: many cells with their samples
    results = [Result(cell=Cell(f"m{i}", "onnx", "onnxruntime", "fp32"), samples_ms=[float(generation)] * 2000)
               for i in range(40)]
    Matrix(results=results, settings={"generation": generation}).save(path)
    print(generation, flush=True)
"""


def test_kill_9_while_writing_results_leaves_the_previous_file_readable(tmp_path):
    """SIGKILL cannot be caught: only the write itself (temporary file, fsync, rename) keeps the file whole."""
    import signal
    import time

    from deploybench.harness.report.matrix import Matrix

    path = tmp_path / "results.json"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "0"  # one complete file exists
        seen = []
        for delay in (0.013, 0.029, 0.041, 0.057, 0.071):
            time.sleep(delay)
            matrix = Matrix.load(path)  # readable while being rewritten
            seen.append(matrix.settings["generation"])
            assert all(r.samples_ms[0] == float(matrix.settings["generation"]) for r in matrix.results)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    last = Matrix.load(path)  # the previous state (or the one just finished), never half a file
    assert len(last.results) == 40 and last.settings["generation"] >= max(seen)
    # a killed writer may leave its own hidden temporary file behind; nothing else, and nothing read as results
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "results.json"]
    assert all(name.startswith(".results.json.") and name.endswith(".tmp") for name in leftovers), leftovers


def test_results_files_follow_the_umask_not_0600(tmp_path):
    import os

    from deploybench.harness.results.io import write_text_atomic

    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the CI job's other users, as `open()` would make it
