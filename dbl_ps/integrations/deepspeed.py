"""DeepSpeed engines as DBSL workers, and multi-node DBSL with per-rank batch sizes.

DeepSpeed asserts ``train_batch = micro x accumulation x data-parallel size`` and
all-reduces gradients over its data-parallel group on every step, so it cannot give
ranks different batch sizes or step counts. Here every worker's engine gets a
data-parallel group of its own rank only (``SingleRankMPU``): DeepSpeed then never
communicates during a step, its batch arithmetic is per rank (``train_batch =
micro``), and the DBSL merge runs between engines at each sync point through
``dbl_ps.training.averaging`` (``sum f_i w_i / sum f_i`` with
``torch.distributed.all_reduce``: NCCL on GPUs, gloo on CPUs).

Two uses, both through ``dbl-ps train`` with ``engine: deepspeed``:

* multi-rank (no parameter store, one node or many)::

      deepspeed --num_gpus 4 --module dbl_ps train --config configs/cifar100_resnet18.yaml engine=deepspeed \\
          deepspeed_config=gpu_bf16
      torchrun --nproc_per_node 4 -m dbl_ps train --config ... engine=deepspeed     # same, under torchrun

  Rank ``i`` is worker ``i``; ranks ``0 .. n_S-1`` use the small batch.

* inside each worker process of a one-machine ``dbl-ps train`` run (``worker_engine``),
  where the parameter store merges as usual.

Precision: with bf16/fp16 DeepSpeed keeps fp32 master weights; a sync averages the
module's (low-precision) parameters in fp32 and then reloads the masters from them
(``refresh_fp32_params``), so a sync costs one rounding to bf16/fp16 per period,
not per step. ZeRO stages 1-2 are accepted but partition over a group of one rank,
so they save nothing in collective mode; stage 3 is refused.

DeepSpeed is imported lazily (``pip install "dbl-ps[deepspeed]"``).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import socket
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn

from dbl_ps._optional import require
from dbl_ps.training.engine import Engine, loss_for, optimizer_for
from dbl_ps.training.topology import LaunchError, Topology

__all__ = ["DeepSpeedEngine", "DeepSpeedConfigError", "SingleRankMPU", "check_rank_config", "single_rank_groups",
           "worker_engine", "build_engine", "load_ds_config", "DEFAULT_CPU_CONFIG",
           "DS_CONFIG_FILE", "CONFIG_DIR"]

FEATURE = "the DeepSpeed integration (dbl_ps.integrations.deepspeed)"
DS_CONFIG_FILE = "deepspeed_config.json"  # the engine config, saved in the run directory
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"  # dbl_ps/configs/deepspeed, in the wheel
# Used when no --deepspeed-config is given: fp32, no ZeRO (what runs on a CPU with gloo).
DEFAULT_CPU_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 0.0,
    "zero_optimization": {"stage": 0},
    "bf16": {"enabled": False},
    "fp16": {"enabled": False},
    "steps_per_print": 1_000_000_000,
    "wall_clock_breakdown": False,
}


def _deepspeed() -> Any:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    return require("deepspeed", feature=FEATURE)


class SingleRankMPU:
    """A Megatron-style ``mpu`` that tells DeepSpeed its data-parallel group is this
    rank alone (and there is no model parallelism): no collective inside a step."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.group

    def get_data_parallel_world_size(self) -> int:
        return 1

    def get_data_parallel_rank(self) -> int:
        return 0

    def get_data_parallel_group_ranks(self) -> list[int]:
        return [dist.get_rank()]

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.group

    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0


def single_rank_groups() -> dist.ProcessGroup:
    """This rank's own process group. ``new_group`` is collective: every rank creates
    every one-rank group, in rank order, and keeps its own."""
    own = None
    for r in range(dist.get_world_size()):
        g = dist.new_group([r])
        if r == dist.get_rank():
            own = g
    assert own is not None
    return own


