"""Properties every engine keeps whatever the input: a batch of n is n independent samples.

Each backend that keeps the model's dynamic batch axis (torch, onnxruntime, openvino) must give,
for every sample of a batch, what it gives for that sample alone. TFLite fixes the batch axis at
conversion (litert-torch cannot lower a symbolic batch), so a larger batch is refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploybench.converters import deploy_model, torch_artifact
from deploybench.engines import backend_availability, create_deployer
from deploybench.spec import DeployBenchError

FP32_ATOL = 1e-5
MAX_BATCH = 9
DYNAMIC_BATCH_BACKENDS = [("torch", "torch"), ("onnx", "onnxruntime"), ("openvino", "openvino"),
                          ("onnx", "openvino")]

# Fixtures are module-scoped engines: hypothesis re-running the test body with them is intended.
PROPERTY_SETTINGS = settings(max_examples=10, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])


def _engine(spec, fmt: str, backend: str):
    available, why = backend_availability(backend)
    if not available:
        pytest.skip(f"{backend} cannot run here: {why}")
    if fmt == "torch":
        return create_deployer(torch_artifact(spec), backend="torch", precision="fp32", threads=1,
                               module=spec.build())
    return create_deployer(deploy_model(spec, fmt), backend=backend, precision="fp32", threads=1)


@pytest.fixture(scope="module", params=DYNAMIC_BATCH_BACKENDS, ids=lambda p: f"{p[0]}-{p[1]}")
def dynamic_engine(request, small_cnn_spec):
    fmt, backend = request.param
    engine = _engine(small_cnn_spec, fmt, backend)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tflite_engine(small_cnn_spec):
    engine = _engine(small_cnn_spec, "tflite", "tflite")
    yield engine
    engine.close()


def test_engines_with_a_dynamic_batch_axis_declare_it(dynamic_engine):
    assert [t.shape[0] for t in dynamic_engine.inputs] == ["batch"]


@PROPERTY_SETTINGS
@given(batch=st.integers(min_value=1, max_value=MAX_BATCH), seed=st.integers(min_value=0, max_value=2**16))
def test_each_sample_of_a_batch_equals_its_batch_of_one(dynamic_engine, small_cnn_spec, batch, seed):
    inputs = small_cnn_spec.make_inputs(seed=seed, dims={"batch": batch})
    batched = dynamic_engine.infer(inputs)["logits"]
    assert batched.shape == (batch, 5)
    singles = np.concatenate([dynamic_engine.infer({"input": inputs["input"][i:i + 1]})["logits"]
                              for i in range(batch)])
    np.testing.assert_allclose(batched, singles, rtol=0, atol=FP32_ATOL)


@PROPERTY_SETTINGS
@given(seed=st.integers(min_value=0, max_value=2**16))
def test_the_same_input_gives_the_same_output_twice(dynamic_engine, small_cnn_spec, seed):
    inputs = small_cnn_spec.make_inputs(seed=seed, dims={"batch": 2})
    first = dynamic_engine.infer(inputs)["logits"]
    second = dynamic_engine.infer(inputs)["logits"]
    np.testing.assert_array_equal(first, second)  # engines must hand out copies, not reused buffers


def test_tflite_keeps_a_fixed_batch_of_one(tflite_engine):
    assert tflite_engine.inputs[0].shape == (1, 3, 16, 16)
    assert tflite_engine.artifact.metadata["fixed_axes"] == {"batch": 1}


@PROPERTY_SETTINGS
@given(batch=st.integers(min_value=2, max_value=MAX_BATCH))
def test_tflite_refuses_a_larger_batch_in_one_line(tflite_engine, small_cnn_spec, batch):
    inputs = small_cnn_spec.make_inputs(seed=batch, dims={"batch": batch})
    with pytest.raises(DeployBenchError) as caught:
        tflite_engine.infer(inputs)
    message = str(caught.value)
    assert "\n" not in message
    assert f"[{batch}, 3, 16, 16]" in message and "[1, 3, 16, 16]" in message


@PROPERTY_SETTINGS
@given(seed=st.integers(min_value=0, max_value=2**16))
def test_tflite_batch_of_one_matches_torch(tflite_engine, small_cnn_spec, seed):
    inputs = small_cnn_spec.make_inputs(seed=seed)
    import torch

    with torch.inference_mode():
        want = small_cnn_spec.build()(torch.from_numpy(inputs["input"])).numpy()
    np.testing.assert_allclose(tflite_engine.infer(inputs)["logits"], want, rtol=0, atol=FP32_ATOL)
