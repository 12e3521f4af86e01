"""The store mode's equivalent of `launch.sync_timeout`: a worker that stops making progress.

A worker frozen (SIGSTOP, a debugger), hung (a dead file system, a deadlock in user code)
or swapping sends nothing, and the others soon wait for it (at a bsp round, an ssp bound,
or the launcher's epoch gate, which waits for every report). The launcher heard nothing
and said nothing for ever. `ProgressWatch` notes when each worker was last heard from
(`Progress` every quarter second while it trains, `EpochReport`); once no worker has been
heard from for `store.worker_timeout` seconds (default 10 x the plan's longest epoch time,
at least 60 s) while the launcher waits for them, the worker furthest behind (lowest
epoch, then step fraction) is the one the others wait for: it is named, killed, and the
run stops with its checkpoint kept. One worker still sending is enough to wait on: a
slow run is never taken for a stuck one. The watch runs only while the launcher waits for
messages, from the moment every worker is ready, and starts again after each epoch the
launcher completes (its evaluation is not the workers' silence); after a re-plan it waits
until every worker has trained again (each warms up for the new plan's shapes first), up to
`REPLAN_WARMUP_TIMEOUT`.
"""

from __future__ import annotations

import time
from typing import Any

from dbl_ps.planner import Plan
from dbl_ps.training.messages import EpochReport, Progress

__all__ = ["ProgressWatch", "worker_timeout", "MIN_WORKER_TIMEOUT", "REPLAN_WARMUP_TIMEOUT"]

MIN_WORKER_TIMEOUT = 60.0  # seconds: as launch.sync_timeout's floor (a slow first step, a busy machine)
# seconds of silence allowed after a re-plan while a worker warms up (torch.compile of new shapes
# can take minutes); a worker hung there is still named, only later
REPLAN_WARMUP_TIMEOUT = 1800.0


def worker_timeout(plan: Plan, configured: float | None) -> float:
    """`configured`, else 10 x the plan's longest predicted epoch, at least `MIN_WORKER_TIMEOUT`."""
    if configured is not None:
        return float(configured)
    return max(MIN_WORKER_TIMEOUT, 10.0 * max(rp.epoch_seconds for rp in plan.resolutions.values()))


class ProgressWatch:
    """When each of `workers` was last heard from, and where it was."""

    def __init__(self, workers: int, timeout: float):
        self.timeout = timeout
        self.where: list[tuple[int, float]] = [(-1, 1.0)] * workers  # (epoch, fraction of its steps)
        self.steps: list[str] = ["not started"] * workers
        self.last = time.monotonic()
        self.armed = False
        self.unheard: set[int] = set()  # after a re-plan: workers not heard from since (compiling new shapes)

    def start(self) -> None:
        """Every worker is ready (or the launcher completed an epoch): the silence counts from now."""
        self.armed = True
        self.last = time.monotonic()

    def after_replan(self) -> None:
        """A new plan: every worker warms its engine up for the new shapes before its next step
        (`compile: true` can take minutes), so the watch waits until each has trained again."""
        self.unheard = set(range(len(self.where)))

    def heard(self, msg: Any) -> None:
        if isinstance(msg, (Progress, EpochReport)):
            self.unheard.discard(msg.worker)
        if isinstance(msg, Progress):
            self.last = time.monotonic()
            self.where[msg.worker] = (msg.epoch, msg.step / max(msg.steps, 1))
            self.steps[msg.worker] = f"epoch {msg.epoch + 1}, step {msg.step} of {msg.steps}"
        elif isinstance(msg, EpochReport):
            self.last = time.monotonic()
            self.where[msg.worker] = (msg.epoch, 1.0)
            self.steps[msg.worker] = f"the end of epoch {msg.epoch + 1}"

    def stuck(self, done: set[int]) -> int | None:
        """The worker the others wait for, once none (of those not `done`) was heard from for
        `timeout` seconds; None while one still sends."""
        limit = max(self.timeout, REPLAN_WARMUP_TIMEOUT) if self.unheard else self.timeout
        if not self.armed or time.monotonic() - self.last <= limit:
            return None
        waiting = [w for w in range(len(self.where)) if w not in done]
        return min(waiting, key=lambda w: self.where[w]) if waiting else None

    def line(self, worker: int) -> str:
        return (f"worker {worker} made no progress for {time.monotonic() - self.last:.0f} s (last heard at "
                f"{self.steps[worker]}) while every other worker waits for it: frozen (SIGSTOP, a debugger), hung or "
                f"swapping; it was stopped (store.worker_timeout, {self.timeout:g} s)")
