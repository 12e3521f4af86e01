"""`dbl-ps cleanup`: remove shared memory left behind by parameter stores whose owner
process died (e.g. killed with SIGKILL). Segments of live stores are never touched.
`--list` only shows every store segment on the machine with its owner, removing
nothing (what to look at when a store name is reported as taken).
On Windows there is never anything to remove: the OS frees a store's file mapping with
the last process that held it."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true",
                        help="only list the store segments on this machine (name, owner pid, state); remove nothing")


def run(args: argparse.Namespace) -> int:
    import sys

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
        return 0
    removed = cleanup_stale_segments()
    for name in removed:
        print(f"removed {where}{SEGMENT_PREFIX}{name}")
    print(f"{len(removed)} stale segment(s) removed")
    return 0
