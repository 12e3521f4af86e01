"""One rank's view of a plan (`RankPlan`), and the error of the public API: pure, shared by
`dbl_ps.api` (DBSL in your own loop) and `dbl_ps.mixed_api` (mixed-batch data parallelism)."""

from __future__ import annotations

from dataclasses import dataclass

from dbl_ps.planner import Plan

__all__ = ["APIError", "RankPlan", "rank_plan"]


class APIError(ValueError):
    """A call of the public API with inputs that cannot work (one message naming them)."""


@dataclass(frozen=True)
class RankPlan:
    """One rank's part of a plan at one resolution."""

    rank: int
    resolution: int
    batch: int
    share: int
    shares: tuple[int, ...]  # every rank's, for ShareBatchSampler
    merge_weight: float
    steps: int
    all_steps: tuple[int, ...]
    predicted_seconds: float


def rank_plan(plan: Plan, rank: int, resolution: int | None = None) -> RankPlan:
    """Rank `rank`'s batch, share, merge weight and steps at `resolution` (default: the only
    or the first resolution of the plan)."""
    r = next(iter(plan.resolutions)) if resolution is None else resolution
    if r not in plan.resolutions:
        raise APIError(f"the plan has no resolution {r} (it has {list(plan.resolutions)})")
    if not 0 <= rank < plan.workers:
        raise APIError(f"rank {rank} is outside the plan's ranks 0..{plan.workers - 1}")
    rp = plan[r]
    return RankPlan(rank=rank, resolution=r, batch=rp.batches[rank], share=rp.shares[rank], shares=tuple(rp.shares),
                    merge_weight=rp.merge_weights[rank], steps=rp.steps()[rank], all_steps=tuple(rp.steps()),
                    predicted_seconds=rp.predicted_epoch_seconds[rank])
