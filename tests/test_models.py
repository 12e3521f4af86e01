"""Tests of dbl_ps.models: shapes at several resolutions, dropout control, sizes, learning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbl_ps.imports import ImportPathError
from dbl_ps.models import MODEL_NAMES, ModelError, build_model, check_model_output, set_dropout


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
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_builtin_resnets_are_torchvisions():
    """Same modules and state-dict keys as torchvision's (its pretrained weights load)."""
    from torchvision.models import resnet18, resnet50

    assert build_model("resnet18_imagenet", 1000).state_dict().keys() == resnet18().state_dict().keys()
    assert build_model("resnet50_imagenet", 1000).state_dict().keys() == resnet50().state_dict().keys()
    assert build_model("resnet18_imagenet", 10, in_channels=1).conv1.in_channels == 1


def dropouts(model: nn.Module) -> list[nn.Dropout]:
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_set_dropout_changes_p(name):
    model = build_model(name, 10, dropout=0.1)
    assert [m.p for m in dropouts(model)] == [0.1]
    assert set_dropout(model, 0.3) == 1
    assert [m.p for m in dropouts(model)] == [0.3]


def test_dropout_acts_before_classifier():
    torch.manual_seed(0)
    model = build_model("small_resnet", 10, dropout=0.0).train()
    x = torch.randn(4, 3, 16, 16)
    features = model.pool(model.stages(model.stem(x))).flatten(1)
    torch.testing.assert_close(model.fc(features), model.fc(model.dropout(features)))
    set_dropout(model, 0.5)
    assert not torch.equal(model.dropout(features), features)


def test_dropout_inserted_before_the_classifier_of_a_model_without_one():
    """torchvision's ResNet has no nn.Dropout: one is attached to its fc and drops fc's input in
    training only, without a parameter of its own (the state dict keeps torchvision's keys)."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = build_model("torchvision.models:resnet18", 10, dropout=0.0)
    assert model.state_dict().keys() == resnet18(num_classes=10).state_dict().keys()
    features = torch.randn(8, 512)
    fc = model.fc
    torch.testing.assert_close(fc(features), nn.functional.linear(features, fc.weight, fc.bias))
    assert set_dropout(model, 0.5) == 1
    assert not torch.allclose(fc.train()(features), nn.functional.linear(features, fc.weight, fc.bias))
    torch.testing.assert_close(fc.eval()(features), nn.functional.linear(features, fc.weight, fc.bias))
    model.train()
    twin = copy.deepcopy(model).eval()  # the copy's hook uses the copy's own dropout
    torch.testing.assert_close(twin.fc(features), nn.functional.linear(features, fc.weight, fc.bias))
    assert model.fc.dbl_ps_dropout.training


def test_model_without_classifier_trains_without_dropout_and_says_so_once():
    import sys
    import types

    notes: list[str] = []
    module = types.ModuleType("dbl_ps_test_headless")

    def build(num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, num_classes, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    module.build = build
    sys.modules["dbl_ps_test_headless"] = module
    try:
        model = build_model("dbl_ps_test_headless:build", 10, dropout=0.1, log=notes.append)
    finally:
        del sys.modules["dbl_ps_test_headless"]
    assert len(notes) == 1 and "trains without dropout" in notes[0]
    assert set_dropout(model, 0.3) == 0  # no crash when the schedule changes the rate
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_import_path_model_with_cifar_stem_and_grayscale_data():
    model = build_model("torchvision.models:resnet18", 10, in_channels=1, cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.in_channels == 3
    assert isinstance(model.maxpool, nn.Identity)
    # one channel in, repeated to the three the stem expects; 32 px keeps 4x4 after the stages
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    gray = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(model(gray), model(gray.expand(-1, 3, -1, -1)))


def test_import_path_kwargs_reach_the_callable():
    model = build_model("torchvision.models:resnet18", 7, kwargs={"zero_init_residual": True})
    assert torch.count_nonzero(model.layer1[0].bn2.weight) == 0
    with pytest.raises(ModelError, match=r"could not be called with num_classes=7 and model.kwargs=\{'depth': 3\}: "
                                         r"TypeError"):
        build_model("torchvision.models:resnet18", 7, kwargs={"depth": 3})
    with pytest.raises(ModelError, match=r"ValueError: BasicBlock only supports groups=1"):
        build_model("torchvision.models:resnet18", 7, kwargs={"width_per_group": 32})


def test_check_model_output():
    model = build_model("torchvision.models:resnet18", 10)
    check_model_output(model, "torchvision.models:resnet18", 10, 3, 16)
    assert model.training  # the check leaves the mode as it was
    with pytest.raises(ModelError, match=r"outputs of shape \(2, 10\) for 2 images, expected \(2, 7\): the data has 7"):
        check_model_output(model, "m", 7, 3, 16)
    with pytest.raises(ModelError, match=r"failed on a batch of shape \(2, 3, 16, 16\) \(RuntimeError"):
        check_model_output(nn.Linear(5, 10), "lin", 10, 3, 16)
    with pytest.raises(ModelError, match=r"returned a tuple, expected a tensor of logits"):
        check_model_output(_TwoOutputs(), "two", 10, 3, 16)


class _TwoOutputs(nn.Module):
    def forward(self, x):
        return x, x


def test_errors():
    with pytest.raises(ValueError, match=r"model name 'resnet50' is unknown; use one of resnet18_cifar.*or an import path"):
        build_model("resnet50", 10)
    with pytest.raises(ValueError, match=r"num_classes=0 must be a positive integer"):
        build_model("small_resnet", 0)
    with pytest.raises(ValueError, match=r"dropout=1.0 must be a number in \[0, 1\)"):
        build_model("small_resnet", 10, dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout=-0.1"):
        set_dropout(build_model("small_resnet", 10), -0.1)
    with pytest.raises(ImportPathError, match=r"model.name='no_such_pkg_xyz:build': module 'no_such_pkg_xyz' does not "
                                              r"import \(ModuleNotFoundError"):
        build_model("no_such_pkg_xyz:build", 10)
    with pytest.raises(ImportPathError, match=r"'torchvision.models' has no attribute 'resnet19'"):
        build_model("torchvision.models:resnet19", 10)
    with pytest.raises(ImportPathError, match=r"is a int, not a callable"):
        build_model("sys:maxsize", 10)
    with pytest.raises(ModelError, match=r"returned a dict, not a torch nn.Module"):
        build_model("builtins:dict", 10)
    with pytest.raises(ModelError, match=r"expects 3-channel images \(its first convolution\), the data has 2"):
        build_model("torchvision.models:resnet18", 10, in_channels=2)
    with pytest.raises(ModelError, match=r"model.cifar_stem needs a torchvision-style ResNet .* has no conv1"):
        build_model("torchvision.models:vgg11", 10, cifar_stem=True)


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
