"""The device side without PyTorch: a real venv holding only ``deploybench[runtime]`` and its runtimes
(``tests/device_env.py``) runs the worker a host drives, and ``deploybench run`` on a model file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploybench.harness.measure.timing import TimingRules
from deploybench.harness.pipeline.frames import FrameReader, send_frame
from deploybench.harness.pipeline.settings import MemoryRules, RunSettings
from deploybench.harness.results.io import load_results_file
from deploybench.resolve import ModelSource
from deploybench.spec import Cell

sys.path.insert(0, str(Path(__file__).parent))
from device_env import DeviceEnvError, closure, device_venv  # noqa: E402

# What a device must never load to run an ONNX cell (top-level import names).
HOST_ONLY = ("torch", "onnx", "onnxscript", "sklearn", "scipy", "matplotlib", "cv2", "tabulate", "tqdm",
             "cloudpickle", "pytest")
QUICK = RunSettings(timing=TimingRules(warmup_count=2, warmup_s=0.0, min_samples=20, min_time_s=0.05,
                                       max_time_s=0.3), memory=MemoryRules(runs=2), timeout_s=120)


@pytest.fixture(scope="session")
def ort_only_python(tmp_path_factory) -> Path:
    return device_venv(tmp_path_factory.mktemp("device-ort") / "venv", ("onnxruntime",))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """relu(x @ W + b) with a dynamic batch axis, made with onnx's helper on the host."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    save(model, str(path))
    return path


