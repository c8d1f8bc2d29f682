"""TFLite (LiteRT), CoreML and TensorRT: converters and engines, on small real models made here."""

from __future__ import annotations

import importlib.util
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from deploybench.converters import artifact_from_path, deploy_model
from deploybench.engines import create_deployer, engine_class
from deploybench.spec import DeployBenchError, ModelSpec, TensorSpec

pytest_plugins = ["pytester"]


def torch_outputs(spec, inputs):
    import torch

    module = spec.build()  # outside inference_mode: a zoo model may train on first build
    with torch.inference_mode():
        return module(*(torch.from_numpy(a) for a in inputs.values())).numpy()


@pytest.fixture(scope="module")
def digits_spec():
    from deploybench.resolve import get_model

    try:
        return get_model("digits_cnn")
    except DeployBenchError as exc:
        pytest.skip(f"digits_cnn is not in the zoo yet: {exc}")


# ---- TFLite ----------------------------------------------------------------------------------
# The fast tests convert with dynamic_batch=False: litert-torch cannot keep this model's batch axis
# dynamic anyway, and skipping the attempt halves the conversion time. The default path (try, then
# fix the axis) is covered by the slow test below.
TFLITE_OPTIONS = {"dynamic_batch": False}


@pytest.mark.tflite
def test_tflite_fp32_matches_torch_with_a_recorded_fixed_batch(small_cnn_spec):
    artifact = deploy_model(small_cnn_spec, "tflite", **TFLITE_OPTIONS)
    inputs = small_cnn_spec.make_inputs(seed=1)
    with create_deployer(artifact, backend="tflite", threads=1) as engine:
        outputs = engine.infer(inputs)
    assert list(outputs) == ["logits"]
    assert outputs["logits"].dtype == np.float32
    assert np.abs(outputs["logits"] - torch_outputs(small_cnn_spec, inputs)).max() <= 1e-4
    assert artifact.metadata["fixed_axes"] == {"batch": 1}
    assert artifact.inputs[0].shape == (1, 3, 16, 16)
    assert artifact.metadata["input_names"] == {"input": "args_0"}
    assert artifact.metadata["output_names"] == {"logits": "output_0"}
    assert artifact.metadata["layout"].startswith("NCHW")


@pytest.mark.slow
@pytest.mark.tflite
def test_tflite_default_tries_a_dynamic_batch_then_fixes_it(small_cnn_spec):
    artifact = deploy_model(small_cnn_spec, "tflite")
    # litert-torch 0.10 lowers through JAX, which needs concrete shapes for pooling/flatten: the
    # attempt fails, its error is recorded, and the axis is fixed to the spec's default size.
    assert artifact.metadata["dynamic_axes_error"]
    assert artifact.metadata["fixed_axes"] == {"batch": 1}
    inputs = small_cnn_spec.make_inputs(seed=1)
    with create_deployer(artifact, backend="tflite") as engine:
        assert np.abs(engine.infer(inputs)["logits"] - torch_outputs(small_cnn_spec, inputs)).max() <= 1e-4


@pytest.mark.tflite
def test_tflite_fixed_batch_rejects_another_batch_size(small_cnn_spec):
    artifact = deploy_model(small_cnn_spec, "tflite", **TFLITE_OPTIONS)
    with create_deployer(artifact, backend="tflite") as engine:
        with pytest.raises(DeployBenchError, match=r"has shape \[2, 3, 16, 16\]; it takes \[1, 3, 16, 16\]"):
            engine.infer(small_cnn_spec.make_inputs(dims={"batch": 2}))


@pytest.mark.tflite
def test_tflite_threads_start_that_many_workers(small_cnn_spec):
    psutil = pytest.importorskip("psutil")
    artifact = deploy_model(small_cnn_spec, "tflite", **TFLITE_OPTIONS)
    process = psutil.Process()
    added = {}
    for threads in (1, 3):
        before = process.num_threads()
        engine = create_deployer(artifact, backend="tflite", threads=threads)
        added[threads] = process.num_threads() - before
        assert engine.runtime_notes["num_threads"] == threads
        engine.infer(small_cnn_spec.make_inputs())
        engine.close()
    # XNNPACK's thread pool holds threads - 1 workers besides the calling thread.
    assert added[1] == 0
    assert added[3] == 2


