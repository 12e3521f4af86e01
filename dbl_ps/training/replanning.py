"""Re-planning between epochs (`dbl.replan`), from the workers' reports of one epoch.

`replan_after_epoch` is a pure function of the plan the epoch ran with and its
`EpochReport`s: each worker's own training time (`seconds - wait_seconds`: the epoch
without the time it waited for the others at syncs) against what the plan predicts for
its share and batch gives its speed factor (`dbl_ps.planner.speed_factors`); when the
factors drifted apart by more than the threshold, the plan is made again from the
scaled time models. Whoever holds every report of an epoch (the store mode's launcher,
every rank after gathering them) computes the same decision, the same new plan and the
same metrics record.

The record goes into metrics.jsonl next to the epoch's record (`"event": "replan"`, no
`test_acc`, so readers of the evaluation records skip it):

    epoch                 the epoch whose reports were measured
    event                 "replan"
    measured_resolution   that epoch's resolution (the factors apply to every resolution)
    threshold             dbl.replan_threshold
    train_seconds         each worker's own training seconds of the epoch
    factors               each worker's measured / planned seconds
    old, new              {px: {"shares", "batches", "merge_weights"}} before and after
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from dbl_ps.planner import InfeasiblePlanError, Plan, drifted, replan_any, speed_factors
from dbl_ps.training.messages import EpochReport

__all__ = ["Replanned", "replan_after_epoch", "plan_shapes"]


@dataclass(frozen=True)
class Replanned:
    plan: Plan  # the new plan
    record: dict[str, Any]  # its metrics record (without `epoch`, which the logger adds)
    line: str  # one console line


def plan_shapes(plan: Plan) -> dict[str, dict[str, list[Any]]]:
    """Each resolution's shares, batches and merge weights, as a record holds them."""
    return {str(r): {"shares": list(rp.shares), "batches": list(rp.batches), "merge_weights": list(rp.merge_weights)}
            for r, rp in plan.resolutions.items()}


def replan_after_epoch(epoch: int, plan: Plan, reports: Sequence[EpochReport], threshold: float,
                       log: Callable[[str], None] = lambda _: None) -> Replanned | None:
    """The new plan when the workers' speeds in `epoch` (one report per worker, in worker
    order, all trained with `plan`) drifted apart by more than `threshold`; else None, also
    when the scaled time models allow no plan (e.g. tau out of their range: training goes on
    as planned, and `log` hears why)."""
    if [r.worker for r in reports] != list(range(plan.workers)):
        raise ValueError(f"one report per worker in order 0..{plan.workers - 1} expected, got workers "
                         f"{[r.worker for r in reports]}")
    resolution = reports[0].resolution
    train_seconds = [r.seconds - r.wait_seconds for r in reports]
    factors = speed_factors(plan[resolution], train_seconds)
    if not drifted(factors, threshold):
        return None
    try:
        new = replan_any(plan, factors)
    except InfeasiblePlanError as exc:
        log(f"re-planning after epoch {epoch + 1} found no feasible plan ({exc}); keeping the plan")
        return None
    record = {"event": "replan", "measured_resolution": resolution, "threshold": threshold,
              "train_seconds": train_seconds, "factors": factors, "old": plan_shapes(plan), "new": plan_shapes(new)}
    old_rp, new_rp = plan[resolution], new[resolution]

    def per_worker(values: Iterable[Any]) -> str:
        return "/".join(str(v) for v in values)

    # epochs counted from 1, as on the console
    line = (f"re-planned after epoch {epoch + 1}: workers took {per_worker(f'{f:.2f}x' for f in factors)} of their "
            f"planned time at {resolution} px (drift > {threshold:.0%}); shares {per_worker(old_rp.shares)} -> "
            f"{per_worker(new_rp.shares)}, batches {per_worker(old_rp.batches)} -> {per_worker(new_rp.batches)}")
    return Replanned(new, record, line)
