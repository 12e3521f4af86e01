"""The gradient noise scale `B_noise = tr(Sigma) / |G|^2` from gradient norms at two or more batch sizes.

McCandlish et al., "An Empirical Model of Large-Batch Training" (2018): past about
`B_noise` samples a larger batch stops buying progress per sample. The squared norm of a
mini-batch gradient at batch `b` has the expectation

    E |g_b|^2 = |G|^2 + tr(Sigma) / b

(G the full-data gradient, Sigma the covariance of one sample's gradient), so squared
norms measured at two batch sizes `b < B` give unbiased estimates of both (their
Appendix A):

    |G|^2     ~ (B |g_B|^2 - b |g_b|^2) / (B - b)
    tr(Sigma) ~ (|g_b|^2 - |g_B|^2) / (1/b - 1/B)

Each estimate is unbiased, their ratio is not: average each over many steps first, then
take the ratio of the averages. DBSL trains at two batch sizes at once, so its small and
large workers give the pair for free (at nearby, not identical, weights); where every
batch is the same, a probe takes gradients of one model at a small and a large batch.

Everything here is pure (no torch): the input is a list of `(batch size, |g|^2)`
observations (one per step, per probe repeat, or a rank's mean), so any mode that has
squared gradient norms at unequal batches can call `estimate`.

    >>> est = estimate([(8, 5.0), (8, 5.4), (64, 1.2), (64, 1.3)], resamples=0)
    >>> round(est.grad_sq, 3), round(est.trace, 2), round(est.b_noise, 1)
    (0.686, 36.11, 52.7)
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["NoiseScale", "NoiseScaleEMA", "two_batch", "fit_line", "estimate", "regime_line", "central_half_width",
           "BOOTSTRAP_RESAMPLES", "LARGE_BATCH_FACTOR"]

BOOTSTRAP_RESAMPLES = 200  # resamples of the spread (the estimate itself does not depend on them)
# B_L at least this many times B_noise: the large-batch regime (a larger batch buys little per sample).
LARGE_BATCH_FACTOR = 2.0


def two_batch(b_small: float, sq_small: float, b_large: float, sq_large: float) -> tuple[float, float]:
    """`(|G|^2, tr(Sigma))` from the mean squared gradient norm at two batch sizes
    (McCandlish et al. 2018, Appendix A); each is unbiased when the inputs are."""
    if not 0 < b_small < b_large:
        raise ValueError(f"batch sizes {b_small} and {b_large}: need 0 < small < large")
    grad_sq = (b_large * sq_large - b_small * sq_small) / (b_large - b_small)
    trace = (sq_small - sq_large) / (1.0 / b_small - 1.0 / b_large)
    return grad_sq, trace


def fit_line(means: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """`(|G|^2, tr(Sigma))` from `(batch, mean |g|^2, weight)` at two or more distinct batch
    sizes: the weighted least-squares line `mean = |G|^2 + tr(Sigma) / batch` (the weight: how
    many observations the mean holds; with two sizes the line is exactly `two_batch`)."""
    if len({b for b, _, _ in means}) < 2:
        raise ValueError(f"need squared norms at two or more batch sizes, got batches "
                         f"{sorted({b for b, _, _ in means})}")
    if len(means) == 2:
        (b1, s1, _), (b2, s2, _) = sorted(means)
        return two_batch(b1, s1, b2, s2)
    total = sum(w for _, _, w in means)
    mx = sum(w / b for b, _, w in means) / total
    my = sum(w * s for _, s, w in means) / total
    slope = (sum(w * (1 / b - mx) * (s - my) for b, s, w in means)
             / sum(w * (1 / b - mx) ** 2 for b, _, w in means))
    return my - slope * mx, slope


@dataclass(frozen=True)
class NoiseScale:
    """One estimate: unbiased `|G|^2` and `tr(Sigma)`, their ratio and its spread.

    `b_noise` is None when an estimate is not positive: `|G|^2` (the gradient is all noise
    at these batches: B_noise is beyond what they resolve), or `tr(Sigma)` (the small batch's
    norms came out no larger than the large one's: below what they resolve, or, for workers
    at different weights, the larger batch's worker further from a minimum than the smaller
    one's, as early in a DBSL run). `spread`: half the width of
    the central 68 % of `b_noise` over bootstrap resamples of the observations within each
    batch size (a standard deviation where the spread is normal, robust where it is not: a
    ratio whose denominator nears zero has no finite variance); a resample whose `|G|^2` is
    not positive counts as an unbounded B_noise, so `spread` is inf when more than 16 % of
    them are. Steps are treated as independent. None without resamples or with one
    observation per batch size."""

    grad_sq: float
    trace: float
    b_noise: float | None
    spread: float | None
    batches: tuple[int, ...]  # the distinct batch sizes
    observations: int

    def to_record(self, source: str) -> dict[str, Any]:
        """The keys of an epoch record (metrics.jsonl)."""
        return {"b_noise": self.b_noise, "b_noise_std": self.spread, "noise_grad_sq": self.grad_sq,
                "noise_trace": self.trace, "noise_batches": list(self.batches), "noise_source": source}


def _group(observations: Iterable[tuple[float, float]]) -> dict[int, list[float]]:
    groups: dict[int, list[float]] = {}
    for batch, sq in observations:
        if batch >= 1 and math.isfinite(sq):  # a skipped fp16 step's inf norm says nothing
            groups.setdefault(int(batch), []).append(float(sq))
    return groups


def _ratio(grad_sq: float, trace: float) -> float | None:
    """trace / grad_sq where both estimates are positive, else None (not resolved)."""
    return trace / grad_sq if grad_sq > 0 and trace > 0 else None


def _resampled(grad_sq: float, trace: float) -> float:
    """A bootstrap resample's B_noise: an unresolved `|G|^2` is the unbounded end (inf), an
    unresolved `tr(Sigma)` (the small batch's norms no larger than the large one's) the zero end."""
    if grad_sq <= 0:
        return math.inf
    return max(trace, 0.0) / grad_sq


def estimate(observations: Iterable[tuple[float, float]], *, resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = 0) -> NoiseScale | None:
    """B_noise from `(batch size, |g|^2)` observations: the mean per batch size (the moving
    average over the observations' steps), `fit_line` through them, the ratio of the two
    estimates. None with fewer than two batch sizes. The spread is a bootstrap over the
    observations within each batch size (`resamples`, seeded: the same input gives the same
    spread)."""
    groups = _group(observations)
    if len(groups) < 2:
        return None
    grad_sq, trace = fit_line([(b, statistics.fmean(v), len(v)) for b, v in sorted(groups.items())])
    spread = None
    if resamples > 0 and any(len(v) > 1 for v in groups.values()):
        rng = random.Random(seed)
        ratios = []
        for _ in range(resamples):
            drawn = [(b, statistics.fmean(rng.choices(v, k=len(v))), len(v)) for b, v in sorted(groups.items())]
            ratios.append(_resampled(*fit_line(drawn)))
        spread = central_half_width(ratios)
    return NoiseScale(grad_sq=grad_sq, trace=trace, b_noise=_ratio(grad_sq, trace), spread=spread,
                      batches=tuple(sorted(groups)), observations=sum(len(v) for v in groups.values()))


def central_half_width(values: Sequence[float], mass: float = 0.68) -> float:
    """Half the width of the central `mass` of `values` (nearest-rank quantiles): for a normal
    sample about its standard deviation. inf when the upper quantile is."""
    ordered = sorted(values)
    tail = (1 - mass) / 2
    low = ordered[min(len(ordered) - 1, int(tail * len(ordered)))]
    high = ordered[min(len(ordered) - 1, int((1 - tail) * len(ordered)))]
    return (high - low) / 2 if math.isfinite(high) else math.inf


class NoiseScaleEMA:
    """Exponential moving averages of `|G|^2` and `tr(Sigma)` over successive estimates (steps
    of a mode that estimates per step), and B_noise as the ratio of the two averages, the
    order McCandlish et al. prescribe (the ratio of unbiased estimates is biased; the ratio
    of their averages much less so). `decay`: the weight of the past (0.99: about 100 steps)."""

    def __init__(self, decay: float = 0.99):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay}: expected 0 <= decay < 1")
        self.decay = decay
        self.grad_sq: float | None = None
        self.trace: float | None = None

    def update(self, grad_sq: float, trace: float) -> None:
        if self.grad_sq is None or self.trace is None:
            self.grad_sq, self.trace = grad_sq, trace
        else:
            self.grad_sq = self.decay * self.grad_sq + (1 - self.decay) * grad_sq
            self.trace = self.decay * self.trace + (1 - self.decay) * trace

    def update_pairs(self, observations: Iterable[tuple[float, float]]) -> None:
        """One step's `(batch, |g|^2)` observations (two or more batch sizes; else nothing)."""
        groups = _group(observations)
        if len(groups) >= 2:
            self.update(*fit_line([(b, statistics.fmean(v), len(v)) for b, v in groups.items()]))

    @property
    def b_noise(self) -> float | None:
        return None if self.grad_sq is None or self.trace is None else _ratio(self.grad_sq, self.trace)


def regime_line(b_noise: float | None, spread: float | None, *, batch_large: int, batch_small: int | None = None,
                epoch: int | None = None, merged_every_step: int | None = None,
                grad_sq: float | None = None, batch_name: str = "B_L") -> str:
    """One line: where the plan's batches stand against the measured noise scale.

    `epoch` counts from 1 (as on the console). `merged_every_step`: the number of workers
    whose models are averaged after every step (their steps then act as one of that many
    times the batch). `grad_sq`: the `|G|^2` estimate, which says why an unresolved
    `b_noise` (None) was not resolved. `batch_name`: what `batch_large` is called (a
    mixed-batch run's is the global batch of every step, the ranks' batches summed)."""
    when = f" (epoch {epoch})" if epoch is not None else ""
    if b_noise is None:
        if grad_sq is not None and grad_sq <= 0:
            return (f"gradient noise scale{when}: above what the batches resolve (the |G|^2 estimate was not "
                    f"positive: at these batches the gradient is mostly noise); {batch_name} {batch_large} is below it: the "
                    f"small-batch regime, no large-batch gap for DBSL to close")
        return (f"gradient noise scale{when}: not resolved this time (the tr(Sigma) estimate was not positive: the "
                f"small batch's gradients came out no larger than the large one's); {batch_name} {batch_large}")
    pm = f" +- {spread:.3g}" if spread is not None else ""
    large = batch_large * (merged_every_step or 1)
    what = f"{batch_name} {batch_large}" + (f" (x{merged_every_step} workers merged every step: {large})"
                                   if merged_every_step and merged_every_step > 1 else "")
    factor = large / b_noise
    line = f"gradient noise scale{when}: B_noise = {b_noise:.3g}{pm} samples; {what} is {factor:.2g}x it"
    if batch_small is not None:
        line += f", b_S {batch_small} is {batch_small / b_noise:.2g}x"
    if factor >= LARGE_BATCH_FACTOR:
        return line + ": the large-batch regime, where DBSL is meant to help"
    if factor >= 1 / LARGE_BATCH_FACTOR:
        return line + ": near the critical batch, a larger batch still buys some progress per sample; little gap to close"
    return line + ": the small-batch regime, larger batches are nearly free per sample; no large-batch gap for DBSL to close"
