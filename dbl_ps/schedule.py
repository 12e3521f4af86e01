"""Training schedule: learning rate, resolution, dropout and batch sizes at any global epoch.

One pure function, ``schedule_at(epoch, spec)``, serves every method; they differ only
in the ``ScheduleSpec`` they pass:

* baseline   one resolution, no small batch
* DBSL-only  one resolution, ``batch_small`` set (from the plan)
* CPL-only   several resolutions, no small batch
* hybrid     several resolutions and ``batch_small`` per resolution

Learning rate (``k`` = number of milestones ``<= e``)::

    lr(e) = base_lr * gamma**k * w(e),
    w(e)  = s + (1 - s) * e / warmup_epochs   for e < warmup_epochs (s = warmup_start_factor), else 1

Resolution (cyclic progressive learning): the LR stages are ``[0, m_1), [m_1, m_2), ...,
[m_last, epochs)``; each stage ``[a, b)`` is split evenly among the ``R`` resolutions,
low first: resolution ``k`` trains in ``[a + k (b - a) / R, a + (k + 1) (b - a) / R)``.
With ``cyclic=False`` the whole run is split that way once (progressive, not cyclic).
Intervals are half-open: a boundary epoch belongs to the phase it starts; ``epoch ==
epochs`` belongs to the last phase. Dropout and the batch sizes follow the resolution.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from dbl_ps.planner import PAPER_BATCH_LARGE, PAPER_TIME_MODELS, make_plan


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """Inputs of ``schedule_at``. Per-resolution values (``dropouts``, ``batch_large``,
    ``batch_small``) follow ``resolutions`` (low to high): one per resolution, or one value
    (a number or a one-element tuple) for every resolution, so the defaults fit any number
    of resolutions."""

    epochs: float
    base_lr: float
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    resolutions: tuple[int, ...] = (32,)
    dropouts: tuple[float, ...] | float | None = None  # None: 0.0 at every resolution
    batch_large: tuple[int, ...] | int = (128,)  # B_L, read by the schedule's table and plots only
    batch_small: tuple[int, ...] | int | None = None  # None: no small workers (no DBSL)
    cyclic: bool = True
    # SWA (`swa.*`): from epoch swa_start on the LR is held at the schedule's value there
    # (swa_lr None), or annealed from it to swa_lr over swa_anneal_epochs (cosine, as SWALR).
    swa_start: float | None = None
    swa_lr: float | None = None
    swa_anneal_epochs: float = 0.0

    def __post_init__(self) -> None:
        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
            return float(value)

        if number("epochs", self.epochs) <= 0:
            raise ValueError(f"epochs={self.epochs} must be > 0")
        if number("base_lr", self.base_lr) <= 0:
            raise ValueError(f"base_lr={self.base_lr} must be > 0")
        if not 0 < number("gamma", self.gamma) <= 1:
            raise ValueError(f"gamma={self.gamma} must be in (0, 1]")
        object.__setattr__(self, "milestones", tuple(self.milestones))
        last = 0.0
        for m in self.milestones:
            if not last < number("milestone", m) < self.epochs:
                raise ValueError(
                    f"milestones={list(self.milestones)} must increase strictly inside (0, epochs={self.epochs:g})"
                )
            last = m
        if not 0 <= number("warmup_epochs", self.warmup_epochs) <= (self.milestones[0] if self.milestones else self.epochs):
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} must be in [0, first milestone or epochs]"
            )
        if not 0 <= number("warmup_start_factor", self.warmup_start_factor) <= 1:
            raise ValueError(f"warmup_start_factor={self.warmup_start_factor} must be in [0, 1]")
        if self.swa_start is not None and not 0 <= number("swa_start", self.swa_start) < self.epochs:
            raise ValueError(f"swa_start={self.swa_start} must be in [0, epochs={self.epochs:g})")
        if self.swa_lr is not None and number("swa_lr", self.swa_lr) <= 0:
            raise ValueError(f"swa_lr={self.swa_lr} must be > 0")
        if number("swa_anneal_epochs", self.swa_anneal_epochs) < 0:
            raise ValueError(f"swa_anneal_epochs={self.swa_anneal_epochs} must be >= 0")

        object.__setattr__(self, "resolutions", tuple(self.resolutions))
        if not self.resolutions:
            raise ValueError("resolutions is empty; give at least one resolution in pixels")
        for r in self.resolutions:
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ValueError(f"resolution {r!r} must be a positive integer (pixels)")
        if any(a >= b for a, b in zip(self.resolutions, self.resolutions[1:])):
            raise ValueError(f"resolutions={list(self.resolutions)} must be listed once each, low to high")
        n = len(self.resolutions)

        def per_resolution(name: str, value: Any) -> tuple[Any, ...]:
            values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if len(values) == 1:
                return values * n
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} resolutions {list(self.resolutions)} "
                                 f"(give one per resolution, or one value for all)")
            return values

        dropouts = (0.0,) * n if self.dropouts is None else per_resolution("dropouts", self.dropouts)
        if len(dropouts) != n:
            raise ValueError(f"dropouts has {len(dropouts)} entries for {n} resolutions {list(self.resolutions)}")
        for p in dropouts:
            if not 0 <= number("dropout", p) < 1:
                raise ValueError(f"dropout {p} must be in [0, 1)")
        object.__setattr__(self, "dropouts", dropouts)
        for name in ("batch_large", "batch_small"):
            values = getattr(self, name)
            if values is None:
                continue
            values = per_resolution(name, values)
            for b in values:
                if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                    raise ValueError(f"{name} entry {b!r} must be a positive integer")
            object.__setattr__(self, name, values)
        small, large = self.batch_small, self.batch_large  # one entry per resolution from here on
        if isinstance(small, tuple) and isinstance(large, tuple) and any(s > l for s, l in zip(small, large)):
            raise ValueError(f"batch_small={list(small)} must not exceed batch_large={list(large)}")

    @property
    def dropout_rates(self) -> tuple[float, ...]:
        """The dropout rate of each resolution (``__post_init__`` made it one entry per resolution)."""
        assert isinstance(self.dropouts, tuple)
        return self.dropouts

    def _values_at(self, k: int) -> tuple[float, int, int | None]:
        """(dropout, B_L, b_S or None) at resolution index `k` (``__post_init__`` made every
        per-resolution value one entry per resolution)."""
        dropouts, large, small = self.dropouts, self.batch_large, self.batch_small
        assert isinstance(dropouts, tuple) and isinstance(large, tuple) and not isinstance(small, int)
        return dropouts[k], large[k], None if small is None else small[k]

    @property
    def method(self) -> str:
        """``baseline``, ``dbsl``, ``cpl`` or ``hybrid``, read off the inputs."""
        cpl = len(self.resolutions) > 1
        dbsl = self.batch_small is not None
        return {(False, False): "baseline", (False, True): "dbsl", (True, False): "cpl", (True, True): "hybrid"}[
            (cpl, dbsl)
        ]


@dataclass(frozen=True)
class SchedulePoint:
    """What to train with at one global epoch."""

    epoch: float
    lr: float
    lr_stage: int  # index of the LR stage (milestones passed)
    resolution: int
    resolution_index: int  # index into spec.resolutions
    phase: int  # index into phases(spec)
    dropout: float
    batch_large: int
    batch_small: int | None

    def metrics(self, prefix: str = "schedule/") -> dict[str, float]:
        """Namespaced scalars for a metrics logger."""
        out = {
            f"{prefix}lr": self.lr,
            f"{prefix}lr_stage": self.lr_stage,
            f"{prefix}resolution": self.resolution,
            f"{prefix}phase": self.phase,
            f"{prefix}dropout": self.dropout,
            f"{prefix}batch_large": self.batch_large,
        }
        if self.batch_small is not None:
            out[f"{prefix}batch_small"] = self.batch_small
        return out


@dataclass(frozen=True)
class Phase:
    """A constant-resolution interval ``[start, end)`` of the run (LR may still warm up inside)."""

    start: float
    end: float
    lr_stage: int
    resolution_index: int
    resolution: int
    lr: float  # base_lr * gamma**lr_stage (warm-up not applied), or SWA's LR at the phase's start
    dropout: float
    batch_large: int
    batch_small: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _stage_bounds(spec: ScheduleSpec) -> list[float]:
    return [0.0, *map(float, spec.milestones), float(spec.epochs)]


def _phase_starts(spec: ScheduleSpec) -> list[tuple[float, int, int]]:
    """``(start, lr_stage, resolution_index)`` of every phase in order.

    Phases are whole epochs, because every runtime changes resolution (data loader,
    batch sizes, dropout) between epochs: a block of ``L`` epochs gives resolution ``k``
    of ``n`` the epochs from ``floor(k L / n)``, so a remainder goes to the higher
    resolutions, and a block shorter than ``n`` epochs drops the lowest ones (CPL ends
    every stage at its highest resolution, the one the model is evaluated at)."""
    n = len(spec.resolutions)
    bounds = _stage_bounds(spec)
    if spec.cyclic:
        blocks = list(zip(bounds, bounds[1:]))
    else:
        blocks = [(0.0, float(spec.epochs))]
    starts: list[float] = []
    res_index: list[int] = []
    for a, b in blocks:
        for k in range(n):
            starts.append(a + math.floor(k * (b - a) / n))  # exact for whole-epoch stages
            res_index.append(k)
    # Non-cyclic phases may straddle milestones: split them there so each phase has one LR.
    points = sorted(set(starts) | set(bounds[1:-1]))
    out = []
    for p in points:
        k = res_index[bisect.bisect_right(starts, p) - 1]
        stage = bisect.bisect_right(bounds[1:-1], p)
        out.append((p, stage, k))
    return out


def phases(spec: ScheduleSpec) -> list[Phase]:
    """Constant-resolution, constant-LR-stage intervals in order; a runtime switches
    resolution (and data loader, dropout, batch sizes) at each ``start``."""
    starts = _phase_starts(spec)
    ends = [s for s, _, _ in starts[1:]] + [float(spec.epochs)]
    out = []
    for (start, stage, k), end in zip(starts, ends):
        dropout, batch_large, batch_small = spec._values_at(k)
        out.append(
            Phase(
                start=start,
                end=end,
                lr_stage=stage,
                resolution_index=k,
                resolution=spec.resolutions[k],
                lr=lr_at(start, spec) if spec.swa_start is not None and start >= spec.swa_start
                else spec.base_lr * spec.gamma**stage,
                dropout=dropout,
                batch_large=batch_large,
                batch_small=batch_small,
            )
        )
    return out


def lr_at(epoch: float, spec: ScheduleSpec) -> float:
    """``base_lr * gamma**(milestones <= epoch)``, times the linear warm-up factor; from
    ``swa_start`` on, SWA's: held at that epoch's value, or annealed from it to ``swa_lr``
    over ``swa_anneal_epochs`` (cosine, the formula of ``torch.optim.swa_utils.SWALR``)."""
    if spec.swa_start is not None and epoch >= spec.swa_start:
        held = _stage_lr(spec.swa_start, spec)
        if spec.swa_lr is None:
            return held
        t = 1.0 if spec.swa_anneal_epochs <= 0 else min(1.0, (epoch - spec.swa_start) / spec.swa_anneal_epochs)
        return held + (spec.swa_lr - held) * (1 - math.cos(math.pi * t)) / 2
    return _stage_lr(epoch, spec)


def _stage_lr(epoch: float, spec: ScheduleSpec) -> float:
    stage = bisect.bisect_right(spec.milestones, epoch)
    lr = spec.base_lr * spec.gamma**stage
    if epoch < spec.warmup_epochs:
        s = spec.warmup_start_factor
        lr *= s + (1 - s) * epoch / spec.warmup_epochs
    return lr


def schedule_at(epoch: float, spec: ScheduleSpec) -> SchedulePoint:
    """Everything that depends on the global epoch ``epoch`` (fractional allowed, ``0 <= epoch <= epochs``)."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not 0 <= epoch <= spec.epochs:
        raise ValueError(f"epoch={epoch!r} must be a number in [0, epochs={spec.epochs:g}]")
    starts = _phase_starts(spec)
    i = bisect.bisect_right([s for s, _, _ in starts], epoch) - 1
    _, stage, k = starts[i]
    dropout, batch_large, batch_small = spec._values_at(k)
    return SchedulePoint(
        epoch=float(epoch),
        lr=lr_at(epoch, spec),
        lr_stage=stage,
        resolution=spec.resolutions[k],
        resolution_index=k,
        phase=i,
        dropout=dropout,
        batch_large=batch_large,
        batch_small=batch_small,
    )


