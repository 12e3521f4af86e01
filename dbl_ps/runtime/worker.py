"""One worker process of `dbl-ps train` on one machine.

It builds its engine and the parameter-store synchronizer, and runs the worker loop
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
from typing import Any, Callable

import torch

from dbl_ps.config import RunConfig
from dbl_ps.data import Dataset, Split, build_transform, load_dataset
from dbl_ps.planner import Plan
from dbl_ps.runtime.engine_setup import build_worker_engine
from dbl_ps.runtime.failures import failure_message
from dbl_ps.runtime.hooks import callbacks_from_env, start_delay
from dbl_ps.shards import share_loader_for
from dbl_ps.synchronizers import StoreSynchronizer
from dbl_ps.training.algorithms import worker_callbacks
from dbl_ps.training.events import Callback
from dbl_ps.training.loop import DivergedError, EpochState, WorkerLoop
from dbl_ps.training.messages import Progress, WorkerFailed, WorkerFinished, WorkerReady, WorkerStopped
from dbl_ps.training.rundir import RunDirectory
from dbl_ps.training.setup import build_run_model, build_spec, plan_from_dict, warm_up_shapes
from dbl_ps.training.topology import Topology

__all__ = ["WorkerArgs", "worker_main", "pack_train_data", "unpack_train_data"]

PROGRESS_INTERVAL = 0.25  # seconds between progress messages


@dataclass
class WorkerArgs:
    worker: int
    config: dict[str, Any]
    plan: dict[str, Any]
    store_name: str
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
    launcher's rewrites of plan.json; `warm_up(plan)` prepares the engine for a new plan's
    shapes (compiling) outside the timed epoch."""

    def __init__(self, args: WorkerArgs, queue: Any, stop: Any, gate: Any, *, lockstep: bool, plan_version: Any,
                 warm_up: Callable[[Plan], Any]):
        self.args, self.queue, self.stop, self.gate, self.lockstep = args, queue, stop, gate, lockstep
        self.plan_version, self.warm_up = plan_version, warm_up
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
            loop.plan = plan_from_dict(RunDirectory(self.args.run_dir).read_json("plan.json"))
            self.seen_plan_version = version
            self.warm_up(loop.plan)

    def on_step(self, loop: WorkerLoop, state: EpochState) -> None:
        self.check_stop()
        now = time.perf_counter()
        if now - self.last_progress >= PROGRESS_INTERVAL:
            self.last_progress = now
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
    torch.set_num_threads(args.threads)
    cfg = RunConfig.from_dict(args.config)
    plan = plan_from_dict(args.plan)
    spec = build_spec(cfg, plan)
    device = torch.device(args.device)
    data = _queued_train_data(args, data_queue, stop) if args.train_data_queued else \
        load_dataset(cfg.data, image_size=max(spec.resolutions))
    topology = Topology.single(args.worker, plan.workers)
    first = plan[spec.resolutions[0]]
    module = build_run_model(cfg, data.num_classes, data.in_channels, dropout=spec.dropouts[0])
    engine = build_worker_engine(cfg, module.to(device), device, topology, batch_size=first.batches[args.worker],
                                 options=args.engine_options)
    compile_seconds = engine.warm_up(warm_up_shapes(plan, spec, args.worker), data.in_channels)
    time.sleep(start_delay())  # test hook: a start-up as slow as CUDA's or a compile warm-up
    if compile_seconds:
        print(f"worker {args.worker}: torch.compile warmed up in {compile_seconds:.1f} s", flush=True)
    if args.resume_folder:
        engine.load_worker_state(RunDirectory(args.run_dir).path / args.resume_folder, args.resume_workers)
    link = LauncherLink(args, queue, stop, gate, lockstep=cfg.store.mode == "bsp" or cfg.dbl.replan,
                        plan_version=plan_version,
                        warm_up=lambda new: engine.warm_up(warm_up_shapes(new, spec, args.worker), data.in_channels))
    link.check_stop()
    sync = StoreSynchronizer(args.store_name, args.worker, mode=cfg.store.mode, rule=cfg.store.rule,
                             sync_every=cfg.store.sync_every, divergence=cfg.divergence)
    try:
        # ShareLoader over data.train, or (data.source: shards) the shard set of each resolution.
        loader = share_loader_for(cfg.data, data.train, build_transform(cfg.data, data),
                                  resolutions=spec.resolutions, worker=args.worker, shares=first.shares,
                                  batch_size=first.batches[args.worker], resolution=spec.resolutions[0],
                                  seed=cfg.seed, epoch=args.start_epoch, device=device)
        loop = WorkerLoop(engine=engine, synchronizer=sync, loader=loader, plan=plan, spec=spec, seed=cfg.seed,
                          callbacks=[link, *worker_callbacks(cfg), *callbacks_from_env(args.worker)],
                          restart_momentum=cfg.optim.restart_momentum)
        loop.start(fresh=args.start_epoch == 0)
        queue.put(WorkerReady(args.worker))  # the launcher opens the gate (and starts the clock) once all are
        run_dir = RunDirectory(args.run_dir)
        for report in loop.run(args.start_epoch):
            folder = run_dir.epoch_folder(report.epoch)
            folder.mkdir(parents=True, exist_ok=True)
            engine.save_worker_state(folder)  # before reporting: the launcher's checkpoint names it
            queue.put(report)
    finally:
        sync.close()
