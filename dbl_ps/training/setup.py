"""Pieces of a run's setup, shared by the launcher and the workers: the time models and
plan from a config, the schedule spec, where a worker syncs inside an epoch, the seeds
of every random draw, and the run's model.

Most are pure functions of the config; three are not, and say so: `measure_time_models`
runs training steps to time them, `build_run_model` imports the config's modules and
builds the model, and `check_run_model` runs it on a tiny batch.

Time models come, in order of precedence, from `dbl.alpha`/`dbl.beta`, from the
calibration file in `dbl.calibration` (both read by `dbl_ps.calibrate.configured_time_models`,
as `dbl-ps plan --config` reads them), or are measured on the spot by
`measure_time_models` (a few seconds on the CPU), which times the run's own training
step (`TorchEngine.train_step` with the config's precision, memory format, compile,
optimizer and loss). Every measured model (alpha, beta >= 0) plans: where it cannot
choose the small batch (no fixed cost per step) the planner says so and takes the
authors' fraction; only a measurement that fails falls back to `DEFAULT_TIME_MODEL`, and
says so. The plan is saved in the run directory and a resumed run reads it back instead
of measuring again.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

import torch
from torch import nn

from dbl_ps.calibrate import ResolvedTimeModels, batch_grid, calibrate, configured_time_models
from dbl_ps.imports import import_modules
from dbl_ps.models import build_model, check_model_output
from dbl_ps.planner import Plan, TimeModel, make_plan, plan_mixed, plan_mixed_resolution, plan_resolution
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.schedule import ScheduleSpec
from dbl_ps.training.engine import engine_step_factory
from dbl_ps.training.swa import swa_start_epoch

__all__ = [
    "DEFAULT_TIME_MODEL",
    "MEASURED",
    "ResolvedTimeModels",
    "resolve_time_models",
    "measure_time_models",
    "needs_time_model",
    "build_plan",
    "build_spec",
    "plan_from_dict",
    "plan_difference",
    "sync_boundaries",
    "epoch_seed",
    "cpu_cores",
    "threads_per_worker",
    "build_run_model",
    "check_run_model",
    "warm_up_shapes",
    "poor_fit_lines",
]

# Typical of a small ResNet at 8-16 px on one CPU core: 3 ms fixed cost per step,
# 0.2 ms per sample. Only used when a measurement on the spot is unusable.
DEFAULT_TIME_MODEL = TimeModel(alpha=0.003, beta=0.0002)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(cfg: Any, local_workers: int | None = None) -> int:
    """Torch threads of each worker process: the config's value, else this machine's cores shared
    by its worker processes (`local_workers`: the store mode's W, a launch's LOCAL_WORLD_SIZE;
    default `dbl.workers`), at least 1. The one place every mode computes it."""
    if cfg.threads_per_worker:
        return int(cfg.threads_per_worker)
    return max(1, cpu_cores() // (local_workers or cfg.dbl.workers))


MEASURED = "measured on the spot"  # the source of a time model measured by the run itself


def resolve_time_models(cfg: Any, *, num_classes: int, in_channels: int, device: str = "cpu",
                        log: Callable[[str], None] = print) -> ResolvedTimeModels:
    """The time models from `dbl.alpha/beta`, else `dbl.calibration`, else measured here
    (`measure_time_models`: not pure, it runs training steps)."""
    given = configured_time_models(cfg)
    if given.models:
        return given
    if not needs_time_model(cfg):
        # n_S = 0: every worker gets N/W at B_L whatever the time model.
        return ResolvedTimeModels({r: DEFAULT_TIME_MODEL for r in cfg.schedule.resolutions}, given.batches,
                                  "default (not needed: dbl.small=0)")
    return measure_time_models(cfg, given.batches, num_classes=num_classes, in_channels=in_channels, device=device,
                               log=log)


def measure_time_models(cfg: Any, batches: dict[int, int], *, num_classes: int, in_channels: int,
                        device: str = "cpu", log: Callable[[str], None] = print) -> ResolvedTimeModels:
    """Time the run's own training step (`engine_step_factory(cfg)`: `TorchEngine.train_step`
    with the config's precision, memory format, compile, optimizer and loss) at every
    resolution on a grid of batches up to `batches[r]` (B_L), and fit the time models. A
    measurement that fails gives `DEFAULT_TIME_MODEL`, and says so."""
    resolutions = list(cfg.schedule.resolutions)
    log(f"measuring the time model of {cfg.model.name} at {resolutions} px on {device} "
        f"(set dbl.alpha/dbl.beta or dbl.calibration to skip this)")
    measuring = time.perf_counter()
    try:
        grid = sorted({b for r in resolutions for b in batch_grid(batches[r], smallest=8, points=5)})
        # auto_cap (CPU): fit only up to the batch with the best throughput; beyond it a
        # CPU gets slower per sample (caches), which bends the line to a negative alpha.
        import_modules(cfg.imports)
        cal = calibrate(cfg.model.name, resolutions, make_step=engine_step_factory(cfg), device=device,
                        num_classes=num_classes, in_channels=in_channels,
                        model_kwargs=cfg.model.kwargs, cifar_stem=cfg.model.cifar_stem,
                        precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile,
                        batch_sizes=grid, batch_cap=max(batches.values()), warmup=1, repeats=3,
                        threads=threads_per_worker(cfg) if device == "cpu" else None, progress=False,
                        auto_cap=device == "cpu")
        models = cal.time_models()  # alpha, beta >= 0; the planner says what each regime means
        source = MEASURED
    except ValueError as exc:
        log(f"time model measurement failed ({exc}); using the default {DEFAULT_TIME_MODEL}")
        models = {r: DEFAULT_TIME_MODEL for r in resolutions}
        source = "default (measurement failed)"
    return ResolvedTimeModels(models, batches, source, time.perf_counter() - measuring)


# Below this R^2 a measured time model with a slope says little about how the step time
# grows with the batch (a busy machine, a step dominated by noise).
POOR_FIT_R2 = 0.5


def poor_fit_lines(models: dict[int, Any]) -> list[str]:
    """Lines on measured time models the plan's shares rest on but should not, per resolution:
    a line with a slope that explains little of the measured times (R^2 < `POOR_FIT_R2`),
    and, where each worker measured its own, workers whose step time did not grow with the
    batch (beta = 0) beside workers whose did: on like hardware that is the measurement's
    noise, and it moves data between them. A flat line on every worker is a launch-bound
    device, which the plan's regime line says. Each line gives the values and what to do."""
    advice = "give dbl.alpha/dbl.beta or dbl.calibration (`dbl-ps calibrate` on a quiet machine)"
    lines = []
    for r, value in models.items():
        per_worker = list(value) if isinstance(value, (list, tuple)) else [value]
        flat = [w for w, m in enumerate(per_worker) if m.beta == 0]
        if flat and len(flat) < len(per_worker):
            sloped = [w for w in range(len(per_worker)) if w not in flat]
            lines.append(f"time models at {r} px: worker(s) {flat} measured no cost per sample (beta 0) and "
                         f"worker(s) {sloped} did (beta up to {max(per_worker[w].beta for w in sloped):.3g} s): the "
                         f"shares follow the difference; {advice}")
        for w, m in enumerate(per_worker):
            r2 = getattr(m, "r2", None)
            if m.beta == 0 or r2 is None or not math.isfinite(r2) or r2 >= POOR_FIT_R2:
                continue
            who = f" (worker {w})" if len(per_worker) > 1 else ""
            lines.append(f"time model at {r} px{who}: alpha {m.alpha:.4g} s, beta {m.beta:.4g} s/sample fitted with "
                         f"R^2 = {r2:.2f}: the step times measured did not follow the batch size (a busy machine?), "
                         f"and the plan's shares rest on this line; {advice}")
    return lines


