"""The shared dataclasses: shapes, seeded inputs, and JSON round trips of what a run stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploybench.spec import (Accuracy, Artifact, Cell, DeployBenchError, LatencyStats, Result, TensorSpec,
                              check_choice, parse_csv, parse_shape)


@given(st.lists(st.integers(1, 4096), min_size=1, max_size=6))
def test_parse_shape_round_trips_any_positive_shape(dims):
    assert parse_shape("x".join(map(str, dims))) == tuple(dims)


@pytest.mark.parametrize("text", ["", "1x", "1x3xax4", "0x3", "-1x3", "1,3,4"])
def test_parse_shape_rejects_malformed_text_in_one_line(text):
    with pytest.raises(DeployBenchError) as info:
        parse_shape(text)
    assert "\n" not in str(info.value) and "e.g. 1x3x64x64" in str(info.value)


def test_tensor_spec_dynamic_axes_and_acceptance():
    spec = TensorSpec("tokens", ("batch", "seq"), "int64", (0, 50))
    assert spec.dynamic_axes == {0: "batch", 1: "seq"}
    assert spec.concrete_shape({"batch": 2, "seq": 7}) == (2, 7)
    assert spec.accepts((4, 9)) and not spec.accepts((4,))
    image = TensorSpec("image", ("batch", 3, 8, 8))
    assert image.accepts((5, 3, 8, 8)) and not image.accepts((1, 1, 8, 8))


def test_seeded_inputs_are_identical_for_the_same_seed_and_bounded():
    spec = TensorSpec("tokens", ("batch", "seq"), "int64", (0, 50))
    a = spec.random(np.random.default_rng(7), {"batch": 2, "seq": 16})
    b = spec.random(np.random.default_rng(7), {"batch": 2, "seq": 16})
    c = spec.random(np.random.default_rng(8), {"batch": 2, "seq": 16})
    assert a.dtype == np.int64 and a.shape == (2, 16)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 50


def test_unknown_dtype_and_choice_are_named():
    with pytest.raises(DeployBenchError, match="float33"):
        TensorSpec("x", (1,), "float33")
    with pytest.raises(DeployBenchError, match="unknown precision 'int4'; choose from: fp32"):
        check_choice("precision", "int4", ("fp32", "int8"))
    assert parse_csv(" a, b,,c ") == ["a", "b", "c"]


def test_result_json_round_trip_keeps_every_figure_and_writes_no_nan():
    stats = LatencyStats(n=3, mean=2.0, median=2.0, p90=2.8, p95=2.9, p99=2.98, min=1.0, max=3.0, stdev=1.0,
                         cv=0.5, iqr=1.0)
    result = Result(Cell("m", "onnx", "onnxruntime", "fp32"), latency_ms=stats, throughput_ips=500.0,
                    accuracy=Accuracy(max_abs_error=1e-6, cosine=float("nan"), reference="torch fp32"),
                    samples_ms=[1.0, 2.0, 3.0], peak_rss_mb=120.5)
    text = json.dumps(result.to_dict())
    assert "NaN" not in text
    back = Result.from_dict(json.loads(text))
    assert back.cell.id == "m-onnx-onnxruntime-fp32"
    assert back.latency_ms == stats and back.samples_ms == [1.0, 2.0, 3.0]
    assert back.accuracy.cosine is None and back.accuracy.reference == "torch fp32"


def test_artifact_round_trip_and_size(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x" * 1234)
    artifact = Artifact("onnx", path, "int8", inputs=(TensorSpec("input", ("batch", 3)),),
                        outputs=(TensorSpec("logits", ("batch", 5)),), metadata={"opset": 18})
    assert artifact.size_bytes == 1234
    back = Artifact.from_dict(json.loads(json.dumps(artifact.to_dict())))
    assert back.inputs == artifact.inputs and back.metadata == {"opset": 18} and back.precision == "int8"
