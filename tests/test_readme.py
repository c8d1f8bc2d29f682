"""The README's Python examples run as written: a newcomer's first copy-paste must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "import deploybench as db" in b]


def test_readme_has_a_runnable_api_example():
    assert python_examples(), "README lost its API example"


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
