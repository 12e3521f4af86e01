"""The learning-rate range test (Smith, "Cyclical Learning Rates", 2017; fastai's `lr_find`,
Lightning's `Tuner.lr_find`): train a fresh model for a few hundred steps while the LR
rises exponentially from `min_lr` to `max_lr`, record the loss of every step, and suggest
the LR to train at from where the loss falls and where it stops falling.

    finding = lr_range_test(step, min_lr=1e-6, max_lr=10.0, steps=200)   # step(lr) -> the batch's loss
    finding.suggestion                                                      # schedule.lr to use
    plot_lr_find(finding, "lr_find.png")

`step(lr)` is one training step at that LR on the run's own model, data, batch and engine
(`dbl-ps lr-find` builds it); the test is a pure function of the losses it returns, so it is
tested on synthetic loss curves.

* **Smoothing.** An exponential moving average of the losses with bias correction (`beta`
  0.98), the curve fastai and Lightning both draw and read.
* **Stop.** At a non-finite loss, or once the smoothed loss exceeds `diverge` (4, as both
  libraries) times its best value so far: past that point the model is being destroyed
  and the remaining steps say nothing.
* **Suggestion: the LR of the lowest smoothed loss, divided by 10** (fastai's `lr_min`).
  The loss is lowest just before the LR becomes too large; a tenth of that is on the
  falling part of the curve with a margin, which DBSL's small-batch workers want (they
  train at the same LR with a smaller, noisier batch). The average lags (its window is
  about 1/(1 - beta) = 50 steps), so its minimum sits to the right of the raw losses'
  lowest point; fastai's factor 10 is set on this curve, and a lag-free (centred) average
  with the same factor proved too cautious: on the README's ResNet-18 example it suggested
  0.00063 and the run ended at 67.0 %, where this rule's 0.0025 ended at 70.9 %
  (benchmarks/RESULTS.md, issue 32).
* **Why not the steepest descent** (Lightning's default, `method="steepest"`: where the
  smoothed loss falls fastest per step after the first 10, as Lightning does, up to the
  minimum: past it the diverging tail's dips would win): on a few hundred noisy CPU steps the slope has several local extremes of
  similar size, and which one is steepest moved by a decade with the smoothing (0.0004 to
  0.0042 for centred averages 0.15 to 0.5 decades wide, on the same recorded losses),
  while the minimum stayed within a factor of two. It is computed and shown either way
  (`steepest_lr`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

__all__ = ["LRFinding", "lr_ramp", "smooth_losses", "suggest_lr", "lr_range_test", "plot_lr_find", "METHODS"]

METHODS = ("min10", "steepest")
SKIP_START = 10  # the first steps: the average is still settling (Lightning's skip_begin)


@dataclass(frozen=True)
class LRFinding:
    """What a range test measured and suggests (`to_dict()` is what `lr_find.json` holds)."""

    lrs: tuple[float, ...]  # the LR of every step taken
    losses: tuple[float, ...]  # each step's batch loss (nan where it was not finite)
    smoothed: tuple[float, ...]  # the bias-corrected moving average the stop and the suggestion read
    suggestion: float | None  # the LR to train at (None: too few steps to say)
    method: str  # how the suggestion was chosen: min10 or steepest
    min_loss_lr: float | None  # the LR where the smoothed loss is lowest
    steepest_lr: float | None  # the LR where it falls fastest
    stop: str  # why the test ended: "diverged", "not finite", or "all steps"
    still_falling: bool  # the smoothed loss was lowest at the last step: max_lr was too small to see the rise

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_ramp(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """`steps` LRs rising exponentially from `min_lr` to `max_lr` (both included)."""
    if not (0 < min_lr < max_lr) or not all(math.isfinite(v) for v in (min_lr, max_lr)):
        raise ValueError(f"min_lr={min_lr} and max_lr={max_lr}: give 0 < min_lr < max_lr")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps={steps!r}: give a whole number >= 2")
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def smooth_losses(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction: `avg_i / (1 - beta**(i+1))`."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest_lr(lrs: Sequence[float], smoothed: Sequence[float], method: str = "min10"
               ) -> tuple[float | None, float | None, float | None]:
    """`(suggestion, min_loss_lr, steepest_lr)` from a range test's LRs (an exponential ramp)
    and smoothed losses (see the module docstring). None where the curve is too short to say
    (fewer than `SKIP_START + 2` finite points)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: give one of {', '.join(METHODS)}")
    points = [(lr, s) for lr, s in zip(lrs, smoothed) if math.isfinite(s)]
    if len(points) < SKIP_START + 2:
        return None, None, None
    lowest = min(range(SKIP_START, len(points)), key=lambda i: points[i][1])
    min_loss_lr = points[lowest][0]
    # Lightning's: the most negative np.gradient of the loss over steps (equal steps in log LR)
    # after the first SKIP_START, here up to the minimum: past it, the diverging tail's dips
    # (the average falling back after a spike) would win
    def slope(i: int) -> float:
        a, b = max(i - 1, SKIP_START), min(i + 1, lowest)
        return (points[b][1] - points[a][1]) / max(b - a, 1)

    steepest_lr = points[min(range(SKIP_START, lowest + 1), key=slope)][0] if lowest > SKIP_START else None
    suggestion = min_loss_lr / 10 if method == "min10" else steepest_lr
    return suggestion, min_loss_lr, steepest_lr


