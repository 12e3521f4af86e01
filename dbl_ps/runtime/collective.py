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

import gc
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from dbl_ps.config import RunConfig
from dbl_ps.data import DataError
from dbl_ps.run_ownership import RunDirectoryBusy, RunWriteError
from dbl_ps.runtime.driver import ConfigMismatch, PreparedRun, RunDriver, engine_module, stderr_log
from dbl_ps.runtime.failures import failure_message, stopped_line
from dbl_ps.runtime.hooks import callbacks_from_env
from dbl_ps.runtime.worker_loop import Resume, WorkerPart, build_worker_loop
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.synchronizers.collective import CollectiveCoordinator, RankLost, init_distributed
from dbl_ps.training.loop import DivergedError, WorkerLoop
from dbl_ps.training.rundir import CheckpointError, RunDirectory, RunDirectoryGone, new_run_dir
from dbl_ps.training.orphans import exit_with_launcher
from dbl_ps.training.cores import threads_per_worker
from dbl_ps.training.time_models import needs_time_model
from dbl_ps.training.topology import (LaunchError, Topology, launch_world_size, local_world_size, read_topology,
                                     resume_command)

__all__ = ["run_collective", "pick_device", "set_up_rank"]


def pick_device(cfg: RunConfig, topo: Topology) -> tuple[torch.device, str]:
    """`(device, backend)`: the rank's GPU with NCCL, else the CPU with gloo."""
    want = cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise LaunchError("config key 'device': got 'cuda', but torch finds no CUDA GPU; use 'auto' or 'cpu'")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", topo.local_rank % torch.cuda.device_count()), "nccl"
    return torch.device("cpu"), "gloo"


def _with_workers(cfg: RunConfig, workers: int) -> Any:
    if cfg.dbl.workers == workers:
        return cfg
    data = cfg.to_dict()
    return type(cfg).from_dict({**data, "dbl": {**data["dbl"], "workers": workers}})


def set_up_rank(cfg: RunConfig, checkpoint: dict[str, Any] | None) -> tuple[Any, CollectiveCoordinator]:
    """This rank's config (its worker count follows the launch when resuming onto another one)
    and its coordinator, the process group initialised. Checked before any collective: every
    rank reads the same environment and config."""
    group_size = cfg.group_size()  # above 1 only with a sharded engine
    workers, world = cfg.dbl.workers, launch_world_size()
    if checkpoint is not None and world is not None and world % group_size == 0 and world // group_size != workers:
        workers = world // group_size  # resuming onto a different number of workers: re-plan for the launch
    topo = read_topology(workers, group_size)
    cfg = _with_workers(cfg, workers)
    device, backend = pick_device(cfg, topo)
    threads = threads_per_worker(cfg, local_world_size(topo.world))
    torch.set_num_threads(threads)
    init_distributed(topo, backend, cfg.launch.timeout)
    measure = cfg.time_model() is None and not cfg.dbl.calibration and needs_time_model(cfg)
    kind = SYNCHRONIZERS.get(cfg.sync)  # the launched sync kind: its coordinator and synchronizer
    make_coordinator = SYNCHRONIZERS.trait_object(cfg.sync, "coordinator")
    coordinator = make_coordinator(topo, device, threads=threads, measure_per_worker=measure,
                                   build_loop=lambda run, start: build_rank_loop(run, start, topo, device, kind.obj))
    return cfg, coordinator


def build_rank_loop(run: PreparedRun, start_epoch: int, topo: Topology, device: torch.device,
                    make_synchronizer: Callable[..., Any]) -> WorkerLoop:
    """What this rank trains (`build_worker_loop`, as a store-mode worker), around its sync kind's
    synchronizer, started from the global model (every rank loaded the same model.pt on a resume)."""
    cfg, plan = run.cfg, run.plan
    sync = make_synchronizer(cfg, plan, topo)
    checkpoint = run.checkpoint or None  # {}: stopped before its first checkpoint, a fresh start
    resume = Resume(run.run_dir.checkpoint_folder(checkpoint), int(checkpoint["workers"])) if checkpoint else None
    part = WorkerPart(module=engine_module(run.model), plan=plan, spec=run.spec, train=run.data.train,
                      transform=run.transform, in_channels=run.data.in_channels, topology=topo, device=device,
                      engine_options=run.engine_options, start_epoch=start_epoch,
                      resume=resume, global_state=run.model.state_dict() if resume is not None else None)
    return build_worker_loop(cfg, part, synchronizer=sync, callbacks=callbacks_from_env(topo.rank),
                             log=stderr_log if topo.is_main else None)


class _StopSignal:
    """The first SIGINT / SIGTERM / SIGHUP this rank received (None: none yet), and whether the
    rank is already ending (reporting a failure, cleaning up): a signal then is noted, not raised."""

    received: str | None = None
    ending: bool = False


