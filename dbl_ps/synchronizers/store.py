"""The parameter-store synchronizer: a worker process of `dbl-ps train` and the store.

At a sync point `FlatState.gather` copies the engine's parameters and floating
BatchNorm buffers into one float32 vector, `client.push(vec, weight=f_i)` queues it,
and `client.pull(vec)` waits until the push is merged (bsp: until the round is
complete) and copies the global state back into the model (`FlatState.scatter`).

Rule `sgd`: the payload is the displacement since the last pull (the LR-scaled
update of the local optimizer, momentum included); the store adds it with weight
f_i at lr 1 and no server momentum, which would also amplify the BatchNorm
statistics' changes that travel in the same vector.

Divergence: the gathered vector and the loss since the last pull are checked before
the push (one sum over the vector per sync). `stop`: nothing is pushed, so the
global state never holds a non-finite value; the loop raises and the launcher stops
the run. `skip`: the worker pushes an unchanged contribution instead, the state of
its last pull (rule sgd: a zero displacement), because a worker cannot leave a bsp
round or an ssp clock without pushing; then it pulls and continues from the merged
state.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from dbl_ps.parameter_store import ParameterStore, StoreClient
from dbl_ps.training.averaging import all_finite
from dbl_ps.training.engine import Engine
from dbl_ps.training.flat import FlatState
from dbl_ps.training.setup import sync_boundaries
from dbl_ps.training.sync import Synchronizer, SyncResult

__all__ = ["StoreSynchronizer", "StoreServer", "StoreSetupError"]


class StoreSetupError(RuntimeError):
    """The parameter store could not be created (e.g. too little shared memory)."""


class StoreServer:
    """The store's server half, held by the launcher: the store itself, the epoch gate the
    workers wait at, the plan version they watch, and the global state read back after
    each epoch into the launcher's model.

    `gate` and `plan_version` are shared integers (a multiprocessing context's `Value`):
    a worker may start epoch `e` once `gate >= e` (bsp, or any mode with dbl.replan; asp/ssp
    run at most one epoch ahead), and re-reads plan.json when `plan_version` changed."""

    def __init__(self, cfg: Any, model: torch.nn.Module, *, ctx: Any, start_epoch: int):
        self.flat = FlatState(model)
        # The store first: a machine short of shared memory fails here, before anything
        # else is opened or any process started.
        try:
            # rule sgd: payloads are displacements already scaled by the local LR (StoreSynchronizer)
            self.store = ParameterStore(
                self.flat.numel, cfg.dbl.workers, mode=cfg.store.mode, rule=cfg.store.rule,
                staleness=cfg.store.staleness, apply_threads=cfg.store.apply_threads or None, lr=1.0, momentum=0.0,
                initial=self.flat.gather(), reject_non_finite=cfg.store.reject_non_finite,
            )
        except OSError as exc:
            raise StoreSetupError(f"cannot create the parameter store: {exc}") from None
        self.name = self.store.name
        # Shut until every worker is ready (the launcher opens it at start_epoch).
        self.gate = ctx.Value("i", start_epoch - 2)
        self.plan_version = ctx.Value("i", 0)
        self._state = self.flat.new_vector()

    def open_gate(self, epoch: int) -> None:
        """Workers may start `epoch`."""
        self.gate.value = epoch

    def read_global(self, version: int) -> int:
        """Once the store applied every push up to `version`, copy the global state into the
        launcher's model; returns the version read."""
        while self.store.version < version:  # the server may still be applying the last pushes
            time.sleep(0.0005)
        read = self.store.read(self._state)
        self.flat.scatter(self._state)
        return read

    def publish_plan(self) -> None:
        """plan.json holds a new plan: the workers take it up at their next epoch start."""
        self.plan_version.value += 1

    def stats(self) -> dict[str, Any]:
        return self.store.server_stats()

    def close(self) -> None:
        self.store.close()


class StoreSynchronizer(Synchronizer):
    """Worker `worker`'s client of the store `store_name` (`store.mode`, `store.rule`, `store.sync_every`)."""

    def __init__(self, store_name: str, worker: int, *, mode: str, rule: str, sync_every: int | str,
                 divergence: str = "stop"):
        self.mode, self.rule, self.sync_every = mode, rule, sync_every
        self.worker = worker
        self.skip_nonfinite = divergence == "skip"
        self.client = StoreClient(store_name, worker)
        self.flat: FlatState | None = None
        self.vec: torch.Tensor | None = None
        # The state at the last pull: rule sgd pushes the displacement from it; divergence
        # 'skip' pushes it unchanged in place of a non-finite state.
        self.reference: torch.Tensor | None = None
        self.payload: torch.Tensor | None = None
        self.version = 0
        self.rejected = 0  # this worker's pushes the store refused so far (store.reject_non_finite)

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        return sync_boundaries(steps, self.sync_every, self.mode, all_steps)

    def start(self, engine: Engine, *, fresh: bool) -> int:
        # The engine may have recast its module (DeepSpeed bf16): flatten what it trains.
        self.flat = FlatState(engine.module)
        self.vec = self.flat.new_vector()
        version = self.version = self.client.pull(self.vec)
        self.flat.scatter(self.vec)
        engine.after_sync()
        if self.rule == "sgd" or self.skip_nonfinite:
            self.reference = self.vec.clone()
        if self.rule == "sgd":
            self.payload = self.flat.new_vector()
        return version

    def sync(self, engine: Engine, weight: float, *, loss: torch.Tensor | None = None) -> SyncResult:
        assert self.flat is not None and self.vec is not None, "start() first"
        gathered = time.perf_counter()
        self.flat.gather(self.vec)
        # The vector is on the host now, so this check adds no device sync of its own.
        finite = bool(all_finite([self.vec])) and (loss is None or bool(torch.isfinite(loss)))
        diverged = {} if finite else {self.worker: float(loss) if loss is not None else math.nan}
        if not finite and not self.skip_nonfinite:
            return SyncResult(version=self.version, wait_seconds=0.0, sync_seconds=time.perf_counter() - gathered,
                              diverged=diverged, merged=False)
        pushing = time.perf_counter()
        if not finite:  # skip: the state of the last pull, an unchanged contribution
            assert self.reference is not None
            if self.rule == "sgd":
                self.client.push(self.payload.zero_(), weight=weight)
            else:
                self.client.push(self.reference, weight=weight)
        elif self.rule == "sgd":
            torch.sub(self.reference, self.vec, out=self.payload)
            self.client.push(self.payload, weight=weight)
        else:
            self.client.push(self.vec, weight=weight)
        version = self.version = self.client.pull(self.vec)
        pulled = time.perf_counter()
        rejected = self.client.rejected()
        if rejected > self.rejected:  # the store refused this push (store.reject_non_finite): a non-finite merge
            self.rejected = rejected
            diverged = {self.worker: float(loss) if loss is not None else math.nan}
            if not self.skip_nonfinite:
                return SyncResult(version=version, wait_seconds=pulled - pushing, sync_seconds=pushing - gathered,
                                  diverged=diverged, merged=False)
        self.flat.scatter(self.vec)
        engine.after_sync()
        if self.reference is not None:
            self.reference.copy_(self.vec)
        # push + pull is mostly waiting (queue full, bsp round, ssp bound): counted as waiting,
        # the copies in and out of the model as the sync itself
        return SyncResult(version=version, wait_seconds=pulled - pushing,
                          sync_seconds=(pushing - gathered) + (time.perf_counter() - pulled), diverged=diverged)

    def close(self) -> None:
        self.client.close()
