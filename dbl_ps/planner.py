"""Time model and dual-batch plan: who trains with which batch size on how much data.

Pure functions, no torch. Notation (arXiv 2509.26092, ``docs``/DESIGN):

* time per training step at batch ``b``:     ``t(b) = alpha + beta * b``
* epoch time of a worker with share ``d``:   ``T(d, b) = d * (beta + alpha / b)``
* ``W`` workers, the first ``n_S`` of them (ids ``0 .. n_S-1``) small, ``n_L = W - n_S``
  large; dataset size ``N``; largest batch ``B_L``; time budget ``tau >= 1``.

The paper's plan (one device type)::

    n_S = 0:  d_i = N / W, b_i = B_L
    n_S > 0:  d_L = tau * N / W
              d_S = (N - n_L * d_L) / n_S
              T0  = (N / W) * (beta + alpha / B_L)          # all-large epoch time
              b_S = alpha / (tau * T0 / d_S - beta)
    merge weight f_i = d_i / d_L  (1 for large workers)

Beyond the paper (mixed hardware): worker ``i`` has its own ``(alpha_i, beta_i)`` and
``B_L,i``. With ``c_i = beta_i + alpha_i / B_L,i`` (seconds per sample at the
largest batch)::

    T0  = N / sum_i (1 / c_i)        # load-balanced all-large epoch time
    T   = T0            if n_S = 0   # then d_i = T0 / c_i: every worker finishes together
    T   = tau * T0      if n_S > 0
    d_i = T / c_i                    for every large worker
    D_S = N - sum_large d_i          # data left for the small workers
    b_S : sum_small T / (beta_j + alpha_j / b_S) = D_S     # one batch size for all
    d_j = T / (beta_j + alpha_j / b_S)                     # small workers

so every worker's predicted epoch time is exactly ``T``. With one device type this
is the paper's plan (same ``d_L``, ``d_S``, ``b_S``). Small workers share one batch
size so they all train with the same gradient noise; the equation in ``b_S`` is
increasing in ``b_S`` and is solved in closed form when the small workers share a
time model, by bisection otherwise. Merge weights generalise to
``f_i = d_i / mean(large shares)`` (mean of all shares when ``n_S = W``).

Rounding (the plan every runtime uses): shares are apportioned by the largest
remainder method, so they are integers summing to exactly ``N`` (ties go to the lower
worker id); ``b_S`` is rounded to the nearest integer with Python's ``round``, which
is what the authors' code does and the only rule that reproduces all their check
values (``b_S`` = 101.51 -> 102, 185.40 -> 185, 243.33 -> 243, 46.79 -> 47; floor
gives 101 and 46, ceil gives 186 and 244). The rounded plan predicts
``ceil(d/b) * alpha + d * beta`` per worker: every sample of the share is trained,
the last batch partial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class InfeasiblePlanError(ValueError):
    """A plan request that no data split satisfies; the message says which input to change."""


# --------------------------------------------------------------------------- time model


@dataclass(frozen=True)
class TimeModel:
    """``t(b) = alpha + beta * b`` seconds per training step at batch size ``b``.

    ``r2`` is the coefficient of determination of the fit that produced it (None
    when the values were typed in).
    """

    alpha: float
    beta: float
    r2: float | None = None

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} is not a finite number")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0 (seconds per sample)")

    def step_seconds(self, batch_size: float) -> float:
        """``t(b) = alpha + beta * b``."""
        return self.alpha + self.beta * batch_size

    def sample_seconds(self, batch_size: float) -> float:
        """Seconds per sample at batch ``b``: ``beta + alpha / b``."""
        return self.beta + self.alpha / batch_size

    def epoch_seconds(self, share: float, batch_size: float) -> float:
        """Paper's epoch time of a share ``d``: ``d * (beta + alpha / b)`` (fractional steps)."""
        return share * self.sample_seconds(batch_size)

    def epoch_seconds_whole_steps(self, share: int, batch_size: int) -> float:
        """Epoch time when every sample is trained, last batch partial:
        ``ceil(d / b) * alpha + d * beta``."""
        return math.ceil(share / batch_size) * self.alpha + share * self.beta


