"""The plan for mixed-batch data parallelism: one global batch split so every rank's step
takes the same time (`sync: mixed_batch`; `dbl_ps.api.plan_mixed_ranks`).

Pure functions, no torch. Ranks ``i = 1..W`` with ``t_i(b) = alpha_i + beta_i b`` share a
global batch ``B`` in every step; each rank's gradient is weighted by its share of it,
``g = sum_i b_i g_i / B`` (the gradient of the union batch), so the ranks must take the
same number of steps and the step takes as long as the slowest rank's ``t_i(b_i)``.

Equal step times ``t_i(b_i) = T`` with ``sum b_i = B`` give, in closed form (DESIGN.md)::

    T   = (B + sum_i alpha_i / beta_i) / sum_i (1 / beta_i)
    b_i = (T - alpha_i) / beta_i

That is the continuous answer; the plan needs integers ``b_i >= 1`` summing to ``B``, ranks
whose step costs the same at any batch (``beta_i = 0``, launch-bound), and memory caps: a
rank that holds at most ``m_i`` samples per forward/backward reaches ``b_i`` with
``k_i = ceil(b_i / m_i)`` micro-batches (gradient accumulation) and takes
``t_i(b) = k_i alpha_i + beta_i b``. All of these are one problem, solved exactly: the
smallest ``T`` at which the ranks can hold ``B`` between them, each rank taking the largest
batch it finishes within ``T`` (``_capacity``: non-decreasing in ``T``, so ``T`` is found by
bisection), then the ``B`` samples given out below that ``T`` and the rest to the ranks that
reach it, lowest rank first. Without caps and floors the batches are the closed form's,
rounded (tests check both).

Shares: every rank takes ``S = N // B`` steps per epoch, rank ``i`` the share ``S b_i``; the
``N mod B`` samples left over (fewer than one global batch, a different few every epoch:
the shares are drawn from a fresh permutation each epoch) sit that epoch out, as
``DistributedSampler(drop_last=True)`` does. Every step then has the full global batch,
so a rank's gradient weight ``b_i / B`` is the same in every step of an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Sequence

from dbl_ps.planner.dbsl import Plan, ResolutionPlan
from dbl_ps.planner.time_model import InfeasiblePlanError, TimeModel, apportion

__all__ = ["step_seconds", "micro_batches", "balanced_batches", "plan_mixed_resolution", "plan_mixed", "plan_lines",
           "split_line"]

_BISECTIONS = 200  # halvings of the step-time interval: far below float64's resolution of T


def step_seconds(model: TimeModel, batch: int, cap: int | None = None) -> float:
    """One step of `batch` samples on a rank holding at most `cap` per forward/backward
    (None: any): ``ceil(b / cap) alpha + beta b``."""
    micro = math.ceil(batch / cap) if cap else 1
    return micro * model.alpha + model.beta * batch


def micro_batches(batch: int, cap: int | None) -> int:
    """Forward/backward passes a rank needs for `batch` samples under `cap` (1 without one)."""
    return math.ceil(batch / cap) if cap else 1


def _capacity(model: TimeModel, cap: int | None, seconds: float, limit: int) -> int:
    """The largest batch (at most `limit`) the rank finishes within `seconds`; 0 if none."""
    if seconds < step_seconds(model, 1, cap):
        return 0
    if cap is None:
        if model.beta == 0:
            return limit
        return min(limit, math.floor((seconds - model.alpha) / model.beta + 1e-9))
    # k micro-batches hold up to k * cap samples and cost k alpha + beta b: the largest k with
    # room for more than (k - 1) * cap samples, then the largest b it allows.
    best = 0
    per_full = model.alpha + model.beta * cap
    k = max(1, math.floor(seconds / per_full) + 1) if per_full > 0 else math.ceil(limit / cap)
    for micro in (k - 1, k, k + 1):  # the float division above can be one off either way
        if micro < 1:
            continue
        room = seconds - micro * model.alpha
        if room < 0:
            continue
        most = micro * cap if model.beta == 0 else min(micro * cap, math.floor(room / model.beta + 1e-9))
        if most > (micro - 1) * cap:
            best = max(best, most)
    return min(best, limit)


def balanced_batches(models: Sequence[TimeModel], global_batch: int,
                     caps: Sequence[int | None] | None = None) -> list[int]:
    """Integer batches ``b_i >= 1`` summing to `global_batch` that minimise the slowest rank's
    step time ``max_i step_seconds(models[i], b_i, caps[i])`` (see the module doc)."""
    workers = len(models)
    caps = list(caps) if caps is not None else [None] * workers
    if len(caps) != workers:
        raise ValueError(f"{len(caps)} memory caps for {workers} ranks; give one per rank (null: no cap)")
    if not isinstance(global_batch, int) or isinstance(global_batch, bool) or global_batch < workers:
        raise InfeasiblePlanError(f"global batch {global_batch!r} is smaller than the {workers} ranks that share it "
                                  f"(every rank trains at least one sample per step); use a global batch >= {workers}")
    for i, cap in enumerate(caps):
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise ValueError(f"memory cap of rank {i} is {cap!r}; expected a whole number of samples >= 1 or null")

    def fits(seconds: float) -> list[int]:
        return [_capacity(m, c, seconds, global_batch) for m, c in zip(models, caps)]

    low = max(step_seconds(m, 1, c) for m, c in zip(models, caps))  # every rank takes at least one sample
    high = max(step_seconds(m, global_batch, c) for m, c in zip(models, caps))
    if sum(fits(low)) >= global_batch:
        high = low
    else:
        for _ in range(_BISECTIONS):
            middle = (low + high) / 2
            if middle <= low or middle >= high:
                break
            if sum(fits(middle)) >= global_batch:
                high = middle
            else:
                low = middle
    below, at = fits(low), fits(high)
    batches = [max(1, b) for b in below] if sum(below) < global_batch else [1] * workers
    # The rest goes to the ranks that can take more within the step time `high`, in proportion to
    # how much more each can take (ties in the slowest step time are spread, not piled on rank 0).
    rest = global_batch - sum(batches)
    room = [max(0, a - b) for a, b in zip(at, batches)]
    if rest > 0 and sum(room) >= rest:
        extra = apportion([r * rest / sum(room) for r in room], rest)
        batches = [b + e for b, e in zip(batches, extra)]
        rest = 0
    if rest != 0 or min(batches) < 1:  # the bisection's invariant guarantees neither; say so if broken
        raise RuntimeError(f"balanced_batches found no split of {global_batch} over {workers} ranks "
                           f"(batches {batches}); please report this with the time models")
    return batches


def plan_mixed_resolution(models: Sequence[TimeModel], global_batch: int, dataset_size: int, *,
                          caps: Sequence[int | None] | None = None, resolution: int | None = None) -> ResolutionPlan:
    """The mixed-batch plan of one resolution as a `ResolutionPlan` (what every runtime reads):
    `batches` the ranks' ``b_i``, `shares` ``S b_i`` with ``S = N // B`` steps for every rank,
    `merge_weights` the gradient weights ``b_i / B``, `micro_batches` the accumulation each
    rank needs under its memory cap, and the predicted epoch times against an equal split
    (`baseline_epoch_seconds`: ``B / W`` per rank, as stock DDP runs)."""
    workers = len(models)
    at = f" at {resolution} px" if resolution else ""
    if dataset_size < global_batch:
        raise InfeasiblePlanError(f"the global batch {global_batch}{at} is larger than the {dataset_size} training "
                                  f"samples: no full step fits an epoch; use a global batch <= {dataset_size}")
    caps = list(caps) if caps is not None else [None] * workers
    batches = balanced_batches(models, global_batch, caps)
    steps = dataset_size // global_batch
    shares = [steps * b for b in batches]
    micro = [micro_batches(b, c) for b, c in zip(batches, caps)]
    predicted = [steps * step_seconds(m, b, c) for m, b, c in zip(models, batches, caps)]
    even = [global_batch // workers + (1 if i < global_batch % workers else 0) for i in range(workers)]
    baseline = steps * max(step_seconds(m, b, c) for m, b, c in zip(models, even, caps))
    weights = [b / global_batch for b in batches]
    return ResolutionPlan(
        resolution=resolution, workers=workers, small=0, tau=1.0, dataset_size=dataset_size,
        time_models=tuple(models), batch_large=tuple(batches), baseline_epoch_seconds=baseline,
        epoch_seconds_exact=max(predicted), shares_exact=tuple(float(s) for s in shares), batch_small_exact=None,
        merge_weights_exact=tuple(weights), shares=tuple(shares), batch_small=None, batches=tuple(batches),
        merge_weights=tuple(weights), predicted_epoch_seconds=tuple(predicted), tau_range=None,
        global_batch=global_batch, micro_batches=tuple(micro), memory_caps=tuple(caps),
    )


def split_line(rp: ResolutionPlan) -> str:
    """One line on a mixed-batch plan: the split, the steps, the predicted step time against
    an equal split (what stock DDP would take)."""
    at = f" at {rp.resolution} px" if rp.resolution else ""
    steps = rp.steps()[0]
    accumulation = "" if not rp.micro_batches or max(rp.micro_batches) == 1 else \
        f" (micro-batches {'/'.join(map(str, rp.micro_batches))} under the memory caps)"
    dropped = rp.dataset_size - sum(rp.shares)
    left = f"; {dropped} samples a different few each epoch sit it out (N mod B)" if dropped else ""
    return (f"mixed batch{at}: global batch {rp.global_batch} split {'/'.join(map(str, rp.batches))} over "
            f"{rp.workers} ranks{accumulation}, {steps} steps per epoch{left}; predicted epoch "
            f"{rp.epoch_seconds:.3g} s against {rp.baseline_epoch_seconds:.3g} s with an equal split "
            f"({rp.epoch_seconds / rp.baseline_epoch_seconds:.2f}x)")


def plan_mixed(time_models: Mapping[int, TimeModel | Sequence[TimeModel]], global_batch: Mapping[int, int],
               workers: int, dataset_size: int, caps: Sequence[int | None] | None = None) -> Plan:
    """The mixed-batch plan of every resolution: `time_models[r]` one model for all ranks or one
    per rank, `global_batch[r]` the global batch B at that resolution, `caps` each rank's
    memory cap (samples per forward/backward, None: none) at every resolution."""
    if set(time_models) != set(global_batch):
        raise ValueError(f"time_models resolutions {sorted(time_models)} differ from global_batch resolutions "
                         f"{sorted(global_batch)}")
    plans = {}
    for r in sorted(time_models):
        given = time_models[r]
        models = [given] * workers if isinstance(given, TimeModel) else list(given)
        if len(models) != workers:
            raise ValueError(f"time_models at {r} px has {len(models)} entries; give one value or one per rank "
                             f"({workers})")
        plans[r] = plan_mixed_resolution(models, int(global_batch[r]), dataset_size, caps=caps, resolution=r)
    return Plan(workers=workers, small=0, tau=1.0, dataset_size=dataset_size, resolutions=plans)


def plan_lines(plan: Plan) -> list[str]:
    """What a run says about its plan at the start: the split of each mixed-batch resolution,
    DBSL's regime lines, and batches above their share."""
    return [split_line(rp) for rp in plan.resolutions.values() if rp.global_batch] + plan.regime_lines()
