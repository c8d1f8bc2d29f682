"""The one cell pipeline in its worker: model code never runs in the parent, a crash or a hang fails the
cells it reached (with the signal or the limit, and the stage), errors keep their kind across the
process boundary, and one worker serves all of a model's cells."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deploybench.harness.measure.process import CHILD_PLUGIN_ENV
from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.matrix import run_one_cell
from deploybench.harness.run import run_deployment_benchmark
from deploybench.harness.pipeline.settings import MemoryRules, RunSettings
from deploybench.spec import Cell, DeployBenchError

QUICK = RunSettings(threads=1, timing=TimingRules(warmup_count=1, warmup_s=0.0, min_samples=5, min_time_s=0.02),
                    memory=MemoryRules(enabled=False))

# A network that export and tracing see as ordinary, whose eager forward misbehaves on a chosen call
# in its process (as a broken native extension does): call 1 is the output-name probe of resolving.
MISBEHAVING_MODEL = textwrap.dedent('''
    import os, signal, time
    import torch
    from torch import nn

    CALLS = {"eager": 0}

    def _exporting():
        return torch.compiler.is_exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing()

    def _eager():
        return not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting())

    class Misbehaving(nn.Module):
        def __init__(self, on_call, action):
            super().__init__()
            self.on_call, self.action = on_call, action
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if self.action == "segv-in-export" and _exporting():
                os.kill(os.getpid(), signal.SIGSEGV)
            if _eager():
                CALLS["eager"] += 1
                if CALLS["eager"] == self.on_call:
                    if self.action == "segv":
                        os.kill(os.getpid(), signal.SIGSEGV)
                    elif self.action == "abort":
                        os.abort()
                    elif self.action == "term-parent":  # as a CI runner cancelling the job would
                        os.kill(os.getppid(), signal.SIGTERM)
                        time.sleep(600)
                    elif self.action == "hog":
                        hoard = torch.ones(750_000_000)  # 3 GB, touched
                        time.sleep(600)
                    else:
                        time.sleep(600)
            return self.conv(x).mean(dim=(2, 3))

    def crash_at_resolve():
        torch.manual_seed(0)
        return Misbehaving(1, "segv").eval()

    def crash_on_second_call():
        torch.manual_seed(0)
        return Misbehaving(2, "abort").eval()

    def hang_on_second_call():
        torch.manual_seed(0)
        return Misbehaving(2, "hang").eval()

    def hog_on_second_call():
        torch.manual_seed(0)
        return Misbehaving(2, "hog").eval()

    def cancelled_on_second_call():
        torch.manual_seed(0)
        return Misbehaving(2 if os.environ.get("CANCEL_THE_RUN") else 0, "term-parent").eval()

    def crash_in_export():
        torch.manual_seed(0)
        return Misbehaving(0, "segv-in-export").eval()

    def healthy():
        torch.manual_seed(0)
        return Misbehaving(0, "none").eval()
''')


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "misbehaving.py"
    path.write_text(MISBEHAVING_MODEL)
    return path


def _ref(path: Path, factory: str) -> str:
    return f"{path}:{factory}@1x3x16x16"


def test_the_cli_run_survives_a_crashing_model_and_writes_the_healthy_ones_results(tmp_path):
    """The run from the issue: a user's model whose forward kills its process, beside a healthy model."""
    (tmp_path / "crashing.py").write_text(MISBEHAVING_MODEL)
    (tmp_path / "healthy.py").write_text(MISBEHAVING_MODEL)
    output = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "deploybench.cli", "run", "--models",
                           "crashing.py:crash_at_resolve,healthy.py:healthy", "--input-shape", "1x3x16x16",
                           "--backends", "torch,onnxruntime", "--min-time", "0.02", "--min-samples", "5",
                           "--no-progress", "--output", str(output)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]  # a cell failed; the run itself finished
    cells = {(c["model"], c["backend"]): c for c in json.loads(output.read_text())["cells"]}
    assert set(cells) == {("crashing", "torch"), ("crashing", "onnxruntime"), ("healthy", "torch"),
                          ("healthy", "onnxruntime")}
    for backend in ("torch", "onnxruntime"):
        healthy = cells["healthy", backend]
        assert healthy["status"] == "ok", healthy["reason"]
        assert healthy["latency_ms"]["n"] >= 5 and healthy["peak_rss_mb"] > 0
        assert healthy["accuracy"]["max_abs_error"] < 1e-4
        crashing = cells["crashing", backend]
        assert (crashing["status"], crashing["stage"]) == ("failed", "resolve")
        assert crashing["reason"] == "resolve: worker killed by SIGSEGV"
    assert "resolve: worker killed by SIGSEGV" in done.stdout


