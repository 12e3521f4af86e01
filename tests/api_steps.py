"""Run under torchrun with 2 gloo ranks by tests/test_examples.py: `ModelAverager` with
ranks of very different step counts (the plan gives rank 0 batch 6 and 112 steps, rank 1
batch 64 and 13 steps per epoch), a tiny linear model and no data loader. Each rank writes
what happened to OUT/rank<R>.json (files, not stdout: the launcher interleaves the ranks).

    uneven: every planned step, sync_every=8, two epochs: 14 syncs per epoch on both ranks
            (rank 1 owes two at its 13th step)
    short:  rank 1 breaks out of epoch 0 after 5 of its 13 steps
    lost:   rank 1 stops answering before its first sync (timeout_s=3)
    plans-differ: rank 1 plans for 1500 samples (rank 0: 1438), syncing once per epoch
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import dbl_ps.api as dbl


def main(mode: str, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    size = 1500 if mode == "plans-differ" and rank == 1 else 1438
    plan = dbl.plan_ranks(dbl.TimeModel(alpha=0.0001, beta=0.0001), batch_large=[6, 64], dataset_size=size)
    assert size != 1438 or plan[0].steps() == [112, 13], plan[0].steps()
    torch.manual_seed(rank)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    record: dict = {"rank": rank, "syncs": [], "error": None, "steps": []}
    started = time.perf_counter()
    try:
        averager = dbl.ModelAverager(model, plan, sync_every="mini_epoch" if mode == "plans-differ" else 8,
                                     timeout_s=3 if mode == "lost" else 60)
        for epoch in range(2):
            mine = averager.set_epoch(epoch)
            steps = mine.steps
            if rank == 1 and epoch == 0:
                steps = 5 if mode == "short" else steps
            for step in range(steps):
                if mode == "lost" and rank == 1:
                    time.sleep(8)  # past rank 0's timeout_s, before any sync
                x = torch.randn(mine.batch, 4)
                loss = model(x).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                averager.step(loss.detach())
            averager.end_epoch()
            record["syncs"].append(averager.syncs)
            record["steps"].append(averager.steps)
        record["weights"] = [float(p.double().sum()) for p in model.parameters()]
    except Exception as exc:  # noqa: BLE001 (the test reads which error every rank got)
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["seconds"] = time.perf_counter() - started
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    # Also after an error: a gloo group left to the interpreter's exit can abort the process
    # (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489).
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]))
