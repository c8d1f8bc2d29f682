"""A sharded pytest session gated against a git ref deals its shard from the union of both sides'
planned cells (as `deploybench compare --shard` does): a cell both sides plan is measured on both in
the same shard, so adding a model in a pull request never turns a kept cell into 'in the baseline only'."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from deploybench.harness.gate.session import baseline_arguments
from deploybench.harness.pipeline.plan import select_shard
from deploybench.spec import Cell

CONFTEST = '''
import pytest
import torch
from torch import nn

from deploybench.models import model_from_module

NAMES = {names!r}


def build_net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 4)).eval()


@pytest.fixture(scope="session")
def deploybench_models():
    return [model_from_module(build_net(), torch.randn(1, 3, 16, 16), name=name) for name in NAMES]
'''
SUITE = "from deploybench.harness.suite import test_speed  # noqa: F401\n"
BASE, HEAD = ("net_a", "net_b", "net_c"), ("net_a", "net_b", "net_c", "net_d", "net_e")


def _ids(names):
    return [Cell(name, "onnx", "onnxruntime", "fp32") for name in names]


def test_dealing_alone_would_split_the_sides_differently():
    """The case the session below runs: dealt alone, the baseline's shard 1 would hold net_c, which the
    pull request's shard 1 does not (the two new models moved it to shard 2)."""
    alone = {c.model for c in select_shard(_ids(BASE), 1, 2)}
    union = {c.id for c in _ids(HEAD)}
    assert alone == {"net_a", "net_c"}
    assert {c.model for c in select_shard(_ids(BASE), 1, 2, universe=union)} == {"net_a"}
    assert {c.model for c in select_shard(_ids(HEAD), 1, 2)} == {"net_a", "net_d", "net_e"}


def test_sharded_session_gated_at_a_ref_deals_from_both_sides(tmp_path, conversion_cache):
    (tmp_path / "conftest.py").write_text(CONFTEST.format(names=BASE))
    (tmp_path / "test_deploy.py").write_text(SUITE)
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "three nets"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "conftest.py").write_text(CONFTEST.format(names=HEAD))  # the pull request adds two

    env = {**os.environ, "DEPLOYBENCH_CACHE": str(conversion_cache)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--backends",
                           "onnxruntime", "--precisions", "fp32", "--no-memory", "--min-time", "0.05",
                           "--shard", "1/2", "--deploybench-gate-ref", "HEAD"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    assert "measuring the baseline: HEAD" in out and "did not list its cells" not in out
    gate = out[out.index("deploybench gate"):]
    # measured on both sides (the same bytes on both, so the gate needs no re-run to call it unchanged)
    assert re.search(r"net_a-onnx-onnxruntime-fp32\s+\w+\s+unchanged", gate), gate
    assert re.search(r"net_d-onnx-onnxruntime-fp32\s+status\s+inconclusive.*new", gate), gate
    assert "net_c" not in gate and "in the baseline only" not in gate, gate


def test_the_baseline_gets_the_universe_but_not_the_session_outputs():
    kept = baseline_arguments(["-q", "--shard", "1/2", "--deploybench-planned", "p.json",
                               "--deploybench-shard-universe=u.json", "--deploybench-gate-ref", "main"])
    assert kept == ["-q", "--shard", "1/2"]
