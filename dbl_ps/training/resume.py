"""What a rank of a user's own training loop needs to resume exactly, and to own its
checkpoint folder: the pieces behind `dbl_ps.api.rank_state`, `load_rank_state`,
`save_rank_state`, `read_rank_state` and `own_folder`.

Exact means the resumed run ends with the bits of an uninterrupted one. Besides the
model, the optimizer and dbl-ps's own objects (averager, sampler, LR schedule), that
needs every random number generator a step draws from: dropout masks and random
augmentations draw from torch's generator (and CUDA's, per device), a DataLoader draws
its base seed from it each time an iterator starts, and user code may use numpy's or
Python's. Leave any of them out and a run with dropout drifts from the uninterrupted
one at the first step after the resume (issue 32: 80.9 vs 81.0 %).

Everything is kept as plain values (tensors, lists, numbers, strings), so
`torch.load(path, weights_only=True)` reads it back without unpickling code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dbl_ps.run_ownership import RunDirectoryBusy, RunLock, atomic_write

__all__ = ["rng_state", "set_rng_state", "rank_state", "load_rank_state", "save_rank_state", "read_rank_state",
           "own_folder", "PARTS"]

PARTS = ("model", "optimizer", "averager", "sampler", "lr_schedule")  # in the order they are loaded


def rng_state() -> dict[str, Any]:
    """torch's CPU generator, every CUDA device's (where CUDA is in use), numpy's and Python's
    global generators, as plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)],
                             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state()` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_state(**parts: Any) -> dict[str, Any]:
    """`{name: part.state_dict()}` for each part given (None: left out), plus `"rng"`, this
    process's generators. Take it right after `averager.end_epoch()` (the averager's state
    then resumes at the next epoch) and before anything else draws random numbers."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise TypeError(f"rank_state() got {unknown}; the parts are {', '.join(PARTS)}")
    state = {name: part.state_dict() for name, part in parts.items() if part is not None}
    state["rng"] = rng_state()
    return state


def load_rank_state(state: dict[str, Any], **parts: Any) -> None:
    """Load each part given (None: skipped) from `state`, in the order of `PARTS` (the model
    before the averager, which may keep a copy of it), then the generators. A part given but
    not in `state` is one error naming it, before anything is loaded."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise TypeError(f"load_rank_state() got {unknown}; the parts are {', '.join(PARTS)}")
    missing = [name for name, part in parts.items() if part is not None and name not in state]
    if missing or "rng" not in state:
        raise KeyError(f"the saved rank state has no {', '.join(missing or ['rng'])} (it holds "
                       f"{', '.join(sorted(state))}): save it with the same parts")
    for name in PARTS:
        if parts.get(name) is not None:
            parts[name].load_state_dict(state[name])
    set_rng_state(state["rng"])


def save_rank_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """`torch.save` under a temporary name, then renamed: a job killed while writing keeps the
    previous file. One path per rank (the ranks' models and optimizers differ)."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(state, tmp), make_parent=True)
    return path


def read_rank_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """What `save_rank_state` wrote (read with `weights_only=True`), or None when there is no file."""
    path = Path(path)
    return torch.load(path, weights_only=True) if path.is_file() else None


def own_folder(path: str | os.PathLike, *, group: Any = None) -> RunLock | None:
    """Collective: rank 0 of `group` takes the run lock of `path` (`run.lock`, the lock
    `dbl-ps train` holds: pid, process start time, host, command), and every rank learns the
    outcome, so a relaunch while an earlier launch's ranks still train there (orphans of a
    killed launcher) stops on every rank with one `RunDirectoryBusy` naming the owner, instead
    of racing them for the checkpoints. A lock left by a killed owner is taken over. Returns
    the lock on rank 0 (release it at the end, or let the process exit), None elsewhere."""
    path = Path(path)
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    lock, problem = None, None
    if rank == 0:
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = RunLock(path)
        except (RunDirectoryBusy, OSError) as exc:
            problem = str(exc)
    if dist.is_initialized():
        shared = [problem]
        dist.broadcast_object_list(shared, src=dist.get_global_rank(group, 0) if group is not None else 0,
                                   group=group)
        problem = shared[0]
    if problem is not None:
        raise RunDirectoryBusy(problem)
    return lock