@pytest.mark.tflite
def test_tflite_fp16_weights_keep_float_io_and_stay_close(small_cnn_spec):
    artifact = deploy_model(small_cnn_spec, "tflite", precision="fp16", **TFLITE_OPTIONS)
    assert artifact.precision == "fp16"
    assert "fp16 weights" in artifact.metadata["quantization"]
    inputs = small_cnn_spec.make_inputs(seed=2)
    with create_deployer(artifact, backend="tflite") as engine:
        outputs = engine.infer(inputs)
    assert np.abs(outputs["logits"] - torch_outputs(small_cnn_spec, inputs)).max() <= 1e-2


@pytest.mark.tflite
def test_tflite_int8_is_full_integer_with_float_io_for_callers(small_cnn_spec):
    artifact = deploy_model(small_cnn_spec, "tflite", precision="int8", **TFLITE_OPTIONS)
    assert set(artifact.metadata["io_quantization"]) == {"args_0", "output_0"}
    assert artifact.metadata["calibration_samples"] == 64
    inputs = small_cnn_spec.make_inputs(seed=3, dims={"batch": 1})
    with create_deployer(artifact, backend="tflite") as engine:
        outputs = engine.infer(inputs)
        assert engine.runtime_notes["quantized_io"] == ["input", "logits"]
    reference = torch_outputs(small_cnn_spec, inputs)
    assert outputs["logits"].dtype == np.float32
    # One output step is the output scale; int8 activations through 3 layers stay within a few steps.
    scale = artifact.metadata["io_quantization"]["output_0"][0]
    assert np.abs(outputs["logits"] - reference).max() <= 8 * scale


@pytest.mark.slow
@pytest.mark.tflite
def test_tflite_digits_fp32_exact_and_int8_smaller_and_agreeing(digits_spec):
    images, labels = digits_spec.eval_data()
    images = images["image"]
    reference = torch_outputs(digits_spec, {"image": images})
    fp32 = deploy_model(digits_spec, "tflite")
    int8 = deploy_model(digits_spec, "tflite", precision="int8")
    assert int8.metadata["calibration"].startswith("real")
    assert int8.size_bytes < 0.5 * fp32.size_bytes
    predictions = {}
    for artifact in (fp32, int8):
        with create_deployer(artifact, backend="tflite", threads=1) as engine:
            logits = np.concatenate([engine.infer({"image": images[i:i + 1]})["logits"] for i in range(len(images))])
        if artifact is fp32:
            assert np.abs(logits - reference).max() <= 1e-4
        predictions[artifact.precision] = logits.argmax(1)
    torch_top1 = reference.argmax(1)
    assert (predictions["int8"] == torch_top1).mean() >= 0.97
    assert abs((predictions["int8"] == labels).mean() - (torch_top1 == labels).mean()) <= 0.01


@pytest.mark.tflite
def test_tflite_file_without_sidecar_is_read_from_its_signature(small_cnn_spec, tmp_path):
    copy = tmp_path / "mine.tflite"
    shutil.copyfile(deploy_model(small_cnn_spec, "tflite", precision="int8", **TFLITE_OPTIONS).path, copy)
    artifact = artifact_from_path(copy)
    assert artifact.format == "tflite" and artifact.precision == "int8"
    assert [(t.name, t.shape, t.dtype) for t in artifact.inputs] == [("args_0", (1, 3, 16, 16), "float32")]
    assert [(t.name, t.shape) for t in artifact.outputs] == [("output_0", (1, 5))]
    inputs = small_cnn_spec.make_inputs(seed=4)
    with create_deployer(copy) as engine:
        assert engine.backend == "tflite"
        assert engine.infer(inputs["input"])["output_0"].shape == (1, 5)


def test_corrupt_tflite_gives_a_one_line_error(tmp_path):
    pytest.importorskip("ai_edge_litert")
    corrupt = tmp_path / "broken.tflite"
    corrupt.write_bytes(b"TFL3 this is not a flatbuffer" * 8)
    with pytest.raises(DeployBenchError) as error:
        artifact_from_path(corrupt)
    message = str(error.value)
    assert "broken.tflite" in message and "re-export" in message
    assert "\n" not in message


