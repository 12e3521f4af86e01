"""What a validated config means for one run: the sync made concrete for the launch
(`resolve_sync`) and what the run says about it (`sync_record`, `sync_line`), the
resolutions the schedule never reaches (`schedule_notes`), and the keys two configs
differ in (`config_differences`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dbl_ps.config.fields import _bad, _names, _plugin_traits
from dbl_ps.config.run_config import RunConfig
from dbl_ps.config.sections import MixedBatchConfig, StoreConfig, rule_fits
from dbl_ps.imports import is_import_path
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.schedule import ScheduleSpec, epochs_at_each_resolution


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
    if is_import_path(kind):  # a sync kind comes with its coordinator: only a registration names both
        raise _bad("sync", kind, f"a registered name ({_names(['auto', *SYNCHRONIZERS.names()])}), or a name your "
                   f"module registers with SYNCHRONIZERS.register(..., coordinator=...) and names in "
                   f"DBL_PS_PLUGINS (docs/ARCHITECTURE.md, 'Extending dbl-ps')")
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
    own = cfg.own_settings()
    if traits["per_step"] and own is not None and own.group_size() > 1:
        raise _bad(own.group_size_key, own.group_size(), f"1 with {what} (every rank is its own worker there, and "
                   f"engine {cfg.engine!r} shards the model over every rank)")
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
