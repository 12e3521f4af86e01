"""The single-node launcher: `Trainer` runs one training job.

    trainer = Trainer(cfg)                     # or Trainer.resume("runs/digits-hybrid-...")
    summary = trainer.train()

`prepare()` loads the data (test split for evaluation, training-set size for the
plan), resolves the time models (config, calibration file, or measured on the spot),
makes the DBSL plan and the schedule, and writes `config.yaml`, `plan.json` and
`schedule.json`/`schedule.txt`/`schedule.png` into the run directory. `train()` starts the
parameter store with the seeded initial model (or the checkpoint's), spawns W
worker processes, and then, for every global epoch (W pushes, one mini-epoch per
worker), once all workers reported it: reads the global model from the store,
opens the bsp gate for the next epoch, evaluates the global model on the test set
at the highest resolution, appends a metrics record and writes the checkpoint.

Re-planning (`dbl.replan`): once all workers reported epoch `e`, and before the gate
lets any worker start `e + 1`, the launcher compares each worker's own training time
with the plan (`dbl_ps.training.replanning`); when they drifted apart it rewrites
plan.json with the new plan and bumps the shared plan version, and every worker takes
the new plan up at the start of `e + 1` (`LauncherLink`). With `dbl.replan` every sync
mode waits at that boundary (asp/ssp give up their one epoch of slack), so no worker can
start `e + 1` before the decision about it is made.

Stopping: SIGINT/SIGTERM set a flag; the launcher then stops the workers, keeps the
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
from typing import Any, Callable

import torch
from tqdm import tqdm

from dbl_ps._optional import require
from dbl_ps.config import check_workers_fit, load_config
from dbl_ps.data import build_transform, load_dataset
from dbl_ps.metrics import Logger, MetricsWriter
from dbl_ps.run_dirs import RunLock, RunWriteError
from dbl_ps.runtime.engines import check_engine_config, check_store_mode_engine, engine_options
from dbl_ps.runtime.failures import stopped_line
from dbl_ps.runtime.tracking import open_tracker
from dbl_ps.runtime.worker import WorkerArgs, pack_train_data, worker_main
from dbl_ps.shards import prepare_shards
from dbl_ps.store import ParameterStore
from dbl_ps.training.finisher import EpochFinisher, Evaluator, bn_calibration_split
from dbl_ps.training.flat import FlatState
from dbl_ps.training.messages import EpochReport, Progress, WorkerFailed, WorkerFinished, WorkerReady, WorkerStopped
from dbl_ps.training.replanning import Replanned, replan_after_epoch
from dbl_ps.training.rundir import CheckpointError, RunDirectory, new_run_dir
from dbl_ps.training.setup import (
    build_plan,
    build_run_model,
    build_spec,
    check_run_model,
    plan_from_dict,
    resolve_time_models,
    threads_per_worker,
)

__all__ = ["Trainer", "WorkerError", "TrainingDiverged", "StoreSetupError", "TrainingInterrupted", "new_run_dir"]

STOP_TIMEOUT = 30.0  # seconds a worker gets to stop before it is terminated
PASS_DATA_BYTES = 1 << 30  # training splits up to this size go to the workers with their arguments


class WorkerError(RuntimeError):
    """A worker process failed; the message holds its traceback, or is one line a user can
    act on (`actionable`: the worker named the problem, e.g. a shard and sample key)."""

    def __init__(self, message: str, *, actionable: bool = False):
        super().__init__(message)
        self.actionable = actionable


class TrainingDiverged(WorkerError):
    """A worker's loss or state became non-finite (`divergence: stop`); summary.json says "diverged"."""


class StoreSetupError(RuntimeError):
    """The parameter store could not be created (e.g. too little shared memory)."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after writing its checkpoint."""

    def __init__(self, message: str, run_dir: Path, epoch: int | None):
        super().__init__(message)
        self.run_dir = run_dir
        self.epoch = epoch