def test_onnx_to_tflite_without_onnx2tf_names_the_extra(tmp_path):
    if importlib.util.find_spec("onnx2tf") is not None:
        pytest.skip("onnx2tf is installed: the install hint is not shown")
    from deploybench.converters import tflite

    spec = ModelSpec(name="byo", inputs=(TensorSpec("input", ("batch", 3, 8, 8)),), source_path=tmp_path / "m.onnx",
                     source_format="onnx")
    with pytest.raises(DeployBenchError, match=r"pip install deploybench\[tensorflow\]"):
        tflite.convert(spec, tmp_path / "out", "fp32")


@pytest.mark.slow
@pytest.mark.tflite
def test_onnx_to_tflite_with_onnx2tf_matches_onnx(small_cnn_spec):
    pytest.importorskip("onnx2tf", reason="onnx2tf (pip install deploybench[tensorflow]) is not installed")
    onnx_artifact = deploy_model(small_cnn_spec, "onnx")
    artifact = deploy_model(onnx_artifact.path, "tflite")
    inputs = small_cnn_spec.make_inputs(seed=5)
    with create_deployer(artifact, backend="tflite") as engine:
        outputs = engine.infer(inputs)
    assert np.abs(outputs["logits"] - torch_outputs(small_cnn_spec, inputs)).max() <= 1e-4


# ---- CoreML ----------------------------------------------------------------------------------
@pytest.mark.coreml
def test_coreml_fp32_package_is_validated_against_the_spec(small_cnn_spec):
    pytest.importorskip("coremltools")
    artifact = deploy_model(small_cnn_spec, "coreml")
    assert artifact.path.name == "model.mlpackage" and artifact.path.is_dir()
    assert [(t.name, t.shape) for t in artifact.inputs] == [("input", ("batch", 3, 16, 16))]
    assert [(t.name, t.shape) for t in artifact.outputs] == [("logits", ("batch", 5))]
    assert artifact.metadata["convert_to"] == "mlprogram"
    assert artifact.metadata["minimum_deployment_target"] == "iOS16"
    assert artifact.metadata["compute_precision"] == "float32"
    # The package itself (no sidecar) carries the same names and shapes.
    from deploybench.converters import coreml

    read = coreml.read_artifact(artifact.path)
    assert [t.name for t in read.inputs] == ["input"] and [t.name for t in read.outputs] == ["logits"]
    assert read.inputs[0].shape == ("batch", 3, 16, 16)


@pytest.mark.coreml
def test_coreml_validation_rejects_a_package_that_differs_from_the_spec(small_cnn_spec):
    pytest.importorskip("coremltools")
    from deploybench.converters import coreml

    artifact = deploy_model(small_cnn_spec, "coreml")
    renamed = ModelSpec(name="other", inputs=(TensorSpec("pixels", ("batch", 3, 16, 16)),), factory=lambda: None,
                        output_names=("logits",))
    with pytest.raises(DeployBenchError, match=r"CoreML inputs \['input'\] differ from other's \['pixels'\]"):
        coreml.validate(artifact, renamed)
    reshaped = ModelSpec(name="other", inputs=(TensorSpec("input", ("batch", 3, 32, 32)),), factory=lambda: None,
                         output_names=("logits",))
    with pytest.raises(DeployBenchError, match="has shape"):
        coreml.validate(artifact, reshaped)


@pytest.mark.coreml
def test_coreml_fp16_and_int8_packages_are_smaller():
    pytest.importorskip("coremltools")
    import torch
    from torch import nn

    from deploybench.models import model_from_module

    torch.manual_seed(0)
    # Enough weights (~35k) that the package size is dominated by them, not by the program text.
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                        nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    spec = model_from_module(net, np.zeros((1, 3, 8, 8), np.float32), name="wide_head", output_names=["logits"])
    fp32 = deploy_model(spec, "coreml")
    fp16 = deploy_model(spec, "coreml", precision="fp16")
    int8 = deploy_model(spec, "coreml", precision="int8")
    assert fp16.metadata["compute_precision"] == "float16"
    assert "weight-only int8" in int8.metadata["quantization"]
    assert fp16.size_bytes < 0.7 * fp32.size_bytes
    assert int8.size_bytes < fp16.size_bytes
    assert [t.name for t in int8.inputs] == ["input"] and [t.name for t in int8.outputs] == ["logits"]
    # coremltools needs known sizes for AdaptiveAvgPool2d(4): the batch axis is fixed and recorded.
    assert fp32.metadata["fixed_axes"] == {"batch": 1}
    assert fp32.inputs[0].shape == (1, 3, 8, 8) and fp32.outputs[0].shape == (1, 10)


