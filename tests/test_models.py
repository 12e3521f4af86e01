"""Tests of dbl_ps.models: shapes at several resolutions, dropout control, sizes, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbl_ps.models import MODEL_NAMES, build_model, set_dropout


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "resolutions", "in_channels"),
    [
        ("resnet18_cifar", (16, 24, 32), 3),
        ("resnet18_imagenet", (64, 96, 112), 3),
        ("resnet50_imagenet", (64, 96), 3),
        ("small_resnet", (8, 16, 24, 32), 1),
    ],
)
def test_output_shape_at_several_resolutions(name, resolutions, in_channels):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        for r in resolutions:
            out = model(torch.randn(2, in_channels, r, r))
            assert out.shape == (2, 7)
            assert torch.isfinite(out).all()


def test_parameter_counts():
    # torchvision's resnet18 with a 100-class head and a 3x3 CIFAR stem has 11,220,132 parameters
    assert n_params(build_model("resnet18_cifar", 100)) == 11_220_132
    assert n_params(build_model("resnet18_imagenet", 1000)) == 11_689_512  # torchvision resnet18
    assert n_params(build_model("resnet50_imagenet", 1000)) == 25_557_032  # torchvision resnet50
    assert 50_000 < n_params(build_model("small_resnet", 10)) < 200_000


def test_stems():
    cifar = build_model("resnet18_cifar", 10)
    imagenet = build_model("resnet18_imagenet", 10)
    assert cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())
    assert imagenet.stem[0].kernel_size == (7, 7) and imagenet.stem[0].stride == (2, 2)
    assert isinstance(imagenet.stem[3], nn.MaxPool2d)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_set_dropout_changes_p(name):
    model = build_model(name, 10, dropout=0.1)
    assert model.dropout.p == 0.1
    assert set_dropout(model, 0.3) == 1
    assert model.dropout.p == 0.3


def test_dropout_acts_before_classifier():
    torch.manual_seed(0)
    model = build_model("small_resnet", 10, dropout=0.0).train()
    x = torch.randn(4, 3, 16, 16)
    features = model.pool(model.stages(model.stem(x))).flatten(1)
    torch.testing.assert_close(model.fc(features), model.fc(model.dropout(features)))
    set_dropout(model, 0.5)
    assert not torch.equal(model.dropout(features), features)


def test_errors():
    with pytest.raises(ValueError, match=r"model name 'resnet50' is unknown; use one of resnet18_cifar"):
        build_model("resnet50", 10)
    with pytest.raises(ValueError, match=r"num_classes=0 must be a positive integer"):
        build_model("small_resnet", 0)
    with pytest.raises(ValueError, match=r"dropout=1.0 must be a number in \[0, 1\)"):
        build_model("small_resnet", 10, dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout=-0.1"):
        set_dropout(build_model("small_resnet", 10), -0.1)
    with pytest.raises(ValueError, match=r"has no nn.Dropout module"):
        set_dropout(nn.Linear(2, 2), 0.1)


def test_small_resnet_learns_digits():
    """scikit-learn's 8x8 digits upsampled to 16 px: >= 95 % test accuracy in a few epochs."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x = nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:]
    model = build_model("small_resnet", 10, in_channels=1, dropout=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3], gamma=0.1)
    for _ in range(5):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy >= 0.95
