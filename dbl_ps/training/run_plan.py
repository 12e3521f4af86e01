"""The run's plan: solved once, saved in the run directory's plan.json, read back by everyone else.

    plan = build_plan(cfg, dataset_size, models, batches)   # the solve (the run driver's main process)
    save_plan(run_dir, {**plan.to_dict(), ...})              # plan.json: at set-up, after each re-plan
    plan = load_plan(run_dir)                                # a store-mode worker: the plan as saved
    saved = read_plan_file(run_dir)                          # plan.json's dict (replans, time-model source)

This module alone writes plan.json and reads it back (`dbl_ps.report` reads its time models
as plain JSON for its plots: the core layer cannot import this one). The plan is solved once per run (and once per
re-plan, `dbl_ps.training.replanning`) by the process that holds the time models; the others
take it as it was saved (`saved_plan`, no solve): the store mode's workers read plan.json at
start and again when the launcher's plan version says it was rewritten, the ranks of a
launch read rank 0's plan. `plan_from_dict` makes a saved plan again from its inputs and
checks it against the saved shares and batches (a resumed run's plan.json; a checkpoint of
the public API). Also here: the run's schedule, whose batch sizes come from the plan
(`build_spec`), and where two plans differ (`plan_difference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dbl_ps.config import RunConfig
from dbl_ps.metrics import strict_dumps
from dbl_ps.planner import (Plan, ResolutionPlan, TimeModel, make_plan, plan_mixed, plan_mixed_resolution,
                            plan_resolution)
from dbl_ps.registry import SYNCHRONIZERS
from dbl_ps.run_ownership import atomic_write
from dbl_ps.schedule import ScheduleSpec
from dbl_ps.training.swa import swa_start_epoch

__all__ = ["PLAN_FILE", "build_plan", "plan_from_dict", "saved_plan", "save_plan", "read_plan_file", "load_plan",
           "build_spec", "plan_difference"]

PLAN_FILE = "plan.json"


def build_plan(cfg: RunConfig, dataset_size: int, models: dict[int, TimeModel], batches: dict[int, int]) -> Plan:
    """The run's plan of every resolution: DBSL's (with the small batch chosen in `dbl.batch_small`
    where set), or the mixed-batch split of the global batch (`sync: mixed_batch`). A time model
    the planner cannot use is one `InfeasiblePlanError` naming what to change."""
    if SYNCHRONIZERS.traits(cfg.sync)["plan"] == "mixed":
        global_batch = cfg.global_batch() or [cfg.dbl.workers * batches[r] for r in cfg.schedule.resolutions]
        return plan_mixed(models, dict(zip(cfg.schedule.resolutions, global_batch)), cfg.dbl.workers, dataset_size,
                          cfg.memory_caps())
    return make_plan(models, batches, cfg.dbl.workers, cfg.dbl.small, cfg.dbl.tau, dataset_size,
                     cfg.dbl.min_small_batch, cfg.batch_small())


def plan_from_dict(data: dict[str, Any]) -> Plan:
    """The plan `Plan.to_dict()` wrote, made again from its saved inputs (the planners are
    deterministic) and checked against its saved shares and batches: a `ValueError` where they
    differ. This solves the plan; `saved_plan` takes it as it was saved."""
    plans = {}
    for key, rp in data["per_resolution"].items():
        models = _time_models(rp)
        # Re-plan from the saved inputs: the planners are deterministic, so this is the saved plan.
        if rp.get("global_batch"):  # a mixed-batch split
            plans[int(key)] = plan_mixed_resolution(models, rp["global_batch"], rp["dataset_size"],
                                                    caps=rp.get("memory_caps"), resolution=int(key))
        else:
            plans[int(key)] = plan_resolution(models, rp["batch_large"], small=rp["small"], tau=rp["tau"],
                                              dataset_size=rp["dataset_size"], resolution=int(key),
                                              min_small_batch=rp.get("min_small_batch", 1),  # plans written before the floor
                                              batch_small=rp.get("batch_small_request"))
        if list(plans[int(key)].shares) != list(rp["shares"]) or list(plans[int(key)].batches) != list(rp["batches"]):
            raise ValueError(f"saved plan at {key} px does not match its inputs (shares {rp['shares']}, batches {rp['batches']})")
    return Plan(workers=data["workers"], small=data["small"], tau=data["tau"], dataset_size=data["dataset_size"],
                resolutions=dict(sorted(plans.items())))


def _time_models(rp: dict[str, Any]) -> list[TimeModel]:
    return [TimeModel(alpha=m["alpha"], beta=m["beta"], r2=m.get("r2")) for m in rp["time_models"]]


def _tuple(values: Any) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


def _saved_resolution(rp: dict[str, Any]) -> ResolutionPlan:
    """One resolution's plan as `ResolutionPlan.to_dict()` wrote it (KeyError: a field is missing)."""
    exact = rp["exact"]
    return ResolutionPlan(
        resolution=rp["resolution"], workers=rp["workers"], small=rp["small"], tau=rp["tau"],
        dataset_size=rp["dataset_size"], time_models=tuple(_time_models(rp)), batch_large=tuple(rp["batch_large"]),
        baseline_epoch_seconds=rp["baseline_epoch_seconds"], epoch_seconds_exact=exact["epoch_seconds"],
        shares_exact=tuple(exact["shares"]), batch_small_exact=exact["batch_small"],
        merge_weights_exact=tuple(exact["merge_weights"]), shares=tuple(rp["shares"]), batch_small=rp["batch_small"],
        batches=tuple(rp["batches"]), merge_weights=tuple(rp["merge_weights"]),
        predicted_epoch_seconds=tuple(rp["predicted_epoch_seconds"]), tau_range=_tuple(rp["tau_range"]),
        # fields plan.json gained later: an older file has these defaults
        min_small_batch=rp.get("min_small_batch", 1), batch_small_request=rp.get("batch_small_request"),
        small_batch_source=rp.get("small_batch_source") or "formula", global_batch=rp.get("global_batch"),
        micro_batches=_tuple(rp.get("micro_batches")), memory_caps=_tuple(rp.get("memory_caps")))