def fit_time_model(samples: Sequence[tuple[float, float]]) -> TimeModel:
    """Least-squares fit of ``t(b) = alpha + beta * b`` to ``(batch_size, seconds)`` samples.

    ``beta = cov(b, t) / var(b)``, ``alpha = mean(t) - beta * mean(b)``,
    ``R^2 = 1 - SS_res / SS_tot`` (1.0 when every time is equal and fitted exactly).
    Needs at least two distinct batch sizes. A fitted negative ``beta`` (noise on a
    too-narrow grid) is an error: widen the batch-size grid, or see
    ``fit_nonnegative_time_model``.
    """
    points = _checked_points(samples)
    alpha, beta = _least_squares(points)
    if beta < 0:
        raise ValueError(
            f"fitted beta={beta:.3g} < 0: step time falls with batch size, so the samples are "
            f"noise; use a wider batch-size grid or more steps per point"
        )
    return TimeModel(alpha=alpha, beta=beta, r2=_r2(points, alpha, beta))


def fit_nonnegative_time_model(samples: Sequence[tuple[float, float]]) -> TimeModel:
    """The least-squares line with ``alpha, beta >= 0``. A small model on a GPU is
    launch-bound (the same step time at every batch), where noise tips the free fit's
    slope below zero; the best line with a slope of zero is then the mean time, and the
    best one through the origin where the intercept would be negative."""
    points = _checked_points(samples)
    alpha, beta = _least_squares(points)
    if alpha < 0 or beta < 0:
        flat = (sum(t for _, t in points) / len(points), 0.0)
        through_origin = (0.0, sum(b * t for b, t in points) / sum(b * b for b, _ in points))
        alpha, beta = min((flat, through_origin), key=lambda line: _squared_error(points, *line))
    return TimeModel(alpha=alpha, beta=beta, r2=_r2(points, alpha, beta))


def _checked_points(samples: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    points = [(float(b), float(t)) for b, t in samples]
    if len(points) < 2:
        raise ValueError(f"need at least 2 (batch_size, seconds) samples to fit, got {len(points)}")
    for b, t in points:
        if not (math.isfinite(b) and b > 0):
            raise ValueError(f"batch size {b} must be a positive number")
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"step time {t} must be a positive number of seconds")
    if len({b for b, _ in points}) < 2:
        raise ValueError(f"need at least 2 distinct batch sizes to fit, got only b={points[0][0]:g}")
    return points


def _least_squares(points: list[tuple[float, float]]) -> tuple[float, float]:
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_t = sum(t for _, t in points) / n
    var_b = sum((b - mean_b) ** 2 for b, _ in points)
    beta = sum((b - mean_b) * (t - mean_t) for b, t in points) / var_b
    return mean_t - beta * mean_b, beta


def _squared_error(points: list[tuple[float, float]], alpha: float, beta: float) -> float:
    return sum((t - (alpha + beta * b)) ** 2 for b, t in points)


def _r2(points: list[tuple[float, float]], alpha: float, beta: float) -> float:
    mean_t = sum(t for _, t in points) / len(points)
    ss_tot = sum((t - mean_t) ** 2 for _, t in points)
    return 1.0 - _squared_error(points, alpha, beta) / ss_tot if ss_tot > 0 else 1.0


# --------------------------------------------------------------------------- rounding


def apportion(values: Sequence[float], total: int) -> list[int]:
    """Integers close to ``values`` summing to exactly ``total`` (largest remainder method).

    Each value is floored; the ``total - sum(floors)`` leftover units go to the largest
    fractional parts, ties to the lower index. ``values`` must be >= 0 and sum to
    ``total`` within rounding error.
    """
    if any(v < 0 or not math.isfinite(v) for v in values):
        raise ValueError(f"cannot apportion negative or non-finite values {list(values)}")
    if abs(sum(values) - total) > 1e-6 * max(1.0, total):
        raise ValueError(f"values sum to {sum(values)}, not to total={total}")
    floors = [math.floor(v) for v in values]
    leftover = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: (-(values[i] - floors[i]), i))
    for k in range(leftover):
        floors[order[k % len(order)]] += 1
    return floors


