"""Run under torchrun with 2 ranks by tests/test_examples.py: each mode misuses the public
API (dbl_ps.api) one way; every rank writes the error it got to OUT/rank<R>.txt (files, not
stdout: the launcher interleaves the ranks' output)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import dbl_ps.api as dbl


def main(mode: str, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = nn.Linear(4, 2 + (rank if mode == "models-differ" else 0))
    ranks = 3 if mode == "world-mismatch" else 2
    plan = dbl.plan_ranks(dbl.TimeModel(alpha=0.01, beta=0.001), batch_large=8, dataset_size=100, ranks=ranks)
    try:
        if mode == "dataset-short":
            sampler = dbl.ShareBatchSampler(60, dbl.rank_plan(plan, rank).shares, rank, 8, seed=0)
            list(sampler)
        else:
            dbl.ModelAverager(model, plan)
        result = "no error"
    except ValueError as exc:
        result = f"error: {exc}"
    (out / f"rank{rank}.txt").write_text(result)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]))