def epochs_at_each_resolution(spec: ScheduleSpec) -> dict[int, float]:
    """Epochs the run trains at each resolution (0 for one that no stage reaches: a stage of
    ``L`` epochs gives the lowest of ``n`` resolutions none when ``L < n``)."""
    out = {r: 0.0 for r in spec.resolutions}
    for phase in phases(spec):
        out[phase.resolution] += phase.end - phase.start
    return out


def starts_phase(epoch: int, spec: ScheduleSpec) -> bool:
    """Whether whole epoch ``epoch`` (>= 1) is the first of a new phase: a new LR stage or a new
    resolution. The authors' Keras workers recompile their model there, which restarts SGD's
    momentum (``optim.restart_momentum``); a pure function of the epoch, so a resumed run
    restarts exactly where the uninterrupted one did."""
    return epoch >= 1 and schedule_at(epoch, spec).phase != schedule_at(epoch - 1, spec).phase


# --------------------------------------------------------------------------- presets

METHODS = ("baseline", "dbsl", "cpl", "hybrid")


def _preset(
    dataset: str,
    method: str,
    *,
    epochs: float,
    milestones: tuple[float, ...],
    resolutions: tuple[int, ...],
    dropouts: tuple[float, ...],
    full_resolution: int,
    workers: int,
    small: int,
    tau: float,
    dataset_size: int,
) -> ScheduleSpec:
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
    if method in ("baseline", "dbsl"):
        k = resolutions.index(full_resolution)
        resolutions, dropouts = (full_resolution,), (dropouts[k],)
    batch_large = tuple(PAPER_BATCH_LARGE[dataset][r] for r in resolutions)
    batch_small: tuple[int, ...] | None = None
    if method in ("dbsl", "hybrid"):
        plan = make_plan(
            {r: PAPER_TIME_MODELS[dataset][r] for r in resolutions},
            dict(zip(resolutions, batch_large)),
            workers,
            small,
            tau,
            dataset_size,
        )
        # n_S = 0 plans no small batch: the schedule then has none
        batch_small = tuple(b for b in (plan[r].batch_small for r in resolutions) if b is not None) or None
    return ScheduleSpec(
        epochs=epochs,
        base_lr=0.2,
        milestones=milestones,
        gamma=0.1,
        resolutions=resolutions,
        dropouts=dropouts,
        batch_large=batch_large,
        batch_small=batch_small,
    )


