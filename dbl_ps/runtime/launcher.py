"""The store mode: `dbl-ps train` on one machine, one process per worker around the
parameter store. What is this mode's own lives here: spawning the worker processes, their
messages, signals and the progress bars. The run itself (set-up, the epoch order,
re-planning, evaluation, checkpoints) is the run driver's (`dbl_ps.runtime.driver`), the
same in every mode; the store's server half is `dbl_ps.synchronizers.store.StoreServer`.

    trainer = Trainer(cfg)                     # or Trainer.resume("runs/digits-hybrid-...")
    summary = trainer.train()

Start-up: the launcher creates the store with the seeded initial model (or the
checkpoint's) and spawns W worker processes; the epoch gate stays shut until every
worker is ready, so the wall time counts training, not process start-up
(`startup_seconds`), and no worker's start-up is taken for slowness by re-planning.

Stopping: SIGINT/SIGTERM/SIGHUP set a flag; the launcher then stops the workers, keeps the
last complete epoch's checkpoint (rewritten with status "interrupted"), closes the
store (its shared memory goes) and raises `TrainingInterrupted`. A worker that fails
makes `train()` raise `WorkerError` carrying that worker's traceback, or one line when
the worker said what a user can do (corrupt data; `TrainingDiverged`, with summary.json
status "diverged", for a non-finite loss or state). checkpoint.json stays at the last
epoch every worker finished.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from dbl_ps.config import RunConfig, load_config, resolve_sync
from dbl_ps.run_ownership import RunWriteError, never_trained
from dbl_ps.runtime.driver import PreparedRun, RunDriver, TrainingDiverged, TrainingInterrupted, WorkerError
from dbl_ps.runtime.engine_setup import check_store_mode_engine
from dbl_ps.runtime.failures import stopped_line
from dbl_ps.runtime.signals import blocked_while_spawning, interrupt_on_signals
from dbl_ps.runtime.watch import ProgressWatch, worker_timeout
from dbl_ps.runtime.worker import WorkerArgs, pack_train_data, worker_main
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.synchronizers.store import StoreSetupError
from dbl_ps.training.coordinator import Coordinator, WorkerProcesses
from dbl_ps.training.messages import EpochReport, Progress, WorkerFailed, WorkerFinished, WorkerReady, WorkerStopped
from dbl_ps.training.rundir import CheckpointError, RunDirectory, new_run_dir
from dbl_ps.training.cores import threads_per_worker

__all__ = ["Trainer", "WorkerPool", "one_machine_coordinator", "WorkerError", "TrainingDiverged", "StoreSetupError", "TrainingInterrupted",
           "new_run_dir"]

STOP_TIMEOUT = 30.0  # seconds a worker gets to stop before it is terminated
PASS_DATA_BYTES = 1 << 30  # training splits up to this size go to the workers with their arguments


class Trainer:
    """One store-mode run of `cfg` in `run_dir`. `progress`: True/False, None = when stderr is a terminal.
    `callbacks`: your `dbl_ps.training.events.RunCallback`s (besides the config's `callbacks:`)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path | None = None, *, progress: bool | None = None,
                 log: Callable[[str], None] | None = None, callbacks: Sequence[Any] = (),
                 _checkpoint: dict[str, Any] | None = None):
        self.cfg = cfg = resolve_sync(cfg, launched=False)
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
        log = log or (lambda msg: print(msg, flush=True))
        progress = sys.stderr.isatty() if progress is None else progress
        self.bars = ProgressBars(cfg.dbl.workers) if progress else None
        # The sync kind's coordinator (`sync: store`) around this launcher's worker processes.
        self.processes = WorkerPool(cfg, self.run_dir, bars=self.bars)
        self.coordinator = one_machine_coordinator(cfg, self.run_dir, self.processes)
        self.driver = RunDriver(cfg, self.coordinator, self.run_dir, checkpoint=_checkpoint, log=log,
                                display=self.bars, callbacks=callbacks)
        self._prepared = False

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs: Any) -> "Trainer":
        """Continue the run in `run_dir` from its last checkpoint (config and plan from the directory)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            if never_trained(run_dir):  # a run stopped while starting, before it wrote its config
                raise CheckpointError(f"{run_dir} holds no config.yaml: its run stopped while starting, before any "
                                      f"epoch; start it again with --run-dir {run_dir} (and its config)")
            raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml")
        return cls(cfg, run_dir, _checkpoint=RunDirectory(run_dir).load_checkpoint(), **kwargs)

    def prepare(self) -> None:
        """Data, plan, schedule, run directory. Raises before any process starts; SIGTERM and
        SIGHUP meanwhile raise KeyboardInterrupt, as Ctrl-C does (`interrupt_on_signals`)."""
        if not self._prepared:
            with interrupt_on_signals():
                self.driver.prepare()
            self._prepared = True

    def release(self) -> None:
        """Give up the run directory (its lock); train() does this when it ends."""
        self.driver.release()

    def train(self) -> dict[str, Any]:
        """Run to the last epoch; returns the summary (also saved as summary.json)."""
        self.prepare()
        try:
            with interrupt_on_signals():  # until the coordinator's own handlers take over
                return self.driver.run()
        except RunWriteError as exc:  # the launcher's own write (model.pt, checkpoint.json, metrics)
            meta = RunDirectory(self.run_dir).checkpoint_meta()
            raise RunWriteError(stopped_line(str(exc), diverged=False, last_epoch=meta["epoch"] if meta else None,
                                             run_dir=self.run_dir)) from None
        finally:
            self.release()


class WorkerPool(WorkerProcesses):
    """The store mode's W worker processes: spawning them, relaying their messages (progress to
    the bars, failures as `WorkerError`), watching their exits, and signals: SIGINT/SIGTERM/SIGHUP
    stop the run at the next message (`TrainingInterrupted`); a second Ctrl-C stops waiting. The
    sync kind's coordinator (`StoreCoordinator`) drives it."""

    def __init__(self, cfg: RunConfig, run_dir: Path, *, bars: "ProgressBars | None" = None):
        check_store_mode_engine(cfg)  # before any data is loaded
        self.cfg, self.run_dir, self.bars = cfg, run_dir, bars
        self.workers = cfg.dbl.workers
        self.threads = threads_per_worker(cfg, self.workers)
        torch.set_num_threads(self.threads)
        self.devices = _devices(cfg)
        self.eval_device = torch.device(self.devices[0])
        self.ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self._signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._ready: set[int] = set()
        self._finished: set[int] = set()
        self._epoch_done = False
        self.last_complete = -1

    # -- bringing the workers up

    def spawn(self, run: PreparedRun, start_epoch: int, *, links: dict[str, Any], gate: Any,
              plan_version: Any) -> None:
        """Start the W workers; each is in `self.procs` as soon as it runs (a stop meanwhile ends it)."""
        self.last_complete = start_epoch - 1
        self.watch = ProgressWatch(self.workers, worker_timeout(run.plan, self.cfg.store.worker_timeout))
        self._install_signal_handlers()
        ctx = self.ctx
        self.queue, self.stop_event = ctx.Queue(), ctx.Event()
        data = run.data
        # A split read sample by sample (imagefolder, data.factory) is never shipped: each worker loads it.
        train_data = pack_train_data(data) if data.train.in_memory and data.train.images.numel() <= PASS_DATA_BYTES \
            else None
        # The launcher's normalisation, so workers reading the data themselves do not estimate
        # it again (data.factory without data.mean/std): one estimate, one log line.
        config = self.cfg.to_dict()
        config["data"].update(mean=list(data.mean), std=list(data.std))
        # The split goes through a queue (its feeder thread never blocks the launcher, see
        # WorkerArgs); cancel_join_thread: an exit never waits for a worker that died unread.
        self.data_queue = ctx.Queue()
        self.data_queue.cancel_join_thread()
        ckpt = run.checkpoint or {}
        for w in range(self.workers):
            args = WorkerArgs(worker=w, config=config, sync_links=links,
                              run_dir=str(self.run_dir), start_epoch=start_epoch, resume_folder=ckpt.get("path"),
                              resume_workers=int(ckpt.get("workers", self.workers)), threads=self.threads,
                              device=self.devices[w], launcher_pid=os.getpid(), engine_options=run.engine_options,
                              train_data_queued=train_data is not None)
            # Not daemonic, so a worker may start DataLoader processes (data.num_workers); it needs
            # no daemon flag to end: every way out of the run stops, terminates or kills the
            # workers (stop, _join), and a worker whose launcher died stops by itself (LauncherLink).
            p = ctx.Process(target=worker_main,
                            args=(args, self.queue, self.stop_event, gate, plan_version, self.data_queue),
                            name=f"dbl-ps-worker-{w}", daemon=False)
            with blocked_while_spawning():  # Ctrl-C while it imports torch is the launcher's alone
                p.start()
            self.procs.append(p)
            if train_data is not None:
                self.data_queue.put(train_data)

    # -- the workers' messages

    def events(self) -> Iterator[Any]:
        for msg in self._messages():
            event = self._handle(msg)
            if event is not None:
                yield event
                if self._epoch_done:  # the launcher's own time (evaluation) is not the workers' silence
                    self._epoch_done = False
                    self.watch.start()

    def plan_changed(self) -> None:
        # each worker warms its engine up for the new shapes before its next step (compile: true
        # can take minutes): that silence is not a stuck worker
        self.watch.after_replan()

    def completed(self, epoch: int) -> None:
        self.last_complete = epoch
        self._epoch_done = True

    def finish(self) -> None:
        self._join(timeout=STOP_TIMEOUT)

    def _messages(self) -> Iterator[Any]:
        """The workers' messages; raises for a signal or a worker that died without a word."""
        last_check = time.monotonic()
        while True:
            if self._signal is not None:
                raise TrainingInterrupted(self._interrupt_message(), self.run_dir, self.last_complete)
            if time.monotonic() - last_check > 0.5:
                last_check = time.monotonic()
                yield from self._check_exits()
                stop_stuck_worker(self)
            try:
                yield self.queue.get(timeout=0.1)
            except queue_mod.Empty:
                continue

    def _check_exits(self) -> Iterator[Any]:
        dead = [w for w, p in enumerate(self.procs) if p.exitcode is not None and w not in self._finished]
        if not dead:
            return
        # It may have reported just before exiting: hand on what is queued (waiting at most a
        # second in all; the others keep sending progress), then look again. Only the waiting
        # counts: handling a report may evaluate an epoch for longer than that, and the exited
        # worker's WorkerFinished may still be queued behind it.
        waited = 0.0
        while waited < 1.0:
            started = time.monotonic()
            try:
                msg = self.queue.get(timeout=0.2)
            except queue_mod.Empty:
                break
            waited += time.monotonic() - started
            yield msg
        dead = [w for w in dead if w not in self._finished]
        if dead:
            w = dead[0]
            raise WorkerError(f"worker {w} exited with code {self.procs[w].exitcode} without reporting an error "
                              f"(killed by a signal or out of memory?)")

    def _handle(self, msg: Any) -> WorkerReady | EpochReport | None:
        """One message: the coordinator's events are handed on, the launcher's own handled here."""
        self.watch.heard(msg)
        if isinstance(msg, WorkerFailed):
            if msg.message is None:
                raise WorkerError(f"worker {msg.worker} failed:\n{msg.traceback}")
            line = stopped_line(msg.message, diverged=msg.diverged, last_epoch=self.last_complete,
                                run_dir=self.run_dir)
            raise (TrainingDiverged if msg.diverged else WorkerError)(line, actionable=True)
        if isinstance(msg, (WorkerFinished, WorkerStopped)):
            self._finished.add(msg.worker)
            if isinstance(msg, WorkerStopped) and self._signal is None:
                raise WorkerError(f"worker {msg.worker} stopped unexpectedly (the parameter store closed?)")
        elif isinstance(msg, Progress):
            if self.bars is not None:
                self.bars.worker_progress(msg)
        elif isinstance(msg, WorkerReady):
            self._ready.add(msg.worker)
            if len(self._ready) == self.workers:  # the gate opens now: from here on silence counts
                self.watch.start()
            return msg
        elif isinstance(msg, EpochReport):
            return msg
        return None

    # -- stopping

    def stop(self, *, clean: bool = False) -> None:
        if not self.procs:
            return
        self.stop_event.set()
        # Before the gate opens no worker has trained (nothing to save), and one still
        # starting (CUDA, compile warm-up) looks at `stop` only when it is done: a stop
        # then ends them at once instead of waiting STOP_TIMEOUT for each.
        started = len(self._ready) == len(self.procs)
        self._join(timeout=STOP_TIMEOUT if started else 0.0)

    def close(self) -> None:
        self.stop()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting
            self._signal = signum

        # SIGHUP: a closed terminal or SSH session stops the run as SIGTERM does
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _interrupt_message(self) -> str:
        name = signal.Signals(self._signal).name if self._signal else "signal"
        if self.last_complete >= 0:
            return (f"{name}: stopped after epoch {self.last_complete + 1}; checkpoint written. "
                    f"Continue with: dbl-ps train --resume {self.run_dir}")
        return f"{name}: stopped before the first epoch completed; no checkpoint to resume from"

    def _join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            while p.is_alive() and time.monotonic() < deadline:
                p.join(0.05)
                try:  # keep the queue drained so no worker blocks on a full pipe
                    while True:
                        self.queue.get_nowait()
                except (queue_mod.Empty, OSError, ValueError):
                    pass
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def one_machine_coordinator(cfg: RunConfig, run_dir: Path, processes: WorkerPool) -> Coordinator:
    """The coordinator of the config's sync kind (one that runs on one machine, e.g. `store`)
    around this launcher's worker processes, built by the kind's registered factory."""
    factory = SYNCHRONIZERS.trait_object(cfg.sync, "coordinator")
    return factory(cfg, run_dir, processes)


