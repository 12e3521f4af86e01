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
   (`boundaries`), and merges there with this worker's weight;
4. reports the epoch as an `EpochReport`.

Every random draw is a function of (seed, worker, epoch), so a resumed run repeats
the uninterrupted one. What a launcher adds (gates, stop checks, progress, fault
injection in tests) hooks in as callbacks on the named events of
`dbl_ps.training.events`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from dbl_ps.models import set_dropout
from dbl_ps.planner import Plan
from dbl_ps.schedule import SchedulePoint, ScheduleSpec, ScheduleTracker
from dbl_ps.training.engine import Engine
from dbl_ps.training.events import Callback, Callbacks
from dbl_ps.training.messages import EpochReport
from dbl_ps.training.setup import epoch_seed
from dbl_ps.training.sync import Synchronizer

__all__ = ["WorkerLoop", "EpochState"]


@dataclass
class EpochState:
    """One epoch in progress: what the plan says and how far the worker got."""

    epoch: int
    point: SchedulePoint
    batch: int
    weight: float
    steps: int  # planned local steps this epoch
    bounds: list[int]  # local step counts after which to sync
    loss_sum: torch.Tensor  # on the device: no host sync per step
    correct: torch.Tensor
    samples: int = 0
    step: int = 0
    syncs: int = 0
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
                 seed: int, callbacks: Iterable[Callback] = ()):
        self.engine = engine
        self.synchronizer = synchronizer
        self.loader = loader
        self.plan = plan
        self.spec = spec
        self.seed = seed
        self.worker = engine.topology.worker
        self.member = engine.topology.member
        self.callbacks = Callbacks(callbacks)
        self.schedule = ScheduleTracker(spec)
        self.version = 0

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
        self.engine.set_batch_size(batch)
        torch.manual_seed(epoch_seed(self.seed, self.worker, epoch, self.member))
        self.loader.set_epoch(epoch, shares=rp.shares, batch_size=batch, resolution=point.resolution)
        self.engine.module.train()
        device = self.engine.device
        return EpochState(epoch=epoch, point=point, batch=batch, weight=weight, steps=steps,
                          bounds=self.synchronizer.boundaries(steps, rp.steps()), version=self.version,
                          loss_sum=torch.zeros((), dtype=torch.float64, device=device),
                          correct=torch.zeros((), dtype=torch.int64, device=device))

    def train_steps(self, state: EpochState) -> None:
        for images, labels in self.loader:
            images, labels = self.engine.local_batch(images, labels)
            loss, out = self.engine.train_step(images, labels)
            with torch.no_grad():
                state.loss_sum += loss.double() * labels.shape[0]
                state.correct += (out.argmax(1) == labels).sum()
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
        result = self.synchronizer.sync(self.engine, state.weight)
        state.wait_seconds += result.wait_seconds
        state.sync_seconds += result.sync_seconds
        state.version = self.version = result.version
        state.syncs += 1
        self.callbacks.after_sync(self, state)

    def report(self, state: EpochState) -> EpochReport:
        samples = max(state.samples, 1)
        return EpochReport(
            worker=self.worker, member=self.member, epoch=state.epoch,
            loss=float(state.loss_sum) / samples, acc=int(state.correct) / samples,
            batch=state.batch, resolution=state.point.resolution, samples=state.samples, steps=state.step,
            syncs=state.syncs, seconds=time.perf_counter() - state.start, wait_seconds=state.wait_seconds,
            sync_seconds=state.sync_seconds, weight=state.weight, version=state.version)