def saved_plan(data: dict[str, Any]) -> Plan:
    """The plan `Plan.to_dict()` wrote (plan.json, or the dict the main process shared), as it
    was saved: nothing is solved again. A dict without the whole plan (one written before the
    plan had all its fields) is made again from its inputs (`plan_from_dict`)."""
    try:
        plans = {int(key): _saved_resolution(rp) for key, rp in data["per_resolution"].items()}
    except (KeyError, TypeError):
        return plan_from_dict(data)
    return Plan(workers=data["workers"], small=data["small"], tau=data["tau"], dataset_size=data["dataset_size"],
                resolutions=dict(sorted(plans.items())))


def save_plan(run_dir: str | Path, plan: dict[str, Any]) -> None:
    """plan.json (`RunDriver.plan_dict()`: the plan, its time-model source, engine, re-plans), at
    set-up and again after each re-plan (`dbl.replan`), so that a resume and the store-mode
    workers' next epoch read the latest plan. Strict JSON, written under a temporary name,
    then renamed."""
    atomic_write(Path(run_dir) / PLAN_FILE, lambda tmp: tmp.write_text(strict_dumps(plan, indent=2) + "\n"))


def read_plan_file(run_dir: str | Path) -> dict[str, Any]:
    """plan.json of the run in `run_dir`, as a dict."""
    return json.loads((Path(run_dir) / PLAN_FILE).read_text())


def load_plan(run_dir: str | Path) -> Plan:
    """The plan in the run's plan.json, as saved (`saved_plan`: not solved again)."""
    return saved_plan(read_plan_file(run_dir))


def _small_batches(rplans: list[Any]) -> tuple[int, ...]:
    """b_S of each resolution's plan (a plan with small workers has one at every resolution)."""
    small = []
    for p in rplans:
        assert p.batch_small is not None, "a plan with small workers has b_S at every resolution"
        small.append(p.batch_small)
    return tuple(small)


def build_spec(cfg: RunConfig, plan: Plan) -> ScheduleSpec:
    """The schedule of a run: LR, resolution cycle and dropout from the config, batch
    sizes from the plan (the largest per resolution; each worker reads its own)."""
    resolutions = tuple(cfg.schedule.resolutions)
    rplans = [plan[r] for r in resolutions]
    s = cfg.schedule
    return ScheduleSpec(
        epochs=s.epochs, base_lr=s.lr, milestones=tuple(s.milestones), gamma=s.gamma,
        warmup_epochs=s.warmup_epochs, warmup_start_factor=s.warmup_start_factor,
        resolutions=resolutions, dropouts=tuple(cfg.dropouts()),
        batch_large=tuple(max(p.batch_large) for p in rplans),
        batch_small=_small_batches(rplans) if plan.small else None,
        cyclic=s.cyclic,
        swa_start=swa_start_epoch(cfg.swa.start, s.epochs) if cfg.swa.enabled else None,
        swa_lr=cfg.swa.lr, swa_anneal_epochs=cfg.swa.anneal_epochs,
    )


# The inputs a plan is made from, named before anything that follows from them (shares, weights).
_PLAN_INPUTS = ("workers", "small", "tau", "dataset_size", "resolutions")
_RESOLUTION_INPUTS = ("time_models", "batch_large", "batch_small_request", "min_small_batch")


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place two JSON values differ: (path, a's value, b's value), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{path}[{i}]"))),
                    None)
    return None if a == b else (path, a, b)


def plan_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """Where two plans (`plan_to_dict`) differ, their inputs first."""
    inputs = [(k, k) for k in _PLAN_INPUTS] + [
        (f"per_resolution.{r}.{k}", (r, k)) for r in a.get("per_resolution", {}) for k in _RESOLUTION_INPUTS]
    for path, key in inputs:
        x, y = (a.get(key), b.get(key)) if isinstance(key, str) else \
            (a["per_resolution"][key[0]].get(key[1]), b.get("per_resolution", {}).get(key[0], {}).get(key[1]))
        found = _first_difference(x, y, path)
        if found:
            return found
    return _first_difference(a, b)
