"""Multi-rank mode: `dbl-ps train` under `torchrun` or the `deepspeed` launcher.

Every rank runs the same worker loop as a store-mode worker process
(`dbl_ps.training.loop.WorkerLoop`), with its engine (`engine: torch | deepspeed |
fsdp`) and the collective synchronizer instead of the parameter store. Rank `r` is
member `r % g` of worker `r // g` (`g = fsdp.ranks_per_worker`, 1 for the other
engines).

Set-up: the launch is checked against the plan (`WORLD_SIZE`, ranks per worker)
before `init_process_group`, which has a timeout (`launch.timeout`). The plan comes
from rank 0 (broadcast), or from every worker's own measured time model
(all-gathered) when the config has none: mixed hardware plans per worker.

Per global epoch every rank trains its share through the loop; then the ranks gather
their `EpochReport`s, rank 0 evaluates the (identical) global model and writes the
record, the metrics, W&B and `model.pt` through the same epoch finisher as the store
mode's launcher; every engine writes its worker's own state; after a barrier rank 0
commits `checkpoint.json`. Invariant: every rank issues the same sequence of
collectives (see `dbl_ps.synchronizers.collective`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from dbl_ps.config import check_workers_fit
from dbl_ps.data import DataError, build_transform, load_dataset
from dbl_ps.metrics import Logger, MetricsWriter
from dbl_ps.run_dirs import RunDirectoryBusy, RunLock, RunWriteError
from dbl_ps.runtime.engines import build_rank_engine, check_engine_config, engine_options
from dbl_ps.runtime.failures import failure_message, stopped_line
from dbl_ps.runtime.hooks import callbacks_from_env
from dbl_ps.runtime.tracking import open_tracker
from dbl_ps.shards import share_loader_for
from dbl_ps.synchronizers.collective import CollectiveSynchronizer, RankLost, init_distributed, sync_timeout
from dbl_ps.training.events import StopTraining
from dbl_ps.training.finisher import EpochFinisher, Evaluator, bn_calibration_split
from dbl_ps.training.loop import DivergedError, WorkerLoop
from dbl_ps.training.messages import EpochReport, merge_members
from dbl_ps.training.rundir import CheckpointError, RunDirectory, new_run_dir
from dbl_ps.training.replanning import replan_after_epoch
from dbl_ps.training.setup import (
    build_plan,
    build_run_model,
    build_spec,
    check_run_model,
    cpu_cores,
    plan_from_dict,
    resolve_time_models,
    warm_up_shapes,
)
from dbl_ps.training.topology import LaunchError, Topology, launch_world_size, local_world_size, read_topology

__all__ = ["CollectiveRunner", "run_collective", "pick_device"]


def pick_device(cfg: Any, topo: Topology) -> tuple[torch.device, str]:
    """`(device, backend)`: the rank's GPU with NCCL, else the CPU with gloo."""
    want = cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise LaunchError("config key 'device': got 'cuda', but torch finds no CUDA GPU; use 'auto' or 'cpu'")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", topo.local_rank % torch.cuda.device_count()), "nccl"
    return torch.device("cpu"), "gloo"


def _with_workers(cfg: Any, workers: int) -> Any:
    if cfg.dbl.workers == workers:
        return cfg
    data = cfg.to_dict()
    return type(cfg).from_dict({**data, "dbl": {**data["dbl"], "workers": workers}})


