"""The dual-batch plan (DBSL) of every resolution, the paper's formulas and their mixed-hardware
form (see `dbl_ps.planner`), with the plan's types (`ResolutionPlan`, `Plan`) and what its small
batch means on a device (`Regime`, `dual_batch_regime`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbl_ps.planner.time_model import (InfeasiblePlanError, TimeModel, _check_int, _down, _up, _where,
                                       apportion)


@dataclass(frozen=True)
class ResolutionPlan:
    """The plan of one resolution: exact (real-valued) and rounded (what runtimes use).

    Per-worker lists are indexed by worker id; workers ``0 .. small-1`` are small.
    """

    resolution: int | None
    workers: int
    small: int
    tau: float
    dataset_size: int
    time_models: tuple[TimeModel, ...]
    batch_large: tuple[int, ...]
    baseline_epoch_seconds: float  # T0: load-balanced all-large epoch time
    epoch_seconds_exact: float  # T: every worker's exact predicted epoch time
    shares_exact: tuple[float, ...]
    batch_small_exact: float | None
    merge_weights_exact: tuple[float, ...]
    shares: tuple[int, ...]
    batch_small: int | None
    batches: tuple[int, ...]
    merge_weights: tuple[float, ...]
    predicted_epoch_seconds: tuple[float, ...]  # rounded plan, whole steps
    tau_range: tuple[float, float] | None  # feasible [tau_min, tau_max] for this n_S (None if n_S=0)
    min_small_batch: int = 1  # the floor the small batch was planned with
    batch_small_request: int | float | None = None  # the user's choice (dbl.batch_small), None = planned
    small_batch_source: str = "formula"  # the paper's formula | chosen (batch_small) | reference (no fixed cost)
    # A mixed-batch plan (`dbl_ps.planner.mixed`: one global batch split so every rank's step takes
    # the same time; merge weights are gradient weights b_i / B); None: a DBSL plan.
    global_batch: int | None = None
    micro_batches: tuple[int, ...] | None = None  # mixed batch: forward/backward passes per step under a memory cap
    memory_caps: tuple[int | None, ...] | None = None  # mixed batch: each rank's cap (None: none)

    @property
    def d_large(self) -> int:
        """Share of the first large worker (all large workers when hardware is uniform)."""
        return self.shares[self.small] if self.small < self.workers else 0

    @property
    def d_small(self) -> int | None:
        """Share of worker 0 when it is small (largest-remainder rounding may give others one less)."""
        return self.shares[0] if self.small else None

    @property
    def epoch_seconds(self) -> float:
        """Predicted wall time of one global epoch with the rounded plan (slowest worker)."""
        return max(self.predicted_epoch_seconds)

    def steps(self) -> list[int]:
        """Training steps per epoch of each worker: ``ceil(d_i / b_i)``."""
        return [math.ceil(d / b) for d, b in zip(self.shares, self.batches)]

    @property
    def small_fraction(self) -> float | None:
        """``b_S / B_L`` (the small workers' smallest ``B_L``); None without small workers."""
        return self.batch_small / min(self.batch_large[: self.small]) if self.batch_small else None

    def regime(self) -> "Regime | None":
        """What this plan's small batch is on this device (``dual_batch_regime``)."""
        return dual_batch_regime(self)

    def to_dict(self) -> dict[str, Any]:
        regime = self.regime()  # None without small workers
        return {
            "resolution": self.resolution,
            "workers": self.workers,
            "small": self.small,
            "tau": self.tau,
            "dataset_size": self.dataset_size,
            "time_models": [{"alpha": m.alpha, "beta": m.beta, "r2": m.r2} for m in self.time_models],
            "batch_large": list(self.batch_large),
            "batch_small": self.batch_small,
            "shares": list(self.shares),
            "batches": list(self.batches),
            "steps": self.steps(),
            "merge_weights": list(self.merge_weights),
            "predicted_epoch_seconds": list(self.predicted_epoch_seconds),
            "baseline_epoch_seconds": self.baseline_epoch_seconds,
            "tau_range": list(self.tau_range) if self.tau_range else None,
            "min_small_batch": self.min_small_batch,
            "batch_small_request": self.batch_small_request,
            "small_batch_source": self.small_batch_source if self.small else None,
            "small_fraction": self.small_fraction,
            "regime": regime.to_dict() if regime is not None else None,
            "global_batch": self.global_batch,
            "micro_batches": list(self.micro_batches) if self.micro_batches else None,
            "memory_caps": list(self.memory_caps) if self.memory_caps else None,
            "exact": {
                "shares": list(self.shares_exact),
                "batch_small": self.batch_small_exact,
                "merge_weights": list(self.merge_weights_exact),
                "epoch_seconds": self.epoch_seconds_exact,
            },
        }


def feasible_tau_range(
    time_models: Sequence[TimeModel],
    batch_large: Sequence[int],
    small: int,
    dataset_size: int,
    min_small_batch: int = 1,
) -> tuple[float, float, float]:
    """``(tau_min, tau_max, tau_no_data)`` for ``small >= 1`` small workers.

    With ``S_L = sum_large 1/c_i``, ``s(b) = sum_small 1 / (beta_j + alpha_j / b)`` and
    ``B = min_small B_L,j``: small workers need ``b_S <= B`` (``tau >= N / (T0 (S_L + s(B)))``,
    which is 1 on uniform hardware), ``b_S >= b_min = min_small_batch`` (``tau <= N / (T0 (S_L +
    s(b_min)))``; ``b_S`` falls as ``tau`` grows), and data at all (``tau < N / (T0 S_L)``,
    ``W / n_L`` on uniform hardware; inf if n_L = 0).
    """
    n = dataset_size
    inv_c = [1.0 / m.sample_seconds(b) for m, b in zip(time_models, batch_large)]
    t0 = n / sum(inv_c)
    s_large = sum(inv_c[small:])
    b_cap = min(batch_large[:small])
    s_cap = sum(1.0 / m.sample_seconds(b_cap) for m in time_models[:small])
    s_floor = sum(1.0 / m.sample_seconds(min_small_batch) for m in time_models[:small])
    tau_min = max(1.0, n / (t0 * (s_large + s_cap)))  # >= 1 exactly; max() drops float noise
    tau_max = max(tau_min, n / (t0 * (s_large + s_floor)))
    tau_no_data = n / (t0 * s_large) if s_large > 0 else math.inf
    return tau_min, tau_max, tau_no_data


def _same_models(models: Sequence[TimeModel]) -> bool:
    return all(m.alpha == models[0].alpha and m.beta == models[0].beta for m in models)


def _solve_batch_small(models: Sequence[TimeModel], t: float, data_small: float, b_cap: int) -> float:
    """Solve ``sum_j t / (beta_j + alpha_j / b) = data_small`` for ``b`` in ``[1, b_cap]``."""
    if _same_models(models):
        d_s = data_small / len(models)
        return models[0].alpha / (t / d_s - models[0].beta)  # the paper's closed form
    lo, hi = 1.0, float(b_cap)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if sum(t / m.sample_seconds(mid) for m in models) < data_small:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# A small worker whose fixed cost per step is below this many samples' cost has "no fixed
# cost": a smaller batch costs (almost) no time, so its time model cannot choose b_S.
NO_FIXED_COST_SAMPLES = 1.0


def _chosen_small_batch(batch_small: int | float | None, b_cap: int, resolution: int | None) -> int | None:
    """The chosen small batch as a size: an integer ``1..b_cap`` as it is, a fraction in (0, 1)
    of ``b_cap`` rounded to the nearest size (at least 1)."""
    if batch_small is None:
        return None
    where = _where(resolution)
    if isinstance(batch_small, bool) or not isinstance(batch_small, (int, float)) or not math.isfinite(batch_small) \
            or batch_small <= 0:
        raise ValueError(f"batch_small={batch_small!r}{where} must be a batch size (an integer >= 1) or a "
                         f"fraction of B_L in (0, 1)")
    if batch_small < 1:
        return max(1, round(batch_small * b_cap))
    if batch_small != int(batch_small):
        raise ValueError(f"batch_small={batch_small!r}{where} must be a whole batch size, or a fraction of B_L "
                         f"in (0, 1)")
    if batch_small > b_cap:
        raise InfeasiblePlanError(f"batch_small={int(batch_small)}{where} is above the small workers' largest batch "
                                  f"B_L={b_cap}; use 1..{b_cap} or a fraction of B_L in (0, 1)")
    return int(batch_small)


def reference_small_fraction(workers: int, small: int, tau: float) -> float:
    """``b_S / B_L`` of the authors' own plan for ``small`` of ``workers`` at ``tau``: their GTX
    1080 CIFAR time model at 32 px (``alpha/beta = 31`` samples against ``B_L = 560``). The
    fraction depends only on ``rho = alpha / (beta B_L)``, ``W``, ``n_S`` and ``tau``::

        b_S / B_L = rho / (tau (1 + rho) n_S / (W - n_L tau) - 1)

    The planner uses it where a device's own time model cannot choose (no fixed cost per step)."""
    model, b_large = PAPER_TIME_MODELS["cifar"][32], PAPER_BATCH_LARGE["cifar"][32]
    rho = model.alpha / (model.beta * b_large)
    room = workers - (workers - small) * tau  # W - n_L tau > 0 when the small workers get data
    if small == 0 or room <= 0:
        raise ValueError(f"no reference small batch for n_S={small} of {workers} at tau={tau:g}")
    return min(1.0, rho / (tau * (1 + rho) * small / room - 1))


def epoch_time_ratio(time_models: Sequence[TimeModel], batch_large: Sequence[int], small: int,
                     dataset_size: int, batch_small: float) -> float:
    """``T / T0`` when the small workers train at ``batch_small`` and every worker finishes
    together: the ``tau`` that small batch needs."""
    n = dataset_size
    inv_c = [1.0 / m.sample_seconds(b) for m, b in zip(time_models, batch_large)]
    t0 = n / sum(inv_c)
    t = n / (sum(inv_c[small:]) + sum(1.0 / m.sample_seconds(batch_small) for m in time_models[:small]))
    return t / t0


def plan_resolution(
    time_models: Sequence[TimeModel],
    batch_large: Sequence[int],
    *,
    small: int,
    tau: float,
    dataset_size: int,
    resolution: int | None = None,
    min_small_batch: int = 1,
    batch_small: int | float | None = None,
) -> ResolutionPlan:
    """Plan one resolution for ``W = len(time_models)`` workers (formulas in the module doc).

    ``time_models[i]`` and ``batch_large[i]`` describe worker ``i``; workers
    ``0 .. small-1`` train with the small batch, which must be at least
    ``min_small_batch`` (a floor beyond the paper: its plan gives batch 4-5 against 128-256
    when the fixed cost per step is small, far from the large workers' batch at the same
    LR and too few images for BatchNorm's batch statistics). ``batch_small`` chooses the
    small batch instead of the formula: a size, or a fraction of ``B_L`` in (0, 1); the
    shares are then planned so every worker finishes together within ``tau``. Where the
    small workers' time model has no fixed cost (``alpha`` below one sample's cost ``beta``), the
    plan takes ``reference_small_fraction``. Raises ``InfeasiblePlanError`` naming the input
    to change and its feasible range, ``ValueError`` for malformed input.
    """
    workers = len(time_models)
    _check_int("workers", workers, 1)
    if len(batch_large) != workers:
        raise ValueError(f"batch_large has {len(batch_large)} entries for {workers} workers{_where(resolution)}")
    if not all(type(b) is int and b >= 1 for b in batch_large):  # one pass; the message names the first bad one
        for i, b in enumerate(batch_large):
            _check_int(f"batch_large[{i}]{_where(resolution)}", b, 1)
    _check_int("small", small, 0, workers)
    _check_int("dataset_size", dataset_size, workers)
    _check_int("min_small_batch", min_small_batch, 1)
    if small and min_small_batch > min(batch_large[:small]):
        raise InfeasiblePlanError(
            f"min_small_batch={min_small_batch} is above the largest batch {min(batch_large[:small])} of the small "
            f"workers{_where(resolution)}; use min_small_batch <= {min(batch_large[:small])} or small=0"
        )
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 1):
        raise ValueError(f"tau={tau!r} must be a number >= 1 (1.05 = 5 % more time than all-large training)")
    for i, m in enumerate(time_models if not _same_models(time_models) else time_models[:1]):
        if m.alpha < 0:
            raise InfeasiblePlanError(
                f"worker {i}{_where(resolution)}: alpha={m.alpha:g} < 0 is no time model a device can have (a "
                f"free fit through noise); refit with alpha, beta >= 0 (fit_nonnegative_time_model, as "
                f"`dbl-ps calibrate` and measure_time_model do)"
            )
        if m.sample_seconds(batch_large[i]) <= 0:
            raise ValueError(
                f"worker {i}{_where(resolution)}: alpha={m.alpha:g}, beta={m.beta:g} give a step time "
                f"<= 0 at batch {batch_large[i]}; recalibrate"
            )
    n = dataset_size
    c = [m.sample_seconds(b) for m, b in zip(time_models, batch_large)]
    t0 = n / sum(1.0 / ci for ci in c)

    tau_range: tuple[float, float] | None = None
    source, chosen = "formula", None
    if small == 0:
        t, shares_exact, b_small_exact = t0, [t0 / ci for ci in c], None
    else:
        b_cap = min(batch_large[:small])
        tau_min, tau_max, tau_no_data = feasible_tau_range(time_models, batch_large, small, n, min_small_batch)
        tau_range = (tau_min, tau_max)
        if tau >= tau_no_data:
            raise InfeasiblePlanError(
                f"tau={tau:g} leaves no data for small workers with n_S={small}{_where(resolution)}; "
                f"use tau < {_down(tau_no_data)} or more small workers"
            )
        chosen = _chosen_small_batch(batch_small, b_cap, resolution)
        if chosen is not None:
            source = "chosen"
        elif all(m.alpha < NO_FIXED_COST_SAMPLES * m.beta for m in time_models[:small]):
            # A smaller batch costs (almost) no time: the formula's b_S is 1 or below and says nothing.
            chosen, source = _reference_batch(time_models, batch_large, small, n, tau, min_small_batch,
                                              tau_min, resolution), "reference"
        if chosen is not None:
            t, shares_exact = _equal_finish_within(time_models, batch_large, c, small, n, tau, t0, chosen, resolution)
            b_small_exact = float(chosen)
        else:
            t, shares_exact, b_small_exact = _formula_split(time_models, c, small, n, tau, t0, tau_range,
                                                            b_cap, min_small_batch, resolution)

    shares = apportion(shares_exact, n)
    if min(shares) < 1:
        worker = shares.index(min(shares))
        raise InfeasiblePlanError(
            f"worker {worker}{_where(resolution)} gets no data (dataset_size={n}, tau={tau:g}, small={small}); "
            f"use a larger dataset_size or a tau closer to 1"
        )
    if b_small_exact is None:
        b_small = None
    elif chosen is not None:
        b_small = chosen
    else:
        b_small = min(max(round(b_small_exact), min_small_batch), min(batch_large[:small]))
    # b_small is None only without small workers (n_S = 0)
    batches = ([] if b_small is None else [b_small] * small) + list(batch_large[small:])

    def weights(values: Sequence[float]) -> list[float]:
        ref_values = values[small:] if small < workers else values
        ref = sum(ref_values) / len(ref_values)
        return [v / ref for v in values]

    predicted = [m.epoch_seconds_whole_steps(d, b) for m, d, b in zip(time_models, shares, batches)]
    return ResolutionPlan(
        resolution=resolution,
        workers=workers,
        small=small,
        tau=float(tau),
        dataset_size=n,
        time_models=tuple(time_models),
        batch_large=tuple(batch_large),
        baseline_epoch_seconds=t0,
        epoch_seconds_exact=t,
        shares_exact=tuple(shares_exact),
        batch_small_exact=b_small_exact,
        merge_weights_exact=tuple(weights(shares_exact)),
        shares=tuple(shares),
        batch_small=b_small,
        batches=tuple(batches),
        merge_weights=tuple(weights(shares)),
        predicted_epoch_seconds=tuple(predicted),
        tau_range=tau_range,
        min_small_batch=min_small_batch,
        batch_small_request=batch_small if small else None,
        small_batch_source=source,
    )


