"""The sections of a run config (`RunConfig` holds one of each). A section is a dataclass
whose annotations are its schema; its fields carry their limits and help (`_f`); its
`check(prefix)` method holds the rules that involve more than one of its fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dbl_ps.config.fields import _IMPORT_PATH_RE, _bad, _f, _names, _plugin_traits
from dbl_ps.planner import DEFAULT_THRESHOLD
from dbl_ps.registry import DATA_SOURCES, TRACKERS

# The built-in data sources (dbl_ps.registry.DATA_SOURCES; `data.source` may also be an import path).
SOURCES = tuple(DATA_SOURCES.names())
# The built-in models, the one list of them (dbl_ps.models.build_model builds them); `model.name`
# may also be an import path.
MODELS = ("small_resnet", "resnet18_cifar", "resnet18_imagenet", "resnet50_imagenet")
# Sources read sample by sample from a torch Dataset (per-sample transforms apply there).
STREAMED_SOURCES = tuple(DATA_SOURCES.with_trait("per_sample"))


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

    def folder(self) -> str:
        """`path` of a source that reads files (`check` refused it unset at load)."""
        if not self.path:
            raise _bad("data.path", self.path, f"the directory holding the {self.source} files")
        return self.path

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) given together, one value per channel, or None (estimated from the data)."""
        if self.mean is None or self.std is None:
            return None
        return tuple(self.mean), tuple(self.std)

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
    name: str = _f("small_resnet", help=f"a built-in model ({', '.join(MODELS)}) or an import path "
                                        "'package.module:callable' called with num_classes= and model.kwargs (e.g. "
                                        "torchvision.models:resnet18)")
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
class LaunchConfig:
    timeout: float = _f(600.0, gt=0, help="seconds a collective of a multi-rank run (torchrun, deepspeed "
                                          "launcher) may wait for a missing rank before failing")
    sync_timeout: float | None = _f(None, gt=0, help="seconds every rank may take to reach a sync point before "
                                                     "the run stops naming the ranks that did not; null = derived "
                                                     "from the plan: 10 x the predicted sync period, at least 60 s")