class CollectiveRunner:
    """One rank of a multi-rank run of `cfg` (a new run in `run_dir`, or `resume` it)."""

    def __init__(self, cfg: Any, *, run_dir: str | Path | None = None, resume: bool = False,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.resume = resume
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._lock: RunLock | None = None  # rank 0: this run directory's ownership
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))

    def log(self, message: str) -> None:
        if self.topo.is_main:
            self._log(message)

    # -- set-up

    def setup(self) -> None:
        cfg = self.cfg
        self._set_up_from = time.perf_counter()  # start-up: reported apart from the training time
        self.time_model_seconds = 0.0  # measuring the time model on the spot (not in the training time)
        meta = RunDirectory(self.run_dir).load_checkpoint() if self.resume else None
        group_size = cfg.fsdp.ranks_per_worker if cfg.engine == "fsdp" else 1
        # Checked before any collective: every rank reads the same environment and config.
        workers, world = cfg.dbl.workers, launch_world_size()
        if meta is not None and world is not None and world % group_size == 0 and world // group_size != workers:
            workers = world // group_size  # resuming onto a different number of workers: re-plan for the launch
        self.topo = topo = read_topology(workers, group_size)
        self.cfg = cfg = _with_workers(cfg, workers)
        self.device, backend = pick_device(cfg, topo)
        torch.set_num_threads(max(1, cpu_cores() // local_world_size(topo.world)))
        init_distributed(topo, backend, cfg.launch.timeout)
        self.meta = meta
        if self.run_dir is None:
            name = [str(new_run_dir(cfg)) if topo.is_main else ""]
            dist.broadcast_object_list(name, src=0)
            self.run_dir = Path(name[0])
        self.dir = RunDirectory(self.run_dir)
        self._own_run_dir()
        check_engine_config(cfg, self.log)  # every rank: a conflict is the same error everywhere, before measuring
        self.data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions), log=self.log)
        check_workers_fit(cfg, len(self.data.train))
        self.transform = build_transform(cfg.data, self.data)
        torch.manual_seed(cfg.seed)  # the same initial model on every rank
        module = build_run_model(cfg, self.data.num_classes, self.data.in_channels, dropout=cfg.dropouts()[0],
                                 log=self.log if topo.is_main else None)
        check_run_model(cfg, module, self.data.num_classes, self.data.in_channels, self.device)  # before any measuring
        self.plan, self.plan_source = self._plan()
        self.spec = build_spec(cfg, self.plan)
        if topo.is_main:
            self._write_run_files()
        dist.barrier()  # rank 0 wrote deepspeed_config.json for a new run
        options = engine_options(cfg, self.run_dir, resuming=True)
        self.engine = build_rank_engine(cfg, module, self.device, topo, options=options)
        compile_seconds = self.engine.warm_up(warm_up_shapes(self.plan, self.spec, topo.worker), self.data.in_channels)
        if compile_seconds:
            self.log(f"rank {topo.rank}: torch.compile warmed up in {compile_seconds:.1f} s")
        self.start_epoch = 0
        if meta:  # {}: stopped before its first checkpoint, starts again from epoch 0
            self.engine.load_full_state_dict(self.dir.load_model(meta))
            self.engine.load_worker_state(self.dir.checkpoint_folder(meta), int(meta["workers"]))
            self.start_epoch = int(meta["next_epoch"])
            self.log(f"resuming {self.run_dir} at epoch {self.start_epoch} of {int(self.spec.epochs)}")

    def _own_run_dir(self) -> None:
        """Rank 0 creates (a new run) and locks the run directory; every rank learns the outcome,
        so a directory another process trains in stops all ranks with one error."""
        problem: list[Any] = [None]
        if self.topo.is_main:
            try:
                if self.meta is None:
                    self.dir.create()
                self._lock = RunLock(self.run_dir)
            except (FileExistsError, RunDirectoryBusy) as exc:
                problem = [str(exc)]
        dist.broadcast_object_list(problem, src=0)
        if problem[0] is not None:
            raise LaunchError(problem[0])

    def _plan(self) -> tuple[Any, str]:
        """Rank 0's plan (or the saved one when resuming with as many workers), the same on every rank."""
        cfg, topo = self.cfg, self.topo
        saved = self.dir.read_json("plan.json") if self.meta is not None else None
        if saved is not None and saved["workers"] == topo.workers:
            return plan_from_dict(saved), saved.get("time_model_source", "plan.json of the run")
        if saved is not None:
            self.log(f"resuming with {topo.workers} workers (the checkpoint has {saved['workers']}): re-planning")
        measure = cfg.time_model() is None and not cfg.dbl.calibration and cfg.dbl.small > 0
        box: list[Any] = [None]
        if topo.is_main or measure:
            models, batches, source, self.time_model_seconds = resolve_time_models(
                cfg, num_classes=self.data.num_classes, in_channels=self.data.in_channels,
                device=self.device.type, log=self.log)
            if measure:  # each worker measured its own device: one time model per worker (mixed hardware)
                gathered: list[Any] = [None] * topo.world
                dist.all_gather_object(gathered, models)
                per_worker = [gathered[w * topo.group_size] for w in range(topo.workers)]
                models = {r: [pw[r] for pw in per_worker] for r in models}
                source = "measured per worker"
            if topo.is_main:
                box = [(build_plan(cfg, len(self.data.train), models, batches).to_dict(), source)]
        dist.broadcast_object_list(box, src=0)  # every rank uses rank 0's plan, bit for bit
        plan = plan_from_dict(box[0][0])
        if plan.workers != topo.workers:
            raise LaunchError(f"the plan is for {plan.workers} workers, the launch has {topo.workers}")
        for line in plan.regime_lines():  # b_S / B_L per resolution, and what it means on this device
            self.log(line)
        return plan, box[0][1]

    def _write_run_files(self) -> None:
        fresh = self.meta is None
        engine_options(self.cfg, self.run_dir, resuming=not fresh)  # saves deepspeed_config.json of a new run
        self.dir.write_setup(self.cfg, self._plan_dict(), self.spec, fresh=fresh)

    def _plan_dict(self) -> dict[str, Any]:
        """plan.json: the plan and where it came from (at set-up and after each re-plan)."""
        return {**self.plan.to_dict(), "time_model_source": self.plan_source, "engine": self.cfg.engine,
                "ranks_per_worker": self.topo.group_size}

    # -- training

    def train(self) -> dict[str, Any]:
        """Run every remaining epoch; returns the summary (rank 0; the others get {})."""
        self.setup()
        cfg, topo, meta = self.cfg, self.topo, self.meta
        if meta is not None and meta.get("status") == "finished":
            self.log(f"{self.run_dir} already finished all {int(self.spec.epochs)} epochs")
            return self.dir.read_summary() if topo.is_main else {}
        finisher = self._open_finisher() if topo.is_main else None
        dist.barrier()  # start the clocks together (W&B start-up on rank 0 is slow)
        startup_seconds = time.perf_counter() - self._set_up_from
        if finisher is not None:
            finisher.start_clock()  # the wall time counts training, as in the store mode
        first = self.plan[self.spec.resolutions[0]]
        # ShareLoader over data.train, or (data.source: shards) the shard set of each resolution.
        loader = share_loader_for(cfg.data, self.data.train, self.transform, resolutions=self.spec.resolutions,
                                  worker=topo.worker, shares=first.shares, batch_size=first.batches[topo.worker],
                                  resolution=self.spec.resolutions[0], seed=cfg.seed, epoch=self.start_epoch,
                                  device=self.device)
        sync = CollectiveSynchronizer(cfg.store.sync_every, divergence=cfg.divergence,
                                      timeout_s=sync_timeout(self.plan, cfg.store.sync_every, cfg.launch.sync_timeout))
        loop = WorkerLoop(engine=self.engine, synchronizer=sync, loader=loader, plan=self.plan, spec=self.spec,
                          seed=cfg.seed, callbacks=callbacks_from_env(topo.rank),
                          restart_momentum=cfg.optim.restart_momentum)
        loop.start(fresh=not meta)
        status = "finished"
        try:
            for report in loop.run(self.start_epoch):
                workers = self._finish_epoch(report, finisher)
                if cfg.dbl.replan:
                    loop.plan = self._replan(report.epoch, workers, finisher)
                loop.callbacks.on_checkpoint(loop, report.epoch)
            dist.barrier()
        except StopTraining as stop:
            self.log(str(stop))
            status = "stopped"
            dist.barrier()
        except DivergedError as err:  # every rank raised it at the same sync: no collective is left waiting
            if finisher is not None:  # rank 0: summary.json and the line; checkpoint.json keeps the last finite epoch
                finisher.summary("diverged", name=cfg.name, small_workers=self.plan.small, plan_source=self.plan_source,
                                 startup_seconds=startup_seconds, time_model_seconds=self.time_model_seconds)
                meta = self.dir.checkpoint_meta()
                self._log("dbl-ps train: error: " + stopped_line(str(err), diverged=True, run_dir=self.run_dir,
                                                                 last_epoch=meta["epoch"] if meta else None))
            dist.barrier()  # torchrun ends every rank once one exits with an error: not before rank 0 is done
            raise
        finally:
            if finisher is not None:
                finisher.logger.close()
        if not topo.is_main:
            return {}
        if status != "finished":
            status = "interrupted"
            self.dir.set_checkpoint_status(status)
        return finisher.summary(status, name=cfg.name, small_workers=self.plan.small, plan_source=self.plan_source,
                                startup_seconds=startup_seconds, time_model_seconds=self.time_model_seconds)

    def _open_finisher(self) -> EpochFinisher:
        cfg, meta = self.cfg, self.meta
        logger = Logger([MetricsWriter(self.run_dir, resume=meta is not None,
                                       keep_through=self.start_epoch - 1)])
        tracker = open_tracker(cfg, self.dir, resuming=meta is not None, tags=[cfg.engine], warn=self._log)
        if tracker is not None:
            logger.add(tracker)
        eval_model = build_run_model(cfg, self.data.num_classes, self.data.in_channels)
        bn_images = bn_calibration_split(self.data.train, cfg.eval.bn_samples, cfg.seed) \
            if cfg.eval.recalibrate_bn else None  # None also for shards (labels only outside the loader)
        evaluate = Evaluator(eval_model, self.data.test, self.transform, batch_size=cfg.data.eval_batch_size,
                             resolution=max(self.spec.resolutions), device=self.device, bn_images=bn_images)
        return EpochFinisher(self.dir, self.spec, evaluate, logger, engine=cfg.engine, workers=self.topo.workers,
                             ranks_per_worker=self.topo.group_size,
                             wall_offset=float(meta["wall_time"]) if meta else 0.0,
                             version_offset=int(meta["store_version"]) if meta else 0,
                             evaluate_every=cfg.eval.every, log=self._log)

    def _finish_epoch(self, report: EpochReport, finisher: EpochFinisher | None) -> list[EpochReport]:
        """Gather every rank's report, evaluate and checkpoint the epoch; returns the workers'
        reports (every rank holds them)."""
        topo = self.topo
        gathered: list[Any] = [None] * topo.world
        dist.all_gather_object(gathered, report)
        workers = [merge_members(gathered[w * topo.group_size:(w + 1) * topo.group_size]) for w in range(topo.workers)]
        full = self.engine.full_state_dict()  # collective for sharded engines
        folder = self.dir.epoch_folder(report.epoch)

        def finish() -> None:
            record = finisher.finish(report.epoch, workers, full, report.version)
            self._log(finisher.console_line(record))

        # Each write is followed by a collective that also carries its outcome, so a rank that
        # cannot write (a full disk) stops every rank at once instead of leaving them waiting.
        self._all_written(finish if finisher is not None else None)  # model.pt: the folder exists now
        self._all_written(lambda: self.engine.save_worker_state(folder))
        self._all_written(finisher.commit if finisher is not None else None)
        return workers

    def _replan(self, epoch: int, workers: list[EpochReport], finisher: EpochFinisher | None) -> Any:
        """`dbl.replan`: every rank decides from the same gathered reports (`replan_after_epoch`
        is a pure function), so all switch to the same plan at the next epoch with no further
        collective; rank 0 logs the decision and rewrites plan.json for a resume."""
        replanned = replan_after_epoch(epoch, self.plan, workers, self.cfg.dbl.replan_threshold, log=self.log)
        if replanned is None:
            return self.plan
        self.plan = replanned.plan
        if finisher is not None:
            finisher.logger.log(epoch, replanned.record)
            self.dir.write_plan(self._plan_dict())
            self._log(replanned.line)
        return self.plan

    def _all_written(self, write: Callable[[], None] | None) -> None:
        """Run this rank's part of a write (if any), then learn every rank's outcome."""
        failure = None
        if write is not None:
            try:
                write()
            except RunWriteError as exc:
                failure = str(exc)
        outcomes: list[Any] = [None] * self.topo.world
        dist.all_gather_object(outcomes, failure)
        failed = [f for f in outcomes if f is not None]
        if failed:
            raise RunWriteError(failed[0])

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()