def test_a_crash_fails_only_the_crashing_models_cells_with_signal_and_stage(model_file):
    matrix = run_deployment_benchmark(["digits_cnn", _ref(model_file, "crash_at_resolve")],
                                      backends=["torch", "onnxruntime"], settings=QUICK, progress=False)
    by_model: dict[str, list] = {}
    for result in matrix.results:
        by_model.setdefault(result.cell.model, []).append(result)
    assert set(by_model) == {"digits_cnn", "misbehaving"}
    assert [r.status for r in by_model["digits_cnn"]] == ["ok", "ok"], [r.reason for r in by_model["digits_cnn"]]
    for result in by_model["misbehaving"]:
        assert (result.status, result.stage) == ("failed", "resolve")
        assert result.reason == "resolve: worker killed by SIGSEGV"


def test_a_crash_in_one_cell_restarts_the_worker_and_a_crash_in_the_reference_fails_the_rest(model_file):
    """Call 2 of the eager forward aborts: on the torch cell that is its first inference (that cell
    fails, the next cell gets a fresh worker); on the ONNX cell it is the reference run, which every
    later cell of the model needs, so those fail with it without starting yet another worker."""
    ref = _ref(model_file, "crash_on_second_call")
    matrix = run_deployment_benchmark([ref], backends=["torch", "onnxruntime", "openvino"], settings=QUICK,
                                      progress=False)
    results = {r.cell.id: r for r in matrix.results}
    torch_cell = results["misbehaving-torch-torch-fp32"]
    assert (torch_cell.status, torch_cell.stage) == ("failed", "first_inference")
    assert torch_cell.reason == "first_inference: worker killed by SIGABRT"
    onnx_cell = results["misbehaving-onnx-onnxruntime-fp32"]
    assert (onnx_cell.status, onnx_cell.stage, onnx_cell.reason) == ("failed", "reference",
                                                                     "reference: worker killed by SIGABRT")
    for cell_id in ("misbehaving-openvino-openvino-fp32", "misbehaving-onnx-openvino-fp32"):
        assert (results[cell_id].stage, results[cell_id].reason) == ("reference", onnx_cell.reason)
    assert matrix.settings["worker_starts"] == {"misbehaving": 2}


def test_a_crash_in_export_fails_the_conversion_cells_and_spares_the_eager_one(model_file):
    matrix = run_deployment_benchmark([_ref(model_file, "crash_in_export")], backends=["torch", "onnxruntime"],
                                      settings=QUICK, progress=False)
    eager, onnx = matrix.results
    assert eager.ok, eager.reason  # nothing exported: the eager model runs
    assert (onnx.status, onnx.stage, onnx.reason) == ("failed", "convert", "convert: worker killed by SIGSEGV")


def test_a_hang_is_a_timeout_at_its_stage_and_the_run_goes_on(model_file):
    settings = RunSettings(threads=1, timing=QUICK.timing, memory=QUICK.memory, timeout_s=8)
    result = run_one_cell(_ref(model_file, "hang_on_second_call"), Cell("misbehaving", "torch", "torch", "fp32"),
                          settings)
    assert (result.status, result.stage) == ("timeout", "first_inference")
    assert "no answer within 8 s; worker killed" in result.reason