def _formula_split(time_models: Sequence[TimeModel], c: Sequence[float], small: int, n: int, tau: float, t0: float,
                   tau_range: tuple[float, float], b_cap: int, min_small_batch: int,
                   resolution: int | None) -> tuple[float, list[float], float]:
    """The paper's plan: every worker's epoch takes ``T = tau T0``; the large workers' shares
    follow, and ``b_S`` is the batch with which the small ones train the rest in ``T``.
    Returns ``(T, shares, b_S)`` (exact, before rounding)."""
    tau_min, tau_max = tau_range
    if tau > tau_max * (1 + 1e-12):
        raise InfeasiblePlanError(
            f"tau={tau:g} needs a small batch below {min_small_batch} (min_small_batch) with n_S={small}"
            f"{_where(resolution)}; use {_up(tau_min)} <= tau <= {_down(tau_max)}, a lower min_small_batch, "
            f"more small workers, or choose the small batch (batch_small)"
        )
    if tau < tau_min * (1 - 1e-12):
        raise InfeasiblePlanError(
            f"tau={tau:g} needs a small batch above the largest batch {b_cap} "
            f"with n_S={small}{_where(resolution)}; use {_up(tau_min)} <= tau <= {_down(tau_max)}"
        )
    t = tau * t0
    large_exact = [t / ci for ci in c[small:]]
    data_small = n - sum(large_exact)
    b_small = _solve_batch_small(time_models[:small], t, data_small, b_cap)
    b_small = min(max(b_small, float(min_small_batch)), float(b_cap))  # float noise at the bounds
    if _same_models(time_models[:small]):
        small_exact = [data_small / small] * small
    else:
        small_exact = [t / m.sample_seconds(b_small) for m in time_models[:small]]
    return t, small_exact + large_exact, b_small


