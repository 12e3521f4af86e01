"""Dual batch size learning inside your own training script: the public API.

What `dbl-ps train` does, as functions and two thin classes for a loop you already
have (plain `torch.distributed`, DeepSpeed, FSDP2). Every rank is one worker with its
own batch size and data share; the ranks average their models with share weights
every mini-epoch (or every `sync_every` steps) instead of all-reducing gradients every
step, so no rank waits for another between syncs. The same functions run inside
`dbl-ps train`: the planner, the schedule, the share sampler and the weighted average
are one implementation.

    import dbl_ps.api as dbl

    timer_model = dbl.measure_time_model(lambda b: train_step(*batch_of(b)), [32, 64, 128])
    plan = dbl.plan_together(timer_model, batch_large=128, dataset_size=len(train_set))   # one collective
    mine = dbl.rank_plan(plan, rank)                       # batch, share, merge weight, steps
    sampler = dbl.ShareBatchSampler(len(train_set), mine.shares, rank, mine.batch, seed=0)
    loader = DataLoader(train_set, batch_sampler=sampler)
    averager = dbl.ModelAverager(model, plan)              # a plain module, a DeepSpeed engine, an FSDP2 module
    for epoch in range(averager.start_epoch, epochs):      # 0, or where a loaded checkpoint left off
        mine = averager.set_epoch(epoch)
        sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)
        for images, labels in loader:
            ...optimizer step...
            averager.step(loss)                            # merges when a sync is due
        averager.end_epoch()                               # every rank took its planned steps, or one error
        plan, factors = dbl.replan_together(plan, averager.train_seconds)   # mixed hardware drifts
        if factors:
            averager.set_plan(plan)
        dbl.save_rank_state(f"ckpt/rank{rank}.pt", dbl.rank_state(model=model, optimizer=optimizer,
                            averager=averager, sampler=sampler, lr_schedule=lr_schedule))  # RNGs too: exact

Reference with every function and a worked example: docs/API.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from dbl_ps.calibrate import calibration_time_models
from dbl_ps.data.shares import ShareBatchSampler
from dbl_ps.deepspeed_shm import unlink_own_buffer
from dbl_ps.integrations.deepspeed import DeepSpeedConfigError, SingleRankMPU, check_rank_config, single_rank_groups
from dbl_ps.data.transforms import resize_batch
from dbl_ps.planner import (
    InfeasiblePlanError,
    Plan,
    TimeModel,
    DEFAULT_THRESHOLD,
    drifted,
    fit_nonnegative_time_model,
    make_plan,
    plan_lines,
    replan_any,
    speed_factors,
)
from dbl_ps.mixed_api import MixedBatch, deepspeed_mixed_config, mixed_batch, plan_mixed_ranks, plan_mixed_together
from dbl_ps.rank_plan import APIError, RankPlan, rank_plan
from dbl_ps.schedule import ScheduleSpec, SchedulePoint, lr_at, schedule_at
from dbl_ps.synchronizers.collective import CollectiveSynchronizer
from dbl_ps.training.averaging import averaged_tensors
from dbl_ps.training.engine import Engine, split_batch
from dbl_ps.training.run_plan import plan_difference
from dbl_ps.training.run_plan import plan_from_dict as _plan_from_saved_dict
from dbl_ps.run_ownership import RunDirectoryBusy, RunLock
from dbl_ps.training.orphans import exit_with_launcher
from dbl_ps.training.resume import load_rank_state, own_folder, rank_state, read_rank_state, save_rank_state
from dbl_ps.training.topology import Topology, launched_by_a_launcher

__all__ = [
    "APIError",
    "DeepSpeedConfigError",
    "InfeasiblePlanError",
    "MixedBatch",
    "ModelAverager",
    "Plan",
    "RankPlan",
    "RunDirectoryBusy",
    "RunLock",
    "ScheduleLR",
    "SchedulePoint",
    "ScheduleSpec",
    "ShareBatchSampler",
    "SingleRankMPU",
    "TimeModel",
    "accumulate",
    "deepspeed_mixed_config",
    "deepspeed_rank_config",
    "exit_with_launcher",
    "load_rank_state",
    "lr_at",
    "measure_time_model",
    "mixed_batch",
    "own_folder",
    "plan_from_calibration",
    "plan_from_dict",
    "plan_lines",
    "plan_mixed_ranks",
    "plan_mixed_together",
    "plan_ranks",
    "plan_to_dict",
    "plan_together",
    "rank_plan",
    "rank_state",
    "read_rank_state",
    "replan_together",
    "resize_batch",
    "save_rank_state",
    "schedule_at",
    "single_rank_groups",
]


# --------------------------------------------------------------------------- planning


def measure_time_model(step: Callable[[int], Any], batch_sizes: Sequence[int], *, repeats: int = 5,
                       warmup: int = 1, device: torch.device | str | None = None) -> TimeModel:
    """This rank's step-time model `t(b) = alpha + beta * b`, fitted on `repeats` timed calls
    of `step(b)` (one real training step at batch `b`) per batch size, after `warmup`
    untimed ones. The fastest call per batch size counts: other jobs on the machine only
    ever add time, and the plan is about the device's own speed (a lasting slowdown is what
    `replan_together` catches). CUDA work is waited for before the clock is read. Call it
    in the first steps of a run: each rank measures its own device. The fit keeps alpha
    and beta >= 0 (a launch-bound step is flat in the batch: beta 0)."""
    sizes = sorted({int(b) for b in batch_sizes})
    if len(sizes) < 2 or sizes[0] < 1:
        raise APIError(f"batch_sizes={list(batch_sizes)} must hold at least two different sizes >= 1 to fit "
                       f"alpha and beta")
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    samples = []
    for b in sizes:
        for _ in range(warmup):
            step(b)
        times = []
        for _ in range(max(1, repeats)):
            sync()
            started = time.perf_counter()
            step(b)
            sync()
            times.append(time.perf_counter() - started)
        samples.append((b, min(times)))
    return fit_nonnegative_time_model(samples)


def plan_ranks(time_models: TimeModel | Sequence[TimeModel], *, batch_large: int | Sequence[int],
               dataset_size: int, ranks: int | None = None, small: int = 0, tau: float = 1.0,
               resolutions: Sequence[int] = (0,), batch_small: int | float | None = None) -> Plan:
    """The plan for `ranks` workers (default: one per time model given, else the process
    group's size): each worker's batch,
    share of `dataset_size` samples and merge weight, so that all finish an epoch together.
    `time_models`: one for uniform hardware or one per rank (mixed hardware); ranks
    `0..small-1` train with a small batch within `tau` x the all-large epoch time (DBSL;
    `small=0`: plain load balancing). `resolutions`: the CPL resolutions (0: no CPL), all
    planned with the same time models unless you plan each with its own (`make_plan`).
    `batch_small`: choose the small batch (a size, or a fraction of `batch_large` below 1)
    instead of the time model's formula; the shares still fit `tau`. `plan.regime_lines()`
    says what the small batch is on this device."""
    models = time_models if isinstance(time_models, TimeModel) else list(time_models)
    if ranks is None and not isinstance(models, TimeModel):
        ranks = len(models)  # one time model per worker
    if ranks is None:
        if not dist.is_initialized():
            raise APIError("plan_ranks: give ranks= or call it after torch.distributed.init_process_group")
        ranks = dist.get_world_size()
    return make_plan({r: models for r in resolutions}, {r: batch_large for r in resolutions}, ranks, small, tau,
                     dataset_size, batch_small=batch_small)


def plan_from_calibration(path: str, *, ranks: int, dataset_size: int, small: int = 0, tau: float = 1.0,
                          resolutions: Sequence[int] | None = None, batch_small: int | float | None = None) -> Plan:
    """`plan_ranks` from a `dbl-ps calibrate` file (one device kind for every rank): its time
    model and largest batch at each resolution (default: all the file has)."""

    try:
        models, batches, _, _ = calibration_time_models(path, resolutions)
    except ValueError as err:  # an unreadable file or a missing resolution: the caller's input
        raise APIError(str(err)) from None
    return make_plan(models, batches, ranks, small, tau, dataset_size, batch_small=batch_small)


def plan_together(time_model: TimeModel, *, batch_large: int | Sequence[int], dataset_size: int, small: int = 0,
                  tau: float = 1.0, resolutions: Sequence[int] = (0,), group: Any = None,
                  batch_small: int | float | None = None) -> Plan:
    """`plan_ranks` from every rank's own measured time model: one all-gather, then the same
    (deterministic) plan on every rank."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (time_model.alpha, time_model.beta), group=group)
    models = [TimeModel(alpha=a, beta=b) for a, b in gathered]
    return plan_ranks(models, batch_large=batch_large, dataset_size=dataset_size, ranks=len(models), small=small,
                      tau=tau, resolutions=resolutions, batch_small=batch_small)


def replan_together(plan: Plan, train_seconds: float, *, resolution: int | None = None,
                    threshold: float = DEFAULT_THRESHOLD, group: Any = None) -> tuple[Plan, list[float] | None]:
    """After an epoch: every rank's own training seconds (without waits at syncs) against the
    plan's prediction; when the ranks' speeds drifted apart by more than `threshold`, the plan
    made again from the measured speeds. One all-gather; every rank gets the same answer.
    Returns `(plan, speed factors)` when it re-planned, `(plan, None)` when it did not."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, float(train_seconds), group=group)
    r = next(iter(plan.resolutions)) if resolution is None else resolution
    factors = speed_factors(plan[r], gathered)
    if not drifted(factors, threshold):
        return plan, None
    return replan_any(plan, factors), factors  # a DBSL or a mixed-batch plan


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as a JSON-ready dict (`Plan.to_dict()`: what `dbl-ps train` saves as plan.json),
    for a checkpoint; `plan_from_dict` reads it back to the same plan."""
    return plan.to_dict()


def plan_from_dict(data: dict[str, Any]) -> Plan:
    """The plan `plan_to_dict` (or a run's plan.json) wrote: made again from its saved inputs
    (time models, batches, small, tau, dataset size) by the same deterministic planner, and
    checked against the saved shares and batches. A resumed run reads its plan back instead
    of measuring and planning again (a new measurement would give other shares)."""
    try:
        return _plan_from_saved_dict(data)
    except (KeyError, TypeError, AttributeError) as err:
        raise APIError(f"not a plan written by plan_to_dict (missing or malformed {err}); give the dict that "
                       f"plan_to_dict(plan) returned") from None
    except ValueError as err:
        raise APIError(str(err)) from None


# --------------------------------------------------------------------------- schedule


class ScheduleLR(torch.optim.lr_scheduler.LRScheduler):
    """The run's LR schedule (`lr_at`: warm-up, steps at milestones) as a torch LR scheduler,
    stepped once per optimizer step. A rank's steps per epoch come from its plan (ranks with
    different batches take different numbers of steps), so the fractional epoch is
    `epoch + step / steps_per_epoch`; call `set_epoch` at every epoch start."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec, steps_per_epoch: int,
                 last_epoch: int = -1):
        self.spec = spec
        self.epoch = 0
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.step_in_epoch = 0
        self._resume_epoch: int | None = None  # set by load_state_dict: that epoch continues
        super().__init__(optimizer, last_epoch)

    def set_epoch(self, epoch: int, steps_per_epoch: int | None = None) -> None:
        """Start `epoch` (this rank's `steps_per_epoch` in it). After `load_state_dict`, the
        saved epoch continues at the saved step instead (a checkpoint taken mid-epoch)."""
        continuing = self._resume_epoch == int(epoch)
        self._resume_epoch = None
        self.epoch = int(epoch)
        if not continuing:
            self.step_in_epoch = 0
        if steps_per_epoch is not None:
            self.steps_per_epoch = max(1, int(steps_per_epoch))
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """torch's scheduler state (every attribute but the optimizer) with the epoch, the step
        in it and the steps per epoch. The `ScheduleSpec` is left out: the script builds it from
        its own arguments, and plain values load with `torch.load(weights_only=True)`."""
        state = super().state_dict()
        state.pop("spec", None)
        state.pop("_resume_epoch", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [k for k in ("epoch", "step_in_epoch", "steps_per_epoch", "last_epoch") if k not in state_dict]
        if missing:
            raise APIError(f"not a ScheduleLR state (missing {missing}); give what ScheduleLR.state_dict() returned")
        super().load_state_dict(state_dict)
        self._resume_epoch = self.epoch
        self._apply()  # the optimizer's LR where the schedule stood, whether or not its state was loaded too

    def step(self, epoch: int | None = None) -> None:  # noqa: ARG002 (torch's signature)
        if self.last_epoch >= 0:  # the first call comes from LRScheduler.__init__
            self.step_in_epoch += 1
        super().step()

    def fractional_epoch(self) -> float:
        return min(self.epoch + min(self.step_in_epoch, self.steps_per_epoch) / self.steps_per_epoch, self.spec.epochs)

    def get_lr(self) -> list[float | torch.Tensor]:
        factor = lr_at(self.fractional_epoch(), self.spec) / self.spec.base_lr
        return [base * factor for base in self.base_lrs]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


# --------------------------------------------------------------------------- averaging


class _UserEngine(Engine):
    """What `CollectiveSynchronizer` needs from a user's model: its tensors, its device, where
    it sits, and the refresh of DeepSpeed's fp32 masters after a merge."""

    def __init__(self, target: Any, topology: Topology, group: Any):
        self.module = target.module if _is_deepspeed(target) else target
        # None for a plain module: only DeepSpeed's is used here (its fp32 masters, after_sync)
        self.optimizer = getattr(target, "optimizer", None)  # type: ignore[assignment]
        self.topology = topology
        self.group = group
        first = next(self.module.parameters(), None)
        if first is None:
            raise APIError(f"{type(self.module).__name__} has no parameters to average")
        device = getattr(first, "device", torch.device("cpu"))
        self.device = torch.device(device.type, device.index) if device.type == "cuda" else torch.device(device.type)

    def sync_group(self) -> Any:
        return self.group

    def after_sync(self) -> None:
        refresh = getattr(self.optimizer, "refresh_fp32_params", None)
        if callable(refresh):  # DeepSpeed bf16/fp16/ZeRO: fp32 masters := the averaged module
            refresh()


def _is_deepspeed(target: Any) -> bool:
    return type(target).__name__ in ("DeepSpeedEngine", "PipelineEngine") or \
        (hasattr(target, "module") and hasattr(target, "optimizer") and hasattr(target, "backward"))


class ModelAverager:
    """Average the model of every rank with its merge weight when a sync is due, and check
    that every rank trains what the plan says.

    `target`: a plain `nn.Module`, a DeepSpeed engine (its fp32 master weights are refreshed
    after each merge), or an FSDP2 module (its local shards are averaged; where a worker
    spans `ranks_per_worker` ranks, pass as `group` the ranks holding the same shard in the
    other workers: the FSDP mesh's "replicate" group). One worker per rank by default.
    Construction is collective: it checks that every rank's tensors have the same names and
    shapes and averages them once, so all ranks start from the same model.

    `sync_every`: "mini_epoch" (once per epoch, the paper's) or every k steps: the plan's
    largest step count over k syncs per epoch on every rank, spread evenly over each rank's
    own steps (`dbl_ps.training.steps.sync_boundaries`, as `dbl-ps train` does), so a rank
    with few steps may merge several times in one `step()`. `divergence`: "stop" raises when
    a rank's loss or model is non-finite at a sync (every rank raises), "skip" leaves that
    rank's update out. `timeout_s`: a rank that does not reach a sync in time is named.

    The step check: every sync and every `end_epoch()` first exchange each rank's epoch,
    syncs and steps (one small all-reduce). A rank that took fewer or more steps than its
    plan (an early `break`, a sampler left on old shares after a re-plan) is one `APIError`
    on every rank at the end of that epoch, naming the rank and the numbers, instead of
    syncs that pair up across epochs until one rank waits for ever.

    Resume: `state_dict()` / `load_state_dict()` (the plan in use, the epoch, the steps and
    syncs in it, the merge count); `start_epoch` is where a loop starts.
    """

    def __init__(self, target: Any, plan: Plan, *, sync_every: int | str = "mini_epoch", ranks_per_worker: int = 1,
                 group: Any = None, divergence: str = "stop", timeout_s: float = 600.0):
        if not dist.is_initialized():
            raise APIError("ModelAverager needs torch.distributed.init_process_group first")
        world = dist.get_world_size()
        if ranks_per_worker < 1 or world % ranks_per_worker or world // ranks_per_worker != plan.workers:
            raise APIError(f"the plan is for {plan.workers} worker(s) of {ranks_per_worker} rank(s) = "
                           f"{plan.workers * ranks_per_worker} ranks, but the process group has {world}; launch "
                           f"{plan.workers * ranks_per_worker} processes or plan for {world // max(1, ranks_per_worker)}")
        if ranks_per_worker > 1 and group is None:
            raise APIError(f"ranks_per_worker={ranks_per_worker}: pass group=, the process group of the ranks "
                           f"holding the same shard in the other workers (an FSDP mesh's 'replicate' group)")
        if sync_every != "mini_epoch" and (isinstance(sync_every, bool) or not isinstance(sync_every, int)
                                           or sync_every < 1):
            raise APIError(f"sync_every={sync_every!r}: give 'mini_epoch' or a number of steps >= 1")
        if launched_by_a_launcher():
            exit_with_launcher()  # a launcher killed with SIGKILL leaves no rank training on as an orphan
        topology = Topology(rank=dist.get_rank(), world=world, local_rank=dist.get_rank(), group_size=ranks_per_worker)
        self.plan = plan
        self._plan_hash = _plan_hash(plan)
        self.rank = topology.worker  # the worker this rank belongs to: its row of the plan
        self.engine = _UserEngine(target, topology, group)
        self.sync = CollectiveSynchronizer(sync_every, timeout_s=timeout_s, divergence=divergence,
                                           timeout_name=f"ModelAverager(timeout_s={timeout_s:g})")
        self._check_same_tensors()  # collective: every rank is past deepspeed.initialize
        if _is_deepspeed(target):  # its CPU all-reduce buffer, mapped by every rank by now (dbl_ps.deepspeed_shm)
            unlink_own_buffer(dist.get_rank())
        self.sync.start(self.engine, fresh=True)
        self._resume_epoch: int | None = None  # set by load_state_dict: that epoch continues
        self._begin(0, None)  # step() works before the first set_epoch; zeroes train_seconds too

    def _check_same_tensors(self) -> None:
        module = self.engine.module
        names = [n for n, _ in module.named_parameters()] + \
            [n for n, b in module.named_buffers() if b.is_floating_point()]  # averaged_tensors' order
        described = [(name, tuple(t.shape)) for name, t in zip(names, averaged_tensors(module))]
        digest = hashlib.sha256(repr(described).encode()).hexdigest()
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (digest, len(described), sum(math.prod(s) for _, s in described)))
        mismatched = [r for r, (d, _, _) in enumerate(gathered) if d != gathered[0][0]]
        if mismatched:
            raise APIError(f"the ranks' models differ (parameter names or shapes): rank 0 has {gathered[0][1]} "
                           f"parameters ({gathered[0][2]:,} values), rank(s) {mismatched} have "
                           f"{[gathered[r][1:] for r in mismatched]}; every rank must build the same model")

    # -- epochs

    def _begin(self, epoch: int, resolution: int | None) -> None:
        self.epoch = epoch
        self.mine = rank_plan(self.plan, self.rank, resolution)
        self.bounds = self.sync.boundaries(self.mine.steps, list(self.mine.all_steps))
        self.steps = 0
        self.syncs = 0
        self.ended = False
        self._restart_clock()

    def _restart_clock(self) -> None:
        self.train_seconds = 0.0  # this epoch's training time without waits at syncs (replan_together)
        self.wait_seconds = 0.0
        self._clock = time.perf_counter()

    def set_epoch(self, epoch: int, resolution: int | None = None) -> RankPlan:
        """Start an epoch (at `resolution` under CPL); returns this rank's plan for it. An
        epoch that took steps and was not ended is ended first (`end_epoch`: the step check).
        After `load_state_dict`, the saved epoch continues where it was saved."""
        if self._resume_epoch is not None and epoch == self._resume_epoch:
            self._resume_epoch = None
            if resolution is not None and resolution != self.mine.resolution:
                raise APIError(f"set_epoch({epoch}, resolution={resolution}): the loaded state is epoch {epoch} at "
                               f"resolution {self.mine.resolution}; continue it at the resolution it was saved at")
            self._restart_clock()
            return self.mine
        self._resume_epoch = None
        if not self.ended and (self.steps or self.syncs):
            self.end_epoch()
        self._begin(epoch, resolution)
        return self.mine

    def end_epoch(self) -> None:
        """End the epoch (collective; call it on every rank right after the epoch's last step,
        before `replan_together`, evaluation or saving a checkpoint): every rank checks that
        every rank took its planned steps and ran all its syncs. A mismatch is one `APIError`
        on every rank naming the rank, its planned and taken steps, and what to do. Calling it
        again does nothing; `set_epoch` calls it for an epoch left open."""
        if self.ended:
            return
        self.train_seconds += time.perf_counter() - self._clock
        self.wait_seconds += self.sync.meet(f"the end of epoch {self.epoch}")
        self._check_progress(at_end=True)
        self.ended = True
        self._clock = time.perf_counter()

    @property
    def start_epoch(self) -> int:
        """The epoch a loop starts at: 0 on a fresh run; after `load_state_dict` the epoch after
        the saved one (saved after `end_epoch`), or the saved one itself (saved mid-epoch)."""
        return self.epoch + 1 if self.ended else self.epoch

    def set_plan(self, plan: Plan) -> None:
        """Use a new plan (from `replan_together`) from the next `set_epoch` on. Give the
        sampler the new plan's shares and batch there too: `sampler.set_epoch(epoch,
        shares=mine.shares, batch_size=mine.batch)` with `mine = averager.set_epoch(epoch)`."""
        if plan.workers != self.plan.workers:
            raise APIError(f"the new plan is for {plan.workers} workers, the averager's for {self.plan.workers}")
        self.plan = plan
        self._plan_hash = _plan_hash(plan)

    def step(self, loss: torch.Tensor | float | None = None) -> bool:
        """Call after each optimizer step; merges (collective) at every sync due after this
        step (more than one where a rank has fewer steps than syncs) and returns True then.
        `loss` (this period's, or this step's) is checked for divergence with the model."""
        if self.ended:
            raise APIError(f"step() after end_epoch() of epoch {self.epoch}; call set_epoch({self.epoch + 1}) "
                           f"before the next epoch's steps")
        self.steps += 1
        merged = False
        # `while`, not `if`: the syncs are spread over this rank's own steps, and a rank with
        # fewer steps than the epoch has syncs owes two at some steps (13 steps, 14 syncs).
        while self.syncs < len(self.bounds) and self.bounds[self.syncs] <= self.steps:
            self._merge(loss)
            merged = True
        return merged

    def _merge(self, loss: torch.Tensor | float | None) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self._clock
        loss_t = None if loss is None else torch.as_tensor(loss, dtype=torch.float32).detach()
        result = self.sync.sync(self.engine, self.mine.merge_weight, loss=loss_t,
                                check=lambda: self._check_progress(at_end=False))
        self.wait_seconds += result.wait_seconds
        self.syncs += 1
        self._clock = time.perf_counter()
        if not result.merged:
            worker = min(result.diverged)
            raise FloatingPointError(f"rank {worker}'s loss or model is not finite at sync {self.syncs} of epoch "
                                     f"{self.epoch} (loss {result.diverged[worker]}); nothing was merged")

    def _check_progress(self, *, at_end: bool) -> None:
        """Every rank's (epoch, syncs done, steps, planned steps, at the end) in one all-reduce,
        at every sync and every epoch end: a rank that ended its epoch early meets the others
        at their next sync, so every rank learns it at the same point and raises together."""
        row = [self.epoch, self.syncs, self.steps, self.mine.steps, int(at_end), self._plan_hash]
        table = torch.zeros(dist.get_world_size(), len(row), dtype=torch.int64, device=self.engine.device)
        table[dist.get_rank()] = torch.tensor(row, dtype=torch.int64)
        dist.all_reduce(table)  # each rank fills its own row
        rows = table.cpu().tolist()
        if len({row[5] for row in rows}) > 1:  # every rank learns it here; each sends its plan to name the field
            plans: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(plans, plan_to_dict(self.plan))
            raise APIError(_plan_mismatch(plans, [row[5] for row in rows]))
        problem = _progress_problem([row[:5] for row in rows])
        if problem:
            raise APIError(problem)

    # -- resume

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same sync sequence, as plain values: the
        plan in use (`plan_to_dict`, re-plans included), this rank's plan of the current epoch,
        the epoch, its steps and syncs so far, whether it ended, and the merges so far. Save it
        after `end_epoch()` (or right after a sync), with the model, optimizer, sampler and
        schedule of the same rank."""
        return {"plan": plan_to_dict(self.plan), "rank_plan": dataclasses.asdict(self.mine), "epoch": self.epoch,
                "steps": self.steps, "syncs": self.syncs, "ended": self.ended, "merges": self.sync.merges}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of this rank (not collective). Load the model's own
        state first: the averager keeps its copy of the last merge from the loaded model
        (`divergence="skip"`). Then loop from `start_epoch`."""
        missing = [k for k in ("plan", "rank_plan", "epoch", "steps", "syncs", "ended", "merges") if k not in state]
        if missing:
            raise APIError(f"not a ModelAverager state (missing {missing}); give what ModelAverager.state_dict() "
                           f"returned")
        plan = plan_from_dict(state["plan"])
        mine = RankPlan(**{**state["rank_plan"], "shares": tuple(state["rank_plan"]["shares"]),
                           "all_steps": tuple(state["rank_plan"]["all_steps"])})
        if plan.workers != self.plan.workers or mine.rank != self.rank:
            raise APIError(f"the state is rank {mine.rank}'s of a plan for {plan.workers} workers; this is rank "
                           f"{self.rank} of {self.plan.workers}: load each rank's own checkpoint")
        self.plan, self.mine, self.epoch = plan, mine, int(state["epoch"])
        self._plan_hash = _plan_hash(plan)
        self.bounds = self.sync.boundaries(mine.steps, list(mine.all_steps))
        self.steps, self.syncs, self.ended = int(state["steps"]), int(state["syncs"]), bool(state["ended"])
        self.sync.merges = int(state["merges"])
        self.sync.start(self.engine, fresh=False)  # nothing merged; under "skip": keep the loaded model
        self._resume_epoch = None if self.ended else self.epoch
        self._restart_clock()


def _plan_hash(plan: Plan) -> int:
    """63 bits of the SHA-256 of the plan's canonical JSON: equal on ranks holding the same plan."""
    text = json.dumps(plan_to_dict(plan), sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _plan_mismatch(plans: Sequence[dict[str, Any]], hashes: Sequence[int]) -> str:
    """The line every rank raises when the ranks hold different plans: the first rank whose plan
    differs from rank 0's and the first field that differs, with both values."""
    k = next(r for r, h in enumerate(hashes) if h != hashes[0])
    where, mine, theirs = plan_difference(plans[0], plans[k]) or ("the plan", "?", "?")
    others = [r for r, h in enumerate(hashes) if h != hashes[0]]
    return (f"the ranks hold different plans: {where} is {_shown(mine)} on rank 0 but {_shown(theirs)} on rank {k}"
            f"{f' (ranks {others} differ from rank 0)' if len(others) > 1 else ''}; every rank must use the same plan "
            f"(plan_together from each rank's time model, or plan_ranks with the same inputs on every rank), else "
            f"shares overlap or leave samples out and the merge weights disagree")


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _progress_problem(rows: Sequence[Sequence[int]]) -> str | None:
    """What is wrong with the ranks' progress at a sync or an epoch end, or None: `rows[r]` is
    rank r's `(epoch, syncs done, steps taken, planned steps, at the end of the epoch)`."""
    def where(r: int) -> str:
        epoch, syncs, steps, planned, at_end = rows[r]
        place = f"the end of epoch {epoch}" if at_end else f"sync {syncs + 1} of epoch {epoch}"
        return f"rank {r} at {place} ({steps} of {planned} planned steps)"

    epochs = sorted({row[0] for row in rows})
    if len(epochs) > 1:
        return (f"the ranks are in different epochs: {'; '.join(where(r) for r in range(len(rows)))}. Every rank must "
                f"call set_epoch with the same epoch; a resumed run must load every rank's checkpoint of the same "
                f"epoch")
    off = [(r, row[2], row[3]) for r, row in enumerate(rows) if row[4] and row[2] != row[3]]
    if off:
        taken = "; ".join(f"rank {r} took {steps} of its {planned} planned steps" for r, steps, planned in off)
        fewer = any(steps < planned for _, steps, planned in off)
        why = ("an early break, a DataLoader with drop_last, or a sampler on other shares or another batch than "
               "the plan's" if fewer else "a sampler on other shares or another batch than the plan's, or step() "
               "called per micro-batch: with accumulation call it once per optimizer step")
        return (f"epoch {epochs[0]}: {taken} ({why}). Every rank must take exactly its planned steps "
                f"(averager.mine.steps): after a re-plan give the sampler the new plan with "
                f"sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch), mine = "
                f"averager.set_epoch(epoch)")
    if len({(row[1], row[4]) for row in rows}) > 1:
        return (f"the ranks reached different sync points: {'; '.join(where(r) for r in range(len(rows)))}. Every "
                f"rank must call step() once per optimizer step and end_epoch() after the epoch's last step")
    return None


# --------------------------------------------------------------------------- DeepSpeed


def deepspeed_rank_config(user_config: dict[str, Any], batch_size: int, *,
                          steps_per_epoch: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """A user's DeepSpeed config made fit for one DBSL rank with its own batch: returns
    `(config, notes)`, where notes say once what was changed (or kept: gradient clipping).
    DeepSpeed asserts `train_batch_size = micro x accumulation x data-parallel size`; each rank
    here is its own data-parallel world of one (pass `mpu=SingleRankMPU(single_rank_groups())`
    to `deepspeed.initialize`), so the batch fields become this rank's: your
    `gradient_accumulation_steps` a is kept, the micro batch is ceil(batch / a) and
    `train_batch_size` the micro batch x a (feed DeepSpeed a micro-batches per planned batch,
    e.g. from `accumulate(images, labels, parts=a)`). The `optimizer` block stays yours, its LR
    included (DeepSpeed builds it; give the same LR as `ScheduleSpec(base_lr=)`). A `scheduler`
    block is refused, as in `dbl-ps train`: DeepSpeed steps it once per optimizer step, and the
    ranks take different numbers of steps per epoch; the error says what it is in epochs (with
    the numbers when `steps_per_epoch`, a large rank's `rank_plan(plan, r).steps`, is given),
    to pass as `deepspeed.initialize(lr_scheduler=lambda opt: ScheduleLR(opt, spec, mine.steps))`.
    Everything that cannot work (also a planned batch smaller than the accumulation steps) is
    one `DeepSpeedConfigError` listing every conflict, before any step."""
    return check_rank_config(user_config, batch_size, steps_per_epoch=steps_per_epoch,
                             steps_how="steps_per_epoch" if steps_per_epoch else "")


# --------------------------------------------------------------------------- accumulation


def accumulate(inputs: torch.Tensor, targets: torch.Tensor, micro_batch: int | None = None, *,
               parts: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Gradient accumulation for a planned batch larger than this rank's memory: the batch as
    micro-batches `(inputs, targets, scale)`, `scale = micro-batch size / batch size`. Take
    `(loss_fn(model(x), y) * scale).backward()` for each, then one `optimizer.step()` and one
    `averager.step()`: the averager and the step check count optimizer steps (the plan's
    `mine.steps`), not micro-batches. The scaled mean losses add up to the batch's mean loss,
    so the accumulated gradient is the unsplit batch's (exactly, for a model without
    BatchNorm: its statistics see each micro-batch alone). `micro_batch`: the largest
    micro-batch (ceil(b / micro_batch) of them; None or >= b: the batch itself, scale 1.0).
    `parts`: exactly that many micro-batches instead (sizes differ by at most one), e.g.
    DeepSpeed's `gradient_accumulation_steps` (there: `engine.backward(loss * scale,
    scale_wrt_gas=False)` and `engine.step()` per micro-batch). The same split `dbl-ps train`
    uses (`micro_batch` in the run config)."""
    if micro_batch is not None and parts is not None:
        raise APIError(f"accumulate(micro_batch={micro_batch}, parts={parts}): give one of them")
    for name, value in (("micro_batch", micro_batch), ("parts", parts)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise APIError(f"accumulate({name}={value!r}): give a whole number >= 1")
    if inputs.shape[0] != targets.shape[0]:
        raise APIError(f"accumulate: {inputs.shape[0]} inputs but {targets.shape[0]} targets; give one batch")
    if parts is not None and parts > inputs.shape[0]:
        raise APIError(f"accumulate(parts={parts}): the batch has {inputs.shape[0]} samples, fewer than the "
                       f"micro-batches; give parts <= {inputs.shape[0]}")
    return split_batch(inputs, targets, micro_batch, parts=parts)
