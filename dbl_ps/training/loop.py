"""The worker loop: one implementation for every worker process of `dbl-ps train` and
every rank of a multi-rank job.

Per global epoch `e` a worker

1. prepares the epoch: `schedule_at(e)` gives LR, resolution and dropout, the plan of
   that resolution gives this worker's share, batch size and merge weight; the engine
   and the loader switch in place (no new process at a resolution change); the torch
   RNG (dropout) is seeded with `epoch_seed(seed, worker, e, member)`;
2. trains on exactly its share (the loader yields it), accumulating loss and accuracy
   on the device (no host sync per step);
3. syncs when due: the synchronizer says after which local steps
   (`boundaries`), and merges there with this worker's weight; the loss since the
   last sync goes with it, and a non-finite loss or state is caught there, before it
   is merged (`DivergedError` with `divergence: stop`, a counted skip with `skip`).
   Every epoch ends with a sync, so the last steps of an epoch are checked too;
4. reports the epoch as an `EpochReport`.

Every random draw is a function of (seed, worker, epoch), so a resumed run repeats
the uninterrupted one. What a launcher adds (gates, stop checks, progress, fault
injection in tests) hooks in as callbacks on the named events of
`dbl_ps.training.events`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from dbl_ps.models import set_dropout
from dbl_ps.planner import Plan
from dbl_ps.schedule import SchedulePoint, ScheduleSpec, ScheduleTracker, starts_phase
from dbl_ps.training.engine import Engine, hard_labels
from dbl_ps.training.events import Callback, Callbacks
from dbl_ps.training.messages import EpochReport
from dbl_ps.training.steps import epoch_seed, warm_up_shapes
from dbl_ps.training.sync import Synchronizer

__all__ = ["WorkerLoop", "EpochState", "DivergedError"]


class DivergedError(RuntimeError):
    """A worker's loss or model state became non-finite (`divergence: stop`). Every rank of
    a multi-rank job raises it at the same sync, naming the same worker."""

    def __init__(self, worker: int, epoch: int, step: int, loss: float):
        self.worker, self.epoch, self.step, self.loss = worker, epoch, step, loss
        what = f"loss {loss:.4g}" if not math.isfinite(loss) else f"loss {loss:.4g}, but its model state is not finite"
        # epochs counted from 1, as on the console
        super().__init__(f"worker {worker} diverged at epoch {epoch + 1} step {step} ({what})")


@dataclass
class EpochState:
    """One epoch in progress: what the plan says and how far the worker got."""

    epoch: int
    point: SchedulePoint
    batch: int
    weight: float
    steps: int  # planned local steps this epoch
    bounds: list[int]  # local step counts after which to sync
    # Loss and accuracy of the steps since the last sync, on the device (no host sync per
    # step); added to the epoch's sums when the sync merged them, dropped when it skipped them.
    period_loss: torch.Tensor
    period_correct: torch.Tensor
    loss_sum: torch.Tensor  # the epoch's merged periods
    correct: torch.Tensor
    period_samples: int = 0
    merged_samples: int = 0  # samples of the merged periods (the denominator of loss and acc)
    samples: int = 0  # every sample trained this epoch
    step: int = 0
    syncs: int = 0
    skipped_syncs: int = 0
    wait_seconds: float = 0.0
    sync_seconds: float = 0.0
    version: int = 0
    start: float = field(default_factory=time.perf_counter)

    @property
    def sync_due(self) -> bool:
        return self.syncs < len(self.bounds) and self.bounds[self.syncs] <= self.step


class WorkerLoop:
    """Trains one worker (one rank of it) epoch by epoch over an engine and a synchronizer.

    `loader` yields this worker's share of each epoch as `(images, labels)` batches on
    the engine's device; `set_epoch(epoch, shares=, batch_size=, resolution=)` moves it
    to the next epoch (`ShareLoader`, `ShardShareLoader`, or anything alike)."""

    def __init__(self, *, engine: Engine, synchronizer: Synchronizer, loader: Any, plan: Plan, spec: ScheduleSpec,
                 seed: int, callbacks: Iterable[Callback] = (), restart_momentum: bool = False, in_channels: int = 3):
        self.engine = engine
        self.synchronizer = synchronizer
        self.loader = loader
        self.plan = plan
        self.spec = spec
        self.seed = seed
        self.restart_momentum = restart_momentum  # optim.restart_momentum: zero it at each new phase
        self.worker = engine.topology.worker
        self.member = engine.topology.member
        self.callbacks = Callbacks(callbacks)
        self.schedule = ScheduleTracker(spec)
        self.in_channels = in_channels  # of the images, for warming up the engine's shapes
        self.version = 0

    def warm_up(self) -> float:
        """Prepare the engine for every shape the plan trains (compiling, `compile: true`) outside
        the timed epochs; returns the seconds it took."""
        return self.engine.warm_up(warm_up_shapes(self.plan, self.spec, self.worker), self.in_channels)

    def set_plan(self, plan: Plan) -> float:
        """Train with `plan` from the next epoch on (a re-plan: every worker of every mode takes the
        same one at the same epoch boundary), its new shapes warmed up before that epoch."""
        self.plan = plan
        return self.warm_up()

    def start(self, *, fresh: bool) -> None:
        """The global model into the engine before the first step."""
        self.version = self.synchronizer.start(self.engine, fresh=fresh)

    def run(self, start_epoch: int) -> Iterator[EpochReport]:
        for epoch in range(start_epoch, int(self.spec.epochs)):
            yield self.run_epoch(epoch)

    def run_epoch(self, epoch: int) -> EpochReport:
        self.callbacks.on_epoch_start(self, epoch)
        state = self.prepare_epoch(epoch)
        self.train_steps(state)
        report = self.report(state)
        self.callbacks.on_epoch_end(self, report)
        return report

    # -- the four parts of an epoch

    def prepare_epoch(self, epoch: int) -> EpochState:
        point, changed = self.schedule.update(epoch)
        rp = self.plan[point.resolution]
        batch, weight, steps = rp.batches[self.worker], rp.merge_weights[self.worker], rp.steps()[self.worker]
        if "dropout" in changed:
            set_dropout(self.engine.module, point.dropout)
        self.engine.set_lr(point.lr)
        if self.restart_momentum and starts_phase(epoch, self.spec):
            self.engine.reset_optimizer_state()
        self.engine.set_batch_size(batch)
        torch.manual_seed(epoch_seed(self.seed, self.worker, epoch, self.member))
        self.loader.set_epoch(epoch, shares=rp.shares, batch_size=batch, resolution=point.resolution)
        self.synchronizer.begin_epoch(self.engine, weight)
        self.engine.module.train()
        device = self.engine.device

        def zero(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((), dtype=dtype, device=device)

        return EpochState(epoch=epoch, point=point, batch=batch, weight=weight, steps=steps,
                          bounds=self.synchronizer.boundaries(steps, rp.steps()), version=self.version,
                          period_loss=zero(torch.float64), period_correct=zero(torch.int64),
                          loss_sum=zero(torch.float64), correct=zero(torch.int64))

    def train_steps(self, state: EpochState) -> None:
        for images, labels in self.loader:
            images, labels = self.engine.local_batch(images, labels)
            loss, out = self.engine.train_step(images, labels)
            with torch.no_grad():
                state.period_loss += loss.double() * labels.shape[0]
                state.period_correct += (out.argmax(1) == hard_labels(labels)).sum()
            state.period_samples += labels.shape[0]
            state.samples += labels.shape[0]
            state.step += 1
            self.callbacks.on_step(self, state)
            while state.sync_due:
                self.sync(state)
        if state.syncs != len(state.bounds):  # a consistent plan never gets here; never skip a collective
            raise RuntimeError(f"worker {self.worker} ran {state.syncs} of {len(state.bounds)} syncs in epoch "
                               f"{state.epoch} ({state.step} of {state.steps} planned steps: is the data shorter "
                               f"than the planned shares?)")

    def sync(self, state: EpochState) -> None:
        self.callbacks.before_sync(self, state)
        # The mean loss since the last sync, still on the device: the synchronizer checks it
        # with the state it is about to merge (one check per sync, none per step).
        loss = state.period_loss / max(state.period_samples, 1)
        result = self.synchronizer.sync(self.engine, state.weight, loss=loss)
        state.wait_seconds += result.wait_seconds
        state.sync_seconds += result.sync_seconds
        if not result.merged:  # divergence 'stop': nothing was merged, on any rank
            raise self._diverged(state, result.diverged)
        state.version = self.version = result.version
        if self.worker in result.diverged:  # divergence 'skip': this worker's update was left out
            state.skipped_syncs += 1
            self.engine.reset_optimizer_state()  # its momentum holds the non-finite step
        else:
            state.loss_sum += state.period_loss
            state.correct += state.period_correct
            state.merged_samples += state.period_samples
        state.period_loss.zero_()
        state.period_correct.zero_()
        state.period_samples = 0
        state.syncs += 1
        self.callbacks.after_sync(self, state)

    def _diverged(self, state: EpochState, diverged: dict[int, float]) -> DivergedError:
        """The error for the first diverged worker, at the step of this sync in its own epoch
        (a function of the plan, so every rank names the same step)."""
        worker = min(diverged)
        all_steps = self.plan[state.point.resolution].steps()
        step = self.synchronizer.boundaries(all_steps[worker], all_steps)[state.syncs]
        return DivergedError(worker, state.epoch, step, diverged[worker])

    def report(self, state: EpochState) -> EpochReport:
        merged = state.merged_samples
        return EpochReport(
            worker=self.worker, member=self.member, epoch=state.epoch,
            # nan (null in metrics.jsonl) when every sync of the epoch was skipped
            loss=float(state.loss_sum) / merged if merged else math.nan,
            acc=int(state.correct) / merged if merged else math.nan,
            batch=state.batch, resolution=state.point.resolution, samples=state.samples, steps=state.step,
            syncs=state.syncs, seconds=time.perf_counter() - state.start, wait_seconds=state.wait_seconds,
            sync_seconds=state.sync_seconds, weight=state.weight, version=state.version,
            skipped_syncs=state.skipped_syncs)
