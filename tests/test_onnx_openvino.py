"""ONNX and OpenVINO formats, the onnxruntime and openvino backends, and the shared int8 calibration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deploybench.converters import artifact_from_path, deploy_model
from deploybench.engines import create_deployer
from deploybench.spec import DeployBenchError, PrecisionNotSupported

pytest.importorskip("onnxruntime")


def torch_reference(spec, inputs):
    import torch

    with torch.inference_mode():
        return spec.build()(*[torch.from_numpy(a) for a in inputs.values()]).numpy()


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(artifact, backend, inputs, precision=None, **options):
    with create_deployer(artifact, backend=backend, precision=precision, threads=2, **options) as engine:
        return engine.infer(inputs)["logits"], dict(engine.runtime_notes)


def assert_one_line_error_naming(excinfo, name):
    message = str(excinfo.value)
    assert "\n" not in message
    assert name in message


@pytest.fixture(scope="module")
def inputs(small_cnn_spec):
    return small_cnn_spec.make_inputs(seed=1, dims={"batch": 2})


@pytest.fixture(scope="module")
def onnx_fp32(small_cnn_spec):
    return deploy_model(small_cnn_spec, "onnx")


@pytest.fixture(scope="module")
def openvino_fp32(small_cnn_spec):
    pytest.importorskip("openvino")
    return deploy_model(small_cnn_spec, "openvino")


# ---- fp32 parity --------------------------------------------------------------------------------
def test_onnx_export_records_exporter_opset_and_named_dynamic_axes(onnx_fp32):
    assert onnx_fp32.precision == "fp32"
    assert onnx_fp32.metadata["exporter"] in ("dynamo", "torchscript")
    assert onnx_fp32.metadata["opset"] >= 17
    assert [(t.name, t.shape) for t in onnx_fp32.inputs] == [("input", ("batch", 3, 16, 16))]
    assert [(t.name, t.shape) for t in onnx_fp32.outputs] == [("logits", ("batch", 5))]
    assert onnx_fp32.files == (onnx_fp32.path,)  # weights inlined: one file


@pytest.mark.onnxruntime
def test_onnxruntime_fp32_matches_torch(small_cnn_spec, onnx_fp32, inputs):
    out, notes = run(onnx_fp32, "onnxruntime", inputs)
    assert np.abs(out - torch_reference(small_cnn_spec, inputs)).max() <= 1e-4
    assert notes["providers"] == ["CPUExecutionProvider"]


@pytest.mark.openvino
def test_openvino_fp32_matches_torch_on_ir_and_onnx_and_really_runs_f32(small_cnn_spec, onnx_fp32, openvino_fp32,
                                                                         inputs):
    reference = torch_reference(small_cnn_spec, inputs)
    for artifact in (openvino_fp32, onnx_fp32):
        out, notes = run(artifact, "openvino", inputs)
        assert np.abs(out - reference).max() <= 1e-4
        assert notes["inference_precision"] == "f32"  # read back from the compiled model
    assert openvino_fp32.metadata["compress_to_fp16"] is False
    assert openvino_fp32.path.with_suffix(".bin") in openvino_fp32.files


def cpu_runs_bf16() -> bool:
    """The probe: the OpenVINO CPU plugin lists BF16 among its capabilities on a CPU with AVX512-BF16 or AMX."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.mark.openvino
@pytest.mark.precision
def test_openvino_bf16_runs_bf16_and_stays_close_or_is_refused_where_the_cpu_has_none(small_cnn_spec, openvino_fp32,
                                                                                      inputs):
    bf16 = deploy_model(small_cnn_spec, "openvino", precision="bf16")
    out_fp32, _ = run(openvino_fp32, "openvino", inputs)
    if not cpu_runs_bf16():
        with pytest.raises(PrecisionNotSupported, match="no bf16 support"):
            run(bf16, "openvino", inputs)
        return
    out_bf16, notes = run(bf16, "openvino", inputs)
    assert notes["inference_precision"] == "bf16"
    assert np.abs(out_bf16 - out_fp32).max() > 0
    assert cosine(out_bf16, out_fp32) > 0.99


