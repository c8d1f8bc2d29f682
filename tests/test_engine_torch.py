"""The torch format (torch.export .pt2) and the torch backend, on small real models made here."""

from __future__ import annotations

import shutil
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_small_cnn
from deploybench.converters import artifact_from_path, deploy_model
from deploybench.converters.pytorch import read_artifact
from deploybench.engines import create_deployer
from deploybench.engines.pytorch import TorchEngine
from deploybench.models import model_from_module
from deploybench.spec import DeployBenchError, ModelSpec, TensorSpec

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def small_cnn_pt2(small_cnn_spec):
    return deploy_model(small_cnn_spec, "torch")


def _reference(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return spec.build()(*[torch.from_numpy(inputs[t.name]) for t in spec.inputs]).numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_in_memory_engine_gives_the_module_outputs(small_cnn_spec):
    inputs = small_cnn_spec.make_inputs(seed=1, dims={"batch": 3})
    with create_deployer(small_cnn_spec, backend="torch") as engine:
        assert isinstance(engine, TorchEngine) and engine.runtime_notes["loaded"] == "eager nn.Module"
        outputs = engine.infer(inputs)
    assert list(outputs) == ["logits"]
    np.testing.assert_array_equal(outputs["logits"], _reference(small_cnn_spec, inputs))


def test_pt2_artifact_keeps_a_dynamic_batch_and_the_module_outputs(small_cnn_spec, small_cnn_pt2):
    assert small_cnn_pt2.path.name == "model.pt2" and small_cnn_pt2.metadata["dynamic_shapes"] is True
    assert small_cnn_pt2.inputs[0].shape == ("batch", 3, 16, 16)
    assert small_cnn_pt2.outputs == (TensorSpec("logits", ("batch", 5)),)
    with create_deployer(small_cnn_pt2) as engine:
        assert engine.backend == "torch" and engine.runtime_notes["loaded"] == "torch.export ExportedProgram"
        for batch in (1, 4):
            inputs = small_cnn_spec.make_inputs(seed=batch, dims={"batch": batch})
            got = engine.infer(inputs)["logits"]
            assert got.shape == (batch, 5) and got.dtype == np.float32
            np.testing.assert_allclose(got, _reference(small_cnn_spec, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.precision
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs_close_to_fp32(small_cnn_spec, small_cnn_pt2, precision):
    inputs = small_cnn_spec.make_inputs(seed=2, dims={"batch": 8})
    with create_deployer(small_cnn_pt2, precision=precision) as engine:
        got = engine.infer(inputs)["logits"]
        assert engine.runtime_notes["autocast"] in ("bfloat16", "float16")
    expected = _reference(small_cnn_spec, inputs)
    assert got.dtype == np.float32
    assert _cosine(got, expected) > 0.99
    assert not np.array_equal(got, expected), f"{precision} should not be bit-identical to fp32"


def test_pt2_loads_in_a_fresh_process_without_the_model_source(small_cnn_spec, small_cnn_pt2, tmp_path):
    copied = tmp_path / "copied.pt2"  # away from the cache sidecar: the specs travel inside the .pt2
    shutil.copy(small_cnn_pt2.path, copied)
    inputs = small_cnn_spec.make_inputs(seed=5, dims={"batch": 2})
    np.save(tmp_path / "input.npy", inputs["input"])
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from deploybench.engines import create_deployer
        with create_deployer({str(copied)!r}) as engine:
            out = engine.infer({{"input": np.load({str(tmp_path / "input.npy")!r})}})
        np.save({str(tmp_path / "output.npy")!r}, out["logits"])
        print(",".join(out), "conftest" in sys.modules)
    """)
    from deploybench.converters.pytorch import TRUST_ENV

    # the copy left the conversion cache: loading it unpickles, so the user vouches for it
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, TRUST_ENV: "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["logits", "False"]
    np.testing.assert_allclose(np.load(tmp_path / "output.npy"), _reference(small_cnn_spec, inputs), atol=1e-5)


def test_threads_are_applied_while_loaded_and_restored_on_close(small_cnn_spec):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    engine = create_deployer(small_cnn_spec, backend="torch", threads=wanted)
    try:
        assert torch.get_num_threads() == wanted
        engine.infer(small_cnn_spec.make_inputs())
    finally:
        engine.close()
    assert torch.get_num_threads() == before


class TokenModel(nn.Module):
    """int64 token ids and a float mask in; a dict of two outputs out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens, mask):
        hidden = self.embed(tokens) * mask.unsqueeze(-1)
        return {"scores": self.head(hidden), "pooled": hidden.mean(dim=1)}


def test_int64_tokens_pass_through_and_dict_outputs_are_named():
    tokens = np.array([[1, 7, 49, 3], [0, 2, 2, 8]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.float32)
    model = TokenModel().eval()
    spec = model_from_module(model, {"tokens": tokens, "mask": mask}, name="token_model")
    assert spec.output_names == ("scores", "pooled")
    with torch.inference_mode():
        expected = model(torch.from_numpy(tokens), torch.from_numpy(mask))
    with create_deployer(spec, backend="torch") as engine:
        outputs = engine.infer({"tokens": tokens, "mask": mask})
    assert list(outputs) == ["scores", "pooled"]
    np.testing.assert_array_equal(outputs["scores"], expected["scores"].numpy())
    np.testing.assert_array_equal(outputs["pooled"], expected["pooled"].numpy())
    with pytest.raises(DeployBenchError, match="'tokens'.*float32.*int64"):
        create_deployer(spec, backend="torch").infer({"tokens": tokens.astype(np.float32), "mask": mask})


def test_tuple_outputs_and_a_batch_hard_coded_in_the_graph_fall_back_to_static_shapes(tmp_path):
    class FixedBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.reshape(1, 27), y.amax(dim=(2, 3))  # 27 = 3*3*3 only holds for batch 1

    model = FixedBatch().eval()
    x = torch.randn(1, 2, 5, 5)
    spec = model_from_module(model, x, name="fixed_batch", output_names=["flat", "peak"])
    artifact = deploy_model(spec, "torch", tmp_path)
    assert artifact.metadata["dynamic_shapes"] is False and artifact.metadata["dynamic_shapes_error"]
    assert artifact.inputs[0].shape == (1, 2, 5, 5)
    assert [t.name for t in artifact.outputs] == ["flat", "peak"]
    assert [t.shape for t in artifact.outputs] == [(1, 27), (1, 3)]
    with create_deployer(artifact) as engine:
        outputs = engine.infer(x.numpy())
    with torch.inference_mode():
        flat, peak = model(x)
    np.testing.assert_allclose(outputs["flat"], flat.numpy(), atol=1e-6)
    np.testing.assert_allclose(outputs["peak"], peak.numpy(), atol=1e-6)


def test_a_bare_pt2_from_torch_export_is_read_from_its_graph(tmp_path, monkeypatch):
    from deploybench.converters.pytorch import TRUST_ENV

    monkeypatch.setenv(TRUST_ENV, "1")  # the user's own export, vouched for
    net = make_small_cnn()
    program = torch.export.export(net, (torch.randn(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("n", min=1)},))
    path = tmp_path / "mine.pt2"
    torch.export.save(program, path)
    artifact = artifact_from_path(path)
    assert artifact == read_artifact(path)
    assert artifact.format == "torch" and artifact.metadata["dynamic_shapes"] is True
    assert [(t.name, t.shape, t.dtype) for t in artifact.inputs] == [("input", ("batch", 3, 16, 16), "float32")]
    assert [(t.name, t.shape) for t in artifact.outputs] == [("output", ("batch", 5))]


def test_torch_format_errors_name_the_fix(small_cnn_spec, tmp_path):
    with pytest.raises(DeployBenchError, match="no 'int8' mode"):
        deploy_model(small_cnn_spec, "torch", tmp_path, precision="int8")
    not_a_program = tmp_path / "junk.pt2"
    not_a_program.write_bytes(b"not a zip")
    with pytest.raises(DeployBenchError, match="junk.pt2 is not a torch.export"):
        read_artifact(not_a_program)  # tmp_path is a conversion cache of this test: trusted, then read
    from deploybench.converters import torch_artifact

    import dataclasses

    no_module = dataclasses.replace(torch_artifact(small_cnn_spec), module=None)  # a torch artifact with no file
    with pytest.raises(DeployBenchError, match="pass module="):
        TorchEngine(no_module).load()


class PositionalTokens(nn.Module):
    """A positional table of 8 rows caps the sequence length: a named Dim fails, Dim.AUTO finds the bound."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 4)
        self.positions = nn.Parameter(torch.randn(8, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, tokens):
        hidden = self.embed(tokens) + self.positions[: tokens.shape[1]]
        return self.head(hidden.mean(dim=1))


def test_a_bounded_sequence_axis_stays_dynamic_with_its_bound(tmp_path):
    model = PositionalTokens().eval()
    spec = ModelSpec("positional", (TensorSpec("tokens", ("batch", "seq"), "int64", (0, 20)),), factory=lambda: model,
                     output_names=("logits",), dims={"batch": 1, "seq": 6})
    artifact = deploy_model(spec, "torch", tmp_path)
    assert artifact.metadata["dynamic_shapes"] is True and artifact.metadata["dynamic_style"] == "auto"
    assert artifact.metadata["dynamic_ranges"] == {"batch": [1, None], "seq": [1, 8]}
    assert artifact.inputs[0].shape == ("batch", "seq")
    with create_deployer(artifact) as engine:
        for dims in ({"batch": 1, "seq": 1}, {"batch": 3, "seq": 8}):
            tokens = spec.make_inputs(seed=1, dims=dims)["tokens"]
            with torch.inference_mode():
                expected = model(torch.from_numpy(tokens)).numpy()
            np.testing.assert_allclose(engine.infer(tokens)["logits"], expected, atol=1e-6)