# --------------------------------------------------------------------------- the plan


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

    @property
    def large_workers(self) -> range:
        return range(self.small, self.workers)

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

    def to_dict(self) -> dict[str, Any]:
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
            "exact": {
                "shares": list(self.shares_exact),
                "batch_small": self.batch_small_exact,
                "merge_weights": list(self.merge_weights_exact),
                "epoch_seconds": self.epoch_seconds_exact,
            },
        }


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name}={value} must be {allowed}")
    return value


def _down(x: float) -> str:
    """``x`` rounded down to 4 decimals, so a bound quoted in an error message is itself feasible."""
    return f"{math.floor(x * 1e4 + 1e-9) / 1e4:g}"


def _up(x: float) -> str:
    """``x`` rounded up to 4 decimals (lower bounds)."""
    return f"{math.ceil(x * 1e4 - 1e-9) / 1e4:g}"


def _where(resolution: int | None) -> str:
    return f" at {resolution} px" if resolution is not None else ""


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


def plan_resolution(
    time_models: Sequence[TimeModel],
    batch_large: Sequence[int],
    *,
    small: int,
    tau: float,
    dataset_size: int,
    resolution: int | None = None,
    min_small_batch: int = 1,
) -> ResolutionPlan:
    """Plan one resolution for ``W = len(time_models)`` workers (formulas in the module doc).

    ``time_models[i]`` and ``batch_large[i]`` describe worker ``i``; workers
    ``0 .. small-1`` train with the small batch, which must be at least
    ``min_small_batch`` (a floor beyond the paper: its plan gives batch 4-5 against 128-256
    when the fixed cost per step is small, far from the large workers' batch at the same
    LR and too few images for BatchNorm's batch statistics). Raises ``InfeasiblePlanError``
    naming the input to change and its feasible range, ``ValueError`` for malformed input.
    """
    workers = len(time_models)
    _check_int("workers", workers, 1)
    if len(batch_large) != workers:
        raise ValueError(f"batch_large has {len(batch_large)} entries for {workers} workers{_where(resolution)}")
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
    for i, m in enumerate(time_models):
        if m.sample_seconds(batch_large[i]) <= 0:
            raise ValueError(
                f"worker {i}{_where(resolution)}: alpha={m.alpha:g}, beta={m.beta:g} give a step time "
                f"<= 0 at batch {batch_large[i]}; recalibrate"
            )
    n = dataset_size
    c = [m.sample_seconds(b) for m, b in zip(time_models, batch_large)]
    t0 = n / sum(1.0 / ci for ci in c)

    tau_range: tuple[float, float] | None = None
    if small == 0:
        t = t0
        shares_exact = [t / ci for ci in c]
        b_small_exact = None
    else:
        for j in range(small):
            if time_models[j].alpha <= 0:
                raise InfeasiblePlanError(
                    f"small worker {j}{_where(resolution)} has alpha={time_models[j].alpha:g} <= 0: with no "
                    f"fixed cost per step a smaller batch is not slower, so no b_S fits tau; "
                    f"use small=0 or recalibrate with a wider batch-size grid"
                )
        tau_min, tau_max, tau_no_data = feasible_tau_range(time_models, batch_large, small, n, min_small_batch)
        tau_range = (tau_min, tau_max)
        if tau >= tau_no_data:
            raise InfeasiblePlanError(
                f"tau={tau:g} leaves no data for small workers with n_S={small}{_where(resolution)}; "
                f"use tau < {_down(tau_no_data)} (b_S >= min_small_batch={min_small_batch} needs tau <= "
                f"{_down(tau_max)}) or more small workers"
            )
        if tau > tau_max * (1 + 1e-12):
            raise InfeasiblePlanError(
                f"tau={tau:g} needs a small batch below {min_small_batch} (min_small_batch) with n_S={small}"
                f"{_where(resolution)}; use {_up(tau_min)} <= tau <= {_down(tau_max)}, a lower min_small_batch, "
                f"or more small workers"
            )
        if tau < tau_min * (1 - 1e-12):
            raise InfeasiblePlanError(
                f"tau={tau:g} needs a small batch above the largest batch {min(batch_large[:small])} "
                f"with n_S={small}{_where(resolution)}; use {_up(tau_min)} <= tau <= {_down(tau_max)}"
            )
        t = tau * t0
        large_exact = [t / ci for ci in c[small:]]
        data_small = n - sum(large_exact)
        b_cap = min(batch_large[:small])
        b_small_exact = _solve_batch_small(time_models[:small], t, data_small, b_cap)
        b_small_exact = min(max(b_small_exact, float(min_small_batch)), float(b_cap))  # float noise at the bounds
        if _same_models(time_models[:small]):
            small_exact = [data_small / small] * small
        else:
            small_exact = [t / m.sample_seconds(b_small_exact) for m in time_models[:small]]
        shares_exact = small_exact + large_exact

    shares = apportion(shares_exact, n)
    if min(shares) < 1:
        worker = shares.index(min(shares))
        raise InfeasiblePlanError(
            f"worker {worker}{_where(resolution)} gets no data (dataset_size={n}, tau={tau:g}, small={small}); "
            f"use a larger dataset_size or a tau closer to 1"
        )
    b_small = None if b_small_exact is None else min(max(round(b_small_exact), min_small_batch), min(batch_large[:small]))
    batches = [b_small] * small + list(batch_large[small:])

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
    )


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
            "predicted_epoch_seconds": [p.epoch_seconds for p in plans],
            "baseline_epoch_seconds": [p.baseline_epoch_seconds for p in plans],
            "per_resolution": {str(r): p.to_dict() for r, p in self.resolutions.items()},
        }


