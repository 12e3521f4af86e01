"""The mixed-batch synchronizer (`sync: mixed_batch`): ordinary synchronous data parallelism
in which every rank trains its planned share of one global batch per step.

The merging happens inside the engine's steps, not here: `start` asks the engine to merge
gradients over the world in every step (`Engine.gradient_sync`; the torch engine wraps its
module in DDP with a communication hook that weights each bucket by ``b_i / B``,
`dbl_ps.training.gradient_weighting`), and `begin_epoch` hands it the epoch's weight (the batch
changes with the resolution and with a re-plan). Every rank therefore holds the same model
after every step, and the plan (`dbl_ps.planner.mixed`) gives every rank the same number of
steps, so the collectives inside backward pair up.

The one sync per epoch, at its end, is the divergence check: the same all-reduced flag vector
as the collective synchronizer's, so every rank learns a non-finite loss or state at the same
point and all stop together (`divergence: stop`; a skip cannot be honoured, since a rank's
gradients are already in everyone's step, so the config refuses it). Its wait is the time the
ranks waited for each other inside their steps (from the hook), which re-planning takes off
each rank's own training time.

The coordinator is the collective mode's (`CollectiveCoordinator`): gathering reports, rank 0
writing the files, resuming and re-planning are the same.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from dbl_ps.config import RunConfig
from dbl_ps.planner import Plan
from dbl_ps.synchronizers.collective import CollectiveSynchronizer
from dbl_ps.training.engine import Engine
from dbl_ps.training.sync import Synchronizer, SyncResult
from dbl_ps.training.topology import Topology

__all__ = ["MixedBatchSynchronizer", "rank_synchronizer"]


class MixedBatchSynchronizer(Synchronizer):
    """Gradients merged inside every step by the engine; one divergence check per epoch."""

    def __init__(self) -> None:
        self.checks = 0

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        if len(set(all_steps)) != 1:  # a plan that is not a mixed-batch plan would hang in backward
            raise ValueError(f"sync mixed_batch needs the same number of steps on every rank, the plan gives "
                             f"{list(all_steps)}; plan with dbl_ps.planner.mixed")
        return [steps]

    def start(self, engine: Engine, *, fresh: bool) -> int:
        # DDP broadcasts rank 0's model on construction: every rank starts from the same one
        # (on a resume every rank has loaded the same model.pt anyway).
        engine.gradient_sync(weight=1.0 / engine.topology.workers)
        return self.checks

    def begin_epoch(self, engine: Engine, weight: float) -> None:
        engine.set_gradient_weight(weight)

    def sync(self, engine: Engine, weight: float, *, loss: torch.Tensor | None = None) -> SyncResult:
        checking = time.perf_counter()
        diverged = CollectiveSynchronizer.diverged_workers(engine, loss)
        self.checks += 1
        return SyncResult(version=self.checks, wait_seconds=engine.take_wait_seconds(),
                          sync_seconds=time.perf_counter() - checking, diverged=diverged, merged=not diverged)


def rank_synchronizer(cfg: RunConfig, plan: Plan, topology: Topology) -> MixedBatchSynchronizer:
    """A rank's synchronizer for `sync: mixed_batch` (the process group is initialised)."""
    return MixedBatchSynchronizer()
