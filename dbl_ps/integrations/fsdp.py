"""FSDP2 DBSL workers: a worker is a group of ranks sharding one model; groups merge per sync period.

A 2-D device mesh ``(replicate, shard)`` of shape ``(workers, ranks_per_worker)``:
rank ``r`` is member ``r % ranks_per_worker`` of worker group ``r // ranks_per_worker``.

* ``shard`` axis (inside a worker group): ``fully_shard`` (FSDP2) on that 1-D sub-mesh
  shards parameters, gradients and optimizer state and runs the group in lockstep;
  each member trains on its slice of the group's batch (the plan's ``b_i``), so the
  group is one data-parallel worker with batch ``b_i``.
* ``replicate`` axis (across groups): nothing on every step (that is what lets
  groups take different numbers of steps with different batch sizes); at each sync
  point every member replaces its local shard by the share-weighted mean of the same
  shard across groups, ``sum f_i w_i / sum f_i`` (``averaging.weighted_average_`` on
  the replicate process group). BatchNorm statistics (replicated, not sharded, and
  different on each member) are averaged over the whole world with the same weights,
  which is the weighted mean over groups of each group's member mean.

Groups ``0 .. n_S-1`` are the small-batch workers. The loop is the one every
worker runs (``dbl_ps.training.loop``); the merge is the collective synchronizer's.

Checkpoints: the global model is ``model.pt`` like every engine's (gathered whole on
rank 0 and loaded whole by every rank, so any shard layout reads it), and each group's
momentum is a sharded ``torch.distributed.checkpoint`` folder ``optim_group<g>/``
written by that group's ranks. Loading reshards, so a run resumes onto another
``ranks_per_worker`` or another number of groups (a group without a saved
counterpart takes the momentum of the last saved group).

    torchrun --nproc_per_node 4 -m dbl_ps train --config FILE engine=fsdp fsdp.ranks_per_worker=2

``sync: mixed_batch`` (gradients merged inside every step, `dbl_ps.training.gradient_weighting`):
every rank is its own worker with its planned share of the global batch, and the model is
sharded over every rank (a 1-D mesh of the world); FSDP2's reduce-scatter averages the
gradients over the ranks, so each rank's loss is scaled by ``W b_i / B``, and a step split
into micro-batches reduces in its last backward only. The optimizer state is one sharded
checkpoint of the whole world, ``optim_world/``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from dbl_ps.calibrate import StepFactory, TrainStep
from dbl_ps.config import RunConfig
from dbl_ps.integrations.fsdp_settings import FSDPSettings
from dbl_ps.models import residual_block_classes
from dbl_ps.training.averaging import split_params_buffers, weighted_average_
from dbl_ps.training.engine import Engine, loss_for, merges_gradients, optimizer_for
from dbl_ps.training.gradient_weighting import loss_scale_for
from dbl_ps.training.topology import Topology

__all__ = ["FSDPEngine", "build_engine", "build_mesh", "apply_fsdp", "wrap_units", "calibration_steps"]


def build_mesh(topo: Topology, device: torch.device) -> Any:
    """The ``(replicate, shard)`` mesh of shape ``(workers, ranks_per_worker)``."""
    return init_device_mesh(device.type, (topo.workers, topo.group_size), mesh_dim_names=("replicate", "shard"))


def wrap_units(module: nn.Module, *, classes: Sequence[str] = (), min_params: int = 1_000_000) -> list[nn.Module]:
    """The submodules sharded one by one before the root (FSDP2 gathers one unit's parameters
    at a time, so the units bound the peak memory):

    * `classes` given: every submodule whose class name is in it;
    * else the residual blocks where the model has them (ours and torchvision's);
    * else by size: bottom-up, every submodule holding at least `min_params` parameters not
      already in a unit below it (what torch's size-based auto-wrap policy does for FSDP1).
    """
    if classes:
        wanted = set(classes)
        return [m for m in module.modules() if m is not module and type(m).__name__ in wanted]
    blocks = residual_block_classes(module)
    if blocks:
        return [m for m in module.modules() if isinstance(m, blocks)]
    units: list[nn.Module] = []

    def unwrapped_params(m: nn.Module) -> int:
        own = sum(p.numel() for p in m.parameters(recurse=False))
        below = sum(unwrapped_params(child) for child in m.children())
        if m is not module and own + below >= min_params:
            units.append(m)
            return 0
        return own + below

    unwrapped_params(module)
    return units


def apply_fsdp(module: nn.Module, shard_mesh: Any, *, param_dtype: torch.dtype | None = None,
               classes: Sequence[str] = (), min_params: int = 1_000_000) -> nn.Module:
    """``fully_shard`` every unit of ``wrap_units``, then the root, on the 1-D ``shard`` mesh."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    if classes:
        present = {type(m).__name__ for m in module.modules()}
        missing = sorted(set(classes) - present)
        if missing:
            raise ValueError(f"fsdp.wrap_classes={list(classes)}: the model has no module of class "
                             f"{', '.join(missing)} (it has {', '.join(sorted(present))})")
    for m in wrap_units(module, classes=classes, min_params=min_params):
        fully_shard(m, mesh=shard_mesh, mp_policy=mp)
    fully_shard(module, mesh=shard_mesh, mp_policy=mp)
    if param_dtype is not None:
        # FSDP2 casts parameters for compute, not buffers; BatchNorm needs its running
        # statistics in its weight's dtype (they are kept in param_dtype, merged in fp32).
        for m in module.modules():
            for name, b in m.named_buffers(recurse=False):
                if b.is_floating_point():
                    setattr(m, name, b.to(param_dtype))
    return module


class FSDPEngine(Engine):
    """One member of a worker group: an FSDP2-sharded module and SGD on its shards."""

    def __init__(self, module: nn.Module, cfg: RunConfig, device: torch.device, topo: Topology, *,
                 param_dtype: torch.dtype | None = None, shard_world: bool = False):
        self.topology = topo
        self.device = device
        # shard_world (sync mixed_batch): one model sharded over every rank, each rank its own worker.
        self.shard_world = shard_world
        if shard_world:
            self.mesh = init_device_mesh(device.type, (topo.world,), mesh_dim_names=("shard",))
            shard_mesh = self.mesh
            self.replicate_group = None
        else:
            self.mesh = build_mesh(topo, device)
            shard_mesh = self.mesh["shard"]
            self.replicate_group = self.mesh.get_group("replicate")
        self.shard_group = self.mesh.get_group("shard")
        settings = cfg.settings(FSDPSettings)
        self.module = apply_fsdp(module.to(device), shard_mesh, param_dtype=param_dtype,
                                 classes=settings.wrap_classes, min_params=settings.wrap_min_params)
        self.optimizer = optimizer_for(self.module, cfg)
        self.loss_fn = loss_for(cfg)

    # -- training

    def local_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gs, m = self.topology.group_size, self.topology.member
        if gs == 1:
            return images, labels
        if images.shape[0] < gs:  # a last partial batch smaller than the group: every member takes all of it
            return images, labels
        return images.tensor_split(gs)[m], labels.tensor_split(gs)[m]

    # -- gradients merged inside every step (sync mixed_batch)

    def gradient_sync(self, weight: float) -> None:
        if not self.shard_world:
            raise RuntimeError("an FSDP engine merges gradients inside every step only when built with "
                               "shard_world=True (sync mixed_batch)")
        self.set_gradient_weight(weight)

    def set_gradient_weight(self, weight: float) -> None:
        self.gradient_loss_scale = loss_scale_for(weight, self.topology.world)  # FSDP2 averages over the world

    def no_gradient_sync(self) -> contextlib.AbstractContextManager[Any]:
        return _no_reduce(self.module)

    # -- the merge

    def sync_tensors(self) -> list[torch.Tensor]:
        params, _ = split_params_buffers(self.module)
        return params

    def sync_group(self) -> dist.ProcessGroup | None:
        return self.replicate_group

    def buffer_sync(self, weight: float) -> None:
        _, buffers = split_params_buffers(self.module)
        weighted_average_(buffers, weight, None)

    # -- state

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Rank 0 gets the whole model on the CPU (all-gathers inside every group)."""
        sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast("dict[str, torch.Tensor]", sd) if self.topology.is_main else None  # a model's: tensors

    def full_state_dict_all(self) -> dict[str, torch.Tensor]:
        """Every rank gets its group's whole model (for checks)."""
        sd = cast("dict[str, torch.Tensor]", get_model_state_dict(self.module, options=StateDictOptions(
            full_state_dict=True)))  # a model's state dict: tensors
        return {k: v.detach().cpu().clone() for k, v in sd.items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        # every rank read the same model.pt: each keeps its own shards of it
        set_model_state_dict(self.module, cast(Any, state), options=StateDictOptions(full_state_dict=True))

    def _init_momentum(self) -> None:
        # SGD creates momentum lazily; DCP loads only into existing state.
        for group in self.optimizer.param_groups:
            if group["momentum"]:
                for p in group["params"]:
                    st = self.optimizer.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = torch.zeros_like(p)

    def _optim_folder(self, folder: Path, worker: int) -> Path:
        return folder / ("optim_world" if self.shard_world else f"optim_group{worker}")

    def save_worker_state(self, folder: Path) -> None:
        self._init_momentum()
        # dcp.save/load are exported at run time but missing from the stub's __all__
        dcp.save({"optim": get_optimizer_state_dict(self.module, self.optimizer)},  # type: ignore[attr-defined]
                 checkpoint_id=str(self._optim_folder(folder, self.topology.worker)), process_group=self.shard_group)

    def load_worker_state(self, folder: Path, saved_workers: int) -> bool:
        source = min(self.topology.worker, saved_workers - 1)
        self._init_momentum()
        osd = {"optim": get_optimizer_state_dict(self.module, self.optimizer)}
        dcp.load(osd, checkpoint_id=str(self._optim_folder(folder, source)),  # type: ignore[attr-defined]
                 process_group=self.shard_group)
        set_optimizer_state_dict(self.module, self.optimizer, osd["optim"])
        return True


def build_engine(module: nn.Module, cfg: RunConfig, device: torch.device, topo: Topology, *,
                 batch_size: int | None, options: dict[str, Any]) -> FSDPEngine:
    """`engine: fsdp` (dbl_ps.registry.ENGINES; ranks of a multi-rank job only, registered
    with store_mode=False): the compute dtype from fsdp.param_dtype."""
    return FSDPEngine(module, cfg, device, topo, param_dtype=_param_dtype(cfg), shard_world=merges_gradients(cfg))


def _param_dtype(cfg: RunConfig) -> torch.dtype | None:
    return torch.bfloat16 if cfg.settings(FSDPSettings).param_dtype == "bf16" else None


@contextlib.contextmanager
def calibration_steps(cfg: RunConfig, device: str) -> Iterator[StepFactory]:
    """The step a run's time model is measured with under `engine: fsdp` (the registry's
    `calibration` trait): the FSDP2 engine of the run's settings (`fsdp.param_dtype`, the wrap
    units, its optimizer and loss; the LR at zero) on this rank's group's shard mesh, each
    member taking its part of the worker's batch, as in training. The merge between workers
    is not in the step, so a worker times its own speed, not the wait for slower ones (with
    `sync: mixed_batch`, whose ranks are each a worker, that is the rank's compute alone).
    Every rank of the job measures at once (a run that measures does so on every rank), so
    the group's collectives meet; the grid of batches is the same on every rank."""
    if not dist.is_initialized():
        raise RuntimeError("engine fsdp measures its step under a launcher only (torchrun), where the process "
                           "group is initialised")
    rank, world = dist.get_rank(), dist.get_world_size()
    topo = Topology(rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", rank)),
                    group_size=cfg.settings(FSDPSettings).ranks_per_worker)

    def make_step(model: nn.Module, *, device: str, precision: str, channels_last: bool,
                  compile: bool) -> TrainStep:
        # precision, channels_last and compile keep their defaults with fsdp (fsdp.param_dtype sets the dtype)
        # shard_world False: the group's own mesh, also where the run (sync mixed_batch) shards over every rank
        engine = FSDPEngine(model, cfg, torch.device(device), topo, param_dtype=_param_dtype(cfg), shard_world=False)
        engine.set_lr(0.0)

        def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return engine.train_step(*engine.local_batch(images, labels))

        return step

    yield make_step


@contextlib.contextmanager
def _no_reduce(module: Any) -> Iterator[None]:  # an FSDPModule
    """FSDP2 without the gradient reduce-scatter (all but a step's last micro-batch)."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