def _per_worker(name: str, value: Any, workers: int, resolution: int) -> list[Any]:
    if isinstance(value, (TimeModel, int)) and not isinstance(value, bool):
        return [value] * workers
    values = list(value)
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
) -> Plan:
    """Plan every resolution: ``time_models[r]`` and ``batch_large[r]`` are one value for
    uniform hardware or one per worker for mixed hardware. See ``plan_resolution``."""
    _check_int("workers", workers, 1)
    if not time_models:
        raise ValueError("time_models is empty; give one (alpha, beta) per resolution")
    if set(time_models) != set(batch_large):
        raise ValueError(
            f"time_models resolutions {sorted(time_models)} differ from batch_large resolutions {sorted(batch_large)}"
        )
    plans = {}
    for r in sorted(time_models):
        models = _per_worker("time_models", time_models[r], workers, r)
        batches = _per_worker("batch_large", batch_large[r], workers, r)
        plans[r] = plan_resolution(models, batches, small=small, tau=tau, dataset_size=dataset_size, resolution=r,
                                   min_small_batch=min_small_batch)
    return Plan(workers=workers, small=small, tau=float(tau), dataset_size=dataset_size, resolutions=plans)


def plan_all_small_counts(
    time_models: Mapping[int, TimeModel | Sequence[TimeModel]],
    batch_large: Mapping[int, int | Sequence[int]],
    workers: int,
    tau: float,
    dataset_size: int,
    min_small_batch: int = 1,
) -> list[tuple[int, Plan | InfeasiblePlanError]]:
    """``make_plan`` for every ``n_S`` in ``0..workers``; infeasible ones carry their error."""
    out: list[tuple[int, Plan | InfeasiblePlanError]] = []
    for n_s in range(workers + 1):
        try:
            out.append((n_s, make_plan(time_models, batch_large, workers, n_s, tau, dataset_size, min_small_batch)))
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