class Trainer:
    """One run of `cfg` in `run_dir`. `progress`: True/False, None = when stderr is a terminal."""

    def __init__(self, cfg: Any, run_dir: str | Path | None = None, *, progress: bool | None = None,
                 log: Callable[[str], None] | None = None, _checkpoint: dict[str, Any] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
        self.dir = RunDirectory(self.run_dir)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._log = log or (lambda msg: print(msg, flush=True))
        self.checkpoint = _checkpoint
        self.resuming = _checkpoint is not None
        self.startup_seconds: float | None = None  # spawn until every worker is ready (not in the wall time)
        self.time_model_seconds = 0.0  # measuring the time model on the spot (not in the wall time)
        self._signal: int | None = None
        self._prepared = False
        self._lock: RunLock | None = None
        self._bars: list[Any] = []

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs: Any) -> "Trainer":
        """Continue the run in `run_dir` from its last checkpoint (config and plan from the directory)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml")
        return cls(cfg, run_dir, _checkpoint=RunDirectory(run_dir).load_checkpoint(), **kwargs)

    def log(self, message: str) -> None:
        if self._bars:
            tqdm.write(message, file=sys.stderr)
        else:
            self._log(message)

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Data, plan, schedule, run directory. Raises before any process starts."""
        if self._prepared:
            return
        if self.resuming:  # one owner per run directory: a second train on it stops here
            self._lock = RunLock(self.run_dir)
        try:
            self._prepare()
        except BaseException:
            self.release()
            raise
        self._prepared = True

    def release(self) -> None:
        """Give up the run directory (its lock); train() does this when it ends."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _prepare(self) -> None:
        cfg = self.cfg
        check_store_mode_engine(cfg)  # before any data is loaded
        check_engine_config(cfg, self._log)
        self.threads = threads_per_worker(cfg)
        torch.set_num_threads(self.threads)
        self.devices = self._devices()
        if cfg.data.source == "shards":  # complete sets for the schedule, or a current index, before any process starts
            prepare_shards(cfg.data, cfg.schedule.resolutions, progress=self.progress)
        self.data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))
        self.transform = build_transform(cfg.data, self.data)
        check_workers_fit(cfg, len(self.data.train))  # before any time is measured
        self.eval_device = torch.device(self.devices[0])
        torch.manual_seed(cfg.seed)
        self.model = build_run_model(cfg, self.data.num_classes, self.data.in_channels, log=self._log)
        check_run_model(cfg, self.model, self.data.num_classes, self.data.in_channels, self.eval_device)
        self.model.to(self.eval_device)
        if self.resuming:  # the latest plan, re-planned ones included
            plan_dict = self.dir.read_json("plan.json")
            self.plan = plan_from_dict(plan_dict)
            self.plan_source = plan_dict.get("time_model_source", "plan.json of the run")
            self.replans = list(plan_dict.get("replans", []))
        else:
            # time_model_seconds: one-off, reported apart from the training time (summary.json)
            models, batches, source, self.time_model_seconds = resolve_time_models(
                cfg, num_classes=self.data.num_classes, in_channels=self.data.in_channels,
                device="cuda" if self.devices[0].startswith("cuda") else "cpu", log=self._log)
            self.plan = build_plan(cfg, len(self.data.train), models, batches)
            self.plan_source = source
            self.replans = []
        for line in self.plan.regime_lines():  # b_S / B_L per resolution, and what it means on this device
            self.log(line)
        self.spec = build_spec(cfg, self.plan)
        self.flat = FlatState(self.model)
        if self.cfg.tracking.wandb.enabled:  # a missing extra fails before any process starts
            require("wandb", feature="tracking.wandb (Weights & Biases)")
        if not self.resuming:
            self.dir.create()
            self._lock = RunLock(self.run_dir)
            self.dir.write_setup(cfg, self._plan_dict(), self.spec, fresh=True)
        self.engine_options = engine_options(cfg, self.run_dir, resuming=self.resuming)

    def _plan_dict(self) -> dict[str, Any]:
        """What plan.json holds: the plan, where its time models came from, and the re-plans so far."""
        return {**self.plan.to_dict(), "time_model_source": self.plan_source, "engine": self.cfg.engine,
                "ranks_per_worker": 1, "replans": self.replans}

    def _devices(self) -> list[str]:
        want = self.cfg.device
        if want == "cuda" and not torch.cuda.is_available():
            raise ValueError("config key 'device': got 'cuda', but torch finds no CUDA GPU; use 'auto' or 'cpu'")
        if want in ("auto", "cuda") and torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            return [f"cuda:{i % gpus}" for i in range(self.cfg.dbl.workers)]
        return ["cpu"] * self.cfg.dbl.workers

    # ------------------------------------------------------------------ training

    def train(self) -> dict[str, Any]:
        """Run to the last epoch; returns the summary (also saved as summary.json)."""
        self.prepare()
        try:
            return self._train()
        except RunWriteError as exc:  # the launcher's own write (model.pt, checkpoint.json, metrics)
            meta = self.dir.checkpoint_meta()
            raise RunWriteError(stopped_line(str(exc), diverged=False, last_epoch=meta["epoch"] if meta else None,
                                             run_dir=self.run_dir)) from None
        finally:
            self.release()

    def _train(self) -> dict[str, Any]:
        cfg, W = self.cfg, self.cfg.dbl.workers
        epochs = int(self.spec.epochs)
        ckpt = self.checkpoint
        if ckpt is not None and ckpt.get("status") == "finished":
            self.log(f"{self.run_dir} already finished all {epochs} epochs")
            return self.dir.read_summary()
        self.start_epoch = ckpt["next_epoch"] if ckpt else 0
        self.last_complete = self.start_epoch - 1
        if ckpt:
            self.model.load_state_dict(self.dir.load_model(ckpt))
            self.log(f"resuming {self.run_dir} at epoch {self.start_epoch} of {epochs}")
        elif self.resuming:
            self.log(f"{self.run_dir} has no checkpoint yet: starting again from epoch 1 of {epochs}")
        initial = self.flat.gather()
        # The store first: a machine short of shared memory fails here, before anything
        # else is opened or installed.
        try:
            # rule sgd: payloads are displacements already scaled by the local LR (dbl_ps.synchronizers.store)
            store = ParameterStore(
                self.flat.numel, W, mode=cfg.store.mode, rule=cfg.store.rule, staleness=cfg.store.staleness,
                apply_threads=cfg.store.apply_threads or None, lr=1.0, momentum=0.0, initial=initial,
                reject_non_finite=cfg.store.reject_non_finite,
            )
        except OSError as exc:
            raise StoreSetupError(f"cannot create the parameter store: {exc}") from None
        try:
            self.metrics = Logger([MetricsWriter(self.run_dir, resume=self.resuming, keep_through=self.last_complete)])
            tracker = open_tracker(cfg, self.dir, resuming=self.resuming, warn=self.log)
            if tracker is not None:
                self.metrics.add(tracker)
        except BaseException:
            store.close()
            raise
        evaluate = Evaluator(self.model, self.data.test, self.transform, batch_size=cfg.data.eval_batch_size,
                             resolution=max(self.spec.resolutions), device=self.eval_device,
                             bn_images=self._bn_images())
        self.finisher = EpochFinisher(self.dir, self.spec, evaluate, self.metrics, engine=cfg.engine, workers=W,
                                      wall_offset=float(ckpt["wall_time"]) if ckpt else 0.0,
                                      version_offset=int(ckpt["store_version"]) if ckpt else 0,
                                      evaluate_every=cfg.eval.every, log=self.log)

        old_handlers = self._install_signal_handlers()
        ctx = mp.get_context("spawn")
        # The gate stays shut (no mode may start start_epoch) until every worker is ready, so
        # the wall time counts training, not process start-up (`startup_seconds`); it is also
        # the start barrier re-planning needs (no worker's start-up taken for slowness).
        queue, stop, gate = ctx.Queue(), ctx.Event(), ctx.Value("i", self.start_epoch - 2)
        self._ready: set[int] = set()
        self._spawned_at = time.perf_counter()
        # How many times this launcher rewrote plan.json (dbl.replan); a worker that sees it
        # change at an epoch start reads the new plan from there.
        plan_version = ctx.Value("i", 0)
        procs: list[Any] = []
        self._status = "running"
        try:
            procs = self._spawn_workers(ctx, store.name, queue, stop, gate, plan_version)
            self._open_bars(epochs)
            self._loop(store, queue, gate, plan_version, procs, epochs)
            self._status = "finished"
            self._server_stats = store.server_stats()
            summary = self._summary()
            self._print_summary(summary)
            self._join(procs, queue, timeout=STOP_TIMEOUT)
        except BaseException as exc:
            stop.set()
            # Before the gate opens no worker has trained (nothing to save), and one still
            # starting (CUDA, compile warm-up) looks at `stop` only when it is done: a stop
            # then ends them at once instead of waiting STOP_TIMEOUT for each.
            started = len(self._ready) == len(procs)
            self._join(procs, queue, timeout=STOP_TIMEOUT if started else 0.0)
            if self._signal is not None and self.last_complete >= 0:
                self._status = "interrupted"
                self.dir.set_checkpoint_status("interrupted")
            if isinstance(exc, TrainingDiverged):  # checkpoint.json keeps the last finite epoch as it is
                self._status = "diverged"
                self._summary()
            raise
        finally:
            store.close()
            self._close_bars()
            self.metrics.close()
            self._restore_signal_handlers(old_handlers)
        return summary

    def _bn_images(self) -> Any:
        """The training images the evaluation recomputes BatchNorm statistics on (eval.recalibrate_bn)."""
        if not self.cfg.eval.recalibrate_bn:
            return None
        images = bn_calibration_split(self.data.train, self.cfg.eval.bn_samples, self.cfg.seed)
        if images is None:
            self.log("eval.recalibrate_bn: the launcher holds no training images (data.source shards reads them "
                     "in the workers only); the global model is evaluated with its merged BatchNorm statistics")
        return images

    def _spawn_workers(self, ctx: Any, store_name: str, queue: Any, stop: Any, gate: Any,
                       plan_version: Any) -> list[Any]:
        ckpt = self.checkpoint
        # A split read sample by sample (imagefolder, data.factory) is never shipped: each worker loads it.
        train_data = pack_train_data(self.data) if self.data.train.in_memory and \
            self.data.train.images.numel() <= PASS_DATA_BYTES else None
        # The launcher's normalisation, so workers reading the data themselves do not estimate
        # it again (data.factory without data.mean/std): one estimate, one log line.
        config = self.cfg.to_dict()
        config["data"].update(mean=list(self.data.mean), std=list(self.data.std))
        procs = []
        for w in range(self.cfg.dbl.workers):
            args = WorkerArgs(worker=w, config=config, plan=self.plan.to_dict(), store_name=store_name,
                              run_dir=str(self.run_dir), start_epoch=self.start_epoch,
                              resume_folder=ckpt["path"] if ckpt else None, threads=self.threads,
                              device=self.devices[w], launcher_pid=os.getpid(), engine_options=self.engine_options,
                              train_data=train_data)
            # Not daemonic, so a worker may start DataLoader processes (data.num_workers); it needs
            # no daemon flag to end: every path out of train() joins, terminates or kills the
            # workers (_join), and a worker whose launcher died stops by itself (LauncherLink).
            p = ctx.Process(target=worker_main, args=(args, queue, stop, gate, plan_version),
                            name=f"dbl-ps-worker-{w}", daemon=False)
            p.start()
            procs.append(p)
        return procs

    def _loop(self, store: Any, queue: Any, gate: Any, plan_version: Any, procs: list[Any], epochs: int) -> None:
        reports: dict[int, dict[int, EpochReport]] = {}
        finished: set[int] = set()
        last_check = time.monotonic()
        while self.last_complete < epochs - 1:
            if self._signal is not None:
                raise TrainingInterrupted(self._interrupt_message(), self.run_dir, self.last_complete)
            if time.monotonic() - last_check > 0.5:
                last_check = time.monotonic()
                dead = [w for w, p in enumerate(procs) if p.exitcode is not None and w not in finished]
                if dead:
                    # It may have reported just before exiting: handle what is queued (waiting
                    # at most a second in all; the others keep sending progress), then look
                    # again. Only the waiting counts: handling a report may evaluate an epoch
                    # for longer than that, and the exited worker's WorkerFinished may still
                    # be queued behind it.
                    waited = 0.0
                    while waited < 1.0:
                        started = time.monotonic()
                        try:
                            msg = queue.get(timeout=0.2)
                        except queue_mod.Empty:
                            break
                        waited += time.monotonic() - started
                        self._handle(msg, reports, finished, store, gate, plan_version)
                    dead = [w for w in dead if w not in finished]
                    if dead:
                        w = dead[0]
                        raise WorkerError(f"worker {w} exited with code {procs[w].exitcode} without reporting an "
                                          f"error (killed by a signal or out of memory?)")
                    continue
            try:
                msg = queue.get(timeout=0.1)
            except queue_mod.Empty:
                continue
            self._handle(msg, reports, finished, store, gate, plan_version)

    def _handle(self, msg: Any, reports: dict[int, dict[int, EpochReport]], finished: set[int], store: Any,
                gate: Any, plan_version: Any) -> None:
        if isinstance(msg, WorkerFailed):
            if msg.message is None:
                raise WorkerError(f"worker {msg.worker} failed:\n{msg.traceback}")
            line = stopped_line(msg.message, diverged=msg.diverged, last_epoch=self.last_complete, run_dir=self.run_dir)
            raise (TrainingDiverged if msg.diverged else WorkerError)(line, actionable=True)
        if isinstance(msg, (WorkerFinished, WorkerStopped)):
            finished.add(msg.worker)
            if isinstance(msg, WorkerStopped) and self._signal is None:
                raise WorkerError(f"worker {msg.worker} stopped unexpectedly (the parameter store closed?)")
        elif isinstance(msg, WorkerReady):
            self._ready.add(msg.worker)
            if len(self._ready) == self.cfg.dbl.workers:
                self.startup_seconds = time.perf_counter() - self._spawned_at
                self.finisher.start_clock()
                gate.value = self.start_epoch
        elif isinstance(msg, Progress):
            self._update_worker_bar(msg)
        elif isinstance(msg, EpochReport):
            reports.setdefault(msg.epoch, {})[msg.worker] = msg
            while len(reports.get(self.last_complete + 1, {})) == self.cfg.dbl.workers:
                epoch = self.last_complete + 1
                self._complete_epoch(epoch, reports.pop(epoch), store, gate, plan_version)

    def _complete_epoch(self, epoch: int, reports: dict[int, EpochReport], store: Any, gate: Any,
                        plan_version: Any) -> None:
        target = max(r.version for r in reports.values())
        while store.version < target:  # the server may still be applying the last pushes
            time.sleep(0.0005)
        state = self.flat.new_vector()
        version = store.read(state)
        ordered = [reports[w] for w in sorted(reports)]
        # Before the gate opens: with dbl.replan no worker starts epoch + 1 before this decision.
        replanned = self._replan(epoch, ordered, plan_version) if self.cfg.dbl.replan else None
        gate.value = epoch + 1  # bsp (and any mode with dbl.replan): workers may start the next epoch now
        self.last_complete = epoch
        self.flat.scatter(state)  # the evaluation model now holds the global state
        record = self.finisher.finish(epoch, ordered, self.model.state_dict(), version)
        if replanned is not None:  # after the epoch's record, before its checkpoint: a resume keeps both or neither
            # (plan.json is rewritten before the gate opens, so a resume from the checkpoint before
            # this one would train epoch `epoch` again with the new plan: measured times are not
            # reproducible anyway, and every epoch's shares still cover the data exactly once)
            self.metrics.log(epoch, replanned.record)
        self.finisher.commit()  # the workers wrote their state files before reporting
        self._epoch_done(record)
        if replanned is not None:
            self.log(replanned.line)

    def _replan(self, epoch: int, reports: list[EpochReport], plan_version: Any) -> Replanned | None:
        """The new plan when the workers' speeds in `epoch` drifted apart (dbl.replan), written
        to plan.json and announced to the workers through `plan_version`; None to keep the plan."""
        replanned = replan_after_epoch(epoch, self.plan, reports, self.cfg.dbl.replan_threshold, log=self.log)
        if replanned is None:
            return None
        self.plan = replanned.plan
        self.replans = [*self.replans, {"after_epoch": epoch, "factors": replanned.record["factors"]}]
        self.dir.write_plan(self._plan_dict())  # what the workers read next, and what a resume continues with
        plan_version.value += 1
        return replanned

    # ------------------------------------------------------------------ stopping

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting
            self._signal = signum

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    def _restore_signal_handlers(self, old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    def _interrupt_message(self) -> str:
        name = signal.Signals(self._signal).name if self._signal else "signal"
        if self.last_complete >= 0:
            return (f"{name}: stopped after epoch {self.last_complete + 1}; checkpoint written. "
                    f"Continue with: dbl-ps train --resume {self.run_dir}")
        return f"{name}: stopped before the first epoch completed; no checkpoint to resume from"

    def _join(self, procs: list[Any], queue: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in procs:
            while p.is_alive() and time.monotonic() < deadline:
                p.join(0.05)
                try:  # keep the queue drained so no worker blocks on a full pipe
                    while True:
                        queue.get_nowait()
                except (queue_mod.Empty, OSError, ValueError):
                    pass
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()

    # ------------------------------------------------------------------ display

    def _open_bars(self, epochs: int) -> None:
        if not self.progress:
            return
        W = self.cfg.dbl.workers
        self._bars = [tqdm(total=1, position=w, desc=f"worker {w}", leave=False, file=sys.stderr,
                           bar_format="{desc} {bar:20} {postfix}") for w in range(W)]
        self._global_bar = tqdm(total=epochs, initial=self.start_epoch, position=W, desc="epochs", unit="epoch",
                                file=sys.stderr, leave=True)
        self._bars.append(self._global_bar)

    def _update_worker_bar(self, p: Progress) -> None:
        if not self._bars:
            return
        bar = self._bars[p.worker]
        bar.total = p.steps
        bar.n = p.step
        bar.set_postfix_str(f"epoch {p.epoch} step {p.step}/{p.steps} batch {p.batch} res {p.resolution}px "
                            f"{p.samples_per_s:,.0f} samples/s", refresh=False)
        bar.refresh()

    def _epoch_done(self, record: dict[str, Any]) -> None:
        line = self.finisher.console_line(record)
        if self._bars:
            self._global_bar.update(1)
            if "test_acc" in record:  # evaluated this epoch (eval.every)
                self._global_bar.set_postfix_str(f"test acc {record['test_acc']:.4f}", refresh=True)
            tqdm.write(line, file=sys.stderr)
        else:
            self._log(line)

    def _close_bars(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars = []

    # ------------------------------------------------------------------ summary

    def _summary(self) -> dict[str, Any]:
        return self.finisher.summary(self._status, name=self.cfg.name, small_workers=self.cfg.dbl.small,
                                     server=getattr(self, "_server_stats", None), plan_source=self.plan_source,
                                     startup_seconds=self.startup_seconds, time_model_seconds=self.time_model_seconds)

    def _print_summary(self, s: dict[str, Any]) -> None:
        def fmt(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        lines = [
            f"run {s['name']} ({s['method']}, {s['workers']} workers, {s['small_workers']} small) in {s['run_dir']}",
            f"  epochs {s['epochs']}  final test acc {fmt(s['final_test_acc'], '.4f')}  best {fmt(s['best_test_acc'], '.4f')}  "
            f"final test loss {fmt(s['final_test_loss'], '.4f')}",
            f"  wall time {fmt(s['wall_time'], '.1f')} s  mean {fmt(s['samples_per_s'], ',.0f')} samples/s  "
            f"store version {s['store_version']}  (time model: {s['plan_source']})",
        ]
        self._log("\n".join(lines))
