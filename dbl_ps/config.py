"""Typed, validated run configuration.

A run is a tree of small dataclasses (`RunConfig` at the root). It is loaded
from YAML plus `key=value` command-line overrides and validated once, at load:
an unknown key, a value of the wrong type or out of range, or sections that
disagree with each other is one `ConfigError` that names the full dotted key,
the value and what is allowed.

    cfg = load_config("configs/cifar100_resnet18.yaml", ["dbl.tau=1.1", "dbl.small=2"])
    cfg = RunConfig()                      # the embedded default: DBSL+CPL on digits, CPU
    cfg = RunConfig.from_dict(cfg.to_dict())

Values the user did not set follow the ones they did, so one override is enough:
`schedule.epochs=4` alone scales the milestones, `schedule.resolutions=[24,32]`
alone derives the dropout rates and largest batches of the new resolutions (the
rules are in `_follow`; `load_config(..., notes=[])` collects one line per derived
value). A config name without a path (`cifar100_resnet18`) is a config shipped in
the package (`dbl_ps/configs`, listed by `dbl-ps configs`).

Type annotations are the schema: `int`, `float`, `bool`, `str`, `Literal[...]`,
`list[T]`, `X | None` and nested config dataclasses. Range limits live in each
field's metadata (`ge`, `gt`, `le`, `lt`); rules that involve more than one
field live in the class's `check(prefix)` method.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from dbl_ps.configs import find_deepspeed_config, find_run_config, run_configs
from dbl_ps.planner import DEFAULT_THRESHOLD
from dbl_ps.registry import DATA_SOURCES, ENGINES, SYNCHRONIZERS, TRACKERS, Registry, UnknownPluginError
from dbl_ps.schedule import ScheduleSpec, epochs_at_each_resolution

__all__ = [
    "ConfigError",
    "DataConfig",
    "SyntheticConfig",
    "ModelConfig",
    "ScheduleConfig",
    "DBSLConfig",
    "StoreConfig",
    "MixedBatchConfig",
    "OptimConfig",
    "EvalConfig",
    "FSDPConfig",
    "LaunchConfig",
    "LossConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "parse_override",
    "per_resolution",
    "check_workers_fit",
    "resolve_sync",
    "sync_record",
    "sync_line",
    "rule_fits",
    "SOURCES",
    "MODELS",
]

# The built-in data sources (dbl_ps.registry.DATA_SOURCES; `data.source` may also be an import path).
SOURCES = tuple(DATA_SOURCES.names())
# The built-in models; `model.name` may also be an import path (dbl_ps.models.build_model).
MODELS = ("small_resnet", "resnet18_cifar", "resnet18_imagenet", "resnet50_imagenet")
# Sources read sample by sample from a torch Dataset (per-sample transforms apply there).
STREAMED_SOURCES = tuple(DATA_SOURCES.with_trait("per_sample"))


class ConfigError(ValueError):
    """One bad configuration value. `key` is the full dotted key (or None when
    the error is about a file or an override's syntax), `value` what was given."""

    def __init__(self, message: str, *, key: str | None = None, value: Any = None):
        super().__init__(message)
        self.key = key
        self.value = value


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key '{key}': got {value!r}, expected {allowed}", key=key, value=value)


def _plugin_traits(registry: Registry, key: str, value: str) -> dict[str, Any]:
    """The traits of the plugin `value` names (a registered name or an import path, which is
    not imported here); one ConfigError naming the key and the registered names otherwise."""
    try:
        return registry.traits(value)
    except UnknownPluginError:
        raise _bad(key, value, registry.allowed()) from None


def _names(names: list[str]) -> str:
    return " or ".join(repr(n) for n in names) or "none registered"


def _f(default: Any, *, ge=None, gt=None, le=None, lt=None, help: str = "") -> Any:
    """A dataclass field with range limits (checked per element for lists)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


PerResolution = Any  # list[T] (1 value = all, else one per resolution) or dict[int, T] keyed by resolution


def per_resolution(values: PerResolution | None, resolutions: Sequence[int]) -> list[Any] | None:
    """One value per entry of `resolutions`, from either form of a per-resolution
    setting: a list (one value = the same everywhere, else one per resolution, in
    order) or a mapping {resolution: value} that covers every resolution (extra
    entries are allowed, so a config can list 24 and 32 px and run at 32 only)."""
    if values is None:
        return None
    resolutions = list(resolutions)
    if isinstance(values, Mapping):
        missing = [r for r in resolutions if r not in values]
        if missing:
            raise ValueError(f"no value for resolution(s) {missing} in {dict(values)}")
        return [values[r] for r in resolutions]
    if len(values) == 1:
        return list(values) * len(resolutions)
    if len(values) != len(resolutions):
        raise ValueError(f"expected 1 or {len(resolutions)} values for resolutions {resolutions}, got {len(values)}: {list(values)}")
    return list(values)


# --------------------------------------------------------------------------- sections


@dataclass(kw_only=True)
class SyntheticConfig:
    """Generated images with learnable class structure (for fast tests)."""

    num_train: int = _f(1024, ge=1, help="training images generated")
    num_test: int = _f(256, ge=1, help="test images generated")
    num_classes: int = _f(10, ge=2, help="classes of the generated images")
    channels: int = _f(3, ge=1, le=4, help="colour channels of the generated images")
    size: int = _f(16, ge=4, help="stored image side in pixels")
    seed: int = _f(0, ge=0, le=2**63 - 1, help="the data set's own seed (independent of the run's seed)")

    def check(self, prefix: str) -> None:
        pass


@dataclass(kw_only=True)
class DataConfig:
    source: str = _f("digits", help="where the images come from (docs/DATA.md): a built-in source (digits, "
                                    "fashion_mnist, mnist, cifar10, cifar100, imagefolder, synthetic; registered in "
                                    "dbl_ps.registry.DATA_SOURCES), 'shards' (the multi-resolution shards `dbl-ps "
                                    "shard` writes, or webdataset tars written by other tools), 'factory' (your own "
                                    "datasets, data.factory), or an import path 'package.module:callable' to your "
                                    "loader (data_cfg, image_size) -> dbl_ps.data.Dataset")
    path: str | None = _f(None, help="directory of the source's files (not needed for digits/synthetic/factory): the IDX "
                                     "files or <root>/FashionMNIST/raw (mnist, fashion_mnist); cifar-10-python.tar.gz or "
                                     "its extracted folder (cifar10/100); train/ + val/ class folders (imagefolder); "
                                     "for shards, the directory `dbl-ps shard --out` wrote (it holds index.json), or "
                                     "a folder of webdataset tars train-*.tar (or train/*.tar) and test-*.tar or "
                                     "val-*.tar (or test/*.tar, val/*.tar) whose samples are <key>.jpg|jpeg|png|webp|"
                                     "ppm|pgm + <key>.cls (indexed once into webdataset-index.json)")
    factory: str | None = _f(None, help="source factory: 'package.module:callable' returning (train, test) map-style torch "
                                        "Datasets whose items are (image, int label); image a uint8 or 0..1 float CHW "
                                        "tensor, an HW grayscale tensor or a PIL image. Imported in every process")
    num_classes: int | None = _f(None, ge=2, help="source factory: the number of classes when the training dataset has "
                                                  "no .classes attribute")
    mean: list[float] | None = _f(None, ge=0.0, le=1.0, help="per-channel mean (0..1 scale) for normalisation; null = "
                                                             "the source's, or (factory) estimated on up to 512 training images")
    std: list[float] | None = _f(None, gt=0.0, help="per-channel std (0..1 scale), given together with data.mean")
    augment: bool = _f(True, help="random crop with padding (+ flip where the source allows it)")
    flip: bool | None = _f(None, help="horizontal flip; null = the source's default (off for digits/MNIST)")
    crop_padding: int | None = _f(None, ge=0, help="pixels of padding for random crop; null = resolution // 8")
    random_resized_crop: bool = _f(False, help="ImageNet-style RandomResizedCrop to the stored size per training "
                                               "image instead of the centre crop (imagefolder and factory only)")
    randaugment: bool = _f(False, help="torchvision v2.RandAugment per training image (uint8), before the batch transform")
    mixup_alpha: float = _f(0.0, ge=0.0, help="MixUp Beta(alpha, alpha) on each training batch; 0 = off. On (with "
                                              "cutmix_alpha too: one of the two per batch), batches carry soft labels")
    cutmix_alpha: float = _f(0.0, ge=0.0, help="CutMix Beta(alpha, alpha) on each training batch; 0 = off (soft labels)")
    image_size: int | None = _f(None, ge=4, help="stored side for imagefolder and factory images (short-side resize + "
                                                 "centre crop, per sample); null = largest resolution")
    train_limit: int | None = _f(None, ge=1, help="use a fixed random subset of this many training images")
    test_limit: int | None = _f(None, ge=1, help="use a fixed random subset of this many test images")
    eval_batch_size: int = _f(512, ge=1, help="batch size of the global model's evaluation (memory only: results do not depend on it)")
    num_workers: int = _f(0, ge=0, help="DataLoader processes reading and decoding samples (imagefolder, factory, "
                                        "shards); 0 = in the training process")
    verify: bool = _f(False, help="source shards: check each shard's SHA-256 against index.json the first time a "
                                  "run's loader opens it (as `dbl-ps shard --verify`; reads every shard once more)")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def check(self, prefix: str) -> None:
        traits = _plugin_traits(DATA_SOURCES, f"{prefix}source", self.source)
        if traits["path"] and not self.path:
            raise _bad(f"{prefix}path", self.path, f"the directory holding the {self.source} files (source '{self.source}' reads files)")
        if traits["factory"] and not self.factory:
            raise _bad(f"{prefix}factory", self.factory, "'package.module:callable' returning (train, test) datasets "
                       f"(source {self.source!r} builds its data with it)")
        if self.factory and not traits["factory"]:
            factories = DATA_SOURCES.with_trait("factory")
            raise _bad(f"{prefix}factory", self.factory, f"null unless data.source is {_names(factories)} (set data.source: "
                       f"{factories[0] if factories else '...'}; it is {self.source!r})")
        if (self.mean is None) != (self.std is None):
            key, value = ("mean", self.mean) if self.mean is not None else ("std", self.std)
            raise _bad(f"{prefix}{key}", value, "to be given together with data.mean/data.std, one value per channel")
        if self.mean is not None and self.std is not None and (len(self.mean) != len(self.std) or len(self.mean) not in (1, 3)):
            raise _bad(f"{prefix}mean", self.mean, f"1 or 3 values, as many as data.std has ({len(self.std)})")
        # dbl-ps's own shards (index.json, pre-resized sets) are decoded per batch; a folder of
        # webdataset tars written by other tools is read sample by sample like imagefolder.
        own_shards = traits["shard_sets"] and self.path is not None and (Path(self.path) / "index.json").is_file()
        per_sample = traits["per_sample"] or (traits["shard_sets"] and not own_shards)
        if self.random_resized_crop and not per_sample:
            raise _bad(f"{prefix}random_resized_crop", True, f"false for source {self.source!r}: it crops each image as it "
                       f"is read, which sources {', '.join(STREAMED_SOURCES)} and webdataset tars do (in-memory sources "
                       f"and `dbl-ps shard` sets use the padded random crop)")
        if self.randaugment and own_shards:
            raise _bad(f"{prefix}randaugment", True, "false for `dbl-ps shard` sets (use a source read per sample: "
                       f"{', '.join(STREAMED_SOURCES)}, webdataset tars, or an in-memory one)")


@dataclass(kw_only=True)
class ModelConfig:
    name: str = _f("small_resnet", help="a built-in model (small_resnet, resnet18_cifar, resnet18_imagenet, "
                                        "resnet50_imagenet) or an import path 'package.module:callable' called "
                                        "with num_classes= and model.kwargs (e.g. torchvision.models:resnet18)")
    kwargs: dict[str, Any] = _f({}, help="keyword arguments for a model by import path (e.g. {model_name: resnet50} "
                                         "for timm:create_model)")
    cifar_stem: bool = _f(False, help="give a torchvision-style ResNet (conv1 + maxpool) the 3x3 stride-1 stem "
                                      "without max-pool, for small (32 px) images")
    dropout: list[float] | dict[int, float] = _f({12: 0.0, 16: 0.1}, ge=0.0, lt=1.0,
                                                  help="dropout rate per resolution")

    def check(self, prefix: str) -> None:
        if len(self.dropout) == 0:
            raise _bad(f"{prefix}dropout", self.dropout, "at least one dropout rate")
        if self.name not in MODELS and not _IMPORT_PATH_RE.match(self.name):
            raise _bad(f"{prefix}name", self.name, f"one of {', '.join(MODELS)} or an import path "
                       "'package.module:callable' (e.g. 'torchvision.models:resnet18')")
        if self.name in MODELS and (self.kwargs or self.cifar_stem):
            key, value = (f"{prefix}kwargs", self.kwargs) if self.kwargs else (f"{prefix}cifar_stem", self.cifar_stem)
            raise _bad(key, value, f"unset for the built-in {self.name!r} (they apply to a model by import path; "
                       "resnet18_cifar is ResNet-18 with the CIFAR stem)")


@dataclass(kw_only=True)
class ScheduleConfig:
    epochs: int = _f(24, ge=1, help="global epochs (one global epoch = `workers` pushes)")
    lr: float = _f(0.1, gt=0.0, help="peak learning rate of every worker (after warm-up, before the milestones)")
    milestones: list[int] = _f([12, 20], ge=1, help="global epochs where the LR is multiplied by gamma")
    gamma: float = _f(0.1, gt=0.0, le=1.0, help="factor the LR is multiplied by at each milestone")
    warmup_epochs: int = _f(1, ge=0, help="linear LR warm-up over the first epochs (at most until the first milestone)")
    warmup_start_factor: float = _f(0.1, ge=0.0, le=1.0, help="warm-up starts at this fraction of lr")
    # At most 4096 px: a typo such as 100000 would otherwise reach the model check
    # before anything says so (80 GB in the launcher); the paper uses 24-288 px.
    resolutions: list[int] = _f([12, 16], ge=4, le=4096, help="CPL resolutions, low to high; one value = no CPL")
    cyclic: bool = _f(True, help="restart the resolution climb in every LR stage (CPL); false = one climb over the run")

    def check(self, prefix: str) -> None:
        if not self.resolutions:
            raise _bad(f"{prefix}resolutions", self.resolutions, "at least one resolution")
        if any(b <= a for a, b in zip(self.resolutions, self.resolutions[1:])):
            raise _bad(f"{prefix}resolutions", self.resolutions, "strictly increasing resolutions (low to high), e.g. [24, 32]")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise _bad(f"{prefix}milestones", self.milestones, "strictly increasing epochs, e.g. [80, 120]")
        if self.milestones and self.milestones[-1] >= self.epochs:
            raise _bad(f"{prefix}milestones", self.milestones, f"epochs between 1 and schedule.epochs - 1 = {self.epochs - 1}")
        limit, what = (self.milestones[0], "the first milestone") if self.milestones else (self.epochs, "schedule.epochs")
        if self.warmup_epochs > limit:
            raise _bad(f"{prefix}warmup_epochs", self.warmup_epochs, f"0..{limit} (warm-up ends by {what})")


@dataclass(kw_only=True)
class DBSLConfig:
    workers: int = _f(4, ge=1, le=4096, help="W, the number of worker processes")
    small: int = _f(1, ge=0, help="n_S, how many workers train with the small batch (0 = plain PS training)")
    tau: float = _f(1.1, ge=1.0, help="time budget: a small-batch epoch may take tau x the all-large time")
    batch_large: list[int] | dict[int, int] | None = _f({12: 96, 16: 64}, ge=1,
                                                        help="B_L per resolution; null = from the calibration file")
    calibration: str | None = _f(None, help="calibration file written by `dbl-ps calibrate` (alpha, beta, B_L per resolution); "
                                            "values given here explicitly take precedence over it")
    alpha: list[float] | dict[int, float] | None = _f(None, ge=0.0, help="time model: seconds per step, per resolution")
    beta: list[float] | dict[int, float] | None = _f(None, ge=0.0, help="time model: seconds per sample, per resolution "
                                                                       "(0 = launch-bound: a step costs the same at any batch)")
    replan: bool = _f(False, help="make the plan again between epochs when the workers' measured speeds drift apart "
                                  "(mixed or shared hardware): the slower worker gets less data (store mode)")
    replan_threshold: float = _f(DEFAULT_THRESHOLD, gt=0.0, help="dbl.replan: re-plan when a worker's measured/planned "
                                                               "epoch time is off from the median worker's by more "
                                                               "than this fraction (0.15 = 15 %)")
    min_small_batch: int = _f(1, ge=1, help="smallest batch the planner may give a small worker; a tau that needs a "
                                            "smaller one is an infeasible plan whose error gives the feasible tau range "
                                            "(1 = the paper's plan, unbounded)")
    batch_small: list[float] | dict[int, float] | None = _f(
        None, gt=0.0, help="choose the small batch instead of the time model's formula, per resolution ({px: value} "
                           "or a list; one value = all): a size (e.g. 48) or a fraction of B_L below 1 (e.g. 0.4); "
                           "the shares are still planned so every worker finishes together within tau "
                           "(null = from the time model)")

    def check(self, prefix: str) -> None:
        if self.small > self.workers:
            raise _bad(f"{prefix}small", self.small, f"0..dbl.workers = 0..{self.workers}")
        if self.batch_large is None and self.calibration is None:
            raise _bad(f"{prefix}batch_large", None, f"B_L per resolution, or a calibration file in {prefix}calibration "
                       "(written by `dbl-ps calibrate`)")
        if (self.alpha is None) != (self.beta is None):
            key, value = ("alpha", self.alpha) if self.alpha is not None else ("beta", self.beta)
            other = "beta" if key == "alpha" else "alpha"
            raise _bad(f"{prefix}{key}", value, f"to be given together with dbl.{other} (the time model is t(b) = alpha + beta*b)")
        chosen = self.batch_small.values() if isinstance(self.batch_small, dict) else (self.batch_small or [])
        if any(v >= 1 and v != int(v) for v in chosen):
            raise _bad(f"{prefix}batch_small", self.batch_small, "batch sizes (whole numbers >= 1) or fractions of "
                       "B_L below 1 (e.g. 0.4)")


@dataclass(kw_only=True)
class MixedBatchConfig:
    """`sync: mixed_batch`: every step trains one global batch, split over the ranks so each
    rank's step takes the same time; gradients are merged in every step, weighted by each
    rank's share of the batch (`dbl_ps.planner.mixed`)."""

    global_batch: list[int] | dict[int, int] | None = _f(
        None, ge=1, help="the global batch B per resolution ({px: batch}, a list, or one value); null = "
                         "dbl.workers x dbl.batch_large (what the ranks' largest batches add up to)")
    memory_caps: list[int] | None = _f(
        None, ge=1, help="each rank's largest batch per forward/backward, one value per rank; a larger planned "
                         "batch runs as micro-batches (gradient accumulation, the same gradient); null = "
                         "micro_batch for every rank (null: no cap)")


@dataclass(kw_only=True)
class StoreConfig:
    mode: Literal["bsp", "asp", "ssp"] | None = _f(
        None, help="synchronisation: bulk-synchronous, asynchronous, stale-synchronous; null = the sync kind's "
                   "first (store: asp, the authors' code; collective: bsp, the only one it runs)")
    rule: Literal["average", "blend", "sgd"] | None = _f(
        None, help="merge: weighted mean, (w + f*w_i)/(1+f), or server-side SGD on gradients; null = the sync "
                   "kind's first that fits store.mode (store: blend for asp/ssp, average for bsp)")
    staleness: int = _f(0, ge=0, help="SSP bound on how many pushes a worker may run ahead (mode ssp only)")
    sync_every: int | Literal["mini_epoch"] = _f("mini_epoch", ge=1, help="push after each mini-epoch (paper) or every k steps")
    apply_threads: int = _f(0, ge=0, le=256, help="store threads applying updates; 0 = auto")
    reject_non_finite: bool = _f(True, help="the store refuses an update whose merge is not finite (a NaN/inf "
                                            "push, an overflow); the worker then stops or skips as `divergence` says")
    worker_timeout: float | None = _f(None, gt=0, help="seconds the launcher waits while no worker sends progress "
                                                       "(one frozen or hung: the others soon wait for it) before the "
                                                       "run stops naming it, its checkpoint kept; null = 10 x the "
                                                       "plan's epoch time, at least 60 s")
    post_local_every: int | None = _f(None, ge=1, help="post-local SGD: from store.post_local_start on, merge every "
                                                       "this many steps (store.sync_every before it; e.g. 1 before, "
                                                       "4 after); null = off")
    post_local_start: int | None = _f(None, ge=1, help="post-local SGD: the global epoch the period switches at; "
                                                       "null = the first LR milestone")

    def check(self, prefix: str) -> None:
        # The same pairings the parameter store enforces, caught before any process starts.
        if self.mode is not None and self.rule is not None and not rule_fits(self.mode, self.rule):
            allowed = [r for r in ("average", "blend", "sgd") if rule_fits(self.mode, r)]
            why = ("'blend' applies each push on arrival and needs mode 'asp' or 'ssp'" if self.rule == "blend"
                   else "'average' merges a whole round and needs mode 'bsp'")
            raise _bad(f"{prefix}rule", self.rule, f"{' or '.join(map(repr, allowed))} with {prefix}mode="
                       f"'{self.mode}' ({why})")
        if self.staleness > 0 and self.mode not in ("ssp", None):
            raise _bad(f"{prefix}staleness", self.staleness, f"0 with {prefix}mode='{self.mode}' (the bound applies to mode 'ssp' only)")
        if self.post_local_start is not None and self.post_local_every is None:
            raise _bad(f"{prefix}post_local_start", self.post_local_start,
                       f"null unless {prefix}post_local_every is set (the period after the switch)")


@dataclass(kw_only=True)
class SWAConfig:
    """Stochastic weight averaging of the global model over the last part of the schedule."""

    enabled: bool = _f(False, help="average the global model of every epoch from swa.start on and evaluate the "
                                   "average (BatchNorm statistics recomputed: needs eval.recalibrate_bn)")
    start: float = _f(0.75, gt=0.0, help="the first averaged epoch: a fraction of schedule.epochs below 1 (0.75: "
                                         "the last quarter) or an epoch number from 1")
    lr: float | None = _f(None, gt=0.0, help="the LR of the SWA epochs, reached over swa.anneal_epochs (cosine, as "
                                             "torch's SWALR); null = the schedule's LR at swa.start, held")
    anneal_epochs: int = _f(0, ge=0, help="epochs over which the LR moves from the schedule's to swa.lr (0 = at once)")


@dataclass(kw_only=True)
class NoiseScaleConfig:
    """The gradient noise scale B_noise = tr(Sigma)/|G|^2 per epoch (McCandlish et al. 2018)."""

    measure: bool = _f(True, help="measure B_noise every epoch: from the workers' gradient norms where the plan "
                                  "has two batch sizes (DBSL; one fused norm per step, no host sync), else from "
                                  "a probe of the global model after each evaluated epoch")
    probe_repeats: int = _f(4, ge=0, help="probe: gradients at the small and the large batch, this many of each "
                                          "(0 = no probe)")
    probe_batch_small: int | None = _f(None, ge=1, help="probe: the small batch; null = the run's batch / 8 (at "
                                                        "least 2); the large one is the run's batch")


def rule_fits(mode: str, rule: str, staleness: int = 0) -> bool:
    """Whether the parameter store can merge with `rule` in `mode` (and the SSP bound needs ssp)."""
    if staleness > 0 and mode != "ssp":
        return False
    return {"average": mode == "bsp", "blend": mode != "bsp", "sgd": True}[rule]


@dataclass(kw_only=True)
class EvalConfig:
    """How the launcher (or rank 0) evaluates the global model after each epoch."""

    recalibrate_bn: bool = _f(True, help="recompute the global model's BatchNorm running statistics on training "
                                         "images before evaluating it (as torch.optim.swa_utils.update_bn does): "
                                         "merged weights do not match the merged statistics, which can put the "
                                         "evaluated model at chance while every worker trains well")
    bn_samples: int = _f(1024, ge=1, help="training images (a fixed seeded subset, no augmentation, at the "
                                         "evaluation resolution) the statistics are recomputed on")
    every: int = _f(1, ge=1, help="evaluate the global model every this many epochs and after the last one "
                                  "(an evaluation competes with training for the device; records of the other "
                                  "epochs carry no test_* keys)")

    def check(self, prefix: str) -> None:
        pass


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["sgd", "adamw"] = _f("sgd", help="the workers' optimizer: SGD with momentum (the paper's) or "
                                                  "AdamW (set schedule.lr to suit it, e.g. 1e-3)")
    momentum: float = _f(0.9, ge=0.0, lt=1.0, help="SGD momentum")
    weight_decay: float = _f(1e-4, ge=0.0, help="L2 penalty (SGD) or decoupled weight decay (AdamW)")
    nesterov: bool = _f(False, help="SGD: Nesterov momentum")
    betas: list[float] = _f([0.9, 0.999], ge=0.0, lt=1.0, help="AdamW: the two moment decay rates")
    restart_momentum: bool = _f(False, help="zero the optimizer's state (SGD momentum) at every new LR stage and "
                                            "resolution, as the authors' Keras workers do (they recompile the model "
                                            "there)")

    def check(self, prefix: str) -> None:
        if len(self.betas) != 2:
            raise _bad(f"{prefix}betas", self.betas, "two numbers [beta1, beta2]")
        if self.name == "adamw" and self.nesterov:
            raise _bad(f"{prefix}nesterov", self.nesterov, "false with optim.name 'adamw' (Nesterov is an SGD option)")
        if self.nesterov and self.momentum == 0.0:
            raise _bad(f"{prefix}nesterov", self.nesterov, "false when optim.momentum is 0 (Nesterov needs momentum)")


@dataclass(kw_only=True)
class LossConfig:
    label_smoothing: float = _f(0.0, ge=0.0, lt=1.0, help="cross-entropy label smoothing (0 = none; 0.1 is usual "
                                                          "for ImageNet recipes)")


@dataclass(kw_only=True)
class WandbConfig:
    enabled: bool = _f(False, help="log the run to Weights & Biases (needs the [wandb] extra)")
    project: str = _f("dbl-ps", help="W&B project")
    entity: str | None = _f(None, help="W&B entity (team or user); null = your default")
    mode: Literal["auto", "online", "offline", "disabled"] = _f(
        "auto", help="auto: online when an API key is configured, else an offline run directory (wandb sync uploads it)")
    tags: list[str] = _f([], help="W&B tags of the run")
    group: str | None = _f(None, help="W&B group; `dbl-ps compare` sets one so its runs overlay")


@dataclass(kw_only=True)
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    trackers: list[str] = _f([], help="more sinks of the run's metrics (dbl_ps.registry.TRACKERS): tensorboard "
                                      "(RUN_DIR/tensorboard/, needs the [tensorboard] extra), csv (RUN_DIR/metrics.csv), "
                                      "wandb (same as tracking.wandb.enabled), or an import path 'package.module:callable' "
                                      "to your factory (cfg, run_dir, *, resuming, tags, warn) -> sink")
    timeout: float = _f(120.0, gt=0, help="seconds a tracker's open, log or close may take; one that takes longer "
                                         "(or raises) is named once and left out, training goes on")

    def check(self, prefix: str) -> None:
        for i, name in enumerate(self.trackers):
            _plugin_traits(TRACKERS, f"{prefix}trackers[{i}]", name)
            if name in self.trackers[:i]:
                raise _bad(f"{prefix}trackers[{i}]", name, "each tracker once")


@dataclass(kw_only=True)
class FSDPConfig:
    ranks_per_worker: int = _f(1, ge=1, help="ranks sharding one worker's model under a launcher (engine fsdp): "
                                             "WORLD_SIZE = dbl.workers x this")
    param_dtype: Literal["fp32", "bf16"] = _f("fp32", help="FSDP2 compute dtype of parameters (bf16 on GPUs; "
                                                           "shards and the merge stay fp32)")
    wrap_classes: list[str] = _f([], help="class names of the submodules sharded one by one (e.g. [Block]); "
                                          "empty = residual blocks where the model has them, else by size")
    wrap_min_params: int = _f(1_000_000, ge=1, help="size policy: shard each submodule holding at least this many "
                                                    "parameters not already sharded below it")


@dataclass(kw_only=True)
class LaunchConfig:
    timeout: float = _f(600.0, gt=0, help="seconds a collective of a multi-rank run (torchrun, deepspeed "
                                          "launcher) may wait for a missing rank before failing")
    sync_timeout: float | None = _f(None, gt=0, help="seconds every rank may take to reach a sync point before "
                                                     "the run stops naming the ranks that did not; null = derived "
                                                     "from the plan: 10 x the predicted sync period, at least 60 s")


@dataclass(kw_only=True)
class RunConfig:
    """The root of a run's configuration. `RunConfig()` is the embedded default
    job: hybrid DBSL+CPL, small ResNet on scikit-learn digits, 4 CPU workers."""

    name: str = _f("digits-hybrid", help="the run's name: its directory is OUT_DIR/NAME-TIMESTAMP; `dbl-ps report` groups runs by name and config")
    description: str = _f("Embedded default: hybrid DBSL+CPL (1 small-batch worker of 4, tau 1.1, 12->16 px cycles) on "
                          "scikit-learn digits.", help="one line on what the run is (config.yaml, W&B notes)")
    out_dir: str = _f("runs", help="run directories are created under this folder")
    seed: int = _f(0, ge=0, le=2**63 - 1, help="seeds the model's initial weights, the data split into shares and "
                                                "the augmentation")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", help="where workers train: auto = the GPUs in turn where "
                                                         "torch finds any, else the CPU; cuda = fail without a GPU")
    threads_per_worker: int = _f(0, ge=0, help="torch threads per worker; 0 = cores / workers")
    engine: str = _f(
        "torch", help="each worker's training engine (dbl_ps.registry.ENGINES): torch (plain torch, optimizer "
                      "optim.name), deepspeed (a DeepSpeed engine; needs the [deepspeed] extra), fsdp (FSDP2 groups of ranks, under torchrun "
                      "only), or an import path 'package.module:callable' to your Engine subclass or engine factory")
    deepspeed_config: str | None = _f(None, help="DeepSpeed JSON for engine 'deepspeed': a path, or the name of one shipped "
                                                 "in dbl_ps/configs/deepspeed (cpu_gloo, gpu_bf16, gpu_fp16_zero1; "
                                                 "`dbl-ps configs` lists them); null = fp32, no ZeRO. Its optimizer "
                                                 "block, if any, is the one that runs (else optim.name), at "
                                                 "schedule.lr; a scheduler block gives way to schedule.*")
    callbacks: list[str] = _f([], help="your callbacks on the run's events, by import path "
                                       "'package.module:factory' (a class or a function called with no "
                                       "arguments, returning a dbl_ps.training.events.RunCallback or any object "
                                       "with some of its methods: on_run_start, on_epoch_end, on_replan, "
                                       "on_checkpoint, on_run_end); called on the main process in every mode")
    imports: list[str] = _f([], help="modules every process imports first (e.g. one that defines your model or "
                                     "dataset); the current directory is searched too")
    precision: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32", help="engine torch: autocast the forward pass to bf16 or fp16 (fp16 with a gradient scaler); "
                     "weights, optimizer and merges stay fp32")
    channels_last: bool = _f(False, help="engine torch: channels-last memory format for model and batches "
                                         "(faster convolutions on GPUs with tensor cores)")
    compile: bool = _f(False, help="engine torch: torch.compile each worker's model, warmed up at every "
                                   "resolution and batch size before the first epoch")
    micro_batch: int | None = _f(None, ge=1, help="engine torch: the largest batch one forward/backward takes; a "
                                                  "planned batch above it runs as ceil(batch / micro_batch) "
                                                  "micro-batches with one optimizer step (gradient accumulation: "
                                                  "the same gradient; BatchNorm sees each micro-batch alone); "
                                                  "null = the whole batch at once. engine deepspeed: "
                                                  "gradient_accumulation_steps in the DeepSpeed JSON")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dbl: DBSLConfig = field(default_factory=DBSLConfig)
    sync: str = _f("auto", help="how the workers' models meet (dbl_ps.registry.SYNCHRONIZERS): store (the "
                                "parameter store on one machine, store.mode/rule), collective (share-weighted model "
                                "averaging with torch.distributed at every sync, under torchrun or the deepspeed "
                                "launcher: bsp/average), an import path, or auto = store on one machine, collective "
                                "under a launcher; plan.json and summary.json record the one that ran")
    store: StoreConfig = field(default_factory=StoreConfig)
    mixed: MixedBatchConfig = field(default_factory=MixedBatchConfig)
    divergence: Literal["stop", "skip"] = _f(
        "stop", help="a non-finite loss or model state at a sync: stop the run (status 'diverged', the last finite "
                     "checkpoint kept), or skip that worker's update (it continues from the merged state; counted "
                     "as skipped_syncs)")
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    swa: SWAConfig = field(default_factory=SWAConfig)
    noise_scale: NoiseScaleConfig = field(default_factory=NoiseScaleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation

    def validate(self) -> None:
        """Check every value (types, ranges, cross-section rules); raise the first problem."""
        _validate(self, "")

    def check(self, prefix: str) -> None:
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\\0") or len(self.name) > 100:
            # the run directory is OUT_DIR/NAME-TIMESTAMP: a name with a separator wrote outside out_dir
            raise _bad("name", self.name, "a file name of 1-100 characters without '/', '\\' or '..' (the run "
                       "directory is out_dir/NAME-TIMESTAMP; choose the folder with out_dir)")
        engine = _plugin_traits(ENGINES, "engine", self.engine)
        if self.deepspeed_config is not None and not engine["ds_config"]:
            readers = ENGINES.with_trait("ds_config")
            raise _bad("deepspeed_config", self.deepspeed_config, f"null unless engine is {_names(readers)} "
                       f"(set engine: {readers[0] if readers else '...'})")
        for key in ("precision", "channels_last", "compile"):
            if getattr(self, key) != getattr(RunConfig, key) and engine["precision_from"] is not None:
                raise _bad(key, getattr(self, key), f"its default with engine {self.engine!r} (it applies to engine "
                           f"'torch'; engine {self.engine!r} takes its precision from {engine['precision_from']})")
        if self.micro_batch is not None and (engine["ds_config"] or engine["sharded"]):
            instead = ("gradient_accumulation_steps in the DeepSpeed JSON (deepspeed_config)" if engine["ds_config"]
                       else "more ranks per worker (fsdp.ranks_per_worker) to split a worker's batch")
            raise _bad("micro_batch", self.micro_batch, f"null with engine {self.engine!r} (use {instead})")
        if self.fsdp.ranks_per_worker > 1 and not engine["sharded"]:
            sharded = ENGINES.with_trait("sharded")
            raise _bad("fsdp.ranks_per_worker", self.fsdp.ranks_per_worker, f"1 unless engine is {_names(sharded)} "
                       f"(set engine: {sharded[0] if sharded else '...'})")
        if self.sync != "auto":
            _plugin_traits(SYNCHRONIZERS, "sync", self.sync)
        for i, path in enumerate(self.callbacks):
            if not _IMPORT_PATH_RE.match(path):
                raise _bad(f"callbacks[{i}]", path, "an import path 'package.module:factory' to your callback class "
                           "or factory")
        if self.mixed.memory_caps is not None and len(self.mixed.memory_caps) != self.dbl.workers:
            raise _bad("mixed.memory_caps", self.mixed.memory_caps, f"one value per rank ({self.dbl.workers}, "
                       f"dbl.workers)")
        res = self.schedule.resolutions
        per_res = [("model.dropout", self.model.dropout), ("dbl.batch_large", self.dbl.batch_large),
                   ("dbl.alpha", self.dbl.alpha), ("dbl.beta", self.dbl.beta), ("dbl.batch_small", self.dbl.batch_small),
                   ("mixed.global_batch", self.mixed.global_batch)]
        for key, values in per_res:
            if isinstance(values, dict):
                missing = [r for r in res if r not in values]
                if missing:
                    raise _bad(key, values, f"a value for every resolution in schedule.resolutions={res} (missing {missing})")
            elif values is not None and len(values) not in (1, len(res)):
                raise _bad(key, values, f"1 value or one per resolution ({len(res)} values for schedule.resolutions={res})")
        if self.data.crop_padding is not None and self.data.crop_padding > min(res):
            # The pad-crop runs at every resolution: padding wider than the image crops none of it
            # (and 100000 px of padding is a 10 TB batch in a worker).
            raise _bad("data.crop_padding", self.data.crop_padding,
                       f"at most the smallest resolution, {min(res)} px (null = resolution // 8)")
        if (self.data.image_size is not None and DATA_SOURCES.traits(self.data.source)["per_sample"]
                and self.data.image_size < max(self.schedule.resolutions)):
            raise _bad("data.image_size", self.data.image_size, f"at least the largest resolution, {max(self.schedule.resolutions)}")
        # Every worker needs at least one training sample; where the config alone fixes the
        # training-set size this is known now (the data files are checked by check_workers_fit).
        if self.data.train_limit is not None:
            check_workers_fit(self, self.data.train_limit, "data.train_limit")
        if self.data.source == "synthetic":
            check_workers_fit(self, self.data.synthetic.num_train, "data.synthetic.num_train")
        self._check_remedies()

    def _check_remedies(self) -> None:
        """SWA, the noise-scale probe and post-local SGD against the schedule and the batches."""
        epochs, milestones = self.schedule.epochs, self.schedule.milestones
        if self.swa.enabled:
            if self.swa.start >= 1 and (self.swa.start != int(self.swa.start) or self.swa.start >= epochs):
                raise _bad("swa.start", self.swa.start, f"a fraction below 1 or an epoch 1..{epochs - 1} "
                           f"(schedule.epochs={epochs})")
            if not self.eval.recalibrate_bn:
                raise _bad("eval.recalibrate_bn", False, "true with swa.enabled (an average of weights needs its "
                           "BatchNorm statistics recomputed)")
        small, large = self.noise_scale.probe_batch_small, self.batch_large()
        if small is not None and large is not None and small >= min(large):
            raise _bad("noise_scale.probe_batch_small", small, f"below the smallest dbl.batch_large, {min(large)} "
                       f"(the probe's large batch), or null")
        if self.store.post_local_every is not None:
            start = self.store.post_local_start
            if start is None and not milestones:
                raise _bad("store.post_local_start", None, "an epoch 1..schedule.epochs - 1 (the schedule has no "
                           "milestone to switch at)")
            if start is not None and start >= epochs:
                raise _bad("store.post_local_start", start, f"an epoch 1..{epochs - 1} (schedule.epochs={epochs})")

    # -- conversion

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunConfig":
        """Build and validate from plain data (e.g. parsed YAML); unknown keys are errors."""
        return _build(cls, raw, "")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML (`.yaml`/`.yml`) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else json.dumps(self.to_dict(), indent=2) + "\n"
        path.write_text(text)
        return path

    # -- per-resolution views (index i into schedule.resolutions)

    def dropouts(self) -> list[float]:
        """Dropout rate at each of `schedule.resolutions`, in order."""
        return per_resolution(self.model.dropout, self.schedule.resolutions)

    def batch_large(self) -> list[int] | None:
        """B_L at each resolution (None: take it from the calibration file)."""
        return per_resolution(self.dbl.batch_large, self.schedule.resolutions)

    def batch_small(self) -> dict[int, float] | None:
        """The chosen small batch {px: size or fraction of B_L}, or None: planned from the time model."""
        values = per_resolution(self.dbl.batch_small, self.schedule.resolutions)
        return None if values is None else dict(zip(self.schedule.resolutions, values))

    def global_batch(self) -> list[int] | None:
        """sync mixed_batch: the global batch B at each resolution (None: from the calibration's B_L)."""
        given = per_resolution(self.mixed.global_batch, self.schedule.resolutions)
        if given is not None:
            return given
        large = self.batch_large()
        return None if large is None else [self.dbl.workers * b for b in large]

    def memory_caps(self) -> list[int | None]:
        """sync mixed_batch: each rank's largest batch per forward/backward (None: no cap)."""
        return list(self.mixed.memory_caps) if self.mixed.memory_caps else [self.micro_batch] * self.dbl.workers

    def time_model(self) -> list[tuple[float, float]] | None:
        """(alpha, beta) at each resolution, or None when the config has no time model."""
        if self.dbl.alpha is None or self.dbl.beta is None:
            return None
        res = self.schedule.resolutions
        return list(zip(per_resolution(self.dbl.alpha, res), per_resolution(self.dbl.beta, res)))


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The dotted keys whose values differ between two config dicts (`RunConfig.to_dict()`),
    sorted, each with its value in `a` and in `b` (None where a key is missing)."""
    found: list[tuple[str, Any, Any]] = []
    for key in sorted(set(a) | set(b), key=str):
        left, right = a.get(key), b.get(key)
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            found += config_differences(left, right, f"{prefix}{key}.")
        elif left != right:
            found.append((f"{prefix}{key}", left, right))
    return found


def resolve_sync(cfg: RunConfig, *, launched: bool) -> RunConfig:
    """`cfg` with its sync made concrete for this launch: the kind (`sync: auto` is the first
    registered kind that runs on one machine, or under a launcher when `launched`), store.mode
    and store.rule (unset ones: the kind's first that fit the others). A setting the kind cannot
    honour is one ConfigError saying what the kind does and what to write instead, so a config
    never trains another algorithm without a word. Resolving a resolved config changes nothing."""
    kind = cfg.sync
    if kind == "auto":
        kind = next(n for n in SYNCHRONIZERS.names() if SYNCHRONIZERS.traits(n)["launched"] == launched)
    traits = _plugin_traits(SYNCHRONIZERS, "sync", kind)
    what = f"sync {kind!r}: {traits['what']}" if traits["what"] else f"sync {kind!r}"
    if traits["launched"] != launched:
        fits = [n for n in SYNCHRONIZERS.names() if SYNCHRONIZERS.traits(n)["launched"] == launched]
        here = "under a launcher (torchrun, deepspeed)" if launched else "on one machine, without a launcher"
        there = "under torchrun or the deepspeed launcher" if traits["launched"] else \
            "on one machine (`dbl-ps train` without a launcher)"
        raise _bad("sync", cfg.sync, f"{_names(fits + ['auto'])} for a run {here} (sync {kind!r} runs {there})")
    store = cfg.store
    modes, rules = tuple(traits["modes"]), tuple(traits["rules"])
    default = f"leave it unset (= {modes[0]!r}, store.rule {next(r for r in rules if rule_fits(modes[0], r))!r})" \
        if modes else "leave it unset"

    def others(trait: str, value: str) -> str:
        names = [n for n in SYNCHRONIZERS.names() if value in SYNCHRONIZERS.traits(n)[trait]]
        if not names:
            return ""
        where = ["under a launcher" if SYNCHRONIZERS.traits(n)["launched"] else "on one machine" for n in names]
        return ", or train with " + " or ".join(f"sync {n!r} ({w})" for n, w in zip(names, where))

    if store.mode is not None and store.mode not in modes:
        raise _bad("store.mode", store.mode, f"{_names(list(modes))} with {what}; {default}"
                   f"{others('modes', store.mode)}")
    if store.rule is not None and store.rule not in rules:
        raise _bad("store.rule", store.rule, f"{_names(list(rules))} with {what}; {default}"
                   f"{others('rules', store.rule)}")
    if not traits["sync_every"] and store.sync_every != StoreConfig.sync_every:
        raise _bad("store.sync_every", store.sync_every, f"{StoreConfig.sync_every!r} (unset) with {what}")
    if not traits["sync_every"] and store.post_local_every is not None:
        raise _bad("store.post_local_every", store.post_local_every, f"null with {what} (it merges every step; "
                   f"post-local SGD changes a sync period)")
    if traits["per_step"] and cfg.divergence == "skip":
        raise _bad("divergence", cfg.divergence, f"'stop' with {what} (a rank's gradients are in every rank's "
                   f"step before any check, so its update cannot be left out)")
    if traits["per_step"] and cfg.fsdp.ranks_per_worker > 1:
        raise _bad("fsdp.ranks_per_worker", cfg.fsdp.ranks_per_worker, f"1 with {what} (every rank is its own "
                   f"worker there, and engine fsdp shards the model over every rank)")
    mixed_defaults = MixedBatchConfig()
    if traits["plan"] == "mixed":  # one global batch split by speed: DBSL's small workers do not apply
        if cfg.dbl.small:
            raise _bad("dbl.small", cfg.dbl.small, f"0 with {what} (DBSL's small workers do not apply); add dbl.small=0")
        if cfg.dbl.batch_small is not None:
            raise _bad("dbl.batch_small", cfg.dbl.batch_small, f"null with {what} (DBSL's small batch does not apply)")
    else:
        for key in ("global_batch", "memory_caps"):
            if getattr(cfg.mixed, key) != getattr(mixed_defaults, key):
                raise _bad(f"mixed.{key}", getattr(cfg.mixed, key), f"null with {what} (it applies to "
                           f"{_names(SYNCHRONIZERS.with_trait('plan', 'mixed'))})")
    pairs = [(m, r) for m in ([store.mode] if store.mode else modes) for r in ([store.rule] if store.rule else rules)
             if rule_fits(m, r, store.staleness)]
    if not pairs:  # e.g. store.staleness > 0 with a kind that runs no ssp
        raise _bad("store.staleness", store.staleness, f"0 with {what} (it runs {_names(list(modes))})")
    mode, rule = pairs[0]
    if (kind, mode, rule) == (cfg.sync, store.mode, store.rule):
        return cfg
    return dataclasses.replace(cfg, sync=kind, store=dataclasses.replace(store, mode=mode, rule=rule))


def sync_record(cfg: RunConfig) -> dict[str, Any]:
    """What plan.json and summary.json say about how the workers' models met (a resolved config)."""
    s = cfg.store
    if SYNCHRONIZERS.traits(cfg.sync)["per_step"]:  # gradients, weighted, inside every step
        return {"kind": cfg.sync, "mode": "bsp", "rule": "gradient_average", "period": "step", "staleness": 0}
    return {"kind": cfg.sync, "mode": s.mode, "rule": s.rule, "period": s.sync_every, "staleness": s.staleness}


def sync_line(cfg: RunConfig) -> str:
    """One line at a run's start on the sync that runs (a resolved config)."""
    s, what = cfg.store, SYNCHRONIZERS.traits(cfg.sync)["what"]
    if SYNCHRONIZERS.traits(cfg.sync)["per_step"]:
        return f"sync: {cfg.sync}: {what}"
    period = "once per mini-epoch" if s.sync_every == "mini_epoch" else f"every {s.sync_every} steps"
    staleness = f", staleness {s.staleness}" if s.mode == "ssp" else ""
    return (f"sync: {cfg.sync}, store.mode {s.mode}, store.rule {s.rule}{staleness}, {period}"
            + (f": {what}" if what else ""))


def check_workers_fit(cfg: RunConfig, train_samples: int, source: str = "the training set") -> None:
    """Refuse more workers than training samples (each worker trains on its own share of
    the data): one ConfigError naming `dbl.workers`. `source` says where the count comes
    from. The launcher calls it once the data is loaded, before any time is measured."""
    if cfg.dbl.workers > train_samples:
        raise _bad("dbl.workers", cfg.dbl.workers, f"at most {train_samples}, the number of training samples "
                   f"({source}); every worker trains on its own share of the data")


# --------------------------------------------------------------------------- schema walking


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"a list of ({_describe(item)})"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of ({_describe(k)}) to ({_describe(v)})"
    if origin in (typing.Union, types.UnionType):
        item_tp = _per_resolution_item(tp)
        if item_tp is not None:
            forms = f"{_describe(item_tp)} (all resolutions), a list (one per resolution)"
            return forms + (", {px: value} or null" if type(None) in typing.get_args(tp) else " or {px: value}")
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if _is_config(tp):
        return f"a section ({', '.join(f.name for f in dataclasses.fields(tp))})"
    return str(tp)


def _per_resolution_item(tp: Any) -> Any:
    """T when `tp` is a per-resolution setting (`list[T] | dict[int, T]`, maybe `| None`),
    else None: such a key also takes one T, meaning the same value at every resolution."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()
    lists = [typing.get_args(a)[0] for a in args if typing.get_origin(a) is list]
    dicts = [typing.get_args(a) for a in args if typing.get_origin(a) is dict]
    if len(lists) == 1 and len(dicts) == 1 and dicts[0] == (int, lists[0]):
        return lists[0]
    return None


def _limits(meta: Mapping[str, Any]) -> str:
    parts = []
    for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(name) is not None:
            parts.append(f"{sym} {meta[name]}")
    return " and ".join(parts)


_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_][\w.]*$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class _NoMatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` or raise _NoMatch. Nested lists report the element key."""
    origin = typing.get_origin(tp)
    if tp is Any:  # free-form (model.kwargs): whatever YAML gives, passed through
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _NoMatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _NoMatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _NoMatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept numeric strings.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        raise _NoMatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _NoMatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise _NoMatch
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _NoMatch
        out = []
        for i, item in enumerate(value):
            try:
                out.append(_coerce(item, item_tp, f"{key}[{i}]"))
            except _NoMatch:
                raise _bad(f"{key}[{i}]", item, _describe(item_tp)) from None
        return out
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise _NoMatch
        out_map = {}
        for k, item in value.items():
            # JSON round trips turn int keys into strings: accept "24" for 24.
            if key_tp is int and isinstance(k, str) and k.strip().lstrip("+-").isdigit():
                k = int(k)
            try:
                k = _coerce(k, key_tp, key)
            except _NoMatch:
                raise _bad(key, value, f"keys that are {_describe(key_tp)} (got key {k!r})") from None
            try:
                out_map[k] = _coerce(item, value_tp, f"{key}[{k}]")
            except _NoMatch:
                raise _bad(f"{key}[{k}]", item, _describe(value_tp)) from None
        return out_map
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except _NoMatch:
                continue
        item_tp = _per_resolution_item(tp)
        if item_tp is not None and not isinstance(value, (list, tuple, Mapping)) and value is not None:
            # One value for every resolution (`dbl.batch_large=64`) is the one-element list.
            return [_coerce(value, item_tp, key)]
        raise _NoMatch
    if _is_config(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _build(tp, value, key + ".")
        raise _NoMatch
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check_limits(value: Any, meta: Mapping[str, Any], key: str, tp: Any) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_limits(item, meta, f"{key}[{i}]", tp)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            _check_limits(item, meta, f"{key}[{k}]", tp)
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):
        raise _bad(key, value, f"a finite number {_limits(meta)}".rstrip())
    ok = ((meta.get("ge") is None or value >= meta["ge"]) and (meta.get("gt") is None or value > meta["gt"])
          and (meta.get("le") is None or value <= meta["le"]) and (meta.get("lt") is None or value < meta["lt"]))
    if not ok:
        kind = "an integer" if isinstance(value, int) else "a number"
        raise _bad(key, value, f"{kind} {_limits(meta)}")


def _validate(obj: Any, prefix: str) -> None:
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        key = prefix + f.name
        value = getattr(obj, f.name)
        tp = hints[f.name]
        if _is_config(tp):
            if not isinstance(value, tp):
                raise _bad(key, value, _describe(tp))
            _validate(value, key + ".")
            continue
        try:
            coerced = _coerce(value, tp, key)
        except _NoMatch:
            allowed = _describe(tp)
            if _limits(f.metadata):
                allowed += f" ({_limits(f.metadata)})"
            raise _bad(key, value, allowed) from None
        _check_limits(coerced, f.metadata, key, tp)
        object.__setattr__(obj, f.name, coerced)
    check = getattr(obj, "check", None)  # cross-field rules, for sections that have them
    if check is not None:
        check(prefix)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if _is_config(hints[f.name]):
            keys.extend(_all_keys(hints[f.name], prefix + f.name + "."))
    return keys


class ConfigKey(typing.NamedTuple):
    """One key of the run config as `dbl-ps configs --keys` lists it."""

    key: str  # dotted, as overrides take it: dbl.tau
    kind: str  # what it takes, in words: "a number (>= 1.0)"
    default: Any  # the embedded default job's value
    help: str  # what it does ("" where the name says it)


def config_keys(cls: type | None = None, prefix: str = "", defaults: Any = None) -> list[ConfigKey]:
    """Every leaf key of the run config (sections walked), with what it takes, its default
    (the embedded job's) and its help, in the schema's order."""
    cls = cls or RunConfig
    defaults = defaults if defaults is not None else cls()
    hints = _hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], getattr(defaults, f.name)
        if _is_config(tp):
            keys.extend(config_keys(tp, f"{prefix}{f.name}.", value))
            continue
        limits = _limits(f.metadata)
        keys.append(ConfigKey(prefix + f.name, _describe(tp) + (f" ({limits})" if limits else ""),
                              dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value,
                              f.metadata.get("help", "")))
    return keys


def _suggest(name: str, cls: type, prefix: str) -> str | None:
    siblings = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        return prefix + close[0]
    # The key may belong to another section: `tau` -> `dbl.tau`.
    root = [k for k in _all_keys(RunConfig)]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in root}
    close = difflib.get_close_matches(name, list(by_leaf), n=1, cutoff=0.8)
    return by_leaf[close[0]] if close else None


