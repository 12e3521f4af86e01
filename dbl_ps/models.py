"""The classifiers a run trains: built-in names or any model by import path.

Built-in names (``MODEL_NAMES``, sorted from ``dbl_ps.config.MODELS``, the one list that the config
checks ``model.name`` against):

* ``resnet18_cifar``    torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)
* ``resnet18_imagenet`` torchvision's ResNet-18 (7x7 stride-2 stem + max-pool)
* ``resnet50_imagenet`` torchvision's ResNet-50
* ``small_resnet``      written here: a 3x3 stem and three residual stages of 16/32/64 channels,
                        for CPU runs at 8-32 px (torchvision has nothing this small)

Anything else is an import path, ``package.module:callable`` (``torchvision.models:resnet18``,
``timm:create_model`` with ``model.kwargs: {model_name: resnet50}``, ``my_models:build``),
called with ``num_classes=`` and ``model.kwargs``; it must return an ``nn.Module``.

Every model is then made ready for the schedule, the same way:

* ``cifar_stem``: a torchvision-style ResNet (``conv1`` + ``maxpool``) gets the 3x3 stride-1
  stem without max-pool, for 32 px images;
* channels: grayscale data meets a model whose first convolution expects 3 channels through a
  forward pre-hook that repeats the channel (a view, no copy; built-in models are built with
  the data's channel count instead);
* dropout: the schedule sets the rate of every ``nn.Dropout`` (``set_dropout``). A model
  without one gets one before its classifier (the last ``nn.Linear`` with ``num_classes``
  outputs, or timm's ``get_classifier()``), attached to that layer and applied by a forward
  pre-hook: no parameters, so the state dict keeps the model's own keys (pretrained weights
  load unchanged). A model with no such layer trains without dropout, and ``build_model`` says
  so once through ``log``.

All models end in adaptive pooling, so one set of weights runs at every resolution (what
cyclic progressive learning needs); ``check_model_output`` verifies that, and the output
size, on a tiny batch before any worker starts.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torchvision import models as tv
from torchvision.models.resnet import BasicBlock as TvBasicBlock
from torchvision.models.resnet import Bottleneck as TvBottleneck

from dbl_ps.config import MODELS
from dbl_ps.imports import import_callable, is_import_path

__all__ = ["MODEL_NAMES", "AUTOCAST_DTYPES", "ModelError", "build_model", "check_model_output", "set_dropout",
           "residual_block_classes", "first_conv"]

# The built-in names, sorted; the list itself is the config's (torch-free, so a config is checked
# before torch is imported).
MODEL_NAMES = tuple(sorted(MODELS))
# The autocast dtype of each `precision` option (None: plain fp32). One table for the
# engine's steps and the calibration's timed steps, so a plan is made from the step the
# workers take.
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelError(ValueError):
    """A model that cannot be built or does not fit the data."""


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity where shapes match, else a 1x1 conv-BN projection."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

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


class SmallResNet(nn.Module):
    """``stem -> stages of residual blocks -> adaptive avg pool -> dropout -> fc``."""

    def __init__(
        self,
        stem: nn.Module,
        stem_channels: int,
        widths: tuple[int, ...],
        blocks_per_stage: tuple[int, ...],
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.stem = stem
        stages = []
        in_channels = stem_channels
        for i, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
            layers = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_channels, width, stride))
                in_channels = width
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



def _small_resnet(num_classes: int, in_channels: int, dropout: float) -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU(inplace=True))
    return SmallResNet(stem, 16, (16, 32, 64), (1, 1, 1), num_classes, dropout)


def _torchvision_resnet(name: str, num_classes: int, in_channels: int) -> nn.Module:

    depth, stem = name.split("_")
    model = getattr(tv, depth)(num_classes=num_classes)
    if stem == "cifar":
        use_cifar_stem(model, in_channels)
    elif in_channels != 3:
        old = model.conv1
        model.conv1 = _kaiming(nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                                         padding=old.padding, bias=False))
    return model


def _kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision initialises
    return conv


def use_cifar_stem(model: nn.Module, in_channels: int | None = None) -> None:
    """Give a torchvision-style ResNet (``conv1`` + ``maxpool``) the 3x3 stride-1 stem without
    max-pool that small (32 px) images need; ImageNet's 7x7/2 + pool would leave 8x8 after the stem."""
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or pool is None:
        raise ModelError(f"model.cifar_stem needs a torchvision-style ResNet with `conv1` (nn.Conv2d) and `maxpool`; "
                         f"{type(model).__name__} has {'no conv1' if not isinstance(conv, nn.Conv2d) else 'no maxpool'}")
    channels = conv.in_channels if in_channels is None else in_channels
    model.conv1 = _kaiming(nn.Conv2d(channels, conv.out_channels, 3, stride=1, padding=1, bias=False))
    model.maxpool = nn.Identity()


