"""The CPU probe and the defaults it decides: both answers of the probe, whatever CPU runs the tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import deploybench.cpu
from deploybench.converters import cpu_defaults, deploy_model
from deploybench.cpu import cpu_model_and_flags, int8_saturates
from deploybench.resolve import get_model

AVX2_ONLY_EPYC = frozenset({"sse2", "avx", "avx2", "fma", "f16c"})
XEON_WITH_VNNI = AVX2_ONLY_EPYC | {"avx512f", "avx512_vnni", "avx512_bf16"}
ALDER_LAKE = AVX2_ONLY_EPYC | {"avx_vnni"}
ARM = frozenset({"fp", "asimd", "asimddp"})


@pytest.mark.parametrize(("flags", "saturates"), [(AVX2_ONLY_EPYC, True), (XEON_WITH_VNNI, False),
                                                  (ALDER_LAKE, False), (ARM, False), (frozenset(), False)])
def test_int8_saturates_only_on_x86_without_an_int8_dot_product(flags, saturates):
    assert int8_saturates(flags) is saturates


def test_only_onnx_int8_has_a_cpu_default():
    assert cpu_defaults("onnx", "int8", AVX2_ONLY_EPYC) == {"reduce_range": True}
    assert cpu_defaults("onnx", "int8", XEON_WITH_VNNI) == {"reduce_range": False}
    assert cpu_defaults("onnx", "fp32", AVX2_ONLY_EPYC) == {}
    assert cpu_defaults("openvino", "int8", AVX2_ONLY_EPYC) == {}  # NNCF's overflow fix handles it


def test_this_cpu_is_read():
    model, flags = cpu_model_and_flags()
    assert model
    assert isinstance(flags, frozenset)


def _largest_weight(path) -> int:
    graph = onnx.load(str(path)).graph
    quantized = [numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("weight_quantized")]
    assert quantized
    return max(int(np.abs(q.astype(np.int32)).max()) for q in quantized)


@pytest.mark.parametrize(("flags", "largest"), [(AVX2_ONLY_EPYC, 64), (XEON_WITH_VNNI, 127)])
def test_onnx_int8_weights_fit_the_cpu_they_are_built_for(flags, largest, monkeypatch, tmp_path):
    monkeypatch.setattr(deploybench.cpu, "cpu_model_and_flags", lambda: ("a CPU", flags))
    artifact = deploy_model(get_model("digits_cnn"), "onnx", output_dir=tmp_path, precision="int8",
                            calibration_size=16)
    assert artifact.metadata["reduce_range"] is (largest == 64)
    assert _largest_weight(artifact.path) == largest
