"""The Engine interface: how a worker computes a training step and keeps its state.

An engine owns the worker's module and optimizer: one training step, the LR, the
batch size (changed at resolution boundaries), what the collective merge averages,
and the worker's own state in checkpoints (optimizer momentum, integer buffers).
`TorchEngine` is plain torch; DeepSpeed and FSDP2 engines live in
`dbl_ps.integrations` and override what differs. The same engines run in the store
mode's worker processes and in every rank of a multi-rank job.

Checkpoint layout (one per epoch, the same in every mode, `dbl_ps.training.rundir`):
`checkpoints/epochNNNNN/model.pt` is the global model (written by the launcher or
rank 0), and each engine writes its worker's own state next to it
(`save_worker_state`): `worker<i>.pt` here, a sharded `optim_group<i>/` for FSDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.distributed.tensor import DTensor
from torch.nn.utils import get_total_norm

from dbl_ps.calibrate import StepFactory, TrainStep
from dbl_ps.config import RunConfig
from dbl_ps.models import AUTOCAST_DTYPES, set_dropout
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.run_ownership import atomic_write
from dbl_ps.training.averaging import averaged_tensors
from dbl_ps.training.gradient_weighting import GradientWeight, weighted_sum_hook
from dbl_ps.training.topology import Topology

__all__ = ["Engine", "EngineSetup", "TorchEngine", "engine_step_factory", "merges_gradients", "optimizer_for", "loss_for", "hard_labels", "int_buffers",
           "atomic_save", "worker_state_file", "split_batch"]


def optimizer_for(module: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The workers' local optimizer: SGD (the paper's) or AdamW with the run's optim settings."""
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(module.parameters(), lr=cfg.schedule.lr, betas=(o.betas[0], o.betas[1]),
                                 weight_decay=o.weight_decay)
    return torch.optim.SGD(module.parameters(), lr=cfg.schedule.lr, momentum=o.momentum,
                           weight_decay=o.weight_decay, nesterov=o.nesterov)


def loss_for(cfg: RunConfig) -> nn.Module:
    """Cross-entropy with the run's label smoothing; takes class indices or soft targets
    (N, classes), which MixUp/CutMix batches carry."""
    return nn.CrossEntropyLoss(label_smoothing=cfg.loss.label_smoothing)


def hard_labels(labels: torch.Tensor) -> torch.Tensor:
    """Class indices of a batch's labels: soft (N, classes) targets count as their largest class."""
    return labels.argmax(1) if labels.dim() == 2 else labels