def test_a_cell_over_the_memory_limit_fails_saying_so_and_the_run_goes_on(model_file):
    settings = RunSettings(threads=1, timing=QUICK.timing, memory=QUICK.memory, max_memory_mb=1500)
    matrix = run_deployment_benchmark([_ref(model_file, "hog_on_second_call"), "digits_cnn"],
                                      backends=["torch"], settings=settings, progress=False)
    hog, digits = matrix.results
    assert (hog.status, hog.stage) == ("failed", "first_inference")
    assert "out of memory" in hog.reason and "over --max-memory 1500 MB; killed" in hog.reason
    assert digits.ok, digits.reason


def test_one_worker_serves_every_cell_of_a_model_and_no_model_code_runs_here(model_file):
    import deploybench.models as models

    before = set(sys.modules)
    matrix = run_deployment_benchmark([_ref(model_file, "healthy")], backends=["torch", "onnxruntime"],
                                      precisions=["fp32", "int8"], settings=QUICK, progress=False)
    assert [r.status for r in matrix.results] == ["ok", "skipped", "ok", "ok"], [r.reason for r in matrix.results]
    assert matrix.settings["worker_starts"] == {"misbehaving": 1}
    assert {r.isolation for r in matrix.results} == {"worker"}
    user_modules = [m for m in set(sys.modules) - before if m.startswith("deploybench_user_")]
    assert user_modules == []  # the user's file was imported by the worker, never by this process
    assert models.MODELS  # (the registry itself is this process's)


def test_errors_keep_their_kind_across_the_process_boundary(model_file, tmp_path):
    # a user's mistake: one line, raised here as the project's error, before anything is measured
    with pytest.raises(DeployBenchError, match="has no callable 'nope'"):
        run_deployment_benchmark([f"{model_file}:nope@1x3x16x16"], backends=["onnxruntime"], settings=QUICK,
                                 progress=False)
    # a precision the engine refuses in the worker is still a skip here, not a failure
    plugin = tmp_path / "refusing_engine.py"
    plugin.write_text(textwrap.dedent('''
        from deploybench.engines import ENGINES
        from deploybench.engines.onnxruntime import OnnxRuntimeEngine
        from deploybench.spec import PrecisionNotSupported

        class ProbingEngine(OnnxRuntimeEngine):
            """Offers fp16, then finds at load that this CPU cannot run it (as OpenVINO's f16 hint on a CPU
            without FP16 runs bf16)."""
            backend = "probing"
            precisions = ("fp32", "fp16")

            def _load_impl(self):
                if self.precision == "fp16":
                    raise PrecisionNotSupported("probing on this CPU ran fp16 as bf16: no native FP16")
                super()._load_impl()

        ENGINES.register("probing", ProbingEngine)
    '''))
    os.environ[CHILD_PLUGIN_ENV] = str(plugin)
    try:
        from deploybench.engines import ENGINES

        exec(compile(plugin.read_text(), str(plugin), "exec"), {})  # the parent plans with it too
        try:
            matrix = run_deployment_benchmark([_ref(model_file, "healthy")], backends=["probing"],
                                              precisions=["fp32", "fp16"], settings=QUICK, progress=False)
            # with memory measured, the memory child meets the refusal first: a skip there too, not a failure
            with_memory = run_deployment_benchmark(
                [_ref(model_file, "healthy")], backends=["probing"], precisions=["fp16"], progress=False,
                settings=dataclasses.replace(QUICK, memory=MemoryRules(enabled=True, runs=1)))
        finally:
            ENGINES._targets.pop("probing")
    finally:
        del os.environ[CHILD_PLUGIN_ENV]
    fp32, fp16 = matrix.results
    assert fp32.ok, fp32.reason
    assert (fp16.status, fp16.stage, fp16.reason) == ("skipped", "load",
                                                      "probing on this CPU ran fp16 as bf16: no native FP16")
    (measured,) = with_memory.results
    assert (measured.status, measured.stage, measured.reason) == ("skipped", "memory",
                                                                  "probing on this CPU ran fp16 as bf16: no native FP16")


