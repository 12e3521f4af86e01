"""One worker process of `dbl-ps train` on one machine.

It builds its engine and its sync kind's synchronizer (the parameter store's client), and runs the worker loop
(`dbl_ps.training.loop.WorkerLoop`, the same loop every rank of a multi-rank job
runs). What this process adds hooks in as callbacks: the launcher's epoch gate, the
launcher's re-planned plan (`dbl.replan`), stop checks, progress messages and the test
hooks. After each epoch it writes its own
state into the epoch's checkpoint folder, then reports the epoch to the launcher
(`EpochReport` through the queue).
"""

from __future__ import annotations

import os
import queue as queue_mod
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from dbl_ps.config import RunConfig
from dbl_ps.data import Dataset, Split, build_transform, load_dataset
from dbl_ps.runtime.failures import diverged_between_syncs, failure_message
from dbl_ps.runtime.hooks import callbacks_from_env, start_delay
from dbl_ps.runtime.worker_loop import Resume, WorkerPart, build_worker_loop
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.training.events import Callback
from dbl_ps.training.loop import DivergedError, EpochState, WorkerLoop
from dbl_ps.training.messages import Progress, WorkerFailed, WorkerFinished, WorkerReady, WorkerStopped
from dbl_ps.training.rundir import RunDirectory
from dbl_ps.training.run_model import build_run_model
from dbl_ps.training.run_plan import build_spec, load_plan
from dbl_ps.training.topology import Topology

__all__ = ["WorkerArgs", "worker_main", "pack_train_data", "unpack_train_data"]

PROGRESS_INTERVAL = 0.25  # seconds between progress messages


@dataclass
class WorkerArgs:
    worker: int
    config: dict[str, Any]
    sync_links: dict[str, Any]  # what this worker's synchronizer is built from (the store's name)
    run_dir: str
    start_epoch: int
    resume_folder: str | None  # the checkpoint folder to restore this worker's own state from
    resume_workers: int  # how many workers wrote that checkpoint (a resume may re-plan for another count)
    threads: int
    device: str
    launcher_pid: int
    engine_options: dict[str, Any]
    # The launcher sends the training split as numpy arrays through the data queue (saves
    # every worker from loading and decoding the source again); False: load it here.
    # Not in these arguments: they are written into a pipe while the process starts, and a
    # worker that died before reading them (Ctrl-C inside `import torch`) would leave that
    # write blocked for ever once they exceed the pipe's buffer; a queue's feeder thread
    # never blocks the launcher.
    train_data_queued: bool = False


def pack_train_data(data: Dataset) -> dict[str, Any]:
    """A data set's training split and metadata as plain numpy/python values (picklable by value)."""
    return {"name": data.name, "images": data.train.images.numpy(), "labels": data.train.labels.numpy(),
            "num_classes": data.num_classes, "mean": data.mean, "std": data.std, "flip": data.flip,
            "classes": list(data.classes)}


def unpack_train_data(packed: dict[str, Any]) -> Dataset:
    train = Split(torch.from_numpy(packed["images"]), torch.from_numpy(packed["labels"]))
    return Dataset(packed["name"], train, Split(train.images[:0], train.labels[:0]), packed["num_classes"],
                   tuple(packed["mean"]), tuple(packed["std"]), packed["flip"], packed["classes"])


class _Stopped(Exception):
    """The launcher asked the workers to stop (or died)."""


def worker_main(args: WorkerArgs, queue: Any, stop: Any, gate: Any, plan_version: Any, data_queue: Any) -> None:
    """Process entry point: runs the worker, reports errors with their traceback (and one
    line for those a user can act on: a divergence, corrupt data)."""
    # Ctrl-C reaches the whole process group; the launcher alone decides how to stop.
    # So does SIGHUP (a closed terminal): it stops the run through the launcher, like SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        run_worker(args, queue, stop, gate, plan_version, data_queue)
        queue.put(WorkerFinished(args.worker))
    except _Stopped:
        queue.put(WorkerStopped(args.worker))
    except BaseException as exc:  # report everything, including SystemExit from a library
        if stop.is_set():
            queue.put(WorkerStopped(args.worker))
            return
        message = failure_message(exc, worker=args.worker, data_path=args.config["data"]["path"])
        queue.put(WorkerFailed(args.worker, traceback.format_exc(), message=message,
                               diverged=isinstance(exc, DivergedError)))
        raise SystemExit(1)


