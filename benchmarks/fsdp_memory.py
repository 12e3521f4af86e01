"""Memory per rank of an FSDP2 DBSL worker group with and without sharding.

Two ranks, each training its own batch of `--batch` images per step (SGD with momentum,
fp32), in three set-ups built with `dbl_ps.integrations`:

* plain:      `TorchEngine`, the whole model, no FSDP (reference)
* replicated: `FSDPEngine`, 2 worker groups of 1 rank (mesh 2 x 1): nothing is sharded
* sharded:    `FSDPEngine`, 1 worker group of 2 ranks (mesh 1 x 2): parameters,
              gradients and momentum sharded over the 2 ranks

Per rank and set-up: the bytes of model state the rank holds (its parameter shards,
gradients and optimizer state, counted from the tensors), and on a GPU the caching
allocator's view: memory allocated between steps (state + the input batch) and the
peak during a step (activations and FSDP's all-gathered parameters included).

    python benchmarks/fsdp_memory.py                                  # relaunches itself under torchrun
    python benchmarks/fsdp_memory.py --model small_resnet --resolution 32 --device cpu   # smoke run

On a machine with one GPU both ranks share it; NCCL refuses two ranks on one GPU,
so the collectives then go through gloo (`--backend auto` picks NCCL only when there
is a GPU per rank). The memory numbers do not depend on the backend.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

from _common import relaunch_under_torchrun


def state_bytes(engine) -> int:
    """Bytes of parameters, gradients and optimizer state this rank holds (local shards)."""
    import torch

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in engine.module.parameters():
        total += local(p).numel() * local(p).element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * local(p.grad).element_size()
    for st in engine.optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += local(v).numel() * local(v).element_size()
    return total


def measure(args) -> list[dict]:
    import torch
    import torch.distributed as dist

    from dbl_ps.config import RunConfig
    from dbl_ps.training.engine import TorchEngine
    from dbl_ps.training.topology import Topology
    from dbl_ps.integrations.fsdp import FSDPEngine
    from dbl_ps.models import build_model

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    on_gpu = args.device == "cuda"
    if on_gpu:
        gpus = torch.cuda.device_count()
        torch.cuda.set_device(local_rank % gpus)
        device = torch.device("cuda", local_rank % gpus)
        backend = args.backend if args.backend != "auto" else ("nccl" if gpus >= world else "cpu:gloo,cuda:gloo")
    else:
        device, backend = torch.device("cpu"), "gloo"
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group(backend, rank=rank, world_size=world)
    cfg = RunConfig.from_dict({"optim": {"momentum": 0.9, "weight_decay": 5e-5}})
    gen = torch.Generator().manual_seed(rank)
    images = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    rows = []
    for setup in args.setups.split(","):
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        torch.manual_seed(0)
        module = build_model(args.model, args.classes, in_channels=3)
        row = {"setup": setup, "rank": rank}
        try:
            if setup == "plain":
                engine = TorchEngine(module, cfg, device, Topology(rank=rank, world=world, local_rank=local_rank, group_size=1))
            else:
                group = world if setup == "sharded" else 1
                engine = FSDPEngine(module, cfg, device, Topology(rank=rank, world=world, local_rank=local_rank,
                                                                  group_size=group))
            engine.module.train()
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                engine.train_step(images, labels)
                if on_gpu:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            row["state_mib"] = state_bytes(engine) / 2**20
            row["step_s"] = statistics.median(times[1:] or times)
            if on_gpu:
                row["allocated_mib"] = torch.cuda.memory_allocated(device) / 2**20
                row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            del engine
        except Exception as exc:  # report what failed and go on with the next set-up
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        del module
        rows.append(row)
        dist.barrier()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rows)
    gc.collect()  # the fully_shard modules' reference cycles hold the group (SIGABRT if left to exit)
    dist.destroy_process_group()
    if rank != 0:
        return []
    out = [r for per_rank in gathered for r in per_rank]
    for r in out:
        r.update(model=args.model, resolution=args.resolution, batch=args.batch, backend=backend,
                 device=torch.cuda.get_device_name(device) if on_gpu else "cpu", torch=torch.__version__)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50_imagenet")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="images per rank per step")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--setups", default="plain,replicated,sharded")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--backend", default="auto", help="auto, nccl, gloo or cpu:gloo,cuda:gloo")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    relaunch_under_torchrun(__file__, args.ranks)
    rows = measure(args)
    if not rows:
        return
    first = rows[0]
    print(f"{first['device']}, torch {first['torch']}, backend {first['backend']}: {args.model} at {args.resolution} px, "
          f"batch {args.batch} per rank, {args.ranks} ranks")
    print(f"{'setup':<11} {'rank':>4} {'state MiB':>10} {'allocated MiB':>14} {'peak MiB':>9} {'step s':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['setup']:<11} {r['rank']:>4}  failed: {r['error']}")
            continue
        print(f"{r['setup']:<11} {r['rank']:>4} {r['state_mib']:>10.1f} {r.get('allocated_mib', float('nan')):>14.1f} "
              f"{r.get('peak_mib', float('nan')):>9.1f} {r['step_s']:>7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
