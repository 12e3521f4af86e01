"""Loading a run config: a YAML file (a path, or the name of a config shipped in the
package), `key=value` command-line overrides, and the values that follow them
(`dbl_ps.config.follow`), validated once into a `RunConfig`."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from dbl_ps.config.fields import ConfigError
from dbl_ps.config.engine_settings import settings_classes
from dbl_ps.config.follow import _follow, _merge, _own_model_and_data, _set_dotted, _set_keys
from dbl_ps.config.resolve import schedule_notes
from dbl_ps.config.run_config import RunConfig
from dbl_ps.configs import find_run_config, run_configs


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


# --------------------------------------------------------------------------- overrides and files


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
        for settings in settings_classes():  # values that follow from an engine's own files
            settings.follow(data, file_keys | dotted, notes)
        _own_model_and_data(data, file_keys | dotted, notes)
    try:
        return RunConfig.from_dict(data)
    except ConfigError as err:
        for key, text in set_keys:
            if err.key is not None and (err.key == key or err.key.startswith(key + ".") or err.key.startswith(key + "[")
                                        or key.startswith(err.key + ".")):
                raise ConfigError(f"{err} (from the command-line override {text!r})", key=err.key, value=err.value) from None
        raise


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
