"""deploybench.tasks: the task metric through any infer callable, and Classifications from raw images."""

from __future__ import annotations

import numpy as np
import pytest

from deploybench.spec import DeployBenchError, ModelSpec, TensorSpec
from deploybench.tasks import evaluate, predict, predict_timed
from deploybench.tasks.classification import Classifications, softmax


def linear_classifier_spec(labels: np.ndarray, inputs: np.ndarray, task: str = "classification") -> ModelSpec:
    """A 'model' whose logits are its 4-feature input: the predicted class is the argmax of the input."""
    import torch

    return ModelSpec(name="identity_logits", inputs=(TensorSpec("x", ("batch", 4)),), factory=torch.nn.Identity,
                     output_names=("logits",), task=task, eval_data=lambda: ({"x": inputs}, labels))


def argmax_infer(calls: list):
    def infer(feed):
        calls.append(feed["x"].shape)
        return {"logits": feed["x"] * 2.0}
    return infer


def test_classification_accuracy_is_exact_and_runs_one_sample_per_call():
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((40, 4)).astype(np.float32)
    labels = inputs.argmax(axis=1)
    labels[:10] = (labels[:10] + 1) % 4  # 10 of 40 labels disagree with the prediction
    calls: list = []
    result = evaluate(argmax_infer(calls), linear_classifier_spec(labels, inputs))
    assert result == {"metric": "top1_accuracy", "value": 0.75, "n": 40}
    assert calls == [(1, 4)] * 40


def test_evaluate_limit_and_errors():
    inputs = np.eye(4, dtype=np.float32)
    spec = linear_classifier_spec(np.array([0, 1, 2, 0]), inputs)
    assert evaluate(argmax_infer([]), spec, limit=3)["value"] == 1.0
    assert evaluate(argmax_infer([]), spec)["value"] == 0.75
    with pytest.raises(DeployBenchError, match="task 'generic'"):
        evaluate(argmax_infer([]), linear_classifier_spec(np.zeros(4), inputs, task="generic"))
    spec.eval_data = None
    with pytest.raises(DeployBenchError, match="eval_data"):
        evaluate(argmax_infer([]), spec)


def test_classifications_from_logits_and_round_trip():
    logits = np.array([0.5, 3.0, -1.0, 2.0])
    top = Classifications.from_logits(logits, top_k=3, class_names=["a", "b", "c", "d"])
    assert top.class_ids.tolist() == [1, 3, 0]
    assert top.class_names == ("b", "d", "a")
    np.testing.assert_allclose(top.probabilities, softmax(logits)[[1, 3, 0]], rtol=1e-6)
    assert top.top1 == 1 and len(top) == 3
    again = Classifications.from_dict(top.to_dict())
    assert again.class_ids.tolist() == top.class_ids.tolist()
    np.testing.assert_array_equal(again.probabilities, top.probabilities)
    with pytest.raises(DeployBenchError, match="one probability per id"):
        Classifications([1, 2], [0.5])


def test_predict_classifications_on_torch_engine_matches_infer(small_cnn_spec):
    from deploybench.engines import create_deployer

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    with create_deployer(small_cnn_spec, backend="torch") as engine:
        results, stages = predict_timed(engine, images, top_k=2)
        single = predict(engine, images[0])
        logits = engine.infer(images[:1].transpose(0, 3, 1, 2).astype(np.float32) / 255)["logits"][0]
    assert isinstance(single, Classifications) and len(results) == 3
    assert single.class_ids[0] == int(np.argmax(logits))
    np.testing.assert_allclose(single.probabilities[0], softmax(logits.astype(np.float64)).max(), rtol=1e-5)
    assert all(len(r) == 2 and r.probabilities[0] >= r.probabilities[1] for r in results)
    assert stages["total"] >= stages["inference"] > 0
    assert set(results[0].timing_ms) == {"preprocess", "inference", "postprocess", "total"}
