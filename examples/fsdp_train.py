"""An FSDP2 training script with dual batch size learning.

The ranks form a (replicate, shard) mesh: each worker is a group of `--ranks-per-worker`
ranks sharding one model with `fully_shard`, and the workers train with their own batch
sizes on their own shares; dbl-ps averages the workers' local shards over the replicate
axis with their share weights once per epoch. The lines dbl-ps adds are marked `# dbl-ps`.

    torchrun --nproc_per_node 2 examples/fsdp_train.py                        # 2 workers of 1 rank
    torchrun --nproc_per_node 4 examples/fsdp_train.py --ranks-per-worker 2   # 2 workers of 2 ranks
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import Record, SmallCNN, accuracy, datasets, fingerprint, init
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader

import dbl_ps.api as dbl  # dbl-ps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-large", type=int, default=64)
    p.add_argument("--small", type=int, default=1)
    p.add_argument("--tau", type=float, default=1.2)
    p.add_argument("--ranks-per-worker", type=int, default=1)
    p.add_argument("--time-model", type=lambda t: [float(v) for v in t.split(",")], metavar="ALPHA,BETA",
                   help="this device's step time alpha + beta * batch in seconds (default: measured in the first steps)")
    p.add_argument("--out", help="folder for each rank's record (rank<R>.json)")
    args = p.parse_args()

    rank, world, device = init()
    workers = world // args.ranks_per_worker
    mesh = init_device_mesh(device.type, (workers, args.ranks_per_worker), mesh_dim_names=("replicate", "shard"))
    worker, member = rank // args.ranks_per_worker, rank % args.ranks_per_worker
    train_set, test_set = datasets()
    torch.manual_seed(worker)
    model = SmallCNN()
    for block in model.features:  # shard the model's units, then the root
        if isinstance(block, torch.nn.Conv2d):
            fully_shard(block, mesh=mesh["shard"])
    fully_shard(model, mesh=mesh["shard"])
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    record = Record(args.out, rank)
    x, y = train_set.tensors

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    # One time model per worker (its first rank's measurement), the same plan everywhere.
    if args.time_model:  # known from an earlier measurement (`dbl-ps calibrate`, a previous run)
        time_model = dbl.TimeModel(*args.time_model)
    else:
        try:
            time_model = dbl.measure_time_model(lambda b: train_step(x[:b], y[:b]), [8, 16, 32, args.batch_large])  # dbl-ps
        except ValueError as exc:  # steps dominated by the shards' collectives on a busy CPU: no usable line
            print(f"rank {rank}: {exc}; planning with equal workers", flush=True)
            time_model = dbl.TimeModel(alpha=1e-3, beta=1e-4)
    gathered = [None] * world
    dist.all_gather_object(gathered, (time_model.alpha, time_model.beta))
    models = [dbl.TimeModel(*gathered[w * args.ranks_per_worker]) for w in range(workers)]  # dbl-ps
    plan = dbl.plan_ranks(models, batch_large=args.batch_large, dataset_size=len(train_set), small=args.small,  # dbl-ps
                          tau=args.tau)  # dbl-ps
    averager = dbl.ModelAverager(model, plan, ranks_per_worker=args.ranks_per_worker,  # dbl-ps
                                 group=mesh.get_group("replicate"))  # dbl-ps: average shard by shard across workers
    mine = averager.mine
    sampler = dbl.ShareBatchSampler(len(train_set), mine.shares, worker, mine.batch, seed=0)  # dbl-ps
    loader = DataLoader(train_set, batch_sampler=sampler)

    for epoch in range(args.epochs):
        mine = averager.set_epoch(epoch)  # dbl-ps
        sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)  # dbl-ps
        for images, labels in loader:
            if args.ranks_per_worker > 1:  # the worker's batch is split over its ranks
                images = images.tensor_split(args.ranks_per_worker)[member]
                labels = labels.tensor_split(args.ranks_per_worker)[member]
            loss = train_step(images, labels)
            if averager.step(loss):  # dbl-ps
                record.data["syncs"].append({"epoch": epoch, "fingerprint": fingerprint(model)})
        averager.end_epoch()  # dbl-ps: every rank took its planned steps (else one error on every rank)
        acc = accuracy(model, test_set, device)
        record.data["epochs"].append({"epoch": epoch, "batch": mine.batch, "share": mine.share, "steps": mine.steps,
                                      "test_acc": acc})
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  batches {list(plan[mine.resolution].batches)}  "
                  f"test acc {acc:.4f}", flush=True)
    record.save()


if __name__ == "__main__":
    main()
    # fully_shard leaves each module and its FSDP state in a reference cycle that holds the
    # process group: collect it while the interpreter is whole, then destroy the group (freed
    # at the interpreter's exit instead, gloo can abort the process with SIGABRT).
    gc.collect()
    dist.destroy_process_group()
