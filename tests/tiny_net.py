"""A tiny CNN for tests that drive whole runs in one process (a user's model by import path,
`model.name=tiny_net:build`): BatchNorm and a classifier, a fraction of small_resnet's cost."""

from torch import nn


def build(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, num_classes))
