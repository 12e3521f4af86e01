"""Sync cost of collective DBSL: one share-weighted merge against the training time of
the sync period it closes, per engine, with 2 workers on this machine.

    python benchmarks/sync_cost.py                                  # relaunches itself under torchrun
    python benchmarks/sync_cost.py --models small_resnet:16:64:12 --engines torch,deepspeed,fsdp

For each engine (plain torch, DeepSpeed collective mode, FSDP2 groups of 1 rank) and
model (`name:resolution:batch:steps`), every rank trains `steps` steps at `batch`
(one sync period: the paper's mini-epoch is ceil(d_i / b_i) steps), waits at a barrier
(so load imbalance is not counted as sync cost), then times `weighted_average_` with
its merge weight (one all_reduce per bucket over gloo). Repeated `--repeats` times;
medians are reported, and the ratio sync / period (the fraction of a period the merge
adds). Both are measured in the same run on the same ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from _common import relaunch_under_torchrun


def measure(engines: list[str], models: list[str], repeats: int) -> list[dict]:
    import torch
    import torch.distributed as dist

    from dbl_ps.config import RunConfig
    from dbl_ps.models import build_model
    from dbl_ps.synchronizers import CollectiveSynchronizer, init_distributed
    from dbl_ps.training.engine import TorchEngine
    from dbl_ps.training.topology import read_topology

    topo = read_topology(int(os.environ["WORLD_SIZE"]), 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // topo.world))
    init_distributed(topo, "gloo", 600.0)
    cfg = RunConfig()
    device = torch.device("cpu")
    weight = 0.8 if topo.rank == 0 else 1.0
    rows = []
    for spec in models:
        name, res, batch, steps = spec.split(":")
        res, batch, steps = int(res), int(batch), int(steps)
        classes = 100 if name != "small_resnet" else 10
        gen = torch.Generator().manual_seed(topo.rank)
        images = torch.randn(batch, 3, res, res, generator=gen)
        labels = torch.randint(0, classes, (batch,), generator=gen)
        for kind in engines:
            torch.manual_seed(0)
            module = build_model(name, classes, in_channels=3)
            if kind == "torch":
                engine = TorchEngine(module, cfg, device, topo)
            elif kind == "deepspeed":
                from dbl_ps.integrations.deepspeed import DeepSpeedEngine

                engine = DeepSpeedEngine(module, cfg, device, topo, batch_size=batch)
            else:
                from dbl_ps.integrations.fsdp import FSDPEngine

                engine = FSDPEngine(module, cfg, device, topo)
            engine.module.train()
            engine.train_step(images, labels)  # warm-up
            CollectiveSynchronizer.merge(engine, weight)
            periods, syncs = [], []
            for _ in range(repeats):
                dist.barrier()
                t = time.perf_counter()
                for _ in range(steps):
                    engine.train_step(images, labels)
                periods.append(time.perf_counter() - t)
                dist.barrier()
                t = time.perf_counter()
                CollectiveSynchronizer.merge(engine, weight)
                syncs.append(time.perf_counter() - t)
            numel = sum(x.numel() for x in engine.sync_tensors())
            gathered: list = [None] * topo.world
            dist.all_gather_object(gathered, (statistics.median(periods), statistics.median(syncs)))
            period = max(g[0] for g in gathered)
            sync = max(g[1] for g in gathered)
            rows.append({"engine": kind, "model": name, "resolution": res, "batch": batch, "steps": steps,
                         "values": numel, "period_s": period, "sync_s": sync, "ratio": sync / period})
            del engine
    dist.barrier()
    dist.destroy_process_group()
    return rows if topo.rank == 0 else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="torch,deepspeed,fsdp")
    p.add_argument("--models", default="small_resnet:16:64:12,resnet18_cifar:32:64:4",
                   help="comma list of name:resolution:batch:steps_per_period")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    engines = args.engines.split(",")
    models = args.models.split(",")
    relaunch_under_torchrun(__file__, args.ranks, DS_ACCELERATOR="cpu")
    rows = measure(engines, models, args.repeats)
    if rows:
        print(f"{'engine':<10} {'model':<15} {'res':>4} {'batch':>5} {'steps':>5} {'values':>10} "
              f"{'period s':>9} {'sync s':>8} {'sync/period':>11}")
        for r in rows:
            print(f"{r['engine']:<10} {r['model']:<15} {r['resolution']:>4} {r['batch']:>5} {r['steps']:>5} "
                  f"{r['values']:>10,} {r['period_s']:>9.3f} {r['sync_s']:>8.4f} {r['ratio']:>11.4f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
