"""Test hooks, read from the environment once when a worker or rank starts and turned
into callbacks on the loop's events (the loop itself never reads the environment):

* `DBL_PS_FAIL_WORKER=W:E` makes worker W raise at the start of epoch E;
  `W:E:kill` makes it SIGKILL itself there, `W:E:stop` SIGSTOP itself (a frozen rank);
* `DBL_PS_DUMP_SYNC=DIR`: each rank writes its state before and after its first sync;
* `DBL_PS_STOP_AFTER_EPOCH=E`: every rank stops cleanly once epoch E's checkpoint is
  written (as if the job had been killed there);
* `DBL_PS_SLOW_WORKER=W:SECONDS`: worker W sleeps SECONDS after each training step (a
  slower device or a busy neighbour, for re-planning tests and benchmarks);
* `DBL_PS_SLOW_START=SECONDS`: every store-mode worker sleeps SECONDS after its engine's
  warm-up, before it looks at the stop event (a slow CUDA start-up or compile warm-up, for
  tests of a stop during start-up);
* `DBL_PS_EVENT_LOG=FILE`: every process appends one JSON line per event it fires to FILE
  (the worker loops' epoch events with the worker's torch threads, the run driver's
  `on_replan` / `on_checkpoint`), so tests can compare the event sequence of two modes;
* `DBL_PS_PLAN_LOG=FILE`: every process appends one JSON line per resolution it plans to FILE
  (`{"pid", "resolution"}`: a call of the planner's `plan_resolution` or
  `plan_mixed_resolution`, which every plan goes through, solved, re-planned or checked),
  so tests can count where and how often a run solves its plan.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

import dbl_ps.planner.dbsl
import dbl_ps.planner.mixed
from dbl_ps.training.events import Callback, StopTraining
from dbl_ps.training.loop import EpochState, WorkerLoop

__all__ = ["FAULT_ENV", "DUMP_ENV", "STOP_ENV", "SLOW_ENV", "callbacks_from_env", "FailWorker", "DumpFirstSync",
           "StopAfterEpoch", "SlowWorker", "SLOW_START_ENV", "start_delay", "EVENT_LOG_ENV", "EventLog",
           "PLAN_LOG_ENV", "log_plan_solves"]

FAULT_ENV = "DBL_PS_FAIL_WORKER"
DUMP_ENV = "DBL_PS_DUMP_SYNC"
STOP_ENV = "DBL_PS_STOP_AFTER_EPOCH"
SLOW_ENV = "DBL_PS_SLOW_WORKER"
SLOW_START_ENV = "DBL_PS_SLOW_START"
EVENT_LOG_ENV = "DBL_PS_EVENT_LOG"
PLAN_LOG_ENV = "DBL_PS_PLAN_LOG"


class FailWorker(Callback):
    """`how`: "raise" (an exception), "kill" (SIGKILL) or "stop" (SIGSTOP: frozen until SIGCONT)."""

    def __init__(self, worker: int, epoch: int, how: str = "raise"):
        self.worker, self.epoch, self.how = worker, epoch, how

    def on_epoch_start(self, loop: WorkerLoop, epoch: int) -> None:
        if loop.worker != self.worker or epoch != self.epoch:
            return
        if self.how in ("kill", "stop"):
            os.kill(os.getpid(), signal.SIGKILL if self.how == "kill" else signal.SIGSTOP)
            return
        raise RuntimeError(f"injected failure of worker {self.worker} at epoch {epoch} ({FAULT_ENV})")


class DumpFirstSync(Callback):
    """This rank's merged tensors and its group's whole model, before and after the first sync."""

    def __init__(self, folder: Path, rank: int):
        self.folder, self.rank, self.done = folder, rank, False

    def _dump(self, loop: WorkerLoop, state: EpochState, when: str) -> None:
        engine = loop.engine
        full = engine.full_state_dict_all()
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": state.weight, "worker": loop.worker, "member": loop.member,
                    "local": [t.detach().cpu().clone() for t in engine.sync_tensors()], "full": full},
                   self.folder / f"{when}_rank{self.rank}.pt")

    def before_sync(self, loop: WorkerLoop, state: EpochState) -> None:
        if not self.done:
            self._dump(loop, state, "pre")

    def after_sync(self, loop: WorkerLoop, state: EpochState) -> None:
        if not self.done:
            self._dump(loop, state, "post")
            self.done = True


class StopAfterEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_checkpoint(self, loop: WorkerLoop | None, epoch: int) -> None:
        if epoch == self.epoch:
            raise StopTraining(f"stopping after epoch {epoch} ({STOP_ENV})")


class SlowWorker(Callback):
    """Worker `worker` sleeps `seconds` after each training step: a fixed extra cost per
    step, inside the epoch's measured training time (not in its sync waits)."""

    def __init__(self, worker: int, seconds: float):
        self.worker, self.seconds = worker, seconds

    def on_step(self, loop: WorkerLoop, state: EpochState) -> None:
        if loop.worker == self.worker:
            time.sleep(self.seconds)

    @classmethod
    def parse(cls, value: str) -> "SlowWorker":
        worker, _, seconds = value.partition(":")
        try:
            slow = cls(int(worker), float(seconds))
        except ValueError:
            slow = None
        if slow is None or slow.worker < 0 or not 0 <= slow.seconds < float("inf"):
            raise ValueError(f"{SLOW_ENV}={value!r}: expected WORKER:SECONDS, e.g. 1:0.02 (worker 1 sleeps 20 ms "
                             f"after each step)")
        return slow


