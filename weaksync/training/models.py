"""Model zoo: a BatchNorm-free digits CNN and CIFAR-style ResNets, written without torchvision."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MODEL_NAMES: tuple[str, ...] = ("digits-cnn", "digits-cnn-bn", "resnet20", "resnet20-gn", "resnet56", "resnet50")


class DigitsCNN(nn.Module):
    """Small CNN, without BatchNorm by default so synchronous SGD matches single-process SGD exactly; the
    `batchnorm` variant (digits-cnn-bn) is the seconds-long BatchNorm model the end-to-end tests train."""

    def __init__(self, num_classes: int, in_channels: int = 1, batchnorm: bool = False) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(cout)] if batchnorm else []  # none: digits-cnn keeps its layer names
            return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), *norm, nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(in_channels, 32),
            *conv(32, 64),
            nn.MaxPool2d(2),
            # Identity for 8x8 inputs; keeps the head the same size for any image size.
            nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


Norm = Callable[[int], nn.Module]


def group_norm(channels: int) -> nn.Module:
    """GroupNorm with groups of 8 channels (or fewer groups when the width is small): no running statistics,
    so nothing but the weights is shared between workers (the ablation of BatchNorm's statistics)."""
    return nn.GroupNorm(max(1, channels // 8), channels)


def _shortcut(in_planes: int, out_planes: int, stride: int, norm: Norm = nn.BatchNorm2d) -> nn.Module:
    """1x1 conv + norm projection when the shape changes, identity otherwise."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        norm(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (He et al. 2016, CIFAR ResNets)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut = _shortcut(in_planes, planes, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 block with 4x expansion (ResNet-50)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = norm(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem (3x3 conv, stride 1, no maxpool) + residual stages + global average pool + linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        stage_blocks: list[int],
        stage_widths: list[int],
        num_classes: int,
        in_channels: int,
        norm: Norm = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        stem_width = stage_widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False),
            norm(stem_width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_planes = stem_width
        for i, (blocks, width) in enumerate(zip(stage_blocks, stage_widths)):
            stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for j in range(blocks):
                layers.append(block(in_planes, width, stride if j == 0 else 1, norm))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(out, 1))


def _kaiming_init(model: nn.Module) -> None:
    """Standard He init; deterministic under torch.manual_seed."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _digits_cnn(num_classes: int, in_channels: int) -> nn.Module:
    return DigitsCNN(num_classes, in_channels)


def _digits_cnn_bn(num_classes: int, in_channels: int) -> nn.Module:
    return DigitsCNN(num_classes, in_channels, batchnorm=True)


def _resnet20(num_classes: int, in_channels: int) -> nn.Module:
    return ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], num_classes, in_channels)


def _resnet20_gn(num_classes: int, in_channels: int) -> nn.Module:
    return ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], num_classes, in_channels, norm=group_norm)


def _resnet56(num_classes: int, in_channels: int) -> nn.Module:
    return ResNet(BasicBlock, [9, 9, 9], [16, 32, 64], num_classes, in_channels)


def _resnet50(num_classes: int, in_channels: int) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels)


_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "digits-cnn": _digits_cnn,
    "digits-cnn-bn": _digits_cnn_bn,
    "resnet20": _resnet20,
    "resnet20-gn": _resnet20_gn,
    "resnet56": _resnet56,
    "resnet50": _resnet50,
}


def build_model(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build a freshly initialised model by name; all models accept any square image_size >= 2."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}: fix the dataset info")
    if image_size < 2:
        raise ValueError(f"image_size must be >= 2, got {image_size}: fix the dataset info")
    return _BUILDERS[name](num_classes, in_channels)