def needs_time_model(cfg: Any) -> bool:
    """Whether the plan depends on the time models: DBSL with small workers, or a mixed-batch
    split (`sync: mixed_batch`); plain PS training gives every worker N/W at B_L."""
    return cfg.dbl.small > 0 or SYNCHRONIZERS.traits(cfg.sync)["plan"] == "mixed"


def build_plan(cfg: Any, dataset_size: int, models: dict[int, TimeModel], batches: dict[int, int]) -> Plan:
    """The run's plan of every resolution: DBSL's (with the small batch chosen in `dbl.batch_small`
    where set), or the mixed-batch split of the global batch (`sync: mixed_batch`). A time model
    the planner cannot use is one `InfeasiblePlanError` naming what to change."""
    if SYNCHRONIZERS.traits(cfg.sync)["plan"] == "mixed":
        global_batch = cfg.global_batch() or [cfg.dbl.workers * batches[r] for r in cfg.schedule.resolutions]
        return plan_mixed(models, dict(zip(cfg.schedule.resolutions, global_batch)), cfg.dbl.workers, dataset_size,
                          cfg.memory_caps())
    return make_plan(models, batches, cfg.dbl.workers, cfg.dbl.small, cfg.dbl.tau, dataset_size,
                     cfg.dbl.min_small_batch, cfg.batch_small())


