"""The parameter-store synchronizer: a worker process of `dbl-ps train` and the store.

At a sync point `client.reserve()` hands out this worker's next queue slot in shared
memory, `FlatState.gather_checked` writes the engine's parameters and floating
BatchNorm buffers straight into it, and `client.commit(f_i)` publishes it;
`client.snapshot()` waits until the push is merged (bsp: until the round is complete)
and pins the global state in place, and `FlatState.scatter_keeping` loads the model
straight from it. So a sync
moves the state once in each direction (on a GPU: one device-to-host DMA into the slot
and one host-to-device DMA from the snapshot, both regions page-locked with
`FlatState.pin_host`). On the CPU both copies are the store's kernels
(`FlatState.gather_checked`, `scatter_keeping`), which fold the divergence check, rule
sgd's displacement and the copy of the pulled state into the same pass. The copying
path (`zero_copy=False`) is the sync as it was before (issue 26): gather into a private
vector with torch's copies, check with a sum, `push` copies it into a slot, `pull`
copies the state out, scatter: three more passes over the state (five for rule sgd,
whose subtraction and kept reference are passes of their own there), bitwise the same
states.

Rule `sgd`: the payload is the displacement since the last pull (the LR-scaled
update of the local optimizer, momentum included); the store adds it with weight
f_i at lr 1 and no server momentum, which would also amplify the BatchNorm
statistics' changes that travel in the same vector.

Divergence: the gathered vector (rule sgd: the displacement) and the loss since the
last pull are checked before the push. `stop`: nothing is pushed, so the
global state never holds a non-finite value; the loop raises and the launcher stops
the run. `skip`: the worker pushes an unchanged contribution instead, the state of
its last pull (rule sgd: a zero displacement), because a worker cannot leave a bsp
round or an ssp clock without pushing; then it pulls and continues from the merged
state.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from dbl_ps.config import RunConfig
from dbl_ps.parameter_store import ParameterStore, StoreClient
from dbl_ps.training.averaging import all_finite
from dbl_ps.training.coordinator import GlobalEpoch, OneProcess, WorkerProcesses
from dbl_ps.training.engine import Engine
from dbl_ps.training.messages import EpochReport, WorkerReady
from dbl_ps.training.flat import FlatState
from dbl_ps.training.steps import sync_boundaries
from dbl_ps.training.sync import Synchronizer, SyncResult

__all__ = ["StoreSynchronizer", "StoreServer", "StoreCoordinator", "StoreSetupError", "worker_synchronizer"]


class StoreSetupError(RuntimeError):
    """The parameter store could not be created (e.g. too little shared memory)."""


class StoreServer:
    """The store's server half, held by the launcher: the store itself, the epoch gate the
    workers wait at, the plan version they watch, and the global state read back after
    each epoch into the launcher's model.

    `gate` and `plan_version` are shared integers (a multiprocessing context's `Value`):
    a worker may start epoch `e` once `gate >= e` (bsp, or any mode with dbl.replan; asp/ssp
    run at most one epoch ahead), and re-reads plan.json when `plan_version` changed."""

    def __init__(self, cfg: RunConfig, model: torch.nn.Module, *, ctx: Any, start_epoch: int):
        self.flat = FlatState(model)
        # The store first: a machine short of shared memory fails here, before anything
        # else is opened or any process started.
        try:
            # rule sgd: payloads are displacements already scaled by the local LR (StoreSynchronizer)
            mode, rule = store_mode_and_rule(cfg)
            self.store = ParameterStore(
                self.flat.numel, cfg.dbl.workers, mode=mode, rule=rule,
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


class StoreCoordinator(OneProcess):
    """The store mode's coordinator: the parameter store's server half (`StoreServer`) around
    the W worker processes the launcher spawns and watches (`processes`). It gates the epochs,
    assembles a global epoch once every worker reported it, reads the global state back from
    the store, and publishes a re-plan; everything about processes (spawning, messages,
    signals, progress) is the launcher's."""

    def __init__(self, cfg: RunConfig, run_dir: Path, processes: WorkerProcesses):
        self.cfg, self.run_dir, self.processes = cfg, run_dir, processes
        self.workers = processes.workers
        self.threads = processes.threads
        self.eval_device = processes.eval_device
        self.server: StoreServer | None = None
        self.last_complete = -1

    # -- the workers and their epochs

    def start(self, run: Any, start_epoch: int, on_ready: Callable[[], None]) -> None:
        self.last_complete = start_epoch - 1
        self.server = StoreServer(self.cfg, run.model, ctx=self.processes.ctx, start_epoch=start_epoch)
        self._on_ready, self._start_epoch = on_ready, start_epoch
        self.processes.spawn(run, start_epoch, links={"store_name": self.server.name}, gate=self.server.gate,
                             plan_version=self.server.plan_version)

    def epochs(self, start_epoch: int) -> Iterator[GlobalEpoch]:
        reports: dict[int, dict[int, EpochReport]] = {}
        ready: set[int] = set()
        events = self.processes.events()
        while self.last_complete < int(self.cfg.schedule.epochs) - 1:
            event = next(events)
            if isinstance(event, WorkerReady):
                ready.add(event.worker)
                if len(ready) == self.workers:  # the clock starts, the gate opens
                    self._on_ready()
                    self.live.open_gate(self._start_epoch)
            elif isinstance(event, EpochReport):
                reports.setdefault(event.epoch, {})[event.worker] = event
                done = reports.get(self.last_complete + 1, {})
                if len(done) == self.workers:
                    del reports[self.last_complete + 1]
                    self.last_complete += 1
                    self.processes.completed(self.last_complete)
                    yield GlobalEpoch(self.last_complete, [done[w] for w in sorted(done)],
                                      max(r.version for r in done.values()))
        self.processes.finish()

    @property
    def live(self) -> StoreServer:
        """The store server, made in `start` (every other method runs after it)."""
        assert self.server is not None, "the store is made in start()"
        return self.server

    def global_state(self, epoch: GlobalEpoch) -> dict[str, torch.Tensor]:
        # The launcher's model (the driver's evaluation model) takes the store's state; the
        # record names the version read (at least every report's).
        epoch.version = self.live.read_global(epoch.version)
        return self.live.flat.model.state_dict()

    def adopt_plan(self, plan: Any) -> None:
        self.live.publish_plan()  # the workers re-read plan.json at their next epoch start
        self.processes.plan_changed()

    def release(self, epoch: int) -> None:
        self.live.open_gate(epoch + 1)  # bsp (and any mode with dbl.replan): the next epoch may start

    def save_worker_state(self, folder: Path) -> None:
        pass  # every worker wrote its own before reporting the epoch

    def server_stats(self) -> dict[str, Any] | None:
        return self.server.stats() if self.server is not None else None

    def stop(self, *, clean: bool = False) -> None:
        self.processes.stop(clean=clean)

    def close(self) -> None:
        self.processes.stop()
        if self.server is not None:
            self.server.close()  # its shared memory goes
            self.server = None
        self.processes.close()


def worker_synchronizer(cfg: RunConfig, worker: int, links: dict[str, Any]) -> "StoreSynchronizer":
    """Worker `worker`'s synchronizer in its own process: a client of the store `links` names."""
    mode, rule = store_mode_and_rule(cfg)
    return StoreSynchronizer(links["store_name"], worker, mode=mode, rule=rule,
                             sync_every=cfg.store.sync_every, divergence=cfg.divergence)


def store_mode_and_rule(cfg: RunConfig) -> tuple[str, str]:
    """store.mode and store.rule of a run config whose sync is resolved (`resolve_sync` sets both)."""
    mode, rule = cfg.store.mode, cfg.store.rule
    assert mode is not None and rule is not None, "store.mode and store.rule are set by resolve_sync"
    return mode, rule


class StoreSynchronizer(Synchronizer):
    """Worker `worker`'s client of the store `store_name` (`store.mode`, `store.rule`, `store.sync_every`).

    `zero_copy` (default): the model is gathered straight into a reserved queue slot and
    scattered straight from a pinned snapshot of the state, both in shared memory; False
    takes the copying path (`push`/`pull` through a private vector, the
    check and rule sgd's subtraction as passes of their own), kept as the baseline
    `benchmarks/worker_sync.py` measures against. Both give bitwise the same states."""

    def __init__(self, store_name: str, worker: int, *, mode: str, rule: str, sync_every: int | str,
                 divergence: str = "stop", zero_copy: bool = True):
        self.mode, self.rule, self.sync_every = mode, rule, sync_every
        self.worker = worker
        self.skip_nonfinite = divergence == "skip"
        self.zero_copy = zero_copy
        self.client = StoreClient(store_name, worker)
        self.flat: FlatState | None = None
        self.vec: torch.Tensor | None = None  # the copying path's private vector
        # The state at the last pull: rule sgd pushes the displacement from it; divergence
        # 'skip' pushes it unchanged in place of a non-finite state.
        self.reference: torch.Tensor | None = None
        # A queue slot reserved and not yet committed (zero-copy path). A sync that stops on a
        # non-finite state keeps it, and a later sync fills it again: the store allows one
        # reservation at a time and has no way to hand a slot back.
        self._slot: torch.Tensor | None = None
        self.version = 0
        self.rejected = 0  # this worker's pushes the store refused so far (store.reject_non_finite)

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        return sync_boundaries(steps, self.sync_every, self.mode, all_steps)

    def start(self, engine: Engine, *, fresh: bool) -> int:
        # The engine may have recast its module (DeepSpeed bf16): flatten what it trains.
        self.flat = FlatState(engine.module)
        if not self.zero_copy:
            self.vec = self.flat.new_vector()
        if self.rule == "sgd" or self.skip_nonfinite:
            self.reference = torch.empty(self.flat.numel, dtype=torch.float32)
        version, _, _ = self._pull_into_model(engine)
        return version

    def sync(self, engine: Engine, weight: float, *, loss: torch.Tensor | None = None) -> SyncResult:
        assert self.flat is not None, "start() first"
        began = time.perf_counter()
        # Where the payload is built: the reserved slot itself (zero-copy; waits only while the
        # queue is full or, in ssp, while this worker is too far ahead) or the private vector.
        payload = self._reserve() if self.zero_copy else self.vec
        assert payload is not None
        gathered = time.perf_counter()
        waited = gathered - began
        # The payload is on the host now, so its check adds no device sync of its own.
        finite = self._write_payload(payload) and (loss is None or bool(torch.isfinite(loss)))
        diverged = {} if finite else {self.worker: float(loss) if loss is not None else math.nan}
        if not finite and not self.skip_nonfinite:
            # Nothing is pushed; a reserved slot stays reserved for the next sync.
            return SyncResult(version=self.version, wait_seconds=waited, sync_seconds=time.perf_counter() - gathered,
                              diverged=diverged, merged=False)
        if not finite:  # skip: the state of the last pull, an unchanged contribution
            assert self.reference is not None
            if self.rule == "sgd":
                payload.zero_()
            else:
                payload.copy_(self.reference)
        pushing = time.perf_counter()
        if self.zero_copy:
            self.client.commit(weight=weight)
            self._slot = None
        else:
            self.client.push(payload, weight=weight)
        version, refused, pull_wait = self._pull_into_model(engine, scatter_unless_refused=not self.skip_nonfinite)
        waited += pull_wait
        if refused:  # the store refused this push (store.reject_non_finite): a non-finite merge
            diverged = {self.worker: float(loss) if loss is not None else math.nan}
            if not self.skip_nonfinite:
                return SyncResult(version=version, wait_seconds=waited, sync_seconds=pushing - gathered,
                                  diverged=diverged, merged=False)
        # reserve and pull are mostly waiting (queue full, bsp round, ssp bound): counted as
        # waiting, the copies in and out of the model as the sync itself
        return SyncResult(version=version, wait_seconds=waited,
                          sync_seconds=time.perf_counter() - began - waited, diverged=diverged)

    def _write_payload(self, payload: torch.Tensor) -> bool:
        """Write this worker's contribution into `payload`: the model's state or, for rule
        sgd, the displacement since the last pull. Returns whether what it wrote is finite.
        Rule sgd: the zero-copy path checks the displacement, which is non-finite whenever
        the state is (the reference is a merged, finite state) and also when a finite state
        lies so far from it that the difference overflows; the copying path checks the
        state and leaves that overflow to the store's `reject_non_finite`."""
        assert self.flat is not None
        reference = self.reference if self.rule == "sgd" else None
        if self.zero_copy:  # one pass: copy, check and subtract together (FlatState.gather_checked)
            return self.flat.gather_checked(payload, reference=reference)
        # The copying path, the benchmark's baseline: gather, check, subtract as passes of their own.
        self.flat.gather(payload)
        finite = bool(all_finite([payload]))
        if finite and reference is not None:
            torch.sub(reference, payload, out=payload)
        return finite

    def _reserve(self) -> torch.Tensor:
        """The reserved queue slot as a writable float32 tensor over shared memory."""
        if self._slot is None:
            slot = torch.from_numpy(np.asarray(self.client.reserve()))
            assert self.flat is not None
            self.flat.pin_host(slot)  # GPU: one DMA into the slot; nothing on the CPU
            self._slot = slot
        return self._slot

    def _pull_into_model(self, engine: Engine, *, scatter_unless_refused: bool = False) -> tuple[int, bool, float]:
        """Wait until this worker's pushes are merged, then load the global state into the
        model (and `reference`). Returns the version, whether the store refused a push of
        this worker since the last pull, and the seconds spent waiting for the merge. With
        `scatter_unless_refused` a refused push leaves the model as it is (divergence
        'stop': the loop raises)."""
        assert self.flat is not None
        waiting = time.perf_counter()
        snapshot = None
        if self.zero_copy:
            snapshot = self.client.snapshot()  # waits like pull, then pins the state in place
            version = snapshot.version
            with warnings.catch_warnings():
                # read-only shared memory: the tensor is only read (scatter, reference)
                warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                state = torch.from_numpy(np.asarray(snapshot))
        else:
            assert self.vec is not None
            version = self.client.pull(self.vec)
            state = self.vec
        pull_wait = time.perf_counter() - waiting
        try:
            self.version = version
            rejected = self.client.rejected()
            refused = rejected > self.rejected
            self.rejected = rejected
            if refused and scatter_unless_refused:
                return version, True, pull_wait
            if snapshot is not None:  # one pass into the model and `reference`
                self.flat.scatter_keeping(state, self.reference, non_blocking=self.flat.pin_host(state))
            else:  # the copying path
                self.flat.scatter(state)
                if self.reference is not None:
                    self.reference.copy_(state)
        finally:
            if snapshot is not None:
                snapshot.release()  # the server may write this state copy again
        engine.after_sync()
        return version, refused, pull_wait

    def close(self) -> None:
        if self.flat is not None:
            self.flat.unpin_host()  # before the client's mapping can go
        self._slot = None
        self.client.close()
