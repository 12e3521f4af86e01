"""Registries of what a user may replace: engines, data sources, trackers, sync kinds.

A config names a plugin by its registered name (`engine: deepspeed`) or by an import
path to user code (`engine: my_pkg.engines:MyEngine`), the way `model.name` works:

    entry = ENGINES.get(cfg.engine)        # Entry(name, obj, traits); imports what it names
    ENGINES.traits(cfg.engine)             # the traits alone: never imports anything
    ENGINES.check("nope")                  # UnknownPluginError: lists the names and the path form

Built-ins are registered below as `"module:attr"` strings and imported only when
`get` is called, so that `names()`, `traits()` and config validation never import
torch or an optional extra. A plugin may also register an object directly:

    @DATA_SOURCES.register("my_source", path="the folder holding my files")
    def load_my_source(data_cfg, image_size): ...

A user's module that registers plugins by name is named in the environment variable
`DBL_PS_PLUGINS` (module names, separated by commas): a lookup of a name no registry
holds imports those modules, then looks again. The variable reaches every process of a
run (spawned workers, torchrun's ranks), each registering the same names before its
config is checked, so `DBL_PS_PLUGINS=my_pkg.sync dbl-ps train sync=my_kind` works in
every mode. A registered name is found without importing anything.

Traits are plain data a launcher or the config reads without importing the plugin
(e.g. whether an engine runs in a store-mode worker process). Each registry declares
its traits and their defaults; an import path gets the defaults, a registration may
set others, and an unknown trait name is an error (a typo would otherwise be ignored).

This module is the core layer: standard library and `dbl_ps.imports` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from dbl_ps.imports import ImportPathError, import_callable, import_modules, is_import_path, split_import_path

__all__ = ["Registry", "Entry", "UnknownPluginError", "ENGINES", "DATA_SOURCES", "TRACKERS", "SYNCHRONIZERS",
           "PLUGINS_ENV", "import_plugin_modules"]

# The environment variable naming users' modules that register plugins (see the module docstring).
PLUGINS_ENV = "DBL_PS_PLUGINS"


def import_plugin_modules() -> list[str]:
    """Import the modules `DBL_PS_PLUGINS` names (already imported ones cost nothing; the current
    directory is searched too, as for `imports`); returns one line per module that did not
    import, which the lookup's error then shows."""
    failed = []
    for module in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
        if not module:
            continue
        try:
            import_modules([module], PLUGINS_ENV)
        except ImportPathError as exc:
            failed.append(str(exc))
        except Exception as exc:  # noqa: BLE001 (a user's module raised while importing: its error, named)
            failed.append(f"{PLUGINS_ENV} module {module!r} raised {type(exc).__name__}: {exc}")
    return failed


class UnknownPluginError(ValueError):
    """A value that is neither a registered name nor an import path."""


@dataclass(frozen=True)
class Entry:
    """A plugin ready to use: its name (the registered name, or the import path as given),
    the object it names (loaded) and its traits."""

    name: str
    obj: Any
    traits: Mapping[str, Any]