@pytest.mark.openvino
@pytest.mark.precision
def test_openvino_bf16_is_mixed_and_names_the_layers_the_cpu_kept_in_f32(tmp_path):
    import openvino as ov
    from openvino import opset13 as ops

    from deploybench.engines.openvino import layer_precisions

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 8, 8], np.float32, name="image")
    conv = ops.convolution(x, ops.constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                           [1, 1], [1, 1], [1, 1], [1, 1])
    probs = ops.softmax(ops.reshape(conv, ops.constant(np.array([1, -1])), False), 1)
    probs.output(0).set_names({"probs"})
    ov.save_model(ov.Model([probs], [x]), str(tmp_path / "m.xml"), compress_to_fp16=False)
    artifact = artifact_from_path(tmp_path / "m.xml")
    feed = {"image": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    with create_deployer(artifact, backend="openvino", precision="fp32") as engine:
        engine.infer(feed)
        assert engine.runtime_notes["layer_precisions"] == {"f32": {"Convolution": 1, "Softmax": 1}}
    if not cpu_runs_bf16():
        with pytest.raises(PrecisionNotSupported):
            create_deployer(artifact, backend="openvino", precision="bf16").load()
        return
    with create_deployer(artifact, backend="openvino", precision="bf16") as engine:
        engine.infer(feed)
        notes = dict(engine.runtime_notes)
        assert layer_precisions(engine._compiled) == notes["layer_precisions"]
    # the convolution runs bf16; the plugin keeps the softmax in f32, and the cell says which
    assert notes["layer_precisions"] == {"bf16": {"Convolution": 1}, "f32": {"Softmax": 1}}
    assert notes["precision_ran"] == "bf16 in 1 of 2 compute layers; kept in fp32: Softmax x1"


# ---- fp16 and int8 ------------------------------------------------------------------------------
@pytest.mark.onnxruntime
@pytest.mark.precision
def test_onnx_fp16_keeps_fp32_io_and_sensitive_ops(small_cnn_spec, onnx_fp32, inputs):
    import onnx

    fp16 = deploy_model(small_cnn_spec, "onnx", precision="fp16")
    graph = onnx.load(str(fp16.path)).graph
    assert {t.data_type for t in graph.initializer if len(t.dims) == 4} == {onnx.TensorProto.FLOAT16}
    assert [t.dtype for t in fp16.inputs + fp16.outputs] == ["float32", "float32"]
    assert "ReduceMean" in fp16.metadata["fp32_ops"]  # the global average pool
    out, _ = run(fp16, "onnxruntime", inputs)
    assert np.abs(out - run(onnx_fp32, "onnxruntime", inputs)[0]).max() < 1e-2


@pytest.mark.onnxruntime
@pytest.mark.precision
def _weight_dtypes(path) -> set[str]:
    """The dtypes of the initializers with more than 16 elements: the weights, not scales or biases."""
    import onnx
    from onnx import numpy_helper

    arrays = (numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer)
    return {str(a.dtype) for a in arrays if a.size > 16}


def test_onnx_int8_is_qdq_smaller_and_close(small_cnn_spec, onnx_fp32, inputs):
    import onnx

    int8 = deploy_model(small_cnn_spec, "onnx", precision="int8")
    ops = [node.op_type for node in onnx.load(str(int8.path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # every weight is stored in 8 bits; the file of a network this small is mostly graph, not weights
    assert _weight_dtypes(int8.path) == {"int8"} and _weight_dtypes(onnx_fp32.path) == {"float32"}
    assert int8.metadata["calibration"] == "random (model has no calibration data)"
    assert int8.metadata["calibration_samples"] == 64 and int8.metadata["calibration_method"] == "MinMax"
    out, _ = run(int8, "onnxruntime", inputs)
    assert cosine(out, run(onnx_fp32, "onnxruntime", inputs)[0]) > 0.99
    assert artifact_from_path(int8.path).precision == "int8"
    with pytest.raises(DeployBenchError, match="int8"):
        create_deployer(int8, backend="onnxruntime", precision="fp32")


@pytest.mark.openvino
@pytest.mark.precision
def test_nncf_int8_ir_has_fake_quantize_and_runs(small_cnn_spec, openvino_fp32, inputs):
    import openvino as ov

    int8 = deploy_model(small_cnn_spec, "openvino", precision="int8")
    op_types = {op.get_type_name() for op in ov.Core().read_model(str(int8.path)).get_ordered_ops()}
    assert "FakeQuantize" in op_types
    assert int8.metadata["calibration_samples"] == 64
    out, notes = run(int8, "openvino", inputs)
    assert notes["inference_precision"] == "f32"  # the unquantized remainder, explicitly
    assert notes["precision_ran"].startswith("int8 where NNCF placed FakeQuantize")
    assert cosine(out, run(openvino_fp32, "openvino", inputs)[0]) > 0.99
    # the int8 ONNX file ONNX Runtime's quantizer made, run by OpenVINO, is said for what it is
    _, onnx_notes = run(deploy_model(small_cnn_spec, "onnx", precision="int8"), "openvino", inputs)
    assert onnx_notes["precision_ran"].startswith("int8 where the ONNX file's QDQ pairs quantize")
    with pytest.raises(DeployBenchError, match="int8"):
        create_deployer(openvino_fp32, backend="openvino", precision="int8")


def test_calibration_prefers_real_data_and_is_cached(small_cnn_spec, tmp_path):
    import dataclasses

    from deploybench.converters.calibration import SOURCE_RANDOM, SOURCE_REAL, calibration_inputs

    random_cal = calibration_inputs(small_cnn_spec, n=4, seed=3, cache_dir=tmp_path)
    assert random_cal.source == SOURCE_RANDOM and len(random_cal.samples) == 4
    again = calibration_inputs(small_cnn_spec, n=4, seed=3, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.samples[2]["input"], random_cal.samples[2]["input"])
    assert len(list((tmp_path / "calibration").glob("*.npz"))) == 1

    real = np.full((1, 3, 16, 16), 0.25, np.float32)
    with_data = dataclasses.replace(small_cnn_spec, name="small_cnn_real",
                                    calibration_data=lambda n: [{"input": real}] * min(n, 3))
    real_cal = calibration_inputs(with_data, n=8, cache_dir=tmp_path)
    assert real_cal.source == SOURCE_REAL and len(real_cal.samples) == 3
    np.testing.assert_array_equal(real_cal.samples[0]["input"], real)


# ---- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,fmt", [
    pytest.param("onnxruntime", "onnx", marks=pytest.mark.onnxruntime),
    pytest.param("openvino", "openvino", marks=pytest.mark.openvino),
])
def test_dynamic_batch_after_batch_one(small_cnn_spec, backend, fmt):
    if backend == "openvino":
        pytest.importorskip("openvino")
    artifact = deploy_model(small_cnn_spec, fmt)
    with create_deployer(artifact, backend=backend, threads=2) as engine:
        for batch in (1, 3, 4):
            x = small_cnn_spec.make_inputs(seed=batch, dims={"batch": batch})
            out = engine.infer(x)["logits"]
            assert out.shape == (batch, 5)
            assert np.abs(out - torch_reference(small_cnn_spec, x)).max() <= 1e-4
        with pytest.raises(DeployBenchError) as excinfo:
            engine.infer(np.zeros((1, 3, 8, 8), np.float32))
        assert_one_line_error_naming(excinfo, "input")


# ---- bring your own file ------------------------------------------------------------------------
@pytest.mark.openvino
def test_bring_your_own_onnx_converts_to_openvino(onnx_fp32, tmp_path, inputs):
    pytest.importorskip("openvino")
    user_file = tmp_path / "user_model.onnx"
    user_file.write_bytes(onnx_fp32.path.read_bytes())
    assert deploy_model(user_file, "onnx").path == user_file  # fp32 of an .onnx is the file itself
    ir = deploy_model(user_file, "openvino", output_dir=tmp_path / "cache")
    assert ir.metadata["source"] == "onnx" and ir.path.suffix == ".xml"
    assert [t.name for t in ir.inputs] == ["input"] and ir.inputs[0].shape[1:] == (3, 16, 16)
    out, _ = run(ir, "openvino", inputs)
    np.testing.assert_allclose(out, run(onnx_fp32, "onnxruntime", inputs)[0], atol=1e-4)


def test_truncated_and_garbage_onnx_give_one_line_error(onnx_fp32, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    data = onnx_fp32.path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (truncated, garbage):
        with pytest.raises(DeployBenchError) as excinfo:
            artifact_from_path(path)
        assert_one_line_error_naming(excinfo, path.name)


def test_garbage_xml_and_missing_bin_give_one_line_error(openvino_fp32, tmp_path):
    garbage = tmp_path / "garbage.xml"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    garbage.with_suffix(".bin").write_bytes(b"\0" * 64)
    no_bin = tmp_path / "no_bin.xml"
    no_bin.write_bytes(openvino_fp32.path.read_bytes())
    for path in (garbage, no_bin):
        with pytest.raises(DeployBenchError) as excinfo:
            artifact_from_path(path)
        assert_one_line_error_naming(excinfo, path.name)


# ---- the cache ----------------------------------------------------------------------------------
def test_second_deploy_is_cached_and_not_reexported(small_cnn_spec):
    first = deploy_model(small_cnn_spec, "onnx")
    mtime = first.path.stat().st_mtime_ns
    second = deploy_model(small_cnn_spec, "onnx")
    assert second.cached is True
    assert second.path == first.path
    assert second.path.stat().st_mtime_ns == mtime


@pytest.mark.openvino
def test_two_processes_converting_at_once_leave_one_entry(onnx_fp32, tmp_path):
    pytest.importorskip("openvino")
    user_file = tmp_path / "shared.onnx"
    user_file.write_bytes(onnx_fp32.path.read_bytes())
    cache = tmp_path / "cache"
    script = textwrap.dedent("""
        import sys
        from deploybench.converters import deploy_model
        print(deploy_model(sys.argv[1], "openvino", output_dir=sys.argv[2]).path)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    workers = [subprocess.Popen([sys.executable, "-c", script, str(user_file), str(cache)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [worker.communicate(timeout=240) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in results]
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1 and Path(paths.pop()).exists()
    entries = [p.name for p in cache.iterdir() if p.name != "calibration"]
    assert len(entries) == 1 and not entries[0].startswith(".")
