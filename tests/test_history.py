"""History: stored pytest-benchmark autosaves and deploybench run files, read without modifying them."""

from __future__ import annotations

import argparse
import json

import pytest

from deploybench.harness.results.history import find_run, history_command, list_runs

pytest_plugins = ["pytester"]

BENCH_TEST = '''
import time


def test_cell(benchmark):
    benchmark.extra_info.update({"cell": {"model": "net", "format": "onnx", "backend": "onnxruntime",
                                          "precision": "fp32"}, "peak_rss_mb": 123.0})
    benchmark.pedantic(time.sleep, args=(0.0005,), rounds=40, iterations=1)
'''


@pytest.fixture
def storage(pytester, monkeypatch):
    from _pytest import pytester as pytester_module

    class KeepLibraries(pytester_module.SysModulesSnapshot):  # see tests/test_plugin.py
        def __init__(self, preserve=None):
            super().__init__(preserve=lambda name: not name.startswith(("conftest", "test_")))

    monkeypatch.setattr(pytester_module, "SysModulesSnapshot", KeepLibraries)
    pytester.makepyfile(test_bench=BENCH_TEST)
    path = pytester.path / "storage"
    for _ in range(2):
        result = pytester.runpytest("-q", "--benchmark-autosave", "--benchmark-save-data",
                                    f"--benchmark-storage={path}")
        result.assert_outcomes(passed=1)
    return path


def test_reads_autosaves_and_skips_a_malformed_file(storage, capsys):
    (machine_dir,) = [p for p in storage.iterdir() if p.is_dir()]
    broken = machine_dir / "0003_broken.json"
    broken.write_text("{ not json")
    before = {p.name: p.read_bytes() for p in machine_dir.iterdir()}
    warnings = []
    runs = list_runs(storage, warn=warnings.append)
    assert [r.id for r in runs] == ["0001", "0002"]
    assert len(warnings) == 1 and "0003_broken.json" in warnings[0]
    assert runs[0].machine == machine_dir.name and runs[0].datetime
    (result,) = runs[0].results()
    assert result.cell.id == "net-onnx-onnxruntime-fp32" and result.peak_rss_mb == 123.0
    assert len(result.samples_ms) == 40 and 0.4 < result.latency_ms.median < 50
    assert find_run("0002", storage) == runs[1].path

    code = history_command(argparse.Namespace(storage=str(storage), cell="net-onnx-onnxruntime-fp32"))
    captured = capsys.readouterr()
    assert code == 0 and "0001" in captured.out and "0002" in captured.out and "0003_broken.json" in captured.err
    assert {p.name: p.read_bytes() for p in machine_dir.iterdir()} == before  # nothing rewritten


def test_reads_deploybench_run_files_and_reports_a_missing_storage(tmp_path, capsys):
    cell = {"model": "m", "format": "onnx", "backend": "onnxruntime", "precision": "fp32", "samples_ms": [1.0, 2.0]}
    (tmp_path / "run.json").write_text(json.dumps({"schema": "deploybench.matrix/1", "machine": {"machine_id": "x"},
                                                   "created": "2026-01-01", "cells": [cell]}))
    (run,) = list_runs(tmp_path)
    assert run.machine == "x" and run.results()[0].cell.id == "m-onnx-onnxruntime-fp32"
    assert history_command(argparse.Namespace(storage=str(tmp_path / "nope"), cell=None)) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_empty_storage_says_how_to_fill_it(tmp_path, capsys):
    (tmp_path / ".benchmarks").mkdir()
    assert history_command(argparse.Namespace(storage=str(tmp_path / ".benchmarks"), cell=None)) == 0
    out = capsys.readouterr().out
    assert "no stored runs in" in out and "pytest --benchmark-autosave" in out