class Registry:
    """Names -> (object or lazy "module:attr", traits) for one kind of plugin.

    `kind` and `key` word the errors ("engine", config key "engine"); `interface` says
    what an import path must name; `traits` are every trait with its default."""

    def __init__(self, kind: str, *, key: str, interface: str, traits: Mapping[str, Any] | None = None):
        self.kind = kind
        self.key = key
        self.interface = interface
        self.defaults = dict(traits or {})
        # name -> [target, traits]; target is the object or a "module:attr" string not yet
        # imported (replaced by the object on first `get`).
        self._entries: dict[str, list[Any]] = {}
        self._plugin_errors: list[str] = []  # DBL_PS_PLUGINS modules that did not import at the last miss

    # -- registering

    def register(self, name: str, factory: Any = None, /, **traits: Any) -> Any:
        """Register `factory` (an object, or a "module:attr" string imported on first use)
        under `name` with `traits`. Without `factory`, a decorator. Registering a name
        again replaces it."""
        if factory is None:
            def decorate(obj: Any) -> Any:
                self.register(name, obj, **traits)
                return obj
            return decorate
        # A name never reads as an import path, so the two forms a config accepts cannot clash.
        if not isinstance(name, str) or not name or is_import_path(name):
            raise ValueError(f"cannot register {self.kind} {name!r}: a name is a non-empty string "
                                     "without ':' or '.' (those name user code by import path)")
        unknown = sorted(set(traits) - set(self.defaults))
        if unknown:
            raise ValueError(f"cannot register {self.kind} {name!r}: unknown trait(s) {', '.join(unknown)} "
                                     f"(a {self.kind} has {', '.join(sorted(self.defaults)) or 'no traits'})")
        if isinstance(factory, str):
            split_import_path(factory, f"{self.kind} {name!r}")  # a typo in a built-in fails here, at import
        elif not callable(factory):
            raise ValueError(f"cannot register {self.kind} {name!r}: {factory!r} is not callable")
        self._entries[name] = [factory, {**self.defaults, **traits}]
        return factory

    # -- looking up (no import)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def with_trait(self, trait: str, value: Any = True) -> list[str]:
        """The registered names whose `trait` equals `value` (e.g. the engines that run in store mode)."""
        return [n for n, (_, traits) in self._entries.items() if traits.get(trait) == value]

    def allowed(self) -> str:
        """What a value may be, for error messages."""
        names = ", ".join(repr(n) for n in self._entries)
        failed = "".join(f"; {line}" for line in self._plugin_errors)
        return (f"one of {names} (or a name registered by a module in {PLUGINS_ENV}) or an import path "
                f"'package.module:callable' naming {self.interface}{failed}")

    def _unknown(self, value: Any) -> UnknownPluginError:
        return UnknownPluginError(f"{self.key}={value!r} is not a registered {self.kind}: expected {self.allowed()}")

    def traits(self, value: str) -> dict[str, Any]:
        """The traits of a registered name, or the defaults for a well-formed import path;
        `UnknownPluginError` otherwise. Imports nothing, but the `DBL_PS_PLUGINS` modules for a
        name no registry holds."""
        if isinstance(value, str) and value in self._entries:
            return dict(self._entries[value][1])
        if isinstance(value, str) and value and not is_import_path(value):
            self._plugin_errors = import_plugin_modules()  # a user's module may register it
            if value in self._entries:
                return dict(self._entries[value][1])
        if isinstance(value, str) and is_import_path(value):
            try:
                split_import_path(value, self.key)
            except ImportPathError:
                raise self._unknown(value) from None
            return dict(self.defaults)
        raise self._unknown(value)

    def check(self, value: str) -> None:
        """Raise `UnknownPluginError` unless `value` is a registered name or an import path."""
        self.traits(value)

    # -- loading (imports)

    def get(self, value: str) -> Entry:
        """The entry `value` names, its object imported: a registered name (a lazy built-in is
        imported now), else an import path to user code (`ImportPathError` naming the config
        key when it does not import)."""
        traits = self.traits(value)
        if value not in self._entries:
            return Entry(value, import_callable(value, self.key), traits)
        slot = self._entries[value]
        if isinstance(slot[0], str):
            slot[0] = import_callable(slot[0], f"{self.key} {value!r}")
        return Entry(value, slot[0], traits)


# --------------------------------------------------------------------------- registries

