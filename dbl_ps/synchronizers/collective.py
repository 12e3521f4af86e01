"""The collective synchronizer: every rank of a multi-rank job merges with `torch.distributed`.

A sync is a monitored barrier (timed apart: waiting for slower workers; a rank that does
not arrive within the sync timeout is named), then the check for divergence, then the
share-weighted average `sum f_i w_i / sum f_i` of the tensors the engine exposes
(`engine.sync_tensors()` over `engine.sync_group()`: the whole model for one rank
per worker, the local shards over the replicate axis for FSDP), plus what the engine
averages apart (`buffer_sync`), and the engine's copies are refreshed (`after_sync`:
DeepSpeed's fp32 masters).

Invariant: every rank issues the same sequence of collectives. The number of syncs
per epoch is a function of the plan only (`sync_boundaries(..., "bsp", all_steps)`:
`S = ceil(max steps / k)` syncs spread over each worker's own steps), never of a
rank's own step count, so ranks may take different numbers of steps without a hang.

Divergence: after the barrier, an all-reduce of one small vector carries each rank's flag "my loss or state is non-finite"
and its loss, so every rank learns about every rank at the same sync and no rank
ever leaves a collective out. `stop`: no rank merges and the loops raise together.
`skip`: a diverged worker's ranks contribute their state of the last merge (kept
only under `skip`: one copy of the merged tensors), then continue from the merge.
"""

from __future__ import annotations

import math
import re
import time
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, cast

import torch
import torch.distributed as dist

from dbl_ps.config import RunConfig
from dbl_ps.planner import Plan
from dbl_ps.training.algorithms import sync_periods
from dbl_ps.training.averaging import all_finite, averaged_tensors, weighted_average_
from dbl_ps.training.coordinator import Coordinator, GlobalEpoch
from dbl_ps.training.engine import Engine
from dbl_ps.training.messages import merge_members
from dbl_ps.training.steps import sync_boundaries
from dbl_ps.training.sync import Synchronizer, SyncResult
from dbl_ps.training.topology import Topology

__all__ = ["CollectiveSynchronizer", "CollectiveCoordinator", "init_distributed", "RankLost", "sync_timeout",
           "rank_synchronizer"]

MIN_SYNC_TIMEOUT = 60.0  # seconds: start-up jitter, a slow first step, evaluation on a busy machine


class RankLost(RuntimeError):
    """A rank did not reach a sync point in time (frozen, killed, or its machine gone)."""


def sync_timeout(plan: Plan, sync_every: int | str, configured: float | None) -> float:
    """How long a sync may wait for the slowest rank: `configured`, else 10 x the plan's
    longest predicted sync period (its epoch time over its syncs per epoch), at least
    `MIN_SYNC_TIMEOUT`: generous for noise, far shorter than a 600 s collective timeout."""
    if configured is not None:
        return float(configured)
    periods = []
    for rp in plan.resolutions.values():
        syncs = len(sync_boundaries(max(rp.steps()), sync_every, "bsp", rp.steps()))
        periods.append(rp.epoch_seconds / syncs)
    return max(MIN_SYNC_TIMEOUT, 10.0 * max(periods))


def init_distributed(topology: Topology, backend: str, timeout_s: float) -> None:
    """`init_process_group` with a timeout (a missing rank is an error, not a hang)."""
    if dist.is_initialized():
        return
    if backend == "nccl":
        torch.cuda.set_device(topology.local_rank)
    dist.init_process_group(backend, rank=topology.rank, world_size=topology.world,
                            timeout=timedelta(seconds=timeout_s))