def plan_from_dict(data: dict[str, Any]) -> Plan:
    """Rebuild a `Plan` from `Plan.to_dict()` output (what plan.json holds)."""
    plans = {}
    for key, rp in data["per_resolution"].items():
        models = [TimeModel(alpha=m["alpha"], beta=m["beta"], r2=m.get("r2")) for m in rp["time_models"]]
        # Re-plan from the saved inputs: the planners are deterministic, so this is the saved plan.
        if rp.get("global_batch"):  # a mixed-batch split
            plans[int(key)] = plan_mixed_resolution(models, rp["global_batch"], rp["dataset_size"],
                                                    caps=rp.get("memory_caps"), resolution=int(key))
        else:
            plans[int(key)] = plan_resolution(models, rp["batch_large"], small=rp["small"], tau=rp["tau"],
                                              dataset_size=rp["dataset_size"], resolution=int(key),
                                              min_small_batch=rp.get("min_small_batch", 1),  # plans written before the floor
                                              batch_small=rp.get("batch_small_request"))
        if list(plans[int(key)].shares) != list(rp["shares"]) or list(plans[int(key)].batches) != list(rp["batches"]):
            raise ValueError(f"saved plan at {key} px does not match its inputs (shares {rp['shares']}, batches {rp['batches']})")
    return Plan(workers=data["workers"], small=data["small"], tau=data["tau"], dataset_size=data["dataset_size"],
                resolutions=dict(sorted(plans.items())))


def build_spec(cfg: Any, plan: Plan) -> ScheduleSpec:
    """The schedule of a run: LR, resolution cycle and dropout from the config, batch
    sizes from the plan (the largest per resolution; each worker reads its own)."""
    resolutions = tuple(cfg.schedule.resolutions)
    rplans = [plan[r] for r in resolutions]
    s = cfg.schedule
    return ScheduleSpec(
        epochs=s.epochs, base_lr=s.lr, milestones=tuple(s.milestones), gamma=s.gamma,
        warmup_epochs=s.warmup_epochs, warmup_start_factor=s.warmup_start_factor,
        resolutions=resolutions, dropouts=tuple(cfg.dropouts()),
        batch_large=tuple(max(p.batch_large) for p in rplans),
        batch_small=tuple(p.batch_small for p in rplans) if plan.small else None,
        cyclic=s.cyclic,
        swa_start=swa_start_epoch(cfg.swa.start, s.epochs) if cfg.swa.enabled else None,
        swa_lr=cfg.swa.lr, swa_anneal_epochs=cfg.swa.anneal_epochs,
    )


