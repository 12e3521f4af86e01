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

import contextlib
import copy
import inspect
import json
import math
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, cast

import torch
import torch.distributed as dist
from torch import nn

from dbl_ps._optional import require
from dbl_ps.calibrate import StepFactory, TrainStep
from dbl_ps.config import RunConfig
from dbl_ps.integrations.deepspeed_settings import DeepSpeedSettings
from dbl_ps.training.engine import Engine, EngineSetup, loss_for, merges_gradients, optimizer_for, split_batch
from dbl_ps.training.gradient_weighting import loss_scale_for
from dbl_ps.training.rundir import atomic_json
from dbl_ps.training.topology import LaunchError, Topology

__all__ = ["DeepSpeedEngine", "DeepSpeedConfigError", "SingleRankMPU", "check_rank_config", "single_rank_groups",
           "optimizer_lr", "scheduler_in_epochs",
           "worker_engine", "build_engine", "calibration_steps", "DeepSpeedSetup", "load_ds_config", "DEFAULT_CPU_CONFIG",
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
    assert isinstance(own, dist.ProcessGroup)  # a member gets the group (others a non-member marker)
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


# Batch fields DeepSpeed checks against each other and the data-parallel size. Each DBSL rank
# is a data-parallel world of one with the plan's batch b, so dbl-ps sets these two per rank
# (micro = ceil(b / accumulation), train = micro x accumulation) and keeps the user's
# gradient_accumulation_steps: each planned batch runs as that many micro-batches.
PER_RANK_FIELDS = ("train_batch_size", "train_micro_batch_size_per_gpu")


def accumulation_steps(ds_config: Mapping[str, Any]) -> int:
    """The config's `gradient_accumulation_steps` (1 when absent)."""
    return int(ds_config.get("gradient_accumulation_steps", 1))


def rank_batch_fields(batch_size: int, accumulation: int) -> dict[str, int]:
    """DeepSpeed's batch fields for a rank whose planned batch is `batch_size`, split into
    `accumulation` micro-batches (sizes differ by at most one; the largest is DeepSpeed's
    micro batch, its `train_batch_size` the micro batch x accumulation, as it asserts)."""
    micro = -(-int(batch_size) // accumulation)
    return {"train_batch_size": micro * accumulation, "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": accumulation}


def optimizer_lr(ds_config: Mapping[str, Any]) -> float | None:
    """The LR of the config's `optimizer` block (`optimizer.params.lr`), None without one."""
    optimizer = ds_config.get("optimizer")
    params = optimizer.get("params") if isinstance(optimizer, Mapping) else None
    lr = params.get("lr") if isinstance(params, Mapping) else None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def scheduler_in_epochs(scheduler: Any, steps_per_epoch: float | None, *, run: bool,
                        steps_how: str = "") -> str:
    """Why a DeepSpeed `scheduler` block is refused, and what it is in epochs with the numbers:
    DeepSpeed steps it once per optimizer step, and DBSL workers take different numbers of
    steps per epoch (a small-batch worker would warm up in a fraction of the others' epochs).
    `steps_per_epoch`: a large worker's (None: not known, the formula is given); `run`:
    phrased as `dbl-ps train` keys (else as a ScheduleSpec for `ScheduleLR`); `steps_how`:
    where the steps per epoch come from, said after the number."""
    block = scheduler if isinstance(scheduler, Mapping) else {}
    kind = block.get("type", "?") if block else scheduler
    params: Mapping[str, Any] = block["params"] if isinstance(block.get("params"), Mapping) else {}
    head = (f"scheduler {kind!r} counts optimizer steps, and DBSL workers take different numbers of steps per "
            f"epoch, so each would follow it at its own pace (a small-batch worker warms up in a fraction of the "
            f"epochs the others do)")
    how = (f"at {steps_per_epoch:g} optimizer steps per epoch{f' ({steps_how})' if steps_how else ''}"
           if steps_per_epoch else "")

    def epochs(steps: float) -> str:
        if not steps_per_epoch:
            return f"{steps:g} / (your steps per epoch) epochs"
        return f"{steps / steps_per_epoch:.3g} epochs"

    instead = ("remove the block; the run's schedule sets the LR in epochs, the same on every worker"
               if run else "remove the block and pass lr_scheduler=lambda opt: dbl.ScheduleLR(opt, spec, "
               "mine.steps) to deepspeed.initialize (epoch units: every rank at the same LR at the same fraction "
               "of its epoch)")
    if kind not in ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR"):
        return f"{head}: {instead}, as schedule.lr, schedule.warmup_epochs and schedule.milestones" + \
            (f" ({how})" if how else "")
    steps = float(params.get("warmup_num_steps", 1000))  # DeepSpeed's defaults where the block leaves them out
    if kind == "WarmupCosineLR":
        peak, start = None, float(params.get("warmup_min_ratio", 0.0))
    else:
        peak = float(params.get("warmup_max_lr", 0.001))
        start = float(params.get("warmup_min_lr", 0.0)) / peak if peak > 0 else 0.0
    parts = [f"its warm-up of {steps:g} steps is {epochs(steps)}{' ' + how if how else ''}"]
    if steps_per_epoch:
        warm = steps / steps_per_epoch
        if run:
            keys = [f"schedule.warmup_epochs={max(1, int(warm + 0.5)) if steps > 0 else 0}",
                    f"schedule.warmup_start_factor={start:.3g}"] + ([f"schedule.lr={peak:g}"] if peak else [])
            parts.append("in epochs: " + " ".join(keys))
        else:
            keys = [f"warmup_epochs={warm:.3g}", f"warmup_start_factor={start:.3g}"] + \
                ([f"base_lr={peak:g}"] if peak else [])
            parts.append(f"in epochs: ScheduleSpec({', '.join(keys)}, ...)")
    if params.get("warmup_type", "log") == "log":
        parts.append("dbl-ps warms up linearly (warmup_type 'log' has no epoch form)")
    if kind in ("WarmupDecayLR", "WarmupCosineLR") and "total_num_steps" in params:
        total = float(params["total_num_steps"])
        decay = "a linear decay to 0" if kind == "WarmupDecayLR" else "a cosine decay"
        parts.append(f"then {decay} by step {total:g} ({epochs(total)}): dbl-ps decays by gamma at milestones "
                     f"(schedule.epochs, schedule.milestones, schedule.gamma)")
    return f"{head}: {instead}; " + "; ".join(parts)


def check_rank_config(ds_config: Mapping[str, Any], batch_size: int | None, *,
                      schedule_lr: float | None = None, steps_per_epoch: float | None = None,
                      steps_how: str = "", mixed: bool = False) -> tuple[dict[str, Any], list[str]]:
    """`(config, notes)`: the config DeepSpeed accepts for one DBSL rank whose planned batch is
    `batch_size` (data-parallel size 1; the user's `gradient_accumulation_steps` kept: the
    batch runs as that many micro-batches of ceil(batch / steps)), and one note per value
    dbl-ps changed or kept that a user may wonder about. `batch_size` None: not known yet (a
    run's check before it is planned): the per-rank batch fields are left out.

    A `scheduler` block is refused, in `dbl-ps train` and a user's loop alike: DeepSpeed steps
    it per optimizer step, and DBSL ranks take different numbers of steps per epoch; the error
    says what it is in epochs (`scheduler_in_epochs`, with the numbers when `steps_per_epoch`,
    a large rank's, is given).

    `schedule_lr` (dbl-ps train): the run's schedule sets the LR in epochs, and the `optimizer`
    block (DeepSpeed builds it) starts at this LR. `dbl-ps train` takes the block's own LR as
    `schedule.lr` unless the run config sets one (`dbl_ps.config`), so the two differ only
    when the user set both; that is said in a note with both values. Raises
    `DeepSpeedConfigError` listing every conflict at once.

    `mixed`: a rank of mixed-batch data parallelism instead (`dbl_ps.mixed_api`): one
    data-parallel group over every rank, so ZeRO stage 3 partitions over it and a scheduler
    steps alike on every rank (all take the same steps); the caller sets `train_batch_size`."""
    conf = copy.deepcopy(dict(ds_config))
    conflicts, notes = [], []
    zero = conf.get("zero_optimization", {})
    stage = int(zero.get("stage", 0)) if isinstance(zero, Mapping) else 0
    if stage >= 3 and not mixed:
        conflicts.append(f"zero_optimization.stage={stage} partitions parameters across a data-parallel group; a "
                         f"DBSL rank is its own group of one: use stage 0-2 (or FSDP groups: engine fsdp)")
    for key in ("pipeline", "tensor_parallel"):
        if conf.get(key):
            conflicts.append(f"{key!r} splits one model over several ranks; a DBSL rank trains a whole model")
    if conf.get("bf16", {}).get("enabled") and conf.get("fp16", {}).get("enabled"):
        conflicts.append("bf16.enabled and fp16.enabled are both true; choose one")
    accumulation = conf.get("gradient_accumulation_steps", 1)
    if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
        conflicts.append(f"gradient_accumulation_steps={accumulation!r}: give a whole number >= 1 (micro-batches "
                         f"per planned batch)")
        accumulation = 1
    elif batch_size is not None and batch_size < accumulation:
        conflicts.append(f"gradient_accumulation_steps={accumulation} splits each planned batch into "
                         f"{accumulation} micro-batches, but this rank's planned batch is {batch_size}: use "
                         f"gradient_accumulation_steps <= {batch_size}")
    if conf.get("scheduler") is not None and (schedule_lr is not None or not mixed):  # the mixed API steps it alike
        conflicts.append(scheduler_in_epochs(conf["scheduler"], steps_per_epoch, run=schedule_lr is not None,
                                             steps_how=steps_how))
    if conflicts:
        raise DeepSpeedConfigError("the DeepSpeed config cannot train a DBSL rank:\n  - " + "\n  - ".join(conflicts))
    if accumulation > 1:
        notes.append(f"gradient_accumulation_steps {accumulation} kept: each rank's planned batch runs as "
                     f"{accumulation} micro-batches of about batch/{accumulation}, one optimizer step per planned "
                     f"batch (losses weighted by micro-batch size: the whole batch's gradient)")
    clipping = conf.get("gradient_clipping", 0.0)
    if isinstance(clipping, (int, float)) and clipping > 0:
        notes.append(f"gradient_clipping {clipping:g} kept: DeepSpeed clips each rank's gradient norm at "
                     f"{clipping:g} before every optimizer step")
    fields = rank_batch_fields(batch_size if batch_size is not None else accumulation, accumulation)
    for key in PER_RANK_FIELDS:
        what = ("the rank's planned batch" if accumulation == 1 else
                f"ceil(planned batch / {accumulation})" if key == "train_micro_batch_size_per_gpu" else
                f"the micro batch x {accumulation}")
        if key in conf and (batch_size is None or conf[key] != fields[key]):
            notes.append(f"{key} {conf[key]} -> {what}")
        if batch_size is None:  # not known yet: each rank's own
            conf.pop(key, None)
        else:
            conf[key] = fields[key]
    conf["gradient_accumulation_steps"] = accumulation
    optimizer = conf.get("optimizer")
    if schedule_lr is not None and isinstance(optimizer, Mapping):
        params = dict(optimizer.get("params", {}))
        own = optimizer_lr(conf)
        if own is None:
            notes.append(f"optimizer {optimizer.get('type', '?')} has no lr in the DeepSpeed config: it starts at "
                         f"schedule.lr {schedule_lr:g} (DeepSpeed builds this optimizer, optim.* is not used)")
        elif own != float(schedule_lr):
            notes.append(f"optimizer {optimizer.get('type', '?')} lr {own:g} in the DeepSpeed config replaced by "
                         f"schedule.lr {schedule_lr:g}, which the run config sets (leave schedule.lr out to train at "
                         f"the JSON's lr; DeepSpeed builds this optimizer, optim.* is not used)")
        conf["optimizer"] = {**optimizer, "params": {**params, "lr": float(schedule_lr)}}
    if stage > 0 and "optimizer" not in conf:
        conf.setdefault("zero_allow_untested_optimizer", True)  # torch SGD/AdamW as a client optimizer
        conf.setdefault("zero_force_ds_cpu_optimizer", False)
    conf.setdefault("steps_per_print", 1_000_000_000)
    return conf, notes


def _prepare_ds_config(ds_config: Mapping[str, Any], batch_size: int | None, schedule_lr: float, *,
                       ranks: int = 1) -> dict[str, Any]:
    """The config a `dbl-ps train` worker's engine starts with (checked and noted up front by
    `check_rank_config` when the run starts). `batch_size` None (a rank of a multi-rank job,
    whose batch the loop sets per resolution): the batch fields of a placeholder batch.
    `ranks` > 1 (sync mixed_batch): one data-parallel group of that many ranks, whose size
    DeepSpeed multiplies into `train_batch_size`."""
    conf = check_rank_config(ds_config, None, schedule_lr=schedule_lr, mixed=ranks > 1)[0]
    accumulation = accumulation_steps(conf)
    fields = rank_batch_fields(batch_size if batch_size is not None else accumulation, accumulation)
    fields["train_batch_size"] *= ranks
    return {**conf, **fields}


def worker_config_file(worker: int) -> str:
    """The run directory's record of worker `worker`'s DeepSpeed batch fields per resolution."""
    return f"deepspeed_config.worker{worker}.json"


def _too_small(accumulation: int, batches: dict[int, list[int]]) -> str:
    named = "; ".join(f"worker {w}: {bs}" for w, bs in batches.items())
    return (f"gradient_accumulation_steps={accumulation} in the DeepSpeed config splits each planned batch into "
            f"{accumulation} micro-batches, but the plan gives smaller batches ({named}): use "
            f"gradient_accumulation_steps <= {min(b for bs in batches.values() for b in bs)}")


class DeepSpeedEngine(Engine):
    """A DeepSpeed engine training one worker's module with its own batch size."""

    def __init__(self, module: nn.Module, cfg: RunConfig, device: torch.device, topology: Topology, *,
                 ds_config: Any = None, batch_size: int | None = None, group: dist.ProcessGroup | None = None,
                 run_dir: str | Path | None = None):
        ds = _deepspeed()
        # A rank of a multi-rank job (its one-rank group made here) checks its batches together
        # with the other ranks (warm_up); a store-mode worker process is alone. With sync
        # mixed_batch the ranks form one data-parallel group: DeepSpeed all-reduces the
        # gradients inside every step, each rank's loss scaled by W b_i / B (gradient_sync).
        self.collective = group is None
        self.merging = merging = self.collective and merges_gradients(cfg)
        if group is None:
            group = cast(dist.ProcessGroup, dist.group.WORLD) if merging else single_rank_groups()
        self.device = device
        self.topology = topology
        self.run_dir = Path(run_dir) if run_dir is not None else None
        module = module.to(device)
        self.ds_config = _prepare_ds_config(load_ds_config(ds_config), batch_size, cfg.schedule.lr,
                                            ranks=dist.get_world_size() if merging else 1)
        self.accumulation = accumulation_steps(self.ds_config)
        # The config's optimizer block, where there is one, is DeepSpeed's to build; else ours (optim.*).
        optimizer = None if "optimizer" in self.ds_config else optimizer_for(module, cfg)
        # With LOCAL_SIZE set (the deepspeed launcher sets it), DeepSpeed's CPU backend creates
        # 66 MiB shared-memory all-reduce buffers per rank in /dev/shm and never removes
        # them; our collectives go through torch.distributed, so hide it during set-up.
        local_size = os.environ.pop("LOCAL_SIZE", None)
        try:
            self.engine, self.optimizer, _, _ = ds.initialize(
                model=module, optimizer=optimizer, config=self.ds_config, mpu=None if merging else SingleRankMPU(group),
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
        """One optimizer step on the planned batch: `gradient_accumulation_steps` micro-batches,
        each through DeepSpeed's backward and step (it steps the optimizer after the last). Each
        micro-batch's mean loss is weighted by its share of the batch (`scale_wrt_gas=False`
        instead of DeepSpeed's 1/steps, which is right only for equal micro-batches), so the
        gradient is the whole batch's also where the steps do not divide the batch."""
        if images.shape[0] < self.accumulation:
            raise DeepSpeedConfigError(_too_small(self.accumulation, {self.topology.worker: [int(images.shape[0])]}))
        parts = split_batch(images, labels, None, parts=self.accumulation)
        losses, outs = [], []
        for x, y, scale in parts:
            out = self.engine(x.to(self.dtype))
            loss = self.loss_fn(out.float(), y) * scale
            self.engine.backward(loss * self.gradient_loss_scale, scale_wrt_gas=False)
            self.engine.step()
            losses.append(loss.detach())
            outs.append(out.detach())
        if len(parts) == 1:
            return losses[0], outs[0]
        return torch.stack(losses).sum(), torch.cat(outs)  # the weighted losses add up to the batch's mean

    def gradient_sync(self, weight: float) -> None:
        if not self.merging:
            raise RuntimeError("this DeepSpeed engine was built as a data-parallel group of one rank; sync "
                               "mixed_batch builds it over every rank")
        self.set_gradient_weight(weight)

    def set_gradient_weight(self, weight: float) -> None:
        self.gradient_loss_scale = loss_scale_for(weight, self.topology.world)  # DeepSpeed averages over the ranks

    def warm_up(self, shapes: list[tuple[int, int, float]], in_channels: int) -> float:
        """Before the first epoch, with every (batch, resolution, dropout) of this worker's plan:
        a planned batch smaller than gradient_accumulation_steps cannot be split into that many
        micro-batches: one error naming the workers and batches (on every rank of a multi-rank
        job at once, not one rank failing while the others wait at the first sync). Then this
        worker's DeepSpeed batch fields per resolution are written next to deepspeed_config.json."""
        batches = sorted({int(b) for b, _, _ in shapes})
        small = {self.topology.worker: [b for b in batches if b < self.accumulation]}
        if self.collective:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, small)
            small = {w: bs for part in gathered for w, bs in part.items()}
        small = {w: bs for w, bs in sorted(small.items()) if bs}
        if small:
            raise DeepSpeedConfigError(_too_small(self.accumulation, small))
        if self.run_dir is not None and self.topology.member == 0:
            atomic_json(self.run_dir / worker_config_file(self.topology.worker),
                        {"worker": self.topology.worker, "batches": [
                            {"resolution": r, "batch": b, **rank_batch_fields(b, self.accumulation)}
                            for r, b in sorted({(int(r), int(b)) for b, r, _ in shapes})]})
        return 0.0

    def set_batch_size(self, batch_size: int) -> None:
        # Only DeepSpeed's bookkeeping (throughput timers, its own loaders): the forward
        # takes any batch, so a resolution boundary needs no new engine or process.
        # DeepSpeed keeps the accumulation steps and sets train_batch_size = micro x steps.
        setter = getattr(self.engine, "set_train_micro_batch_size", None)  # DeepSpeed >= 0.12
        if callable(setter):
            setter(rank_batch_fields(batch_size, self.accumulation)["train_micro_batch_size_per_gpu"])

    def after_sync(self) -> None:
        refresh = getattr(self.optimizer, "refresh_fp32_params", None)
        if callable(refresh):  # bf16/fp16/ZeRO: fp32 masters := the averaged module
            refresh()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore what ``optimizer_state`` returned. ZeRO and bf16 optimizers take one
        state per data-parallel rank (here: one), plain ones a single dict."""
        first = next(iter(inspect.signature(self.optimizer.load_state_dict).parameters), "")
        self.optimizer.load_state_dict([state] if first == "state_dict_list" else state)  # type: ignore[arg-type]


def worker_engine(module: nn.Module, cfg: RunConfig, device: torch.device | str, topology: Topology, *,
                  batch_size: int, ds_config: Any = None, run_dir: str | Path | None = None) -> DeepSpeedEngine:
    """A DeepSpeed engine for one worker process of ``dbl-ps train`` (``engine: deepspeed``).

    The worker is not part of a multi-process job, so a one-process group is created
    (on a free local port) when torch.distributed is not initialised yet: NCCL when the
    engine trains on a GPU, gloo on the CPU. DeepSpeed all-reduces the gradients over its
    data-parallel group on every step, even a group of one; over gloo that is a round trip
    of every gradient through host memory (an fp32 ResNet-18 worker on an H100 ran at
    0.68x of plain torch with gloo, 0.85x with NCCL; benchmarks/RESULTS.md)."""
    device = torch.device(device)
    if not dist.is_initialized():
        _one_process_group(device)
    # DeepSpeed insists on the launcher's variables even for one process.
    for name, value in _launcher_variables().items():
        os.environ.setdefault(name, value)
    return DeepSpeedEngine(module, cfg, device, topology, ds_config=ds_config, batch_size=batch_size,
                           group=dist.group.WORLD if dist.get_world_size() == 1 else None, run_dir=run_dir)


def _one_process_group(device: torch.device) -> None:
    """A process group of this process alone, on a free local port: NCCL on a GPU, else gloo."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, 1, True)  # type: ignore[attr-defined]  # exported, not in the stub's __all__
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)


def _launcher_variables() -> dict[str, str]:
    return {"LOCAL_RANK": os.environ.get("LOCAL_RANK", "0"), "RANK": str(dist.get_rank()),
            "WORLD_SIZE": str(dist.get_world_size())}


@contextlib.contextmanager
def calibration_steps(cfg: RunConfig, device: str) -> Iterator[StepFactory]:
    """The step a run's time model is measured with under `engine: deepspeed` (the registry's
    `calibration` trait): a DeepSpeed engine built from the run's DeepSpeed config (its
    precision, ZeRO stage and optimizer, the LR at zero so random batches do not move the
    weights), in a data-parallel group of this rank alone, so a rank times its own step and
    not the wait for slower ranks. Outside a process group (the launcher of one-machine
    `dbl-ps train`, `dbl-ps compare`) a one-process group is made for the measurement and
    destroyed after it, and the launcher's variables DeepSpeed reads are put back as they
    were: the workers the launcher spawns next must not inherit them. Under a launcher every
    rank measures at once (`new_group` is collective)."""
    ds_config = load_ds_config(cfg.settings(DeepSpeedSettings).deepspeed_config)
    ds_config.pop("scheduler", None)  # refused up front with its epochs (check_engine_schedule)
    created = not dist.is_initialized()
    saved_env: dict[str, str | None] = {k: os.environ.get(k) for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    try:
        if created:
            _one_process_group(torch.device(device))
        for name, value in _launcher_variables().items():
            os.environ.setdefault(name, value)
        own_group = cast(dist.ProcessGroup, dist.group.WORLD) if dist.get_world_size() == 1 else single_rank_groups()

        def make_step(model: nn.Module, *, device: str, precision: str, channels_last: bool,
                      compile: bool) -> TrainStep:
            # precision, channels_last and compile: the DeepSpeed JSON's (the config keys keep their defaults)
            engine = DeepSpeedEngine(model, cfg, torch.device(device), Topology.single(0, 1), ds_config=ds_config,
                                     group=own_group)
            engine.set_lr(0.0)

            def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                if images.shape[0] < engine.accumulation:
                    raise ValueError(f"batch {images.shape[0]} is below gradient_accumulation_steps "
                                     f"{engine.accumulation} of the DeepSpeed config")
                engine.set_batch_size(int(images.shape[0]))
                return engine.train_step(images, labels)

            return step

        yield make_step
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
        for name, previous in saved_env.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


class DeepSpeedSetup(EngineSetup):
    """`engine: deepspeed`'s checks and set-up once per run (the registry's `setup` trait). The
    DeepSpeed config is resolved once: `deepspeed_config` (a path or a packaged name; none =
    fp32 without ZeRO) is read when the run starts and saved in the run directory as
    `deepspeed_config.json`, which a resumed run uses, so a resume never depends on a file
    outside its directory."""

    def check(self, cfg: RunConfig, log: Callable[[str], None]) -> None:
        """A DeepSpeed config that cannot train a DBSL worker is one error listing every
        conflict, and what dbl-ps changes in it is said once."""
        ds_config = load_ds_config(cfg.settings(DeepSpeedSettings).deepspeed_config)
        ds_config.pop("scheduler", None)  # refused with its epochs once the data's size is known (check_schedule)
        mixed = merges_gradients(cfg)
        used, notes = check_rank_config(ds_config, None, schedule_lr=cfg.schedule.lr, mixed=mixed)
        stage = int(used.get("zero_optimization", {}).get("stage", 0))
        if mixed and stage >= 3:  # the API's deepspeed_mixed_config runs it in your own loop
            raise DeepSpeedConfigError(f"zero_optimization.stage={stage} partitions the parameters, and dbl-ps train "
                                       f"reads the whole model from every rank's module after each epoch: use stage "
                                       f"0-2 with sync mixed_batch, or ZeRO-3 in your own loop "
                                       f"(dbl.deepspeed_mixed_config)")
        for note in notes:
            log(f"DeepSpeed config: {note}")

    def check_schedule(self, cfg: RunConfig, train_samples: int) -> None:
        """A DeepSpeed `scheduler` block is one error saying what it is in epochs, at a large
        worker's steps per epoch (its share of `train_samples` over B_L at the first
        resolution), the same refusal as `dbl_ps.api.deepspeed_rank_config` (the run's
        schedule sets the LR in epochs)."""
        if cfg.settings(DeepSpeedSettings).deepspeed_config is None:
            return
        ds_config = load_ds_config(cfg.settings(DeepSpeedSettings).deepspeed_config)
        if ds_config.get("scheduler") is None:
            return
        large = cfg.batch_large()
        batch = large[0] if large else None
        steps = math.ceil(train_samples / cfg.dbl.workers / batch) if batch else None
        how = f"a large worker: {train_samples} samples / {cfg.dbl.workers} workers / batch {batch}" if batch else ""
        check_rank_config(ds_config, None, schedule_lr=cfg.schedule.lr, steps_per_epoch=steps, steps_how=how)

    def options(self, cfg: RunConfig, run_dir: Path, *, resuming: bool) -> dict[str, Any]:
        """Saves the DeepSpeed config of a new run into its directory: what every worker's
        engine runs (the LR from schedule.lr, no scheduler block, gradient_accumulation_steps),
        without the two batch fields that differ per worker and resolution; each DeepSpeed
        engine writes its own next to it (`deepspeed_config.worker<i>.json`)."""
        saved = run_dir / DS_CONFIG_FILE
        if resuming and saved.is_file():
            return {"ds_config": load_ds_config(saved), "run_dir": str(run_dir)}
        ds_config = load_ds_config(cfg.settings(DeepSpeedSettings).deepspeed_config)
        if not resuming:
            used, _ = check_rank_config(ds_config, None, schedule_lr=cfg.schedule.lr, mixed=merges_gradients(cfg))
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_json(saved, used)
        return {"ds_config": ds_config, "run_dir": str(run_dir)}


def build_engine(module: nn.Module, cfg: RunConfig, device: torch.device, topology: Topology, *,
                 batch_size: int | None, options: dict[str, Any]) -> DeepSpeedEngine:
    """`engine: deepspeed` (dbl_ps.registry.ENGINES): in a store-mode worker process
    (`batch_size` is its batch) a one-process group of its own (``worker_engine``); in a rank
    of a multi-rank job (`batch_size` None) an engine on the initialised process group, whose
    batch the loop sets per resolution. ``options["ds_config"]`` is the run's DeepSpeed config."""
    if batch_size is None:
        return DeepSpeedEngine(module, cfg, device, topology, ds_config=options["ds_config"],
                               run_dir=options.get("run_dir"))
    return worker_engine(module, cfg, device, topology, batch_size=batch_size, ds_config=options["ds_config"],
                         run_dir=options.get("run_dir"))
