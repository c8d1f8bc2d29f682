"""The README's Python examples run as written: a newcomer's first copy-paste must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "import deploybench as db" in b]


def test_readme_has_a_runnable_api_example():
    assert python_examples(), "README lost its API example"


@pytest.mark.openvino  # its matrix has OpenVINO cells
def test_readme_api_example_runs_and_prints_the_matrix(tmp_path, conversion_cache):
    code = python_examples()[0]
    env = {**os.environ, "DEPLOYBENCH_CACHE": str(conversion_cache)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"median \d+\.\d+ ms, p99 \d+\.\d+ ms over \d+ calls", out)
    # every cell of the matrix ran: torch, onnx on two backends and the OpenVINO IR, fp32 and int8
    for cell in ("onnx  +onnxruntime +fp32", "onnx  +onnxruntime +int8", "openvino +openvino +int8",
                 "torch +torch +fp32"):
        assert re.search(cell + r".* ok", out), f"{cell} missing or not ok in:\n{out}"
    assert "speed-up" in out


def project_files() -> dict[str, str]:
    """README blocks whose first line names a file (``# conftest.py``): a user's project, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return {b.splitlines()[0][2:]: b for b in blocks if re.fullmatch(r"# \w+\.py", b.splitlines()[0])}


def run_pytest(project: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYBENCH_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           *args], cwd=project, env=env, capture_output=True, text=True, timeout=900)


def test_readme_user_project_measures_its_cells_and_gates_a_slower_model(tmp_path, conversion_cache):
    files = project_files()
    assert set(files) == {"conftest.py", "test_deploy.py"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    first = run_pytest(tmp_path, conversion_cache, "--backends", "onnxruntime", "--deploybench-json", "base.json")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "3 passed" in first.stdout  # speed, memory and precision of my_net-onnx-onnxruntime-fp32
    from deploybench.harness.report.matrix import Matrix

    (cell,) = Matrix.load(tmp_path / "base.json").results
    assert cell.cell.id == "my_net-onnx-onnxruntime-fp32" and cell.ok
    assert cell.latency_ms.n >= 30 and cell.peak_rss_mb > 0 and cell.accuracy.max_abs_error < 1e-4

    # the same model made 16x wider: the in-session gate must call it a regression and exit 1
    conftest = tmp_path / "conftest.py"
    conftest.write_text(conftest.read_text().replace("model_from_module(build_net(),", "model_from_module(build_net(256),"))
    second = run_pytest(tmp_path, conversion_cache, "--backends", "onnxruntime", "--deploybench-gate", "base.json")
    assert second.returncode == 1, second.stdout[-3000:]
    assert re.search(r"my_net-onnx-onnxruntime-fp32\s+latency\s+regression", second.stdout)


def test_readme_user_project_gates_its_working_tree_against_a_git_ref(tmp_path, conversion_cache):
    """`pytest --deploybench-gate-ref HEAD`: the same tests run at HEAD in a temporary worktree, then
    both sides' artifacts interleaved; the uncommitted edit (16x wider) is a latency regression."""
    for name, text in project_files().items():
        (tmp_path / name).write_text(text)
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "my_net"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True)
    conftest = tmp_path / "conftest.py"
    conftest.write_text(conftest.read_text().replace("model_from_module(build_net(),", "model_from_module(build_net(256),"))

    done = run_pytest(tmp_path, conversion_cache, "--backends", "onnxruntime", "-m", "speed",
                      "--deploybench-gate-ref", "HEAD", "--junitxml", str(tmp_path / "cells.xml"))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert "measuring the baseline: HEAD" in done.stdout
    assert re.search(r"my_net-onnx-onnxruntime-fp32\s+latency\s+regression\s.*interleaved", done.stdout)
    assert "1 passed" in (tmp_path / "cells.xml").read_text() or 'tests="1"' in (tmp_path / "cells.xml").read_text()
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1  # the baseline's worktree is gone
