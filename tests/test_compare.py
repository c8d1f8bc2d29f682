"""`deploybench compare` as a pull request uses it: a project in git, the base ref built in a worktree
and both sides measured here, then `deploybench verdicts` joining the CI jobs' files. Every command runs
as a subprocess, as the CI recipe runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

NET = textwrap.dedent("""
    import torch
    from torch import nn

    LAYERS = 4
    DEAD_CHANNEL_WEIGHT = 0.0  # weights that read a channel which is always zero: free in fp32, costly in int8
    TABLE_FLOATS = 0  # a table read at an index the input decides: memory, and next to no compute


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.body = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1) for _ in range(LAYERS))
            self.head = nn.Conv2d(16, 4, 1)
            with torch.no_grad():
                for conv in (self.stem, *self.body, self.head):
                    fan_in = conv.weight[0].numel()
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                    conv.bias.zero_()
                self.stem.weight[0] = 0.0  # channel 0 is dead from the stem on
                self.stem.bias[0] = -1.0
                for conv in self.body:
                    conv.bias[0] = -1e4
                    conv.weight[:, 0] = DEAD_CHANNEL_WEIGHT
            if TABLE_FLOATS:
                self.register_buffer("table", torch.randn(TABLE_FLOATS, generator=generator) * 1e-6)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            for conv in self.body:
                x = torch.relu(conv(x))
            if TABLE_FLOATS:  # an index no constant folding can know, so the whole table is kept
                x = x + self.table[(x[0, 0, 0, 0] > 1e9).long()]
            return self.head(x)


    def build():
        return Net().eval()
""")
MODELS = ["--models", "net.py:build@1x3x48x48"]
QUICK = ["--backends", "onnxruntime", "--min-time", "0.2", "--no-progress"]


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", *args], cwd=project,
                   check=True, capture_output=True)


def _commit(project: Path, tag: str, text: str) -> None:
    (project / "net.py").write_text(text)
    _git(project, "add", "net.py")
    _git(project, "commit", "-q", "-m", tag)
    _git(project, "tag", tag)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's project with five commits: the base, a comment-only edit, three times the layers,
    weights that read a dead channel (the same fp32 outputs, a ruined int8 calibration), and a 48 MB
    table the network reads one value of (peak memory up, compute the same)."""
    root = tmp_path_factory.mktemp("project")
    _git(root, "init", "-q", "-b", "main")
    _commit(root, "base", NET)
    _commit(root, "comment", NET.replace("import torch\n", "import torch  # a comment changes no artifact\n", 1))
    _commit(root, "slower", NET.replace("LAYERS = 4", "LAYERS = 12"))
    _commit(root, "int8-drop", NET.replace("DEAD_CHANNEL_WEIGHT = 0.0", "DEAD_CHANNEL_WEIGHT = 30.0"))
    _commit(root, "fatter", NET.replace("TABLE_FLOATS = 0", "TABLE_FLOATS = 12_000_000"))
    _git(root, "checkout", "-q", "comment")  # the working tree is not what either side builds
    return root


def _deploybench(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploybench.cli", *args], cwd=project, capture_output=True,
                          text=True, timeout=timeout)


def _compare(project: Path, base: str, head: str, out: str, *extra: str) -> tuple[int, dict]:
    done = _deploybench(project, "compare", base, head, *MODELS, *QUICK, "--json", out, *extra)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads((project / out).read_text())


def _verdict(data: dict, metric: str) -> dict:
    return next(v for v in data["verdicts"] if v["metric"] == metric)


def test_a_comment_only_change_is_the_same_artifact_and_nothing_is_timed(project):
    code, data = _compare(project, "base", "comment", "same.json", "--no-memory")
    assert code == 0
    assert data["same_artifact"] == ["net-onnx-onnxruntime-fp32"]
    assert data["interleaved"] == {}
    assert {v["verdict"] for v in data["verdicts"]} == {"unchanged"}
    assert data["base"]["commit"] != data["head"]["commit"]
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=project, capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1  # the temporary worktrees are gone


