"""Which engine a worker trains with (`engine: torch | deepspeed | fsdp`), built the same
way in a store-mode worker process and in every rank of a multi-rank job.

The DeepSpeed engine config is resolved once per run: `deepspeed_config` (a path or a
packaged name; none = fp32 without ZeRO) is read when the run starts and saved in the
run directory as `deepspeed_config.json`, which a resumed run uses, so a resume never
depends on a file outside its directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dbl_ps.integrations.deepspeed import (
    BATCH_FIELDS,
    DS_CONFIG_FILE,
    DeepSpeedEngine,
    check_rank_config,
    load_ds_config,
    worker_engine,
)
from dbl_ps.integrations.fsdp import FSDPEngine
from dbl_ps.training.engine import Engine, TorchEngine
from dbl_ps.training.rundir import atomic_json
from dbl_ps.training.topology import LaunchError, Topology

__all__ = ["engine_options", "check_engine_config", "check_store_mode_engine", "build_worker_engine",
           "build_rank_engine"]


def check_store_mode_engine(cfg: Any) -> None:
    """The engines a worker process of one-machine `dbl-ps train` can run (not fsdp)."""
    if cfg.engine == "fsdp":
        raise LaunchError("engine 'fsdp' shards a worker over several ranks: run it under a launcher, e.g. "
                          "`torchrun --nproc_per_node N -m dbl_ps train engine=fsdp ...`")


def check_engine_config(cfg: Any, log: Callable[[str], None]) -> None:
    """Before anything is measured: a DeepSpeed config that cannot train a DBSL worker is one
    error listing every conflict, and what dbl-ps changes in it is said once."""
    if cfg.engine != "deepspeed":
        return
    _, notes = check_rank_config(load_ds_config(cfg.deepspeed_config), 1, lr_schedule_owned=True)
    for note in notes:
        log(f"DeepSpeed config: {note}")


def engine_options(cfg: Any, run_dir: Path, *, resuming: bool) -> dict[str, Any]:
    """What an engine needs beyond the run config (picklable: it travels to worker processes).
    Saves the DeepSpeed config of a new run into its directory."""
    if cfg.engine != "deepspeed":
        return {}
    saved = run_dir / DS_CONFIG_FILE
    if resuming and saved.is_file():
        return {"ds_config": load_ds_config(saved)}
    ds_config = load_ds_config(cfg.deepspeed_config)
    if not resuming:
        # What the workers use: the checked config, its batch fields left out (each worker's
        # batch is in plan.json and set per resolution).
        used, _ = check_rank_config(ds_config, 1, lr_schedule_owned=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_json(saved, {k: v for k, v in used.items() if k not in BATCH_FIELDS})
    return {"ds_config": ds_config}


def build_worker_engine(cfg: Any, module: nn.Module, device: torch.device, topology: Topology, *,
                        batch_size: int, options: dict[str, Any]) -> Engine:
    """The engine of one worker process of `dbl-ps train` (the parameter store merges)."""
    check_store_mode_engine(cfg)
    if cfg.engine == "deepspeed":
        return worker_engine(module, cfg, device, topology, batch_size=batch_size, ds_config=options["ds_config"])
    return TorchEngine(module, cfg, device, topology)


def build_rank_engine(cfg: Any, module: nn.Module, device: torch.device, topology: Topology, *,
                      options: dict[str, Any]) -> Engine:
    """The engine of one rank of a multi-rank job (the process group is initialised)."""
    if cfg.engine == "deepspeed":
        return DeepSpeedEngine(module, cfg, device, topology, ds_config=options["ds_config"], batch_size=1)
    if cfg.engine == "fsdp":
        dtype = torch.bfloat16 if cfg.fsdp.param_dtype == "bf16" else None
        return FSDPEngine(module, cfg, device, topology, param_dtype=dtype)
    return TorchEngine(module, cfg, device, topology)
