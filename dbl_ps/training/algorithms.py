"""Training methods that act on the worker loop through its events, and the list a run's
config asks for (`worker_callbacks`), built in every worker process and every rank.

* **Post-local SGD** (Lin et al., "Don't Use Large Mini-Batches, Use Local SGD", 2020;
  PyTorch's `PostLocalSGDOptimizer` with a `PeriodicModelAverager`): the workers' models are
  merged every `store.sync_every` steps (1: every step, synchronous data parallelism) until
  `store.post_local_start` (the first LR milestone by default), then every
  `store.post_local_every` steps. `post_local_period` is the pure function of the epoch,
  `PostLocalSGD` sets the synchronizer's period before each epoch's syncs are planned. Every
  rank computes the same period from the same epoch, so the syncs per epoch stay a function
  of the plan and the epoch, equal on every rank.
* **The gradient noise scale's measurement** (`noise_scale.measure`): `GradientNormMeter`
  (`dbl_ps.training.noise`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from dbl_ps.config import RunConfig
from dbl_ps.training.engine import merges_gradients
from dbl_ps.training.events import Callback
from dbl_ps.training.noise import GradientNormMeter

if TYPE_CHECKING:
    from dbl_ps.training.loop import WorkerLoop

__all__ = ["post_local_period", "post_local_start", "PostLocalSGD", "sync_periods", "worker_callbacks"]


def post_local_period(epoch: int, *, start: int, every: int, before: int | str) -> int | str:
    """The sync period of global epoch `epoch` (from 0): `before` until epoch `start`, `every` from it."""
    return before if epoch < start else every


def post_local_start(cfg: RunConfig) -> int:
    """The epoch post-local SGD switches at: `store.post_local_start`, else the first LR milestone."""
    return cfg.store.post_local_start if cfg.store.post_local_start is not None else cfg.schedule.milestones[0]


class PostLocalSGD(Callback):
    """Sets `loop.synchronizer.sync_every` to `post_local_period` at the start of every epoch."""

    def __init__(self, *, start: int, every: int, before: int | str):
        self.start, self.every, self.before = start, every, before

    def on_epoch_start(self, loop: "WorkerLoop", epoch: int) -> None:
        loop.synchronizer.sync_every = post_local_period(epoch, start=self.start, every=self.every,
                                                         before=self.before)


def sync_periods(cfg: RunConfig) -> Sequence[int | str]:
    """Every sync period a run of `cfg` uses (`store.sync_every`, and post-local SGD's after the switch)."""
    return [cfg.store.sync_every] + ([cfg.store.post_local_every] if cfg.store.post_local_every is not None else [])


def worker_callbacks(cfg: RunConfig) -> list[Callback]:
    """The loop callbacks `cfg` asks for, in every worker process and rank (none by default)."""
    callbacks: list[Callback] = []
    if cfg.store.post_local_every is not None:
        callbacks.append(PostLocalSGD(start=post_local_start(cfg), every=cfg.store.post_local_every,
                                      before=cfg.store.sync_every))
    if cfg.noise_scale.measure and not merges_gradients(cfg):
        # (where gradients are merged inside the step, a rank's norm after backward is the global
        # batch's: its own batch's is not there to measure, and the driver's probe measures instead)
        callbacks.append(GradientNormMeter())
    return callbacks
