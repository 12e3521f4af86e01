"""Image classifiers written with plain ``torch.nn`` (no torchvision dependency).

* ``resnet18_cifar``    ResNet-18, 3x3 stride-1 stem, no max-pool (CIFAR-style), ~11.2M params at 100 classes
* ``resnet18_imagenet`` ResNet-18, 7x7 stride-2 stem + 3x3 stride-2 max-pool (ImageNet-style)
* ``resnet50_imagenet`` ResNet-50 (bottleneck blocks, ImageNet stem), ~25.6M params at 1000 classes
* ``small_resnet``      3x3 stem and three residual stages of 16/32/64 channels, for CPU runs at 8-32 px

All end in adaptive average pooling, dropout and a linear classifier, so one set of
weights runs at every resolution (what cyclic progressive learning needs), and
``set_dropout`` changes the dropout rate in place when the schedule says so.
"""

from __future__ import annotations

from torch import Tensor, nn

MODEL_NAMES = ("resnet18_cifar", "resnet18_imagenet", "resnet50_imagenet", "small_resnet")


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity where shapes match, else a 1x1 conv-BN projection."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1  # output channels = expansion x width

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand to ``4 x width``; identity or
    1x1 conv-BN projection shortcut (torchvision's "ResNet v1.5" placement of the stride)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


RESIDUAL_BLOCKS = (BasicBlock, Bottleneck)  # the units FSDP wraps one by one


class ResNet(nn.Module):
    """``stem -> stages of residual blocks -> adaptive avg pool -> dropout -> fc``."""

    def __init__(
        self,
        stem: nn.Module,
        stem_channels: int,
        widths: tuple[int, ...],
        blocks_per_stage: tuple[int, ...],
        num_classes: int,
        dropout: float,
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
    ) -> None:
        super().__init__()
        self.stem = stem
        stages = []
        in_channels = stem_channels
        for i, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
            layers = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(in_channels, width, stride))
                in_channels = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        x = self.pool(x).flatten(1)
        return self.fc(self.dropout(x))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def build_model(name: str, num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """A classifier by name (one of ``MODEL_NAMES``) for ``num_classes`` classes."""
    if name not in MODEL_NAMES:
        raise ValueError(f"model name {name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}={value!r} must be a positive integer")
    _check_dropout(dropout)
    if name == "resnet18_cifar":
        stem = nn.Sequential(*_conv_bn_relu(in_channels, 64, 3, 1))
        return ResNet(stem, 64, (64, 128, 256, 512), (2, 2, 2, 2), num_classes, dropout)
    if name == "resnet18_imagenet":
        stem = nn.Sequential(*_conv_bn_relu(in_channels, 64, 7, 2), nn.MaxPool2d(3, stride=2, padding=1))
        return ResNet(stem, 64, (64, 128, 256, 512), (2, 2, 2, 2), num_classes, dropout)
    if name == "resnet50_imagenet":
        stem = nn.Sequential(*_conv_bn_relu(in_channels, 64, 7, 2), nn.MaxPool2d(3, stride=2, padding=1))
        return ResNet(stem, 64, (64, 128, 256, 512), (3, 4, 6, 3), num_classes, dropout, block=Bottleneck)
    stem = nn.Sequential(*_conv_bn_relu(in_channels, 16, 3, 1))
    return ResNet(stem, 16, (16, 32, 64), (1, 1, 1), num_classes, dropout)


def _check_dropout(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"dropout={p!r} must be a number in [0, 1)")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the rate of every ``nn.Dropout`` in ``model`` to ``p`` in place; returns how many changed.

    Raises ``ValueError`` when ``p`` is outside ``[0, 1)`` or the model has no dropout module.
    """
    _check_dropout(p)
    modules = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no nn.Dropout module to set to p={p}")
    for m in modules:
        m.p = float(p)
    return len(modules)
