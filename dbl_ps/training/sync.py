"""The Synchronizer interface: how a worker's model meets the global model.

Two implementations live in `dbl_ps.synchronizers`: the shared-memory parameter
store client (`dbl-ps train` on one machine: push, the store merges with the
configured rule, pull) and `torch.distributed` weighted averaging (every rank of a
multi-rank job). The loop asks the synchronizer where the syncs of an epoch fall,
and calls `sync` there; it never knows which one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from dbl_ps.training.engine import Engine

__all__ = ["Synchronizer", "SyncResult"]


@dataclass
class SyncResult:
    version: int  # the global state's version this worker now holds
    wait_seconds: float  # waiting for other workers (bsp round, ssp bound, barrier)
    sync_seconds: float  # moving and merging the state itself


class Synchronizer:
    """What the loop needs from a synchronizer."""

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        """Local step counts after which a worker with `steps` steps this epoch syncs
        (`all_steps`: every worker's step count, for modes that need equal sync counts)."""
        raise NotImplementedError

    def start(self, engine: "Engine", *, fresh: bool) -> int:
        """Give the engine's model the global state before the first step; returns its version.
        `fresh`: a new run (not a resumed one)."""
        raise NotImplementedError

    def sync(self, engine: "Engine", weight: float) -> SyncResult:
        """Merge the engine's model into the global one with merge weight `weight`,
        and continue from the merged state."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the synchronizer holds (store handles); idempotent."""
