"""A DeepSpeed training script with dual batch size learning: every rank its own batch size.

DeepSpeed asserts `train_batch_size = micro batch x accumulation x world size`, so one
engine per job cannot give ranks different batches (DeepSpeed issues #1051, #6533). Here
every rank builds its own engine as a data-parallel world of one, from the user's own
JSON (its optimizer block included: DeepSpeed builds it), with the batch the plan gives
it, and the LR schedule in epochs (`dbl.ScheduleLR`: a JSON scheduler counts optimizer
steps, which differ per rank, and is refused); dbl-ps averages the ranks' models with their share weights once per epoch
and refreshes DeepSpeed's fp32 master weights afterwards. The lines dbl-ps adds are
marked `# dbl-ps`.

    deepspeed --num_gpus 2 examples/deepspeed_train.py --deepspeed_config examples/ds_config.json
    # CPU (gloo):
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 examples/deepspeed_train.py --deepspeed_config examples/ds_config.json

`--checkpoint DIR`: after every epoch each rank saves into its own folder `DIR/rank<R>/`:
`engine.save_checkpoint` (model, optimizer, the LR schedule) and `dbl_ps.pt`
(`dbl.rank_state`: the averager's and the sampler's state and the random number
generators, with the DeepSpeed tag). Each engine is a data-parallel
world of one, so DeepSpeed names its files as data-parallel rank 0 on every rank: one
folder for all ranks would have every rank write the same files. Started again with the
same DIR, the ranks resume after the last saved epoch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import Record, SmallCNN, accuracy, datasets, fingerprint, init
from torch.utils.data import DataLoader

import dbl_ps.api as dbl  # dbl-ps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deepspeed_config", required=True, help="your DeepSpeed JSON")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--small", type=int, default=1, help="ranks training with the small batch (DBSL)")
    p.add_argument("--tau", type=float, default=1.2)
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))  # the deepspeed launcher's
    p.add_argument("--time-model", type=lambda t: [float(v) for v in t.split(",")], metavar="ALPHA,BETA",
                   help="this device's step time alpha + beta * batch in seconds (default: measured in the first steps)")
    p.add_argument("--out", help="folder for each rank's record and the DeepSpeed config it used")
    p.add_argument("--checkpoint", help="folder of the ranks' checkpoints (one folder per rank), saved after every "
                                        "epoch; resumed from when present")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this many epochs in all, as a killed job would (tests of --checkpoint)")
    args = p.parse_args()

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world, device = init()
    train_set, test_set = datasets()
    user_config = json.loads(Path(args.deepspeed_config).read_text())
    batch_large = int(user_config.get("train_micro_batch_size_per_gpu", 64))
    record = Record(args.out, rank)

    # Every conflict between the user's JSON and per-rank batches is one error, before any measuring;
    # what dbl-ps changes is said once.
    _, notes = dbl.deepspeed_rank_config(user_config, batch_large)  # dbl-ps
    if rank == 0:
        for note in notes:
            print(f"dbl-ps: DeepSpeed config: {note}", flush=True)

    own_group = dbl.single_rank_groups()  # dbl-ps (collective: every rank makes every one-rank group)

    # The LR in epochs, the same on every rank at the same fraction of its epoch (dbl-ps)
    spec = dbl.ScheduleSpec(epochs=args.epochs, base_lr=user_config["optimizer"]["params"]["lr"], warmup_epochs=1,
                            warmup_start_factor=0.1)

    def build(batch: int, steps: int) -> tuple[deepspeed.DeepSpeedEngine, dict]:
        torch.manual_seed(rank)
        config, _ = dbl.deepspeed_rank_config(user_config, batch)  # dbl-ps: this rank's batch (and accumulation)
        model = SmallCNN().to(device)
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config,
                                               lr_scheduler=lambda opt: dbl.ScheduleLR(opt, spec, steps),  # dbl-ps
                                               mpu=dbl.SingleRankMPU(own_group))  # dbl-ps: a data-parallel world of one
        return engine, config

    # Resume: one folder per rank (see the docstring); every rank from the same epoch, or none.
    ckpt_dir = Path(args.checkpoint) / f"rank{rank}" if args.checkpoint else None
    ckpt_file = ckpt_dir / "dbl_ps.pt" if ckpt_dir else None
    ckpt = dbl.read_rank_state(ckpt_file) if ckpt_file else None  # dbl-ps: None without a file
    found: list = [None] * world
    dist.all_gather_object(found, ckpt and ckpt["averager"]["epoch"])
    if len(set(found)) > 1:
        raise SystemExit(f"rank {rank}: the checkpoints in {args.checkpoint} end at epochs {found} (None: no file) "
                         f"by rank; resume needs every rank's checkpoint of the same epoch, or none")

    if ckpt:  # resumed: the saved plan (measuring again would give other shares) (dbl-ps)
        plan = dbl.plan_from_dict(ckpt["averager"]["plan"])  # dbl-ps
    else:
        engine, _ = build(batch_large, 1)
        x, y = train_set.tensors

        def measure_step(b: int) -> None:
            loss = F.cross_entropy(engine(x[:b].to(device)), y[:b].to(device))
            engine.backward(loss)
            engine.step()

        if args.time_model:  # known from an earlier measurement (`dbl-ps calibrate`, a previous run)
            time_model = dbl.TimeModel(*args.time_model)
        else:
            time_model = dbl.measure_time_model(measure_step, [8, 16, 32, batch_large])  # dbl-ps
        plan = dbl.plan_together(time_model, batch_large=batch_large, dataset_size=len(train_set),  # dbl-ps
                                 small=args.small, tau=args.tau)  # dbl-ps
        if rank == 0:  # what the small batch is on this device: b_S / B_L, alpha/beta (dbl-ps)
            print(*plan.regime_lines(), sep="\n", flush=True)
    mine = dbl.rank_plan(plan, rank)  # dbl-ps
    engine, config = build(mine.batch, mine.steps)  # a fresh engine (the measuring steps trained the first one) with the plan's batch
    if args.out:  # the config this rank trained with, as DeepSpeed saw it
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"ds_config_rank{rank}.json").write_text(json.dumps(config, indent=1))
    averager = dbl.ModelAverager(engine, plan)  # dbl-ps: same model on every rank, fp32 masters refreshed
    sampler = dbl.ShareBatchSampler(len(train_set), mine.shares, rank, mine.batch, seed=0)  # dbl-ps
    loader = DataLoader(train_set, batch_sampler=sampler)
    if ckpt:
        engine.load_checkpoint(str(ckpt_dir), tag=ckpt["tag"])  # model, optimizer, the LR schedule
        dbl.load_rank_state(ckpt, averager=averager, sampler=sampler)  # dbl-ps: after the model; the RNGs too
        plan = averager.plan  # dbl-ps
        record.data["resumed_at"] = averager.start_epoch
        if rank == 0:
            print(f"resumed from {args.checkpoint} at epoch {averager.start_epoch + 1}", flush=True)

    for epoch in range(averager.start_epoch, args.epochs):  # dbl-ps: 0, or where the checkpoint left off
        mine = averager.set_epoch(epoch)  # dbl-ps
        sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)  # dbl-ps
        engine.lr_scheduler.set_epoch(epoch, mine.steps)  # dbl-ps: this rank's steps in this epoch
        for images, labels in loader:
            loss = F.cross_entropy(engine(images.to(device)), labels.to(device))
            engine.backward(loss)
            engine.step()  # DeepSpeed's optimizer from the user's JSON, then the LR schedule
            if averager.step(loss):  # dbl-ps
                record.data["syncs"].append({"epoch": epoch, "fingerprint": fingerprint(engine.module)})
        averager.end_epoch()  # dbl-ps: every rank took its planned steps (else one error on every rank)
        acc = accuracy(engine.module, test_set, device)
        record.data["epochs"].append({"epoch": epoch, "batch": mine.batch, "share": mine.share, "steps": mine.steps,
                                      "lr": engine.get_lr()[0], "test_acc": acc})
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}  batches {list(plan[mine.resolution].batches)}  "
                  f"lr {engine.get_lr()[0]:.4g}  test acc {acc:.4f}", flush=True)
        if ckpt_dir:
            # Collective (DeepSpeed's barriers): every rank, into its own folder, under the same tag
            # on every rank; no 'latest' file (DeepSpeed writes it on global rank 0 only): ours names the tag.
            tag = f"epoch{epoch + 1}"
            engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
            dbl.save_rank_state(ckpt_file, {"tag": tag, **dbl.rank_state(averager=averager, sampler=sampler)})  # dbl-ps
        if epoch + 1 == args.stop_after:
            break
    record.save()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
