"""The one-line reports of failures a user can act on, the same in both launchers.

A worker (or rank) that diverges, meets corrupt data or cannot write (a full disk) raises an exception whose
message already names what happened (`DivergedError`: worker, epoch, step, loss;
`ShardError`: shard and sample key). `failure_message` turns it into the line the
worker sends (`WorkerFailed.message`); `stopped_line` adds what the launcher knows,
the checkpoint that is kept and what to do next. Anything else keeps its traceback,
which is what helps with an unexpected error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dbl_ps.data import DataError
from dbl_ps.run_ownership import RunWriteError
from dbl_ps.shards import ShardError
from dbl_ps.training.loop import DivergedError
from dbl_ps.training.topology import resume_command

__all__ = ["failure_message", "stopped_line", "diverged_between_syncs"]


def failure_message(exc: BaseException, *, worker: int, data_path: str | None) -> str | None:
    """One line for an error a user can act on, None for any other."""
    if isinstance(exc, DivergedError):
        text = str(exc)
    elif isinstance(exc, ShardError):
        text = f"worker {worker}: {exc}; `dbl-ps shard --verify {data_path}` checks every shard of the set"
    elif isinstance(exc, (DataError, RunWriteError)):  # corrupt data; a full disk
        text = f"worker {worker}: {exc}"
    elif isinstance(exc, OSError) and exc.filename is not None:  # a folder made read-only or immutable meanwhile
        text = (f"worker {worker}: {exc.strerror or type(exc).__name__}: {exc.filename} (is the run directory "
                f"read-only, immutable (chattr +i) or full?)")
    else:
        return None
    return " ".join(text.split())  # one line, whatever a library put into the message


def stopped_line(message: str, *, diverged: bool, last_epoch: int | None, run_dir: str | Path | None) -> str:
    """`message` plus the checkpoint that is kept (`last_epoch`: the last committed epoch,
    0-based; None or < 0: none) and what to do next (a resume command needs `run_dir`)."""
    has = last_epoch is not None and last_epoch >= 0
    shown = last_epoch + 1 if last_epoch is not None else 0  # counted from 1, as on the console
    if diverged:
        kept = (f"the last finite checkpoint (epoch {shown}) is kept" if has
                else "no epoch had finished, so there is no checkpoint")
        # A resume repeats the same steps and would diverge again: the advice is a new run.
        return (f"{message}; {kept}; lower schedule.lr (or lengthen schedule.warmup_epochs) and start a new run, "
                "or set divergence=skip to leave non-finite updates out")
    if has and run_dir is not None:
        return (f"{message}; the checkpoint of epoch {shown} is kept: once that is fixed, "
                f"`{resume_command(run_dir)}` continues from it")
    return f"{message}; no epoch had finished, so there is no checkpoint"


def diverged_between_syncs(loop: Any, state: Any, policy: str) -> None:
    """`divergence: stop` in the store mode, between syncs: the loss accumulated since the last
    sync, looked at where the worker sends its progress (every quarter second: one host sync
    there, none per step), raises DivergedError as soon as it is not finite, instead of
    training on NaN to the end of the mini-epoch (most of a minute on Fashion-MNIST). The
    launcher stops the other workers; a multi-rank job keeps the check at the sync, where
    every rank learns it together."""
    if policy == "stop" and state.period_samples and not bool(torch.isfinite(state.period_loss)):
        raise DivergedError(loop.worker, state.epoch, state.step, float(state.period_loss))
