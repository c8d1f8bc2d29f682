"""A backend from another package, registered only through the ``deploybench.engines`` entry point,
is a first-class backend: listed, planned, marked, run by ``deploybench run`` and ``pytest``; and the
two entry points give the same fields with the same meaning for the same cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ENGINE_MODULE = textwrap.dedent('''
    """ONNX's own reference evaluator as a deploybench backend: a real (slow) runtime shipped with onnx."""
    from deploybench.engines.base import InferenceEngine


    class OnnxReferenceEngine(InferenceEngine):
        backend, formats, requires = "onnx-reference", ("onnx",), "onnx"

        def _load_impl(self):
            from onnx.reference import ReferenceEvaluator

            self._session = ReferenceEvaluator(str(self.artifact.path))

        def _infer_impl(self, feed):
            return self._session.run(None, feed)
''')

NET = textwrap.dedent('''
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3)).eval()
''')

TEST_FILE = "from deploybench.harness.suite import test_memory, test_precision, test_speed  # noqa: F401\n"
MODEL = "net.py:build@1x3x16x16"
TIMING = ("--min-time", "0.05", "--min-samples", "5", "--threads", "1")


@pytest.fixture(scope="module")
def project(tmp_path_factory, conversion_cache):
    """A user's project, and a site folder holding the third-party backend as an installed distribution."""
    root = tmp_path_factory.mktemp("third-party")
    site = root / "site"
    (site / "onnx_reference_backend-0.1.dist-info").mkdir(parents=True)
    (site / "onnx_reference_backend.py").write_text(ENGINE_MODULE)
    (site / "onnx_reference_backend-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: onnx-reference-backend\nVersion: 0.1\n")
    (site / "onnx_reference_backend-0.1.dist-info" / "entry_points.txt").write_text(
        "[deploybench.engines]\nonnx-reference = onnx_reference_backend:OnnxReferenceEngine\n")
    work = root / "project"
    work.mkdir()
    (work / "net.py").write_text(NET)
    (work / "test_deploy.py").write_text(TEST_FILE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "DEPLOYBENCH_CACHE": str(conversion_cache)}
    return work, env


def _run(project, *args: str) -> subprocess.CompletedProcess:
    work, env = project
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=work, env=env)


def test_the_entry_point_backend_is_listed_with_its_formats(project):
    done = _run(project, "-m", "deploybench.cli", "backends")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("onnx-reference"))
    assert row.split()[1] == "yes" and "onnx" in row.split()[3:]


def test_pytest_plans_and_marks_its_cells(project):
    done = _run(project, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q", "--models", MODEL,
                "--backends", "onnx-reference,onnxruntime", "-m", "onnx-reference")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ids = sorted(line.split("[", 1)[1].rstrip("]") for line in done.stdout.splitlines() if "::test_" in line)
    assert ids == ["net-onnx-onnx-reference-fp32"] * 3  # speed, memory, precision; -m kept only its cells


@pytest.fixture(scope="module")
def both_runs(project):
    """The same cells measured by `deploybench run` and by `pytest`, as the two JSON files they write."""
    work, _ = project
    cli = _run(project, "-m", "deploybench.cli", "run", "--models", "net.py:build", "--input-shape", "1x3x16x16",
               "--backends", "onnx-reference,onnxruntime", "--no-progress", "--output", "run.json", *TIMING)
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    tests = _run(project, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--models", MODEL,
                 "--backends", "onnx-reference,onnxruntime", "--deploybench-json", "pytest.json", *TIMING)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "6 passed" in tests.stdout
    return (json.loads((work / "run.json").read_text()), json.loads((work / "pytest.json").read_text()))


# Fields that must be equal, not just present, because both entry points ran the same pipeline on the same
# artifact and seeded inputs; timing fields differ run to run and are checked for meaning instead.
SAME_VALUE = ("status", "stage", "reason", "backend_version", "precision_ran", "artifact_path", "artifact_bytes",
              "seed", "isolation", "tolerance", "stopped_by")


def test_run_and_pytest_give_the_same_fields_with_the_same_meaning(both_runs):
    from deploybench.harness.report.matrix import Matrix

    run, tests = both_runs
    run_cells = {(c["model"], c["format"], c["backend"], c["precision"]): c for c in run["cells"]}
    test_cells = {(c["model"], c["format"], c["backend"], c["precision"]): c for c in tests["cells"]}
    assert set(run_cells) == set(test_cells) == {("net", "onnx", "onnx-reference", "fp32"),
                                                 ("net", "onnx", "onnxruntime", "fp32")}
    for key, from_run in run_cells.items():
        from_pytest = test_cells[key]
        assert from_run["status"] == "ok", from_run["reason"]
        assert set(from_run) == set(from_pytest)
        filled = {name for name, value in from_run.items() if value is not None}
        assert filled == {name for name, value in from_pytest.items() if value is not None}, key
        for name in SAME_VALUE:
            assert from_run[name] == from_pytest[name], (key, name)
        for name in ("max_abs_error", "cosine", "reference"):
            assert from_run["accuracy"][name] == from_pytest["accuracy"][name], (key, name)
        for cell in (from_run, from_pytest):
            # throughput: items per second over the wall time of the timed loop, so never above what
            # the calls' own durations allow, and near it (the loop adds only the clock reads)
            samples = cell["samples_ms"]
            busy = len(samples) * 1e3 / sum(samples)
            assert 0.5 * busy <= cell["throughput_ips"] <= busy * 1.0001
            assert cell["latency_ms"]["n"] == len(samples) >= 5
    best_run = Matrix.from_dict(run).best("net")
    best_tests = Matrix.from_dict(tests).best("net")
    assert best_run.cell == best_tests.cell  # onnxruntime: the reference evaluator is far slower
    assert best_run.cell.backend == "onnxruntime"