class DeviceWorker:
    """``python -m deploybench.harness.pipeline.worker`` in the device venv, spoken to in its own frames."""

    def __init__(self, python: Path, cwd: Path):
        self.process = subprocess.Popen([str(python), "-m", "deploybench.harness.pipeline.worker"], cwd=cwd,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.reader = FrameReader(self.process.stdout.fileno())

    def ask(self, *message):
        send_frame(self.process.stdin, message)
        while True:
            frame = self.reader.read(time.monotonic() + 180)
            if frame[0] == "ok":
                return frame[1]
            if frame[0] != "stage":
                raise AssertionError(f"worker answered {frame}")

    def close(self) -> None:
        send_frame(self.process.stdin, ("close",))
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0, self.process.stderr.read().decode()[-2000:]
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.mark.openvino
def test_the_device_venv_has_no_torch(device_python):
    done = subprocess.run([str(device_python), "-c", "import torch"], capture_output=True, text=True)
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'torch'" in done.stderr
    done = subprocess.run([str(device_python), "-c", "import onnxruntime, openvino, deploybench.engines.onnxruntime"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr



def test_every_module_but_the_pytest_edge_imports_on_the_device(ort_only_python):
    """pytest is a host library: only the plugin and the suite (the pytest edge) may need it."""
    done = subprocess.run([str(ort_only_python), "-c", """if True:
        import importlib, pkgutil, sys, deploybench
        failed = []
        for info in pkgutil.walk_packages(deploybench.__path__, "deploybench."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
        print("\\n".join(failed))
        print(sorted(name for name in %r if name in sys.modules))
    """ % (HOST_ONLY,)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *failed, loaded = done.stdout.strip().splitlines()
    assert failed == ["deploybench.harness.plugin: ModuleNotFoundError: No module named 'pytest'",
                      "deploybench.harness.suite: ModuleNotFoundError: No module named 'pytest'"]
    assert loaded == "[]"

def test_a_closure_that_pulls_torch_is_refused():
    from packaging.requirements import Requirement

    with pytest.raises(DeviceEnvError, match=r"pulls torch \(via torch\)"):
        closure([Requirement("onnxruntime"), Requirement("torch")])
    # the tflite extra's converter side: its closure reaches host-only libraries (scipy, torch) too
    with pytest.raises(DeviceEnvError, match="the device closure pulls"):
        closure([Requirement("litert-torch")])


@pytest.mark.openvino
def test_the_worker_runs_onnx_cells_on_the_device_without_torch(device_python, tiny_onnx, tmp_path):
    worker = DeviceWorker(device_python, tmp_path)
    settings = RunSettings(**{**QUICK.__dict__, "cache_dir": str(tmp_path / "cache")})
    try:
        assert worker.ask("open", ModelSource(ref=str(tiny_onnx)), False) is None
        info = worker.ask("info")
        assert (info.name, info.torch_source, info.source_format) == ("tiny", False, "onnx")
        results = {backend: worker.ask("cell", Cell("tiny", "onnx", backend, "fp32"), settings,
                                       ("time", "memory", "accuracy"))
                   for backend in ("onnxruntime", "openvino")}
        loaded = worker.ask("call", "deploybench.harness.measure.machine:imported_packages", (HOST_ONLY,))
        runtimes = worker.ask("call", "deploybench.harness.measure.machine:imported_packages",
                              (("onnxruntime", "openvino"),))
    finally:
        worker.close()
    for backend, result in results.items():
        assert result.ok, f"{backend}: {result.status} {result.reason}"
        assert result.latency_ms.n >= 20 and 0 < result.latency_ms.median < 1000
        # set only by the memory stage's child: a fresh interpreter that loaded the file and ran it
        assert result.peak_rss_mb > result.baseline_rss_mb > 0
        assert result.accuracy.reference == "onnxruntime fp32 (onnx file)"
        assert result.accuracy.max_abs_error < 1e-4 and result.tolerance.passed
    assert loaded == []
    assert runtimes == ["onnxruntime", "openvino"]


def test_a_runtime_missing_on_the_device_is_a_skip_with_its_reason(ort_only_python, tiny_onnx, tmp_path):
    worker = DeviceWorker(ort_only_python, tmp_path)
    try:
        worker.ask("open", ModelSource(ref=str(tiny_onnx)), False)
        result = worker.ask("cell", Cell("tiny", "onnx", "openvino", "fp32"), QUICK, ("time",))
    finally:
        worker.close()
    assert result.status == "skipped" and result.stage == "availability"
    assert result.reason.startswith("openvino cannot run here: openvino is not importable here (ModuleNotFoundError")


@pytest.mark.openvino
def test_deploybench_run_on_a_model_file_needs_no_torch(device_python, tiny_onnx, tmp_path):
    output = tmp_path / "results.json"
    done = subprocess.run([str(device_python), "-m", "deploybench.cli", "run", "--models", f"{tiny_onnx},digits_cnn",
                           "--backends", "onnxruntime,openvino", "--min-time", "0.05", "--max-time", "0.3",
                           "--cache-dir", str(tmp_path / "cache"), "--output", str(output)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    cells = {result.cell.id: result for result in load_results_file(output)[0]}
    # the file runs as it is on both runtimes, and OpenVINO also runs the IR it converts the file to
    tiny = {"tiny-onnx-onnxruntime-fp32", "tiny-onnx-openvino-fp32", "tiny-openvino-openvino-fp32"}
    assert set(cells) == tiny | {cell.replace("tiny", "digits_cnn") for cell in tiny}
    assert all(cells[cell].ok for cell in tiny), done.stdout
    # a zoo model is PyTorch code: without torch each of its cells is a skip that says where it converts
    for cell in set(cells) - tiny:
        assert cells[cell].status == "skipped"
        assert cells[cell].reason == ("digits_cnn is a PyTorch model and torch is not installed here: convert it on "
                                      "a host (pip install 'deploybench[host]') or run its exported file")
    table = done.stdout.splitlines()
    assert any(line.split()[:3] == ["★", "onnx", "onnxruntime"] or line.split()[:3] == ["★", "onnx", "openvino"]
               for line in table), done.stdout


def test_a_file_model_run_loads_no_host_library_even_where_they_are_installed(tiny_onnx, tmp_path):
    """The same worker in this (host) venv, where torch and the rest are installed: a file model's cells still
    never import them; only onnx, which reads and checks the file where it is present."""
    worker = DeviceWorker(Path(sys.executable), tmp_path)
    try:
        worker.ask("open", ModelSource(ref=str(tiny_onnx)), False)
        result = worker.ask("cell", Cell("tiny", "onnx", "onnxruntime", "fp32"), QUICK, ("time", "memory", "accuracy"))
        loaded = worker.ask("call", "deploybench.harness.measure.machine:imported_packages", (HOST_ONLY,))
    finally:
        worker.close()
    assert result.ok, result.reason
    assert loaded == ["onnx"]



@pytest.mark.parametrize("fmt, backends, runtimes", [
    pytest.param("onnx", ("onnxruntime", "openvino"), ("onnxruntime", "openvino"), marks=pytest.mark.openvino),
    pytest.param("openvino", ("openvino",), ("openvino",), marks=pytest.mark.openvino),
    pytest.param("tflite", ("tflite",), ("ai-edge-litert",), marks=[pytest.mark.tflite, pytest.mark.slow]),
])
def test_artifacts_converted_on_the_host_run_on_the_device(fmt, backends, runtimes, tmp_path):
    """What ``run --target`` ships: a zoo model converted here (deploy_model), its file run there, judged against
    the file's own fp32 run on the device (the classification task travels in the artifact's sidecar)."""
    from deploybench.converters import deploy_model
    from deploybench.resolve import get_model

    artifact = deploy_model(get_model("digits_cnn"), fmt)
    python = device_venv(tmp_path / "venv", runtimes)
    worker = DeviceWorker(python, tmp_path)
    try:
        worker.ask("open", ModelSource(ref=str(artifact.path)), False)
        info = worker.ask("info")
        results = [worker.ask("cell", Cell(info.name, fmt, backend, "fp32"), QUICK, ("time", "memory", "accuracy"))
                   for backend in backends]
        loaded = worker.ask("call", "deploybench.harness.measure.machine:imported_packages", (HOST_ONLY,))
    finally:
        worker.close()
    assert info.task == "classification" and not info.torch_source
    for result in results:
        assert result.ok, f"{result.cell.id}: {result.reason}"
        assert result.peak_rss_mb > 0 and result.latency_ms.n >= 20
        assert result.accuracy.top1_agreement == 1.0
        assert result.accuracy.reference == f"{runtimes[0].replace('ai-edge-litert', 'tflite')} fp32 ({fmt} file)"
    assert loaded == []


@pytest.mark.openvino
def test_an_int8_file_quantized_on_the_host_is_timed_on_the_device_as_it_is(device_python, tmp_path):
    """An int8 cell of a file that is already int8 runs the file (no second quantization, which needs onnx)."""
    from deploybench.converters import deploy_model
    from deploybench.resolve import get_model

    int8 = deploy_model(get_model("digits_cnn"), "onnx", precision="int8")
    as_file = ModelSource(ref=str(int8.path))
    assert deploy_model(as_file.resolve(), "onnx", precision="int8").path == int8.path
    worker = DeviceWorker(device_python, tmp_path)
    try:
        worker.ask("open", as_file, False)
        results = [worker.ask("cell", Cell("model", "onnx", backend, "int8"), QUICK, ("time", "memory"))
                   for backend in ("onnxruntime", "openvino")]
    finally:
        worker.close()
    for result in results:
        assert result.ok, f"{result.cell.id}: {result.reason}"
        assert result.precision_ran.startswith("int8") and result.peak_rss_mb > 0 and result.latency_ms.n >= 20

def _graph_model(nodes, inputs, outputs, initializers, props=None):
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


@pytest.mark.parametrize("kind", ["fp32-dynamic", "fp16-weights", "int8-qdq", "stamped", "unnamed-dims"])
def test_the_onnx_header_read_without_onnx_matches_the_onnx_reader(kind, tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    from deploybench.converters.onnx import PRECISION_KEY, _read_without_onnx, read_artifact

    rng = np.random.default_rng(1)
    value = helper.make_tensor_value_info
    if kind == "fp16-weights":
        weights = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float16), "W")
        nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
                 helper.make_node("MatMul", ["xh", "W"], ["y"])]
        model = _graph_model(nodes, [value("x", TensorProto.FLOAT, [1, 8])], [value("y", TensorProto.FLOAT16, [1, 4])],
                             [weights])
    elif kind == "int8-qdq":
        scale, zero = numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(
            np.array(0, np.int8), "z")
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        model = _graph_model(nodes, [value("x", TensorProto.FLOAT, ["batch", 3, 224, 224])],
                             [value("y", TensorProto.FLOAT, ["batch", 3, 224, 224])], [scale, zero])
    else:
        weights = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
        shape_in = [None, 8] if kind == "unnamed-dims" else ["batch", 8]
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
        model = _graph_model(nodes, [value("x", TensorProto.FLOAT, shape_in), value("ids", TensorProto.INT64, [2])],
                             [value("y", TensorProto.FLOAT, ["batch", 4])], [weights],
                             {PRECISION_KEY: "int8", "other": "x"} if kind == "stamped" else None)
    path = tmp_path / f"{kind}.onnx"
    save(model, str(path))
    with_onnx, without = read_artifact(path), _read_without_onnx(path)
    assert (without.inputs, without.outputs, without.precision) == (with_onnx.inputs, with_onnx.outputs,
                                                                    with_onnx.precision)
    assert without.metadata["opset"] == with_onnx.metadata["opset"] == 17
    assert with_onnx.precision == {"fp16-weights": "fp16", "int8-qdq": "int8", "stamped": "int8"}.get(kind, "fp32")


def test_an_onnx_file_with_external_data_is_refused_without_onnx(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    from deploybench.converters.onnx import _read_without_onnx
    from deploybench.spec import DeployBenchError

    weights = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    model = _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weights])
    save(model, str(tmp_path / "big.onnx"), save_as_external_data=True, location="big.data", size_threshold=0)
    with pytest.raises(DeployBenchError, match="external data files, which deploybench checks with the onnx package"):
        _read_without_onnx(tmp_path / "big.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 40)
    with pytest.raises(DeployBenchError, match="junk.onnx is not a readable ONNX model"):
        _read_without_onnx(tmp_path / "junk.onnx")
    whole = (tmp_path / "big.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DeployBenchError, match=r"cut.onnx is not a readable ONNX model \(field 7 runs past the end"):
        _read_without_onnx(tmp_path / "cut.onnx")


def test_tables_and_nms_need_neither_tabulate_nor_opencv(monkeypatch):
    from deploybench.harness.report.table import simple_table
    from deploybench.tasks.nms import nms, nms_numpy

    rows, headers = [["onnx", "onnxruntime", "0.0228", None], ["openvino", "openvino", "0.146", "ok"]], \
        ["format", "backend", "median ms", "status"]
    drawn = simple_table(rows, headers)
    rng = np.random.default_rng(2)
    corners = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 30, (40, 2))], axis=1)
    scores, classes = rng.uniform(0, 1, 40), rng.integers(0, 3, 40)
    with_cv2 = nms(boxes, scores, classes, 0.45, 10)
    monkeypatch.setitem(sys.modules, "tabulate", None)  # an import of it now raises ImportError
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert simple_table(rows, headers) == drawn
    np.testing.assert_array_equal(nms(boxes, scores, classes, 0.45, 10), with_cv2)
    np.testing.assert_array_equal(with_cv2, nms_numpy(boxes, scores, classes, 0.45, 10))