def cifar100_paper(method: str = "hybrid", *, workers: int = 4, small: int = 1, tau: float = 1.05) -> ScheduleSpec:
    """The paper's CIFAR-100 run: 140 epochs, LR 0.2 x0.1 at 80 and 120; CPL 24 -> 32 px
    (dropout 0.1, 0.2) inside each stage; the authors' largest batches (600, 560) and,
    for DBSL, small batches planned from their GTX-1080 time models. Baseline and
    DBSL-only train at 32 px with dropout 0.2."""
    return _preset(
        "cifar",
        method,
        epochs=140,
        milestones=(80, 120),
        resolutions=(24, 32),
        dropouts=(0.1, 0.2),
        full_resolution=32,
        workers=workers,
        small=small,
        tau=tau,
        dataset_size=50000,
    )


def imagenet_paper(method: str = "hybrid", *, workers: int = 4, small: int = 1, tau: float = 1.05) -> ScheduleSpec:
    """The paper's ImageNet run: 105 epochs, LR 0.2 x0.1 at 60 and 90; CPL 160 -> 224 ->
    288 px (dropout 0.1, 0.2, 0.3) in equal thirds of each stage; the authors' largest
    batches (2330, 1110, 740, RTX 3090 with AMP). Baseline and DBSL-only train at 224 px."""
    return _preset(
        "imagenet",
        method,
        epochs=105,
        milestones=(60, 90),
        resolutions=(160, 224, 288),
        dropouts=(0.1, 0.2, 0.3),
        full_resolution=224,
        workers=workers,
        small=small,
        tau=tau,
        dataset_size=1281167,
    )


