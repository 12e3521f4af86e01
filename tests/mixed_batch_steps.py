"""Run under torchrun by tests/test_mixed_batch.py: one mixed-batch step on every rank against
the single-process step on the concatenated batch.

    torchrun --nproc_per_node W tests/mixed_batch_steps.py ENGINE OUT_DIR [micro_batch]

ENGINE: torch (DDP with the weighting hook). Each rank trains its own slice of one global
batch (rank i: 2 + 3 i samples, so every rank's batch differs) with SGD at lr 1 and no
momentum, so a parameter's change is its applied gradient. Every rank also computes, on its
own copy of the initial model, the gradient of the concatenated global batch in one process;
it writes the largest difference between the two to OUT_DIR/rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dbl_ps.config import RunConfig
from dbl_ps.training.engine import TorchEngine
from dbl_ps.training.topology import Topology


def model() -> nn.Module:
    torch.manual_seed(0)  # the same initial model everywhere (no BatchNorm: the exact equality holds)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))


def main() -> None:
    engine_name, out = sys.argv[1], Path(sys.argv[2])
    micro_batch = int(sys.argv[3]) if len(sys.argv) > 3 else None
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [2 + 3 * i for i in range(world)]
    total = sum(batches)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(total, 3, 2, 2, generator=generator)
    labels = torch.randint(0, 4, (total,), generator=generator)
    start = sum(batches[:rank])
    mine = slice(start, start + batches[rank])

    cfg = RunConfig.from_dict({"optim": {"momentum": 0.0, "weight_decay": 0.0}, "micro_batch": micro_batch})
    engine = TorchEngine(model(), cfg, torch.device("cpu"), Topology.single(rank, world))
    engine.set_lr(1.0)
    engine.gradient_sync(weight=batches[rank] / total)
    before = [p.detach().clone() for p in engine.module.parameters()]
    engine.train_step(images[mine], labels[mine])
    applied = [b - p.detach() for b, p in zip(before, engine.module.parameters())]

    single = model()
    nn.CrossEntropyLoss()(single(images), labels).backward()
    expected = [p.grad for p in single.parameters()]
    error = max(float((a - e).abs().max()) for a, e in zip(applied, expected))
    scale = max(float(e.abs().max()) for e in expected)
    (out / f"rank{rank}.json").write_text(json.dumps({"error": error, "scale": scale, "batch": batches[rank],
                                                      "wait": engine.take_wait_seconds()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
