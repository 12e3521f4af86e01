"""The worker loop's sync through the parameter store against baselines measured in the
same run (issue 26).

    PYTHONPATH=. python benchmarks/worker_sync.py         # ResNet-18 (torchvision, 10 classes), ~3 minutes
    PYTHONPATH=. python benchmarks/worker_sync.py --repeats 5 --device cuda

What is timed is the real `StoreSynchronizer.sync` (gather, divergence check, push,
the store's merge, pull, scatter) on a real store with one worker, so no time waits for
other workers: the sync's own cost. For each rule (bsp/average, asp/blend, asp/sgd):

  * zero-copy: the synchronizer's default path (gather into a reserved queue slot,
    scatter from a pinned snapshot, each one pass of the store's kernels with the
    divergence check, rule sgd's subtraction and the kept reference folded in);
  * copy: the same synchronizer with `zero_copy=False`, the sync as it was before
    issue 26 (torch's copies into a vector, a sum for the check, push copies it into a
    slot, pull copies the state out, scatter from the vector).

The two run alternately (`--repeats` each, medians), so both see the same machine load.
Baselines, same run: one `TorchEngine.train_step` of the same model at batch 128 and at
a plan-like batch (`--plan-batch`, by default the design's check value b_S = 102), and
`torch.distributed.all_reduce` (gloo, 2 processes) of the same state, the least a
collective sync moves. The sync cost per training step is sync / k for k = sync_every
1, 8 and the mini-epoch (ceil(d_i / b_i) steps; CIFAR: 50000 samples over 4 workers at
batch 128 = 98 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import time

from _common import free_port, timing_device

SPAWN = mp.get_context("spawn")
RULES = [("bsp", "average"), ("asp", "blend"), ("asp", "sgd")]


class BenchEngine:
    """The synchronizer's view of an engine (module + after_sync) over a TorchEngine."""

    def __init__(self, engine):
        self.engine = engine
        self.module = engine.module
        self.device = engine.device

    def after_sync(self) -> None:
        self.engine.after_sync()


def build(device):
    import torch
    import torchvision

    from dbl_ps.config import RunConfig
    from dbl_ps.training.engine import TorchEngine
    from dbl_ps.training.topology import Topology

    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10)
    return TorchEngine(module, RunConfig(), device, Topology.single(0, 1))


def step_seconds(engine, batch: int, resolution: int, repeats: int, sync_device) -> float:
    import torch

    images = torch.randn(batch, 3, resolution, resolution, device=engine.device)
    labels = torch.randint(0, 10, (batch,), device=engine.device)
    engine.module.train()
    engine.train_step(images, labels)  # warm-up
    sync_device()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.train_step(images, labels)
        sync_device()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync_seconds(engine, mode: str, rule: str, repeats: int, sync_device) -> dict[str, float]:
    """Median seconds of one StoreSynchronizer.sync, zero-copy and copying, alternately."""
    import torch

    from dbl_ps import ParameterStore
    from dbl_ps.synchronizers.store import StoreSynchronizer
    from dbl_ps.training.flat import FlatState

    flat = FlatState(engine.module)
    initial = flat.gather()
    stores, syncs = {}, {}
    try:
        for path in ("zero-copy", "copy"):
            # rule sgd as `dbl-ps train` runs it: lr 1, no server momentum (StoreServer)
            stores[path] = ParameterStore(flat.numel, 1, mode=mode, rule=rule, lr=1.0, momentum=0.0, initial=initial)
            syncs[path] = StoreSynchronizer(stores[path].name, 0, mode=mode, rule=rule, sync_every=1,
                                            zero_copy=path == "zero-copy")
            syncs[path].start(engine, fresh=True)
        loss = torch.tensor(1.0, device=engine.device)
        times: dict[str, list[float]] = {path: [] for path in syncs}
        for i in range(repeats + 1):
            for path, sync in syncs.items():
                sync_device()
                start = time.perf_counter()
                result = sync.sync(engine, 0.8, loss=loss)
                elapsed = time.perf_counter() - start
                assert result.merged
                if i > 0:  # the first is a warm-up (page faults, pinning)
                    times[path].append(elapsed)
        return {f"{path}_s": statistics.median(t) for path, t in times.items()}
    finally:
        for sync in syncs.values():
            sync.close()
        for store in stores.values():
            store.close()


