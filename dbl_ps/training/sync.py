"""The Synchronizer interface: how a worker's model meets the global model.

Two implementations live in `dbl_ps.synchronizers`: the shared-memory parameter
store client (`dbl-ps train` on one machine: push, the store merges with the
configured rule, pull) and `torch.distributed` weighted averaging (every rank of a
multi-rank job). The loop asks the synchronizer where the syncs of an epoch fall,
and calls `sync` there; it never knows which one it holds.

Divergence: a sync is where a non-finite loss or model state is caught, before it is
merged (checking there costs one pass per sync and no host sync per step). The
synchronizer holds the run's policy (`divergence`): `stop` merges nothing and reports
the diverged workers (every rank of a collective learns it at the same sync, so all
stop together); `skip` lets a diverged worker contribute its state of the last sync
instead (an unchanged contribution) and continue from the merged state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

    from dbl_ps.training.engine import Engine

__all__ = ["Synchronizer", "SyncResult"]


@dataclass
class SyncResult:
    version: int  # the global state's version this worker now holds
    wait_seconds: float  # waiting for other workers (bsp round, ssp bound, barrier)
    sync_seconds: float  # moving and merging the state itself
    # Workers whose loss or state was non-finite at this sync, with their mean loss since the
    # last sync. Their state was not merged.
    diverged: dict[int, float] = field(default_factory=dict)
    # False: nothing was merged because a worker diverged (`divergence: stop`); the loop stops.
    merged: bool = True


class Synchronizer:
    """What the loop needs from a synchronizer."""

    # Steps between syncs, or "mini_epoch" (store.sync_every); `boundaries` reads it, and a
    # callback may change it between epochs (post-local SGD, `dbl_ps.training.algorithms`).
    sync_every: int | str = "mini_epoch"

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        """Local step counts after which a worker with `steps` steps this epoch syncs
        (`all_steps`: every worker's step count, for modes that need equal sync counts)."""
        raise NotImplementedError

    def begin_epoch(self, engine: "Engine", weight: float) -> None:
        """An epoch starts with this worker's merge weight (`sync: mixed_batch`: the gradient
        weight of every step of the epoch); most synchronizers need nothing here."""

    def start(self, engine: "Engine", *, fresh: bool) -> int:
        """Give the engine's model the global state before the first step; returns its version.
        `fresh`: a new run (not a resumed one)."""
        raise NotImplementedError

    def sync(self, engine: "Engine", weight: float, *, loss: "torch.Tensor | None" = None) -> SyncResult:
        """Merge the engine's model into the global one with merge weight `weight`,
        and continue from the merged state. `loss`: this worker's mean loss since the last
        sync (a scalar on the device); a non-finite `loss` or model state is not merged
        (see the module docstring and `SyncResult.diverged`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the synchronizer holds (store handles); idempotent."""
