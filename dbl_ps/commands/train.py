"""`dbl-ps train [--config FILE] [key=value ...]` and `dbl-ps train --resume RUN_DIR`."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path
from typing import NoReturn

from dbl_ps.commands._arguments import command_error
from dbl_ps.config import ConfigError, load_config, resolve_sync
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.run_ownership import RunDirectoryBusy, RunWriteError, lock_owner, remove_if_empty, run_dir_problem



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("KEY=VALUE takes any config key: `dbl-ps configs --keys` lists them all with what each takes, its "
                     "default and what it does (`dbl-ps configs --keys dbl.` one section).")
    parser.add_argument("--config", metavar="FILE", help="YAML run config (default: the embedded digits job)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. dbl.tau=1.05 store.mode=bsp")
    parser.add_argument("--run-dir", metavar="DIR", help="run directory (default: OUT_DIR/NAME-TIMESTAMP)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch instead)")
    parser.add_argument("--wandb", action="store_true",
                        help="log to Weights & Biases (same as tracking.wandb.enabled=true; offline without an API key)")
    parser.add_argument("--deepspeed-config", "--deepspeed_config", metavar="JSON",
                        help="same as deepspeed_config=JSON (a path, or a packaged name such as gpu_bf16)")


error = partial(command_error, "train")


# What a resume may change: the shape of a multi-rank launch (e.g. resume an FSDP run with
# other shard groups); everything else comes from the run directory.
RESUME_OVERRIDES = ("fsdp.ranks_per_worker", "launch.timeout")


def run(args: argparse.Namespace) -> int:
    # launched_by_a_launcher's test, without importing dbl_ps.training (torch) before the config is checked
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if args.resume and (args.config or args.run_dir or args.deepspeed_config):
        return error("--resume RUN_DIR takes the config from the run directory; give no --config, --run-dir "
                     "or --deepspeed-config")
    if args.resume:
        bad = [o for o in args.overrides if o.split("=", 1)[0] not in RESUME_OVERRIDES or not launched]
        if bad:
            return error(f"--resume RUN_DIR takes the config from the run directory; {bad[0]!r} cannot change "
                         f"(a resume under torchrun may set {', '.join(RESUME_OVERRIDES)})")
    if args.resume:
        problem = resume_problem(Path(args.resume), launched=launched)
        if problem is not None:
            return error(problem)
    try:
        overrides = [*args.overrides, *(["tracking.wandb.enabled=true"] if args.wandb else []),
                     *([f"deepspeed_config={args.deepspeed_config}"] if args.deepspeed_config else [])]
        notes: list[str] = []
        if args.resume:
            cfg = load_config(Path(args.resume) / "config.yaml", overrides) if launched else None
        else:
            cfg = load_config(args.config, overrides, notes=notes)
        if cfg is not None:  # the sync this launch runs: a setting it cannot honour stops here
            cfg = resolve_sync(cfg, launched=launched)
    except ConfigError as exc:
        return error(str(exc))
    for note in notes if os.environ.get("RANK", "0") == "0" else []:  # once per launch, not per rank
        print(f"dbl-ps train: {note}", flush=True)  # values that followed an override (milestones scaled ...)
    if args.run_dir is not None and not args.resume:  # before the data is loaded or any time measured
        problem = run_dir_problem(Path(args.run_dir))
        if problem is not None:
            return error(problem)
        if Path(args.run_dir).is_dir() and any(Path(args.run_dir).iterdir()) and os.environ.get("RANK", "0") == "0":
            print(f"dbl-ps train: {args.run_dir} holds only the set-up of a run stopped while it started (no epoch): "
                  f"starting it anew", flush=True)
    # The sync kind (resolved for this launch above) decides how the run is hosted: every rank a
    # worker under torchrun / the deepspeed launcher, or worker processes spawned here on one
    # machine (also a store-mode resume, whose config the trainer reads from the run directory).
    if cfg is not None and SYNCHRONIZERS.traits(cfg.sync)["launched"]:
        # torch-heavy modules only now: a config error above takes no torch import (0.3 s, not 5)
        from dbl_ps.runtime.collective import run_collective

        end_rank_process(run_collective(cfg, run_dir=args.run_dir, resume=args.resume))
    return train_run(cfg, run_dir=args.run_dir, resume=args.resume, progress=False if args.no_progress else None)


def resume_problem(run_dir: Path, *, launched: bool) -> str | None:
    """Why this launch cannot resume `run_dir`, checked before its config is resolved: another
    process trains in it (the first thing to know: nothing else helps until it ends), or it was
    trained by a sync kind that runs the other way (with or without a launcher). None otherwise;
    a directory without a readable config is left to the resume's own errors."""
    owner = lock_owner(run_dir) if run_dir.is_dir() else None
    if owner is not None:
        return f"run directory {run_dir} {owner.describe()}"
    try:
        cfg = load_config(run_dir / "config.yaml")
        sync = cfg.sync
        runs_launched = None if sync == "auto" else SYNCHRONIZERS.traits(sync)["launched"]
    except (ConfigError, ValueError, OSError):  # UnknownPluginError is a ValueError
        return None
    if runs_launched is None or runs_launched == launched:
        return None
    if runs_launched:
        return (f"{run_dir} was trained with sync {sync!r}, under a launcher; resume it the same way, e.g. "
                f"torchrun --nproc_per_node {cfg.dbl.workers * cfg.group_size()} -m dbl_ps train --resume {run_dir}")
    return (f"{run_dir} was trained with sync {sync!r}, on one machine without a launcher; resume it the same way: "
            f"dbl-ps train --resume {run_dir}")


