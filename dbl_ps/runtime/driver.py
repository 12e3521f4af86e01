"""The run driver: one training run, in every mode, through one order of steps.

    driver = RunDriver(cfg, coordinator, run_dir, checkpoint=None, log=print)
    driver.prepare()          # data, model check, time models, plan, schedule, run directory, lock
    summary = driver.run()    # every remaining global epoch; summary.json

The coordinator (`dbl_ps.training.coordinator.Coordinator`) is the mode: worker processes
around the parameter store (`dbl_ps.runtime.launcher`), or this rank of a torchrun launch
among the others (`dbl_ps.runtime.collective`). The driver never branches on which one it
holds. Per global epoch, in every mode:

    gather the workers' reports  ->  global state  ->  re-plan (dbl.replan: plan.json, then
    the workers take it up)  ->  release the next epoch  ->  finish (evaluate, record, model.pt,
    trackers, the re-plan record)  ->  the workers' own state  ->  commit checkpoint.json
    ->  on_checkpoint

plan.json and the re-plan record are written before the commit: a resume keeps both or
neither. Every write goes through `coordinator.all_written`, so a write that fails on one
process stops all of them with one line.

In the multi-rank mode every rank runs the driver (the same calls in the same order: the
collectives inside pair up); the main process (rank 0, or the launcher) writes the files.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dbl_ps.config import RunConfig, check_workers_fit, config_differences, sync_line, sync_record
from dbl_ps.data import Dataset, build_transform, load_dataset
from dbl_ps.metrics import METRICS_FILE, Logger, MetricsFileError, MetricsWriter, read_metrics
from dbl_ps.planner import Plan, plan_lines
from dbl_ps.registry import DATA_SOURCES
from dbl_ps.run_ownership import RunLock, RunWriteError, remove_if_empty, write_failure
from dbl_ps._process import is_command, process_seconds
from dbl_ps.runtime.engine_setup import check_engine_config, check_engine_schedule, engine_options
from dbl_ps.runtime.hooks import callbacks_from_env
from dbl_ps.runtime.user_callbacks import UserCallbacks, load_callbacks
from dbl_ps.runtime.tracking import open_trackers
from dbl_ps.schedule import ScheduleSpec
from dbl_ps.shards import prepare_shards
from dbl_ps.training.coordinator import Coordinator, GlobalEpoch
from dbl_ps.training.engine import merges_gradients
from dbl_ps.training.events import Callbacks, StopTraining
from dbl_ps.training.finisher import EpochFinisher, Evaluator, bn_calibration_split
from dbl_ps.training.loop import DivergedError
from dbl_ps.training.noise import build_noise_meter
from dbl_ps.training.replanning import Replanned, replan_after_epoch
from dbl_ps.training.rundir import MODEL_FILE, CheckpointError, RunDirectory, RunDirectoryGone
from dbl_ps.training.swa import StochasticWeightAverage
from dbl_ps.training.topology import LaunchError
from dbl_ps.training.cores import cpu_cores
from dbl_ps.training.run_model import build_run_model, check_run_model
from dbl_ps.training.run_plan import build_plan, build_spec, plan_from_dict, read_plan_file, save_plan, saved_plan
from dbl_ps.training.time_models import ResolvedTimeModels, poor_fit_lines, resolve_time_models

__all__ = ["RunDriver", "PreparedRun", "TrainingInterrupted", "TrainingDiverged", "WorkerError", "ConfigMismatch"]


class WorkerError(RuntimeError):
    """A worker failed; the message holds its traceback, or is one line a user can act on
    (`actionable`: the worker named the problem, e.g. a shard and sample key)."""

    def __init__(self, message: str, *, actionable: bool = False):
        super().__init__(message)
        self.actionable = actionable


class TrainingDiverged(WorkerError):
    """A worker's loss or state became non-finite (`divergence: stop`); summary.json says "diverged"."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after writing its checkpoint."""

    def __init__(self, message: str, run_dir: Path, epoch: int | None):
        super().__init__(message)
        self.run_dir = run_dir
        self.epoch = epoch