def test_in_process_mode_says_it_gives_up_isolation(small_cnn_spec):
    settings = RunSettings(threads=1, timing=QUICK.timing, memory=QUICK.memory, in_process=True)
    result = run_one_cell(small_cnn_spec, Cell("small_cnn", "onnx", "onnxruntime", "fp32"), settings)
    assert result.ok, result.reason
    assert result.isolation.startswith("in-process") and "crash ends the run" in result.isolation


def test_a_model_that_cannot_travel_runs_here_and_says_why():
    import threading

    import numpy as np
    import torch

    from deploybench.models import model_from_module
    from deploybench.spec import ModelSpec

    spec = model_from_module(torch.nn.Linear(4, 2), np.zeros((1, 4), np.float32), name="local")
    unpicklable = ModelSpec(**{**{f: getattr(spec, f) for f in ("name", "inputs", "factory", "output_names",
                                                                "dims")},
                               # a lock cannot be pickled: a closure over one cannot travel
                               "calibration_data": (lambda lock: (lambda n: [lock] * 0))(threading.Lock())})
    result = run_one_cell(unpicklable, Cell("local", "onnx", "onnxruntime", "fp32"), QUICK)
    assert result.ok, result.reason
    assert result.isolation.startswith("in-process: model 'local' cannot be sent to another process")


# ---- a CPU without a precision: the probe's answer, simulated both ways and taken for real --------
PROBE_ANSWER = textwrap.dedent('''
    import os
    import deploybench.engines.openvino as openvino_engine

    # What the compiled model reports back is the probe; answer as a CPU with or without native FP16 would.
    openvino_engine._precision_name = lambda value: os.environ["DEPLOYBENCH_TEST_F16_ANSWER"]
''')


def _openvino_fp16(model_file, tmp_path, answer: str | None):
    env = {}
    if answer is not None:
        plugin = tmp_path / "probe_answer.py"
        plugin.write_text(PROBE_ANSWER)
        env = {CHILD_PLUGIN_ENV: str(plugin), "DEPLOYBENCH_TEST_F16_ANSWER": answer}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return run_one_cell(_ref(model_file, "healthy"), Cell("misbehaving", "openvino", "openvino", "fp16"), QUICK)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.openvino
@pytest.mark.parametrize("answer,status", [("bf16", "skipped"), ("f16", "ok")])
def test_the_fp16_probe_answer_decides_skip_or_run(model_file, tmp_path, answer, status):
    result = _openvino_fp16(model_file, tmp_path, answer)
    assert result.status == status, result.reason
    if status == "skipped":
        assert result.stage == "load" and "ran model.xml in bf16, not the f16 asked for fp16" in result.reason
    else:
        # what each layer ran is read from the compiled model, which the stubbed answer does not change
        assert result.precision_ran.startswith("fp16 in ") and result.tolerance.passed


@pytest.mark.openvino
def test_fp16_on_this_cpu_follows_its_flags(model_file, tmp_path):
    """Taken for real: an Intel Xeon with AVX-512 FP16 runs the f16 hint; an AMD EPYC without it runs bf16."""
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    result = _openvino_fp16(model_file, tmp_path, answer=None)
    if "avx512_fp16" in flags or "amx_fp16" in flags:
        assert result.status == "ok", result.reason
    else:
        assert (result.status, result.stage) == ("skipped", "load"), result.reason


