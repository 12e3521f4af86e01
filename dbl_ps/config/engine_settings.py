"""An engine's own config keys. An engine registers them with its `settings` trait
(`dbl_ps.registry.ENGINES`): the "module:Class" of a dataclass deriving from `EngineSettings`,
in a module that imports no torch (configs are loaded before any engine is). The run config
takes the keys of every registered engine's settings (a section such as `fsdp.*`, or top-level
keys such as `deepspeed_config`), checks them with the schema's machinery, saves them in
config.yaml with the rest and refuses a value other than the default unless the run's engine
owns it. Code reads them as `cfg.settings(FSDPSettings)`. The central schema thus names no
engine; a user's engine registered by name brings its own keys the same way."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from dbl_ps.registry import ENGINES, UnknownPluginError


class EngineSettings:
    """The base of an engine's settings dataclass (`@dataclass(kw_only=True)`, fields declared
    with `dbl_ps.config.fields._f` for help and limits; a `check(prefix)` method for rules
    across its fields, as every section may have)."""

    # The section its keys sit in (`fsdp` -> `fsdp.ranks_per_worker`); None: top-level keys.
    section: ClassVar[str | None] = None
    # The dotted key of the ranks one worker's model is sharded over ("" where it is always 1).
    group_size_key: ClassVar[str] = ""

    def group_size(self) -> int:
        """The ranks one worker's model is sharded over under a launcher (1: a rank is a worker)."""
        return 1

    @classmethod
    def follow(cls, data: dict[str, Any], set_anywhere: set[str], notes: list[str]) -> None:
        """Set, in the plain config `data`, values that follow from the engine's own files
        where the user did not set them (`set_anywhere`: the dotted keys they did); one line
        each in `notes`. Called at load for every registered engine's settings."""


def settings_of(engine: str) -> type[EngineSettings] | None:
    """The settings class a registered engine names (None: it has no keys of its own, or it is
    an import path to a user's engine, which cannot bring any)."""
    if engine not in ENGINES:
        return None
    cls = ENGINES.trait_object(engine, "settings")
    if cls is None:
        return None
    if not (isinstance(cls, type) and issubclass(cls, EngineSettings) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"engine {engine!r}: settings {ENGINES.traits(engine)['settings']!r} is not a dataclass "
                        f"deriving from dbl_ps.config.engine_settings.EngineSettings")
    return cls


def look_up(engine: object) -> None:
    """Look the engine a config names up before its keys are read: a name that a plugin module
    in DBL_PS_PLUGINS registers is only registered, and so brings its keys, once looked up."""
    if isinstance(engine, str):
        try:
            ENGINES.traits(engine)
        except UnknownPluginError:
            pass  # the config's check names the value and what is allowed


def settings_classes() -> list[type[EngineSettings]]:
    """Every registered engine's settings class, once each, in registration order."""
    found: list[type[EngineSettings]] = []
    for name in ENGINES.names():
        cls = settings_of(name)
        if cls is not None and cls not in found:
            found.append(cls)
    return found


def owners(cls: type[EngineSettings]) -> list[str]:
    """The registered engines that read `cls`'s keys."""
    return [name for name in ENGINES.names() if settings_of(name) is cls]