def allreduce_process(rank: int, port: int, n: int, repeats: int, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    vec = torch.ones(n)
    dist.all_reduce(vec)  # warm-up
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(vec)
        times.append(time.perf_counter() - start)
    results.put(statistics.median(times))
    dist.destroy_process_group()


def allreduce_seconds(n: int, repeats: int) -> float:
    port, results = free_port(), SPAWN.Queue()
    procs = [SPAWN.Process(target=allreduce_process, args=(r, port, n, repeats, results)) for r in range(2)]
    for p in procs:
        p.start()
    medians = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return max(medians)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--plan-batch", type=int, default=102, help="a DBSL small batch (design check value b_S)")
    p.add_argument("--mini-epoch", type=int, default=math.ceil(50000 / 4 / 128), help="steps per mini-epoch")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--step-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="torch threads: what a CPU worker of a 2-worker run gets (cores // W)")
    p.add_argument("--json", help="also write the report to this file")
    args = p.parse_args()

    import torch

    # As in a worker process: with more threads than free cores, each of the ~120 per-tensor
    # copies of a gather or scatter waits at an OpenMP barrier for descheduled peers.
    torch.set_num_threads(args.threads)

    device, sync_device = timing_device(args.device)
    engine = build(device)
    n = sum(t.numel() for t in (*engine.module.parameters(), *engine.module.buffers()) if t.is_floating_point())
    print(f"ResNet-18 (torchvision, 10 classes): {n:,} floats ({4 * n / 1e6:.1f} MB); device {device}; "
          f"torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}", flush=True)
    report: dict = {"values": n, "device": str(device), "threads": torch.get_num_threads(), "rules": {}}
    sync_engine = BenchEngine(engine)
    for mode, rule in RULES:
        r = sync_seconds(sync_engine, mode, rule, args.repeats, sync_device)
        report["rules"][f"{mode}/{rule}"] = r
        print(f"{mode}/{rule}: zero-copy {1e3 * r['zero-copy_s']:.1f} ms, copy path {1e3 * r['copy_s']:.1f} ms: "
              f"{r['copy_s'] / r['zero-copy_s']:.2f}x faster", flush=True)
    step = {b: step_seconds(engine, b, args.resolution, args.step_repeats, sync_device)
            for b in (args.batch, args.plan_batch)}
    report["step_s"] = step
    print(f"train step at {args.resolution} px: batch {args.batch} {1e3 * step[args.batch]:.0f} ms, "
          f"batch {args.plan_batch} {1e3 * step[args.plan_batch]:.0f} ms", flush=True)
    gloo = allreduce_seconds(n, args.repeats)
    report["gloo_allreduce_s"] = gloo
    print(f"gloo all_reduce, 2 processes: {1e3 * gloo:.1f} ms", flush=True)

    print(f"\n| rule | path | sync ms | vs copy path | sync / step b={args.batch} | sync / step b={args.plan_batch} "
          f"| per step, k=1 | k=8 | k={args.mini_epoch} (mini-epoch) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def row(rule: str, path: str, seconds: float, base: float | None) -> None:
        speedup = f"{base / seconds:.2f}x" if base else "-"
        per_step = [seconds / k / step[args.batch] for k in (1, 8, args.mini_epoch)]
        print(f"| {rule} | {path} | {1e3 * seconds:.1f} | {speedup} | {seconds / step[args.batch]:.3f} | "
              f"{seconds / step[args.plan_batch]:.3f} | " + " | ".join(f"{x:.4f}" for x in per_step) + " |")

    for name, r in report["rules"].items():
        row(name, "zero-copy", r["zero-copy_s"], r["copy_s"])
        row(name, "copy (before)", r["copy_s"], None)
    row("-", "gloo all_reduce (2 proc)", gloo, None)
    print("(per step: sync / k as a fraction of one batch-128 step)")
    for name, r in report["rules"].items():
        print(f"{name}: zero-copy / gloo all_reduce = {r['zero-copy_s'] / gloo:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