@pytest.mark.coreml
def test_coreml_engine_availability_names_macos():
    available, reason = engine_class("coreml").availability()
    if platform.system() == "Darwin":
        pytest.skip("on macOS CoreML runs")
    assert not available
    if importlib.util.find_spec("coremltools") is not None:
        assert reason == ("CoreML prediction needs macOS (this is Linux); a run here still converts the "
                          ".mlpackage and checks its input and output names and shapes")
        assert "was converted" not in reason  # `deploybench backends` converts nothing


@pytest.mark.coreml
def test_coreml_engine_on_macos_matches_torch(small_cnn_spec):
    if platform.system() != "Darwin":
        pytest.skip("CoreML prediction needs macOS")
    artifact = deploy_model(small_cnn_spec, "coreml")
    inputs = small_cnn_spec.make_inputs(seed=6)
    with create_deployer(artifact, backend="coreml") as engine:
        outputs = engine.infer(inputs)
    assert np.abs(outputs["logits"] - torch_outputs(small_cnn_spec, inputs)).max() <= 1e-3


# ---- TensorRT --------------------------------------------------------------------------------
def test_tensorrt_modules_import_and_report_why_they_cannot_run():
    import deploybench.converters.tensorrt as converter
    import deploybench.engines.tensorrt as engine

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    available, reason = engine.TensorRTEngine.availability()
    assert available is False
    assert "tensorrt" in reason
    with pytest.raises(DeployBenchError, match="pip install tensorrt"):
        converter.convert(ModelSpec(name="m", inputs=(TensorSpec("x", (1, 2)),), factory=lambda: None), None, "fp32")


@pytest.fixture
def tensorrt_gpu():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU machine)")
    available, reason = engine_class("tensorrt").availability()
    if not available:
        pytest.skip(reason)


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_tensorrt_plan_matches_torch_with_dynamic_batch(tensorrt_gpu, small_cnn_spec, precision, atol):
    artifact = deploy_model(small_cnn_spec, "tensorrt", precision=precision)
    assert artifact.path.suffix == ".plan"
    with create_deployer(artifact, backend="tensorrt") as engine:
        for batch in (1, 4):
            inputs = small_cnn_spec.make_inputs(seed=batch, dims={"batch": batch})
            outputs = engine.infer(inputs)
            assert np.abs(outputs["logits"] - torch_outputs(small_cnn_spec, inputs)).max() <= atol


@pytest.mark.slow
@pytest.mark.tensorrt
@pytest.mark.parametrize("int8_mode", ["qdq", "calibrator"])
def test_tensorrt_int8_agrees_with_torch_on_digits(tensorrt_gpu, digits_spec, int8_mode):
    images, _ = digits_spec.eval_data()
    artifact = deploy_model(digits_spec, "tensorrt", precision="int8", int8_mode=int8_mode)
    with create_deployer(artifact, backend="tensorrt") as engine:
        logits = engine.infer({"image": images["image"]})["logits"]
    reference = torch_outputs(digits_spec, images)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.97


def test_tflite_conversion_without_litert_torch_is_one_line_naming_the_extra(small_cnn_spec, tmp_path, monkeypatch):
    import sys

    from deploybench.converters.tflite import _convert_from_torch

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as in tox -e core: not installed
    with pytest.raises(DeployBenchError, match=r"needs litert-torch.*deploybench\[tflite\]") as caught:
        _convert_from_torch(small_cnn_spec, tmp_path)
    assert "\n" not in str(caught.value)


def test_backend_marked_tests_skip_with_the_reason_when_the_package_is_missing(pytester):
    conftest = (Path(__file__).parent / "conftest.py").read_text().replace("from __future__ import annotations", "")
    pytester.makeconftest("import sys\nsys.modules['litert_torch'] = None  # as in tox -e core\n" + conftest)
    pytester.makeini("[pytest]\nmarkers =\n    tflite: t\n    openvino: o\n")
    pytester.makepyfile(test_x="import pytest\n\n@pytest.mark.tflite\ndef test_t():\n    import litert_torch\n")
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    assert "needs litert_torch" in result.stdout.str()
