"""An ordinary DDP training script on mixed hardware: a different batch per GPU.

Stock DDP gives every rank the same batch, so a fast GPU waits for a slow one in every step.
With dbl-ps each rank measures its own step time in its first steps, the ranks split one
global batch so that every step takes the same time on each of them (a slow rank trains
fewer samples per step), and the gradients are merged inside the step with each rank
weighted by its share of the global batch: the step is the step of the whole global batch,
as if one process had trained it. The lines dbl-ps adds are marked `# dbl-ps`.

    torchrun --nproc_per_node 2 examples/mixed_batch_ddp.py --epochs 4
    torchrun --nproc_per_node 2 examples/mixed_batch_ddp.py --mode ddp          # stock DDP, equal batches
    torchrun --nproc_per_node 2 examples/mixed_batch_ddp.py --slow-rank 1       # rank 1 at half speed

`--slow-rank R` makes rank R a slower device: it first times its own steps (the bare model,
no communication), then sleeps `--slow-factor` x that step time (alpha + beta x its batch)
in each step before its backward pass (1.0: half speed), from its first step on, so its own time model measures it. `--mode average` trains the same equal batches with every rank's
model averaged after every step instead (dbl-ps's ModelAverager, `sync_every=1`: the
`ddp-like` model averaging of DBSL), for the benchmark's comparison. benchmarks/mixed_batch.py
runs the three against each other.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import Record, SmallCNN, accuracy, datasets, init
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

import dbl_ps.api as dbl  # dbl-ps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["mixed", "ddp", "average"], default="mixed",
                   help="mixed: dbl-ps's planned batches (default); ddp: stock DDP with equal batches; average: "
                        "equal batches, models averaged after every step")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--global-batch", type=int, default=128, help="samples per step over all ranks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="Fashion-MNIST IDX folder (default: scikit-learn digits)")
    p.add_argument("--train-limit", type=int, default=0, help="train on the first N images (0: all)")
    p.add_argument("--slow-rank", type=int, default=-1, help="this rank is a slower device")
    p.add_argument("--slow-factor", type=float, default=1.0, help="it sleeps this x its step time (1: half speed)")
    p.add_argument("--time-model", type=lambda t: [float(v) for v in t.split(",")], metavar="ALPHA,BETA",
                   help="--mode mixed: this device's step time alpha + beta * batch (default: measured)")
    p.add_argument("--backend", help="torch.distributed backend (default: nccl on GPUs, gloo on CPUs)")
    p.add_argument("--out", help="folder for each rank's record (rank<R>.json)")
    args = p.parse_args()

    rank, world, device = init(args.backend)
    train_set, test_set = datasets(args.data)
    if args.train_limit:
        train_set = torch.utils.data.TensorDataset(*(t[:args.train_limit] for t in train_set.tensors))
    torch.manual_seed(args.seed)
    model = SmallCNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    record = Record(args.out, rank)
    x, y = train_set.tensors
    sizes = [16, 32, 64, args.global_batch // world]
    slowdown = None  # the slow rank's own step time model: it sleeps slow_factor x that in each step

    def train_step(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(net(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        if slowdown is not None:  # a slower device: its own work takes (1 + slow_factor) x as long,
            # before its gradients are ready for the all-reduce, as a slow GPU's compute is (a delay
            # after the step would overlap the other rank's compute and hide what the split buys)
            time.sleep(args.slow_factor * slowdown.step_seconds(len(labels)))
        loss.backward()
        optimizer.step()
        return loss.detach()

    # Timing steps moves the weights: the model and optimizer are put back afterwards.
    start_state = ({k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict())
    if rank == args.slow_rank:
        slowdown = dbl.measure_time_model(lambda b: train_step(model, x[:b], y[:b]), sizes)
    if args.mode == "mixed":
        # Each rank times a few real steps of its own device, then all plan together: every rank's
        # batch is sized so that the ranks' steps take the same time (dbl-ps).
        time_model = dbl.TimeModel(*args.time_model) if args.time_model else \
            dbl.measure_time_model(lambda b: train_step(model, x[:b], y[:b]), sizes)  # dbl-ps
        plan = dbl.plan_mixed_together(time_model, global_batch=args.global_batch,  # dbl-ps
                                       dataset_size=len(train_set))  # dbl-ps
    else:  # the same global batch in equal parts, as stock DDP takes it
        plan = dbl.plan_mixed_ranks(dbl.TimeModel(alpha=0.0, beta=1e-3), global_batch=args.global_batch,
                                    dataset_size=len(train_set), ranks=world)
    model.load_state_dict(start_state[0])
    optimizer.load_state_dict(start_state[1])
    net: torch.nn.Module = model
    averager = None
    if args.mode in ("mixed", "ddp"):
        net = DDP(model)  # broadcasts rank 0's model: every rank starts from the same one
    if args.mode == "mixed":
        mixed = dbl.mixed_batch(net, plan)  # dbl-ps: gradients weighted by each rank's share of the batch
        mine = mixed.set_epoch(0)  # dbl-ps
        if rank == 0:
            print(*dbl.plan_lines(plan), sep="\n", flush=True)  # dbl-ps: the split and its predicted time
    else:
        mine = dbl.rank_plan(plan, rank)
    if args.mode == "average":
        averager = dbl.ModelAverager(model, dbl.plan_ranks(dbl.TimeModel(0.0, 1e-3), batch_large=mine.batch,
                                                           dataset_size=sum(plan[0].shares), ranks=world),
                                     sync_every=1)
    sampler = dbl.ShareBatchSampler(len(train_set), mine.shares, rank, mine.batch, seed=args.seed)  # dbl-ps
    loader = DataLoader(train_set, batch_sampler=sampler)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)  # dbl-ps
        if averager is not None:
            averager.set_epoch(epoch)
        dist.barrier()  # time the epochs alone, from the same moment on every rank
        started, steps = time.perf_counter(), 0
        for images, labels in loader:
            loss = train_step(net, images, labels)
            if averager is not None:
                averager.step(loss)
            steps += 1
        if averager is not None:
            averager.end_epoch()
        dist.barrier()
        seconds = time.perf_counter() - started
        acc = accuracy(model, test_set, device)
        record.data["epochs"].append({"epoch": epoch, "batch": mine.batch, "steps": steps, "seconds": seconds,
                                      "test_acc": acc})
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  batches {list(plan[0].batches)}  {seconds:.2f} s  "
                  f"test acc {acc:.4f}", flush=True)
    record.data["batches"] = list(plan[0].batches)
    record.save()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
