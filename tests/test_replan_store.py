"""Re-planning in the store mode of `dbl-ps train` (`dbl.replan`): the decision from one
epoch's reports, the slow-worker hook, and runs with a slowed worker (digits, W=2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbl_ps.config import load_config
from dbl_ps.integrations.wandb import epoch_metrics
from dbl_ps.metrics import read_metrics
from dbl_ps.planner import TimeModel, make_plan
from dbl_ps.runtime import Trainer, WorkerError
from dbl_ps.runtime.hooks import SLOW_ENV, SlowWorker
from dbl_ps.training.messages import EpochReport
from dbl_ps.training.replanning import replan_after_epoch
from dbl_ps.training.run_plan import plan_from_dict

MODEL = TimeModel(alpha=0.01, beta=0.001)


def report(worker: int, seconds: float, wait: float = 0.0, resolution: int = 16) -> EpochReport:
    return EpochReport(worker=worker, epoch=0, loss=1.0, acc=0.5, batch=100, resolution=resolution, samples=1000,
                       steps=10, syncs=1, seconds=seconds, wait_seconds=wait, sync_seconds=0.0, weight=1.0, version=1)


def test_replan_after_epoch_uses_own_training_time_and_records_old_and_new_plan():
    plan = make_plan({12: MODEL, 16: MODEL}, {12: 100, 16: 100}, workers=2, small=0, tau=1.1, dataset_size=2000)
    # Planned 1.1 s each. Worker 0 waited 1.1 s for worker 1 at the sync: its own time is 1.1 s.
    balanced = [report(0, 2.2, wait=1.1), report(1, 1.1 * 1.1)]
    assert replan_after_epoch(0, plan, balanced, threshold=0.15) is None
    slow = [report(0, 2.2, wait=1.1), report(1, 2.2)]
    replanned = replan_after_epoch(3, plan, slow, threshold=0.15)
    assert replanned is not None
    record = replanned.record
    assert record["event"] == "replan" and record["measured_resolution"] == 16
    assert record["factors"] == pytest.approx([1.0, 2.0])
    assert record["train_seconds"] == pytest.approx([1.1, 2.2])
    for px in ("12", "16"):  # measured at 16 px, applied at every resolution
        old, new = record["old"][px], record["new"][px]
        assert old["shares"] == [1000, 1000] and sum(new["shares"]) == 2000
        assert new["shares"][1] < 700 < 1300 < new["shares"][0]
        assert new["merge_weights"] == list(replanned.plan[int(px)].merge_weights)  # follow the new shares
        assert new["merge_weights"][1] < 1 < new["merge_weights"][0]
    assert replanned.line.startswith("re-planned after epoch 4: workers took 1.00x/2.00x of their planned time at 16 px")
    shares = record["new"]["16"]["shares"]
    assert epoch_metrics({"epoch": 3, **record}) == {  # W&B: replan/..., not the epoch keys
        "replan/worker0/factor": pytest.approx(1.0), "replan/worker0/share": shares[0], "replan/worker0/batch": 100,
        "replan/worker1/factor": pytest.approx(2.0), "replan/worker1/share": shares[1], "replan/worker1/batch": 100}
    with pytest.raises(ValueError, match=r"one report per worker in order 0..1 expected, got workers \[1, 0\]"):
        replan_after_epoch(0, plan, slow[::-1], threshold=0.15)


def test_slow_worker_hook_reads_worker_and_seconds():
    slow = SlowWorker.parse("1:0.02")
    assert (slow.worker, slow.seconds) == (1, 0.02)
    for bad in ("1", "x:0.1", "1:-0.5", "-1:0.1", "1:nan"):
        with pytest.raises(ValueError, match="DBL_PS_SLOW_WORKER=.*expected WORKER:SECONDS, e.g. 1:0.02"):
            SlowWorker.parse(bad)


# Two workers planned equal (dbl.small=0, one fixed time model), worker 1 slowed after every
# step: a fixed extra cost of ~0.6 s per epoch against ~0.5 s of training on this CPU.
RUN = ["dbl.workers=2", "dbl.small=0", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.warmup_epochs=0",
       "schedule.lr=0.05", "schedule.epochs=4", "schedule.milestones=[]"]
SLOW = "1:0.08"
MODES = {"bsp": ["store.mode=bsp", "store.rule=average"], "asp": ["store.mode=asp", "store.rule=blend"]}


def train(run_dir: Path, *overrides: str) -> dict:
    return Trainer(load_config(None, [*RUN, *overrides]), run_dir, progress=False, log=lambda m: None).train()


def epochs_and_replans(run_dir: Path) -> tuple[list[dict], list[dict]]:
    records = read_metrics(run_dir)
    return [r for r in records if r.get("event") != "replan"], [r for r in records if r.get("event") == "replan"]


@pytest.mark.parametrize("mode, stop", [pytest.param("bsp", True, marks=pytest.mark.slow), ("asp", False)],
                         ids=["bsp-stop-resume", "asp"])
def test_slowed_worker_gets_less_data_and_resume_keeps_the_new_plan(tmp_path, monkeypatch, mode, stop):
    run_dir = tmp_path / "run"
    monkeypatch.setenv(SLOW_ENV, SLOW)
    saved = None
    if stop:
        # Stop the run at the start of epoch 2 (worker 0 fails there, once epoch 1 is checkpointed) ...
        monkeypatch.setenv("DBL_PS_FAIL_WORKER", "0:2")
        with pytest.raises(WorkerError, match="injected failure of worker 0 at epoch 2"):
            train(run_dir, *MODES[mode], "dbl.replan=true")
        assert json.loads((run_dir / "checkpoint.json").read_text())["next_epoch"] == 2
        saved = plan_from_dict(json.loads((run_dir / "plan.json").read_text()))
        # ... and resume it: it continues with the latest plan of plan.json.
        monkeypatch.delenv("DBL_PS_FAIL_WORKER")
        summary = Trainer.resume(run_dir, progress=False, log=lambda m: None).train()
    else:
        summary = train(run_dir, *MODES[mode], "dbl.replan=true")
    assert summary["status"] == "finished"

    epochs, replans = epochs_and_replans(run_dir)
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert replans and replans[0]["epoch"] == 0, replans  # the slowdown is seen in the first epoch
    n = 1437  # the digits training split
    for px, new in replans[0]["new"].items():
        old = replans[0]["old"][px]
        assert old["shares"][0] == pytest.approx(old["shares"][1], abs=1)  # planned equal
        assert new["shares"][1] < old["shares"][1] and sum(new["shares"]) == n  # the slow worker's shrinks

    # A re-plan from epoch e's reports applies from epoch e + 1, to shares, batches and merge weights.
    in_effect = replans[0]["old"]
    after = {r["epoch"]: r["new"] for r in replans}
    for r in epochs:
        planned = in_effect[str(r["resolution"])]
        assert [w["samples"] for w in r["workers"]] == planned["shares"], (r["epoch"], replans)
        assert [w["batch"] for w in r["workers"]] == planned["batches"]
        assert [w["weight"] for w in r["workers"]] == pytest.approx(planned["merge_weights"])
        assert sum(w["samples"] for w in r["workers"]) == n
        in_effect = after.get(r["epoch"], in_effect)
    if saved is not None:  # the resumed epoch 2 trained with the plan saved before the stop
        resumed = epochs[2]
        assert [w["samples"] for w in resumed["workers"]] == list(saved[resumed["resolution"]].shares)

    plan = json.loads((run_dir / "plan.json").read_text())  # the latest plan, for a later resume
    assert {px: rp["shares"] for px, rp in plan["per_resolution"].items()} == \
        {px: shapes["shares"] for px, shapes in replans[-1]["new"].items()}
    assert [r["after_epoch"] for r in plan["replans"]] == [r["epoch"] for r in replans]


def test_without_replan_the_plan_stays(tmp_path, monkeypatch):
    monkeypatch.setenv(SLOW_ENV, SLOW)
    train(tmp_path / "run", *MODES["bsp"], "schedule.epochs=2", "data.train_limit=400")
    epochs, replans = epochs_and_replans(tmp_path / "run")
    assert replans == [] and len(epochs) == 2
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["replans"] == [] and all(rp["shares"] == [200, 200] for rp in plan["per_resolution"].values())
    assert all([w["samples"] for w in r["workers"]] == [200, 200] for r in epochs)


@pytest.mark.slow
def test_ranks_under_torchrun_replan_together(tmp_path):
    """The collective mode (every rank a worker, torchrun): every rank decides from the same
    gathered reports, so both switch to the same new plan after epoch 1 (no hang, the shares
    still cover the data); rank 0 logs the record and rewrites plan.json."""
    import os
    import subprocess
    import sys

    from launch_helpers import free_port

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir), *RUN, "dbl.small=0", "dbl.replan=true",
           "schedule.epochs=3", "schedule.milestones=[]"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **{SLOW_ENV: SLOW})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs, replans = epochs_and_replans(run_dir)
    assert replans and replans[0]["epoch"] == 0, replans
    new = replans[0]["new"]
    assert all(shapes["shares"][1] < shapes["shares"][0] for shapes in new.values())
    second = epochs[1]
    assert [w["samples"] for w in second["workers"]] == new[str(second["resolution"])]["shares"]
    assert all(sum(w["samples"] for w in r["workers"]) == 1437 for r in epochs)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert {px: rp["shares"] for px, rp in plan["per_resolution"].items()} == \
        {px: shapes["shares"] for px, shapes in replans[-1]["new"].items()}
