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
rules are in `follow._follow`; `load_config(..., notes=[])` collects one line per derived
value). A config name without a path (`cifar100_resnet18`) is a config shipped in
the package (`dbl_ps/configs`, listed by `dbl-ps configs`).

Type annotations are the schema: `int`, `float`, `bool`, `str`, `Literal[...]`,
`list[T]`, `X | None` and nested config dataclasses. Range limits live in each
field's metadata (`ge`, `gt`, `le`, `lt`); rules that involve more than one
field live in the class's `check(prefix)` method.

The package, one job per module (everything public is imported from `dbl_ps.config`):

* `fields.py`: `ConfigError`, fields with limits and help, per-resolution values, and the
  walk over the annotations (coercion, limits, building sections, describing a key);
* `sections.py`: the sections (`DataConfig`, `DBSLConfig`, ...) and the built-in names;
* `run_config.py`: `RunConfig`, the root, with the rules across sections; `config_keys`;
* `engine_settings.py`: `EngineSettings`, the base of an engine's own keys (`fsdp.*`,
  `deepspeed_config`), which the engine registers and the root takes in;
* `follow.py`: the values that follow the ones a user set;
* `loading.py`: YAML, `key=value` overrides, `load_config`;
* `resolve.py`: what a config means for one run (`resolve_sync`, `sync_line`, notes).
"""

from dbl_ps.config.engine_settings import EngineSettings
from dbl_ps.config.fields import ConfigError, PerResolution, per_resolution
from dbl_ps.config.loading import apply_overrides, load_config, parse_override, resolve_config_path
from dbl_ps.config.resolve import config_differences, resolve_sync, schedule_notes, sync_line, sync_record
from dbl_ps.config.run_config import ConfigKey, RunConfig, check_workers_fit, config_keys
from dbl_ps.config.sections import (MODELS, SOURCES, STREAMED_SOURCES, DataConfig, DBSLConfig, EvalConfig,
                                    LaunchConfig, LossConfig, MixedBatchConfig, ModelConfig, NoiseScaleConfig,
                                    OptimConfig, ScheduleConfig, StoreConfig, SWAConfig, SyntheticConfig,
                                    TrackingConfig, WandbConfig, rule_fits)

__all__ = [
    "ConfigError",
    "EngineSettings",
    "DataConfig",
    "SyntheticConfig",
    "ModelConfig",
    "ScheduleConfig",
    "DBSLConfig",
    "StoreConfig",
    "MixedBatchConfig",
    "OptimConfig",
    "EvalConfig",
    "LaunchConfig",
    "LossConfig",
    "SWAConfig",
    "NoiseScaleConfig",
    "WandbConfig",
    "TrackingConfig",
    "RunConfig",
    "ConfigKey",
    "config_keys",
    "load_config",
    "resolve_config_path",
    "apply_overrides",
    "parse_override",
    "PerResolution",
    "per_resolution",
    "check_workers_fit",
    "config_differences",
    "resolve_sync",
    "sync_record",
    "sync_line",
    "schedule_notes",
    "rule_fits",
    "SOURCES",
    "MODELS",
    "STREAMED_SOURCES",
]
