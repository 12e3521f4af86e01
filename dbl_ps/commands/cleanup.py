"""`dbl-ps cleanup`: remove shared memory left behind by parameter stores whose owner
process died (e.g. killed with SIGKILL), and DeepSpeed's CPU all-reduce buffers that no
live process maps (`dbl_ps.deepspeed_shm`). Segments of live stores are never touched.
`--list` only shows every store segment on the machine with its owner, removing
nothing (what to look at when a store name is reported as taken).
On Windows there is never anything to remove: the OS frees a store's file mapping with
the last process that held it."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true",
                        help="only list the store segments on this machine (name, owner pid, state) and DeepSpeed's "
                             "CPU all-reduce buffers; remove nothing")


def run(args: argparse.Namespace) -> int:
    import sys

    from dbl_ps import deepspeed_shm
    from dbl_ps.parameter_store import SEGMENT_PREFIX, cleanup_stale_segments, list_segments

    where = "/dev/shm/" if sys.platform.startswith("linux") else ""
    if args.list:
        segments = sorted(list_segments(), key=lambda s: s["name"])
        if segments:
            width = max(len(where + SEGMENT_PREFIX + s["name"]) for s in segments)
            print(f"{'segment':<{width}}  {'owner pid':>9}  state")
            for s in segments:
                state = "live" if s["owner_alive"] else ("stale: `dbl-ps cleanup` removes it" if s["stale"]
                                                         else "being created")
                print(f"{where + SEGMENT_PREFIX + s['name']:<{width}}  {s['owner_pid'] or '-':>9}  {state}")
        print(f"{len(segments)} store segment(s)")
        for b in deepspeed_shm.buffers():
            state = "in use" if b["in_use"] else ("stale: `dbl-ps cleanup` removes it" if b["age"] > deepspeed_shm.MIN_AGE
                                                  else "new")
            print(f"{deepspeed_shm.SHM / b['name']}  {b['bytes'] / 2**20:.0f} MiB  DeepSpeed all-reduce buffer, {state}")
        return 0
    removed = cleanup_stale_segments()
    for name in removed:
        print(f"removed {where}{SEGMENT_PREFIX}{name}")
    print(f"{len(removed)} stale segment(s) removed")
    ds_removed = deepspeed_shm.remove_stale_buffers()
    for name in ds_removed:
        print(f"removed {deepspeed_shm.SHM / name}")
    if ds_removed:
        print(f"{len(ds_removed)} stale DeepSpeed all-reduce buffer(s) removed")
    return 0