# Engines. The object is an `Engine` subclass built as `cls(module, cfg, device, topology)`
# (TorchEngine's constructor), or a factory called as
# `factory(module, cfg, device, topology, *, batch_size, options) -> Engine`, where
# batch_size is the worker's batch in a store-mode worker process and None in a rank of a
# multi-rank job, and options is what its `setup` trait's `EngineSetup.options` returned ({} without one).
ENGINES = Registry("engine", key="engine", interface=(
    "an Engine subclass (dbl_ps.training.engine) or a factory (module, cfg, device, topology, *, batch_size, "
    "options) -> Engine"), traits={
    # A worker process of one-machine `dbl-ps train` can run it (else: only under a launcher).
    "store_mode": True,
    # One worker's model is sharded over fsdp.ranks_per_worker ranks (so that key may exceed 1).
    "sharded": False,
    # Reads `deepspeed_config` (checked at start, saved in the run directory as deepspeed_config.json).
    "ds_config": False,
    # "module:attr" of a dbl_ps.training.engine.EngineSetup subclass: the engine's own checks and
    # set-up once per run (DeepSpeed's JSON); None: nothing to check or hand the workers.
    "setup": None,
    # None: the engine applies precision, channels_last and compile (TorchEngine reads them);
    # else where its precision is set instead (those keys must then keep their defaults).
    "precision_from": None,
    # "module:attr" of `(cfg, device) -> context manager of a dbl_ps.calibrate.StepFactory`: the engine's
    # own step, timed alone on one rank, for the time model a run measures. None: an Engine
    # subclass is built and its `train_step` timed; a factory has its step timed as
    # `engine: torch` (and the run says so).
    "calibration": None,
})
ENGINES.register("torch", "dbl_ps.training.engine:TorchEngine")
ENGINES.register("deepspeed", "dbl_ps.integrations.deepspeed:build_engine", ds_config=True,
                 setup="dbl_ps.integrations.deepspeed:DeepSpeedSetup",
                 precision_from="the DeepSpeed JSON (deepspeed_config: gpu_bf16)",
                 calibration="dbl_ps.integrations.deepspeed:calibration_steps")
ENGINES.register("fsdp", "dbl_ps.integrations.fsdp:build_engine", store_mode=False, sharded=True,
                 precision_from="fsdp.param_dtype")

# Data sources. The object is a loader `(data_cfg, image_size) -> dbl_ps.data.Dataset`
# (image_size is the largest resolution of the schedule).
DATA_SOURCES = Registry("data source", key="data.source", interface=(
    "a loader (data_cfg, image_size) -> dbl_ps.data.Dataset"), traits={
    # What `data.path` must name (a directory); None: the source reads no files.
    "path": None,
    # Read sample by sample from a torch Dataset: per-sample transforms (random_resized_crop)
    # and data.image_size apply.
    "per_sample": False,
    # A folder holding index.json is a `dbl-ps shard` set (pre-resized, decoded per batch);
    # any other folder holds webdataset tars read sample by sample.
    "shard_sets": False,
    # Builds its data with `data.factory` (which is refused for every other source).
    "factory": False,
    # The loader also takes `log=` (a callable for notes such as estimated statistics).
    "takes_log": False,
})
_IDX = "the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (optionally .gz), or torchvision's "
DATA_SOURCES.register("digits", "dbl_ps.data.load:digits_source")
DATA_SOURCES.register("fashion_mnist", "dbl_ps.data.load:fashion_mnist_source", path=_IDX + "FashionMNIST/raw/")
DATA_SOURCES.register("mnist", "dbl_ps.data.load:mnist_source", path=_IDX + "MNIST/raw/")
DATA_SOURCES.register("cifar10", "dbl_ps.data.load:cifar10_source",
                      path="the folder holding cifar-10-python.tar.gz or cifar-10-batches-py (or that folder itself)")
DATA_SOURCES.register("cifar100", "dbl_ps.data.load:cifar100_source",
                      path="the folder holding cifar-100-python.tar.gz or cifar-100-python (or that folder itself)")
DATA_SOURCES.register("imagefolder", "dbl_ps.data.load:imagefolder_source", per_sample=True, takes_log=True,
                      path="the folder holding train/ and val/ (or test/), each with one folder per class")
DATA_SOURCES.register("synthetic", "dbl_ps.data.load:synthetic_source")
DATA_SOURCES.register("shards", "dbl_ps.shards.loader:load_source", shard_sets=True, path=(
    "the folder `dbl-ps shard --out` wrote, or a folder of webdataset train-*.tar and test-*.tar/val-*.tar"))
DATA_SOURCES.register("factory", "dbl_ps.data.load:factory_source", per_sample=True, factory=True, takes_log=True)

