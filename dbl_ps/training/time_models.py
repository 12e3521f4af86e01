"""The run's time models (`t(b) = alpha + beta * b` per resolution), which the plan is made from.

They come, in order of precedence, from `dbl.alpha`/`dbl.beta`, from the calibration file in
`dbl.calibration` (both read by `dbl_ps.calibrate.configured_time_models`, as `dbl-ps plan
--config` reads them), or are measured on the spot by `measure_time_models` (a few seconds on
the CPU; not pure: it runs training steps), which times the run's own training step
(`run_engine_steps`: the step of the run's engine, with the config's precision, memory
format, compile, optimizer and loss; DeepSpeed's from the run's DeepSpeed JSON). Every
measured model (alpha, beta >= 0) plans: where it cannot choose the small batch (no fixed
cost per step) the planner says so and takes the authors' fraction; only a measurement
that fails falls back to `DEFAULT_TIME_MODEL`, and says so. A resumed run reads its plan back
(`dbl_ps.training.run_plan`) instead of measuring again.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

from dbl_ps.calibrate import ResolvedTimeModels, StepFactory, batch_grid, calibrate, configured_time_models
from dbl_ps.config import RunConfig
from dbl_ps.imports import ImportPathError, import_modules
from dbl_ps.planner import TimeModel
from dbl_ps.registry import ENGINES, SYNCHRONIZERS
from dbl_ps.training.cores import threads_per_worker
from dbl_ps.training.engine import Engine, engine_step_factory
from dbl_ps.training.topology import LaunchError

__all__ = ["DEFAULT_TIME_MODEL", "MEASURED", "POOR_FIT_R2", "ResolvedTimeModels", "resolve_time_models",
           "measure_time_models", "run_engine_steps", "needs_time_model", "poor_fit_lines"]

# Typical of a small ResNet at 8-16 px on one CPU core: 3 ms fixed cost per step,
# 0.2 ms per sample. Only used when a measurement on the spot is unusable.
DEFAULT_TIME_MODEL = TimeModel(alpha=0.003, beta=0.0002)


MEASURED = "measured on the spot"  # the source of a time model measured by the run itself


def resolve_time_models(cfg: RunConfig, *, num_classes: int, in_channels: int, device: str = "cpu",
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


def measure_time_models(cfg: RunConfig, batches: dict[int, int], *, num_classes: int, in_channels: int,
                        device: str = "cpu", log: Callable[[str], None] = print) -> ResolvedTimeModels:
    """Time the run's own training step (`run_engine_steps`: the run's engine with the
    config's precision, memory format, compile, optimizer and loss) at every
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
        with run_engine_steps(cfg, device, log) as make_step:
            cal = calibrate(cfg.model.name, resolutions, make_step=make_step, device=device,
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


@contextlib.contextmanager
def run_engine_steps(cfg: RunConfig, device: str, log: Callable[[str], None] = print) -> Iterator[StepFactory]:
    """The training step of the engine the run trains with (`engine:`), for its time model:
    the engine's own calibration (the registry's `calibration` trait: DeepSpeed builds its
    engine from the run's DeepSpeed JSON, FSDP its sharded engine on the worker's mesh), else
    an Engine subclass built as itself (`torch`, a user's subclass), else (a user's engine
    factory with no calibration) the `engine: torch` step of the same model, optimizer and
    loss, and the run says so."""
    try:
        entry = ENGINES.get(cfg.engine)
        timer = ENGINES.trait_object(cfg.engine, "calibration")
    except ImportPathError as exc:
        raise LaunchError(str(exc)) from None
    if timer is not None:
        with timer(cfg, device) as make_step:
            yield make_step
        return
    if isinstance(entry.obj, type) and issubclass(entry.obj, Engine):
        yield engine_step_factory(cfg, entry.obj)
        return
    log(f"engine {cfg.engine}: its step is not timed alone (no calibration registered); the time model is "
        f"the plain torch step of the same model, optimizer and loss")
    yield engine_step_factory(cfg)


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


def needs_time_model(cfg: RunConfig) -> bool:
    """Whether the plan depends on the time models: DBSL with small workers, or a mixed-batch
    split (`sync: mixed_batch`); plain PS training gives every worker N/W at B_L."""
    return cfg.dbl.small > 0 or SYNCHRONIZERS.traits(cfg.sync)["plan"] == "mixed"