def _from_import_path(name: str, num_classes: int, kwargs: Mapping[str, Any]) -> nn.Module:
    factory = import_callable(name, "model.name")
    try:
        model = factory(num_classes=num_classes, **kwargs)
    except SystemExit as exc:  # sys.exit(0) in a factory ended the run with status 0 and nothing trained
        raise ModelError(f"model.name={name!r} called sys.exit({exc.code!r}) instead of returning a model "
                         f"(num_classes={num_classes}, model.kwargs={dict(kwargs)}); a model factory must return "
                         f"a torch nn.Module") from None
    except Exception as exc:  # whatever the user's factory raises, it is about these arguments
        raise ModelError(f"model.name={name!r} could not be called with num_classes={num_classes} and "
                         f"model.kwargs={dict(kwargs)}: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.name={name!r} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The model's first 2-d convolution (in module order): what decides its input channels."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _repeat_gray(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x, *args[1:])


def _fit_channels(model: nn.Module, name: str, in_channels: int) -> None:
    conv = first_conv(model)
    if conv is None or conv.in_channels == in_channels:
        return
    if conv.in_channels == 3 and in_channels == 1:
        model.register_forward_pre_hook(_repeat_gray)
        return
    raise ModelError(f"model.name={name!r} expects {conv.in_channels}-channel images (its first convolution), "
                     f"the data has {in_channels} channel(s); build it for {in_channels} channels (model.kwargs)")


def _classifier(model: nn.Module, num_classes: int) -> nn.Linear | None:
    get = getattr(model, "get_classifier", None)  # timm's models name their head
    if callable(get):
        head = get()
        if isinstance(head, nn.Linear):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return linears[-1] if linears else None


def _dropout_before(layer: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # The dropout is a child of the layer it feeds (not a closure): copies and .train()/.eval() follow it.
    dropout: nn.Module = layer.dbl_ps_dropout  # type: ignore[assignment]  # a child module nn.Module's __getattr__ types as a tensor
    return (dropout(args[0]), *args[1:])


def _ensure_dropout(model: nn.Module, name: str, num_classes: int, dropout: float,
                    log: Callable[[str], None] | None) -> None:
    if any(isinstance(m, nn.Dropout) for m in model.modules()):
        return
    head = _classifier(model, num_classes)
    if head is None:
        if log is not None:
            log(f"model {name} has no nn.Dropout and no nn.Linear classifier with {num_classes} outputs to put one "
                f"before: it trains without dropout (the schedule's model.dropout does not apply)")
        return
    head.add_module("dbl_ps_dropout", nn.Dropout(dropout))
    head.register_forward_pre_hook(_dropout_before)


def build_model(name: str, num_classes: int, in_channels: int = 3, dropout: float = 0.0, *,
                kwargs: Mapping[str, Any] | None = None, cifar_stem: bool = False,
                log: Callable[[str], None] | None = None) -> nn.Module:
    """A classifier for `num_classes` classes of `in_channels`-channel images: a built-in name
    (``MODEL_NAMES``) or an import path called with ``num_classes`` and `kwargs`, made ready
    for the schedule (see the module docstring). `log` hears the one-off notes (no dropout)."""
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}={value!r} must be a positive integer")
    _check_dropout(dropout)
    kwargs = dict(kwargs or {})
    if name in MODEL_NAMES:
        if kwargs:
            raise ModelError(f"model.kwargs={kwargs} apply to a model by import path, not to the built-in {name!r}")
        if name == "small_resnet":
            return _small_resnet(num_classes, in_channels, dropout)
        model = _torchvision_resnet(name, num_classes, in_channels)
    elif is_import_path(name):
        model = _from_import_path(name, num_classes, kwargs)
        if cifar_stem:
            use_cifar_stem(model)
        _fit_channels(model, name, in_channels)
    else:
        raise ModelError(f"model name {name!r} is unknown; use one of {', '.join(MODEL_NAMES)} or an import path "
                         f"'package.module:callable' (e.g. 'torchvision.models:resnet18')")
    _ensure_dropout(model, name, num_classes, dropout, log)
    return model


def check_model_output(model: nn.Module, name: str, num_classes: int, in_channels: int, resolution: int) -> None:
    """One forward pass of a 2-image batch at `resolution` (eval mode, no grad): the output must
    be a (2, num_classes) tensor. Run before any worker starts, so a wrong head is one error."""
    x = torch.zeros(2, in_channels, resolution, resolution)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # whatever the user's forward raises, it is this model's problem with this input
        raise ModelError(f"model {name!r} failed on a batch of shape {tuple(x.shape)} "
                         f"({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor):
        raise ModelError(f"model {name!r} returned a {type(out).__name__}, expected a tensor of logits (N, {num_classes})")
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(f"model {name!r} gives outputs of shape {tuple(out.shape)} for 2 images, expected "
                         f"(2, {num_classes}): the data has {num_classes} classes")


def residual_block_classes(model: nn.Module) -> tuple[type, ...]:
    """The residual block classes (ours and torchvision's) present in `model`: FSDP's default wrap units."""

    known = (BasicBlock, TvBasicBlock, TvBottleneck)
    return tuple(cls for cls in known if any(type(m) is cls for m in model.modules()))


def _check_dropout(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"dropout={p!r} must be a number in [0, 1)")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the rate of every ``nn.Dropout`` in ``model`` (its own or the one ``build_model``
    inserted) to ``p`` in place; returns how many changed (0 for a model without dropout,
    which ``build_model`` reported when it was built)."""
    _check_dropout(p)
    modules = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in modules:
        m.p = float(p)
    return len(modules)
