"""Bring-your-own model files that are damaged or hostile: one DeployBenchError line naming the file and
what is wrong, never a traceback, a hang, or a read outside the model's folder.

Every file is made here: a real export of the small CNN, then cut, garbled or edited.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deploybench.converters import artifact_from_path, deploy_model
from deploybench.spec import DeployBenchError


def one_line_error(path: Path, *words: str) -> str:
    """The message ``artifact_from_path(path)`` refuses the file with, checked to be one line naming it."""
    with pytest.raises(DeployBenchError) as excinfo:
        artifact_from_path(path)
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert path.name in message, message
    for word in words:
        assert word in message, message
    return message


def damaged(data: bytes, seed: int) -> dict[str, bytes]:
    """Copies of a real file's ``data`` cut at several places, and random bytes of about its size."""
    return {"empty": b"", "first 16 bytes": data[:16], "half": data[: len(data) // 2],
            "all but the last 100 bytes": data[:-100], "random bytes": np.random.default_rng(seed).bytes(4096)}


def each_refused(files: dict[str, bytes], folder: Path, suffix: str, *words: str) -> None:
    for i, content in enumerate(files.values()):
        path = folder / f"{i}{suffix}"
        path.write_bytes(content)
        one_line_error(path, *words)


@pytest.fixture(scope="module")
def onnx_file(small_cnn_spec) -> Path:
    return deploy_model(small_cnn_spec, "onnx").path


@pytest.fixture(scope="module")
def ir_files(small_cnn_spec) -> tuple[Path, Path]:
    pytest.importorskip("openvino")
    xml = deploy_model(small_cnn_spec, "openvino").path
    return xml, xml.with_suffix(".bin")


# ---- ONNX ----------------------------------------------------------------------------------------
def with_external_data(source: Path, folder: Path, location: str, data_at: Path | None = None) -> Path:
    """A copy of ``source`` in ``folder`` whose float initializers live in one external file named ``location``
    (written at ``data_at``, default the location inside ``folder``); int64 ones (axes, shapes) stay inline,
    as exporters keep them, since ONNX Runtime's shape inference needs them."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    data_at = data_at or folder / location
    data_at.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with open(data_at, "wb") as data:
        for tensor in (t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT):
            raw = numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
            for field in ("raw_data", "float_data", "int64_data", "int32_data"):
                tensor.ClearField(field)
            data.write(raw)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                tensor.external_data.add(key=key, value=value)
            offset += len(raw)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    return folder / "model.onnx"


def test_onnx_external_data_inside_the_folder_is_read_and_runs(onnx_file, tmp_path, small_cnn_spec):
    from deploybench.engines import create_deployer

    path = with_external_data(onnx_file, tmp_path / "model", "weights/data.bin")
    artifact = artifact_from_path(path)
    assert artifact.files == (path, tmp_path / "model" / "weights" / "data.bin")
    inputs = small_cnn_spec.make_inputs(seed=1, dims={"batch": 2})
    outputs = []
    for model in (artifact, artifact_from_path(onnx_file)):
        with create_deployer(model, backend="onnxruntime", threads=1) as engine:
            outputs.append(engine.infer(inputs)["logits"])
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("where", ["../secret.bin", "absolute", "symlink out"])
def test_onnx_external_data_leaving_the_folder_is_refused(onnx_file, tmp_path, where):
    secret = tmp_path / "secret.bin"
    folder = tmp_path / "model"
    if where == "absolute":
        location = str(secret)
    elif where == "symlink out":
        location = "weights.bin"
    else:
        location = where
    path = with_external_data(onnx_file, folder, location, data_at=secret)
    if where == "symlink out":
        (folder / "weights.bin").symlink_to(secret)
    one_line_error(path, f"external data location {location!r} leaves the model's folder")


def test_onnx_external_data_missing_or_short_is_refused(onnx_file, tmp_path):
    path = with_external_data(onnx_file, tmp_path, "weights.bin")
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[:-8])
    one_line_error(path, "'weights.bin' holds", "copy the complete file")
    (tmp_path / "weights.bin").unlink()
    one_line_error(path, "'weights.bin' is missing")


def test_cut_garbled_and_oversized_onnx_files_are_one_line(onnx_file, tmp_path):
    data = onnx_file.read_bytes()
    # field 7 (the graph), length-delimited, claiming ~2 GB that are not there
    oversized = b"\x08\x07\x3a\xff\xff\xff\xff\x07" + data[:64]
    each_refused({**damaged(data, seed=0), "oversized length": oversized}, tmp_path, ".onnx", "ONNX")


def test_a_pipe_named_like_a_model_is_refused_without_reading_it(tmp_path):
    pipe = tmp_path / "model.onnx"
    os.mkfifo(pipe)
    # Should the check regress, this writer ends the read after a few seconds instead of hanging the run.
    release = threading.Timer(5.0, _write_and_close, [pipe])
    release.start()
    try:
        one_line_error(pipe, "not a regular file")
    finally:
        release.cancel()


def _write_and_close(pipe: Path) -> None:
    try:
        fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # nobody is reading
        return
    os.write(fd, b"x")
    os.close(fd)


def test_a_sidecar_beside_a_user_file_cannot_point_outside_or_change_its_format(onnx_file, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    shutil.copyfile(onnx_file, path)
    (tmp_path / "outside.txt").write_text("not part of the model")
    sidecar = json.loads((onnx_file.parent / "artifact.json").read_text())
    for lie in ({"files": ["model.onnx", "../outside.txt"]}, {"format": "torch"}):
        (folder / "artifact.json").write_text(json.dumps({**sidecar, **lie, "metadata": {"from": "sidecar"}}))
        artifact = artifact_from_path(path)
        assert artifact.format == "onnx" and artifact.files == (path,)
        assert "from" not in artifact.metadata  # read from the file, the sidecar ignored
    (folder / "artifact.json").write_text(json.dumps({**sidecar, "metadata": {"from": "sidecar"}}))
    assert artifact_from_path(path).metadata["from"] == "sidecar"  # an honest one is still used


def test_file_names_never_reach_a_shell(onnx_file, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "a;$(touch PWNED) `touch PWNED2` 'b\".onnx"
    shutil.copyfile(onnx_file, path)
    ir = deploy_model(path, "openvino", output_dir=tmp_path / "cache")
    assert ir.path.exists() and artifact_from_path(path).path == path
    assert not list(tmp_path.rglob("PWNED*"))


# ---- OpenVINO IR ---------------------------------------------------------------------------------
def test_malformed_xml_missing_and_cut_bin_are_one_line(ir_files, tmp_path):
    xml, bin_ = (p.read_bytes() for p in ir_files)

    def ir(name: str, xml_bytes: bytes, bin_bytes: bytes | None) -> Path:
        path = tmp_path / f"{name}.xml"
        path.write_bytes(xml_bytes)
        if bin_bytes is not None:
            path.with_suffix(".bin").write_bytes(bin_bytes)
        return path

    one_line_error(ir("half_xml", xml[: len(xml) // 2], bin_), "not a readable OpenVINO IR", "Error parsing")
    one_line_error(ir("no_bin", xml, None), "no weights file no_bin.bin")
    one_line_error(ir("half_bin", xml, bin_[: len(bin_) // 2]), "not a readable OpenVINO IR", "Incorrect weights")
    one_line_error(ir("empty_bin", xml, b""), "not a readable OpenVINO IR")
    one_line_error(ir("garbage", np.random.default_rng(1).bytes(4096), bin_), "not an OpenVINO IR")


BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE net [\n<!ENTITY lol "lol">\n'
                  + "".join(f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1) if i > 1 else "&lol;") * 10}">\n'
                            for i in range(1, 10))
                  + ']>\n<net name="&lol9;" version="11"><layers/><edges/></net>\n')

HAND_WRITTEN_IR = """<?xml version="1.0"?>
<net name="hand" version="11">
<layers>
<layer id="0" name="x" type="Parameter" version="opset1"><data shape="1,4" element_type="f32"/>
<output><port id="0" precision="FP32"><dim>1</dim><dim>4</dim></port></output></layer>
<layer id="1" name="relu" type="ReLU" version="opset1">
<input><port id="0" precision="FP32"><dim>1</dim><dim>4</dim></port></input>
<output><port id="1" precision="FP32"><dim>1</dim><dim>4</dim></port></output></layer>
<layer id="2" name="out" type="Result" version="opset1">
<input><port id="0" precision="FP32"><dim>1</dim><dim>4</dim></port></input></layer>
</layers>
<edges><edge from-layer="0" from-port="0" to-layer="1" to-port="0"/>
<edge from-layer="1" from-port="1" to-layer="2" to-port="0"/></edges>
</net>
"""


def test_an_xml_declaring_entities_is_refused_before_openvino_reads_it(tmp_path):
    pytest.importorskip("openvino")
    path = tmp_path / "laughs.xml"
    path.write_text(BILLION_LAUGHS)
    one_line_error(path, "DOCTYPE")


def test_an_ir_without_tensor_names_is_read_with_positional_names(tmp_path):
    pytest.importorskip("openvino")
    from deploybench.engines import create_deployer

    path = tmp_path / "hand.xml"
    path.write_text(HAND_WRITTEN_IR)
    artifact = artifact_from_path(path)
    assert [t.name for t in artifact.inputs] == ["input_0"] and [t.name for t in artifact.outputs] == ["output_0"]
    with create_deployer(artifact, backend="openvino", threads=1) as engine:
        out = engine.infer({"input_0": np.array([[-1, 2, -3, 4]], np.float32)})["output_0"]
    np.testing.assert_array_equal(out, [[0, 2, 0, 4]])


# ---- TFLite --------------------------------------------------------------------------------------
def test_tflite_that_is_no_flatbuffer_or_is_cut_is_one_line(small_cnn_spec, tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    data = deploy_model(small_cnn_spec, "tflite").path.read_bytes()
    each_refused(damaged(data, seed=2), tmp_path, ".tflite", "not a readable .tflite model")


# ---- CoreML --------------------------------------------------------------------------------------
def test_coreml_garbage_empty_and_packages_reaching_outside_are_one_line(small_cnn_spec, tmp_path):
    pytest.importorskip("coremltools")
    package = deploy_model(small_cnn_spec, "coreml").path
    garbage, empty = tmp_path / "garbage.mlmodel", tmp_path / "empty.mlmodel"
    garbage.write_bytes(np.random.default_rng(4).bytes(4096))
    empty.write_bytes(b"")
    one_line_error(garbage, "not a readable CoreML model")
    one_line_error(empty, "holds no CoreML model")

    spec_file = next((package / "Data").rglob("model.mlmodel"))
    secret = tmp_path / "secret.mlmodel"
    shutil.copyfile(spec_file, secret)
    for i, where in enumerate(("../../../../secret.mlmodel", str(secret), "symlink out")):
        copy = tmp_path / "user" / f"{i}.mlpackage"
        shutil.copytree(package, copy)
        manifest = copy / "Manifest.json"
        item = spec_file.relative_to(package / "Data").as_posix()
        if where == "symlink out":  # a file below a manifest item (the weights folder), not the item itself
            weights = next((copy / "Data").rglob("weight.bin"))
            weights.unlink()
            weights.symlink_to(secret)
            one_line_error(copy, "is a symlink leaving the package")
        else:
            manifest.write_text(manifest.read_text().replace(f'"{item}"', json.dumps(where)))
            (copy / "Data" / item).unlink()
            one_line_error(copy, f"manifest item path {where!r} leaves the package")


# ---- torch.export .pt2 ---------------------------------------------------------------------------
def test_a_pt2_from_outside_the_conversion_cache_is_not_unpickled_unless_trusted(small_cnn_spec, tmp_path,
                                                                                 monkeypatch):
    """Loading a .pt2 runs torch.load(weights_only=False) on its weights: a file handed over is refused."""
    from deploybench.converters.pytorch import TRUST_ENV
    from deploybench.engines import create_deployer

    handed_over = tmp_path / "from_a_stranger.pt2"
    handed_over.write_bytes(deploy_model(small_cnn_spec, "torch").path.read_bytes())
    one_line_error(handed_over, "loading a .pt2 unpickles Python objects", f"set {TRUST_ENV}=1")
    monkeypatch.setenv(TRUST_ENV, "1")
    with create_deployer(handed_over) as engine:  # vouched for: it loads and runs
        assert list(engine.infer(small_cnn_spec.make_inputs())) == ["logits"]


def test_pt2_that_is_no_torch_export_archive_is_one_line_without_a_logged_traceback(small_cnn_spec, tmp_path,
                                                                                    capfd, monkeypatch):
    from deploybench.converters.pytorch import TRUST_ENV

    monkeypatch.setenv(TRUST_ENV, "1")  # past the trust check, to the reading of a damaged archive
    data = deploy_model(small_cnn_spec, "torch").path.read_bytes()
    each_refused(damaged(data, seed=3), tmp_path, ".pt2", "not a torch.export .pt2 file")
    other_zip = tmp_path / "other.pt2"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("notes.txt", "a zip, not an export")
    one_line_error(other_zip, "no archive_format entry")
    hollow = tmp_path / "hollow.pt2"  # looks like an export archive, holds nothing: torch itself logs a traceback
    with zipfile.ZipFile(hollow, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
    one_line_error(hollow, "not a torch.export .pt2 file", "version")
    assert "Traceback" not in capfd.readouterr().err