# --------------------------------------------------------------------------- runtime helper


@dataclass
class ScheduleTracker:
    """Applies ``schedule_at`` as training advances and says what changed.

    ``update(epoch)`` returns the new point and the set of changed fields among
    ``lr``, ``resolution``, ``dropout``, ``batch_large``, ``batch_small`` (all of them
    on the first call), so a runtime rebuilds its data loader only on a resolution
    change and calls ``set_dropout`` only on a dropout change.
    """

    spec: ScheduleSpec
    current: SchedulePoint | None = field(default=None, init=False)

    WATCHED = ("lr", "resolution", "dropout", "batch_large", "batch_small")

    def update(self, epoch: float) -> tuple[SchedulePoint, set[str]]:
        point = schedule_at(epoch, self.spec)
        if self.current is None:
            changed = set(self.WATCHED)
        else:
            changed = {f for f in self.WATCHED if getattr(point, f) != getattr(self.current, f)}
        self.current = point
        return point, changed


def _epochs_shown(start: float, end: float) -> str:
    """A phase's epochs as users count them: `1-40` for [0, 40) (the console's, 1-based and
    inclusive); a phase that starts or ends inside an epoch as progress, `0.5-2.5`."""
    if float(start).is_integer() and float(end).is_integer():
        return f"{int(start) + 1}" if end - start == 1 else f"{int(start) + 1}-{int(end)}"
    return f"{start:g}-{end:g} (progress)"


