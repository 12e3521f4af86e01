"""Shared by the launcher tests (tests/test_integration_deepspeed.py, tests/test_integration_fsdp.py)."""

from __future__ import annotations

import socket

# 4 epochs of digits, 2 workers (worker 0 small), a fixed time model (no measuring).
RUN = ["schedule.epochs=4", "schedule.milestones=[2]", "schedule.warmup_epochs=0", "dbl.workers=2", "dbl.small=1",
       "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "data.eval_batch_size=1024"]


def free_port() -> int:
    """A free TCP port on localhost for a launcher's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
