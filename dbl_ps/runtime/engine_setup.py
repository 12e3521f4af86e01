"""Which engine a worker trains with (`engine:` a name in `dbl_ps.registry.ENGINES` —
torch, deepspeed, fsdp — or an import path to the user's own), built the same way in a
store-mode worker process and in every rank of a multi-rank job.

What differs between engines is data, the registry's traits, not branches here:
`store_mode` (fsdp runs only under a launcher), `ds_config` (reads `deepspeed_config`).
An entry is an `Engine` subclass built as `cls(module, cfg, device, topology)`, or a
factory `(module, cfg, device, topology, *, batch_size, options) -> Engine`.

The DeepSpeed engine config is resolved once per run: `deepspeed_config` (a path or a
packaged name; none = fp32 without ZeRO) is read when the run starts and saved in the
run directory as `deepspeed_config.json`, which a resumed run uses, so a resume never
depends on a file outside its directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dbl_ps.config import RunConfig
from dbl_ps.imports import ImportPathError
from dbl_ps.integrations.deepspeed import DS_CONFIG_FILE, DeepSpeedConfigError, check_rank_config, load_ds_config
from dbl_ps.registry import ENGINES, Entry
from dbl_ps.training.engine import Engine, merges_gradients
from dbl_ps.training.rundir import atomic_json
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


def check_engine_config(cfg: RunConfig, log: Callable[[str], None]) -> None:
    """Before anything is measured: the engine imports (a user's by import path fails here,
    not in every worker), and a DeepSpeed config that cannot train a DBSL worker is one
    error listing every conflict, and what dbl-ps changes in it is said once."""
    entry = _entry(cfg)
    if cfg.micro_batch is not None:
        log(f"micro_batch {cfg.micro_batch}: a planned batch above {cfg.micro_batch} runs as "
            f"ceil(batch / {cfg.micro_batch}) micro-batches and one optimizer step (gradient accumulation: the "
            f"same gradient; BatchNorm statistics see each micro-batch)")
    if not entry.traits["ds_config"]:
        return
    ds_config = load_ds_config(cfg.deepspeed_config)
    ds_config.pop("scheduler", None)  # refused with its epochs once the data's size is known (check_engine_schedule)
    used, notes = check_rank_config(ds_config, None, schedule_lr=cfg.schedule.lr, mixed=merges_gradients(cfg))
    stage = int(used.get("zero_optimization", {}).get("stage", 0))
    if merges_gradients(cfg) and stage >= 3:  # the API's deepspeed_mixed_config runs it in your own loop
        raise DeepSpeedConfigError(f"zero_optimization.stage={stage} partitions the parameters, and dbl-ps train reads "
                                   f"the whole model from every rank's module after each epoch: use stage 0-2 with "
                                   f"sync mixed_batch, or ZeRO-3 in your own loop (dbl.deepspeed_mixed_config)")
    for note in notes:
        log(f"DeepSpeed config: {note}")


def check_engine_schedule(cfg: RunConfig, train_samples: int) -> None:
    """Once the training set's size is known, before anything is measured: a DeepSpeed
    `scheduler` block is one error saying what it is in epochs, at a large worker's steps per
    epoch (its share of `train_samples` over B_L at the first resolution), the same refusal
    as `dbl_ps.api.deepspeed_rank_config` (the run's schedule sets the LR in epochs)."""
    if not ENGINES.traits(cfg.engine)["ds_config"] or cfg.deepspeed_config is None:
        return
    ds_config = load_ds_config(cfg.deepspeed_config)
    if ds_config.get("scheduler") is None:
        return
    batch = (cfg.batch_large() or [None])[0]
    steps = math.ceil(train_samples / cfg.dbl.workers / batch) if batch else None
    how = f"a large worker: {train_samples} samples / {cfg.dbl.workers} workers / batch {batch}" if batch else ""
    check_rank_config(ds_config, None, schedule_lr=cfg.schedule.lr, steps_per_epoch=steps, steps_how=how)


def engine_options(cfg: RunConfig, run_dir: Path, *, resuming: bool) -> dict[str, Any]:
    """What an engine needs beyond the run config (picklable: it travels to worker processes).
    Saves the DeepSpeed config of a new run into its directory: what every worker's engine
    runs (the LR from schedule.lr, no scheduler block, gradient_accumulation_steps), without
    the two batch fields that differ per worker and resolution; each DeepSpeed engine writes
    its own next to it (`deepspeed_config.worker<i>.json`)."""
    if not ENGINES.traits(cfg.engine)["ds_config"]:
        return {}
    saved = run_dir / DS_CONFIG_FILE
    if resuming and saved.is_file():
        return {"ds_config": load_ds_config(saved), "run_dir": str(run_dir)}
    ds_config = load_ds_config(cfg.deepspeed_config)
    if not resuming:
        used, _ = check_rank_config(ds_config, None, schedule_lr=cfg.schedule.lr, mixed=merges_gradients(cfg))
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_json(saved, used)
    return {"ds_config": ds_config, "run_dir": str(run_dir)}


def build_engine(cfg: RunConfig, module: nn.Module, device: torch.device, topology: Topology, *,
                 batch_size: int | None, options: dict[str, Any]) -> Engine:
    """The engine `engine:` names for one worker (or one rank of it), in every mode: `batch_size`
    is the worker's first batch in a store-mode worker process, None in a rank of a multi-rank
    job (the process group is initialised there)."""
    entry = _entry(cfg)
    if isinstance(entry.obj, type) and issubclass(entry.obj, Engine):
        engine = entry.obj(module, cfg, device, topology)  # TorchEngine's constructor
    else:
        engine = entry.obj(module, cfg, device, topology, batch_size=batch_size, options=options)
    if not isinstance(engine, Engine):
        raise LaunchError(f"engine={cfg.engine!r} built a {type(engine).__name__}, expected a "
                          "dbl_ps.training.engine.Engine (subclass Engine or TorchEngine)")
    return engine
