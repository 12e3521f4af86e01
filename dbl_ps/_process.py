"""This process's age, whether it is a `dbl-ps` command, and its output in whole lines
(torch-free: the CLI imports it before any config is checked).

A run's start-up (`summary.json`'s `startup_seconds`) counts from the moment its launch
began: for `dbl-ps train` (and each rank under a launcher) that is the process's start, so
importing torch, reading the config and the data count; for a run started from Python (a
notebook, `Trainer(cfg)` in a script, the second run of `dbl-ps compare`) it is when the
run was made, not when the interpreter started an hour before.
"""

from __future__ import annotations

import io
import os
import sys
import time

__all__ = ["process_seconds", "mark_command", "is_command", "write_whole_lines"]

_IMPORTED = time.monotonic()
_COMMAND = [False]


def process_seconds() -> float:
    """Seconds since this process started (Linux: its start time in /proc; elsewhere: since
    this module was imported, which the CLI does first)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED


def mark_command() -> None:
    """The `dbl-ps` command calls this first: the process's first run started with it."""
    _COMMAND[0] = True


def is_command() -> bool:
    return _COMMAND[0]


def write_whole_lines() -> None:
    """Each line this process prints reaches stdout/stderr in one write. With PYTHONUNBUFFERED
    (containers, schedulers, our launch tests) `print` writes the text and its newline apart,
    so the same error printed by two ranks at once came out as one merged line (measured: 1032
    of 6000 lines from two processes into one pipe; none with this). Line buffering in the text
    layer keeps a line together and still flushes it at its newline."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # not a test's capture object
            stream.reconfigure(line_buffering=True, write_through=False)