def format_phases(spec: ScheduleSpec) -> str:
    """A plain-text table of ``phases(spec)``, epochs 1-based as the console counts them."""
    rows = [("epochs", "lr", "res", "dropout", "batch_large", "batch_small")]
    for p in phases(spec):
        rows.append(
            (
                _epochs_shown(p.start, p.end),
                f"{p.lr:g}",
                str(p.resolution),
                f"{p.dropout:g}",
                str(p.batch_large),
                "-" if p.batch_small is None else str(p.batch_small),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    if spec.warmup_epochs:
        lines.append(f"(linear LR warm-up over the first {spec.warmup_epochs:g} epochs)")
    return "\n".join(lines)


def plot_schedule(spec: ScheduleSpec, path: str, *, points: int = 1000) -> None:
    """Draw LR, resolution, batch sizes and dropout against epochs to a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    xs = [spec.epochs * i / points for i in range(points + 1)]
    pts = [schedule_at(x, spec) for x in xs]
    fig, axes = plt.subplots(4, 1, figsize=(8, 8), sharex=True)
    axes[0].step(xs, [p.lr for p in pts], where="post")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("learning rate")
    axes[1].step(xs, [p.resolution for p in pts], where="post")
    axes[1].set_ylabel("resolution (px)")
    axes[2].step(xs, [p.batch_large for p in pts], where="post", label="large workers")
    if spec.batch_small is not None:
        axes[2].step(xs, [p.batch_small for p in pts], where="post", label="small workers")
    axes[2].set_ylabel("batch size")
    axes[2].legend(loc="best")
    axes[3].step(xs, [p.dropout for p in pts], where="post")
    axes[3].set_ylabel("dropout")
    axes[3].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[3].set_xlabel("epochs trained (epoch 1 is 0-1)")
    fig.suptitle(f"schedule ({spec.method})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
