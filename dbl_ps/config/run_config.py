"""`RunConfig`, the root of a run's configuration: one of each section and the settings of
the run as a whole, validated at construction (every value, then the rules across
sections); conversion to and from plain data and files; the per-resolution views the
run reads. `config_keys` lists every key as `dbl-ps configs --keys` shows it."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml

from dbl_ps.config.engine_settings import EngineSettings, look_up, owners, settings_classes, settings_of
from dbl_ps.config.fields import (_IMPORT_PATH_RE, _bad, _build, _describe, _extension_prefix, _f, _hints, _is_config,
                                  _limits, _names, _plugin_traits, _validate, extension_key, per_resolution)
from dbl_ps.config.sections import (DataConfig, DBSLConfig, EvalConfig, LaunchConfig, LossConfig, MixedBatchConfig,
                                    ModelConfig, NoiseScaleConfig, OptimConfig, ScheduleConfig, StoreConfig, SWAConfig,
                                    TrackingConfig)
from dbl_ps.registry import DATA_SOURCES, ENGINES, SYNCHRONIZERS

Settings = TypeVar("Settings", bound=EngineSettings)


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
    # The registered engines' own keys (dbl_ps.config.engine_settings): `deepspeed_config`,
    # `fsdp.*`, a user's engine's. In files and to_dict() they sit where their section says.
    engine_settings: dict[str, Any] = field(default_factory=dict, repr=False,
                                            metadata={"extensions": settings_classes})
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
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def __post_init__(self) -> None:
        look_up(self.engine)
        for cls in settings_classes():  # every registered engine's keys, at their defaults where not given
            self.engine_settings.setdefault(extension_key(cls), cls())
        self.validate()

    # -- the engines' own keys

    def settings(self, cls: type[Settings]) -> Settings:
        """The values of an engine's own keys: `cfg.settings(FSDPSettings).ranks_per_worker`."""
        found = self.engine_settings.get(extension_key(cls))
        if found is None:
            raise KeyError(f"{extension_key(cls)}: no registered engine names these settings (its `settings` trait)")
        return typing.cast(Settings, found)

    def own_settings(self) -> EngineSettings | None:
        """The settings of the run's engine (None: it has no keys of its own)."""
        cls = settings_of(self.engine)
        return None if cls is None else self.settings(cls)

    def group_size(self) -> int:
        """Ranks one worker's model is sharded over under a launcher (1 unless the engine shards)."""
        own = self.own_settings()
        return 1 if own is None else own.group_size()

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
        self._check_other_engines_keys()
        for key in ("precision", "channels_last", "compile"):
            if getattr(self, key) != getattr(RunConfig, key) and engine["precision_from"] is not None:
                raise _bad(key, getattr(self, key), f"its default with engine {self.engine!r} (it applies to engine "
                           f"'torch'; engine {self.engine!r} takes its precision from {engine['precision_from']})")
        if self.micro_batch is not None and engine["micro_batch_from"] is not None:
            raise _bad("micro_batch", self.micro_batch, f"null with engine {self.engine!r} (use "
                       f"{engine['micro_batch_from']})")
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

    def _check_other_engines_keys(self) -> None:
        """An engine's own keys keep their defaults unless the run's engine reads them."""
        own = settings_of(self.engine)
        for values in self.engine_settings.values():
            cls = type(values)
            if cls is own:
                continue
            defaults = cls()
            for f in dataclasses.fields(values):
                value, default = getattr(values, f.name), getattr(defaults, f.name)
                if value != default:
                    readers = owners(cls)
                    raise _bad(_extension_prefix(cls, "") + f.name, value, f"{'null' if default is None else repr(default)} "
                               f"unless engine is {_names(readers)} (set engine: {readers[0] if readers else '...'})")

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
        """Plain data, as config.yaml holds it. Of the engines' own keys, those of the run's engine,
        where its settings' section says (another engine's keys keep their defaults, and a process
        without that engine's plugin could not read them back)."""
        data: dict[str, Any] = {}
        own = settings_of(self.engine)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "engine_settings":
                for added in value.values():
                    if type(added) is not own and added == type(added)():
                        continue
                    plain = dataclasses.asdict(added)
                    if added.section:
                        data[added.section] = plain
                    else:
                        data.update(plain)
            else:
                data[f.name] = dataclasses.asdict(value) if _is_config(type(value)) else copy.deepcopy(value)
        return data

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunConfig":
        """Build and validate from plain data (e.g. parsed YAML); unknown keys are errors."""
        if isinstance(raw, Mapping):
            look_up(raw.get("engine"))  # a plugin's engine brings its keys
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


def check_workers_fit(cfg: RunConfig, train_samples: int, source: str = "the training set") -> None:
    """Refuse more workers than training samples (each worker trains on its own share of
    the data): one ConfigError naming `dbl.workers`. `source` says where the count comes
    from. The launcher calls it once the data is loaded, before any time is measured."""
    if cfg.dbl.workers > train_samples:
        raise _bad("dbl.workers", cfg.dbl.workers, f"at most {train_samples}, the number of training samples "
                   f"({source}); every worker trains on its own share of the data")


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
        if "extensions" in f.metadata:  # the engines' own keys, each set where its section says
            for added in getattr(defaults, f.name).values():
                keys.extend(config_keys(type(added), _extension_prefix(added, prefix), added))
            continue
        tp, value = hints[f.name], getattr(defaults, f.name)
        if _is_config(tp):
            keys.extend(config_keys(tp, f"{prefix}{f.name}.", value))
            continue
        limits = _limits(f.metadata)
        section = dataclasses.is_dataclass(value) and not isinstance(value, type)  # a section's value, not its class
        keys.append(ConfigKey(prefix + f.name, _describe(tp) + (f" ({limits})" if limits else ""),
                              dataclasses.asdict(value) if section else value, f.metadata.get("help", "")))
    return keys
