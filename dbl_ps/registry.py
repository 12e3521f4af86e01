"""Registries of what a user may replace: engines, data sources, trackers, sync kinds.

A config names a plugin by its registered name (`engine: deepspeed`) or by an import
path to user code (`engine: my_pkg.engines:MyEngine`), the way `model.name` works:

    entry = ENGINES.get(cfg.engine)        # Entry(name, obj, traits); imports what it names
    ENGINES.traits(cfg.engine)             # the traits alone: never imports anything
    ENGINES.check("nope")                  # UnknownPluginError: lists the names and the path form

The registries are declared here, with their traits; what fills them registers itself.
dbl-ps's built-ins are registered in `dbl_ps.builtin_plugins` (the top layer) as `"module:attr"`
strings, imported only when `get` is called, so that `names()`, `traits()` and config
validation never import torch or an optional extra. That module is an entry point of the
group `dbl_ps.plugins` (pyproject.toml), loaded on the first lookup in a process, so this
core module names no higher layer; an installed package of the user's registers its own
plugins the same way:

    [project.entry-points."dbl_ps.plugins"]
    my_plugins = "my_pkg.dbl_plugins"      # a module whose import registers them

A plugin may also register an object directly:

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
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Mapping

from dbl_ps.imports import ImportPathError, import_callable, import_modules, is_import_path, split_import_path

__all__ = ["Registry", "Entry", "UnknownPluginError", "ENGINES", "DATA_SOURCES", "TRACKERS", "SYNCHRONIZERS",
           "PLUGINS_ENV", "ENTRY_POINT_GROUP", "import_plugin_modules", "load_entry_point_plugins"]

# The environment variable naming users' modules that register plugins (see the module docstring).
PLUGINS_ENV = "DBL_PS_PLUGINS"
# The entry-point group of installed packages that register plugins when imported: dbl-ps's
# own built-ins (declared in pyproject.toml) and any user package that declares one.
ENTRY_POINT_GROUP = "dbl_ps.plugins"
_DISTRIBUTION = "dbl-ps"
_entry_points_loaded = False
_entry_point_errors: list[str] = []


def load_entry_point_plugins() -> list[str]:
    """Import, once per process, every module registered in the entry-point group
    `dbl_ps.plugins` (dbl-ps's built-ins first, so they keep their order); returns one line per
    module that did not import, or on dbl-ps's own entry point missing (metadata of an install
    older than it), which the lookup's error then shows. Every lookup and registration calls
    it first, so the registries are never seen without their built-ins."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return _entry_point_errors
    _entry_points_loaded = True  # before importing: those modules register, which comes back here

    def ours(ep: EntryPoint) -> bool:
        return ep.dist is not None and ep.dist.name.replace("_", "-").lower() == _DISTRIBUTION

    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: not ours(ep))
    if not any(ours(ep) for ep in found):
        _entry_point_errors.append(
            f"dbl-ps's built-in plugins are not registered: the installed package's metadata has no "
            f"{ENTRY_POINT_GROUP!r} entry point (installed before it existed?); reinstall: pip install -e .")
    for ep in found:
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 (a package's plugin module raised while importing: named)
            _entry_point_errors.append(f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}) "
                                       f"raised {type(exc).__name__}: {exc}")
    return _entry_point_errors


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
        load_entry_point_plugins()  # the built-ins first: they keep their place in names()
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
        load_entry_point_plugins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        load_entry_point_plugins()
        return name in self._entries

    def with_trait(self, trait: str, value: Any = True) -> list[str]:
        """The registered names whose `trait` equals `value` (e.g. the engines that run in store mode)."""
        load_entry_point_plugins()
        return [n for n, (_, traits) in self._entries.items() if traits.get(trait) == value]

    def allowed(self) -> str:
        """What a value may be, for error messages."""
        errors = [*load_entry_point_plugins(), *self._plugin_errors]
        names = ", ".join(repr(n) for n in self._entries)
        failed = "".join(f"; {line}" for line in errors)
        return (f"one of {names} (or a name registered by a module in {PLUGINS_ENV}) or an import path "
                f"'package.module:callable' naming {self.interface}{failed}")

    def _unknown(self, value: Any) -> UnknownPluginError:
        return UnknownPluginError(f"{self.key}={value!r} is not a registered {self.kind}: expected {self.allowed()}")

    def traits(self, value: str) -> dict[str, Any]:
        """The traits of a registered name, or the defaults for a well-formed import path;
        `UnknownPluginError` otherwise. Imports nothing but the plugin registrations (the
        entry points' modules, once; the `DBL_PS_PLUGINS` modules for a name no registry holds)."""
        load_entry_point_plugins()
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

    def trait_object(self, value: str, trait: str) -> Any:
        """The object a trait of `value` names as "module:attr" (an engine's `setup`, a sync
        kind's `coordinator`), imported now; None where the trait is unset. A module that does
        not import is one `ImportPathError` naming the entry and the trait."""
        path = self.traits(value)[trait]
        return None if path is None else import_callable(path, f"{self.key} {value!r} {trait}")

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
    # One worker's model is sharded over several ranks under a launcher (its settings' group_size()).
    "sharded": False,
    # "module:Class" of its own config keys: a dataclass deriving from
    # dbl_ps.config.engine_settings.EngineSettings, in a module that imports no torch. The run
    # config takes every registered engine's keys and refuses values other than their defaults
    # unless the run's engine reads them. None: no keys of its own.
    "settings": None,
    # None: `micro_batch` splits a worker's batch (TorchEngine); else what splits it instead
    # (micro_batch must then stay null).
    "micro_batch_from": None,
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

# Trackers: sinks of the run's metrics records beside metrics.jsonl. The object is called as
# `factory(cfg, run_dir, *, resuming, tags, warn)` (run_dir a dbl_ps.training.rundir.RunDirectory,
# tags labels the launcher adds, e.g. the engine of a multi-rank job) and returns a sink with
# `log(step, record)` and `close()`, or None when it has nothing to log to.
TRACKERS = Registry("tracker", key="tracking.trackers", interface=(
    "a tracker factory (cfg, run_dir, *, resuming, tags, warn) -> sink with log(step, record) and close()"))

# Sync kinds: how the workers' models meet, each a synchronizer (what a worker's loop holds)
# with its coordinator (the run-level half the run driver holds). The config's `sync` key
# names one (`auto`: the first registered kind that fits the launch). Traits say what a kind
# needs and what it honours, so the config is checked against them at load. The object is the
# synchronizer factory: one-machine kinds' called in each worker process as (cfg, worker,
# links) with the picklable links the coordinator handed the launcher; launched kinds' in
# each rank as (cfg, plan, topology).
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
