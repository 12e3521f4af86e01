"""A rank under a launcher ends when its launcher dies.

torchrun (and the deepspeed launcher) start every rank in a session of its own, so a
launcher killed with SIGKILL (an OOM killer, `kill -9`, a batch system's hard limit)
takes nobody with it: the ranks train on as orphans, and a relaunch on the same run
races them for the checkpoints (issue 32). At rank start, `exit_with_launcher()` asks
Linux to send this process SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`,
through ctypes), and then checks the parent is still the one it had (a launcher that
died in between would never send it). The rank's SIGTERM handling then does what it
does when torchrun itself stops the job (dbl-ps train: the checkpoint kept, marked
interrupted). Where prctl does not exist (macOS), a daemon thread checks the parent
pid every `POLL_SECONDS` and sends the same SIGTERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

__all__ = ["exit_with_launcher", "PR_SET_PDEATHSIG", "POLL_SECONDS"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 1.0
_armed: list[int] = []  # the parent pid this process watches (once per process)


def _prctl_deathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, sig: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), sig)


def exit_with_launcher(sig: int = signal.SIGTERM) -> None:
    """From now on this process gets `sig` when its parent process (the launcher) dies.
    Idempotent; call it early in a rank (dbl-ps train's ranks and `dbl_ps.api.ModelAverager`
    do). A parent that is already gone (this process was re-parented to init or a
    subreaper) sends `sig` at once."""
    if _armed:
        return
    parent = os.getppid()
    _armed.append(parent)
    if not _prctl_deathsig(sig):
        threading.Thread(target=_watch, args=(parent, sig), name="dbl-ps-launcher-watch", daemon=True).start()
        return
    if os.getppid() != parent:  # it died before prctl took effect: no signal will come
        os.kill(os.getpid(), sig)
