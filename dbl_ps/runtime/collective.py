"""Multi-rank mode: `dbl-ps train` under `torchrun` or the `deepspeed` launcher.

What is this mode's own lives here: the rank's set-up (the launch checked against the
config before `init_process_group`, which has a timeout, `launch.timeout`; the device,
threads and process group) and what a rank trains (its engine, share loader and the
collective synchronizer around the worker loop). Rank `r` is member `r % g` of worker
`r // g` (`g = fsdp.ranks_per_worker`, 1 for the other engines). The run itself is the
run driver's (`dbl_ps.runtime.driver`), the same as in the store mode; every rank runs it
over a `dbl_ps.synchronizers.collective.CollectiveCoordinator`, rank 0 writes the files.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dbl_ps.data import DataError
from dbl_ps.run_ownership import RunDirectoryBusy, RunWriteError
from dbl_ps.runtime.driver import ConfigMismatch, PreparedRun, RunDriver, engine_module, stderr_log
from dbl_ps.runtime.engine_setup import build_rank_engine
from dbl_ps.runtime.failures import failure_message, stopped_line
from dbl_ps.runtime.hooks import callbacks_from_env
from dbl_ps.shards import share_loader_for
from dbl_ps.synchronizers.collective import (
    CollectiveCoordinator,
    CollectiveSynchronizer,
    RankLost,
    init_distributed,
    sync_timeout,
)
from dbl_ps.training.algorithms import sync_periods, worker_callbacks
from dbl_ps.training.loop import DivergedError, WorkerLoop
from dbl_ps.training.rundir import CheckpointError, RunDirectory, RunDirectoryGone, new_run_dir
from dbl_ps.training.setup import cpu_cores, warm_up_shapes
from dbl_ps.training.topology import LaunchError, Topology, launch_world_size, local_world_size, read_topology

__all__ = ["run_collective", "pick_device", "set_up_rank"]


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


def set_up_rank(cfg: Any, checkpoint: dict[str, Any] | None) -> tuple[Any, CollectiveCoordinator]:
    """This rank's config (its worker count follows the launch when resuming onto another one)
    and its coordinator, the process group initialised. Checked before any collective: every
    rank reads the same environment and config."""
    group_size = cfg.fsdp.ranks_per_worker if cfg.engine == "fsdp" else 1
    workers, world = cfg.dbl.workers, launch_world_size()
    if checkpoint is not None and world is not None and world % group_size == 0 and world // group_size != workers:
        workers = world // group_size  # resuming onto a different number of workers: re-plan for the launch
    topo = read_topology(workers, group_size)
    cfg = _with_workers(cfg, workers)
    device, backend = pick_device(cfg, topo)
    threads = int(cfg.threads_per_worker) if cfg.threads_per_worker else \
        max(1, cpu_cores() // local_world_size(topo.world))
    torch.set_num_threads(threads)
    init_distributed(topo, backend, cfg.launch.timeout)
    measure = cfg.time_model() is None and not cfg.dbl.calibration and cfg.dbl.small > 0
    coordinator = CollectiveCoordinator(topo, device, threads=threads, measure_per_worker=measure,
                                        build_loop=lambda run, start: build_rank_loop(run, start, topo, device))
    return cfg, coordinator


def build_rank_loop(run: PreparedRun, start_epoch: int, topo: Topology, device: torch.device) -> WorkerLoop:
    """What this rank trains: its engine (warmed up, resumed), its share loader and the
    collective synchronizer around the worker loop, started from the global model."""
    cfg, plan, spec = run.cfg, run.plan, run.spec
    engine = build_rank_engine(cfg, engine_module(run.model), device, topo, options=run.engine_options)
    compile_seconds = engine.warm_up(warm_up_shapes(plan, spec, topo.worker), run.data.in_channels)
    if compile_seconds and topo.is_main:
        stderr_log(f"rank {topo.rank}: torch.compile warmed up in {compile_seconds:.1f} s")
    if run.checkpoint:  # {}: stopped before its first checkpoint, starts again from epoch 0
        engine.load_full_state_dict(run.model.state_dict())
        engine.load_worker_state(run.run_dir.checkpoint_folder(run.checkpoint), int(run.checkpoint["workers"]))
    first = plan[spec.resolutions[0]]
    # ShareLoader over data.train, or (data.source: shards) the shard set of each resolution.
    loader = share_loader_for(cfg.data, run.data.train, run.transform, resolutions=spec.resolutions,
                              worker=topo.worker, shares=first.shares, batch_size=first.batches[topo.worker],
                              resolution=spec.resolutions[0], seed=cfg.seed, epoch=start_epoch, device=device)
    sync = CollectiveSynchronizer(cfg.store.sync_every, divergence=cfg.divergence,
                                  timeout_s=max(sync_timeout(plan, every, cfg.launch.sync_timeout)
                                                for every in sync_periods(cfg)))
    loop = WorkerLoop(engine=engine, synchronizer=sync, loader=loader, plan=plan, spec=spec, seed=cfg.seed,
                      callbacks=[*worker_callbacks(cfg), *callbacks_from_env(topo.rank)],
                      restart_momentum=cfg.optim.restart_momentum)
    loop.start(fresh=not run.checkpoint)
    return loop


class _StopSignal:
    """The first SIGINT / SIGTERM / SIGHUP this rank received (None: none yet)."""

    received: str | None = None


def _on_stop_signal(signum: int, frame: Any) -> None:
    # Ctrl-C reaches every rank (one process group) and torchrun then forwards it as SIGTERM:
    # the first one stops this rank, the later ones are the same stop and must not interrupt
    # the clean-up (a second KeyboardInterrupt there was a traceback per rank).
    if _StopSignal.received is None:
        _StopSignal.received = signal.Signals(signum).name
        raise KeyboardInterrupt


def _stop_on_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        _StopSignal.received = None
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                signal.signal(sig, _on_stop_signal)


def _interrupted(driver: RunDriver | None, coordinator: CollectiveCoordinator | None) -> int:
    """A stop signal: rank 0 marks the checkpoint interrupted and says once what is kept."""
    main = coordinator.is_main if coordinator is not None else os.environ.get("RANK", "0") == "0"
    if main:
        where = driver.run_dir if driver is not None else None
        meta = RunDirectory(where).checkpoint_meta() if where is not None and where.is_dir() else None
        if meta is not None and meta.get("status") != "finished":
            RunDirectory(where).set_checkpoint_status("interrupted")
        kept = (f"the checkpoint of epoch {meta['epoch'] + 1} is kept; continue with: dbl-ps train --resume {where}"
                if meta is not None else "no epoch had completed: nothing to resume")
        print(f"dbl-ps train: {_StopSignal.received or 'SIGINT'}: stopped; {kept}", file=sys.stderr, flush=True)
    return 130


def run_collective(cfg: Any, *, run_dir: str | None, resume: str | None) -> int:
    """`dbl-ps train` under a launcher: one line and exit status 2 for a bad launch."""
    driver: RunDriver | None = None
    coordinator: CollectiveCoordinator | None = None
    _stop_on_signals()
    try:
        checkpoint = RunDirectory(resume).load_checkpoint() if resume else None
        cfg, coordinator = set_up_rank(cfg, checkpoint)
        if resume is None and run_dir is None:
            run_dir = coordinator.share(lambda: str(new_run_dir(cfg)))
        driver = RunDriver(cfg, coordinator, Path(resume or run_dir), checkpoint=checkpoint, log=stderr_log)
        driver.prepare()
        driver.run()
        return 0
    except KeyboardInterrupt:
        return _interrupted(driver, coordinator)
    except (ConfigMismatch, RunDirectoryGone) as err:  # every rank learnt it: rank 0 says it
        if coordinator is not None and coordinator.is_main:
            print(f"dbl-ps train: error: {err}", file=sys.stderr, flush=True)
        return 2 if isinstance(err, ConfigMismatch) else 1  # a bad launch, or a run that failed (as in store mode)
    except (LaunchError, CheckpointError, FileExistsError, RunDirectoryBusy) as err:
        print(f"dbl-ps train: error: {err}", file=sys.stderr, flush=True)
        return 2
    except DivergedError as err:  # every rank raised it at the same sync; rank 0 says it
        if coordinator is not None and coordinator.is_main:
            meta = RunDirectory(driver.run_dir).checkpoint_meta()
            line = stopped_line(str(err), diverged=True, run_dir=driver.run_dir,
                                last_epoch=meta["epoch"] if meta else None)
            print(f"dbl-ps train: error: {line}", file=sys.stderr, flush=True)
        return 1
    except (DataError, RunWriteError, RankLost, dist.DistError) as err:
        if _StopSignal.received is not None:  # a rank that stopped first broke this one's collective
            return _interrupted(driver, coordinator)
        # corrupt data, a full disk, a frozen or killed rank: one line from each rank still running
        topo = coordinator.topo if coordinator is not None else None
        if isinstance(err, RunWriteError) and topo is not None and not topo.is_main:
            return 1  # every rank learnt the same failed write: rank 0 says it
        message = failure_message(err, worker=topo.worker if topo else 0, data_path=cfg.data.path)
        where = driver.run_dir if driver is not None else None
        meta = RunDirectory(where).checkpoint_meta() if where is not None else None
        line = stopped_line(message or " ".join(str(err).split()[:40]) or type(err).__name__, diverged=False,
                            last_epoch=meta["epoch"] if meta else None, run_dir=where)
        print(f"dbl-ps train: error: {line}", file=sys.stderr, flush=True)
        return 1
    finally:
        if driver is not None:
            driver.release()
        if dist.is_initialized():
            dist.destroy_process_group()