def _build(cls: type, raw: Any, prefix: str) -> Any:
    section = prefix[:-1] if prefix else "the top level"
    if not isinstance(raw, Mapping):
        raise _bad(section, raw, _describe(cls))
    names = {f.name for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in names:
            key = f"{prefix}{name}"
            hint = _suggest(str(name), cls, prefix)
            msg = f"unknown config key '{key}'"
            if hint:
                msg += f"; did you mean '{hint}'?"
            msg += f" Allowed keys in {section}: {', '.join(sorted(names))}"
            raise ConfigError(msg, key=key, value=raw[name])
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = prefix + f.name
        tp = hints[f.name]
        try:
            kwargs[f.name] = _coerce(raw[f.name], tp, key)
        except _NoMatch:
            allowed = _describe(tp)
            if _limits(f.metadata):
                allowed += f" ({_limits(f.metadata)})"
            raise _bad(key, raw[f.name], allowed) from None
    # Sub-sections are plain constructors; RunConfig.__post_init__ validates the whole tree.
    return cls(**kwargs)


# --------------------------------------------------------------------------- YAML


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first_line}); a key may appear once per section")
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping with the same key twice is an error:
    PyYAML silently keeps the last one, so a config edited in two places would run with
    whichever value happens to come last."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges are meant to be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


