"""This machine's CPU cores and the torch threads of each worker process, the one place every
mode computes them (the store mode's launcher, a rank under a launcher, the time-model
measurement)."""

from __future__ import annotations

import os

from dbl_ps.config import RunConfig

__all__ = ["cpu_cores", "threads_per_worker"]


def cpu_cores() -> int:
    """The cores this process may run on (its affinity on Linux), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(cfg: RunConfig, local_workers: int | None = None) -> int:
    """Torch threads of each worker process: the config's value, else this machine's cores shared
    by its worker processes (`local_workers`: the store mode's W, a launch's LOCAL_WORLD_SIZE;
    default `dbl.workers`), at least 1. The one place every mode computes it."""
    if cfg.threads_per_worker:
        return int(cfg.threads_per_worker)
    return max(1, cpu_cores() // (local_workers or cfg.dbl.workers))
