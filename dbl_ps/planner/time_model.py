"""The time model `t(b) = alpha + beta b` of a training step, fitted from measured step
times, and what every plan shares: the integer rounding and the checks of its inputs (pure, no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["InfeasiblePlanError", "TimeModel", "fit_time_model", "fit_nonnegative_time_model", "apportion"]


class InfeasiblePlanError(ValueError):
    """A plan request that no data split satisfies; the message says which input to change."""


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
    return f" at {resolution} px" if resolution else ""  # None or 0: a plan without CPL