def end_rank_process(code: int) -> NoReturn:
    """End a launcher's rank now, without the interpreter's finalization.

    Why: gloo's worker threads (FSDP's shard groups above all) can still hold tensors when the
    interpreter finalizes; freeing them then needs the GIL, the thread is ended by force and
    the rank dies of SIGABRT ("terminate called without an active exception") after a run that
    succeeded, so the launcher reports the whole launch failed (about 1 in 40 FSDP launches on
    CPUs; pytorch/pytorch#179291 discusses it). `run_collective` has already closed what the
    run wrote (metrics are flushed per line, trackers finished, the process group destroyed),
    so nothing is lost by skipping finalization.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def train_run(cfg, *, run_dir=None, resume=None, progress=None) -> int:
    """Run (or resume) one training job with the command line's error handling; returns the exit code."""
    from dbl_ps._optional import MissingExtraError
    from dbl_ps.config import ConfigError
    from dbl_ps.data import DataError
    from dbl_ps.planner import InfeasiblePlanError
    from dbl_ps.runtime import StoreSetupError, Trainer, TrainingInterrupted, WorkerError
    from dbl_ps.training.rundir import CheckpointError
    from dbl_ps.training.topology import LaunchError

    trainer = None
    try:
        trainer = Trainer.resume(resume, progress=progress) if resume else Trainer(cfg, run_dir, progress=progress)
        trainer.prepare()
    except KeyboardInterrupt:
        _remove_new_run_dir(trainer, run_dir, resume)
        print(f"dbl-ps train: {stop_line(trainer, 'before training started')}", file=sys.stderr)
        return 130
    except (ConfigError, DataError, InfeasiblePlanError, CheckpointError, FileExistsError, ValueError,
            MissingExtraError, LaunchError, RunDirectoryBusy) as exc:
        _remove_new_run_dir(trainer, run_dir, resume)
        return error(str(exc))
    try:
        summary = trainer.train()
    except (StoreSetupError, RunWriteError) as exc:
        print(f"dbl-ps train: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"dbl-ps train: {exc}", file=sys.stderr)
        return 130
    except WorkerError as exc:  # one line when the worker named the problem (divergence, corrupt data), else its traceback
        print(f"dbl-ps train: {'error: ' if exc.actionable else ''}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping, or a signal before the workers started
        started = trainer.driver.startup_seconds is not None
        print(f"dbl-ps train: {stop_line(trainer, 'while stopping' if started else 'before training started')}",
              file=sys.stderr)
        return 130
    if summary.get("status") == "diverged":  # every epoch ran, every update was left out (divergence=skip)
        print(f"dbl-ps train: error: {summary.get('reason', 'the run diverged')}", file=sys.stderr)
        return 1
    return 0


def stop_line(trainer, when: str) -> str:
    """The line for a run stopped by a signal outside the launcher's own handling: which
    signal, what is kept (checkpoint.json marked `interrupted`) and the command that goes on."""
    from dbl_ps.runtime.signals import received
    from dbl_ps.training.rundir import RunDirectory

    where = trainer.run_dir if trainer is not None else None
    run = RunDirectory(where) if where is not None and where.is_dir() else None
    meta = run.checkpoint_meta() if run is not None else None
    if run is not None and meta is not None and meta.get("status") not in ("finished", "interrupted"):
        run.set_checkpoint_status("interrupted")  # it said "running" after a second Ctrl-C
    if meta is not None:
        kept = f"the checkpoint of epoch {meta['epoch'] + 1} is kept; continue with: dbl-ps train --resume {where}"
    elif run is not None and (run.path / "plan.json").is_file():
        kept = f"no epoch had completed; `dbl-ps train --resume {where}` starts it again"
    else:
        kept = "nothing to resume"
    return f"{received()} {when}; {kept}"


def _remove_new_run_dir(trainer, run_dir, resume) -> None:
    # A run directory named by the launcher is created empty when the trainer is made (so
    # that it is unique); a run that fails before writing into it leaves nothing behind.
    if trainer is not None and run_dir is None and not resume:
        remove_if_empty(trainer.run_dir)
