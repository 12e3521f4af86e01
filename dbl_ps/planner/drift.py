"""Re-planning when the workers' measured speeds drift from the plan (mixed or shared
hardware), for DBSL and mixed-batch plans alike."""

from __future__ import annotations

import math
from collections.abc import Sequence

from dbl_ps.planner.dbsl import Plan, ResolutionPlan, plan_resolution
from dbl_ps.planner.mixed import plan_mixed_resolution
from dbl_ps.planner.time_model import TimeModel

# --------------------------------------------------------------------------- re-planning
#
# Re-planning when the workers' measured speed drifts from the plan (mixed hardware).
#
# The plan gives every worker the batch and share with which all finish an epoch
# together, from a time model per worker. On mixed or shared hardware the models drift:
# a noisy neighbour, thermal throttling, a slower GPU than the one calibrated. After an
# epoch each worker's measured training seconds are compared with the plan's prediction
# for it; when any worker is off by more than `threshold` (relative), every worker's
# time model is scaled by its own measured/predicted ratio (the slowdown of a device
# scales its fixed and per-sample costs alike) and the plan is made again from the
# scaled models with the same `small`, `tau` and largest batches.
#
# Pure functions of their inputs: every rank (or the launcher) given the same
# measurements computes the same new plan, so ranks agree without a second collective.
#
#     speeds = speed_factors(plan[r], measured_seconds)          # measured / predicted, per worker
#     if drifted(speeds, threshold=0.15):
#         plan = replan(plan, speeds)

# 15 %: above the epoch-to-epoch spread of a quiet machine (a few %), below the 1.5-2x of a
# slower device or a busy neighbour.
DEFAULT_THRESHOLD = 0.15


def speed_factors(rp: ResolutionPlan, measured_seconds: Sequence[float]) -> list[float]:
    """Each worker's measured training seconds over what the plan predicts for its share
    and batch at this resolution (> 1: slower than planned)."""
    if len(measured_seconds) != rp.workers:
        raise ValueError(f"{len(measured_seconds)} measured times for a plan of {rp.workers} workers")
    factors = []
    for i, seconds in enumerate(measured_seconds):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"measured seconds of worker {i} must be a positive number, got {seconds!r}")
        factors.append(float(seconds) / rp.predicted_epoch_seconds[i])  # its whole steps (and micro-batches)
    return factors


def drifted(factors: Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> bool:
    """Whether the workers' speeds relative to each other moved by more than `threshold`:
    factors all scaled alike (the whole machine slower) keep the plan balanced, so the
    factors are compared with their median, not with 1."""
    if not threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be > 0 (0.15 = re-plan at 15 % drift)")
    middle = sorted(factors)[len(factors) // 2]
    return any(abs(f / middle - 1.0) > threshold for f in factors)


def scaled_models(models: Sequence[TimeModel], factors: Sequence[float]) -> list[TimeModel]:
    """Worker i's time model with its fixed and per-sample costs both times `factors[i]`."""
    return [TimeModel(alpha=m.alpha * f, beta=m.beta * f) for m, f in zip(models, factors)]


def replan(plan: Plan, factors: Sequence[float]) -> Plan:
    """The plan made again from every resolution's time models scaled by the workers'
    speed factors (measured at one resolution; a device's slowdown applies to all)."""
    if len(factors) != plan.workers:
        raise ValueError(f"{len(factors)} speed factors for a plan of {plan.workers} workers")
    plans = {}
    for r, rp in plan.resolutions.items():
        plans[r] = plan_resolution(scaled_models(rp.time_models, factors), rp.batch_large, small=rp.small,
                                   tau=rp.tau, dataset_size=rp.dataset_size, resolution=r,
                                   min_small_batch=rp.min_small_batch, batch_small=rp.batch_small_request)
    return Plan(workers=plan.workers, small=plan.small, tau=plan.tau, dataset_size=plan.dataset_size,
                resolutions=plans)


def replan_any(plan: Plan, factors: Sequence[float]) -> Plan:
    """`replan` for every kind of plan: a mixed-batch plan is made again from the
    scaled time models with the same global batch and caps (samples and batch move between
    ranks; B, and with it the LR, stay), a DBSL plan as `replan` does."""
    if not any(rp.global_batch for rp in plan.resolutions.values()):
        return replan(plan, factors)
    if len(factors) != plan.workers:
        raise ValueError(f"{len(factors)} speed factors for a plan of {plan.workers} ranks")
    plans = {}
    for r, rp in plan.resolutions.items():
        if rp.global_batch is None:  # a mixed-batch plan has one at every resolution
            raise ValueError(f"resolution {r} of a mixed-batch plan has no global batch")
        plans[r] = plan_mixed_resolution(scaled_models(rp.time_models, factors), rp.global_batch, rp.dataset_size,
                                         caps=rp.memory_caps, resolution=r)
    return Plan(workers=plan.workers, small=0, tau=1.0, dataset_size=plan.dataset_size, resolutions=plans)