def stop_stuck_worker(coordinator: WorkerPool) -> None:
    """Raise WorkerError naming the worker every other one waits for once none sent progress
    for `store.worker_timeout` (`ProgressWatch`); that worker is killed first, so the others'
    waits (a bsp round, an ssp bound) end and they stop at once."""
    stuck = coordinator.watch.stuck(coordinator._finished)
    if stuck is None:
        return
    line = coordinator.watch.line(stuck)
    proc = coordinator.procs[stuck]
    if proc.is_alive():
        proc.kill()  # SIGKILL also ends a stopped process
        proc.join(5)
    raise WorkerError(stopped_line(line, diverged=False, last_epoch=coordinator.last_complete,
                                   run_dir=coordinator.run_dir), actionable=True)


def _devices(cfg: RunConfig) -> list[str]:
    """Each worker's device: the GPUs in turn, else the CPU."""
    want = cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device': got 'cuda', but torch finds no CUDA GPU; use 'auto' or 'cpu'")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return [f"cuda:{i % gpus}" for i in range(cfg.dbl.workers)]
    return ["cpu"] * cfg.dbl.workers


class ProgressBars:
    """One bar per worker (its epoch's steps, batch, resolution, samples/s) and one for the
    epochs; log lines go above them."""

    def __init__(self, workers: int):
        self.workers = workers
        self.bars: list[Any] = []

    def open(self, epochs: int, start_epoch: int) -> None:
        W = self.workers
        self.bars = [tqdm(total=1, position=w, desc=f"worker {w}", leave=False, file=sys.stderr,
                          bar_format="{desc} {bar:20} {postfix}") for w in range(W)]
        self.global_bar = tqdm(total=epochs, initial=start_epoch, position=W, desc="epochs", unit="epoch",
                               file=sys.stderr, leave=True)
        self.bars.append(self.global_bar)

    @property
    def active(self) -> bool:
        return bool(self.bars)

    def write(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    def worker_progress(self, p: Progress) -> None:
        if not self.bars:
            return
        bar = self.bars[p.worker]
        bar.total = p.steps
        bar.n = p.step
        bar.set_postfix_str(f"epoch {p.epoch} step {p.step}/{p.steps} batch {p.batch} res {p.resolution}px "
                            f"{p.samples_per_s:,.0f} samples/s", refresh=False)
        bar.refresh()

    def epoch_done(self, line: str, record: dict[str, Any]) -> None:
        self.global_bar.update(1)
        if "test_acc" in record:  # evaluated this epoch (eval.every)
            self.global_bar.set_postfix_str(f"test acc {record['test_acc']:.4f}", refresh=True)
        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
        self.bars = []
