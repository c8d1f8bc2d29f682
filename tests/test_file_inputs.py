"""An exported file's inputs sized and filled from the command line (issue 16 item 3): a model shaped like
a voice-activity detector, whose inputs are ``input`` [batch, samples] float, ``state`` [2, batch, 16]
float and ``sr`` an int64 scalar that must be 16000, and which cannot run at the 1x1 size every dynamic
axis gets by default."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deploybench.resolve import get_model, ref_with_inputs, resolve_ref, with_file_inputs
from deploybench.spec import DeployBenchError

FRAME_PER_KHZ = 32  # frames of sr / 500 samples: 32 at 16 kHz


@pytest.fixture(scope="module")
def vad_onnx(tmp_path_factory):
    """Frames the audio by a length computed from ``sr`` (Reshape to [-1, sr / 500]); a wrong sample rate or
    a length that is not a whole number of frames fails inside the model, as a real one's STFT padding does."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Constant", [], ["divisor"], value=helper.make_tensor("d", TensorProto.INT64, [], [500])),
        helper.make_node("Div", ["sr", "divisor"], ["frame"]),
        helper.make_node("Constant", [], ["minus_one"], value=helper.make_tensor("m", TensorProto.INT64, [1], [-1])),
        helper.make_node("Unsqueeze", ["frame", "axes0"], ["frame_1d"]),
        helper.make_node("Concat", ["minus_one", "frame_1d"], ["frame_shape"], axis=0),
        helper.make_node("Reshape", ["input", "frame_shape"], ["frames"], allowzero=1),
        helper.make_node("ReduceMean", ["frames"], ["energy"], keepdims=0, axes=[1]),  # axes attribute: opset < 18
        helper.make_node("ReduceMean", ["state"], ["state_mean"], keepdims=0),
        helper.make_node("Add", ["energy", "state_mean"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["frames"])],
        initializer=[helper.make_tensor("axes0", TensorProto.INT64, [1], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("vad") / "vad.onnx"
    onnx.save(model, path)
    return path


def _run(path, inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def test_default_sizes_cannot_run_the_model(vad_onnx):
    spec = get_model(str(vad_onnx))
    inputs = spec.make_inputs(seed=0)
    assert inputs["input"].shape == (1, 1) and inputs["sr"].shape == ()
    with pytest.raises(Exception):  # 1 sample with a random sample rate: no whole frame
        _run(vad_onnx, inputs)


def test_inputs_size_dynamic_axes_and_fix_values(vad_onnx):
    spec = with_file_inputs(get_model(str(vad_onnx)), ["input:1x512", "sr::int64:=16000"])
    inputs = spec.make_inputs(seed=0)
    assert inputs["input"].shape == (1, 512) and inputs["state"].shape == (2, 1, 16)
    assert inputs["sr"].shape == () and int(inputs["sr"]) == 16000 and inputs["sr"].dtype == np.int64
    assert _run(vad_onnx, inputs).shape == (512 // FRAME_PER_KHZ,)
    # the ref carries the inputs to a worker, which rebuilds the same model
    again = resolve_ref(spec.ref)
    assert again.dims == spec.dims and again.make_inputs(seed=0)["sr"] == 16000
    assert ref_with_inputs(str(vad_onnx), ["input:1x512", "sr:::=16000"]).endswith("@input:1x512;sr:::=16000")


@pytest.mark.parametrize("given,words", [
    (["audio:1x512"], "vad.onnx has no input 'audio'; its inputs: input ['batch', 'samples'] float32"),
    (["sr::float32:=16000"], "vad.onnx input 'sr' is int64, not float32"),
    (["state:4x1x16"], "vad.onnx input 'state' axis 0 is fixed at 2, not 4"),
    (["input:512"], "vad.onnx input 'input' has shape ['batch', 'samples']; --input gave 512"),
    (["input:1x512", "state:2x3x16"], "vad.onnx: axis 'batch' is 1 in 'input' and 3 in 'state'"),
    (["input:1x512:float32:lots"], "bad values 'lots'"),
])
def test_inputs_that_do_not_fit_the_file_are_one_line_errors(vad_onnx, given, words):
    with pytest.raises(DeployBenchError, match=None) as error:
        with_file_inputs(get_model(str(vad_onnx)), given)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_bare_shapes_beside_a_file_are_refused_naming_the_named_form(vad_onnx):
    with pytest.raises(DeployBenchError, match="a model file's inputs are named; size them with --input NAME:SHAPE "
                                               r"\(e.g. --input input:1x512\)"):
        ref_with_inputs(str(vad_onnx), ["1x512"])


def test_cli_runs_the_file_at_the_given_inputs(vad_onnx, tmp_path):
    output = tmp_path / "vad.json"
    done = subprocess.run([sys.executable, "-m", "deploybench.cli", "run", "--models", str(vad_onnx),
                           "--input", "input:1x512", "--input", "sr:::=16000", "--backends", "onnxruntime",
                           "--precisions", "fp32", "--no-memory", "--no-progress", "--min-time", "0.05",
                           "--output", str(output)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cells = json.loads(output.read_text())["cells"]
    assert [c["status"] for c in cells] == ["ok"], [c.get("reason") for c in cells]
    assert cells[0]["dims_ran"] == {"batch": 1, "samples": 512}
    assert cells[0]["model_ref"].endswith("vad.onnx@input:1x512;sr:::=16000")