class _BaseSixty(Exception):
    """YAML 1.1 reads `20:0.002` (no space after the colon) as the base-60 number 1200.002."""

    def __init__(self, text: str, line: int):
        super().__init__(f"{text!r} at line {line} is a base-60 number to YAML ({text.replace(':', ' x 60 + ', 1)}); "
                         f"for a mapping put a space after the colon: {{{text.replace(':', ': ', 1)}}}")
        self.text, self.line = text, line


def _construct_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    if ":" in node.value:  # PyYAML's int/float resolvers match `digits:digits` as sexagesimal
        raise _BaseSixty(node.value, node.start_mark.line + 1)
    if node.tag.endswith(":int"):
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    return yaml.SafeLoader.construct_yaml_float(loader, node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_number)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _construct_number)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


# --------------------------------------------------------------------------- values that follow an override

_MISSING = object()


def _get(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _set_keys(value: Any, key: str) -> set[str]:
    """`key` and, when `value` is a section (a mapping of names), every dotted key in it:
    the keys that setting `key` to `value` sets."""
    keys = {key}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        for name, item in value.items():
            keys |= _set_keys(item, f"{key}.{name}")
    return keys


def _merge(base: Any, layer: Any) -> Any:
    """`layer` over `base`, section by section (a value in `layer` replaces the whole entry)."""
    if not (isinstance(base, Mapping) and isinstance(layer, Mapping)):
        return copy.deepcopy(layer)
    out = copy.deepcopy(dict(base))
    for name, value in layer.items():
        out[name] = _merge(out[name], value) if isinstance(out.get(name), Mapping) and _is_section(out[name]) else copy.deepcopy(value)
    return out


def _is_section(value: Mapping) -> bool:
    # Sections have string keys; per-resolution mappings ({24: 0.1}) are values.
    return all(isinstance(k, str) for k in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scale_milestones(milestones: list[int], old_epochs: int, new_epochs: int) -> list[int]:
    """Each milestone at the same fraction of the run (rounded), kept only while it is a
    valid LR drop (1 .. new_epochs - 1) and later than the previous one."""
    out: list[int] = []
    for m in milestones:
        scaled = math.floor(m * new_epochs / old_epochs + 0.5)
        if 1 <= scaled <= new_epochs - 1 and (not out or scaled > out[-1]):
            out.append(scaled)
    return out


def _by_resolution(value: Any, resolutions: list[int]) -> dict[int, Any] | None:
    """A per-resolution value as {px: value} over `resolutions`, or None when it is not
    one (null, one value for all, or malformed: validation reports that)."""
    if isinstance(value, Mapping):
        table = {}
        for k, v in value.items():
            if isinstance(k, str) and k.strip().isdigit():  # JSON keys
                k = int(k)
            if not _is_int(k) or not _is_number(v):
                return None
            table[k] = v
        return table or None
    if isinstance(value, list) and len(value) == len(resolutions) > 1 and all(_is_number(v) for v in value):
        return dict(zip(resolutions, value))
    return None


def _needs_follow(value: Any, resolutions: list[int]) -> bool:
    """Whether a per-resolution value was written for other resolutions: a list of one
    value per resolution, or a mapping that lacks one of `resolutions` (a mapping that
    covers them keeps its extra entries; one value applies to any resolutions)."""
    if isinstance(value, Mapping):
        keys = {int(k) if isinstance(k, str) and k.strip().isdigit() else k for k in value}
        return not all(r in keys for r in resolutions)
    return isinstance(value, list) and len(value) > 1


def _dropout_by_position(table: dict[int, float], resolutions: list[int]) -> dict[int, float]:
    """Dropout rises with the resolution inside a CPL climb: the lowest new resolution
    gets the lowest one's rate, the highest the highest's, the ones between are
    interpolated by position in the climb. One resolution (no CPL) gets the highest's."""
    rates = [table[r] for r in sorted(table)]
    out = {}
    for i, r in enumerate(resolutions):
        pos = (len(rates) - 1) * (i / (len(resolutions) - 1) if len(resolutions) > 1 else 1.0)
        lo = math.floor(pos)
        hi = min(lo + 1, len(rates) - 1)
        out[r] = round(rates[lo] + (rates[hi] - rates[lo]) * (pos - lo), 6)
    return out


def _batch_by_area(table: dict[int, int], resolutions: list[int]) -> dict[int, int]:
    """A resolution the table lacks gets the largest batch of the nearest one it has
    (ties: the larger, giving the smaller batch) scaled by (r0 / r)^2: activation memory
    per image grows with its area."""
    out = {}
    for r in resolutions:
        if r in table:
            out[r] = table[r]
            continue
        r0 = min(table, key=lambda k: (abs(k - r), -k))
        out[r] = max(1, math.floor(table[r0] * (r0 / r) ** 2))
    return out


def _follow(before: Mapping[str, Any], after: dict, set_keys: set[str], notes: list[str]) -> None:
    """Make the values one layer (a config file over the defaults, or the command-line
    overrides over the file) did not set follow the ones it did, in place in `after`:

    * `schedule.epochs` changed, `schedule.milestones` not set: the milestones are scaled
      to the same fractions of the run (`_scale_milestones`); a warm-up that then lasts
      past the first milestone (or the run) is shortened to end there.
    * `schedule.resolutions` changed: every per-resolution value not set that lacks a new
      resolution follows it: `model.dropout` by position in the climb
      (`_dropout_by_position`), `dbl.batch_large` by image area (`_batch_by_area`), and
      `dbl.alpha`/`dbl.beta` (a measured time model, not a rule) are dropped, so the time
      model comes from `dbl.calibration` or is measured when the run starts. A list for
      the old resolutions becomes a {px: value} mapping so each value keeps its resolution.
    * `data.factory` set, `data.source` not: the source is 'factory'.

    Only well-formed values are touched; anything else is left for validation to report."""
    if "data.factory" in set_keys and "data.source" not in set_keys and _get(after, "data.factory"):
        _set_dotted(after, "data.source", "factory")
    e0, e1 = _get(before, "schedule.epochs"), _get(after, "schedule.epochs")
    if "schedule.epochs" in set_keys and "schedule.milestones" not in set_keys and _is_int(e0) and _is_int(e1) \
            and e0 >= 1 and e1 >= 1 and e0 != e1:
        m0 = _get(after, "schedule.milestones")
        if isinstance(m0, list) and all(_is_int(m) for m in m0):
            m1 = _scale_milestones(m0, e0, e1)
            if m1 != m0:
                _set_dotted(after, "schedule.milestones", m1)
                notes.append(f"schedule.milestones {m0} -> {m1}: scaled from {e0} to schedule.epochs={e1} "
                             f"(set schedule.milestones to choose them)")
            w = _get(after, "schedule.warmup_epochs")
            limit = m1[0] if m1 else e1
            if "schedule.warmup_epochs" not in set_keys and _is_int(w) and w > limit:
                _set_dotted(after, "schedule.warmup_epochs", limit)
                notes.append(f"schedule.warmup_epochs {w} -> {limit}: the warm-up ends by "
                             f"{'the first milestone' if m1 else 'the end of the run'}")

    r0, r1 = _get(before, "schedule.resolutions"), _get(after, "schedule.resolutions")
    if "schedule.resolutions" not in set_keys or not isinstance(r1, list) or not r1 \
            or not all(_is_int(r) for r in r1) or any(b <= a for a, b in zip(r1, r1[1:])):
        return
    old = list(r0) if isinstance(r0, list) and all(_is_int(r) for r in r0) else []
    for key in ("model.dropout", "dbl.batch_large"):
        value = _get(after, key)
        if key in set_keys or not _needs_follow(value, r1):
            continue
        table = _by_resolution(value, old)
        if table is None:
            continue
        if all(r in table for r in r1):
            new: Any = {r: table[r] for r in r1}  # the old list's values, each at its own resolution
        elif key == "model.dropout":
            new = _dropout_by_position(table, r1)
        elif all(_is_int(v) for v in table.values()):
            new = _batch_by_area(table, r1)
        else:
            continue
        _set_dotted(after, key, new)
        notes.append(f"{key} {value} -> {new}: follows schedule.resolutions={r1} (set {key} to choose)")
    # The time model is a measurement, not a rule: values for other resolutions are dropped
    # (both together; the pair is kept as given when either is set with the resolutions).
    alpha, beta = _get(after, "dbl.alpha"), _get(after, "dbl.beta")
    if {"dbl.alpha", "dbl.beta"} & set_keys or not (_needs_follow(alpha, r1) or _needs_follow(beta, r1)):
        return
    tables = [_by_resolution(v, old) if _needs_follow(v, r1) else None for v in (alpha, beta)]
    if all(t is not None and all(r in t for r in r1) for t in tables):
        _set_dotted(after, "dbl.alpha", {r: tables[0][r] for r in r1})
        _set_dotted(after, "dbl.beta", {r: tables[1][r] for r in r1})
        return
    _set_dotted(after, "dbl.alpha", None)
    _set_dotted(after, "dbl.beta", None)
    notes.append(f"dbl.alpha/dbl.beta dropped: they were measured for {old} px, not schedule.resolutions={r1}; "
                 f"the time model comes from dbl.calibration or is measured when the run starts")


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """`"dbl.tau=1.1"` -> `("dbl.tau", 1.1)`. The value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"bad override {text!r}: expected KEY=VALUE with a dotted key, e.g. dbl.tau=1.1 or schedule.milestones=[80,120]",
                          value=text)
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except _DuplicateKey as dup:
        raise ConfigError(f"bad override {text!r}: key {dup.key!r} appears twice", key=key, value=raw) from None
    except _BaseSixty as b60:
        raise ConfigError(f"bad override {text!r}: {b60.text!r} is a base-60 number to YAML; for a mapping put a "
                          f"space after the colon: {key}={{{b60.text.replace(':', ': ', 1)}}}", key=key,
                          value=raw) from None
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a plain string (the type check decides)
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"bad override '{key}': '{where}' is a value ({child!r}), not a section", key=where, value=child)
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: Mapping[str, Any] | RunConfig, overrides: Sequence[str], *,
                    notes: list[str] | None = None) -> RunConfig:
    """A new validated config: `raw` (a config or plain data) with `key=value` overrides
    applied. Values neither `raw` (plain data) nor the overrides set follow the ones they
    did (see `_follow`); each derived value appends one line to `notes` when given."""
    notes = notes if notes is not None else []
    file_keys: set[str] | None = None  # keys the plain data sets (None: a whole config, every key given)
    if isinstance(raw, RunConfig):
        data = raw.to_dict()
    else:
        defaults = RunConfig().to_dict()
        data = _merge(defaults, raw)
        if isinstance(raw, Mapping):
            file_keys = set().union(*(_set_keys(v, str(k)) for k, v in raw.items()))
            _follow(defaults, data, file_keys, notes)
    before = copy.deepcopy(data)
    set_keys: list[tuple[str, str]] = []
    dotted: set[str] = set()
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
        set_keys.append((key, text))
        dotted |= _set_keys(value, key)
    if set_keys:
        data = _merge(RunConfig().to_dict(), data)  # an override that replaced a whole section keeps its defaults
        _follow(before, data, dotted, notes)
    if file_keys is not None:
        _lr_from_deepspeed(data, file_keys | dotted, notes)
        _own_model_and_data(data, file_keys | dotted, notes)
    try:
        return RunConfig.from_dict(data)
    except ConfigError as err:
        for key, text in set_keys:
            if err.key is not None and (err.key == key or err.key.startswith(key + ".") or err.key.startswith(key + "[")
                                        or key.startswith(err.key + ".")):
                raise ConfigError(f"{err} (from the command-line override {text!r})", key=err.key, value=err.value) from None
        raise


def _deepspeed_optimizer(value: Any) -> tuple[str, float] | None:
    """(type, lr) of the `optimizer` block in the DeepSpeed JSON `deepspeed_config` names (a
    path, or a config shipped in the package), None when it has no LR or cannot be read (the
    engine's check reports a file that is missing or broken, with the rest of its problems)."""

    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    if not path.is_file():
        path = find_deepspeed_config(value) if not path.suffix or path.name == value else None
        if path is None:
            return None
    try:
        optimizer = json.loads(path.read_text()).get("optimizer")
        lr = optimizer["params"]["lr"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        return None
    return str(optimizer.get("type", "?")), float(lr)


def _lr_from_deepspeed(data: dict, set_anywhere: set[str], notes: list[str]) -> None:
    """The LR in the user's DeepSpeed JSON is the run's `schedule.lr` unless the user set
    `schedule.lr` (then the engine's check says which won): a value the user chose is never
    replaced by the embedded job's default."""
    if "schedule.lr" in set_anywhere or "deepspeed_config" not in set_anywhere:
        return
    found = _deepspeed_optimizer(_get(data, "deepspeed_config"))
    if found is None or found[1] == _get(data, "schedule.lr"):
        return
    kind, lr = found
    _set_dotted(data, "schedule.lr", lr)
    notes.append(f"schedule.lr {lr:g}: the lr of optimizer {kind} in the DeepSpeed config "
                 f"{_get(data, 'deepspeed_config')} (set schedule.lr to train at another)")


def _method_words(data: Mapping[str, Any]) -> str:
    small, res = _get(data, "dbl.small"), _get(data, "schedule.resolutions")
    dbsl, cpl = _is_int(small) and small > 0, isinstance(res, list) and len(res) > 1
    return "hybrid DBSL+CPL" if dbsl and cpl else "DBSL" if dbsl else "CPL" if cpl else "load-balanced PS training"


def _leaf(text: str) -> str:
    """`torchvision.models:resnet18` -> `resnet18`; `my.pkg.data.make` -> `make`."""
    return re.split(r"[:.]", text)[-1] or text


def _inherited_recipe(data: Mapping[str, Any], set_anywhere: set[str]) -> str:
    """One line naming the training recipe a user's model or data takes from the embedded
    digits job (the keys the user set none of), and how to find the model's own LR."""
    parts = [f"schedule.lr {_get(data, 'schedule.lr'):g}"]
    if not {"optim.name", "optim.momentum", "optim.weight_decay"} & set_anywhere:
        parts.append(f"optim {_get(data, 'optim.name')} (momentum {_get(data, 'optim.momentum'):g}, weight decay "
                     f"{_get(data, 'optim.weight_decay'):g})")
    if "schedule.warmup_epochs" not in set_anywhere:
        parts.append(f"a {_get(data, 'schedule.warmup_epochs')}-epoch warm-up")
    if not {"schedule.milestones", "schedule.gamma"} & set_anywhere:
        parts.append(f"the LR x{_get(data, 'schedule.gamma'):g} at epochs {_get(data, 'schedule.milestones')} of "
                     f"{_get(data, 'schedule.epochs')}")
    if not {"store.mode", "store.rule"} & set_anywhere:
        parts.append(f"store.mode {_get(data, 'store.mode')} with rule {_get(data, 'store.rule')}")
    return (f"your model and data train with the embedded digits job's recipe where you set none of it: "
            f"{', '.join(parts)}; that LR suits its small ResNet on 8 px digits: `dbl-ps lr-find` with the same "
            f"arguments measures one for yours (--write FILE puts it into your config)")


def _own_model_and_data(data: dict, set_anywhere: set[str], notes: list[str]) -> None:
    """A user's own model or data does not inherit what only the embedded digits job means
    (in place in `data`, one note each), where the user set none of it:

    * `name` and `description` (still the digits job's) follow the model, the data and the
      method: `resnet18-cifar10-hybrid`;
    * a model by import path gets no dropout (the embedded job's 0.0/0.1 is for its small
      ResNet; `model.dropout` schedules one);
    * data from `data.factory` gets no random-crop augmentation (its padding and flip are
      guesses about images dbl-ps has not seen; `data.augment=true` turns it on);
    * `schedule.resolutions` still the embedded job's 12/16 px (digits are 8 px) are said,
      with what to set: the images' size is known only once they are loaded."""
    defaults = RunConfig()
    model, source, factory = _get(data, "model.name"), _get(data, "data.source"), _get(data, "data.factory")
    own_model = isinstance(model, str) and model != defaults.model.name
    own_data = (isinstance(source, str) and source != defaults.data.source) or bool(factory)
    if not (own_model or own_data):
        return
    data_name = _leaf(factory) if isinstance(factory, str) and factory else str(source)
    method = _method_words(data)
    if "name" not in set_anywhere and _get(data, "name") == defaults.name:
        short = {"hybrid DBSL+CPL": "hybrid", "load-balanced PS training": "ps"}.get(method, method.lower())
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{_leaf(str(model))}-{data_name}-{short}")
        _set_dotted(data, "name", name)
        notes.append(f"name {name!r}: from the model, the data and the method (set name to choose it)")
    if "description" not in set_anywhere and _get(data, "description") == defaults.description:
        _set_dotted(data, "description", f"{method}: {model} on {data_name}.")
    if own_model and isinstance(model, str) and ":" in model and "model.dropout" not in set_anywhere:
        _set_dotted(data, "model.dropout", [0.0])
        notes[:] = [n for n in notes if not n.startswith("model.dropout ")]  # what it followed before, replaced
        notes.append("model.dropout 0.0: your model trains without dropout (the embedded job's rates are for its "
                     "small ResNet); set model.dropout (e.g. 0.1, or {24: 0.1, 32: 0.2}) to schedule a rate for "
                     "every nn.Dropout of your model, or for one dbl-ps puts before its classifier where it has none")
    if "schedule.lr" not in set_anywhere:
        notes.append(_inherited_recipe(data, set_anywhere))
    if factory and "data.augment" not in set_anywhere and _get(data, "data.augment") is True:
        _set_dotted(data, "data.augment", False)
        notes.append("data.augment false: your data.factory images are used as they are (set data.augment=true "
                     "for random crops with data.crop_padding, and data.flip)")
    if own_data and "schedule.resolutions" not in set_anywhere \
            and _get(data, "schedule.resolutions") == defaults.schedule.resolutions:
        notes.append(f"schedule.resolutions {defaults.schedule.resolutions} px are the embedded digits job's: set "
                     f"them for your images (e.g. [24, 32] for 32 px images, or one value for no CPL)")


def resolve_config_path(path: str | Path) -> Path:
    """The file `--config PATH` means: PATH itself when it exists, else a config shipped
    in the package when PATH is a bare name (`cifar100_resnet18`, with or without .yaml).
    A name that is neither is one ConfigError listing the shipped ones."""

    given = Path(path)
    if given.is_file():
        return given
    if given.exists():
        raise ConfigError(f"config file {str(given)!r} is a directory, not a YAML file", value=str(given))
    packaged = find_run_config(str(path)) if given.name == str(path) else None
    if packaged is not None:
        return packaged
    raise ConfigError(f"config file {str(given)!r} does not exist; give a YAML file or the name of a shipped config: "
                      f"{', '.join(run_configs())} (`dbl-ps configs` lists them)", value=str(given))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                notes: list[str] | None = None) -> RunConfig:
    """Load a YAML (or JSON) config file and apply overrides; no file = the embedded default.
    `path` may name a shipped config (see `resolve_config_path`). Values that follow others
    (see `_follow`) append one line each to `notes` when given."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            loaded = _load_yaml(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:  # a binary file, or another encoding (Latin-1, UTF-16)
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}: "
                              f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8", value=str(path)) from None
        except OSError as exc:  # unreadable (permissions)
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror or exc}", value=str(path)) from None
        except _DuplicateKey as dup:
            raise ConfigError(f"config file {str(path)!r} line {dup.line}: key {dup.key!r} appears twice "
                              f"(first at line {dup.first_line}); keep one", value=str(path)) from None
        except _BaseSixty as b60:
            raise ConfigError(f"config file {str(path)!r}: {b60}", value=str(path)) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}", value=str(path)) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(loaded).__name__}",
                              value=str(path))
        raw = loaded
    try:
        cfg = apply_overrides(raw, overrides, notes=notes)
    except ConfigError as err:
        if path is not None and "command-line override" not in str(err) and err.key is not None:
            raise ConfigError(f"{err} (in {path})", key=err.key, value=err.value) from None
        raise
    if notes is not None:
        notes.extend(schedule_notes(cfg))
    return cfg


def schedule_notes(cfg: RunConfig) -> list[str]:
    """One line for CPL resolutions that the schedule never reaches: every LR stage splits its
    epochs among the resolutions, lowest first, so a stage shorter than the ladder skips the
    low ones (legal, but the run then trains, measures and plans a resolution for nothing)."""

    s = cfg.schedule
    spec = ScheduleSpec(epochs=s.epochs, base_lr=s.lr, milestones=tuple(s.milestones), gamma=s.gamma,
                        resolutions=tuple(s.resolutions), batch_large=(1,) * len(s.resolutions), cyclic=s.cyclic)
    never = [r for r, epochs in epochs_at_each_resolution(spec).items() if epochs == 0]
    if not never:
        return []
    return [f"schedule.resolutions: {never} px get no epoch with schedule.epochs={s.epochs} and milestones "
            f"{s.milestones} (each LR stage splits its epochs among {len(s.resolutions)} resolutions, lowest "
            f"first); use fewer resolutions or more epochs"]
