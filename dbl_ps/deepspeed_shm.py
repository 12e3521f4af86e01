"""DeepSpeed's CPU shared-memory all-reduce buffers: the run's own removed, stale ones found.

DeepSpeed's CPU communication backend (`deepspeed/ops/csrc/cpu/comm/shm.cpp`, built when
its `TorchBackend` starts, inside `deepspeed.initialize`) creates one 66 MiB POSIX segment
per rank, `/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`,
whenever `LOCAL_SIZE` (set by the `deepspeed` launcher) equals the world size, and never
unlinks it: every launch left two behind (415 MB after three; Docker's default /dev/shm of
64 MB cannot hold one). Only its `inference_all_reduce` uses them; training collectives go
through torch.distributed. So:

* `dbl-ps train` hides `LOCAL_SIZE` while DeepSpeed starts (none is created);
* a user's own `deepspeed.initialize` (the API, `dbl_ps.api.ModelAverager`) has made them
  by the time the averager's first collective returns, and by then every rank has mapped
  every other rank's segment (DeepSpeed waits for that while it starts): each rank unlinks
  its own there (`unlink_own_buffer`). A mapping outlives its name, so DeepSpeed works on,
  and nothing is left whatever way the run ends (SIGKILL included);
* `dbl-ps cleanup` lists and removes stale ones (`stale_buffers`): this user's segments that
  no live process maps (Linux: /proc/PID/maps) and that are older than a minute.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["BUFFER_PREFIX", "own_buffer", "unlink_own_buffer", "buffers", "stale_buffers", "remove_stale_buffers"]

BUFFER_PREFIX = "deepspeed_allreduce_buffer_"
SHM = Path("/dev/shm")
MIN_AGE = 60.0  # seconds: a segment younger than this may be one whose creator has not mapped it yet


def own_buffer(rank: int) -> Path:
    """This process's segment as DeepSpeed names it for `rank` (from MASTER_ADDR/MASTER_PORT)."""
    return SHM / (f"{BUFFER_PREFIX}{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
                  f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def unlink_own_buffer(rank: int) -> bool:
    """Unlink this rank's segment (call once every rank has mapped every segment); True if one was there."""
    if not hasattr(os, "getuid"):
        return False
    try:
        own_buffer(rank).unlink()
        return True
    except OSError:  # none (DeepSpeed made none: another machine's ranks, no LOCAL_SIZE), or gone
        return False


def _mapped() -> set[str]:
    """Names under /dev/shm that some live process maps (the /proc/PID/maps it may read)."""
    names: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # gone, or another user's process
            continue
        for line in text.splitlines():
            at = line.find(f"/dev/shm/{BUFFER_PREFIX}")
            if at >= 0:
                names.add(line[at + len("/dev/shm/"):].split(" ")[0])
    return names


def buffers() -> list[dict[str, Any]]:
    """This user's DeepSpeed all-reduce segments: name, bytes, age in seconds, whether a live process maps it."""
    if not SHM.is_dir() or not hasattr(os, "getuid"):
        return []
    mine = f"{BUFFER_PREFIX}{os.getuid()}_"
    mapped = _mapped()
    found = []
    for path in sorted(SHM.glob(f"{mine}*")):
        try:
            st = path.stat()
        except OSError:
            continue
        found.append({"name": path.name, "bytes": st.st_size, "age": time.time() - st.st_mtime,
                      "in_use": path.name in mapped})
    return found


def stale_buffers() -> list[dict[str, Any]]:
    return [b for b in buffers() if not b["in_use"] and b["age"] > MIN_AGE]


def remove_stale_buffers() -> list[str]:
    """Remove this user's stale segments (see the module doc); returns their names."""
    removed = []
    for b in stale_buffers():
        try:
            (SHM / b["name"]).unlink()
            removed.append(b["name"])
        except OSError:
            pass
    return removed
