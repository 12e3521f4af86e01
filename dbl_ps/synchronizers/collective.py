"""The collective synchronizer: every rank of a multi-rank job merges with `torch.distributed`.

A sync is a barrier (timed apart: waiting for slower workers) and then the
share-weighted average `sum f_i w_i / sum f_i` of the tensors the engine exposes
(`engine.sync_tensors()` over `engine.sync_group()`: the whole model for one rank
per worker, the local shards over the replicate axis for FSDP), plus what the engine
averages apart (`buffer_sync`), and the engine's copies are refreshed (`after_sync`:
DeepSpeed's fp32 masters).

Invariant: every rank issues the same sequence of collectives. The number of syncs
per epoch is a function of the plan only (`sync_boundaries(..., "bsp", all_steps)`:
`S = ceil(max steps / k)` syncs spread over each worker's own steps), never of a
rank's own step count, so ranks may take different numbers of steps without a hang.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

from dbl_ps.training.averaging import weighted_average_
from dbl_ps.training.engine import Engine
from dbl_ps.training.setup import sync_boundaries
from dbl_ps.training.sync import Synchronizer, SyncResult
from dbl_ps.training.topology import Topology

__all__ = ["CollectiveSynchronizer", "init_distributed"]


def init_distributed(topology: Topology, backend: str, timeout_s: float) -> None:
    """`init_process_group` with a timeout (a missing rank is an error, not a hang)."""
    if dist.is_initialized():
        return
    if backend == "nccl":
        torch.cuda.set_device(topology.local_rank)
    dist.init_process_group(backend, rank=topology.rank, world_size=topology.world,
                            timeout=timedelta(seconds=timeout_s))


class CollectiveSynchronizer(Synchronizer):
    """Share-weighted averaging across the ranks of an initialised process group."""

    def __init__(self, sync_every: int | str):
        self.sync_every = sync_every
        self.merges = 0

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        return sync_boundaries(steps, self.sync_every, "bsp", all_steps)

    def start(self, engine: Engine, *, fresh: bool) -> int:
        if fresh:
            self.merge(engine, 1.0)  # an identical start on every rank, whatever the seeding did
        # resumed: every rank loaded the same model.pt
        return self.merges

    def sync(self, engine: Engine, weight: float) -> SyncResult:
        waiting = time.perf_counter()
        dist.barrier()
        merging = time.perf_counter()
        self.merge(engine, weight)
        self.merges += 1
        return SyncResult(version=self.merges, wait_seconds=merging - waiting,
                          sync_seconds=time.perf_counter() - merging)

    @staticmethod
    def merge(engine: Engine, weight: float) -> None:
        weighted_average_(engine.sync_tensors(), weight, engine.sync_group())
        engine.buffer_sync(weight)
        engine.after_sync()
