"""What the benchmark scripts share: a free local port, relaunching a script under
torchrun when it was started as a plain `python benchmarks/NAME.py`, and the timing
device set-up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch_under_torchrun(script: str, ranks: int, **env: str) -> None:
    """Run `script` with this process's arguments under torchrun with `ranks` processes
    and exit with its status, unless this process already is a torchrun rank. `env` is
    added to the environment; OMP_NUM_THREADS defaults to 1 (ranks share the cores)."""
    if "RANK" in os.environ:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
           str(free_port()), script, *sys.argv[1:]]
    full_env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **env)
    raise SystemExit(subprocess.call(cmd, env=full_env))


def timing_device(name: str):
    """`(torch.device, sync)` for timing on `name`: `sync` waits for queued GPU work (a
    no-op on the CPU), and cuDNN autotuning is on, as in training."""
    import torch

    device = torch.device(name)
    if device.type != "cuda":
        return device, (lambda: None)
    torch.backends.cudnn.benchmark = True
    return device, torch.cuda.synchronize
