"""A worker's epoch in numbers: after which local steps it syncs, the (batch, resolution,
dropout) shapes it trains, and the seed of its random draws. Pure functions of the plan,
the schedule and the config's values."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dbl_ps.planner import Plan
from dbl_ps.schedule import ScheduleSpec

__all__ = ["sync_boundaries", "epoch_seed", "warm_up_shapes"]


def sync_boundaries(steps: int, sync_every: int | str, mode: str, all_steps: Sequence[int]) -> list[int]:
    """Local step counts after which a worker with `steps` steps this epoch pushes.

    `mini_epoch`: once, at the end. Every `k` steps in asp/ssp: after k, 2k, ... and at
    the end. In bsp every worker must push the same number of times per epoch (a
    round needs all of them), so there are `S = ceil(max(all_steps) / k)` pushes,
    spread evenly over each worker's own steps (`ceil(j * steps / S)`, j = 1..S).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if sync_every == "mini_epoch":
        return [steps]
    k = int(sync_every)
    if mode == "bsp":
        rounds = max(1, math.ceil(max(all_steps) / k))
        return [math.ceil(j * steps / rounds) for j in range(1, rounds + 1)]
    points = list(range(k, steps, k))
    return points + [steps]


def epoch_seed(seed: int, worker: int, epoch: int, member: int = 0) -> int:
    """Seed of a worker's torch RNG (dropout) for one epoch: a function of
    (seed, worker, epoch) only, so a resumed run draws exactly what the
    uninterrupted one drew. `member`: the rank inside a worker group of several
    ranks (FSDP), each drawing for its own slice of the batch; member 0 draws what
    a one-rank worker draws, in every mode."""
    words = [seed, 1_000_003, worker, epoch] + ([member] if member else [])
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def warm_up_shapes(plan: Plan, spec: ScheduleSpec, worker: int) -> list[tuple[int, int, float]]:
    """Every (batch, resolution, dropout) worker `worker` trains with: its planned batch and the
    last partial batch of its share, at each resolution of the schedule with that resolution's
    dropout rate (a compiled graph is specialised on the rate, so it is part of the shape)."""
    shapes = []
    for r, p in zip(spec.resolutions, spec.dropout_rates):
        rp = plan[r]
        batch, share = rp.batches[worker], rp.shares[worker]
        shapes.append((min(batch, share), r, p))
        if share > batch and share % batch:
            shapes.append((share % batch, r, p))
    return shapes
