"""Values a user did not set follow the ones they did, so one override is enough: in the
plain data of a config (nested mappings, before it is built), a layer (a config file over
the defaults, or the command-line overrides over the file) changes what it did not set
to agree with what it did (`_follow`: milestones scale with `schedule.epochs`,
per-resolution values follow `schedule.resolutions`), and a user's own model or data does
not inherit what only the embedded digits job means (`_own_model_and_data`); an engine's
settings add their own (`EngineSettings.follow`: the LR of the user's DeepSpeed JSON
becomes `schedule.lr`). Each derived value appends one line to the caller's notes."""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Mapping

from dbl_ps.config.fields import ConfigError
from dbl_ps.config.run_config import RunConfig

_MISSING = object()


def _get(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
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


def _is_section(value: Mapping[Any, Any]) -> bool:
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


def _follow(before: Mapping[str, Any], after: dict[str, Any], set_keys: set[str], notes: list[str]) -> None:
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
    alphas, betas = (_by_resolution(v, old) if _needs_follow(v, r1) else None for v in (alpha, beta))
    if alphas is not None and betas is not None and all(r in alphas and r in betas for r in r1):
        _set_dotted(after, "dbl.alpha", {r: alphas[r] for r in r1})
        _set_dotted(after, "dbl.beta", {r: betas[r] for r in r1})
        return
    _set_dotted(after, "dbl.alpha", None)
    _set_dotted(after, "dbl.beta", None)
    notes.append(f"dbl.alpha/dbl.beta dropped: they were measured for {old} px, not schedule.resolutions={r1}; "
                 f"the time model comes from dbl.calibration or is measured when the run starts")


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


def _own_model_and_data(data: dict[str, Any], set_anywhere: set[str], notes: list[str]) -> None:
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
