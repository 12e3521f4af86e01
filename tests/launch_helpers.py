"""Shared by the tests that launch real processes (launchers, tmpfs mounts)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

# 4 epochs of digits, 2 workers (worker 0 small), a fixed time model (no measuring).
RUN = ["schedule.epochs=4", "schedule.milestones=[2]", "schedule.warmup_epochs=0", "dbl.workers=2", "dbl.small=1",
       "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "data.eval_batch_size=1024"]


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a launched run on this CPU machine (DeepSpeed on the CPU, one thread per rank)."""
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def torchrun_train(nproc: int, *args: str, cwd: str | os.PathLike | None = None,
                   **extra: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node NPROC -m dbl_ps train ARGS` on a free port, in `cwd`; `extra`:
    environment variables."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), "-m", "dbl_ps", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=launch_env(**extra), cwd=cwd)


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