def run_collective(cfg: Any, *, run_dir: str | None, resume: str | None) -> int:
    """`dbl-ps train` under a launcher: one line and exit status 2 for a bad launch."""
    runner = CollectiveRunner(cfg, run_dir=resume or run_dir, resume=bool(resume))
    try:
        runner.train()
        return 0
    except (LaunchError, CheckpointError, FileExistsError) as err:
        print(f"dbl-ps train: error: {err}", file=sys.stderr, flush=True)
        return 2
    except DivergedError:  # rank 0 printed the line
        return 1
    except (DataError, RunWriteError, RankLost, dist.DistError) as err:
        # corrupt data, a full disk, a frozen or killed rank: one line from each rank still running
        topo = getattr(runner, "topo", None)
        if isinstance(err, RunWriteError) and topo is not None and not topo.is_main:
            return 1  # every rank learnt the same failed write: rank 0 says it
        message = failure_message(err, worker=topo.worker if topo else 0, data_path=runner.cfg.data.path)
        meta = RunDirectory(runner.run_dir).checkpoint_meta() if runner.run_dir is not None else None
        line = stopped_line(message or " ".join(str(err).split()[:40]) or type(err).__name__, diverged=False,
                            last_epoch=meta["epoch"] if meta else None, run_dir=runner.run_dir)
        print(f"dbl-ps train: error: {line}", file=sys.stderr, flush=True)
        return 1
    finally:
        runner.close()
