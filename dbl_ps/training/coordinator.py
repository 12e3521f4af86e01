"""The Coordinator interface: the run-level half of a synchronizer.

A `Synchronizer` (`sync.py`) is what one worker's loop holds to merge its model into
the global one. A `Coordinator` is what the run driver (`dbl_ps.runtime.driver.RunDriver`)
holds to see the run as a whole: it brings the workers up, hands the driver each global
epoch once every worker reported it, gives the global state, publishes a new plan and
lets the workers go on. The driver never knows which one it holds, so every mode runs
one set-up and one epoch order, and fires every event.

Two implementations, each beside its synchronizer:

* store mode (`dbl-ps train` on one machine): the launcher process coordinates worker
  processes through the parameter store's server half (`dbl_ps.synchronizers.store.StoreCoordinator`
  over `StoreServer`); the launcher spawns and watches the processes, relays their messages and
  handles signals (`WorkerProcesses` below, `dbl_ps.runtime.launcher.WorkerPool`);
* multi-rank mode (`torchrun`, the `deepspeed` launcher): every rank runs the driver and
  a `dbl_ps.synchronizers.collective.CollectiveCoordinator`, which trains this rank's loop
  and gathers the reports with collectives. Rank 0 is the main process.

Invariant (multi-rank): every method is called in the same order on every rank, so the
collectives inside them pair up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch

    from dbl_ps.planner import Plan
    from dbl_ps.training.messages import EpochReport

__all__ = ["Coordinator", "OneProcess", "GlobalEpoch", "WorkerProcesses"]

T = TypeVar("T")


@dataclass
class GlobalEpoch:
    """One global epoch every worker finished: its reports, in worker order, and the global
    state's version after the epoch's last merge (the store mode's `global_state` sets it to
    the version it read, which covers every report's)."""

    epoch: int
    reports: "list[EpochReport]"
    version: int


class Coordinator:
    """What the run driver needs from a mode. Subclasses override every method."""

    is_main: bool = True  # this process writes the run's files (the launcher; rank 0)
    rank: int = 0  # this process's rank (the store mode's launcher: 0)
    workers: int  # workers of this launch (the plan is made or re-made for them)
    ranks_per_worker: int = 1
    threads: int  # torch threads of each worker process (threads_per_worker, else cores // local workers)
    eval_device: "torch.device"  # where the main process evaluates the global model (and measures time models)
    loop: Any = None  # the worker loop this process trains, if any (passed to run-level events)

    def share(self, make: Callable[[], T]) -> T:
        """`make()` on the main process; every process returns its result (bit for bit)."""
        raise NotImplementedError

    def time_models(self, resolve: Callable[[], Any]) -> Any:
        """The run's time models (`ResolvedTimeModels`): `resolve()` where the mode measures
        (store: once; multi-rank: on every worker's device when measuring, one model per
        worker), the same result in every process."""
        raise NotImplementedError

    def all_written(self, write: Callable[[], None] | None) -> None:
        """Run this process's part of a write to the run directory (None: nothing here), then
        learn every process's outcome: a failed write on any of them raises on all of them."""
        raise NotImplementedError

    def start(self, run: Any, start_epoch: int, on_ready: Callable[[], None]) -> None:
        """Bring the workers up from the global model in `run` (`dbl_ps.runtime.driver.PreparedRun`)
        at `start_epoch`; `on_ready()` once every worker can train (the clock starts there)."""
        raise NotImplementedError

    def epochs(self, start_epoch: int) -> Iterator[GlobalEpoch]:
        """Each global epoch from `start_epoch` on, once every worker reported it."""
        raise NotImplementedError

    def global_state(self, epoch: GlobalEpoch) -> "dict[str, torch.Tensor]":
        """The global model after `epoch` as a full state dict (a collective for sharded engines)."""
        raise NotImplementedError

    def adopt_plan(self, plan: "Plan") -> None:
        """Every worker trains the next epoch with `plan` (plan.json already holds it)."""
        raise NotImplementedError

    def release(self, epoch: int) -> None:
        """The driver decided everything about `epoch + 1`: the workers may start it."""
        raise NotImplementedError

    def save_worker_state(self, folder: Path) -> None:
        """This process's workers' own state (optimizer, ...) into the epoch's checkpoint folder
        (store mode: the workers wrote theirs before reporting)."""
        raise NotImplementedError

    def stop(self, *, clean: bool = False) -> None:
        """Stop the workers after an error or a stop request; idempotent. `clean`: every process
        stops at the same point (a callback's StopTraining, a divergence learnt at one sync), so
        the multi-rank mode may wait for the others there."""
        raise NotImplementedError

    def server_stats(self) -> dict[str, Any] | None:
        """The merge server's own statistics for summary.json, if it has any."""
        return None

    def close(self) -> None:
        """Release what the coordinator holds (shared memory, processes); idempotent."""
        raise NotImplementedError


class OneProcess(Coordinator):
    """A coordinator whose run has one main process (the store mode's launcher, an in-process
    run): what every process agrees on is simply what this one computes."""

    def share(self, make: Callable[[], T]) -> T:
        return make()

    def time_models(self, resolve: Callable[[], Any]) -> Any:
        return resolve()  # once, on the first worker's device

    def all_written(self, write: Callable[[], None] | None) -> None:
        if write is not None:
            write()


class WorkerProcesses:
    """What a one-machine coordinator (a sync kind with `launched: False`) needs from the
    launcher that runs its worker processes (`dbl_ps.runtime.launcher.WorkerPool`): spawning
    them, their events, stopping them. Messages the coordinator need not see (progress,
    failures, signals) are the launcher's: a failure or a signal raises from `events()`."""

    workers: int
    threads: int  # torch threads of each worker process
    eval_device: "torch.device"  # the launcher's device (the first worker's)
    ctx: Any  # the multiprocessing context the workers are spawned with (for shared values)

    def spawn(self, run: Any, start_epoch: int, *, links: dict[str, Any], gate: Any, plan_version: Any) -> None:
        """Start the workers on `run` (`PreparedRun`) at `start_epoch`. `links`: picklable values
        each worker's synchronizer is built from (e.g. the store's name); `gate`: the shared epoch
        gate the workers wait at; `plan_version`: the shared count of plan.json rewrites."""
        raise NotImplementedError

    def events(self) -> Iterator[Any]:
        """The workers' `WorkerReady` and `EpochReport` messages as they arrive."""
        raise NotImplementedError

    def completed(self, epoch: int) -> None:
        """Every worker reported `epoch` (what a stop then keeps)."""
        raise NotImplementedError

    def plan_changed(self) -> None:
        """A re-plan was published: the workers warm up for its shapes before they train."""
        raise NotImplementedError

    def finish(self) -> None:
        """Every worker trained its last epoch: wait for them to exit."""
        raise NotImplementedError

    def stop(self, *, clean: bool = False) -> None:
        """Stop the workers (idempotent)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers and give back what the launcher took (signal handlers); idempotent."""
        raise NotImplementedError
