"""Shared by the tests that launch real processes (launchers, tmpfs mounts)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

# 4 epochs of digits, 2 workers (worker 0 small), a fixed time model (no measuring).
RUN = ["schedule.epochs=4", "schedule.milestones=[2]", "schedule.warmup_epochs=0", "dbl.workers=2", "dbl.small=1",
       "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "data.eval_batch_size=1024"]


def free_port() -> int:
    """A free TCP port on localhost for a launcher's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_mount_tmpfs(target: str) -> bool:
    """Whether a test may mount a small tmpfs over `target` in a private mount namespace
    (`unshare -m`: root on Linux), to make a full disk or a small /dev/shm real."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {target}"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0
