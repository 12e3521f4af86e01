"""`dbl-ps train [--config FILE] [key=value ...]` and `dbl-ps train --resume RUN_DIR`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML run config (default: the embedded digits job)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. dbl.tau=1.05 store.mode=bsp")
    parser.add_argument("--run-dir", metavar="DIR", help="run directory (default: OUT_DIR/NAME-TIMESTAMP)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch instead)")
    parser.add_argument("--wandb", action="store_true",
                        help="log to Weights & Biases (same as tracking.wandb.enabled=true; offline without an API key)")


def error(message: str) -> int:
    print(f"dbl-ps train: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from dbl_ps.config import ConfigError, load_config

    if args.resume and (args.config or args.overrides or args.run_dir):
        return error("--resume RUN_DIR takes the config from the run directory; give no --config, --run-dir or overrides")
    try:
        overrides = [*args.overrides, *(["tracking.wandb.enabled=true"] if args.wandb else [])]
        cfg = None if args.resume else load_config(args.config, overrides)
    except ConfigError as exc:
        return error(str(exc))
    return train_run(cfg, run_dir=args.run_dir, resume=args.resume, progress=False if args.no_progress else None)


def train_run(cfg, *, run_dir=None, resume=None, progress=None) -> int:
    """Run (or resume) one training job with the command line's error handling; returns the exit code."""
    from dbl_ps._optional import MissingExtraError
    from dbl_ps.config import ConfigError
    from dbl_ps.data import DataError
    from dbl_ps.planner import InfeasiblePlanError
    from dbl_ps.runtime import StoreSetupError, Trainer, TrainingInterrupted, WorkerError
    from dbl_ps.runtime.checkpoint import CheckpointError

    try:
        trainer = Trainer.resume(resume, progress=progress) if resume else Trainer(cfg, run_dir, progress=progress)
        trainer.prepare()
    except KeyboardInterrupt:
        print("dbl-ps train: interrupted before training started; nothing to resume", file=sys.stderr)
        return 130
    except (ConfigError, DataError, InfeasiblePlanError, CheckpointError, FileExistsError, ValueError,
            MissingExtraError) as exc:
        return error(str(exc))
    try:
        trainer.train()
    except StoreSetupError as exc:
        print(f"dbl-ps train: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"dbl-ps train: {exc}", file=sys.stderr)
        return 130
    except WorkerError as exc:
        print(f"dbl-ps train: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        print("dbl-ps train: interrupted while stopping; the last complete epoch's checkpoint is kept", file=sys.stderr)
        return 130
    return 0
