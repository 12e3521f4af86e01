"""Which engine a worker trains with (`engine:` a name in `dbl_ps.registry.ENGINES` —
torch, deepspeed, fsdp — or an import path to the user's own), built the same way in a
store-mode worker process and in every rank of a multi-rank job.

What differs between engines is data, the registry's traits, not branches here:
`store_mode` (fsdp runs only under a launcher), `setup` (the engine's own checks and
set-up once per run, an `EngineSetup`: DeepSpeed reads, checks and saves its JSON there).
An entry is an `Engine` subclass built as `cls(module, cfg, device, topology)`, or a
factory `(module, cfg, device, topology, *, batch_size, options) -> Engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dbl_ps.config import RunConfig
from dbl_ps.imports import ImportPathError
from dbl_ps.registry import ENGINES, Entry
from dbl_ps.training.engine import Engine, EngineSetup
from dbl_ps.training.topology import LaunchError, Topology

__all__ = ["engine_options", "check_engine_config", "check_engine_schedule", "check_store_mode_engine",
           "build_engine"]


def _entry(cfg: RunConfig) -> Entry:
    """The engine `cfg.engine` names, imported; a user's engine that does not import is one
    LaunchError naming the key."""
    try:
        return ENGINES.get(cfg.engine)
    except ImportPathError as exc:
        raise LaunchError(str(exc)) from None


def check_store_mode_engine(cfg: RunConfig) -> None:
    """The engines a worker process of one-machine `dbl-ps train` can run (trait store_mode; not fsdp)."""
    traits = ENGINES.traits(cfg.engine)
    if not traits["store_mode"]:
        why = "shards a worker over several ranks" if traits["sharded"] else "runs only in a multi-rank job"
        raise LaunchError(f"engine {cfg.engine!r} {why}: run it under a launcher, e.g. "
                          f"`torchrun --nproc_per_node N -m dbl_ps train engine={cfg.engine} ...`")


def _setup(cfg: RunConfig) -> EngineSetup:
    """The engine's own run set-up (the registry's `setup` trait), else the default: nothing."""
    try:
        setup = ENGINES.trait_object(cfg.engine, "setup")
    except ImportPathError as exc:
        raise LaunchError(str(exc)) from None
    return EngineSetup() if setup is None else setup()


def check_engine_config(cfg: RunConfig, log: Callable[[str], None]) -> None:
    """Before anything is measured: the engine imports (a user's by import path fails here,
    not in every worker), and the engine checks its own settings (`EngineSetup.check`: a
    DeepSpeed config that cannot train a DBSL worker is one error listing every conflict)."""
    _entry(cfg)
    if cfg.micro_batch is not None:
        log(f"micro_batch {cfg.micro_batch}: a planned batch above {cfg.micro_batch} runs as "
            f"ceil(batch / {cfg.micro_batch}) micro-batches and one optimizer step (gradient accumulation: the "
            f"same gradient; BatchNorm statistics see each micro-batch)")
    _setup(cfg).check(cfg, log)


def check_engine_schedule(cfg: RunConfig, train_samples: int) -> None:
    """Once the training set's size is known, before anything is measured (`EngineSetup.check_schedule`:
    a DeepSpeed `scheduler` block is refused with what it is in epochs)."""
    _setup(cfg).check_schedule(cfg, train_samples)


def engine_options(cfg: RunConfig, run_dir: Path, *, resuming: bool) -> dict[str, Any]:
    """What an engine needs beyond the run config (`EngineSetup.options`; picklable: it travels
    to worker processes), e.g. DeepSpeed's config, saved into a new run's directory."""
    return _setup(cfg).options(cfg, run_dir, resuming=resuming)


def build_engine(cfg: RunConfig, module: nn.Module, device: torch.device, topology: Topology, *,
                 batch_size: int | None, options: dict[str, Any]) -> Engine:
    """The engine `engine:` names for one worker (or one rank of it), in every mode: `batch_size`
    is the worker's first batch in a store-mode worker process, None in a rank of a multi-rank
    job (the process group is initialised there)."""
    entry = _entry(cfg)
    if isinstance(entry.obj, type) and issubclass(entry.obj, Engine):
        engine_class: Callable[..., Engine] = entry.obj  # built as TorchEngine's constructor is
        engine = engine_class(module, cfg, device, topology)
    else:
        engine = entry.obj(module, cfg, device, topology, batch_size=batch_size, options=options)
    if not isinstance(engine, Engine):
        raise LaunchError(f"engine={cfg.engine!r} built a {type(engine).__name__}, expected a "
                          "dbl_ps.training.engine.Engine (subclass Engine or TorchEngine)")
    return engine