# Trackers: sinks of the run's metrics records beside metrics.jsonl. The object is called as
# `factory(cfg, run_dir, *, resuming, tags, warn)` (run_dir a dbl_ps.training.rundir.RunDirectory,
# tags labels the launcher adds, e.g. the engine of a multi-rank job) and returns a sink with
# `log(step, record)` and `close()`, or None when it has nothing to log to.
TRACKERS = Registry("tracker", key="tracking.trackers", interface=(
    "a tracker factory (cfg, run_dir, *, resuming, tags, warn) -> sink with log(step, record) and close()"))
TRACKERS.register("wandb", "dbl_ps.runtime.tracking:open_wandb")
TRACKERS.register("tensorboard", "dbl_ps.runtime.tracking:open_tensorboard")
TRACKERS.register("csv", "dbl_ps.runtime.tracking:open_csv")

# Sync kinds: how the workers' models meet, each a synchronizer (what a worker's loop holds)
# with its coordinator (the run-level half the run driver holds). The config's `sync` key
# names one (`auto`: the first registered kind that fits the launch). Traits say what a kind
# needs and what it honours, so the config is checked against them at load:
SYNCHRONIZERS = Registry("sync kind", key="sync", interface="a Synchronizer (dbl_ps.training.sync)", traits={
    # True: runs under torchrun or the deepspeed launcher (every rank a worker, or a group of
    # ranks one worker); False: `dbl-ps train` on one machine spawns its own worker processes.
    "launched": False,
    # The store.mode values it runs and the store.rule values it merges with; the first of
    # each is what an unset key means (a rule that does not fit the mode is skipped).
    "modes": ("bsp", "asp", "ssp"),
    "rules": ("average", "blend", "sgd"),
    # Honours store.sync_every (a sync every k steps or once per mini-epoch).
    "sync_every": True,
    # One line on what it does, for the run's first lines and for errors.
    "what": "",
    # The plan it trains: "dbsl" (the paper's small and large workers, `dbl_ps.planner`) or
    # "mixed" (one global batch split by the ranks' speed, `dbl_ps.planner.mixed`).
    "plan": "dbsl",
    # Merges gradients inside every step (the engine all-reduces them, weighted), rather than
    # models at sync points; the engine is then built for it (`Engine.gradient_sync`).
    "per_step": False,
    # "module:attr" of the coordinator factory: one-machine kinds' is called as
    # (cfg, run_dir, processes: dbl_ps.training.coordinator.WorkerProcesses), launched kinds' as
    # (topology, device, *, threads, measure_per_worker, build_loop) after the rank's set-up.
    "coordinator": None,
})
# The object is the synchronizer factory: one-machine kinds' called in each worker process as
# (cfg, worker, links) with the picklable links the coordinator handed the launcher; launched
# kinds' in each rank as (cfg, plan, topology).
SYNCHRONIZERS.register("store", "dbl_ps.synchronizers.store:worker_synchronizer", launched=False,
                       modes=("asp", "bsp", "ssp"), rules=("blend", "average", "sgd"),
                       what="the parameter store on one machine merges each worker's push with store.rule",
                       coordinator="dbl_ps.synchronizers.store:StoreCoordinator")
SYNCHRONIZERS.register("collective", "dbl_ps.synchronizers.collective:rank_synchronizer", launched=True,
                       modes=("bsp",), rules=("average",),
                       what="every rank meets the others at each sync and takes the share-weighted mean of the "
                            "models (torch.distributed all_reduce): bulk-synchronous averaging",
                       coordinator="dbl_ps.synchronizers.collective:CollectiveCoordinator")
SYNCHRONIZERS.register("mixed_batch", "dbl_ps.synchronizers.mixed_batch:rank_synchronizer", launched=True,
                       modes=("bsp",), rules=("average",), sync_every=False, plan="mixed", per_step=True,
                       what="every step trains one global batch split over the ranks by their speed; gradients are "
                            "merged in every step, weighted by each rank's share of the batch",
                       coordinator="dbl_ps.synchronizers.collective:CollectiveCoordinator")
