"""The schema's machinery. A field is declared with its range limits and help (`_f`); a
per-resolution setting is one value, a list or a {px: value} mapping (`per_resolution`).
The walk over a config's type annotations coerces plain data (YAML, overrides) to them,
checks the limits, builds sections from mappings (`_build`), checks a built config
(`_validate`) and says in words what a key takes (`_describe`). Every problem is one
`ConfigError` naming the full dotted key."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, TypeVar, overload

from dbl_ps.registry import Registry, UnknownPluginError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


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


def _f(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
       lt: float | None = None, help: str = "") -> Any:
    """A dataclass field with range limits (checked per element for lists)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


PerResolution = Any  # list[T] (1 value = all, else one per resolution) or dict[int, T] keyed by resolution
T = TypeVar("T")
Section = TypeVar("Section", bound="DataclassInstance")  # a config section's class


@overload
def per_resolution(values: None, resolutions: Sequence[int]) -> None: ...
@overload
def per_resolution(values: Sequence[T] | Mapping[int, T], resolutions: Sequence[int]) -> list[T]: ...
@overload
def per_resolution(values: Sequence[T] | Mapping[int, T] | None, resolutions: Sequence[int]) -> list[T] | None: ...
def per_resolution(values: Sequence[Any] | Mapping[int, Any] | None, resolutions: Sequence[int]) -> list[Any] | None:
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


# --------------------------------------------------------------------------- schema walking


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def extension_key(cls: type) -> str:
    """How a config holds an added section of class `cls` (its import path)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _extensions(cls: type) -> tuple[str, list[Any]] | None:
    """The field of `cls` holding sections that plugins add (its metadata's `extensions`: a
    callable returning their classes, each with a `section` name, or None for keys at the
    top level of `cls`), and those classes; None where `cls` has no such field."""
    for f in dataclasses.fields(cls):
        find = f.metadata.get("extensions")
        if find is not None:
            return f.name, list(find())
    return None


def _extension_prefix(ext: Any, prefix: str) -> str:
    """The dotted prefix of an added section's keys (class or instance): `fsdp.` or none."""
    return f"{prefix}{ext.section}." if ext.section else prefix


def _top_names(cls: type, ext: tuple[str, list[Any]] | None) -> list[str]:
    """The keys a mapping for `cls` may hold: its fields, where the field of added sections
    (`ext`, from `_extensions`) stands for their names (or, for top-level keys, their fields)."""
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if ext is not None and f.name == ext[0]:
            for added in ext[1]:
                names.extend([added.section] if added.section else [g.name for g in dataclasses.fields(added)])
        else:
            names.append(f.name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TypeError(f"{cls.__name__}: key(s) {', '.join(twice)} defined twice (a plugin's settings reuse them)")
    return names


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


def _coerce(value: Any, tp: Any, key: str, root: type | None = None) -> Any:
    """Return `value` as type `tp` or raise _NoMatch. Nested lists report the element key; a
    section is built from a mapping (`root`: the config the key belongs to, for suggestions)."""
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
                out.append(_coerce(item, item_tp, f"{key}[{i}]", root))
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
                k = _coerce(k, key_tp, key, root)
            except _NoMatch:
                raise _bad(key, value, f"keys that are {_describe(key_tp)} (got key {k!r})") from None
            try:
                out_map[k] = _coerce(item, value_tp, f"{key}[{k}]", root)
            except _NoMatch:
                raise _bad(f"{key}[{k}]", item, _describe(value_tp)) from None
        return out_map
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, root)
            except _NoMatch:
                continue
        item_tp = _per_resolution_item(tp)
        if item_tp is not None and not isinstance(value, (list, tuple, Mapping)) and value is not None:
            # One value for every resolution (`dbl.batch_large=64`) is the one-element list.
            return [_coerce(value, item_tp, key, root)]
        raise _NoMatch
    if _is_config(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _build(tp, value, key + ".", root)
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
        if "extensions" in f.metadata:
            for added in value.values():
                _validate(added, _extension_prefix(added, prefix))
            continue
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
        if "extensions" in f.metadata:
            for added in f.metadata["extensions"]():
                if added.section:
                    keys.append(prefix + added.section)
                keys.extend(_all_keys(added, _extension_prefix(added, prefix)))
            continue
        keys.append(prefix + f.name)
        if _is_config(hints[f.name]):
            keys.extend(_all_keys(hints[f.name], prefix + f.name + "."))
    return keys


def _suggest(name: str, cls: type, prefix: str, root: type) -> str | None:
    """The key nearest to an unknown `name` in section `cls` (at `prefix`), else in any
    section of `root` (the whole config)."""
    siblings = _top_names(cls, _extensions(cls))
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        return prefix + close[0]
    # The key may belong to another section: `tau` -> `dbl.tau`.
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in _all_keys(root)}
    close = difflib.get_close_matches(name, list(by_leaf), n=1, cutoff=0.8)
    return by_leaf[close[0]] if close else None


def _build(cls: type[Section], raw: Any, prefix: str, root: type | None = None) -> Section:
    """Section `cls` (at `prefix` in `root`, default `cls` itself) from plain data: an unknown
    key is an error suggesting the nearest known one; values are coerced to their types."""
    root = root or cls
    section = prefix[:-1] if prefix else "the top level"
    if not isinstance(raw, Mapping):
        raise _bad(section, raw, _describe(cls))
    ext = _extensions(cls)
    names = set(_top_names(cls, ext))
    for name in raw:
        if name not in names:
            key = f"{prefix}{name}"
            hint = _suggest(str(name), cls, prefix, root)
            msg = f"unknown config key '{key}'"
            if hint:
                msg += f"; did you mean '{hint}'?"
            msg += f" Allowed keys in {section}: {', '.join(sorted(names))}"
            raise ConfigError(msg, key=key, value=raw[name])
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    if ext is not None:  # each added section from its part of `raw`
        kwargs[ext[0]] = {extension_key(added): _build_added(added, raw, prefix, root) for added in ext[1]}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = prefix + f.name
        tp = hints[f.name]
        try:
            kwargs[f.name] = _coerce(raw[f.name], tp, key, root)
        except _NoMatch:
            allowed = _describe(tp)
            if _limits(f.metadata):
                allowed += f" ({_limits(f.metadata)})"
            raise _bad(key, raw[f.name], allowed) from None
    # Sub-sections are plain constructors; RunConfig.__post_init__ validates the whole tree.
    return cls(**kwargs)


def _build_added(added: type[Section], raw: Mapping[str, Any], prefix: str, root: type) -> Section:
    """An added section from the mapping of the section holding it: its own sub-mapping, or
    its keys among the holder's where it adds top-level keys."""
    if added.section:  # type: ignore[attr-defined]
        return _build(added, raw.get(added.section, {}), _extension_prefix(added, prefix), root)  # type: ignore[attr-defined]
    own = {f.name for f in dataclasses.fields(added)}
    return _build(added, {k: v for k, v in raw.items() if k in own}, prefix, root)