def int_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Integer buffers (BatchNorm's `num_batches_tracked`): never averaged, each worker keeps its own."""
    return {k: b.detach().cpu().clone() for k, b in module.named_buffers() if not b.is_floating_point()}


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: a reader never sees half a file, and a
    failed write (a full disk) leaves the previous file as it was and no temporary behind."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), make_parent=True)


def worker_state_file(folder: Path, worker: int) -> Path:
    return folder / f"worker{worker}.pt"


def merges_gradients(cfg: RunConfig) -> bool:
    """Whether the run's sync kind merges gradients inside every step (`sync: mixed_batch`): an
    engine that builds its data-parallel layout up front (DeepSpeed's group, FSDP2's mesh) then
    builds it over every rank."""
    return cfg.sync != "auto" and SYNCHRONIZERS.traits(cfg.sync)["per_step"]


def split_batch(inputs: torch.Tensor, targets: torch.Tensor, micro_batch: int | None, *,
                parts: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """A batch as micro-batches for gradient accumulation: `(inputs, targets, scale)` each,
    with `scale = micro-batch size / batch size`. The scaled micro-batch losses (each a mean
    over its own samples) add up to the whole batch's mean loss, so their gradients add up
    to the whole batch's gradient: one optimizer step after the last backward is the step of
    the unsplit batch (exactly so for a model without BatchNorm, whose statistics see each
    micro-batch alone). `micro_batch`: the largest micro-batch (ceil(b / micro_batch) of them,
    the last one smaller where it does not divide b; None: the whole batch, scale 1.0).
    `parts`: exactly that many micro-batches instead (sizes differ by at most one; DeepSpeed's
    `gradient_accumulation_steps`, which steps after a fixed count)."""
    size = int(inputs.shape[0])
    if parts is not None:
        chunks = list(zip(torch.tensor_split(inputs, parts), torch.tensor_split(targets, parts)))
    elif micro_batch is None or micro_batch >= size:
        return [(inputs, targets, 1.0)]
    else:
        chunks = list(zip(torch.split(inputs, micro_batch), torch.split(targets, micro_batch)))
    return [(x, y, x.shape[0] / size) for x, y in chunks]


class Engine:
    """What the worker loop needs from a training engine. Subclasses set `module`,
    `optimizer`, `device` and `topology` and override what differs."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    topology: Topology
    loss_fn: nn.Module
    # fp16 loss scaling (TorchEngine at precision fp16); None: a plain backward and step.
    scaler: torch.amp.GradScaler | None = None
    # The largest batch one forward/backward takes (config `micro_batch`); a larger planned
    # batch runs as micro-batches with one optimizer step (gradient accumulation). None: whole.
    micro_batch: int | None = None
    # sync mixed_batch on an engine that averages gradients over the ranks itself (FSDP2,
    # DeepSpeed): the factor W b_i / B on this rank's loss before backward (1.0: none).
    gradient_loss_scale: float = 1.0
    # Each step's (batch, |g|^2 on the device) while gradient norms are measured (the noise
    # scale, `measure_gradients`); None: off, and `train_step` does no extra work.
    grad_sq: list[tuple[int, torch.Tensor]] | None = None

    # -- training

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The module's logits; engines that change precision or memory format override this."""
        return self.module(images)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns `(mean loss, logits)` of this rank's part of the batch,
        detached and on the device (no host sync). The loss is taken in fp32. `labels` are
        class indices (N,) or soft targets (N, classes). The one step of `engine: torch` and
        FSDP workers, and the one `dbl-ps calibrate` and a run's on-the-spot measurement time
        (`engine_step_factory`). A batch larger than `micro_batch` runs as micro-batches whose
        scaled gradients accumulate before the one optimizer step (`split_batch`)."""
        self.optimizer.zero_grad(set_to_none=True)
        parts = split_batch(images, labels, self.micro_batch)
        losses, outs = [], []
        for j, (x, y, scale) in enumerate(parts):
            # Gradients merged inside the step (sync mixed_batch) are merged once, in the last backward.
            with self.no_gradient_sync() if j < len(parts) - 1 else contextlib.nullcontext():
                out = self.forward(x)
                loss = self.loss_fn(out.float(), y)
                if len(parts) > 1:  # the unsplit batch keeps its loss as it is (scale 1.0)
                    loss = loss * scale
                backward = loss * self.gradient_loss_scale if self.gradient_loss_scale != 1.0 else loss
                (backward if self.scaler is None else self.scaler.scale(backward)).backward()
            losses.append(loss.detach())
            outs.append(out.detach())
        if self.grad_sq is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # the norm of the true gradient; step() knows
            self.grad_sq.append((int(images.shape[0]), self.gradient_sq_norm()))
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if len(parts) == 1:
            return losses[0], outs[0]
        return torch.stack(losses).sum(), torch.cat(outs)  # the scaled losses add up to the batch's mean

    def gradient_sq_norm(self) -> torch.Tensor:
        """`|g|^2` of the gradients in the module now (after backward: the whole batch's mean-loss
        gradient, before weight decay and momentum), one fused norm on the device, no host sync.
        A sharded engine's local shards give this rank's part of the sum."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        grads = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
        if not grads:
            return torch.zeros((), device=self.device)
        return get_total_norm(grads).float().square()

    def measure_gradients(self, on: bool) -> None:
        """Start (with an empty record) or stop recording each step's `(batch, |g|^2)`."""
        self.grad_sq = [] if on else None

    def take_grad_sq(self) -> list[tuple[int, float]]:
        """The steps' `(batch, |g|^2)` recorded since the last call (one host sync), emptied."""
        if not self.grad_sq:
            return []
        batches = [b for b, _ in self.grad_sq]
        values = torch.stack([v for _, v in self.grad_sq]).tolist()
        self.grad_sq = []
        return list(zip(batches, values))

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- gradients merged inside every step (sync mixed_batch, `dbl_ps.training.gradient_weighting`)

    def gradient_sync(self, weight: float) -> None:
        """From now on merge gradients over the world inside every step, this rank's weighted by
        `weight` (its batch over the global batch). Engines that cannot, say so."""
        raise NotImplementedError(f"engine {type(self).__name__} cannot merge gradients inside every step "
                                  f"(sync mixed_batch); use engine torch")

    def set_gradient_weight(self, weight: float) -> None:
        """This rank's weight for the steps to come (the batch changed: a resolution, a re-plan)."""
        raise NotImplementedError(f"engine {type(self).__name__} does not merge gradients inside every step")

    def no_gradient_sync(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which a backward merges no gradients (all but the last micro-batch)."""
        return contextlib.nullcontext()

    def take_wait_seconds(self) -> float:
        """Seconds this rank waited for the others inside its steps since the last call."""
        return 0.0

    def set_batch_size(self, batch_size: int) -> None:
        """The worker's batch changed (resolution boundary); engines that track it update here."""

    def warm_up(self, shapes: list[tuple[int, int, float]], in_channels: int) -> float:
        """Run what must be ready before the timed epochs (compiling, per (batch, resolution,
        dropout) in `shapes`) without changing the model or optimizer; returns the seconds it took."""
        return 0.0

    def reset_optimizer_state(self) -> None:
        """Zero the momentum after a skipped non-finite update (`divergence: skip`): it holds
        that step and would carry it into every later one. Zeroed in place (SGD then restarts
        as on its first step), so sharded (DTensor) and wrapped (DeepSpeed) states keep their form."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # DeepSpeed wraps the torch optimizer
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    value.zero_()

    def local_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of the worker's batch (all of it for one rank per worker)."""
        return images, labels

    # -- the merge

    def sync_tensors(self) -> list[torch.Tensor]:
        """The tensors a collective merge averages (local shards for sharded engines)."""
        return averaged_tensors(self.module)

    def sync_group(self) -> dist.ProcessGroup | None:
        """The group across workers (None = the world: one rank per worker)."""
        return None

    def buffer_sync(self, weight: float) -> None:
        """Average what `sync_tensors` does not cover (FSDP: buffers over the world)."""

    def after_sync(self) -> None:
        """The module now holds merged values: update engine copies (e.g. fp32 master weights)."""

    # -- state

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model on the main rank (CPU tensors), None elsewhere; collective for sharded engines."""
        if not self.topology.is_main:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def full_state_dict_all(self) -> dict[str, torch.Tensor]:
        """Every rank: its worker's whole model (CPU copies); collective for sharded engines."""
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Every rank: the module := a whole-model state dict (model.pt of a checkpoint)."""
        self.module.load_state_dict(state)
        self.after_sync()

    def save_worker_state(self, folder: Path) -> None:
        """This worker's own state (optimizer momentum, integer buffers) into the epoch's folder."""
        if self.topology.member == 0:
            atomic_save({"optimizer": self.optimizer.state_dict(), "int_buffers": int_buffers(self.module)},
                        worker_state_file(folder, self.topology.worker))

    def load_worker_state(self, folder: Path, saved_workers: int) -> bool:
        """Restore what `save_worker_state` wrote; False (fresh momentum) when the checkpoint
        had another number of workers (the run was re-planned) or lacks this worker's file."""
        path = worker_state_file(folder, self.topology.worker)
        if saved_workers != self.topology.workers or not path.is_file():
            return False
        own = torch.load(path, map_location="cpu", weights_only=False)
        buffers = dict(self.module.named_buffers())
        for name, value in own["int_buffers"].items():
            buffers[name].copy_(value)
        self.load_optimizer_state(own["optimizer"])
        self.after_sync()  # loading may restore masters saved before the last merge
        return True

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


class TorchEngine(Engine):
    """A plain module + SGD or AdamW: what `engine: torch` means, with the speed options users
    expect (`precision`, `channels_last`, `compile`). Weights, optimizer state and merges stay
    fp32 whatever the precision: autocast only lowers the forward pass."""

    def __init__(self, module: nn.Module, cfg: RunConfig, device: torch.device, topology: Topology):
        self.device = device
        self.topology = topology
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.module = module.to(device, memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stub lacks memory_format
        self.optimizer = optimizer_for(self.module, cfg)
        self.loss_fn = loss_for(cfg)
        self.autocast_dtype = AUTOCAST_DTYPES[cfg.precision]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        self.micro_batch = cfg.micro_batch
        self.compiled = cfg.compile
        self.ddp: DistributedDataParallel | None = None  # sync mixed_batch: the module inside DDP
        self.gradient_weight: GradientWeight | None = None
        if cfg.compile:
            # nn.Module.compile compiles in place: the state dict keeps its keys (no `_orig_mod.`),
            # so checkpoints, merges and evaluation see the same model as without compile.
            self.module.compile()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The module's logits in the run's memory format and precision (through DDP when the
        engine merges gradients inside every step)."""
        images = images.contiguous(memory_format=self.memory_format)
        net = self.ddp if self.ddp is not None else self.module
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return net(images)

    def gradient_sync(self, weight: float) -> None:
        """DDP around the module (which stays `self.module`: state dicts keep their keys) with a
        communication hook that scales each bucket by `weight` and sums over the world, bucket by
        bucket during backward (`weighted_sum_hook`). DDP's constructor broadcasts rank 0's
        parameters and buffers, so every rank starts from the same model."""
        self.gradient_weight = GradientWeight(weight)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.module, device_ids=device_ids)
        self.ddp.register_comm_hook(self.gradient_weight, weighted_sum_hook)

    def set_gradient_weight(self, weight: float) -> None:
        if self.gradient_weight is None:
            raise RuntimeError("gradient_sync() first")
        self.gradient_weight.weight = weight

    def no_gradient_sync(self) -> contextlib.AbstractContextManager[Any]:
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def take_wait_seconds(self) -> float:
        return self.gradient_weight.take_wait() if self.gradient_weight is not None else 0.0

    def warm_up(self, shapes: list[tuple[int, int, float]], in_channels: int) -> float:
        """Compile for every (batch, resolution, dropout) the epochs will use, so no CPL switch
        recompiles inside a timed epoch: forward and backward on zeros, then the model's state
        (BatchNorm statistics) and dropout rates put back and the gradients dropped."""
        if not self.compiled:
            return 0.0
        started = time.perf_counter()
        saved = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        rates = [m.p for m in self.module.modules() if isinstance(m, nn.Dropout)]
        for batch, resolution, dropout in shapes:
            set_dropout(self.module, dropout)
            images = torch.zeros(batch, in_channels, resolution, resolution, device=self.device)
            labels = torch.zeros(batch, dtype=torch.int64, device=self.device)
            self.loss_fn(self.forward(images).float(), labels).backward()
        self.module.load_state_dict(saved)
        for m, p in zip((m for m in self.module.modules() if isinstance(m, nn.Dropout)), rates):
            m.p = p
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started


class EngineSetup:
    """What an engine checks and prepares once per run, before anything is measured or any
    worker starts; the engine registry's `setup` trait names a subclass ("module:attr"), so
    what is particular to an engine lives with it (DeepSpeed's: its JSON). The default
    checks nothing and hands the workers nothing."""

    def check(self, cfg: RunConfig, log: Callable[[str], None]) -> None:
        """Every process, before the data is loaded: one error for a setting the engine cannot
        train with, a line for what the run changes in the user's settings."""

    def check_schedule(self, cfg: RunConfig, train_samples: int) -> None:
        """Once the training set's size is known, before the time model is measured."""

    def options(self, cfg: RunConfig, run_dir: Path, *, resuming: bool) -> dict[str, Any]:
        """What the engine needs beyond the run config (picklable: it travels to worker
        processes); may save files into the run directory (a new run's) for a resume to read."""
        return {}


def engine_step_factory(cfg: RunConfig, engine_class: type[Engine] | None = None) -> StepFactory:
    """What `dbl_ps.calibrate.calibrate(make_step=...)` times: `engine_class(...).train_step`
    (default `TorchEngine`, the step `engine: torch` workers train with; a user's Engine
    subclass is timed as itself), with the run's optimizer and loss (`cfg`) and the device,
    precision, memory format and compile that `calibrate` is given (the callers take those
    from the same config, or from `dbl-ps calibrate`'s options)."""
    build: Callable[..., Engine] = engine_class or TorchEngine  # an Engine class, built as (module, cfg, device, topology)

    def make_step(model: nn.Module, *, device: str, precision: str, channels_last: bool,
                  compile: bool) -> TrainStep:
        run = dataclasses.replace(cfg, precision=cast(Any, precision), channels_last=channels_last, compile=compile)
        engine = build(model, run, torch.device(device), Topology.single(0, 1))
        # The timed steps train on random data: a zero learning rate keeps the weights where
        # they are (no drift into inf/NaN, whose skipped fp16 steps would time shorter),
        # while the optimizer still does all of its work.
        engine.set_lr(0.0)
        return engine.train_step

    return make_step