class ConfigMismatch(LaunchError):
    """The processes of one run were given different configs (each rank its own command line)."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class PreparedRun:
    """What `prepare()` made, handed to the coordinator to bring the workers up."""

    cfg: RunConfig
    run_dir: RunDirectory
    data: Dataset
    transform: Any
    model: nn.Module  # the global model: seeded initial state, or the checkpoint's
    plan: Plan
    spec: ScheduleSpec
    checkpoint: dict[str, Any] | None  # checkpoint.json of a resumed run ({} or None: none yet)
    engine_options: dict[str, Any]


class RunDriver:
    """One run of `cfg` in `run_dir` under `coordinator`. `checkpoint`: None for a new run,
    else the run directory's checkpoint.json ({} when it has none yet). `display`: the
    launcher's progress bars (None: one line per epoch)."""

    def __init__(self, cfg: RunConfig, coordinator: Coordinator, run_dir: Path, *, checkpoint: dict[str, Any] | None,
                 log: Callable[[str], None], display: Any = None, callbacks: Sequence[Any] = ()):
        self.cfg = cfg
        self.coordinator = coordinator
        self.run_dir = Path(run_dir)
        self.dir = RunDirectory(self.run_dir)
        self.checkpoint = checkpoint
        self.resuming = checkpoint is not None
        self._log = log
        self.display = display
        self.callbacks = Callbacks(callbacks_from_env(coordinator.rank))  # run-level test hooks (on_checkpoint, on_replan)
        # The user's callbacks (`callbacks=` here, the config's `callbacks:` loaded in prepare()):
        # the main process calls them; `self.user` is built in prepare().
        self._given_callbacks = list(callbacks)
        self.user = UserCallbacks([], timeout=1.0, warn=self.log)
        self._user_callbacks = False
        self.time_model_seconds = 0.0  # measuring the time model on the spot (not in the wall time)
        self.startup_seconds: float | None = None  # the launch until training starts, less the time model
        # Where this launch's start-up counts from: the process's start for the first run of a
        # `dbl-ps` command (imports and config included), else now (a run made from Python, or
        # the next run of `dbl-ps compare`): see dbl_ps._process
        global _FIRST_RUN
        self.launched_at = 0.0 if _FIRST_RUN and is_command() else process_seconds()
        _FIRST_RUN = False
        self.replans: list[dict[str, Any]] = []
        self.replanned_at_resume = False  # plan.json of the resumed run is rewritten for this launch
        self.last_complete = -1
        self._created = False  # prepare() created the run directory (removed again if it fails)
        self._lock: RunLock | None = None
        self.finisher: EpochFinisher | None = None

    def log(self, message: str) -> None:
        """A line from the main process (the others keep quiet)."""
        if self.coordinator.is_main:
            if self.display is not None and self.display.active:
                self.display.write(message)
            else:
                self._log(message)

    # ------------------------------------------------------------------ prepare

    def prepare(self) -> PreparedRun:
        """Data, model check, time models, plan, schedule, run directory and its lock.
        Raises before any worker starts; a failure releases the directory."""
        try:
            self.prepared = self._prepare()
        except BaseException:
            self.release()
            if self._created:  # a new run that failed before training leaves nothing behind
                remove_if_empty(self.run_dir)
            raise
        return self.prepared

    def _prepare(self) -> PreparedRun:
        cfg, coordinator = self.cfg, self.coordinator
        self._agree_on_config()
        self._own_run_dir()
        self.log(sync_line(cfg))  # the algorithm that runs, in every mode (also in plan.json, summary.json)
        if self.resuming:  # what the resume relies on, checked before any data is read
            coordinator.all_written(self._check_metrics if coordinator.is_main else None)
        check_engine_config(cfg, self.log)  # every process: the same error everywhere, before measuring
        if DATA_SOURCES.traits(cfg.data.source)["shard_sets"]:  # complete sets, or a current index, made by main
            coordinator.all_written((lambda: prepare_shards(cfg.data, cfg.schedule.resolutions,
                                                            progress=self.display is not None))
                                    if coordinator.is_main else None)
        data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions), log=self.log)
        check_workers_fit(cfg, len(data.train))  # before any time is measured
        check_engine_schedule(cfg, len(data.train))
        transform = build_transform(cfg.data, data)
        torch.manual_seed(cfg.seed)  # the same initial model in every process
        model = build_run_model(cfg, data.num_classes, data.in_channels, dropout=cfg.dropouts()[0],
                                log=self.log if coordinator.is_main else None)
        check_run_model(cfg, model, data.num_classes, data.in_channels, coordinator.eval_device)
        model.to(coordinator.eval_device)
        self.plan, self.plan_source = self._plan(data)
        for line in plan_lines(self.plan):  # b_S / B_L (or the mixed-batch split) per resolution, and what it means
            self.log(line)
        spec = build_spec(cfg, self.plan)
        fresh = not self.resuming
        options = self.coordinator.share(lambda: engine_options(cfg, self.run_dir, resuming=not fresh))
        if fresh or self.replanned_at_resume:  # a resume with its saved plan has nothing to write
            self.coordinator.all_written((lambda: self.dir.write_setup(cfg, self.plan_dict(), spec, fresh=fresh))
                                         if coordinator.is_main else None)
        if self.checkpoint:  # {}: stopped before its first checkpoint, starts again from epoch 0
            self._load_checkpoint_model(model, self.checkpoint)
        def load_user_callbacks() -> None:  # after the config's imports: a callback's module may need them
            given = [(type(c).__name__, c) for c in self._given_callbacks]
            self.user = UserCallbacks([*load_callbacks(cfg.callbacks), *given], timeout=cfg.tracking.timeout,
                                      warn=self.log)

        coordinator.all_written(load_user_callbacks if coordinator.is_main else None)  # a bad one stops every process
        self._user_callbacks = coordinator.share(lambda: bool(self.user))  # every process calls the events alike
        return PreparedRun(cfg, self.dir, data, transform, model, self.plan, spec, self.checkpoint, options)

    def _agree_on_config(self) -> None:
        """Every process trains the main process's config: a launcher gives each rank its own
        command line, and ranks that differ (another `schedule.epochs`) would train together
        with different schedules and then wait for each other for ever. Compared before
        anything is written; every process stops with the same line."""
        mine = self.cfg.to_dict()
        main = self.coordinator.share(lambda: mine)

        def check() -> None:
            differ = config_differences(main, mine)
            if differ:
                shown = ", ".join(f"{k} ({_short(a)} vs {_short(b)})" for k, a, b in differ[:5])
                raise ConfigMismatch(f"rank {self.coordinator.rank}'s run config differs from rank 0's: {shown}; "
                                     f"launch every rank with the same config and overrides")

        self.coordinator.all_written(check)

    def _own_run_dir(self) -> None:
        """The main process creates (a new run) and locks the run directory before the data is
        read; every process learns the outcome, so a directory another process trains in stops
        all of them with one error. Taking the lock is the first write: a read-only directory
        (or file system) is one line here, before any data is loaded or plan made."""
        def own() -> None:
            try:
                if not self.resuming:
                    self._created = not self.run_dir.exists()
                    self.dir.create()
                self._lock = RunLock(self.run_dir)
            except OSError as exc:  # read-only directory or file system, no permission
                if isinstance(exc, (FileExistsError, RunWriteError)):
                    raise
                raise write_failure(self.run_dir / "run.lock", exc) from None
            self.dir.pin()  # the directory this run owns: a deleted or replaced one is seen at each epoch

        self.coordinator.all_written(own if self.coordinator.is_main else None)

    def _check_metrics(self) -> None:
        """metrics.jsonl of the resumed run reads back (a torn last line is dropped later, with
        a warning); a line broken in the middle stops the resume here, naming it. Records the
        checkpoint's epochs lack (a cut or deleted file) are said in one warning: the run goes
        on, its summary counts the epochs trained, but their history is gone."""
        path = self.run_dir / METRICS_FILE
        trained = int(self.checkpoint["epoch"]) + 1 if self.checkpoint else 0
        if not path.is_file():
            if trained:
                self.log(f"warning: {path} is missing: the records of the {trained} epoch(s) the checkpoint holds "
                         f"are gone (restore it to keep them); the run goes on")
            return
        try:
            records = read_metrics(self.run_dir)
        except MetricsFileError as exc:
            raise CheckpointError(f"{exc}; repair or delete that line (a record of an epoch), then resume") from None
        present = {r.get("epoch") for r in records if "workers" in r}
        missing = [e for e in range(trained) if e not in present]
        if missing:
            shown = ", ".join(str(e + 1) for e in missing[:8]) + (" ..." if len(missing) > 8 else "")
            self.log(f"warning: {path} lacks the records of epoch(s) {shown} of the {trained} the checkpoint holds "
                     f"(cut or edited?): their history is gone (restore the file to keep it); the run goes on")

    def _load_checkpoint_model(self, model: nn.Module, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's global model into `model`, which config.yaml describes: a config
        edited after the run started (another model.name) is named, not a load_state_dict dump."""
        state = self.dir.load_model(checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError:
            mine = model.state_dict()
            missing = [k for k in mine if k not in state]
            extra = [k for k in state if k not in mine]
            shapes = [k for k in mine if k in state and mine[k].shape != state[k].shape]
            first = (missing or extra or shapes or ["?"])[0]
            raise CheckpointError(
                f"{self.dir.checkpoint_folder(checkpoint) / MODEL_FILE} does not fit the model config.yaml "
                f"describes (model.name {self.cfg.model.name!r}: {len(missing)} missing, {len(extra)} unexpected, "
                f"{len(shapes)} other shapes, e.g. {first!r}); was config.yaml edited after the run started? "
                f"restore its model section") from None

    def _plan(self, data: Dataset) -> tuple[Plan, str]:
        """The run's plan: plan.json of a resumed run (its re-plans included) when it has as many
        workers as this launch (made again from its inputs and checked against them), else a new
        one from the time models, solved once, on the main process, and taken as it is by the
        others; the same in every process."""
        cfg, workers = self.cfg, self.coordinator.workers
        saved = read_plan_file(self.run_dir) if self.resuming else None
        if saved is not None and saved["workers"] == workers:
            self.replans = list(saved.get("replans", []))
            return plan_from_dict(saved), saved.get("time_model_source", "plan.json of the run")
        if saved is not None:  # resumed onto another number of workers: re-planned, and recorded
            self.replanned_at_resume = True
            self.log(f"resuming with {workers} workers (the plan has {saved['workers']}): re-planning")
            self.replans = [*saved.get("replans", []), {"at_resume": int((self.checkpoint or {}).get("next_epoch", 0)),
                                                         "workers_before": saved["workers"], "workers": workers}]

        def resolve() -> ResolvedTimeModels:
            return resolve_time_models(cfg, num_classes=data.num_classes, in_channels=data.in_channels,
                                       device=self.coordinator.eval_device.type, log=self.log)

        resolved = self.coordinator.time_models(resolve)
        self.time_model_seconds = resolved.seconds  # one-off, reported apart from the training time
        for line in poor_fit_lines(resolved.models):
            self.log(line)
        plan = saved_plan(self.coordinator.share(
            lambda: build_plan(cfg, len(data.train), resolved.models, resolved.batches).to_dict()))
        return plan, resolved.source

    def plan_dict(self) -> dict[str, Any]:
        """What plan.json holds, in every mode: the plan, where its time models came from, the
        engine, ranks per worker and the re-plans so far."""
        return {**self.plan.to_dict(), "time_model_source": self.plan_source, "sync": sync_record(self.cfg),
                "engine": self.cfg.engine,
                "ranks_per_worker": self.coordinator.ranks_per_worker, "replans": self.replans}

    def release(self) -> None:
        """Give up the run directory (its lock); run() does this when it ends."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.dir.unpin()

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        """Every remaining epoch; returns the summary (main process; {} elsewhere)."""
        coordinator = self.coordinator
        epochs = int(self.prepared.spec.epochs)
        if self.checkpoint and self.checkpoint.get("status") == "finished":
            self.log(f"{self.run_dir} already finished all {epochs} epochs")
            self.release()
            return self.dir.read_summary() if coordinator.is_main else {}
        start = int(self.checkpoint["next_epoch"]) if self.checkpoint else 0
        self.last_complete = start - 1
        if self.checkpoint:
            self.log(f"resuming {self.run_dir} at epoch {start + 1} of {epochs}")  # 1-based, as the epoch lines
        elif self.resuming:
            self.log(f"{self.run_dir} has no checkpoint yet: starting again from epoch 1 of {epochs}")
        try:
            status = self._train(start, epochs)
            if not coordinator.is_main:
                return {}
            summary = self._summary(status)  # before close: the store's statistics are in it
            self._print_summary(summary)
            self.user.fire("on_run_end", dict(summary))  # a stop asked for now has nothing left to stop
            return summary
        finally:
            coordinator.close()  # every worker has stopped: none writes into the run directory now
            self.dir.discard_recreated()  # what a worker re-created after the directory went
            if self.finisher is not None:
                self.finisher.logger.close()
            self.release()

    def _train(self, start: int, epochs: int) -> str:
        """The epochs from `start` on; returns the run's status ("finished", or "interrupted"
        when a callback stopped it cleanly)."""
        coordinator = self.coordinator
        if coordinator.is_main:
            self.finisher = self._open_finisher(start)
        try:
            coordinator.start(self.prepared, start, on_ready=self._ready)
            if self.display is not None:
                self.display.open(epochs, start)
            self._user_event("on_run_start", {"run_dir": str(self.run_dir), "config": self.cfg.to_dict(),
                                              "plan": self.plan_dict(), "start_epoch": start,
                                              "resumed": bool(self.checkpoint)})
            for global_epoch in coordinator.epochs(start):
                self._complete(global_epoch)
            return "finished"
        except StopTraining as stop:  # a callback's clean stop (every process raised it): the checkpoint is kept
            self.log(str(stop))
            coordinator.stop(clean=True)
            if coordinator.is_main:
                self.dir.set_checkpoint_status("interrupted")
            return "interrupted"
        except (TrainingDiverged, DivergedError):  # every process learnt it at the same sync
            if self.finisher is not None:
                self._summary("diverged")  # checkpoint.json keeps the last finite epoch as it is
            coordinator.stop(clean=True)
            raise
        except BaseException as exc:
            coordinator.stop()
            if coordinator.is_main and not isinstance(exc, RunDirectoryGone):
                self._mark_stopped()
            raise
        finally:
            if self.display is not None:
                self.display.close()

    def _mark_stopped(self) -> None:
        """checkpoint.json of a run that stopped (a signal, a failed worker, a failed write) says
        `interrupted`, not `running`: its checkpoint is complete and `--resume` continues it. A
        write that fails now (the full disk that stopped it) leaves it as it was."""
        try:
            meta = self.dir.checkpoint_meta()
            if meta is not None and meta.get("status") == "running":
                self.dir.set_checkpoint_status("interrupted")
        except (OSError, ValueError):
            pass

    def _ready(self) -> None:
        """Every worker can train: the wall clock starts now (start-up is reported apart: from the
        launch, imports, data and plan included, less the time model, which has its own field)."""
        self.startup_seconds = max(0.0, process_seconds() - self.launched_at - self.time_model_seconds)
        if self.finisher is not None:
            self.finisher.start_clock()

    def _open_finisher(self, start: int) -> EpochFinisher:
        cfg, run = self.cfg, self.prepared
        logger = Logger([MetricsWriter(self.run_dir, resume=self.resuming, keep_through=start - 1)])
        for tracker in open_trackers(cfg, self.dir, resuming=self.resuming, tags=[cfg.engine], warn=self.log):
            logger.add(tracker)
        evaluate = Evaluator(run.model, run.data.test, run.transform, batch_size=cfg.data.eval_batch_size,
                             resolution=max(run.spec.resolutions), device=self.coordinator.eval_device,
                             bn_images=self._bn_images())
        ckpt = self.checkpoint or {}
        finisher = EpochFinisher(
            self.dir, run.spec, evaluate, logger, engine=cfg.engine, workers=self.plan.workers,
            ranks_per_worker=self.coordinator.ranks_per_worker, wall_offset=float(ckpt.get("wall_time", 0.0)),
            version_offset=int(ckpt.get("store_version", 0)), evaluate_every=cfg.eval.every, log=self.log,
            first_epoch=start,
            swa=StochasticWeightAverage.for_run(cfg, run.model, self.dir.checkpoint_folder(ckpt) if ckpt else None),
            noise=build_noise_meter(cfg, run.model, run.data.train, run.transform,
                                    device=self.coordinator.eval_device, log=self.log),
            global_batch=merges_gradients(cfg))
        if self.resuming:
            finisher.say_noise_scale_so_far()  # the regime line of the latest B_noise before the stop
        return finisher

    def _bn_images(self) -> Any:
        """The training images the evaluation recomputes BatchNorm statistics on (eval.recalibrate_bn)."""
        if not self.cfg.eval.recalibrate_bn:
            return None
        images = bn_calibration_split(self.prepared.data.train, self.cfg.eval.bn_samples, self.cfg.seed)
        if images is None:
            self.log("eval.recalibrate_bn: the main process holds no training images (data.source shards reads "
                     "them in the workers only); the global model is evaluated with its merged BatchNorm statistics")
        return images

    # ------------------------------------------------------------------ one global epoch

    @property
    def main_finisher(self) -> EpochFinisher:
        """The epoch finisher: the main process opens it when the run starts, and only the main
        process evaluates, logs, commits and summarises."""
        assert self.finisher is not None, "the main process opens the finisher when the run starts"
        return self.finisher

    def _complete(self, done: GlobalEpoch) -> None:
        coordinator, epoch = self.coordinator, done.epoch
        # Before anything of the epoch is written: a run directory deleted (or replaced) meanwhile
        # would take the metrics into an unlinked file and the checkpoint into a re-created folder.
        coordinator.all_written((lambda: self.dir.check_still_there(epoch)) if coordinator.is_main else None)
        state = coordinator.global_state(done)
        # Before the next epoch is released: no worker starts epoch + 1 before this decision.
        replanned = self._replan(done) if self.cfg.dbl.replan else None
        coordinator.release(epoch)
        self.last_complete = epoch
        record: dict[str, Any] = {}

        def finish() -> None:
            try:
                record.update(self.main_finisher.finish(epoch, done.reports, state, done.version))
                if replanned is not None:  # after the epoch's record, before its checkpoint
                    self.main_finisher.logger.log(epoch, replanned.record)
            except OSError:  # a write that failed because the run directory vanished says so
                self.dir.check_still_there(epoch)
                raise

        coordinator.all_written(finish if coordinator.is_main else None)
        folder = self.dir.epoch_folder(epoch)
        coordinator.all_written(lambda: coordinator.save_worker_state(folder))

        def commit() -> None:
            self.dir.check_still_there(epoch)  # again: deleted while this epoch was evaluated and saved
            try:
                self.main_finisher.commit()
            except OSError:
                self.dir.check_still_there(epoch)
                raise

        coordinator.all_written(commit if coordinator.is_main else None)
        if coordinator.is_main:
            line = self.main_finisher.console_line(record)
            if self.display is not None and self.display.active:
                self.display.epoch_done(line, record)
            else:
                self._log(line)
            if replanned is not None:
                self.log(replanned.line)
        self._user_event("on_epoch_end", epoch, dict(record))
        if replanned is not None:
            self._user_event("on_replan", epoch, dict(replanned.record))
        self._user_event("on_checkpoint", epoch, folder)
        self.callbacks.on_checkpoint(coordinator.loop, epoch)

    def _user_event(self, event: str, *args: Any) -> None:
        """The user's callbacks on the main process; a `StopTraining` one of them raised stops
        every process at the same point (`all_written` hands the exception to each)."""
        def fire() -> None:
            stop = self.user.fire(event, *args)
            if stop is not None:
                raise stop

        if self._user_callbacks:
            self.coordinator.all_written(fire if self.coordinator.is_main else None)

    def _replan(self, done: GlobalEpoch) -> Replanned | None:
        """`dbl.replan`: every process decides from the same reports (`replan_after_epoch` is
        pure), the main one rewrites plan.json (what a resume and the store-mode workers read),
        then every worker takes the new plan up at the next epoch."""
        replanned = replan_after_epoch(done.epoch, self.plan, done.reports, self.cfg.dbl.replan_threshold,
                                       log=self.log)
        if replanned is None:
            return None
        self.plan = replanned.plan
        self.replans = [*self.replans, {"after_epoch": done.epoch, "factors": replanned.record["factors"]}]
        self.coordinator.all_written(
            (lambda: save_plan(self.run_dir, self.plan_dict())) if self.coordinator.is_main else None)
        self.coordinator.adopt_plan(self.plan)
        self.callbacks.on_replan(self.coordinator.loop, done.epoch)
        return replanned

    # ------------------------------------------------------------------ summary

    def _summary(self, status: str) -> dict[str, Any]:
        return self.main_finisher.summary(status, name=self.cfg.name, small_workers=self.plan.small,
                                     sync=sync_record(self.cfg),
                                     server=self.coordinator.server_stats(), plan_source=self.plan_source,
                                     startup_seconds=self.startup_seconds, time_model_seconds=self.time_model_seconds,
                                     total_seconds=process_seconds() - self.launched_at,
                                     threads_per_worker=self.coordinator.threads, cpu_cores=cpu_cores(),
                                     device=self.coordinator.eval_device.type)

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


_FIRST_RUN = True  # no RunDriver made in this process yet


def engine_module(model: nn.Module) -> nn.Module:
    """A copy of the global model for this process's engine (engines recast or shard it)."""
    return copy.deepcopy(model)


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