def test_three_times_the_layers_is_a_latency_regression_and_verdicts_joins_the_jobs(project):
    code, data = _compare(project, "base", "slower", "slower.json", "--no-memory", "--markdown", "gate.md",
                          "--output", "head.json")
    assert code == 1 and data["regressed"]
    from deploybench.harness.report.matrix import Matrix

    (head,) = Matrix.load(project / "head.json").results  # the head side, for `merge` and `report`
    assert head.cell.id == "net-onnx-onnxruntime-fp32" and head.ok
    latency = _verdict(data, "latency")
    assert latency["verdict"] == "regression" and latency["mode"] == "interleaved"
    assert latency["ratio"] > 1.5  # measured 2.6 for 3x the body layers on a 2-core EPYC
    ratios = data["interleaved"]["net-onnx-onnxruntime-fp32"]["ratios"]
    assert len(ratios) >= 12 and sorted(ratios)[len(ratios) // 2] > 1.5
    assert _verdict(data, "accuracy:cosine")["verdict"] == "unchanged"
    assert "regression" in (project / "gate.md").read_text()

    if not (project / "same.json").exists():
        _compare(project, "base", "comment", "same.json", "--no-memory")
    joined = _deploybench(project, "verdicts", "same.json", "slower.json", "--markdown", "all.md")
    assert joined.returncode == 1, joined.stderr
    assert re.search(r"1 of 2 cell\(s\) regressed|regression", joined.stdout)
    assert _deploybench(project, "verdicts", "same.json").returncode == 0


@pytest.mark.slow
def test_an_int8_calibration_ruined_by_dead_channel_weights_is_an_accuracy_regression(project):
    code, data = _compare(project, "base", "int8-drop", "int8.json", "--precisions", "fp32,int8", "--no-memory")
    assert code == 1
    by_cell = {(v["cell"], v["metric"]): v for v in data["verdicts"]}
    int8 = by_cell[("net-onnx-onnxruntime-int8", "accuracy:cosine")]
    assert int8["verdict"] == "regression", int8
    fp32 = by_cell[("net-onnx-onnxruntime-fp32", "accuracy:cosine")]
    assert fp32["verdict"] == "unchanged"  # the network computes the same thing in floating point


@pytest.mark.slow
def test_a_48_mb_table_is_a_memory_regression_on_its_own_line(project):
    code, data = _compare(project, "base", "fatter", "fatter.json")
    assert code == 1
    memory = _verdict(data, "memory")
    assert memory["verdict"] == "regression" and memory["current"] - memory["baseline"] > 30, memory
    assert _verdict(data, "accuracy:cosine")["verdict"] == "unchanged"


def test_what_cannot_be_compared_is_one_line_and_exit_2(project, tmp_path):
    cases = {
        ("no-such-ref", "base"): "'no-such-ref' is not a commit",
        ("base", "nothing.json"): "nothing.json does not exist",
        ("base", "net.py"): "give both in one form",
    }
    for (base, head), expected in cases.items():
        done = _deploybench(project, "compare", base, head, *MODELS, *QUICK, timeout=120)
        assert done.returncode == 2, (base, head, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], done.stderr
    no_models = _deploybench(project, "compare", "base", "slower", *QUICK, timeout=120)
    assert no_models.returncode == 2 and "needs --models" in no_models.stderr

    malformed = tmp_path / "v.json"
    malformed.write_text('{"schema": "deploybench.compare/1", "verdicts": [{"cell": 1}]}')
    not_verdicts = tmp_path / "r.json"
    not_verdicts.write_text("[]")
    for path in (malformed, not_verdicts, tmp_path / "missing.json"):
        done = _deploybench(project, "verdicts", str(path), timeout=120)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert str(path) in done.stderr


def test_two_onnx_runtime_sessions_side_by_side_stop_spinning_and_compute_the_same(small_cnn_spec):
    """Interleaving loads both ONNX Runtime sessions without intra-op spinning (each one's idle pool
    spun on the cores the other computed on); the outputs are those of a spinning session."""
    import numpy as np

    from deploybench.converters import deploy_model
    from deploybench.engines import create_deployer
    from deploybench.harness.gate.interleave import _engine_for
    from deploybench.spec import Cell, Result

    artifact = deploy_model(small_cnn_spec, "onnx")
    result = Result(cell=Cell(small_cnn_spec.name, "onnx", "onnxruntime", "fp32"), artifact_path=str(artifact.path))
    engine, inputs = _engine_for(result, _settings(threads=2))
    with engine, create_deployer(artifact, backend="onnxruntime", threads=2) as deployed:
        assert engine.runtime_notes["spinning"] is False and "spinning" not in deployed.runtime_notes
        for name, value in deployed.infer(inputs).items():
            np.testing.assert_allclose(engine.infer(inputs)[name], value, rtol=1e-6, atol=1e-6)


def _settings(threads: int):
    from deploybench.harness.pipeline.settings import RunSettings

    return RunSettings(threads=threads)
