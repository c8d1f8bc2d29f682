"""The matrix: planning, sharding, running real cells, saving/loading, comparing; and the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploybench.converters import deploy_model
from deploybench.harness.report.compare import compare_backends
from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.matrix import run_one_cell
from deploybench.harness.pipeline.plan import parse_shard, plan_cells, select_shard
from deploybench.harness.pipeline.settings import MemoryRules, RunSettings
from deploybench.harness.report.matrix import Matrix
from deploybench.harness.results.cells import SCHEMA
from deploybench.resolve import model_from_artifact
from deploybench.spec import Accuracy, Cell, DeployBenchError, LatencyStats, Result

FAST = dict(timing=TimingRules(warmup_count=2, warmup_s=0.0, min_samples=10, min_time_s=0.05),
            memory=MemoryRules(enabled=False))


def test_plan_cells_from_a_pytorch_model(small_cnn_spec):
    cells = plan_cells([small_cnn_spec], ["torch", "onnxruntime", "openvino"], ["fp32"])
    assert [c.id for c in cells] == ["small_cnn-torch-torch-fp32", "small_cnn-onnx-onnxruntime-fp32",
                                     "small_cnn-openvino-openvino-fp32", "small_cnn-onnx-openvino-fp32"]


def test_plan_cells_filters_precisions_by_engine_and_formats(small_cnn_spec):
    cells = plan_cells([small_cnn_spec], ["torch", "onnxruntime"], ["fp32", "int8"])
    assert [c.id for c in cells] == ["small_cnn-torch-torch-fp32", "small_cnn-onnx-onnxruntime-fp32",
                                     "small_cnn-onnx-onnxruntime-int8"]  # the torch engine has no int8 mode
    only_onnx = plan_cells([small_cnn_spec], ["openvino"], ["fp32"], formats=["onnx"])
    assert [c.id for c in only_onnx] == ["small_cnn-onnx-openvino-fp32"]


def test_plan_cells_of_a_bring_your_own_onnx_file(small_cnn_spec):
    onnx_path = deploy_model(small_cnn_spec, "onnx").path
    spec = model_from_artifact(onnx_path)
    cells = plan_cells([spec], ["torch", "onnxruntime", "openvino", "tensorrt"], ["fp32"])
    # the engine classes say what runs what: TensorRT runs its own plans, built from the ONNX file
    assert [(c.format, c.backend) for c in cells] == [("onnx", "onnxruntime"), ("openvino", "openvino"),
                                                      ("onnx", "openvino"), ("tensorrt", "tensorrt")]


def test_unknown_backend_or_precision_is_one_line_naming_the_choices(small_cnn_spec):
    with pytest.raises(DeployBenchError) as error:
        plan_cells([small_cnn_spec], ["onnxruntime", "tensorflow"], ["fp32"])
    assert "unknown backend 'tensorflow'" in str(error.value) and "onnxruntime" in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(DeployBenchError, match="unknown precision 'fp8'"):
        plan_cells([small_cnn_spec], ["onnxruntime"], ["fp8"])


def test_shards_partition_the_cells_deterministically():
    cells = [Cell(f"m{i}", "onnx", backend, precision) for i in range(7)
             for backend in ("onnxruntime", "openvino") for precision in ("fp32", "int8")]
    for count in (1, 2, 3, 5):
        shards = [select_shard(cells, index, count) for index in range(1, count + 1)]
        assert sorted(c for shard in shards for c in shard) == sorted(cells)
        assert sum(len(s) for s in shards) == len(cells)
        assert shards == [select_shard(cells, index, count) for index in range(1, count + 1)]
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1  # was 1 and 6 cells for digits_cnn in 2 shards
        assert shards == [select_shard(list(reversed(cells)), i, count)[::-1] for i in range(1, count + 1)]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("0/4", "5/4", "x/2", "1"):
        with pytest.raises(DeployBenchError, match="1 <= i <= n"):
            parse_shard(bad)


def test_two_sides_that_plan_different_cells_deal_their_shared_cells_to_the_same_shard():
    """A backend new in the head plans cells the base lacks; dealt alone, each side's shards would differ and
    a shard job would see a shared cell on one side only (ungated). Dealt from the union, they agree."""
    base = [Cell(f"m{i}", "onnx", "onnxruntime", p) for i in range(5) for p in ("fp32", "int8")]
    head = base + [Cell(f"m{i}", "onnx", "new_backend", "fp32") for i in range(5)]
    union = {c.id for c in base + head}
    for count in (2, 3, 4):
        alone = [({c.id for c in select_shard(base, i, count)}, {c.id for c in select_shard(head, i, count)})
                 for i in range(1, count + 1)]
        dealt = [({c.id for c in select_shard(base, i, count, universe=union)},
                  {c.id for c in select_shard(head, i, count, universe=union)}) for i in range(1, count + 1)]
        assert all(b <= h for b, h in dealt)  # every base cell sits in its head cell's shard
        assert any(not b <= h for b, h in alone), count  # what dealing each side alone would have broken
        assert sorted(c for b, _ in dealt for c in b) == sorted(c.id for c in base)


def test_run_settings_say_how_to_fix_a_bad_value():
    with pytest.raises(DeployBenchError, match="raise max_samples"):
        TimingRules(min_samples=50, max_samples=10)
    with pytest.raises(DeployBenchError, match="positive integer"):
        RunSettings(threads=0)


@pytest.mark.parametrize("fmt,backend", [("torch", "torch"), ("onnx", "onnxruntime"),
                                         pytest.param("openvino", "openvino", marks=pytest.mark.openvino)])
def test_run_cell_of_small_cnn_fp32_matches_torch(small_cnn_spec, fmt, backend):
    result = run_one_cell(small_cnn_spec, Cell("small_cnn", fmt, backend, "fp32"), RunSettings(threads=1, **FAST))
    assert result.status == "ok", result.reason
    assert result.isolation == "worker"  # the model built here was sent to a worker and run there
    assert result.latency_ms.n >= 10 and result.latency_ms.median > 0
    assert result.first_inference_ms > 0 and result.load_ms is not None
    assert result.accuracy.max_abs_error <= 1e-4
    assert result.accuracy.cosine > 0.99999
    assert result.accuracy.top1_agreement == 1.0
    assert result.accuracy.reference == "torch fp32 eager"
    assert result.tolerance.passed, result.tolerance.message
    if fmt != "torch":
        assert result.artifact_bytes > 1000


def test_run_cell_measures_memory_in_a_child_first(small_cnn_spec):
    settings = RunSettings(threads=1, in_process=True, **{**FAST, "memory": MemoryRules()})
    result = run_one_cell(small_cnn_spec, Cell("small_cnn", "onnx", "onnxruntime", "fp32"), settings)
    assert result.status == "ok", result.reason
    assert result.peak_rss_mb >= result.baseline_rss_mb > 10


@pytest.mark.parametrize("fmt,backend,why", [
    ("tensorrt", "tensorrt", "tensorrt"),
    pytest.param("coreml", "coreml", "macOS", marks=pytest.mark.slow),  # importing coremltools takes ~8 s
])
def test_a_backend_missing_here_is_skipped_with_its_reason(small_cnn_spec, fmt, backend, why):
    result = run_one_cell(small_cnn_spec, Cell("small_cnn", fmt, backend, "fp32"), RunSettings(in_process=True, **FAST))
    assert result.status == "skipped" and result.stage == "availability"
    assert why in result.reason and "\n" not in result.reason


def _result(backend, fmt, median, peak, metric, status="ok"):
    latency = LatencyStats(n=30, mean=median, median=median, p90=median, p95=median, p99=median, min=median,
                           max=median, stdev=0.0, cv=0.0, iqr=0.0)
    return Result(cell=Cell("net", fmt, backend, "fp32"), status=status, latency_ms=latency, peak_rss_mb=peak,
                  accuracy=Accuracy(max_abs_error=1e-6, metric="top1", metric_value=metric))


def test_compare_backends_ranks_cells_against_the_torch_baseline():
    results = [_result("torch", "torch", 4.0, 400.0, 0.90), _result("onnxruntime", "onnx", 1.0, 100.0, 0.91),
               _result("openvino", "openvino", 2.0, 200.0, 0.89)]
    comparison = compare_backends(Matrix(results=results))
    assert [r["backend"] for r in comparison.rows] == ["onnxruntime", "openvino", "torch"]
    ort = comparison.rows[0]
    assert ort["speedup"] == pytest.approx(4.0)
    assert ort["memory_ratio"] == pytest.approx(0.25)
    assert ort["accuracy_delta"] == pytest.approx(0.01)
    assert comparison.rows[2]["is_baseline"] and comparison.rows[2]["speedup"] == pytest.approx(1.0)
    assert "4.00x" in comparison.table()
    with pytest.raises(DeployBenchError, match="no cells of model 'other'"):
        compare_backends(results, model="other")


def test_matrix_saves_atomically_and_loads_back(tmp_path):
    results = [_result("torch", "torch", 4.0, 400.0, 0.90), Result(cell=Cell("net", "tensorrt", "tensorrt", "fp32"),
                                                                  status="skipped", reason="no GPU")]
    matrix = Matrix(results=results, machine={"cpu": "test"}, settings={"seed": 0})
    path = matrix.save(tmp_path / "out" / "results.json")
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert {"deploybench_version", "created", "machine", "settings", "cells"} <= set(data)
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind
    loaded = Matrix.load(path)
    assert [r.cell for r in loaded.results] == [r.cell for r in results]
    assert loaded.results[0].latency_ms.median == 4.0 and loaded.results[1].reason == "no GPU"
    assert loaded.best("net").cell.backend == "torch"
    assert not loaded.failed
    assert "torch" in loaded.table()

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DeployBenchError, match="is not valid JSON") as error:
        Matrix.load(broken)
    assert "\n" not in str(error.value)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(DeployBenchError, match="is not a deploybench matrix"):
        Matrix.load(other)


# ---- the CLI ---------------------------------------------------------------------------------------
USER_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Odd(nn.Module):
        """Pixel-unshuffle, group norm and a gated activation on a non-square image."""

        def __init__(self):
            super().__init__()
            self.unshuffle = nn.PixelUnshuffle(2)
            self.norm = nn.GroupNorm(3, 12)
            self.conv = nn.Conv2d(12, 6, 3, padding=1)
            self.head = nn.Linear(6, 4)

        def forward(self, x):
            y = self.norm(self.unshuffle(x))
            y = self.conv(y)
            y = y * torch.sigmoid(1.5 * y)
            return self.head(y.mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Odd()
''')


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploybench.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.mark.slow  # a fresh process exports and runs four cells: ~35 s on 2 busy cores
def test_cli_runs_a_user_model_file_through_three_backends(tmp_path):
    model = tmp_path / "odd_model.py"
    model.write_text(USER_MODEL)
    output = tmp_path / "results.json"
    done = run_cli("run", "--models", f"{model}:build", "--input-shape", "1x3x40x56",
                   "--backends", "torch,onnxruntime,openvino", "--output", str(output), "--threads", "1",
                   "--min-time", "0.05", "--min-samples", "5", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(output.read_text())
    assert data["schema"] == SCHEMA
    assert {"deploybench_version", "created", "machine", "settings", "cells"} <= set(data)
    cells = {(c["format"], c["backend"]): c for c in data["cells"]}
    assert set(cells) == {("torch", "torch"), ("onnx", "onnxruntime"), ("openvino", "openvino"),
                          ("onnx", "openvino")}
    for cell in cells.values():
        assert cell["model"] == "odd_model" and cell["precision"] == "fp32"
        assert cell["status"] == "ok", cell["reason"]
        assert {"n", "mean", "median", "p90", "p95", "p99", "min", "max", "stdev", "cv", "iqr"} <= set(
            cell["latency_ms"])
        assert cell["accuracy"]["max_abs_error"] < 1e-4
        assert cell["peak_rss_mb"] >= cell["baseline_rss_mb"] > 0
    assert "odd_model" in done.stdout


@pytest.fixture(scope="module")
def bad_cli_runs(tmp_path_factory):
    """Every bad invocation at once, in parallel subprocesses: {name: (returncode, stderr)}."""
    tmp = tmp_path_factory.mktemp("cli")
    not_a_model = tmp / "notes.txt"
    not_a_model.write_text("hello")
    no_factory = tmp / "empty_model.py"
    no_factory.write_text("x = 1\n")
    invocations = {
        "missing file": ["run", "--models", str(tmp / "absent.onnx")],
        "not a model file": ["run", "--models", str(not_a_model)],
        "no such factory": ["run", "--models", f"{no_factory}:build", "--input-shape", "1x3x8x8"],
        "unknown backend": ["run", "--models", "digits_cnn", "--backends", "onnxruntime,tensorflow"],
        "unknown model": ["run", "--models", "resnet999"],
        "bad input shape": ["run", "--models", f"{no_factory}:build", "--input-shape", "1x3xfoo"],
        "bad shard": ["run", "--models", "digits_cnn", "--shard", "3/2"],
        "bad option": ["run", "--min-time", "-1"],
        "output in /sys": ["run", "--models", "digits_cnn", "--output", "/sys/out.json"],
        "output is a folder": ["run", "--models", "digits_cnn", "--output", str(tmp)],
        "output in a missing folder": ["run", "--models", "digits_cnn", "--output", str(tmp / "no" / "out.json")],
        "inputs for a zoo model": ["run", "--models", "digits_cnn", "--input-shape", "1x3x8x8"],
    }
    processes = {name: subprocess.Popen([sys.executable, "-m", "deploybench.cli", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                 for name, args in invocations.items()}
    return {name: (p.wait(timeout=300), p.communicate()[1]) for name, p in processes.items()}


@pytest.mark.parametrize("case,words", [
    ("missing file", "does not exist"), ("not a model file", "unknown model file type '.txt'"),
    ("no such factory", "has no callable 'build'"), ("unknown backend", "unknown backend 'tensorflow'"),
    ("unknown model", "unknown model 'resnet999'"), ("bad input shape", "bad input shape '1x3xfoo'"),
    ("bad shard", "bad --shard '3/2'"), ("bad option", "must be positive"),
    ("output in /sys", "cannot write /sys/out.json: permission denied"), ("output is a folder", "is a directory"),
    ("output in a missing folder", "does not exist"),
    ("inputs for a zoo model", "zoo model(s) digits_cnn take the inputs they declare: size a dynamic axis with --dims"),
])
def test_cli_errors_are_one_line_and_exit_2(bad_cli_runs, case, words):
    returncode, stderr = bad_cli_runs[case]
    assert returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("deploybench: error:")
    assert words in lines[0]


def test_cli_help_documents_the_exit_status():
    done = run_cli("run", "--help")
    assert done.returncode == 0
    assert "1 when any cell failed or timed out" in done.stdout
    assert "--input-shape" in done.stdout


FAST_RUN = ("--threads", "1", "--min-time", "0.01", "--min-samples", "3", "--no-memory", "--no-progress")


def test_a_filter_or_shard_that_matches_no_cell_says_so_and_exits_3(tmp_path):
    model = tmp_path / "odd_model.py"
    model.write_text(USER_MODEL)
    ref = f"{model}:build"
    no_match = run_cli("run", "--models", ref, "--input-shape", "1x3x8x8", "--backends", "onnxruntime",
                       "--formats", "tflite", *FAST_RUN)
    assert no_match.returncode == 3, no_match.stderr[-2000:]
    assert "no cell matched" in no_match.stderr and "--formats tflite" in no_match.stderr
    assert "no cell ran successfully" not in no_match.stdout + no_match.stderr
    empty_shard = run_cli("run", "--models", ref, "--input-shape", "1x3x8x8", "--backends", "torch",
                          "--shard", "2/2", *FAST_RUN)  # one cell, two shards: the second is empty
    assert empty_shard.returncode == 3, empty_shard.stderr[-2000:]
    assert "no cell matched" in empty_shard.stderr and "--shard 2/2 (an empty shard)" in empty_shard.stderr
    assert "3 when no cell matched" in run_cli("run", "--help").stdout


def test_results_that_cannot_be_written_at_the_end_are_kept_and_named(tmp_path, monkeypatch, capsys):
    from deploybench.cli import main
    from deploybench.harness.results import io

    model = tmp_path / "odd_model.py"
    model.write_text(USER_MODEL)
    target, real = tmp_path / "results.json", io.write_text_atomic

    def disk_full(path, text):  # writable when the run started, full when it ends
        if Path(path) == target:
            raise DeployBenchError(f"cannot write {str(path)!r} (No space left on device); choose a writable path")
        return real(path, text)

    monkeypatch.setattr(io, "write_text_atomic", disk_full)
    status = main(["run", "--models", f"{model}:build", "--input-shape", "1x3x8x8", "--backends", "torch",
                   "--output", str(target), *FAST_RUN])
    err = capsys.readouterr().err
    assert status == 2 and not target.exists()
    line = next(x for x in err.splitlines() if "No space left on device" in x)
    kept = Path(line.rpartition("kept in ")[2].strip())
    assert json.loads(kept.read_text())["cells"][0]["status"] == "ok"
    kept.unlink()


SLOW_FIRST_CALL = textwrap.dedent('''
    import time

    import torch
    from torch import nn


    class SlowOnce(nn.Module):
        """Its second forward takes 6 s: the worker's first inference of the torch cell (the first call
        reads the output names when the model is resolved)."""

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                time.sleep(6)
            return self.linear(x)


    def build():
        torch.manual_seed(0)
        return SlowOnce()
''')


def test_a_stage_running_past_5_s_gets_a_line_of_its_own(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_FIRST_CALL)
    done = run_cli("run", "--models", "slow.py:build", "--input-shape", "1x8", "--backends", "torch", "--no-memory",
                   "--min-time", "0.05", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    announced = [line for line in done.stderr.replace("\r", "\n").splitlines() if "still running after" in line]
    assert announced == ["slow-torch-torch-fp32: first_inference… (still running after 5 s)"], done.stderr[-2000:]