def load_ds_config(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """A DeepSpeed config dict from a JSON file, a mapping, or None (``DEFAULT_CPU_CONFIG``).
    A bare name such as ``cpu_gloo`` means ``configs/deepspeed/cpu_gloo.json``."""
    if source is None:
        return copy.deepcopy(DEFAULT_CPU_CONFIG)
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    if not path.is_file() and not path.suffix and (CONFIG_DIR / f"{path.name}.json").is_file():
        path = CONFIG_DIR / f"{path.name}.json"
    if not path.is_file():
        raise LaunchError(f"DeepSpeed config {str(source)!r} does not exist (e.g. configs/deepspeed/cpu_gloo.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LaunchError(f"DeepSpeed config {str(path)!r} is not valid JSON: {exc}") from None


class DeepSpeedConfigError(LaunchError):
    """A DeepSpeed config that cannot train a DBSL rank (every conflict in one message)."""


# Batch fields DeepSpeed checks against each other and the data-parallel size; each DBSL
# rank is a data-parallel world of one with the plan's batch, so dbl-ps sets them.
BATCH_FIELDS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def check_rank_config(ds_config: Mapping[str, Any], batch_size: int, *,
                      lr_schedule_owned: bool = False) -> tuple[dict[str, Any], list[str]]:
    """`(config, notes)`: the config DeepSpeed accepts for one DBSL rank training with
    `batch_size` (micro batch = the rank's batch, no accumulation, data-parallel size 1),
    and one note per value dbl-ps changed. `lr_schedule_owned` (dbl-ps train): the run's
    schedule sets the LR, so a `scheduler` block is dropped (said in a note); the
    `optimizer` block, if any, is DeepSpeed's to build. Raises `DeepSpeedConfigError`
    listing every conflict at once."""
    conf = copy.deepcopy(dict(ds_config))
    conflicts, notes = [], []
    zero = conf.get("zero_optimization", {})
    stage = int(zero.get("stage", 0)) if isinstance(zero, Mapping) else 0
    if stage >= 3:
        conflicts.append(f"zero_optimization.stage={stage} partitions parameters across a data-parallel group; a "
                         f"DBSL rank is its own group of one: use stage 0-2 (or FSDP groups: engine fsdp)")
    for key in ("pipeline", "tensor_parallel"):
        if conf.get(key):
            conflicts.append(f"{key!r} splits one model over several ranks; a DBSL rank trains a whole model")
    if conf.get("bf16", {}).get("enabled") and conf.get("fp16", {}).get("enabled"):
        conflicts.append("bf16.enabled and fp16.enabled are both true; choose one")
    if conflicts:
        raise DeepSpeedConfigError("the DeepSpeed config cannot train a DBSL rank:\n  - " + "\n  - ".join(conflicts))
    for key in BATCH_FIELDS:
        wanted = 1 if key == "gradient_accumulation_steps" else int(batch_size)
        if key in conf and conf[key] != wanted:
            what = "1 (one optimizer step per planned batch)" if key == "gradient_accumulation_steps" else \
                "the rank's planned batch"
            notes.append(f"{key} {conf[key]} -> {what}")
        conf[key] = wanted
    if lr_schedule_owned and "scheduler" in conf:
        notes.append(f"scheduler {conf['scheduler'].get('type', '?')!r} removed: the run's schedule (schedule.*) "
                     f"sets the LR")
        del conf["scheduler"]
    if lr_schedule_owned and "optimizer" in conf:
        notes.append(f"optimizer {conf['optimizer'].get('type', '?')!r} is built by DeepSpeed from the config "
                     f"(optim.* is not used); its LR follows the run's schedule")
    if stage > 0 and "optimizer" not in conf:
        conf.setdefault("zero_allow_untested_optimizer", True)  # torch SGD/AdamW as a client optimizer
        conf.setdefault("zero_force_ds_cpu_optimizer", False)
    conf.setdefault("steps_per_print", 1_000_000_000)
    return conf, notes


def _prepare_ds_config(ds_config: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
    """The per-rank config of a `dbl-ps train` worker (checked and noted up front by
    `check_rank_config` when the run starts)."""
    return check_rank_config(ds_config, batch_size, lr_schedule_owned=True)[0]


class DeepSpeedEngine(Engine):
    """A DeepSpeed engine training one worker's module with its own batch size."""

    def __init__(self, module: nn.Module, cfg: Any, device: torch.device, topology: Topology, *,
                 ds_config: Any = None, batch_size: int = 1, group: dist.ProcessGroup | None = None):
        ds = _deepspeed()
        if group is None:
            group = single_rank_groups()
        self.device = device
        self.topology = topology
        module = module.to(device)
        self.ds_config = _prepare_ds_config(load_ds_config(ds_config), batch_size)
        # The config's optimizer block, where there is one, is DeepSpeed's to build; else ours (optim.*).
        optimizer = None if "optimizer" in self.ds_config else optimizer_for(module, cfg)
        # With LOCAL_SIZE set (the deepspeed launcher sets it), DeepSpeed's CPU backend creates
        # 66 MiB shared-memory all-reduce buffers per rank in /dev/shm and never removes
        # them; our collectives go through torch.distributed, so hide it during set-up.
        local_size = os.environ.pop("LOCAL_SIZE", None)
        try:
            self.engine, self.optimizer, _, _ = ds.initialize(
                model=module, optimizer=optimizer, config=self.ds_config, mpu=SingleRankMPU(group),
                model_parameters=module.parameters() if optimizer is None else None, dist_init_required=False)
        finally:
            if local_size is not None:
                os.environ["LOCAL_SIZE"] = local_size
        self.module = self.engine.module
        self.dtype = next(self.module.parameters()).dtype
        if self.dtype != torch.float32:
            # DeepSpeed casts parameters only; BatchNorm needs its running statistics in the
            # same dtype as its weight (bf16/fp16 statistics, averaged in fp32 at syncs).
            for m in self.module.modules():
                for name, b in m.named_buffers(recurse=False):
                    if b.is_floating_point():
                        setattr(m, name, b.to(self.dtype))
        self.loss_fn = loss_for(cfg)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.engine(images.to(self.dtype))
        loss = self.loss_fn(out.float(), labels)
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach(), out.detach()

    def set_batch_size(self, batch_size: int) -> None:
        # Only DeepSpeed's bookkeeping (throughput timers, its own loaders): the forward
        # takes any batch, so a resolution boundary needs no new engine or process.
        setter = getattr(self.engine, "set_train_micro_batch_size", None)  # DeepSpeed >= 0.12
        if callable(setter):
            setter(int(batch_size))

    def after_sync(self) -> None:
        refresh = getattr(self.optimizer, "refresh_fp32_params", None)
        if callable(refresh):  # bf16/fp16/ZeRO: fp32 masters := the averaged module
            refresh()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore what ``optimizer_state`` returned. ZeRO and bf16 optimizers take one
        state per data-parallel rank (here: one), plain ones a single dict."""
        first = next(iter(inspect.signature(self.optimizer.load_state_dict).parameters), "")
        self.optimizer.load_state_dict([state] if first == "state_dict_list" else state)


def worker_engine(module: nn.Module, cfg: Any, device: torch.device | str, topology: Topology, *,
                  batch_size: int, ds_config: Any = None) -> DeepSpeedEngine:
    """A DeepSpeed engine for one worker process of ``dbl-ps train`` (``engine: deepspeed``).

    The worker is not part of a multi-process job, so a one-process group is created
    (on a free local port) when torch.distributed is not initialised yet: NCCL when the
    engine trains on a GPU, gloo on the CPU. DeepSpeed all-reduces the gradients over its
    data-parallel group on every step, even a group of one; over gloo that is a round trip
    of every gradient through host memory (an fp32 ResNet-18 worker on an H100 ran at
    0.68x of plain torch with gloo, 0.85x with NCCL; benchmarks/RESULTS.md)."""
    device = torch.device(device)
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        store = dist.TCPStore("127.0.0.1", port, 1, True)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)
    # DeepSpeed insists on the launcher's variables even for one process.
    for name, value in (("LOCAL_RANK", "0"), ("RANK", str(dist.get_rank())), ("WORLD_SIZE", str(dist.get_world_size()))):
        os.environ.setdefault(name, value)
    return DeepSpeedEngine(module, cfg, device, topology, ds_config=ds_config, batch_size=batch_size,
                           group=dist.group.WORLD if dist.get_world_size() == 1 else None)


def build_engine(module: nn.Module, cfg: Any, device: torch.device, topology: Topology, *,
                 batch_size: int | None, options: dict[str, Any]) -> DeepSpeedEngine:
    """`engine: deepspeed` (dbl_ps.registry.ENGINES): in a store-mode worker process
    (`batch_size` is its batch) a one-process group of its own (``worker_engine``); in a rank
    of a multi-rank job (`batch_size` None) an engine on the initialised process group, whose
    batch the loop sets per resolution. ``options["ds_config"]`` is the run's DeepSpeed config."""
    if batch_size is None:
        return DeepSpeedEngine(module, cfg, device, topology, ds_config=options["ds_config"], batch_size=1)
    return worker_engine(module, cfg, device, topology, batch_size=batch_size, ds_config=options["ds_config"])
