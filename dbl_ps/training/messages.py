"""What a worker tells whoever runs the job (the launcher, or rank 0), as dataclasses.

In the store mode they travel through a multiprocessing queue; in the multi-rank
mode `EpochReport`s are gathered with `all_gather_object`. Either way the epoch
finisher receives the same objects and writes the same metric keys.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EpochReport", "Progress", "WorkerReady", "WorkerFinished", "WorkerStopped", "WorkerFailed", "WORKER_KEYS",
           "merge_members"]

# The per-worker keys of every epoch record in metrics.jsonl, in every mode and engine.
WORKER_KEYS = ("worker", "loss", "acc", "batch", "resolution", "samples", "steps", "syncs", "skipped_syncs",
               "samples_per_s", "seconds", "wait_seconds", "sync_seconds", "weight", "version", "grad_sq")


@dataclass
class EpochReport:
    """One worker's (or one rank's) statistics for one global epoch."""

    worker: int
    epoch: int
    loss: float  # mean training loss over the epoch's merged samples (nan: every sync was skipped)
    acc: float  # training top-1 over the same samples
    batch: int
    resolution: int
    samples: int
    steps: int
    syncs: int  # pushes (store) or merges (collective) this epoch
    seconds: float  # the whole epoch, syncs included
    wait_seconds: float  # waiting for other workers at syncs (bsp round, ssp bound, barrier)
    sync_seconds: float  # the merge itself (push + pull, or the all-reduce)
    weight: float  # merge weight f_i
    version: int  # the global state's version after the last sync (store rounds/updates, or merges)
    skipped_syncs: int = 0  # syncs whose update was non-finite and left out (`divergence: skip`)
    member: int = 0  # rank inside a worker group (FSDP); 0 otherwise
    # (batch, |g|^2) of each step's whole-batch gradient (noise_scale.measure; [] when not
    # measured): the gradient noise scale's input (`dbl_ps.noise_scale`)
    grad_sq: list[tuple[int, float]] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    @property
    def planned_grad_sq(self) -> list[float]:
        """`|g|^2` of the steps at the planned batch (a share's last, smaller batch left out)."""
        return [sq for b, sq in self.grad_sq if b == self.batch and math.isfinite(sq)]

    def to_record(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples_per_s"] = self.samples_per_s
        at_batch = self.planned_grad_sq
        data["grad_sq"] = statistics.fmean(at_batch) if at_batch else None  # mean |g|^2 at its batch
        return {k: data[k] for k in WORKER_KEYS}


def merge_members(members: list[EpochReport]) -> EpochReport:
    """One worker's report from its group members' (each saw a slice of every batch)."""
    first = members[0]
    samples = sum(m.samples for m in members)
    return EpochReport(
        worker=first.worker, epoch=first.epoch,
        loss=sum(m.loss * m.samples for m in members) / max(samples, 1),
        acc=sum(m.acc * m.samples for m in members) / max(samples, 1),
        batch=first.batch, resolution=first.resolution, samples=samples, steps=first.steps, syncs=first.syncs,
        seconds=max(m.seconds for m in members), wait_seconds=max(m.wait_seconds for m in members),
        sync_seconds=max(m.sync_seconds for m in members), weight=first.weight, version=first.version,
        skipped_syncs=max(m.skipped_syncs for m in members),
        # each member holds a shard of the worker's gradient and a slice of its batch: both add up
        grad_sq=[(sum(b for b, _ in step), sum(sq for _, sq in step)) for step in zip(*(m.grad_sq for m in members))])


@dataclass
class Progress:
    """Where a worker is inside an epoch (for progress bars)."""

    worker: int
    epoch: int
    step: int
    steps: int
    batch: int
    resolution: int
    samples_per_s: float


@dataclass
class WorkerReady:
    """The worker has built its engine and loader and waits to start its first epoch."""

    worker: int


@dataclass
class WorkerFinished:
    worker: int


@dataclass
class WorkerStopped:
    """The worker stopped because it was asked to (or its launcher or store went away)."""

    worker: int


@dataclass
class WorkerFailed:
    """The worker raised. `message`: one line a user can act on (a corrupt shard, a
    divergence), which the launcher prints instead of the traceback; None for anything
    unexpected, where the traceback is what helps. `diverged`: the failure is a
    non-finite loss or state (the run's status becomes "diverged")."""

    worker: int
    traceback: str
    message: str | None = None
    diverged: bool = False
