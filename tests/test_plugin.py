"""The pytest plugin, driven through pytester: parametrization, selection, sharding, skips, outputs."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deploybench.spec import DeployBenchError

pytest_plugins = ["pytester"]

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

CONFTEST = '''
import numpy as np
import pytest


@pytest.fixture
def deploybench_models():
    import torch
    from torch import nn
    from deploybench.models import model_from_module

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    return [model_from_module(net, np.zeros((1, 3, 8, 8), np.float32), name="small", output_names=["logits"],
                              task="classification")]
'''

CELL_TEST = '''
def test_cell(cell, model, backend, precision):
    assert cell.id == f"{model.name}-{cell.format}-{backend}-{precision}"
'''


@pytest.fixture(autouse=True)
def keep_imported_libraries(monkeypatch):
    """Keep libraries a pytester run imports: pytester drops them afterwards, and C extensions
    (torch, numpy.fft) crash or refuse when imported twice in one process. Test modules still go."""
    from _pytest import pytester as pytester_module

    class KeepLibraries(pytester_module.SysModulesSnapshot):
        def __init__(self, preserve=None):
            super().__init__(preserve=lambda name: not name.startswith(("conftest", "test_")))

    monkeypatch.setattr(pytester_module, "SysModulesSnapshot", KeepLibraries)


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cells=CELL_TEST)
    return pytester


def _collected_ids(result) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "::test_cell[" in line]


def test_collect_only_lists_cell_ids_without_converting(project):
    cache = project.path / "cache"
    result = project.runpytest("--co", "-q", "--backends", "torch,onnxruntime,openvino",
                               "--deploybench-cache", str(cache))
    ids = _collected_ids(result)
    assert ids == ["small-torch-torch-fp32", "small-onnx-onnxruntime-fp32", "small-openvino-openvino-fp32",
                   "small-onnx-openvino-fp32"]
    assert not cache.exists()


def test_marker_keyword_and_shards_select_cells(project):
    backends = ["--backends", "torch,onnxruntime,openvino", "--precisions", "fp32,fp16"]
    everything = set(_collected_ids(project.runpytest("--co", "-q", *backends)))
    only_ort = _collected_ids(project.runpytest("--co", "-q", "-m", "onnxruntime", *backends))
    assert only_ort and all("-onnxruntime-" in i for i in only_ort)
    assert set(only_ort) == {i for i in everything if "-onnxruntime-" in i}
    by_keyword = _collected_ids(project.runpytest("--co", "-q", "-k", "openvino and fp32", *backends))
    assert set(by_keyword) == {"small-openvino-openvino-fp32", "small-onnx-openvino-fp32"}
    first = set(_collected_ids(project.runpytest("--co", "-q", "--shard", "1/2", *backends)))
    second = set(_collected_ids(project.runpytest("--co", "-q", "--shard", "2/2", *backends)))
    assert first and second and not first & second and first | second == everything


def test_bad_shard_is_a_usage_error_naming_the_fix(project):
    result = project.runpytest("--co", "-q", "--shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "bad --shard '3/2'" in result.stderr.str() and "1 <= i <= n" in result.stderr.str()
    result = project.runpytest("--co", "-q", "--tolerance", "int8:top1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "int8:top1=0.97" in result.stderr.str()


def test_missing_backend_is_a_skip_with_its_reason(project):
    project.makepyfile(test_engine="def test_engine(engine):\n    assert engine.loaded\n")
    result = project.runpytest("-rs", "--backends", "tensorrt", "test_engine.py")
    result.assert_outcomes(skipped=1)
    assert "tensorrt cannot run here" in result.stdout.str()


def test_plugin_leaves_other_tests_alone(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest("-q", "--strict-markers", "-m", "not slow and not speed")
    result.assert_outcomes(passed=1)
    assert "deploybench matrix" not in result.stdout.str()


@pytest.mark.slow
def test_real_run_writes_junit_matrix_json_and_benchmark_data(project):
    shutil.copy(BENCHMARKS / "test_speed.py", project.path / "test_speed.py")
    shutil.copy(BENCHMARKS / "test_precision.py", project.path / "test_precision.py")
    junit, matrix = project.path / "junit.xml", project.path / "matrix.json"
    result = project.runpytest("-q", "--backends", "onnxruntime", "test_speed.py", "test_precision.py",
                               f"--junitxml={junit}", f"--deploybench-json={matrix}", "--benchmark-autosave",
                               f"--benchmark-storage={project.path / 'storage'}", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    names = {case.get("name") for case in ET.parse(junit).getroot().iter("testcase")}
    assert names == {"test_speed[small-onnx-onnxruntime-fp32]", "test_precision[small-onnx-onnxruntime-fp32]"}
    data = json.loads(matrix.read_text())
    assert data["schema"] == "deploybench.matrix/1"
    (cell,) = data["cells"]
    assert (cell["model"], cell["format"], cell["backend"], cell["precision"]) == ("small", "onnx", "onnxruntime",
                                                                                   "fp32")
    assert cell["latency_ms"]["n"] >= 30 and cell["latency_ms"]["median"] > 0
    assert cell["accuracy"]["max_abs_error"] < 1e-4
    assert Path(cell["artifact_path"]).exists()
    assert cell["isolation"] == "worker" and cell["stage"] == ""
    assert "deploybench matrix" in result.stdout.str()
    (saved,) = (project.path / "storage").glob("*/0001_*.json")
    bench = json.loads(saved.read_text())["benchmarks"][0]
    assert len(bench["stats"]["data"]) == cell["latency_ms"]["n"]  # raw samples kept for the gate
    assert bench["extra_info"]["cell_id"] == "small-onnx-onnxruntime-fp32"
    assert sorted(bench["stats"]["data"]) == pytest.approx(sorted(s / 1e3 for s in cell["samples_ms"]))


def test_a_gate_baseline_that_cannot_be_used_stops_the_session_before_any_test(project):
    for args, expected in ((["--deploybench-gate", "nope.json"], "nope.json"),
                           (["--deploybench-gate-ref", "main"], "git rev-parse"),  # not a git checkout
                           (["--deploybench-gate", "a.json", "--deploybench-gate-ref", "main"], "not both")):
        result = project.runpytest("-q", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, args
        assert expected in result.stderr.str(), result.stderr.str()
        assert "passed" not in result.stdout.str()


def test_an_unwritable_deploybench_json_stops_the_session_before_any_test(project):
    for path, expected in (("/sys/out.json", "permission denied"), (".", "is a directory"),
                           ("missing/out.json", "folder missing does not exist")):
        result = project.runpytest("-q", "--backends", "torch", f"--deploybench-json={path}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR, path
        assert expected in result.stderr.str(), result.stderr.str()
        assert "passed" not in result.stdout.str()


def test_a_deploybench_json_that_fails_at_the_end_is_kept_elsewhere(project, monkeypatch):
    from deploybench.harness.results import io

    real = io.write_text_atomic
    target = project.path / "out.json"

    def disk_full(path, text):  # the folder was writable up front; the write at session end fails
        if Path(path) == target:
            raise DeployBenchError(f"cannot write {str(path)!r} (No space left on device); choose a writable path")
        return real(path, text)

    monkeypatch.setattr(io, "write_text_atomic", disk_full)
    project.makepyfile(test_measured="def test_measured(deploybench_result):\n    assert deploybench_result.ok\n")
    result = project.runpytest("-q", "--backends", "torch", "--no-memory", "--min-time", "0.01", "--min-samples",
                               "3", "test_measured.py", f"--deploybench-json={target}")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    line = next(x for x in result.stdout.lines if "No space left on device" in x)
    kept = Path(line.rpartition("kept in ")[2].strip())
    assert json.loads(kept.read_text())["cells"][0]["backend"] == "torch" and not target.exists()
    kept.unlink()


def test_an_unknown_backend_or_precision_is_a_usage_error_before_collection(project):
    for args, expected in ((["--backends", "onnxruntim"], "unknown backend 'onnxruntim'"),
                           (["--precisions", "int4"], "unknown precision 'int4'")):
        result = project.runpytest("--co", "-q", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, args
        assert expected in result.stderr.str() and "Traceback" not in result.stdout.str() + result.stderr.str()