class CollectiveSynchronizer(Synchronizer):
    """Share-weighted averaging across the ranks of an initialised process group.

    The wait before each merge is `monitored_barrier` (on a gloo group: the world on CPUs,
    a side group on GPUs) with `timeout_s`: a rank that stopped answering is named within
    that time, instead of every other rank blocking until the collective timeout."""

    def __init__(self, sync_every: int | str, *, timeout_s: float, divergence: str = "stop",
                 timeout_name: str = "launch.sync_timeout"):
        self.sync_every = sync_every
        self.timeout = timedelta(seconds=timeout_s)
        # What the user sets to change the timeout, for the message naming a missing rank:
        # the CLI's config key, or the API's parameter (ModelAverager passes its own).
        self.timeout_name = timeout_name
        # monitored_barrier exists for gloo only; NCCL runs wait on a gloo side group (made by every rank)
        # (every rank is a member, so new_group returns the group, never its non-member marker)
        self.monitor_group: dist.ProcessGroup | None = (
            None if dist.get_backend() == "gloo" else cast(dist.ProcessGroup, dist.new_group(backend="gloo")))
        self.merges = 0
        self.skip_nonfinite = divergence == "skip"
        self.synced: list[torch.Tensor] | None = None  # skip: the merged tensors of the last sync

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        return sync_boundaries(steps, self.sync_every, "bsp", all_steps)

    def start(self, engine: Engine, *, fresh: bool) -> int:
        if fresh:
            self.merge(engine, 1.0)  # an identical start on every rank, whatever the seeding did
        # resumed: every rank loaded the same model.pt
        self._keep(engine)
        return self.merges

    def meet(self, where: str | None = None) -> float:
        """Wait until every rank is here (a monitored barrier); returns the seconds waited. A
        rank that does not arrive within the timeout is named (`RankLost`), `where` (default:
        the next sync) says at which point."""
        waiting = time.perf_counter()
        try:
            dist.monitored_barrier(group=self.monitor_group, timeout=self.timeout, wait_all_ranks=True)
        except RuntimeError as exc:  # rank 0 learns which ranks did not arrive; the others that rank 0 did not answer
            raise RankLost(f"rank {dist.get_rank()} waited {self.timeout.total_seconds():g} s at "
                           f"{where or f'sync {self.merges + 1}'}: {self._who_is_missing(exc)} (frozen, killed, or "
                           f"slower than {self.timeout_name} allows)") from None
        return time.perf_counter() - waiting

    def sync(self, engine: Engine, weight: float, *, loss: torch.Tensor | None = None,
             check: Callable[[], None] | None = None) -> SyncResult:
        """`check`: the caller's own collective, run once every rank has arrived and before
        anything is merged (ModelAverager compares the ranks' steps there); it raises to stop
        every rank at the same point."""
        waiting = time.perf_counter()
        self.meet()
        if check is not None:
            check()
        diverged = self.diverged_workers(engine, loss)  # every rank learns every rank's state
        merging = time.perf_counter()
        if diverged and not self.skip_nonfinite:
            return SyncResult(version=self.merges, wait_seconds=merging - waiting, sync_seconds=0.0,
                              diverged=diverged, merged=False)
        if engine.topology.worker in diverged:  # skip: contribute the state of the last merge
            assert self.synced is not None
            for t, kept in zip(averaged_tensors(engine.module), self.synced):
                t.copy_(kept)
        self.merge(engine, weight)
        self._keep(engine)
        self.merges += 1
        return SyncResult(version=self.merges, wait_seconds=merging - waiting,
                          sync_seconds=time.perf_counter() - merging, diverged=diverged)

    @staticmethod
    def _who_is_missing(exc: RuntimeError) -> str:
        """The ranks a failed monitored barrier names; a rank that died (SIGKILL, a crash) closes
        its connection before the timeout, and gloo names only its address: with two ranks that
        is the other one."""
        text = str(exc)
        missing = re.search(r"Ranks? ([\d, ]+) failed to pass", text)
        if missing:
            return f"rank(s) {missing.group(1).strip()} did not arrive"
        if re.search(r"Connection (closed|reset)", text):
            others = [r for r in range(dist.get_world_size()) if r != dist.get_rank()]
            if len(others) == 1:
                return f"rank(s) {others[0]} did not arrive (its connection closed: killed or crashed)"
            return "a rank's connection closed (killed or crashed; see that rank's output)"
        return (text.strip().splitlines() or [type(exc).__name__])[0]

    @staticmethod
    def diverged_workers(engine: Engine, loss: torch.Tensor | None) -> dict[int, float]:
        """Every worker whose loss or state (on any of its ranks) is non-finite, with its loss:
        one all_reduce over the world of a (2, world) vector, the same on every rank."""
        topo = engine.topology
        tensors = averaged_tensors(engine.module)  # parameters and floating buffers (local shards)
        ok = all_finite(tensors).to(engine.device)
        loss = torch.zeros((), device=engine.device) if loss is None else loss.to(engine.device)
        flags = torch.zeros(2, topo.world, dtype=torch.float64, device=engine.device)
        flags[0, topo.rank] = (~(ok & torch.isfinite(loss))).double()
        flags[1, topo.rank] = loss.double()
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)  # element-wise: a NaN stays in its rank's slot
        bad, losses = flags.cpu().tolist()
        diverged: dict[int, float] = {}
        for rank in range(topo.world):
            if bad[rank]:
                worker = rank // topo.group_size
                # a group's members each saw part of the batch; the first non-finite loss names it
                if worker not in diverged or math.isfinite(diverged[worker]):
                    diverged[worker] = losses[rank]
        return diverged

    def _keep(self, engine: Engine) -> None:
        if not self.skip_nonfinite:
            return
        tensors = averaged_tensors(engine.module)
        if self.synced is None:
            self.synced = [t.detach().clone() for t in tensors]
        else:
            for kept, t in zip(self.synced, tensors):
                kept.copy_(t)

    @staticmethod
    def merge(engine: Engine, weight: float) -> None:
        weighted_average_(engine.sync_tensors(), weight, engine.sync_group())
        engine.buffer_sync(weight)
        engine.after_sync()