def _equal_finish_within(time_models: Sequence[TimeModel], batch_large: Sequence[int], c: Sequence[float],
                         small: int, n: int, tau: float, t0: float, batch_small: int,
                         resolution: int | None) -> tuple[float, list[float]]:
    """``(T, shares)`` when the small workers train at ``batch_small`` and every worker finishes
    at ``T``: ``d_i = T / (beta_i + alpha_i / b_i)``, summing to ``N``; ``T <= tau T0`` or an
    error naming the smallest batch that fits."""
    small_speed = [1.0 / m.sample_seconds(batch_small) for m in time_models[:small]]
    large_speed = [1.0 / ci for ci in c[small:]]
    t = n / (sum(small_speed) + sum(large_speed))
    if t > tau * t0 * (1 + 1e-12):
        raise InfeasiblePlanError(_chosen_too_small(time_models, batch_large, small, n, tau, batch_small,
                                                    t / t0, resolution))
    return t, [t * v for v in small_speed + large_speed]


def _reference_batch(time_models: Sequence[TimeModel], batch_large: Sequence[int], small: int, n: int, tau: float,
                     min_small_batch: int, tau_min: float, resolution: int | None) -> int:
    """The small batch of a device with no fixed cost per step: the authors' fraction of
    ``B_L`` (``reference_small_fraction``), raised where mixed hardware needs a larger one to
    fit ``tau``."""
    b_cap = min(batch_large[:small])
    reference = max(min_small_batch, round(reference_small_fraction(len(time_models), small, tau) * b_cap))
    batch = _smallest_fitting_batch(time_models, batch_large, small, n, tau, min(b_cap, reference))
    if batch > b_cap:
        raise InfeasiblePlanError(f"tau={tau:g} needs a small batch above the largest batch {b_cap} with "
                                  f"n_S={small}{_where(resolution)}; use tau >= {_up(tau_min)}")
    return batch


