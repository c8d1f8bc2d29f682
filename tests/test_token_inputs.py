"""Token models from the command line: named int64 inputs with value ranges, and a user's calibration data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deploybench.spec import DeployBenchError, TensorSpec, input_text, parse_input

BERT = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyBert(nn.Module):
        """Token ids and a 0/1 attention mask, as a BERT takes them; it refuses what a BERT would choke on."""

        def __init__(self, vocab=1000, width=16):
            super().__init__()
            self.vocab = vocab
            self.embed = nn.Embedding(vocab, width)
            self.head = nn.Linear(width, 2)

        def forward(self, input_ids, attention_mask):
            torch._assert(attention_mask.max() <= 1, "attention_mask must be 0/1")
            hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
            return self.head(hidden.mean(1))


    def build():
        torch.manual_seed(0)
        return TinyBert().eval()
''')
TOKEN_INPUTS = ["--input", "input_ids:1x16:int64:0..1000", "--input", "attention_mask:1x16:int64:mask"]


@pytest.mark.parametrize("text,spec", [
    ("input_ids:1x32:int64:0..1000", TensorSpec("input_ids", ("batch", 32), "int64", (0.0, 1000.0))),
    ("attention_mask:2x8:int64:mask", TensorSpec("attention_mask", ("batch", 8), "int64", (0.0, 2.0))),
    ("sr:1:int64:=16000", TensorSpec("sr", ("batch",), "int64", (16000.0, 16001.0))),
    ("image:1x3x8x8", TensorSpec("image", ("batch", 3, 8, 8), "float32", None)),
])
def test_an_input_is_parsed_and_travels_as_the_same_text(text, spec):
    assert parse_input(text) == spec
    assert parse_input(input_text(spec)) == spec


@pytest.mark.parametrize("text", ["input_ids", "input_ids:1x0:int64", "ids:1x4:complex", "ids:1x4:int64:9..3",
                                  "ids:1x4:int64:lots", ":1x4"])
def test_a_malformed_input_is_one_line(text):
    with pytest.raises(DeployBenchError) as error:
        parse_input(text)
    assert "\n" not in str(error.value) and repr(text) in str(error.value)


def test_model_from_module_keeps_token_ids_inside_their_range():
    import torch

    from deploybench.models import model_from_module

    net = torch.nn.EmbeddingBag(50, 4)
    spec = model_from_module(net, {"input": torch.zeros(1, 12, dtype=torch.int64)}, value_ranges={"input": (0, 50)})
    values = np.concatenate([spec.make_inputs(seed=s)["input"].ravel() for s in range(20)])
    assert values.dtype == np.int64 and values.min() >= 0 and values.max() == 49
    with pytest.raises(DeployBenchError, match=r"unknown input\(s\) \['tokens'\]"):
        model_from_module(net, {"input": torch.zeros(1, 12, dtype=torch.int64)}, value_ranges={"tokens": (0, 50)})


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "bert.py").write_text(BERT)
    return subprocess.run([sys.executable, "-m", "deploybench.cli", "run", "--models", "bert.py:build",
                           "--backends", "onnxruntime", "--no-memory", "--min-time", "0.05", "--no-progress", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_a_token_model_runs_from_the_command_line_with_a_users_calibration_data(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", input_ids=rng.integers(0, 1000, (32, 16)),
             attention_mask=np.ones((32, 16), np.int64))
    done = _run(tmp_path, *TOKEN_INPUTS, "--precisions", "fp32,int8", "--calibration-data", "calib.npz",
                "--output", "out.json")
    assert done.returncode == 0, done.stderr
    cells = {c["precision"]: c for c in json.loads((tmp_path / "out.json").read_text())["cells"]}
    assert cells["fp32"]["status"] == "ok" and cells["fp32"]["tolerance"]["passed"]
    assert cells["int8"]["status"] == "ok"
    assert cells["int8"]["extra"]["artifact"]["calibration"].startswith("real (calib.npz, 32 samples, sha256 ")
    assert "calibration used random" not in done.stdout


def test_float_noise_is_what_a_token_model_got_before_and_it_fails_saying_where(tmp_path):
    """The same model given only shapes: float inputs reach an embedding, and the cell says so."""
    done = _run(tmp_path, "--input-shape", "1x16", "--input-shape", "1x16")
    assert done.returncode == 2 and "does not accept the input(s) 1x16,1x16" in done.stderr


def test_calibration_data_that_do_not_fit_fail_the_int8_cell_and_a_missing_file_is_refused_first(tmp_path):
    np.savez(tmp_path / "wrong.npz", tokens=np.zeros((4, 16), np.int64))
    done = _run(tmp_path, *TOKEN_INPUTS, "--precisions", "fp32,int8", "--calibration-data", "wrong.npz")
    assert done.returncode == 1
    assert "holds arrays ['tokens']; model 'bert' takes inputs ['attention_mask', 'input_ids']" in done.stdout
    missing = _run(tmp_path, *TOKEN_INPUTS, "--calibration-data", "nope.npz")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.npz is not a file" in missing.stderr
    mixed = _run(tmp_path, "--input-shape", "1x16", "--input", "attention_mask:1x16:int64:mask")
    assert mixed.returncode == 2 and "mix bare shapes and NAME:SHAPE forms" in mixed.stderr


def test_other_calibration_data_make_another_int8_artifact_and_the_same_fp32_one(tmp_path):
    from deploybench.converters.cache import conversion_key
    from deploybench.converters.calibration import use_calibration_file
    from deploybench.resolve import get_model

    (tmp_path / "bert.py").write_text(BERT)
    spec = get_model(f"{tmp_path / 'bert.py'}:build", [parse_input(t) for t in TOKEN_INPUTS[1::2]])
    before = {p: conversion_key(spec, "onnx", p, {}) for p in ("fp32", "int8")}
    keys = []
    for seed in (1, 2):
        np.savez(tmp_path / "calib.npz", input_ids=np.random.default_rng(seed).integers(0, 1000, (8, 16)),
                 attention_mask=np.ones((8, 16), np.int64))
        spec.calibration_source = ""
        use_calibration_file(spec, tmp_path / "calib.npz")
        keys.append({p: conversion_key(spec, "onnx", p, {}) for p in ("fp32", "int8")})
    assert keys[0]["fp32"] == keys[1]["fp32"] == before["fp32"]
    assert len({before["int8"], keys[0]["int8"], keys[1]["int8"]}) == 3