def sync_boundaries(steps: int, sync_every: int | str, mode: str, all_steps: Sequence[int]) -> list[int]:
    """Local step counts after which a worker with `steps` steps this epoch pushes.

    `mini_epoch`: once, at the end. Every `k` steps in asp/ssp: after k, 2k, ... and at
    the end. In bsp every worker must push the same number of times per epoch (a
    round needs all of them), so there are `S = ceil(max(all_steps) / k)` pushes,
    spread evenly over each worker's own steps (`ceil(j * steps / S)`, j = 1..S).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if sync_every == "mini_epoch":
        return [steps]
    k = int(sync_every)
    if mode == "bsp":
        rounds = max(1, math.ceil(max(all_steps) / k))
        return [math.ceil(j * steps / rounds) for j in range(1, rounds + 1)]
    points = list(range(k, steps, k))
    return points + [steps]


def epoch_seed(seed: int, worker: int, epoch: int, member: int = 0) -> int:
    """Seed of a worker's torch RNG (dropout) for one epoch: a function of
    (seed, worker, epoch) only, so a resumed run draws exactly what the
    uninterrupted one drew. `member`: the rank inside a worker group of several
    ranks (FSDP), each drawing for its own slice of the batch; member 0 draws what
    a one-rank worker draws, in every mode."""
    words = [seed, 1_000_003, worker, epoch] + ([member] if member else [])
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def build_run_model(cfg: Any, num_classes: int, in_channels: int, *, dropout: float = 0.0,
                    log: Callable[[str], None] | None = None) -> nn.Module:
    """The run's model (`model.*`), after importing the config's `imports`: what the launcher,
    every worker process and every rank build (each in its own process)."""
    import_modules(cfg.imports)
    m = cfg.model
    return build_model(m.name, num_classes, in_channels, dropout, kwargs=m.kwargs, cifar_stem=m.cifar_stem, log=log)


def check_run_model(cfg: Any, model: nn.Module, num_classes: int, in_channels: int, device: torch.device) -> None:
    """What can be checked before any worker starts: the model's output size on a tiny batch
    at the smallest resolution, and that the device can run the configured precision."""
    check_model_output(model, cfg.model.name, num_classes, in_channels, min(cfg.schedule.resolutions))
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"config key 'precision': got 'bf16', but {torch.cuda.get_device_name(device)} cannot "
                         f"compute in bf16 (it needs compute capability 8.0 or newer); use 'fp16' or 'fp32'")


def warm_up_shapes(plan: Plan, spec: ScheduleSpec, worker: int) -> list[tuple[int, int, float]]:
    """Every (batch, resolution, dropout) worker `worker` trains with: its planned batch and the
    last partial batch of its share, at each resolution of the schedule with that resolution's
    dropout rate (a compiled graph is specialised on the rate, so it is part of the shape)."""
    shapes = []
    for r, p in zip(spec.resolutions, spec.dropouts):
        rp = plan[r]
        batch, share = rp.batches[worker], rp.shares[worker]
        shapes.append((min(batch, share), r, p))
        if share > batch and share % batch:
            shapes.append((share % batch, r, p))
    return shapes


# The inputs a plan is made from, named before anything that follows from them (shares, weights).
_PLAN_INPUTS = ("workers", "small", "tau", "dataset_size", "resolutions")
_RESOLUTION_INPUTS = ("time_models", "batch_large", "batch_small_request", "min_small_batch")


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place two JSON values differ: (path, a's value, b's value), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{path}[{i}]"))),
                    None)
    return None if a == b else (path, a, b)


def plan_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """Where two plans (`plan_to_dict`) differ, their inputs first."""
    inputs = [(k, k) for k in _PLAN_INPUTS] + [
        (f"per_resolution.{r}.{k}", (r, k)) for r in a.get("per_resolution", {}) for k in _RESOLUTION_INPUTS]
    for path, key in inputs:
        x, y = (a.get(key), b.get(key)) if isinstance(key, str) else \
            (a["per_resolution"][key[0]].get(key[1]), b.get("per_resolution", {}).get(key[0], {}).get(key[1]))
        found = _first_difference(x, y, path)
        if found:
            return found
    return _first_difference(a, b)
