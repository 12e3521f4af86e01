"""`dbl-ps cleanup`: remove shared memory left behind by parameter stores whose owner
process died (e.g. killed with SIGKILL). Segments of live stores are never touched.
On Windows there is never anything to remove: the OS frees a store's file mapping with
the last process that held it."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    import sys

    from dbl_ps.store import SEGMENT_PREFIX, cleanup_stale_segments

    removed = cleanup_stale_segments()
    where = "/dev/shm/" if sys.platform.startswith("linux") else ""
    for name in removed:
        print(f"removed {where}{SEGMENT_PREFIX}{name}")
    print(f"{len(removed)} stale segment(s) removed")
    return 0