def _smallest_fitting_batch(time_models: Sequence[TimeModel], batch_large: Sequence[int], small: int, n: int,
                            tau: float, start: int) -> int:
    """The smallest batch ``>= start`` with which every worker finishes together within ``tau``
    (the time ratio falls as the batch grows; bisection); ``start`` when it fits, ``B_L + 1``
    when no batch up to the small workers' ``B_L`` does."""
    def fits(b: int) -> bool:
        return epoch_time_ratio(time_models, batch_large, small, n, b) <= tau * (1 + 1e-12)

    lo, hi = start, min(batch_large[:small])
    if fits(lo):
        return lo
    if not fits(hi):
        return hi + 1
    while hi - lo > 1:  # invariant: lo does not fit, hi does
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _chosen_too_small(time_models: Sequence[TimeModel], batch_large: Sequence[int], small: int, n: int, tau: float,
                      chosen: int, needed_tau: float, resolution: int | None) -> str:
    """The error for a chosen small batch that does not fit ``tau``: the smallest that does."""
    b_cap = min(batch_large[:small])
    fits = _smallest_fitting_batch(time_models, batch_large, small, n, tau, chosen)
    smallest = f"batch_small >= {fits}" if chosen < fits <= b_cap else f"batch_small = {b_cap}"
    return (f"batch_small={chosen}{_where(resolution)} with n_S={small} needs tau >= {_up(needed_tau)} for every "
            f"worker to finish together (tau={tau:g}): a smaller batch is slower per sample; use {smallest}, "
            f"tau >= {_up(needed_tau)}, or fewer small workers")


