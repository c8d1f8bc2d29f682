"""``resnet18``: the ResNet-18 architecture written here (BasicBlock, layers [2, 2, 2, 2], 1000 classes).

No pretrained weights are downloaded: the weights are seeded (Kaiming init, as torchvision does)
and the BatchNorm running statistics are estimated from crops of real photos, so activations,
value ranges and int8 calibration behave like a trained network's — only the class scores carry
no meaning, which is why the spec has no eval set.
"""

from __future__ import annotations

from ..spec import ModelSpec
from ._data import image_classifier_spec

WEIGHTS_RECIPE = {
    "model": "resnet18", "version": 1, "init_seed": 0, "init": "kaiming_normal_fan_out",
    "bn_images": 32, "bn_batch": 16, "bn_image_seed": 0, "image_size": 224, "logit_std": 2.0,
}


def resnet18_network(num_classes: int = 1000):
    """An untrained ResNet-18 (He et al. 2015), initialised like torchvision's ``resnet18()``."""
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, in_channels: int, channels: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.downsample = None
            if stride != 1 or in_channels != channels:
                self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                                nn.BatchNorm2d(channels))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2)):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
            widths, in_channels = (64, 128, 256, 512), 64
            stages = []
            for index, (width, blocks) in enumerate(zip(widths, layers)):
                stride = 1 if index == 0 else 2
                stage = [BasicBlock(in_channels, width, stride)]
                stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
                stages.append(nn.Sequential(*stage))
                in_channels = width
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet()


def resnet18() -> ModelSpec:
    """The zoo entry: the spec is cheap; weights are made or loaded only by ``spec.build()``."""
    return image_classifier_spec(
        "resnet18", resnet18_network, lambda network: network.fc, WEIGHTS_RECIPE,
        description=("ResNet-18 (11.7 M parameters, 1.8 GFLOPs at 224x224), seeded weights with BatchNorm "
                     "statistics from real photo crops; class scores are not meaningful (no eval set)"))
