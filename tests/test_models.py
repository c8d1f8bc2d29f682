"""The built-in zoo and the ways a user's own model enters deploybench."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from deploybench.models import MODELS, model_from_module
from deploybench.resolve import get_model, resolve_ref
from deploybench.models._data import cached_weights, real_images, weights_path
from deploybench.spec import DeployBenchError, ModelSpec

ZOO = ("digits_cnn", "resnet18", "mobilenet_v3", "tiny_transformer")
REPO = Path(__file__).resolve().parents[1]


def _forward(module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(*[torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()]).numpy()


@pytest.fixture(scope="module")
def built():
    """Zoo specs built once per module (first build trains / estimates and caches the weights)."""
    cache: dict[str, ModelSpec] = {}

    def get(name: str) -> ModelSpec:
        if name not in cache:
            spec = get_model(name)
            spec.build()
            cache[name] = spec
        return cache[name]

    return get


# --- specs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_zoo_spec_is_cheap_and_complete(name):
    spec = get_model(name)
    assert name in MODELS
    assert spec._module is None  # listing cells must not build (or train) anything
    assert spec.ref == name and spec.name == name
    assert spec.output_names == ("logits",)
    assert spec.task == "classification"
    assert spec.inputs[0].shape[0] == "batch"
    assert spec.calibration_data is not None
    assert spec.description


def test_zoo_specs_do_not_import_torch():
    code = ("import sys; from deploybench.resolve import get_model; "
            f"specs = [get_model(n) for n in {ZOO!r}]; "
            "print(sorted(m for m in ('torch', 'sklearn', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ZOO)
def test_make_inputs_is_seeded(name):
    spec = get_model(name)
    first, again, other = spec.make_inputs(seed=3), spec.make_inputs(seed=3), spec.make_inputs(seed=4)
    (key,) = first
    np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first[key], other[key])
    assert first[key].shape == spec.inputs[0].concrete_shape(spec.dims)


def test_zoo_input_shapes_and_dtypes():
    assert get_model("digits_cnn").make_inputs()["image"].shape == (1, 1, 8, 8)
    assert get_model("resnet18").make_inputs()["image"].shape == (1, 3, 224, 224)
    assert get_model("mobilenet_v3").make_inputs()["image"].dtype == np.float32
    tokens = get_model("tiny_transformer").make_inputs(dims={"batch": 2})["tokens"]
    assert tokens.shape == (2, 32) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < 16


def test_zoo_model_refuses_input_shape():
    with pytest.raises(DeployBenchError, match="fixed inputs"):
        get_model("resnet18", [(1, 3, 64, 64)])


# --- data helpers ------------------------------------------------------------------------------------

def test_real_images_are_seeded_normalised_photo_crops():
    images = real_images(6, size=32, seed=7)
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_array_equal(images, real_images(6, size=32, seed=7))
    assert not np.array_equal(images, real_images(6, size=32, seed=8))
    # ImageNet-normalised pixels lie in [(0 - mean) / std, (1 - mean) / std] = [-2.12, 2.64]
    assert images.min() >= -2.2 and images.max() <= 2.7
    assert all(images[i].std() > 0.1 for i in range(6))  # real content, not a flat fill
    assert not np.allclose(images[0], images[1])


def test_cached_weights_builds_once_and_writes_atomically(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("DEPLOYBENCH_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"weight": torch.arange(4.0)}

    recipe = {"model": "toy", "seed": 1}
    first = cached_weights("toy", recipe, build)
    second = cached_weights("toy", recipe, build)
    assert len(calls) == 1
    assert torch.equal(first["weight"], second["weight"])
    path = weights_path("toy", recipe)
    assert path.parent == tmp_path / "weights"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert weights_path("toy", {"model": "toy", "seed": 2}) != path  # another recipe, another file

    path.write_bytes(b"not a checkpoint")
    third = cached_weights("toy", recipe, build)
    assert len(calls) == 2 and torch.equal(third["weight"], first["weight"])


# --- digits_cnn ----------------------------------------------------------------------------------

def test_digits_cnn_held_out_top1(built):
    spec = built("digits_cnn")
    inputs, labels = spec.eval_data()
    assert inputs["image"].shape == (540, 1, 8, 8) and inputs["image"].dtype == np.float32
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))
    logits = _forward(spec.build(), inputs)
    assert logits.shape == (540, 10)
    top1 = float((logits.argmax(1) == labels).mean())
    assert top1 >= 0.95, top1
    from deploybench.models import digits

    assert weights_path("digits_cnn", digits.TRAINING_RECIPE).exists()


def test_digits_cnn_rebuild_loads_the_same_weights(built):
    import torch

    first = built("digits_cnn").build().state_dict()
    again = get_model("digits_cnn").build().state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_digits_calibration_data_comes_from_training_split():
    from deploybench.models import digits

    spec = get_model("digits_cnn")
    samples = spec.calibration_data(8)
    assert len(samples) == 8 and all(s["image"].shape == (1, 1, 8, 8) for s in samples)
    np.testing.assert_array_equal(samples[3]["image"], spec.calibration_data(8)[3]["image"])
    train_x, *_ = digits._split()
    train_rows = {row.tobytes() for row in train_x}
    assert all(s["image"][0].tobytes() in train_rows for s in samples)
    assert len(spec.calibration_data(10_000)) == len(train_x)


# --- resnet18 / mobilenet_v3 ---------------------------------------------------------------------

def test_batchnorm_statistics_come_from_real_images():
    import torch
    from torch import nn

    from deploybench.models._data import estimate_batchnorm_statistics

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=0.01), nn.ReLU(),
                        nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4))
    images = real_images(12, size=24, seed=0)
    estimate_batchnorm_statistics(net, images, batch_size=4)  # equal batches: the average of batch means is the mean
    assert not net.training and net[1].momentum == 0.01  # eval mode and momentum restored
    with torch.no_grad():
        features = net[0](torch.from_numpy(images))
    # momentum=None makes the running statistics a cumulative average over all the images
    np.testing.assert_allclose(net[1].running_mean.numpy(), features.mean((0, 2, 3)).numpy(), atol=1e-4)
    assert not np.allclose(net[1].running_var.numpy(), 1.0)


@pytest.mark.parametrize("name,parameters", [("resnet18", 11_689_512), ("mobilenet_v3", 2_542_856)])
def test_image_architectures_match_the_published_ones(name, parameters):
    import torch

    from deploybench.models.mobilenet import mobilenet_v3_network
    from deploybench.models.resnet import resnet18_network

    network = {"resnet18": resnet18_network, "mobilenet_v3": mobilenet_v3_network}[name]().eval()
    assert sum(p.numel() for p in network.parameters()) == parameters  # torchvision's counts
    with torch.no_grad():
        assert network(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3"])
def test_image_models_have_real_batchnorm_statistics(built, name):
    from torch import nn

    module = built(name).build()
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) > 10
    for norm in norms:
        assert not np.allclose(norm.running_var.numpy(), 1.0)
        assert norm.momentum is not None  # restored after the cumulative average
    # a BatchNorm fed by a zero-mean projection has zero running mean; the others do not
    assert sum(not np.allclose(norm.running_mean.numpy(), 0.0) for norm in norms) > len(norms) // 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3"])
def test_image_models_classify_real_crops(built, name):
    spec = built(name)
    samples = spec.calibration_data(4)
    assert len(samples) == 4 and samples[0]["image"].shape == (1, 3, 224, 224)
    logits = _forward(spec.build(), {"image": np.concatenate([s["image"] for s in samples])})
    assert logits.shape == (4, 1000)
    assert 1.0 < logits.std() < 4.0  # scaled head: logits spread like a trained classifier's
    assert len(set(logits.argmax(1).tolist())) > 1  # different photos, different classes
    assert spec.eval_data is None


# --- tiny_transformer ----------------------------------------------------------------------------

def test_tiny_transformer_accepts_two_sequence_lengths():
    import torch

    from deploybench.models.transformer import transformer_network

    torch.manual_seed(0)
    network = transformer_network().eval()
    short, long = (torch.from_numpy(get_model("tiny_transformer").make_inputs(seed=0, dims={"batch": 2, "seq": n})
                                    ["tokens"]) for n in (12, 48))
    with torch.no_grad():
        short_logits, long_logits = network(short), network(long)
    assert short_logits.shape == long_logits.shape == (2, 16)
    assert np.isfinite(short_logits.numpy()).all() and np.isfinite(long_logits.numpy()).all()


@pytest.mark.slow
def test_tiny_transformer_two_sequence_lengths_and_task(built):
    from deploybench.models.transformer import majority_token_sequences

    spec = built("tiny_transformer")
    module = spec.build()
    for length in (12, 48):
        tokens, labels = majority_token_sequences(64, length, seed=99)
        logits = _forward(module, {"tokens": tokens})
        assert logits.shape == (64, 16)
        assert (logits.argmax(1) == labels).mean() >= 0.9, length
    inputs, labels = spec.eval_data()
    assert inputs["tokens"].shape == (512, 32)
    assert (_forward(module, inputs).argmax(1) == labels).mean() >= 0.95
    calibration = spec.calibration_data(3)
    assert len(calibration) == 3 and calibration[0]["tokens"].shape == (1, 32)
    assert calibration[0]["tokens"].dtype == np.int64


def test_majority_token_labels_are_unambiguous():
    from deploybench.models.transformer import VOCAB, majority_token_sequences

    tokens, labels = majority_token_sequences(200, 20, seed=5)
    counts = np.stack([np.bincount(row, minlength=VOCAB) for row in tokens])
    top_two = np.sort(counts, axis=1)[:, -2:]
    assert (top_two[:, 1] > top_two[:, 0]).all()
    np.testing.assert_array_equal(labels, counts.argmax(1))


# --- ONNX export (torch.onnx.export with dynamo=True) ------------------------------------------------

def _export_and_compare(spec: ModelSpec, tmp_path: Path, dims: dict[str, int]) -> float:
    """Export through the dynamo exporter with the spec's dynamic axes, run in onnxruntime, return max |error|."""
    import onnxruntime
    import torch

    module = spec.build()
    example = spec.make_inputs(seed=0)
    # positional, because forward()'s argument names (nn.Sequential: "input") need not be the spec's
    dynamic = tuple({axis: torch.export.Dim.AUTO for axis in t.dynamic_axes} for t in spec.inputs)
    path = tmp_path / f"{spec.name}.onnx"
    torch.onnx.export(module, tuple(torch.from_numpy(v) for v in example.values()), str(path), dynamo=True,
                      input_names=list(spec.input_names), output_names=list(spec.output_names),
                      dynamic_shapes=dynamic, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = spec.make_inputs(seed=1, dims=dims)  # another size than the example: the axes are dynamic
    (got,) = session.run(None, inputs)
    want = _forward(module, inputs)
    assert got.shape == want.shape
    return float(np.abs(got - want).max())


def test_digits_cnn_exports_to_onnx(built, tmp_path):
    assert _export_and_compare(built("digits_cnn"), tmp_path, {"batch": 3}) < 1e-4


@pytest.mark.slow
def test_tiny_transformer_exports_to_onnx(built, tmp_path):
    assert _export_and_compare(built("tiny_transformer"), tmp_path, {"batch": 2, "seq": 20}) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3"])
def test_image_models_export_to_onnx(built, tmp_path, name):
    assert _export_and_compare(built(name), tmp_path, {"batch": 2}) < 1e-3


@pytest.mark.slow
def test_tiny_transformer_converts_to_openvino(built):
    import openvino
    import torch

    spec = built("tiny_transformer")
    module = spec.build()
    example = torch.from_numpy(spec.make_inputs(seed=0)["tokens"])
    ov_model = openvino.convert_model(module, example_input=example,
                                      input=[("tokens", openvino.PartialShape([-1, -1]), openvino.Type.i64)])
    compiled = openvino.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    inputs = spec.make_inputs(seed=2, dims={"batch": 3, "seq": 40})
    got = compiled(inputs["tokens"])[0]
    np.testing.assert_allclose(got, _forward(module, inputs), atol=1e-4)


# --- a user's own model ------------------------------------------------------------------------------

USER_FILE = '''
import torch
from torch import nn


class Upsampler(nn.Module):
    """GroupNorm and PixelShuffle: layers the zoo does not have."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.norm = nn.GroupNorm(3, 12)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(torch.relu(self.norm(self.conv(x))))


def make_net():
    torch.manual_seed(0)
    return Upsampler()


def make_spec():
    from deploybench.models import model_from_module
    return model_from_module(make_net(), torch.zeros(1, 3, 40, 56), name="upsampler", output_names=["upsampled"])


def broken():
    raise RuntimeError("weights missing")
'''


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "user_model.py"
    path.write_text(textwrap.dedent(USER_FILE))
    return path


def test_user_file_with_unusual_layers_and_input_size(user_file):
    spec = get_model(f"{user_file}:make_net", [(1, 3, 40, 56)])
    assert spec.inputs[0].shape == ("batch", 3, 40, 56) and spec.input_names == ("input",)
    assert spec.output_names == ("output",)
    assert spec.ref == f"{user_file}:make_net@1x3x40x56"
    inputs = spec.make_inputs(seed=0)
    out = _forward(spec.build(), inputs)
    assert out.shape == (1, 3, 80, 112)  # PixelShuffle(2): 12 channels -> 3, twice the height and width

    again = resolve_ref(spec.ref)  # what a fresh process does to rebuild the same model
    assert again.inputs == spec.inputs
    np.testing.assert_array_equal(_forward(again.build(), inputs), out)


def test_user_factory_returning_a_model_spec(user_file):
    spec = get_model(f"{user_file}:make_spec")
    assert spec.name == "upsampler" and spec.output_names == ("upsampled",)
    assert spec.ref == f"{user_file}:make_spec"
    assert resolve_ref(spec.ref).inputs == spec.inputs


def test_user_file_errors_are_one_line(user_file, tmp_path):
    cases = [
        (f"{tmp_path / 'missing.py'}:make_net", [(1, 3, 40, 56)], "does not exist"),
        (f"{user_file}:no_such_factory", [(1, 3, 40, 56)], "no callable 'no_such_factory'"),
        (f"{user_file}:make_net", None, "--input-shape"),
        (f"{user_file}:make_net", [(1, 4, 40, 56)], r"does not accept the input\(s\) 1x4x40x56"),
        (f"{user_file}:broken", [(1, 3, 40, 56)], "weights missing"),
    ]
    for ref, shapes, message in cases:
        with pytest.raises(DeployBenchError, match=message) as info:
            get_model(ref, shapes)
        assert "\n" not in str(info.value), str(info.value)
    with pytest.raises(DeployBenchError, match="unknown model"):
        get_model("no_such_model")
    with pytest.raises(DeployBenchError, match="bad input shape"):
        resolve_ref(f"{user_file}:make_net@1x3xfortyx56")


def test_model_from_module_names_inputs_and_outputs():
    import torch
    from torch import nn

    class TwoInTwoOut(nn.Module):
        def forward(self, a, b):
            return a + b, a * b

    by_name = model_from_module(TwoInTwoOut(), {"left": np.ones((2, 4), np.float32),
                                                "right": torch.ones(2, 4)})
    assert by_name.input_names == ("left", "right") and by_name.output_names == ("output_0", "output_1")
    assert by_name.dims == {"batch": 2} and by_name.inputs[0].shape == ("batch", 4)
    fixed = model_from_module(nn.Linear(4, 3), torch.ones(1, 4), dynamic_batch=False, output_names=["y"])
    assert fixed.inputs[0].shape == (1, 4) and fixed.output_names == ("y",)
    assert fixed.build() is fixed._module
