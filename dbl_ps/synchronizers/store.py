"""The parameter-store synchronizer: a worker process of `dbl-ps train` and the store.

At a sync point `FlatState.gather` copies the engine's parameters and floating
BatchNorm buffers into one float32 vector, `client.push(vec, weight=f_i)` queues it,
and `client.pull(vec)` waits until the push is merged (bsp: until the round is
complete) and copies the global state back into the model (`FlatState.scatter`).

Rule `sgd`: the payload is the displacement since the last pull (the LR-scaled
update of the local optimizer, momentum included); the store adds it with weight
f_i at lr 1 and no server momentum, which would also amplify the BatchNorm
statistics' changes that travel in the same vector.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from dbl_ps.store import StoreClient
from dbl_ps.training.engine import Engine
from dbl_ps.training.flat import FlatState
from dbl_ps.training.setup import sync_boundaries
from dbl_ps.training.sync import Synchronizer, SyncResult

__all__ = ["StoreSynchronizer"]


class StoreSynchronizer(Synchronizer):
    """Worker `worker`'s client of the store `store_name` (`store.mode`, `store.rule`, `store.sync_every`)."""

    def __init__(self, store_name: str, worker: int, *, mode: str, rule: str, sync_every: int | str):
        self.mode, self.rule, self.sync_every = mode, rule, sync_every
        self.client = StoreClient(store_name, worker)
        self.flat: FlatState | None = None
        self.vec: torch.Tensor | None = None
        self.reference: torch.Tensor | None = None  # rule sgd: the state at the last pull
        self.payload: torch.Tensor | None = None

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        return sync_boundaries(steps, self.sync_every, self.mode, all_steps)

    def start(self, engine: Engine, *, fresh: bool) -> int:
        # The engine may have recast its module (DeepSpeed bf16): flatten what it trains.
        self.flat = FlatState(engine.module)
        self.vec = self.flat.new_vector()
        version = self.client.pull(self.vec)
        self.flat.scatter(self.vec)
        engine.after_sync()
        if self.rule == "sgd":
            self.reference, self.payload = self.vec.clone(), self.flat.new_vector()
        return version

    def sync(self, engine: Engine, weight: float) -> SyncResult:
        assert self.flat is not None and self.vec is not None, "start() first"
        gathered = time.perf_counter()
        self.flat.gather(self.vec)
        pushing = time.perf_counter()
        if self.reference is not None:
            torch.sub(self.reference, self.vec, out=self.payload)
            self.client.push(self.payload, weight=weight)
        else:
            self.client.push(self.vec, weight=weight)
        version = self.client.pull(self.vec)
        pulled = time.perf_counter()
        self.flat.scatter(self.vec)
        engine.after_sync()
        if self.reference is not None:
            self.reference.copy_(self.vec)
        # push + pull is mostly waiting (queue full, bsp round, ssp bound): counted as waiting,
        # the copies in and out of the model as the sync itself
        return SyncResult(version=version, wait_seconds=pulled - pushing,
                          sync_seconds=(pushing - gathered) + (time.perf_counter() - pulled))

    def close(self) -> None:
        self.client.close()