def rank_synchronizer(cfg: RunConfig, plan: Plan, topology: Topology) -> CollectiveSynchronizer:
    """A rank's synchronizer for `sync: collective` (the process group is initialised)."""
    # post-local SGD merges less often after its start: the longest period bounds the wait
    return CollectiveSynchronizer(cfg.store.sync_every, divergence=cfg.divergence,
                                  timeout_s=max(sync_timeout(plan, every, cfg.launch.sync_timeout)
                                                for every in sync_periods(cfg)))


class CollectiveCoordinator(Coordinator):
    """The multi-rank mode's coordinator, one per rank: this rank trains its loop (built by
    `build_loop(run, start_epoch)`, the launcher's: engine, loader, `CollectiveSynchronizer`),
    and after each epoch the ranks all-gather their reports, so every rank sees the same
    global epoch. Rank 0 is the main process. Every method issues the same collectives on
    every rank (the module invariant)."""

    def __init__(self, topology: Topology, device: torch.device, *, threads: int, measure_per_worker: bool,
                 build_loop: Callable[[Any, int], Any]):
        self.topo = topology
        self.is_main = topology.is_main
        self.rank = topology.rank
        self.workers = topology.workers
        self.ranks_per_worker = topology.group_size
        self.eval_device = device
        self.threads = threads
        self.measure_per_worker = measure_per_worker
        self.build_loop = build_loop
        self.loop = None

    def share(self, make: Callable[[], Any]) -> Any:
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)  # every rank uses rank 0's value, bit for bit
        return box[0]

    def all_written(self, write: Callable[[], None] | None) -> None:
        # Each write is followed by a collective that also carries its outcome, so a rank that
        # cannot write (a full disk, a busy run directory) stops every rank at once instead of
        # leaving them waiting. The failing rank raises its own exception, the others a copy.
        failure: BaseException | None = None
        if write is not None:
            try:
                write()
            except Exception as exc:
                failure = exc
        outcomes: list[Any] = [None] * self.topo.world
        dist.all_gather_object(outcomes, failure)
        if failure is not None:
            raise failure
        failed = [f for f in outcomes if f is not None]
        if failed:
            raise failed[0]

    def time_models(self, resolve: Callable[[], Any]) -> Any:
        if not self.measure_per_worker:
            return self.share(resolve)
        # Each worker measures its own device: one time model per worker (mixed hardware).
        resolved = resolve()
        gathered: list[Any] = [None] * self.topo.world
        dist.all_gather_object(gathered, resolved.models)
        per_worker = [gathered[w * self.topo.group_size] for w in range(self.workers)]
        models = {r: [pw[r] for pw in per_worker] for r in resolved.models}
        return resolved._replace(models=models, source="measured per worker")

    def start(self, run: Any, start_epoch: int, on_ready: Callable[[], None]) -> None:
        self.loop = self.build_loop(run, start_epoch)
        dist.barrier()  # start the clocks together (W&B start-up on rank 0 is slow)
        on_ready()

    def epochs(self, start_epoch: int) -> Iterator[GlobalEpoch]:
        topo = self.topo
        for report in self.loop.run(start_epoch):
            gathered: list[Any] = [None] * topo.world
            dist.all_gather_object(gathered, report)
            workers = [merge_members(gathered[w * topo.group_size:(w + 1) * topo.group_size])
                       for w in range(topo.workers)]
            yield GlobalEpoch(report.epoch, workers, report.version)
        dist.barrier()

    def global_state(self, epoch: GlobalEpoch) -> dict[str, torch.Tensor]:
        return self.loop.engine.full_state_dict()  # collective for sharded engines

    def adopt_plan(self, plan: Plan) -> None:
        self.loop.set_plan(plan)  # every rank decided the same plan from the same reports; its shapes warmed up

    def release(self, epoch: int) -> None:
        pass  # every rank goes on once the driver is done with the epoch

    def save_worker_state(self, folder: Any) -> None:
        self.loop.engine.save_worker_state(folder)

    def stop(self, *, clean: bool = False) -> None:
        # Only where every rank stopped at the same point can they meet; after a lost rank or a
        # failed collective a barrier would wait for nothing. torchrun ends every rank once one
        # exits with an error: not before rank 0 wrote what it had to.
        if clean and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        pass  # the launcher destroys the process group
