"""The run's model (`model.*`): built after importing the config's `imports`, by the launcher,
every worker process and every rank (each in its own process), and checked before any
worker starts. Neither is pure: `build_run_model` imports the config's modules and builds
the model, `check_run_model` runs it on a tiny batch."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dbl_ps.config import RunConfig
from dbl_ps.imports import import_modules
from dbl_ps.models import build_model, check_model_output

__all__ = ["build_run_model", "check_run_model"]


def build_run_model(cfg: RunConfig, num_classes: int, in_channels: int, *, dropout: float = 0.0,
                    log: Callable[[str], None] | None = None) -> nn.Module:
    """The run's model (`model.*`), after importing the config's `imports`: what the launcher,
    every worker process and every rank build (each in its own process)."""
    import_modules(cfg.imports)
    m = cfg.model
    return build_model(m.name, num_classes, in_channels, dropout, kwargs=m.kwargs, cifar_stem=m.cifar_stem, log=log)


def check_run_model(cfg: RunConfig, model: nn.Module, num_classes: int, in_channels: int, device: torch.device) -> None:
    """What can be checked before any worker starts: the model's output size on a tiny batch
    at the smallest resolution, and that the device can run the configured precision."""
    check_model_output(model, cfg.model.name, num_classes, in_channels, min(cfg.schedule.resolutions))
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"config key 'precision': got 'bf16', but {torch.cuda.get_device_name(device)} cannot "
                         f"compute in bf16 (it needs compute capability 8.0 or newer); use 'fp16' or 'fp32'")
