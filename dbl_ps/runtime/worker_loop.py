"""What a worker trains, built one way for every mode: a store-mode worker process and every
rank of a multi-rank job call `build_worker_loop` with their synchronizer and callbacks.

    loop = build_worker_loop(cfg, WorkerPart(...), synchronizer=sync, callbacks=[...])
    for report in loop.run(start_epoch): ...

It builds the engine (`engine:` through the registry), warms up every shape the plan trains,
restores the worker's own state when resuming (`Resume`: the checkpoint folder and how many
workers wrote it), makes the share loader and the loop, and starts the loop from the global
model. A start is fresh exactly when there is no checkpoint folder to resume from, in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from dbl_ps.config import RunConfig
from dbl_ps.data import Split
from dbl_ps.planner import Plan
from dbl_ps.runtime.engine_setup import build_engine
from dbl_ps.schedule import ScheduleSpec
from dbl_ps.shards import share_loader_for
from dbl_ps.training.algorithms import worker_callbacks
from dbl_ps.training.events import Callback
from dbl_ps.training.loop import WorkerLoop
from dbl_ps.training.sync import Synchronizer
from dbl_ps.training.topology import Topology

__all__ = ["Resume", "WorkerPart", "build_worker_loop"]


@dataclass(frozen=True)
class Resume:
    """Where a resumed worker's own state (momentum, integer buffers) lies: the checkpoint's
    epoch folder and the number of workers that wrote it (a resume onto another number is
    re-planned and starts with fresh momentum)."""

    folder: Path
    workers: int


@dataclass
class WorkerPart:
    """One worker's (or rank's) part of a prepared run. `module`: its copy of the model;
    `global_state`: the global model to load into the engine before training (a resumed rank),
    None where the synchronizer's start hands it over (the store); `batch_size`: the worker's
    first batch where the engine takes it at build time (store-mode workers), else None."""

    module: nn.Module
    plan: Plan
    spec: ScheduleSpec
    train: Split
    transform: Any
    in_channels: int
    topology: Topology
    device: torch.device
    engine_options: dict[str, Any]
    start_epoch: int
    resume: Resume | None = None
    global_state: dict[str, torch.Tensor] | None = None
    batch_size: int | None = None


def build_worker_loop(cfg: RunConfig, part: WorkerPart, *, synchronizer: Synchronizer, callbacks: Iterable[Callback] = (),
                      log: Callable[[str], None] | None = None) -> WorkerLoop:
    """The worker loop of `part`, started from the global model (see the module docstring)."""
    plan, spec, worker = part.plan, part.spec, part.topology.worker
    engine = build_engine(cfg, part.module, part.device, part.topology, batch_size=part.batch_size,
                          options=part.engine_options)
    first = plan[spec.resolutions[0]]
    # ShareLoader over the training split, or (data.source: shards) the shard set of each resolution.
    loader = share_loader_for(cfg.data, part.train, part.transform, resolutions=spec.resolutions, worker=worker,
                              shares=first.shares, batch_size=first.batches[worker], resolution=spec.resolutions[0],
                              seed=cfg.seed, epoch=part.start_epoch, device=part.device)
    loop = WorkerLoop(engine=engine, synchronizer=synchronizer, loader=loader, plan=plan, spec=spec, seed=cfg.seed,
                      callbacks=[*worker_callbacks(cfg), *callbacks], restart_momentum=cfg.optim.restart_momentum,
                      in_channels=part.in_channels)
    compile_seconds = loop.warm_up()
    if compile_seconds and log is not None:
        log(f"worker {worker}: torch.compile warmed up in {compile_seconds:.1f} s")
    if part.global_state is not None:
        engine.load_full_state_dict(part.global_state)
    if part.resume is not None:
        engine.load_worker_state(part.resume.folder, part.resume.workers)
    loop.start(fresh=part.resume is None)
    return loop