# --------------------------------------------------------------------------- the regime


TINY_FRACTION = 0.1  # b_S below this fraction of B_L: "a few samples per step"
AUTHORS_BEST = "27-51 %"  # b_S / B_L of the authors' best CIFAR-100 plans (n_S 3-4 of 4, tau 1.05-1.1)


@dataclass(frozen=True)
class Regime:
    """What a plan's small batch is on this device, in one line (``message``).

    ``kind``: ``dual-batch`` (the time model makes a real dual batch), ``tiny-batch``
    (``alpha/beta`` far below ``B_L``: ``b_S`` a few samples), ``launch-bound``
    (``alpha/beta >= B_L``: ``b_S`` set by the data split, near ``B_L``), ``no-fixed-cost``
    (``alpha`` about 0: the reference fraction was taken), ``chosen`` (``batch_small``)."""

    kind: str
    resolution: int | None
    batch_small: int
    batch_large: int
    fraction: float
    alpha_over_beta: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "batch_small": self.batch_small, "batch_large": self.batch_large,
                "fraction": self.fraction,
                "alpha_over_beta": self.alpha_over_beta if math.isfinite(self.alpha_over_beta) else None,
                "message": self.message}


def dual_batch_regime(rp: ResolutionPlan) -> Regime | None:
    """Classify a plan's small batch by ``b_S / B_L`` and ``alpha/beta`` (of worker 0, a small
    worker) and say in one line what DBSL will and will not do with it; None when ``n_S = 0``."""
    if not rp.small or rp.batch_small is None:
        return None
    model = rp.time_models[0]
    b, b_large = rp.batch_small, min(rp.batch_large[: rp.small])
    fraction = b / b_large
    ratio = model.alpha / model.beta if model.beta > 0 else math.inf
    at = f"DBSL{_where(rp.resolution)}: b_S = {b} of B_L {b_large} ({fraction:.0%})"
    ab = f"alpha/beta = {ratio:.3g} samples"
    if rp.small_batch_source == "chosen":
        kind = "chosen"
        time_ratio = rp.epoch_seconds_exact / rp.baseline_epoch_seconds
        message = (f"{at}, chosen with dbl.batch_small; {ab}: the shares are planned so every worker finishes "
                   f"together, in {time_ratio:.3f}x the all-large epoch time (tau {rp.tau:g})")
    elif rp.small_batch_source == "reference":
        kind = "no-fixed-cost"
        message = (f"{at}; {ab}: a smaller batch costs no time on this device, so the time model cannot choose "
                   f"b_S (the formula drives it below 1); planned at the fraction the authors' GTX 1080 time "
                   f"model gives for n_S={rp.small} of {rp.workers} at tau {rp.tau:g}; choose another with "
                   f"dbl.batch_small (batch_small= in the API)")
    elif ratio >= b_large:
        kind = "launch-bound"
        quarter = max(1, b_large // 4)
        needed = epoch_time_ratio(rp.time_models, rp.batch_large, rp.small, rp.dataset_size, quarter)
        message = (f"{at}; {ab} >= B_L: a step costs about the same at any batch here (launch-bound), so b_S is "
                   f"set by the data split (about d_S/d_L x B_L / tau) and DBSL is close to all-large training "
                   f"with less data on the small workers; a smaller b_S costs time in proportion "
                   f"(b_S = {quarter} needs tau >= {_up(needed)})")
    elif fraction < TINY_FRACTION:
        kind = "tiny-batch"
        message = (f"{at}; {ab}, small against B_L: a step's fixed cost is small on this device, so the formula "
                   f"gives the small workers about 1.75 alpha/beta samples per step, far noisier than the authors' "
                   f"plans ({AUTHORS_BEST} of B_L); more small workers raise it, or choose it with dbl.batch_small "
                   f"(batch_small= in the API; e.g. 0.25: the shares still fit tau)")
    else:
        kind = "dual-batch"
        message = f"{at}; {ab}: a real dual-batch plan (the authors' best plans: {AUTHORS_BEST} of B_L)"
    return Regime(kind=kind, resolution=rp.resolution, batch_small=b, batch_large=b_large, fraction=fraction,
                  alpha_over_beta=ratio, message=message)


@dataclass(frozen=True)
class Plan:
    """Plans of every resolution of a run (one entry without CPL), lowest resolution first."""

    workers: int
    small: int
    tau: float
    dataset_size: int
    resolutions: dict[int, ResolutionPlan] = field(default_factory=dict)

    def __getitem__(self, resolution: int) -> ResolutionPlan:
        return self.resolutions[resolution]

    def regime_lines(self) -> list[str]:
        """One line per resolution on what the small batch is on this device (none when n_S = 0),
        and one per resolution where a batch is larger than its worker's share (`batch_lines`)."""
        lines = [reg.message for reg in (rp.regime() for rp in self.resolutions.values()) if reg is not None]
        return lines + self.batch_lines()

    def batch_lines(self) -> list[str]:
        """One line per resolution where a worker's planned batch is larger than its share of
        the data: it then takes one step of its whole share per epoch, not the batch the plan
        names (B_L above the data set, or a share cut small by a slow device)."""
        lines = []
        for r, rp in self.resolutions.items():
            over = [(w, b, d) for w, (b, d) in enumerate(zip(rp.batches, rp.shares)) if d and b > d]
            if not over:
                continue
            named = ", ".join(f"worker {w}: batch {b} > share {d}" for w, b, d in over)
            at = f" at {r} px" if r else ""
            lines.append(f"batch above the share{at} ({named} of {rp.dataset_size} samples): such a worker takes "
                         f"one step of its whole share per epoch; lower dbl.batch_large (B_L "
                         f"{max(rp.batch_large)}) or use fewer workers")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready. Top-level lists are per resolution (order of ``resolutions``);
        ``d_large``/``batch_large`` are those of the first large worker and
        ``d_small``/``batch_small`` of worker 0 (None without small workers); the full
        per-worker plan is under ``per_resolution``."""
        plans = list(self.resolutions.values())
        return {
            "workers": self.workers,
            "small": self.small,
            "small_workers": list(range(self.small)),
            "tau": self.tau,
            "dataset_size": self.dataset_size,
            "resolutions": list(self.resolutions),
            "d_large": [p.d_large if p.small < p.workers else None for p in plans],
            "d_small": [p.d_small for p in plans],
            "batch_large": [p.batches[p.small] if p.small < p.workers else None for p in plans],
            "batch_small": [p.batch_small for p in plans],
            "small_fraction": [p.small_fraction for p in plans],
            "predicted_epoch_seconds": [p.epoch_seconds for p in plans],
            "baseline_epoch_seconds": [p.baseline_epoch_seconds for p in plans],
            "per_resolution": {str(r): p.to_dict() for r, p in self.resolutions.items()},
        }


def _per_worker(name: str, value: Any, workers: int, resolution: int) -> list[Any]:
    if isinstance(value, (TimeModel, int)) and not isinstance(value, bool):
        return [value] * workers
    values = list(value)
    if len(values) == 1:  # one value for every worker, as a list ([64], a config's one-value form)
        return values * workers
    if len(values) != workers:
        raise ValueError(
            f"{name} at {resolution} px has {len(values)} entries; give one value or one per worker ({workers})"
        )
    return values


def make_plan(
    time_models: Mapping[int, TimeModel | Sequence[TimeModel]],
    batch_large: Mapping[int, int | Sequence[int]],
    workers: int,
    small: int,
    tau: float,
    dataset_size: int,
    min_small_batch: int = 1,
    batch_small: Mapping[int, int | float] | int | float | None = None,
) -> Plan:
    """Plan every resolution: ``time_models[r]`` and ``batch_large[r]`` are one value for
    uniform hardware or one per worker for mixed hardware. ``batch_small``: the small batch
    chosen per resolution (``{px: size or fraction of B_L}``) or one value for all (None:
    planned). See ``plan_resolution``."""
    _check_int("workers", workers, 1)
    if not time_models:
        raise ValueError("time_models is empty; give one (alpha, beta) per resolution")
    if set(time_models) != set(batch_large):
        raise ValueError(
            f"time_models resolutions {sorted(time_models)} differ from batch_large resolutions {sorted(batch_large)}"
        )
    if isinstance(batch_small, Mapping) and set(batch_small) - set(time_models):
        raise ValueError(f"batch_small resolutions {sorted(batch_small)} are not all in the plan's "
                         f"{sorted(time_models)}")
    if isinstance(batch_small, (list, tuple)) and len(batch_small) == 1:
        batch_small = batch_small[0]  # one value for every resolution
    plans = {}
    for r in sorted(time_models):
        models = _per_worker("time_models", time_models[r], workers, r)
        batches = _per_worker("batch_large", batch_large[r], workers, r)
        chosen = batch_small.get(r) if isinstance(batch_small, Mapping) else batch_small
        plans[r] = plan_resolution(models, batches, small=small, tau=tau, dataset_size=dataset_size, resolution=r,
                                   min_small_batch=min_small_batch, batch_small=chosen)
    return Plan(workers=workers, small=small, tau=float(tau), dataset_size=dataset_size, resolutions=plans)


def plan_all_small_counts(
    time_models: Mapping[int, TimeModel | Sequence[TimeModel]],
    batch_large: Mapping[int, int | Sequence[int]],
    workers: int,
    tau: float,
    dataset_size: int,
    min_small_batch: int = 1,
    batch_small: Mapping[int, int | float] | int | float | None = None,
    counts: Sequence[int] | None = None,
) -> list[tuple[int, Plan | InfeasiblePlanError]]:
    """``make_plan`` for every ``n_S`` in ``counts`` (default ``0..workers``; a plan costs O(W),
    so thousands of workers take a selection: ``dbl-ps plan``'s ``table_small_counts``);
    infeasible ones carry their error."""
    out: list[tuple[int, Plan | InfeasiblePlanError]] = []
    for n_s in (range(workers + 1) if counts is None else counts):
        try:
            out.append((n_s, make_plan(time_models, batch_large, workers, n_s, tau, dataset_size, min_small_batch,
                                       batch_small)))
        except InfeasiblePlanError as err:
            out.append((n_s, err))
    return out


# Time models fitted by the paper's authors (their public code), kept as presets and
# check values: CIFAR on GTX 1080 (fp32, no XLA), ImageNet on RTX 3090 (AMP, no XLA).
PAPER_TIME_MODELS: dict[str, dict[int, TimeModel]] = {
    "cifar": {
        24: TimeModel(alpha=0.014788833468238893, beta=0.00035268184915307385),
        32: TimeModel(alpha=0.015562114074817612, beta=0.0005056358858583448),
    },
    "imagenet": {
        160: TimeModel(alpha=0.012036769987567586, beta=0.0003013537830804257),
        224: TimeModel(alpha=0.01705088976279029, beta=0.0005683767808602767),
        288: TimeModel(alpha=0.016659967832795497, beta=0.0009387165655225843),
    },
}
PAPER_BATCH_LARGE: dict[str, dict[int, int]] = {
    "cifar": {24: 600, 32: 560},
    "imagenet": {160: 2330, 224: 1110, 288: 740},
}
