"""A plain torch.distributed training script with dual batch size learning.

Every rank trains its own copy of the model with its own batch size on its own share of
the data (what DDP cannot: it needs one batch size everywhere), and the ranks average
their models, weighted by their shares, once per epoch. The lines dbl-ps adds are marked
`# dbl-ps`; the rest is an ordinary training script.

    torchrun --nproc_per_node 2 examples/torch_ddp_train.py --epochs 4
    torchrun --nproc_per_node 2 examples/torch_ddp_train.py --small 1 --tau 1.2 --replan

`--checkpoint DIR`: each rank saves its own `DIR/rank<R>.pt` after every epoch
(`dbl.rank_state`: model, optimizer, the averager, sampler and LR schedule, and every random
number generator, which dropout draws from); started again with the same DIR, the ranks
resume where the last epoch ended and end with the bits of a run never stopped. Rank 0
holds DIR's run lock (`dbl.own_folder`), so a relaunch while ranks of an earlier launch still
train there is refused on every rank, naming them.

On GPUs the same script runs unchanged with NCCL. `--slow-rank R --slow-seconds S`
makes rank R sleep S seconds after each training step from epoch `--slow-from-epoch` on
(a noisy neighbour arriving; -1: all along, a slower device its time model sees), to
watch `--replan` give it less data (benchmarks/mixed_hardware_ranks.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import Record, SmallCNN, accuracy, datasets, fingerprint, init
from torch.utils.data import DataLoader

import dbl_ps.api as dbl  # dbl-ps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-large", type=int, default=64)
    p.add_argument("--small", type=int, default=1, help="ranks training with the small batch (DBSL)")
    p.add_argument("--tau", type=float, default=1.2, help="epoch time allowed, x the all-large time")
    p.add_argument("--replan", action="store_true", help="re-plan when the ranks' speeds drift")
    p.add_argument("--replan-threshold", type=float, default=0.15, help="relative drift that re-plans")
    p.add_argument("--slow-rank", type=int, default=-1)
    p.add_argument("--slow-seconds", type=float, default=0.0)
    p.add_argument("--slow-from-epoch", type=int, default=0,
                   help="the slow rank is slow from this epoch on; -1: from the start, its time model sees it too")
    p.add_argument("--backend", help="torch.distributed backend (default: nccl on GPUs, gloo on CPUs; two ranks "
                                     "sharing one GPU need gloo)")
    p.add_argument("--data", help="Fashion-MNIST IDX folder (default: scikit-learn digits)")
    p.add_argument("--time-model", type=lambda t: [float(v) for v in t.split(",")], metavar="ALPHA,BETA",
                   help="this device's step time alpha + beta * batch in seconds (default: measured in the first steps)")
    p.add_argument("--out", help="folder for each rank's record (rank<R>.json)")
    p.add_argument("--checkpoint", help="folder of each rank's checkpoint (rank<R>.pt), saved after every epoch; "
                                        "resumed from when present")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the classifier")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this many epochs in all, as a killed job would (tests of --checkpoint)")
    p.add_argument("--hold-after", type=int, default=0,
                   help="after this many epochs in all, wait there until killed (tests of a killed launcher)")
    args = p.parse_args()

    rank, world, device = init(args.backend)
    train_set, test_set = datasets(args.data)
    torch.manual_seed(rank)  # the ranks start apart on purpose: the averager makes them equal
    model = SmallCNN(dropout=args.dropout).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    record = Record(args.out, rank)
    slow = args.slow_seconds if rank == args.slow_rank else 0.0
    epoch_now = [-1]  # -1 while the time model is measured

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if slow and epoch_now[0] >= args.slow_from_epoch:
            time.sleep(slow)  # a slower device (-1: all along) or a noisy neighbour arriving at that epoch
        return loss.detach()

    # Resume: each rank its own file, so no two ranks write one path. Every rank must resume
    # from the same epoch (or all start afresh): they agree on it before anything else.
    try:
        lock = dbl.own_folder(args.checkpoint) if args.checkpoint else None  # dbl-ps: one launch trains here at a time
    except dbl.RunDirectoryBusy as exc:  # dbl-ps: on every rank
        raise SystemExit(f"rank {rank}: {exc}") from None
    ckpt_path = Path(args.checkpoint) / f"rank{rank}.pt" if args.checkpoint else None
    ckpt = dbl.read_rank_state(ckpt_path) if ckpt_path else None  # dbl-ps: None without a file
    found: list = [None] * world
    dist.all_gather_object(found, ckpt and ckpt["averager"]["epoch"])
    if len(set(found)) > 1:
        raise SystemExit(f"rank {rank}: the checkpoints in {args.checkpoint} end at epochs {found} (None: no file) "
                         f"by rank; resume needs every rank's file of the same epoch, or none")

    # Each rank measures its own step time on a few real batches, then all plan together:
    # every rank gets the batch and share with which all finish an epoch at the same time.
    x, y = train_set.tensors
    if ckpt:  # resumed: the saved plan (measuring again would give other shares) (dbl-ps)
        plan = dbl.plan_from_dict(ckpt["averager"]["plan"])  # dbl-ps
    else:
        if args.time_model:  # known from an earlier measurement (`dbl-ps calibrate`, a previous run)
            time_model = dbl.TimeModel(*args.time_model)
        else:
            time_model = dbl.measure_time_model(lambda b: train_step(x[:b], y[:b]),  # dbl-ps
                                                [8, 16, 32, args.batch_large])  # dbl-ps
        plan = dbl.plan_together(time_model, batch_large=args.batch_large, dataset_size=len(train_set),  # dbl-ps
                                 small=args.small, tau=args.tau)  # dbl-ps
        if rank == 0:  # what the small batch is on this device: b_S / B_L, alpha/beta (dbl-ps)
            print(*plan.regime_lines(), sep="\n", flush=True)
    averager = dbl.ModelAverager(model, plan)  # dbl-ps: checks the ranks' models match, averages them once
    sampler = dbl.ShareBatchSampler(len(train_set), averager.mine.shares, rank, averager.mine.batch, seed=0)  # dbl-ps
    schedule = dbl.ScheduleSpec(epochs=args.epochs, base_lr=args.lr, milestones=(int(args.epochs * 0.75),))  # dbl-ps
    lr_schedule = dbl.ScheduleLR(optimizer, schedule, averager.mine.steps)  # dbl-ps
    loader = DataLoader(train_set, batch_sampler=sampler)
    if ckpt:  # everything built first, then loaded (the model before the averager), the RNGs last (dbl-ps)
        dbl.load_rank_state(ckpt, model=model, optimizer=optimizer, averager=averager, sampler=sampler,  # dbl-ps
                            lr_schedule=lr_schedule)  # dbl-ps
        plan = averager.plan  # dbl-ps: re-plans included
        record.data["resumed_at"] = averager.start_epoch
        if rank == 0:
            print(f"resumed from {args.checkpoint} at epoch {averager.start_epoch + 1}", flush=True)

    for epoch in range(averager.start_epoch, args.epochs):  # dbl-ps: 0, or where the checkpoint left off
        epoch_now[0] = epoch
        mine = averager.set_epoch(epoch)  # dbl-ps: this rank's batch, share, merge weight
        sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)  # dbl-ps
        lr_schedule.set_epoch(epoch, mine.steps)  # dbl-ps
        for images, labels in loader:
            loss = train_step(images, labels)
            lr_schedule.step()
            if averager.step(loss):  # dbl-ps: merges when the sync is due
                record.data["syncs"].append({"epoch": epoch, "fingerprint": fingerprint(model)})
        averager.end_epoch()  # dbl-ps: every rank took its planned steps (else one error on every rank)
        if args.replan:
            plan, factors = dbl.replan_together(plan, averager.train_seconds, threshold=args.replan_threshold)  # dbl-ps
            if factors:
                averager.set_plan(plan)  # dbl-ps
                record.data["replans"].append({"epoch": epoch, "factors": factors,
                                               "shares": list(dbl.rank_plan(plan, rank).shares)})
                if rank == 0:
                    print(f"epoch {epoch + 1}: re-planned, speed factors {[round(f, 2) for f in factors]} -> shares "
                          f"{list(dbl.rank_plan(plan, rank).shares)}", flush=True)
        acc = accuracy(model, test_set, device)
        record.data["epochs"].append({"epoch": epoch, "batch": mine.batch, "share": mine.share, "steps": mine.steps,
                                      "train_seconds": averager.train_seconds, "wait_seconds": averager.wait_seconds,
                                      "lr": optimizer.param_groups[0]["lr"], "test_acc": acc})
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  batches {list(plan[mine.resolution].batches)}  "
                  f"test acc {acc:.4f}  waited {averager.wait_seconds:.2f} s", flush=True)
        if ckpt_path:  # written whole, then renamed: a job killed while writing keeps the previous epoch's
            dbl.save_rank_state(ckpt_path, dbl.rank_state(model=model, optimizer=optimizer, averager=averager,  # dbl-ps
                                                          sampler=sampler, lr_schedule=lr_schedule))  # dbl-ps
        if epoch + 1 == args.stop_after:
            break
        if epoch + 1 == args.hold_after:
            dist.barrier()  # every rank's checkpoint of this epoch is written
            # one write of the whole line: print() under python -u writes the text and the newline
            # apart, and the two ranks' lines would interleave on the launcher's shared stdout
            sys.stdout.write(f"rank {rank}: holding after epoch {epoch + 1} (pid {os.getpid()})\n")
            sys.stdout.flush()
            while True:
                time.sleep(1)
    record.save()
    if lock is not None:
        lock.release()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