class LauncherLink(Callback):
    """The store mode's duties around the loop: wait at the launcher's epoch gate, take up the
    launcher's new plan (`dbl.replan`), stop when asked (or when the launcher died), and send
    progress for the bars.

    `lockstep`: wait at every epoch boundary until the launcher finished the epoch before
    (bsp, and any mode with `dbl.replan`, whose decision about epoch e needs every report of
    e - 1). Before the first epoch every mode waits until every worker is ready (the launcher
    keeps the gate shut until then), so one worker's start-up (importing torch, building its
    model) is neither measured as another's slowness nor waited for inside the first sync,
    and the wall clock starts with training. `plan_version` counts the
    launcher's rewrites of plan.json."""

    def __init__(self, args: WorkerArgs, queue: Any, stop: Any, gate: Any, *, lockstep: bool, plan_version: Any):
        self.args, self.queue, self.stop, self.gate, self.lockstep = args, queue, stop, gate, lockstep
        self.plan_version = plan_version
        self.seen_plan_version = 0  # the plan this worker started with
        self.last_progress = 0.0

    def check_stop(self) -> None:
        if self.stop.is_set() or os.getppid() != self.args.launcher_pid:
            raise _Stopped

    def on_epoch_start(self, loop: WorkerLoop, epoch: int) -> None:
        # bsp: the launcher must copy round e-1 before round e can start (and with dbl.replan, in
        # every mode, decide the plan of epoch e from the reports of e-1). asp/ssp: run at most
        # two epochs ahead of the launcher, so that the state it evaluates as "epoch e" is not
        # many epochs newer (evaluation can be slower than a training epoch on a busy CPU).
        # Before the first epoch the gate stays shut until every worker is ready (start-up).
        wait_for = epoch if self.lockstep else epoch - 1
        while self.gate.value < wait_for:
            self.check_stop()
            time.sleep(0.002)
        self.check_stop()
        # The launcher rewrites plan.json before it opens the gate for this epoch, so past the
        # gate the version says whether this epoch trains with a new plan (shares, batch,
        # merge weight, steps: all read from loop.plan in prepare_epoch).
        version = self.plan_version.value
        if version != self.seen_plan_version:
            loop.set_plan(load_plan(self.args.run_dir))  # as the launcher solved it: not solved again
            self.seen_plan_version = version

    def on_step(self, loop: WorkerLoop, state: EpochState) -> None:
        self.check_stop()
        now = time.perf_counter()
        if now - self.last_progress >= PROGRESS_INTERVAL:
            self.last_progress = now
            diverged_between_syncs(loop, state, self.args.config["divergence"])
            rate = state.samples / max(now - state.start, 1e-9)
            self.queue.put(Progress(loop.worker, state.epoch, state.step, state.steps, state.batch,
                                    state.point.resolution, rate))


def _queued_train_data(args: WorkerArgs, data_queue: Any, stop: Any) -> Dataset:
    """The training split the launcher sent; stops when asked to (or when the launcher died)."""
    while True:
        try:
            return unpack_train_data(data_queue.get(timeout=0.5))
        except queue_mod.Empty:
            if stop.is_set() or os.getppid() != args.launcher_pid:
                raise _Stopped from None


def run_worker(args: WorkerArgs, queue: Any, stop: Any, gate: Any, plan_version: Any, data_queue: Any) -> None:
    hooks = callbacks_from_env(args.worker)  # first: a test hook may count what follows (DBL_PS_PLAN_LOG)
    torch.set_num_threads(args.threads)
    cfg = RunConfig.from_dict(args.config)
    plan = load_plan(args.run_dir)  # the plan the launcher solved and saved before spawning this worker
    spec = build_spec(cfg, plan)
    device = torch.device(args.device)
    data = _queued_train_data(args, data_queue, stop) if args.train_data_queued else \
        load_dataset(cfg.data, image_size=max(spec.resolutions))
    module = build_run_model(cfg, data.num_classes, data.in_channels, dropout=spec.dropout_rates[0])
    time.sleep(start_delay())  # test hook: a start-up as slow as CUDA's or a compile warm-up
    link = LauncherLink(args, queue, stop, gate, lockstep=cfg.store.mode == "bsp" or cfg.dbl.replan,
                        plan_version=plan_version)
    link.check_stop()
    sync = SYNCHRONIZERS.get(cfg.sync).obj(cfg, args.worker, args.sync_links)  # the sync kind's, e.g. the store's client
    run_dir = RunDirectory(args.run_dir)
    try:
        part = WorkerPart(module=module.to(device), plan=plan, spec=spec, train=data.train,
                          transform=build_transform(cfg.data, data), in_channels=data.in_channels,
                          topology=Topology.single(args.worker, plan.workers), device=device,
                          engine_options=args.engine_options, start_epoch=args.start_epoch,
                          resume=Resume(run_dir.path / args.resume_folder, args.resume_workers)
                          if args.resume_folder else None,
                          batch_size=plan[spec.resolutions[0]].batches[args.worker])
        loop = build_worker_loop(cfg, part, synchronizer=sync, callbacks=[link, *hooks],
                                 log=lambda line: print(line, flush=True))
        queue.put(WorkerReady(args.worker))  # the launcher opens the gate (and starts the clock) once all are
        for report in loop.run(args.start_epoch):
            folder = run_dir.epoch_folder(report.epoch)
            folder.mkdir(parents=True, exist_ok=True)
            loop.engine.save_worker_state(folder)  # before reporting: the launcher's checkpoint names it
            queue.put(report)
    finally:
        sync.close()