class EventLog(Callback):
    """Appends `{"event", "worker", "epoch", ...}` per event to `path` (O_APPEND: one line per
    write, so processes sharing the file do not tear each other's lines). Run-level events
    (the driver's) have worker None unless the process trains a loop."""

    def __init__(self, path: Path, rank: int):
        self.path, self.rank = path, rank

    def _write(self, event: str, loop: WorkerLoop | None, epoch: int, **extra: object) -> None:
        _append_line(self.path, {"event": event, "rank": self.rank, "worker": None if loop is None else loop.worker,
                                 "member": None if loop is None else loop.member, "epoch": epoch, **extra})

    def on_epoch_start(self, loop: WorkerLoop, epoch: int) -> None:
        self._write("on_epoch_start", loop, epoch, threads=torch.get_num_threads())

    def on_epoch_end(self, loop: WorkerLoop, report: Any) -> None:
        self._write("on_epoch_end", loop, report.epoch)

    def on_replan(self, loop: WorkerLoop | None, epoch: int) -> None:
        self._write("on_replan", None, epoch, run=True)

    def on_checkpoint(self, loop: WorkerLoop | None, epoch: int) -> None:
        self._write("on_checkpoint", None, epoch, run=True)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line appended with one write (O_APPEND: processes sharing the file never tear lines)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def log_plan_solves() -> None:
    """From now on, every resolution this process plans appends `{"pid", "resolution"}` to the
    file `DBL_PS_PLAN_LOG` names at that moment (nothing while it is unset). The planner's two
    solvers are wrapped wherever a module of this package holds them (modules imported later
    take the wrapped ones from the planner), so a solve is counted whoever calls it. Idempotent."""
    for module, name in ((dbl_ps.planner.dbsl, "plan_resolution"), (dbl_ps.planner.mixed, "plan_mixed_resolution")):
        solver = getattr(module, name)
        if getattr(solver, "_plan_log", False):
            continue

        def logged(*args: Any, _solver: Any = solver, **kwargs: Any) -> Any:
            path = os.environ.get(PLAN_LOG_ENV)
            if path:
                _append_line(Path(path), {"pid": os.getpid(), "resolution": kwargs.get("resolution")})
            return _solver(*args, **kwargs)

        logged._plan_log = True  # type: ignore[attr-defined]
        for held in [m for n, m in list(sys.modules.items()) if n == "dbl_ps" or n.startswith("dbl_ps.")]:
            if getattr(held, name, None) is solver:
                setattr(held, name, logged)


def start_delay() -> float:
    """Seconds a worker's start-up is drawn out (`DBL_PS_SLOW_START`; 0 when unset)."""
    return float(os.environ.get(SLOW_START_ENV) or 0.0)


def callbacks_from_env(rank: int) -> list[Callback]:
    callbacks: list[Callback] = []
    if os.environ.get(PLAN_LOG_ENV):  # not a callback: counts the plans this process solves from now on
        log_plan_solves()
    if os.environ.get(EVENT_LOG_ENV):  # first: it logs an event before another hook may raise in it
        callbacks.append(EventLog(Path(os.environ[EVENT_LOG_ENV]), rank))
    fault = os.environ.get(FAULT_ENV)
    if fault:
        parts = fault.split(":")
        callbacks.append(FailWorker(int(parts[0]), int(parts[1]), how=parts[2] if len(parts) > 2 else "raise"))
    if os.environ.get(DUMP_ENV):
        callbacks.append(DumpFirstSync(Path(os.environ[DUMP_ENV]), rank))
    if os.environ.get(STOP_ENV):
        callbacks.append(StopAfterEpoch(int(os.environ[STOP_ENV])))
    if os.environ.get(SLOW_ENV):
        callbacks.append(SlowWorker.parse(os.environ[SLOW_ENV]))
    return callbacks