def _on_stop_signal(signum: int, frame: Any) -> None:
    # Ctrl-C reaches every rank (one process group) and torchrun then forwards it as SIGTERM:
    # the first one stops this rank, the later ones are the same stop and must not interrupt
    # the clean-up (a second KeyboardInterrupt there was a traceback per rank).
    # Once the rank is ending (e.g. writing the line about a lost rank, when torchrun sends SIGTERM
    # because that rank failed) the signal must not cut the line or the clean-up short either.
    if _StopSignal.received is None:
        _StopSignal.received = signal.Signals(signum).name
        if not _StopSignal.ending:
            raise KeyboardInterrupt


def _stop_on_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        _StopSignal.received, _StopSignal.ending = None, False
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                signal.signal(sig, _on_stop_signal)


def _interrupted(driver: RunDriver | None, coordinator: CollectiveCoordinator | None) -> int:
    """A stop signal: rank 0 marks the checkpoint interrupted and says once what is kept."""
    main = coordinator.is_main if coordinator is not None else os.environ.get("RANK", "0") == "0"
    if main:
        where = driver.run_dir if driver is not None and driver.run_dir.is_dir() else None
        meta = RunDirectory(where).checkpoint_meta() if where is not None else None
        if where is not None and meta is not None and meta.get("status") != "finished":
            RunDirectory(where).set_checkpoint_status("interrupted")
        kept = (f"the checkpoint of epoch {meta['epoch'] + 1} is kept; continue with: {resume_command(where)}"
                if where is not None and meta is not None else "no epoch had completed: nothing to resume")
        print(f"dbl-ps train: {_StopSignal.received or 'SIGINT'}: stopped; {kept}", file=sys.stderr, flush=True)
    return 130


def run_collective(cfg: RunConfig, *, run_dir: str | None, resume: str | None) -> int:
    """`dbl-ps train` under a launcher: one line and exit status 2 for a bad launch."""
    driver: RunDriver | None = None
    coordinator: CollectiveCoordinator | None = None
    _stop_on_signals()
    exit_with_launcher()  # a launcher killed with SIGKILL leaves no rank training on (SIGTERM: stopped as above)
    try:
        checkpoint = RunDirectory(resume).load_checkpoint() if resume else None
        cfg, coordinator = set_up_rank(cfg, checkpoint)
        if resume is None and run_dir is None:
            run_dir = coordinator.share(lambda: str(new_run_dir(cfg)))
        directory = resume or run_dir
        assert directory is not None  # a resume's directory, the given one, or a new one named just above
        driver = RunDriver(cfg, coordinator, Path(directory), checkpoint=checkpoint, log=stderr_log)
        driver.prepare()
        summary = driver.run()
        if summary.get("status") == "diverged":  # rank 0's: every update was left out (divergence=skip)
            print(f"dbl-ps train: error: {summary.get('reason', 'the run diverged')}", file=sys.stderr, flush=True)
            return 1
        return 0
    except KeyboardInterrupt:
        _StopSignal.ending = True
        return _interrupted(driver, coordinator)
    except (ConfigMismatch, RunDirectoryGone) as err:  # every rank learnt it: rank 0 says it
        _StopSignal.ending = True
        if coordinator is not None and coordinator.is_main:
            print(f"dbl-ps train: error: {err}", file=sys.stderr, flush=True)
        return 2 if isinstance(err, ConfigMismatch) else 1  # a bad launch, or a run that failed (as in store mode)
    except (LaunchError, CheckpointError, FileExistsError, RunDirectoryBusy) as err:
        _StopSignal.ending = True
        print(f"dbl-ps train: error: {err}", file=sys.stderr, flush=True)
        return 2
    except DivergedError as err:  # every rank raised it at the same sync; rank 0 says it
        _StopSignal.ending = True
        if coordinator is not None and coordinator.is_main and driver is not None:
            meta = RunDirectory(driver.run_dir).checkpoint_meta()
            line = stopped_line(str(err), diverged=True, run_dir=driver.run_dir,
                                last_epoch=meta["epoch"] if meta else None)
            print(f"dbl-ps train: error: {line}", file=sys.stderr, flush=True)
        return 1
    except (DataError, RunWriteError, RankLost, dist.DistError) as err:
        _StopSignal.ending = True
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
    except Exception:
        if _StopSignal.received is None:
            raise
        # The stop signal's KeyboardInterrupt turned into another error by the code it came in:
        # a C extension being imported (scipy's pybind11 modules under sklearn) makes it
        # ImportError("initialization failed"). The stop stays a stop.
        _StopSignal.ending = True
        return _interrupted(driver, coordinator)
    finally:
        _StopSignal.ending = True
        if driver is not None:
            driver.release()
        driver = coordinator = None  # nothing of the run is used below: let its engines go
        if dist.is_initialized():
            # Engines in a reference cycle (FSDP2's module and state) hold the process group;
            # freed at the interpreter's exit instead, it can abort the process (SIGABRT).
            gc.collect()
            dist.destroy_process_group()
