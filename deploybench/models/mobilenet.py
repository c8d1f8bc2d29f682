"""``mobilenet_v3``: MobileNetV3-Small (Howard et al. 2019) written here, 1×3×224×224 → 1000 logits.

It is the zoo's model of the operations that trip converters and int8 quantizers: depthwise
convolutions, hardswish, squeeze-excitation with hardsigmoid gates, and channel-wise multiplies.
Weights are seeded (initialised as torchvision does) and BatchNorm statistics come from real photo
crops, the same recipe as ``resnet18``; the class scores carry no meaning (no eval set).
"""

from __future__ import annotations

from ..spec import ModelSpec
from ._data import image_classifier_spec

WEIGHTS_RECIPE = {
    "model": "mobilenet_v3", "version": 1, "init_seed": 0, "init": "torchvision_mobilenet_v3",
    "bn_images": 32, "bn_batch": 16, "bn_image_seed": 0, "image_size": 224, "logit_std": 2.0,
}

# MobileNetV3-Small's bottlenecks (Table 2 of the paper):
# (input channels, kernel, expanded channels, output channels, squeeze-excitation, activation, stride)
SMALL_BLOCKS = (
    (16, 3, 16, 16, True, "relu", 2),
    (16, 3, 72, 24, False, "relu", 2),
    (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hardswish", 2),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 120, 48, True, "hardswish", 1),
    (48, 5, 144, 48, True, "hardswish", 1),
    (48, 5, 288, 96, True, "hardswish", 2),
    (96, 5, 576, 96, True, "hardswish", 1),
    (96, 5, 576, 96, True, "hardswish", 1),
)
LAST_CHANNELS = 1024


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10 % (as the paper's code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v3_network(num_classes: int = 1000):
    """An untrained MobileNetV3-Small, initialised like torchvision's ``mobilenet_v3_small()``."""
    from torch import nn

    def activation(kind: str):
        return nn.Hardswish() if kind == "hardswish" else nn.ReLU()

    def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                act: str | None = None) -> nn.Sequential:
        layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2, groups=groups,
                            bias=False),
                  nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.01)]
        if act is not None:
            layers.append(activation(act))
        return nn.Sequential(*layers)

    class SqueezeExcitation(nn.Module):
        def __init__(self, channels: int):
            super().__init__()
            squeezed = _make_divisible(channels // 4)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, squeezed, 1)
            self.relu = nn.ReLU()
            self.fc2 = nn.Conv2d(squeezed, channels, 1)
            self.gate = nn.Hardsigmoid()

        def forward(self, x):
            return x * self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))

    class InvertedResidual(nn.Module):
        def __init__(self, in_channels, kernel, expanded, out_channels, use_se, act, stride):
            super().__init__()
            self.use_residual = stride == 1 and in_channels == out_channels
            layers = []
            if expanded != in_channels:
                layers.append(conv_bn(in_channels, expanded, 1, act=act))
            layers.append(conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act))
            if use_se:
                layers.append(SqueezeExcitation(expanded))
            layers.append(conv_bn(expanded, out_channels, 1))
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            out = self.block(x)
            return out + x if self.use_residual else out

    class MobileNetV3(nn.Module):
        def __init__(self):
            super().__init__()
            first = SMALL_BLOCKS[0][0]
            last = 6 * SMALL_BLOCKS[-1][3]
            self.features = nn.Sequential(
                conv_bn(3, first, 3, 2, act="hardswish"),
                *[InvertedResidual(*config) for config in SMALL_BLOCKS],
                conv_bn(SMALL_BLOCKS[-1][3], last, 1, act="hardswish"),
            )
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(last, LAST_CHANNELS), nn.Hardswish(), nn.Dropout(0.2),
                                            nn.Linear(LAST_CHANNELS, num_classes))
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0, 0.01)
                    nn.init.zeros_(module.bias)

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))

    return MobileNetV3()


def mobilenet_v3() -> ModelSpec:
    """The zoo entry: the spec is cheap; weights are made or loaded only by ``spec.build()``."""
    return image_classifier_spec(
        "mobilenet_v3", mobilenet_v3_network, lambda network: network.classifier[-1], WEIGHTS_RECIPE,
        description=("MobileNetV3-Small (2.5 M parameters, ~60 MFLOPs at 224x224: depthwise convs, hardswish, "
                     "squeeze-excitation), seeded weights with BatchNorm statistics from real photo crops; "
                     "class scores are not meaningful (no eval set)"))
