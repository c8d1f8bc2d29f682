"""Fusion, pruning and preparation on small real models made here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_small_cnn
from deploybench.converters.fuse import fuse_model_for_deployment
from deploybench.converters.prepare import (optimize_model_for_deployment, prepare_model_for_deployment)
from deploybench.converters.prune import prune_model
from deploybench.engines import create_deployer
from deploybench.spec import DeployBenchError


def _warm_batchnorms(net: nn.Module, shape, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, then eval."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(*shape) * 2 + 0.3)
    return net.eval()


class BasicBlock(nn.Module):
    """ResNet's block: conv->bn->relu->conv->bn, plus a residual addition (not a Sequential)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()  # applied twice, as torchvision does: a stateless module may be shared

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block = BasicBlock(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block(x)
        return self.head(x.mean(dim=(2, 3)))


def _batchnorm_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _run(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return module(x).numpy()


# ---- fusion -------------------------------------------------------------------------------------

def test_fusing_a_conv_net_removes_every_batchnorm_and_keeps_outputs():
    net = make_small_cnn()
    x = torch.randn(2, 3, 16, 16)
    result = fuse_model_for_deployment(net, x)
    assert result.method == "fx"
    assert result.fused == [("0", "1"), ("3", "4")]
    assert _batchnorm_count(result.module) == 0 and result.batchnorms_left == 0
    assert _batchnorm_count(net) == 2, "the original model must be left untouched"
    assert result.max_abs_diff < 1e-4
    np.testing.assert_allclose(_run(result.module, x), _run(net, x), atol=1e-4)


def test_fusing_finds_pairs_inside_a_residual_block():
    net = _warm_batchnorms(TinyResNet(), (4, 3, 12, 12))
    x = torch.randn(2, 3, 12, 12)
    result = fuse_model_for_deployment(net, x)
    assert sorted(result.fused) == [("block.conv1", "block.bn1"), ("block.conv2", "block.bn2"), ("stem", "bn")]
    assert _batchnorm_count(result.module) == 0
    assert isinstance(result.module, TinyResNet), "fusion keeps the model's own class"
    assert result.module.block.conv2.bias is not None  # the bn shift moved into a new bias
    np.testing.assert_allclose(_run(result.module, x), _run(net, x), atol=1e-4)


def test_conv_transpose_and_batchnorm_fold_with_output_channels_on_weight_dim_1():
    net = _warm_batchnorms(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d(6)), (4, 4, 5, 5))
    x = torch.randn(2, 4, 5, 5)
    result = fuse_model_for_deployment(net, x)
    assert result.fused == [("0", "1")]
    fused_layer = result.module[0]
    assert isinstance(fused_layer, nn.ConvTranspose2d) and fused_layer.weight.shape == (4, 6, 3, 3)
    np.testing.assert_allclose(_run(result.module, x), _run(net, x), atol=1e-4)


def test_linear_and_batchnorm1d_fold():
    net = _warm_batchnorms(nn.Sequential(nn.Linear(10, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)), (16, 10))
    x = torch.randn(5, 10)
    result = fuse_model_for_deployment(net, x)
    assert result.fused == [("0", "1")] and _batchnorm_count(result.module) == 0
    np.testing.assert_allclose(_run(result.module, x), _run(net, x), atol=1e-4)


class NormalizesBeforeConv(nn.Module):
    """Declares conv before bn but applies bn first, and branches on data so torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent: symbolic tracing fails here
            return self.conv(self.bn(x))
        return x


def test_fusing_a_wrongly_guessed_pair_fails_parity_and_names_the_diff():
    net = _warm_batchnorms(NormalizesBeforeConv(), (4, 4, 6, 6))
    with pytest.raises(DeployBenchError, match=r"max abs diff \d[\d.e+-]* > tolerance") as info:
        fuse_model_for_deployment(net, torch.randn(2, 4, 6, 6))
    assert "method children" in str(info.value)


def test_a_batchnorm_applied_twice_is_not_fused():
    class SharedNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.bn(x)

    net = _warm_batchnorms(SharedNorm(), (4, 3, 5, 5))
    result = fuse_model_for_deployment(net, torch.randn(1, 3, 5, 5))
    assert result.fused == [] and result.batchnorms_left == 1
    assert any("more than once" in note for note in result.notes)


def test_fusing_needs_inputs_to_check_parity(small_cnn_spec):
    with pytest.raises(DeployBenchError, match="example_inputs"):
        fuse_model_for_deployment(make_small_cnn())
    assert fuse_model_for_deployment(small_cnn_spec).batchnorms_left == 0  # a ModelSpec brings its own inputs


# ---- pruning ------------------------------------------------------------------------------------

def _conv_chain(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _warm_batchnorms(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 10),
    ), (4, 3, 16, 16))


def test_l1_unstructured_sparsity_matches_the_amount():
    net = _conv_chain()
    report = prune_model(net, 0.4, "l1_unstructured")
    assert report.sparsity == pytest.approx(0.4, abs=0.01)
    zeros = sum(int((m.weight == 0).sum()) for m in report.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert zeros > 0.39 * sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert report.params_after == report.params_before  # unstructured keeps every tensor's shape
    assert not any(name.endswith("_orig") or name.endswith("_mask") for name, _ in report.module.named_parameters())
    assert float(net[0].weight.detach().abs().min()) > 0, "the original model must be left untouched"


def test_structured_pruning_really_shrinks_the_network_and_keeps_output_shape():
    net = _conv_chain()
    x = torch.randn(2, 3, 16, 16)
    report = prune_model(net, 0.5, "structured", example_inputs=x)
    assert report.module[0].out_channels == 8 and report.module[1].num_features == 8
    assert report.module[3].in_channels == 8 and report.module[3].out_channels == 16
    assert report.module[7].out_channels == 16 and report.module[10].in_features == 16 * 6 * 6
    assert report.params_after < 0.45 * report.params_before
    assert report.bytes_after < 0.5 * report.bytes_before
    assert report.sparsity > 0.5
    assert _run(report.module, x).shape == _run(net, x).shape == (2, 10)


def test_structured_pruning_removes_exactly_the_dead_channels():
    """Channels with zero weights and bias contribute nothing, so removing them changes no output."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 5)).eval()
    with torch.no_grad():
        for conv, dead in ((net[0], [1, 4, 6, 7]), (net[2], [0, 3, 5])):
            conv.weight[dead] = 0
            conv.bias[dead] = 0
    x = torch.randn(3, 3, 8, 8)
    report = prune_model(net, 0.5, "structured", example_inputs=x)
    assert report.module[0].out_channels == 4 and report.module[2].out_channels == 3
    assert report.module[5].in_features == 3 * 4 * 4
    np.testing.assert_allclose(_run(report.module, x), _run(net, x), atol=1e-5)


def test_structured_pruning_skips_residual_and_depthwise_convs_and_says_why():
    resnet = _warm_batchnorms(TinyResNet(), (4, 3, 12, 12))
    x = torch.randn(1, 3, 12, 12)
    report = prune_model(resnet, 0.5, "structured", example_inputs=x)
    assert report.pruned == ["block.conv1: 8 -> 4 channels"]  # the only conv whose output does not reach the add
    assert any(s.startswith("stem:") and "several consumers" in s for s in report.skipped)
    assert _run(report.module, x).shape == (1, 4)
    assert report.params_after < report.params_before

    depthwise = prune_model(make_small_cnn(), 0.5, "structured", example_inputs=torch.randn(1, 3, 16, 16))
    assert depthwise.pruned == [] and depthwise.params_after == depthwise.params_before
    assert any("depthwise" in s for s in depthwise.skipped)


def test_bad_prune_arguments_raise_one_line_errors():
    with pytest.raises(DeployBenchError, match="prune method"):
        prune_model(_conv_chain(), 0.5, "random")
    with pytest.raises(DeployBenchError, match="fraction"):
        prune_model(_conv_chain(), 1.5)
    with pytest.raises(DeployBenchError, match="example_inputs"):
        prune_model(_conv_chain(), 0.5, "structured")


# ---- preparation --------------------------------------------------------------------------------

def test_prepare_is_optimize_under_the_other_name():
    assert prepare_model_for_deployment is optimize_model_for_deployment


def test_preparing_a_spec_gives_a_spec_that_runs_like_the_original(small_cnn_spec):
    prepared = prepare_model_for_deployment(small_cnn_spec, "onnx", prune=0.25)
    assert prepared.spec.name == "small_cnn+fused+pruned25"
    assert prepared.spec.build() is prepared.module
    assert prepared.spec.inputs == small_cnn_spec.inputs and prepared.spec.output_names == ("logits",)
    assert prepared.fused == [("0", "1"), ("3", "4")]
    assert prepared.pruning.sparsity == pytest.approx(0.25, abs=0.02)
    assert any("ONNX" in note for note in prepared.notes)
    x = small_cnn_spec.make_inputs(seed=3, dims={"batch": 2})
    fused_only = prepare_model_for_deployment(small_cnn_spec, "tflite", precision="int8")
    assert any("channels-last" in note for note in fused_only.notes)
    assert any("int8" in note for note in fused_only.notes)
    with create_deployer(fused_only.spec, backend="torch") as engine, \
            create_deployer(small_cnn_spec, backend="torch") as reference:
        np.testing.assert_allclose(engine.infer(x)["logits"], reference.infer(x)["logits"], atol=1e-4)


def test_preparing_a_module_with_inputs_gives_a_spec_and_rejects_unknown_targets():
    net = make_small_cnn()
    x = torch.randn(1, 3, 16, 16)
    prepared = optimize_model_for_deployment(net, "openvino", example_inputs=x, fuse=True)
    assert prepared.spec is not None and prepared.spec.name == "Sequential+fused"
    assert prepared.module is not net and _batchnorm_count(prepared.module) == 0
    with pytest.raises(DeployBenchError, match="unknown target format 'keras'"):
        optimize_model_for_deployment(net, "keras", example_inputs=x)
