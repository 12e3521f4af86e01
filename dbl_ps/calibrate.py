"""Measure the time model ``t(b) = alpha + beta * b`` of a model on this device.

For every resolution: find the largest batch ``B_L`` (GPU: probe out-of-memory, keep a
safety margin; CPU: a configured cap), time real training steps (forward, backward,
SGD step on synthetic data of the right shape) over a grid of batch sizes up to
``B_L`` - warm-up steps excluded, median of the timed steps - and fit
``alpha``, ``beta`` by least squares with both >= 0 (``planner.fit_nonnegative_time_model``). The result is a
JSON file that ``dbl-ps plan`` and ``dbl-ps train`` read (``load_calibration``)::

    {"device": "cpu", "model": "small_resnet",
     "resolutions": {"24": {"alpha": .., "beta": .., "r2": .., "batch_large": ..,
                            "samples": [[b, seconds], ...]}, ...},
     "torch_version": "2.x", "created": "2026-01-01T00:00:00+00:00", "settings": {...}}

The timed step is not written here: the caller passes ``make_step``, which builds the
run's own training step around the model built here (``dbl_ps.training.time_models.
run_engine_steps``: the run's engine's step, e.g. ``TorchEngine.train_step`` with the run's
optimizer, loss, precision, memory format and compile), so the time model is that of the
step the run trains with. This module is core and may not import the training layer.

Data loading is not timed: the plan balances compute, and the loader is expected to
keep up (pre-resized shards).

Reading a calibration file into a run's time models is here too, once for every
caller (``dbl-ps train`` and ``dbl-ps plan`` through ``configured_time_models``,
``dbl-ps plan --calibration`` and ``api.plan_from_calibration`` through
``calibration_time_models``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol

import torch
from torch import nn
from tqdm import tqdm

from dbl_ps.config import RunConfig
from dbl_ps.models import AUTOCAST_DTYPES, build_model
from dbl_ps.planner import TimeModel, fit_nonnegative_time_model


CPU_BATCH_CAP = 128
# How the timed steps of one batch size become one sample. The median is the default;
# the minimum suits a machine shared with other jobs, whose load only ever slows a step.
STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}
GPU_PROBE_LIMIT = 1 << 16
# The OOM probe stops within 1/64 of the edge (B_L keeps `margin` = 90 % of it anyway).
PROBE_TOLERANCE = 1 / 64


@dataclass(frozen=True)
class ResolutionCalibration:
    """Fitted time model, largest batch and raw ``(batch, median seconds)`` samples of one resolution."""

    resolution: int
    alpha: float
    beta: float
    r2: float
    batch_large: int
    samples: tuple[tuple[int, float], ...]

    def time_model(self) -> TimeModel:
        return TimeModel(alpha=self.alpha, beta=self.beta, r2=self.r2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "r2": self.r2,
            "batch_large": self.batch_large,
            "samples": [[b, s] for b, s in self.samples],
        }


@dataclass(frozen=True)
class Calibration:
    """A calibration file's content."""

    device: str
    model: str
    resolutions: dict[int, ResolutionCalibration]
    torch_version: str
    created: str
    settings: dict[str, Any] = field(default_factory=dict)

    def time_models(self) -> dict[int, TimeModel]:
        return {r: c.time_model() for r, c in self.resolutions.items()}

    def batch_large(self) -> dict[int, int]:
        return {r: c.batch_large for r, c in self.resolutions.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "model": self.model,
            "resolutions": {str(r): c.to_dict() for r, c in sorted(self.resolutions.items())},
            "torch_version": self.torch_version,
            "created": self.created,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration") -> Calibration:
        """Validate and build; every problem is a ``ValueError`` naming the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        for key in ("device", "model", "resolutions"):
            if key not in data:
                raise ValueError(f"{source}: missing key {key!r}")
        if not isinstance(data["resolutions"], dict) or not data["resolutions"]:
            raise ValueError(f"{source}: 'resolutions' must be a non-empty object keyed by pixels")
        resolutions = {}
        for key, entry in data["resolutions"].items():
            where = f"{source}: resolutions[{key!r}]"
            try:
                r = int(key)
            except ValueError:
                raise ValueError(f"{where}: key must be a resolution in pixels") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object")
            for name in ("alpha", "beta", "batch_large"):
                if name not in entry:
                    raise ValueError(f"{where}: missing key {name!r}")
            b_large = entry["batch_large"]
            if isinstance(b_large, bool) or not isinstance(b_large, int) or b_large < 1:
                raise ValueError(f"{where}: batch_large={b_large!r} must be a positive integer")
            try:
                model = TimeModel(alpha=entry["alpha"], beta=entry["beta"])
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            samples = tuple((int(b), float(s)) for b, s in entry.get("samples", []))
            r2 = entry.get("r2")
            resolutions[r] = ResolutionCalibration(
                resolution=r,
                alpha=model.alpha,
                beta=model.beta,
                r2=float("nan") if r2 is None else float(r2),
                batch_large=b_large,
                samples=samples,
            )
        return cls(
            device=str(data["device"]),
            model=str(data["model"]),
            resolutions=dict(sorted(resolutions.items())),
            torch_version=str(data.get("torch_version", "")),
            created=str(data.get("created", "")),
            settings=dict(data.get("settings", {})),
        )


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration JSON file written by ``dbl-ps calibrate`` (``ValueError`` if unusable)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"calibration file {str(path)!r} cannot be read: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"calibration file {str(path)!r} is not valid JSON: {err}") from None
    return Calibration.from_dict(data, source=str(path))


class ResolvedTimeModels(NamedTuple):
    """A run's time models: per resolution, `B_L` per resolution, where they came from, and
    the seconds spent measuring them (0 when the config or a file gave them), which every
    caller reports apart from the training time."""

    models: dict[int, TimeModel]
    batches: dict[int, int]
    source: str
    seconds: float = 0.0


def calibration_time_models(path: str | Path, resolutions: Sequence[int] | None = None, *,
                            key: str | None = None) -> ResolvedTimeModels:
    """The time model and largest batch at each of ``resolutions`` (default: every one the
    file has) from the calibration file ``path``. A resolution the file lacks is one
    ``ValueError`` naming the file, the missing and the covered resolutions; ``key`` is
    the config key that named the file, if any, which the error then says to change."""
    cal = load_calibration(path)
    wanted = sorted(cal.resolutions) if resolutions is None else list(resolutions)
    missing = [r for r in wanted if r not in cal.resolutions]
    if missing:
        hint = "" if key is None else f" (set {key} to a matching file)"
        raise ValueError(f"calibration file {str(path)!r} has no entry for resolution(s) {missing}; "
                         f"it covers {sorted(cal.resolutions)}{hint}")
    return ResolvedTimeModels(models={r: cal.resolutions[r].time_model() for r in wanted},
                              batches={r: cal.resolutions[r].batch_large for r in wanted},
                              source=f"calibration file {path}")


def configured_time_models(cfg: RunConfig) -> ResolvedTimeModels:
    """What a run config (`dbl_ps.config.RunConfig`) says without measuring: the time
    models and B_L of `dbl.calibration`, where set; `dbl.alpha`/`dbl.beta` replace its
    models and `dbl.batch_large` its largest batches. Either dict is empty when the config
    gives none (`dbl-ps train` then measures, `dbl-ps plan` refuses)."""
    resolutions = list(cfg.schedule.resolutions)
    models: dict[int, TimeModel] = {}
    batches: dict[int, int] = {}
    source = ""
    if cfg.dbl.calibration:
        models, batches, source, _ = calibration_time_models(cfg.dbl.calibration, resolutions, key="dbl.calibration")
    tm = cfg.time_model()
    if tm is not None:
        models = {r: TimeModel(alpha=a, beta=b) for r, (a, b) in zip(resolutions, tm)}
        source = "config (dbl.alpha, dbl.beta)"
    given = cfg.batch_large()
    if given is not None:
        batches = dict(zip(resolutions, given))
    return ResolvedTimeModels(models, batches, source)


def save_calibration(calibration: Calibration, path: str | Path) -> None:
    Path(path).write_text(json.dumps(calibration.to_dict(), indent=2) + "\n")


def format_calibration_table(calibration: Calibration) -> str:
    """Plain-text table: resolution, alpha, beta, R^2, largest batch, ms per sample at it."""
    rows = [("res", "alpha (s)", "beta (s/sample)", "R^2", "batch_large", "ms/sample at B_L", "samples")]
    for r, c in calibration.resolutions.items():
        rows.append(
            (
                str(r),
                f"{c.alpha:.4g}",
                f"{c.beta:.4g}",
                f"{c.r2:.4f}",
                str(c.batch_large),
                f"{1000 * c.time_model().sample_seconds(c.batch_large):.4g}",
                str(len(c.samples)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    head = f"{calibration.model} on {calibration.device}"
    return head + "\n" + "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


# --------------------------------------------------------------------------- pure helpers


def batch_grid(batch_large: int, *, smallest: int = 8, points: int = 6) -> list[int]:
    """About ``points`` batch sizes spaced geometrically from ``smallest`` to ``batch_large``
    (both included, distinct, increasing)."""
    if batch_large < 1:
        raise ValueError(f"batch_large={batch_large} must be >= 1")
    if points < 2:
        raise ValueError(f"points={points} must be >= 2 to fit a line")
    lo = min(smallest, batch_large)
    if lo == batch_large:
        return [batch_large] if batch_large == 1 else [max(1, batch_large // 2), batch_large]
    ratio = (batch_large / lo) ** (1 / (points - 1))
    grid = sorted({round(lo * ratio**i) for i in range(points)} | {batch_large})
    return [b for b in grid if 1 <= b <= batch_large]


def best_throughput_index(samples: Sequence[tuple[int, float]]) -> int:
    """Index of the sample with the fewest seconds per sample, ``t / b`` (the last on ties)."""
    per_sample = [t / b for b, t in samples]
    best = min(per_sample)
    return max(i for i, v in enumerate(per_sample) if v == best)


def probe_max_batch(fits: Callable[[int], bool], *, start: int = 16, limit: int = 1 << 16,
                    tolerance: float = 0.0) -> int:
    """Largest ``b <= limit`` with ``fits(b)`` true, assuming fits is monotone (true up to a
    point): double from ``start`` until it fails, then bisect. Returns 0 if ``fits(1)`` fails.

    With ``tolerance > 0`` the bisection stops once the gap between the largest batch
    that fit and the smallest that did not is at most ``tolerance x`` the former, and
    returns a batch that fit: on a GPU every probe near the edge is a full training step
    at tens of thousands of images, and calibration keeps only ``margin x`` of it anyway."""
    if not fits(1):
        return 0
    good, bad = 1, None
    b = max(2, min(start, limit))
    while b <= limit:
        if fits(b):
            good = b
            if b == limit:
                return limit
            b = min(2 * b, limit)
        else:
            bad = b
            break
    if bad is None:
        return good
    while bad - good > max(1.0, tolerance * good):
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


# --------------------------------------------------------------------------- torch parts


def activation_bytes(model_name: str, batch_size: int, resolution: int, *, num_classes: int, in_channels: int,
                     model_kwargs: Mapping[str, Any] | None = None, cifar_stem: bool = False) -> int:
    """Bytes of the layer outputs that one forward pass of ``model_name`` at ``batch_size``
    images of ``resolution`` px keeps for the backward pass (in-place layers add none).
    Computed on torch's meta device: shapes only, no memory used and nothing run, so it
    is safe at any size; a lower bound on the memory a training step needs."""
    with torch.device("meta"):
        model = build_model(model_name, num_classes, in_channels=in_channels, kwargs=model_kwargs, cifar_stem=cifar_stem)
    total = 0

    def count(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):
            total += output.numel() * output.element_size()

    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(count)
    model.train()(torch.empty(batch_size, in_channels, resolution, resolution, device="meta"))
    return total


def device_memory_bytes(device: str) -> int | None:
    """Total memory of ``device`` (a GPU's, or the machine's RAM for the CPU); None when
    this platform does not say."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return None


def check_fits_memory(model_name: str, resolutions: Sequence[int], batch_size: int, *, device: str,
                      num_classes: int, in_channels: int, model_kwargs: Mapping[str, Any] | None = None,
                      cifar_stem: bool = False) -> None:
    """Refuse, before anything is allocated, a resolution at which the activations of one
    step at ``batch_size`` alone exceed the device's total memory: e.g. a typo such as
    100000 px would otherwise try to allocate terabytes (or be killed for it)."""
    memory = device_memory_bytes(device)
    if memory is None:
        return
    for r in sorted(resolutions):
        need = activation_bytes(model_name, batch_size, r, num_classes=num_classes, in_channels=in_channels,
                                model_kwargs=model_kwargs, cifar_stem=cifar_stem)
        if need > memory:
            where = "the GPU" if device.startswith("cuda") else "this machine"
            raise ValueError(
                f"resolution {r} px: one training step of {model_name} at batch {batch_size} needs at least "
                f"{need / 2**30:,.1f} GiB for its activations, more than the {memory / 2**30:,.1f} GiB of memory of "
                f"{where}; give smaller resolutions (the paper uses 24-288 px)"
                + ("" if device.startswith("cuda") else " or a smaller --batch-cap / --batch-sizes"))


# One optimizer step of the run on a batch already on the device: `step(images, labels)`.
TrainStep = Callable[[torch.Tensor, torch.Tensor], Any]


class StepFactory(Protocol):
    """Builds the training step ``calibrate`` times around the model it built: moves the
    model to ``device`` (in place), applies ``precision`` (autocast), the memory format
    (``channels_last``) and ``compile``, and returns the step. The run's comes from
    ``dbl_ps.training.time_models.run_engine_steps`` (the run's engine)."""

    def __call__(self, model: nn.Module, *, device: str, precision: str, channels_last: bool,
                 compile: bool) -> TrainStep: ...


def synthetic_batch(batch_size: int, resolution: int, *, device: str, num_classes: int,
                    in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels of the right shape on ``device``, as a loader hands them to
    the step (fp32, contiguous: the step converts them, as it does in the run)."""
    images = torch.randn(batch_size, in_channels, resolution, resolution, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    return images, labels


def measure_grid(
    step: TrainStep,
    grid: Sequence[int],
    resolution: int,
    *,
    device: str,
    num_classes: int,
    in_channels: int,
    warmup: int,
    repeats: int,
    sync: Callable[[], None],
    progress: Any = None,
    statistic: str = "median",
) -> list[tuple[int, float]]:
    """``(batch, seconds per step)`` for every batch in ``grid``: the median (or the
    minimum, ``statistic="min"``) of the timed calls of ``step`` on a fixed synthetic batch.

    Each batch size first runs ``warmup`` untimed steps (allocator, cuDNN autotuning,
    torch.compile at that shape); then the timed steps go round-robin over the grid,
    ``repeats`` rounds, so slow drift or a busy neighbour process spreads over all
    batch sizes instead of bending the fitted line.
    """
    batches = {b: synthetic_batch(b, resolution, device=device, num_classes=num_classes, in_channels=in_channels)
               for b in grid}
    for images, labels in batches.values():
        for _ in range(warmup):
            step(images, labels)
            if progress is not None:
                progress.update(1)
    sync()
    times: dict[int, list[float]] = {b: [] for b in grid}
    for _ in range(repeats):
        for b, (images, labels) in batches.items():
            start = time.perf_counter()
            step(images, labels)
            sync()
            times[b].append(time.perf_counter() - start)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(batch=b, ms=f"{1000 * times[b][-1]:.1f}")
    if progress is not None:
        progress.close()
    reduce = STATISTICS[statistic]
    return [(b, reduce(times[b])) for b in grid]


def _cuda_fits(step: TrainStep, model: nn.Module, resolution: int, *, device: str, num_classes: int,
               in_channels: int) -> Callable[[int], bool]:

    def fits(batch_size: int) -> bool:
        # No cuDNN autotuning while probing: it would time every algorithm at every probed
        # shape (minutes at tens of thousands of images) and its workspaces blur the edge.
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            step(*synthetic_batch(batch_size, resolution, device=device, num_classes=num_classes,
                                  in_channels=in_channels))
            torch.cuda.synchronize()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.backends.cudnn.benchmark = benchmark
            model.zero_grad(set_to_none=True)  # the step's module is this model (moved in place)
            torch.cuda.empty_cache()

    return fits


def calibrate(
    model_name: str,
    resolutions: Sequence[int],
    *,
    make_step: StepFactory,
    device: str = "cpu",
    num_classes: int = 10,
    in_channels: int = 3,
    batch_sizes: Sequence[int] | None = None,
    batch_cap: int | None = None,
    grid_points: int = 6,
    smallest_batch: int = 8,
    warmup: int = 2,
    repeats: int = 5,
    margin: float = 0.9,
    compile: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
    auto_cap: bool = False,
    statistic: str = "median",
    threads: int | None = None,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    cifar_stem: bool = False,
) -> Calibration:
    """Measure and fit ``t(b)`` per resolution; see the module doc.

    The timed step is ``make_step(model, device=, precision=, channels_last=, compile=)``
    on the model of ``model_name`` built here: the run's own step
    (``dbl_ps.training.time_models.run_engine_steps``), so ``precision``, ``channels_last``
    and ``compile`` apply as in the run's engine and are recorded in the file's settings.

    ``batch_cap`` is ``B_L`` on the CPU (default ``CPU_BATCH_CAP``: above it, CPU step
    time stops being linear in the batch as activations leave the caches) and the
    probe's upper limit on a GPU (default ``GPU_PROBE_LIMIT``), where
    ``B_L = floor(margin * largest batch that fits)``. ``batch_sizes`` overrides the
    grid (entries above ``B_L`` are dropped). With ``compile=True`` the step's model is
    compiled and warmed up at every shape before timing. With
    ``auto_cap=True`` on the CPU, ``B_L`` is the grid batch with the lowest seconds per
    sample and only the grid up to it is fitted: CPU throughput stops improving (and
    step time stops being linear) once activations outgrow the caches, so a larger
    "largest batch" would be slower per sample, which breaks DBSL's premise.
    """

    if not resolutions:
        raise ValueError("resolutions is empty; give e.g. 24,32")
    for r in resolutions:
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"resolution {r!r} must be a positive integer (pixels)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r} must be 'cpu' or 'cuda' (or 'cuda:N')")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch finds no CUDA GPU; use --device cpu")
    if not 0 < margin <= 1:
        raise ValueError(f"margin={margin} must be in (0, 1]")
    if batch_cap is None:
        batch_cap = GPU_PROBE_LIMIT if device.startswith("cuda") else CPU_BATCH_CAP
    if batch_cap < 2:
        raise ValueError(f"batch_cap={batch_cap} must be >= 2")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r} must be one of {', '.join(STATISTICS)}")
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision!r} must be one of {', '.join(AUTOCAST_DTYPES)}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup={warmup} must be >= 0 and repeats={repeats} >= 1")
    if batch_sizes is not None and any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes={list(batch_sizes)} must all be >= 1")
    # The step that must fit: batch 1 on a GPU (the out-of-memory probe starts there and
    # stops at the edge), the largest batch of the grid on the CPU (it is simply run).
    if device.startswith("cuda"):
        largest = 1
    else:
        largest = max((b for b in batch_sizes or () if b <= batch_cap), default=batch_cap)
    check_fits_memory(model_name, resolutions, largest, device=device, num_classes=num_classes, in_channels=in_channels,
                      model_kwargs=model_kwargs, cifar_stem=cifar_stem)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _calibrate(
            model_name, resolutions, make_step=make_step, device=device, num_classes=num_classes, in_channels=in_channels,
            batch_sizes=batch_sizes, batch_cap=batch_cap, grid_points=grid_points, smallest_batch=smallest_batch,
            warmup=warmup, repeats=repeats, margin=margin, compile=compile, precision=precision,
            channels_last=channels_last, auto_cap=auto_cap,
            statistic=statistic, progress=progress, model_kwargs=model_kwargs, cifar_stem=cifar_stem,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _calibrate(
    model_name: str,
    resolutions: Sequence[int],
    *,
    make_step: StepFactory,
    device: str,
    num_classes: int,
    in_channels: int,
    batch_sizes: Sequence[int] | None,
    batch_cap: int,
    grid_points: int,
    smallest_batch: int,
    warmup: int,
    repeats: int,
    margin: float,
    compile: bool,
    precision: str,
    channels_last: bool,
    auto_cap: bool,
    statistic: str,
    progress: bool,
    model_kwargs: Mapping[str, Any] | None,
    cifar_stem: bool,
) -> Calibration:

    torch.manual_seed(0)
    on_gpu = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    model = build_model(model_name, num_classes, in_channels=in_channels, kwargs=model_kwargs,
                        cifar_stem=cifar_stem).train()
    # One step for every resolution and batch, as a run has one engine for all of them.
    step = make_step(model, device=device, precision=precision, channels_last=channels_last, compile=compile)

    results = {}
    for r in sorted(resolutions):
        if on_gpu:
            fits = _cuda_fits(step, model, r, device=device, num_classes=num_classes, in_channels=in_channels)
            largest = probe_max_batch(fits, limit=batch_cap, tolerance=PROBE_TOLERANCE)
            if largest == 0:
                raise ValueError(f"{model_name} at {r} px does not fit on {device} even with batch 1")
            b_large = max(1, math.floor(margin * largest))
        else:
            b_large = batch_cap
        grid = sorted({b for b in (batch_sizes or batch_grid(b_large, smallest=smallest_batch, points=grid_points)) if b <= b_large})
        if len(grid) < 2:
            raise ValueError(f"need at least 2 batch sizes <= batch_large={b_large} at {r} px, got {grid}")
        samples = measure_grid(
            step,
            grid,
            r,
            device=device,
            num_classes=num_classes,
            in_channels=in_channels,
            warmup=warmup,
            repeats=repeats,
            sync=sync,
            statistic=statistic,
            progress=tqdm(
                total=len(grid) * (warmup + repeats),
                desc=f"calibrate {model_name} {r}px",
                unit="step",
                disable=not progress,
            ),
        )
        if auto_cap and not on_gpu:
            samples = samples[: best_throughput_index(samples) + 1]
            if len(samples) < 2:
                raise ValueError(
                    f"at {r} px the smallest batch {grid[0]} already has the best throughput; "
                    f"give smaller --batch-sizes"
                )
            b_large = samples[-1][0]
        # alpha, beta >= 0: a launch-bound GPU step is flat in the batch (beta 0), and noise
        # must not tip it into a negative slope that no plan can use.
        fit = fit_nonnegative_time_model(samples)
        results[r] = ResolutionCalibration(
            resolution=r,
            alpha=fit.alpha,
            beta=fit.beta,
            r2=float(fit.r2) if fit.r2 is not None else math.nan,
            batch_large=b_large,
            samples=tuple(samples),
        )
    return Calibration(
        device=torch.cuda.get_device_name(device) if on_gpu else "cpu",
        model=model_name,
        resolutions=results,
        torch_version=torch.__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        settings={
            "device": device,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "warmup": warmup,
            "repeats": repeats,
            "statistic": statistic,
            "batch_cap": batch_cap,
            "margin": margin if on_gpu else None,
            "compile": compile,
            "precision": precision,
            "channels_last": channels_last,
            "auto_cap": auto_cap and not on_gpu,
            "threads": torch.get_num_threads(),
        },
    )
