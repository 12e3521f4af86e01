"""The run's plan is solved once and read back as saved (`dbl_ps.training.run_plan`): plan.json
through `save_plan` / `load_plan` is the plan that was solved, field for field, for every kind
of plan; and a store-mode run solves its plan once in the launcher (and once per re-plan),
never in a worker (`DBL_PS_PLAN_LOG` counts every resolution any process plans)."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from dbl_ps.config import load_config
from dbl_ps.metrics import strict_dumps
from dbl_ps.planner import TimeModel, make_plan, plan_mixed, replan_any
from dbl_ps.runtime import Trainer
from dbl_ps.runtime.hooks import PLAN_LOG_ENV, SLOW_ENV, log_plan_solves
from dbl_ps.training.run_plan import PLAN_FILE, load_plan, plan_from_dict, read_plan_file, save_plan, saved_plan

GPU = TimeModel(alpha=0.05, beta=0.0002, r2=0.97)  # a fixed cost far above B_L's
CPU = TimeModel(alpha=0.003, beta=0.0002, r2=float("nan"))  # a fit's R^2 may be nan: plan.json holds null
FLAT = TimeModel(alpha=0.0001, beta=0.001)  # no fixed cost: the reference fraction


def plans() -> dict[str, object]:
    dbsl = make_plan({16: CPU, 24: GPU}, {16: 256, 24: 128}, 4, 1, 1.1, 5000, min_small_batch=8)
    return {
        "all large": make_plan({16: CPU}, {16: 64}, 3, 0, 1.0, 1000),
        "dbsl, two resolutions": dbsl,
        "chosen small batch": make_plan({32: GPU}, {32: 256}, 4, 2, 1.3, 6000, batch_small=0.5),
        "reference (no fixed cost)": make_plan({32: FLAT}, {32: 128}, 4, 1, 1.05, 4000),
        "mixed hardware": make_plan({16: [CPU, GPU, GPU]}, {16: [64, 128, 128]}, 3, 1, 1.2, 3000),
        "re-planned": replan_any(dbsl, [1.0, 1.0, 1.6, 0.9]),
        "mixed batch with a cap": plan_mixed({16: [CPU, GPU]}, {16: 100}, 2, 1234, caps=[16, None]),
    }


def as_json(data: dict) -> dict:
    return json.loads(strict_dumps(data))


def without_nan(plan):
    """The plan as JSON keeps it: an R^2 of nan is null."""
    return plan_from_dict(as_json(plan.to_dict())) if any(
        m.r2 != m.r2 for rp in plan.resolutions.values() for m in rp.time_models) else plan


@pytest.mark.parametrize("name", list(plans()))
def test_saved_plan_is_the_solved_plan_without_solving_it(name, tmp_path, monkeypatch):
    plan = plans()[name]
    save_plan(tmp_path, {**plan.to_dict(), "replans": []})
    assert read_plan_file(tmp_path)["replans"] == [] and (tmp_path / PLAN_FILE).is_file()
    expected = without_nan(plan)
    log = tmp_path / "plans.jsonl"
    log_plan_solves()
    monkeypatch.setenv(PLAN_LOG_ENV, str(log))
    assert load_plan(tmp_path) == expected  # every field, exact and rounded, as solved
    assert saved_plan(plan.to_dict()) == plan  # the dict itself (what the main process shares)
    assert not log.exists()  # nothing solved again
    plan_from_dict(plan.to_dict())  # which this does, per resolution
    assert len(log.read_text().splitlines()) == len(plan.resolutions)


def test_saved_plan_without_every_field_is_made_again_from_its_inputs():
    plan = plans()["dbsl, two resolutions"]
    data = as_json(plan.to_dict())
    for rp in data["per_resolution"].values():  # a plan.json written before the plan kept its exact values
        del rp["exact"]
    assert saved_plan(data) == without_nan(plan)


# Two workers, one small (the plan rests on the time model), worker 1 slowed so the launcher re-plans.
RUN = ["dbl.workers=2", "dbl.small=1", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.warmup_epochs=0",
       "schedule.lr=0.05", "schedule.epochs=3", "schedule.milestones=[]", "store.mode=bsp", "store.rule=average",
       "dbl.replan=true", "data.train_limit=400", "threads_per_worker=1"]


def test_store_mode_solves_the_plan_once_in_the_launcher_and_once_per_replan(tmp_path: Path, monkeypatch):
    log = tmp_path / "plans.jsonl"
    monkeypatch.setenv(PLAN_LOG_ENV, str(log))  # every process of the run, workers included
    monkeypatch.setenv(SLOW_ENV, "1:0.08")
    cfg = load_config(None, RUN)
    summary = Trainer(cfg, tmp_path / "run", progress=False, log=lambda m: None).train()
    assert summary["status"] == "finished"
    replans = read_plan_file(tmp_path / "run")["replans"]
    assert replans, "the slowed worker should have been re-planned for"
    solved = collections.Counter(json.loads(line)["pid"] for line in log.read_text().splitlines())
    resolutions = len(cfg.schedule.resolutions)
    # one line per resolution planned: the run's plan and each re-plan, in the launcher (this process) only
    assert solved == {os.getpid(): resolutions * (1 + len(replans))}, (solved, replans)