def lr_range_test(step: Callable[[float], float], *, min_lr: float = 1e-6, max_lr: float = 10.0, steps: int = 200,
                  beta: float = 0.98, diverge: float = 4.0, method: Literal["min10", "steepest"] = "min10",
                  on_step: Callable[[int, float, float], None] | None = None) -> LRFinding:
    """Run `step(lr)` (one training step at that LR, returning its loss) along the exponential
    ramp from `min_lr` to `max_lr` until `steps` were taken or the loss diverged (see the
    module docstring), and suggest an LR. `on_step(i, lr, loss)` hears every step (progress)."""
    if not diverge > 1:
        raise ValueError(f"diverge={diverge}: give a factor > 1 (4 in fastai and Lightning)")
    lrs, losses, smoothed = [], [], []
    stop, best, avg = "all steps", math.inf, 0.0
    for i, lr in enumerate(lr_ramp(min_lr, max_lr, steps)):
        loss = float(step(lr))
        lrs.append(lr)
        if on_step is not None:
            on_step(i, lr, loss)
        if not math.isfinite(loss):
            losses.append(math.nan)
            smoothed.append(math.nan)
            stop = "not finite"
            break
        losses.append(loss)
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        smoothed.append(smooth)
        best = min(best, smooth)
        if i >= SKIP_START and smooth > diverge * best:
            stop = "diverged"
            break
    suggestion, min_loss_lr, steepest_lr = suggest_lr(lrs, smoothed, method)
    finite = [s for s in smoothed if math.isfinite(s)]
    still_falling = bool(finite) and stop == "all steps" and finite[-1] <= min(finite)
    return LRFinding(tuple(lrs), tuple(losses), tuple(smoothed), suggestion, method, min_loss_lr, steepest_lr, stop,
                     still_falling)


def plot_lr_find(finding: LRFinding, path: str | Path, title: str = "") -> Path:
    """The losses against the LR (log scale): each step faint, the smoothed curve, and the
    suggested, minimum and steepest LRs as marked lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(finding.lrs, finding.losses, color="0.75", lw=0.8, label="batch loss")
    ax.plot(finding.lrs, finding.smoothed, color="C0", lw=2, label="smoothed (moving average)")
    marks = [(finding.suggestion, "C3", f"suggested {finding.suggestion:.3g}" if finding.suggestion else ""),
             (finding.min_loss_lr, "0.4", f"lowest smoothed loss {finding.min_loss_lr:.3g}"
              if finding.min_loss_lr else ""),
             (finding.steepest_lr, "C2", f"steepest {finding.steepest_lr:.3g}" if finding.steepest_lr else "")]
    for lr, color, label in marks:
        if lr:
            ax.axvline(lr, color=color, ls="--", lw=1.2, label=label)
    finite = [s for s in finding.smoothed if math.isfinite(s)]
    if finite:  # the diverging tail would squash the part that matters
        lo, hi = min(finite), finite[0]
        ax.set_ylim(lo - 0.1 * max(hi - lo, 1e-3), max(hi, lo) + 0.5 * max(hi - lo, 1e-3))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title or "LR range test")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