def test_sigterm_writes_what_was_measured_and_resume_runs_only_the_rest(model_file, tmp_path):
    output = tmp_path / "results.json"
    command = [sys.executable, "-m", "deploybench.cli", "run", "--models",
               f"digits_cnn,{model_file}:cancelled_on_second_call", "--input-shape", "1x3x16x16",
               "--backends", "torch,onnxruntime", "--min-time", "0.02", "--min-samples", "5", "--no-memory",
               "--no-progress", "--threads", "1", "--output", str(output)]
    cancelled = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                               env={**os.environ, "CANCEL_THE_RUN": "1"})
    assert cancelled.returncode == 130, cancelled.stderr[-2000:]
    assert "interrupted (SIGTERM) after 2 of 4 cells; `--resume` runs the rest" in cancelled.stderr
    first = json.loads(output.read_text())
    assert first["incomplete"].startswith("interrupted (SIGTERM)")
    assert [(c["model"], c["status"]) for c in first["cells"]] == [("digits_cnn", "ok"), ("digits_cnn", "ok")]

    resumed = subprocess.run([*command, "--resume", str(output)], capture_output=True, text=True, timeout=600,
                             cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    second = json.loads(output.read_text())
    assert not second["incomplete"]
    assert [(c["model"], c["backend"], c["status"]) for c in second["cells"]] == [
        ("digits_cnn", "torch", "ok"), ("digits_cnn", "onnxruntime", "ok"),
        ("misbehaving", "torch", "ok"), ("misbehaving", "onnxruntime", "ok")]
    assert second["cells"][:2] == first["cells"]  # kept as measured, not run again


def test_the_gates_interleaved_rerun_runs_in_a_worker_not_in_the_gates_process(model_file, tmp_path):
    import onnx

    for name in ("base", "head"):
        matrix = run_deployment_benchmark([_ref(model_file, "healthy")], backends=["onnxruntime"], settings=QUICK,
                                          progress=False)
        assert matrix.results[0].ok, matrix.results[0].reason
        if name == "head":  # the same network in other bytes, or the gate would see one artifact and not run it
            graph = onnx.load(matrix.results[0].artifact_path)
            onnx.helper.set_model_props(graph, {"edited": "yes"})
            onnx.save(graph, str(tmp_path / "head.onnx"))
            matrix.results[0].artifact_path = str(tmp_path / "head.onnx")
        matrix.save(tmp_path / f"{name}.json")
    code = textwrap.dedent(f"""
        import sys
        from deploybench.harness.gate.command import run_gate
        from deploybench.harness.gate.verdict import GateSettings
        verdicts = run_gate({str(tmp_path / 'base.json')!r}, {str(tmp_path / 'head.json')!r}, GateSettings(),
                            interleaved=True, threads=1)
        latency = next(v for v in verdicts if v.metric == "latency")
        print(latency.mode, latency.verdict, len(latency.reason) > 0)
        print(sorted(m for m in ("torch", "onnxruntime", "onnx") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    mode_line, modules_line = done.stdout.strip().splitlines()[-2:]
    mode, verdict, _ = mode_line.split()
    assert mode == "interleaved" and verdict in ("unchanged", "inconclusive")  # the same network on both sides
    assert modules_line == "[]"  # no model library was loaded by the gate's own process


def test_a_backend_that_crashes_in_the_timed_run_fails_its_cell_only(model_file, tmp_path, monkeypatch):
    """A native backend library dying under inference (not the model's code): the worker's crash is the cell's."""
    plugin = tmp_path / "crashing_backend.py"
    plugin.write_text(textwrap.dedent('''
        import os, signal
        from deploybench.engines import ENGINES
        from deploybench.engines.onnxruntime import OnnxRuntimeEngine

        class CrashingRuntime(OnnxRuntimeEngine):
            backend = "crashing-runtime"
            calls = 0

            def _infer_impl(self, feed):
                type(self).calls += 1
                if type(self).calls > 3:  # loads and answers a few calls, then dies in the timed loop
                    os.kill(os.getpid(), signal.SIGSEGV)
                return super()._infer_impl(feed)

        ENGINES.register("crashing-runtime", CrashingRuntime)
    '''))
    monkeypatch.setenv(CHILD_PLUGIN_ENV, str(plugin))
    from deploybench.engines import ENGINES

    exec(compile(plugin.read_text(), str(plugin), "exec"), {})
    try:
        matrix = run_deployment_benchmark([_ref(model_file, "healthy")], backends=["crashing-runtime", "onnxruntime"],
                                          settings=QUICK, progress=False)
    finally:
        ENGINES._targets.pop("crashing-runtime")
    crashed, healthy = matrix.results
    assert (crashed.status, crashed.stage, crashed.reason) == ("failed", "time", "time: worker killed by SIGSEGV")
    assert healthy.ok, healthy.reason
