"""Run checkpoints.

`RUN_DIR/checkpoint.pt` is written atomically after every global epoch. It holds
the global model (the flat state the store held when the epoch completed), the
schedule position (next epoch, LR, resolution), the wall time and store version so
far, the launcher's RNG states, and the paths of each worker's own state file for
that epoch (`checkpoints/worker<i>/epoch<e>.pt`: optimizer momentum, BatchNorm
integer buffers, RNG), which the workers write themselves before reporting the
epoch. Older worker files are pruned once a newer checkpoint is on disk.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dbl_ps.runtime.worker import worker_state_path

__all__ = ["CHECKPOINT_FILE", "save_checkpoint", "load_checkpoint", "prune_worker_states", "rng_states", "CheckpointError"]

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A run directory has no usable checkpoint."""


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    path = Path(run_dir) / CHECKPOINT_FILE
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: the run stopped before its first epoch completed; "
                              f"start it again instead of resuming: `dbl-ps train --config {Path(run_dir) / 'config.yaml'} "
                              f"--run-dir NEW_DIR` (or remove {run_dir} first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from None
    for i, rel in enumerate(state.get("workers", [])):
        if not (Path(run_dir) / rel).is_file():
            raise CheckpointError(f"{path} refers to worker {i}'s state {rel}, which is missing")
    return state


def prune_worker_states(run_dir: str | Path, workers: int, keep_from: int) -> None:
    """Delete worker state files of epochs before `keep_from`."""
    for w in range(workers):
        folder = worker_state_path(run_dir, w, 0).parent
        if not folder.is_dir():
            continue
        for file in folder.glob("epoch*.pt"):
            try:
                if int(file.stem[5:]) < keep_from:
                    file.unlink()
            except (ValueError, OSError):
                pass
