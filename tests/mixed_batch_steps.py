"""Run under torchrun by tests/test_mixed_batch.py: one mixed-batch step on every rank against
the single-process step on the concatenated batch.

    torchrun --nproc_per_node W tests/mixed_batch_steps.py ENGINE[,ENGINE...] OUT_DIR

ENGINE: torch (dbl-ps's torch engine: DDP with the weighting hook), torch-accumulated (the same
with micro_batch 2: 1, 3, 4 ... micro-batches per rank), or through the public API
on the user's own wrapper: ddp (`dbl.mixed_batch(DDP(model), plan)`), deepspeed0/2/3 (a
DeepSpeed engine at that ZeRO stage from `dbl.deepspeed_mixed_config`, the loss through
`mixed.scale`), fsdp (an FSDP2 module sharded over every rank). Each rank trains its own slice of one global
batch (rank i: 2 + 3 i samples, so every rank's batch differs) with SGD at lr 1 and no
momentum, so a parameter's change is its applied gradient. Every rank also computes, on its
own copy of the initial model, the gradient of the concatenated global batch in one process;
it writes the largest difference between the two to OUT_DIR/<engine>.rank<r>.json.
"""

from __future__ import annotations

import gc
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


def api_step(kind: str, x: torch.Tensor, y: torch.Tensor, batches: list[int], total: int, rank: int,
             world: int) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """One step through the public API on the user's own wrapper; the parameters before and after."""
    import dbl_ps.api as dbl

    # Time models whose equal-step split is exactly `batches` (b_i proportional to 1 / beta_i).
    plan = dbl.plan_mixed_ranks([dbl.TimeModel(alpha=0.0, beta=1e-3 / b) for b in batches], global_batch=total,
                                dataset_size=total)
    assert list(plan[0].batches) == batches, plan[0].batches
    net = model()
    before = [p.detach().clone() for p in net.parameters()]
    loss_fn = nn.CrossEntropyLoss()
    if kind == "ddp":
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        mixed = dbl.mixed_batch(ddp, plan)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1.0)
        mixed.scale(loss_fn(ddp(x), y)).backward()
        optimizer.step()
        return before, [p.detach() for p in net.parameters()], mixed.take_wait_seconds()
    if kind.startswith("deepspeed"):
        import deepspeed

        stage = int(kind[len("deepspeed"):])
        config, _ = dbl.deepspeed_mixed_config({"zero_optimization": {"stage": stage}}, plan, rank)
        optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        engine, _, _, _ = deepspeed.initialize(model=net, optimizer=optimizer, config=config, dist_init_required=False)
        mixed = dbl.mixed_batch(engine, plan)
        engine.backward(mixed.scale(loss_fn(engine(x), y)))
        engine.step()
        if stage == 3:  # parameters are partitioned: gather them to read the step
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                return before, [p.detach().clone() for p in engine.module.parameters()], 0.0
        return before, [p.detach().clone() for p in engine.module.parameters()], 0.0
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(net)
        mixed = dbl.mixed_batch(net, plan)
        optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        mixed.scale(loss_fn(net(x), y)).backward()
        optimizer.step()
        return before, [p.full_tensor().detach() for p in net.parameters()], 0.0
    raise SystemExit(f"unknown engine {kind!r}")


def main() -> None:
    kinds, out = sys.argv[1].split(","), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [2 + 3 * i for i in range(world)]
    total = sum(batches)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(total, 3, 2, 2, generator=generator)
    labels = torch.randint(0, 4, (total,), generator=generator)
    start = sum(batches[:rank])
    x, y = images[start:start + batches[rank]], labels[start:start + batches[rank]]

    single = model()
    nn.CrossEntropyLoss()(single(images), labels).backward()
    expected = [p.grad for p in single.parameters()]
    for kind in kinds:
        if kind.startswith("torch"):
            before, after, wait = engine_step(x, y, batches, total, rank, world,
                                              micro_batch=2 if kind == "torch-accumulated" else None)
        else:
            before, after, wait = api_step(kind, x, y, batches, total, rank, world)
        applied = [b - a for b, a in zip(before, after)]
        error = max(float((a - e).abs().max()) for a, e in zip(applied, expected))
        scale = max(float(e.abs().max()) for e in expected)
        (out / f"{kind}.rank{rank}.json").write_text(json.dumps({"error": error, "scale": scale,
                                                                 "batch": batches[rank], "wait": wait}))
    # FSDP2's fully_shard leaves the module and its state in a reference cycle, which holds
    # the process group: collect it now, or the interpreter's exit frees it and can abort
    # (SIGABRT, "terminate called without an active exception"; one run in ~25 here).
    gc.collect()
    dist.destroy_process_group()


def engine_step(x: torch.Tensor, y: torch.Tensor, batches: list[int], total: int, rank: int, world: int, *,
                micro_batch: int | None) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """One step of dbl-ps's torch engine merging gradients inside the step; the parameters before and after."""
    cfg = RunConfig.from_dict({"optim": {"momentum": 0.0, "weight_decay": 0.0}, "micro_batch": micro_batch})
    engine = TorchEngine(model(), cfg, torch.device("cpu"), Topology.single(rank, world))
    engine.set_lr(1.0)
    engine.gradient_sync(weight=batches[rank] / total)
    before = [p.detach().clone() for p in engine.module.parameters()]
    engine.train_step(x, y)
    return before, [p.detach() for p in engine.module.parameters()], engine.take_wait_seconds()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
