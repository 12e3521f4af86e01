"""W&B tracking: namespaced metrics, a real offline run directory read back, plan
table, and a tracker failure that never stops training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from dbl_ps.integrations.wandb import WandbTracker, epoch_metrics, plan_rows, read_offline_run, resolve_mode

RECORD = {
    "epoch": 3, "wall_time": 12.5, "lr": 0.1, "resolution": 16, "dropout": 0.1, "store_version": 16,
    "test_loss": 0.4, "test_acc": 0.91, "train_loss": 0.5, "train_acc": 0.88, "samples_per_s": 900.0,
    "workers": [
        {"worker": 0, "loss": 0.6, "acc": 0.85, "batch": 24, "resolution": 16, "samples_per_s": 200.0,
         "seconds": 2.0, "wait_seconds": 0.1, "weight": 0.8, "version": 14},
        {"worker": 1, "loss": 0.4, "acc": 0.9, "batch": 96, "resolution": 16, "samples_per_s": 700.0,
         "seconds": 2.0, "wait_seconds": 0.3, "weight": 1.0, "version": 16},
    ],
}

PLAN = {
    "workers": 2, "small": 1,
    "per_resolution": {
        "12": {"batches": [30, 96], "shares": [500, 937], "merge_weights": [0.53, 1.0], "predicted_epoch_seconds": [1.1, 1.1]},
        "16": {"batches": [24, 64], "shares": [510, 927], "merge_weights": [0.55, 1.0], "predicted_epoch_seconds": [1.4, 1.4]},
    },
}


def test_epoch_metrics_are_namespaced():
    m = epoch_metrics(RECORD)
    assert m["test/acc"] == 0.91 and m["test/loss"] == 0.4
    assert m["schedule/lr"] == 0.1 and m["schedule/resolution"] == 16
    assert m["schedule/batch_small"] == 24 and m["schedule/batch_large"] == 96
    assert m["train/worker0/loss"] == 0.6 and m["train/worker1/samples_per_s"] == 700.0
    assert m["train/worker1/wait_seconds"] == 0.3
    assert m["store/version"] == 16 and m["store/staleness_max"] == 2 and m["store/staleness_mean"] == 1


def test_plan_rows_one_per_worker_and_resolution():
    rows = plan_rows(PLAN)
    assert rows[0] == [0, "small", 12, 30, 500, 0.53, 1.1]
    assert rows[3] == [1, "large", 16, 64, 927, 1.0, 1.4]


def test_auto_mode_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    with pytest.raises(ValueError, match="tracking.wandb.mode='cloud'"):
        resolve_mode("cloud")


def test_offline_run_directory_holds_history_summary_and_plan(tmp_path, capsys):
    tracker = WandbTracker(run_dir=tmp_path, config={"model": {"name": "small_resnet"}}, mode="offline",
                           tags=["test"], group="compare-x", name="hybrid")
    tracker.log_tables(plan=PLAN, phases=[{"start": 0, "end": 2, "resolution": 12}])
    for epoch in range(3):
        tracker.log(epoch, {**RECORD, "epoch": epoch, "test_acc": 0.5 + 0.1 * epoch})
    run_path = tracker.run_path
    tracker.close()
    assert f"wandb sync {run_path}" in capsys.readouterr().out
    run = read_offline_run(run_path)
    assert run["complete"], "the transaction log has no closing exit record"
    rows = [h for h in run["history"] if "test/acc" in h]
    assert [round(h["test/acc"], 6) for h in rows] == [0.5, 0.6, 0.7]
    assert {"train/worker0/loss", "schedule/lr", "store/version"} <= set(rows[0])
    assert run["summary"]["final/test_acc"] == pytest.approx(0.7)
    assert run["summary"]["best/test_acc"] == pytest.approx(0.7)
    tables = list(Path(run_path).rglob("plan_*.table.json"))
    assert tables, "the plan table was not written"
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["worker", "role", "resolution"] and len(table["data"]) == 4

    # A log W&B is still writing (cut inside a record, no exit record yet) reads as an
    # incomplete prefix instead of failing or waiting forever.
    (log,) = Path(run_path).glob("run-*.wandb")
    partial = tmp_path / "partial"
    partial.mkdir()
    data = log.read_bytes()
    (partial / log.name).write_bytes(data[: len(data) * 2 // 3])
    cut = read_offline_run(partial, wait_seconds=0.2)
    assert not cut["complete"]
    cut_rows = [h for h in cut["history"] if "test/acc" in h]
    assert len(cut_rows) < 3 and cut_rows == rows[: len(cut_rows)]


def test_a_failing_tracker_reports_once_and_never_raises(tmp_path):
    warnings = []
    tracker = WandbTracker(run_dir=tmp_path, config={}, mode="offline", warn=warnings.append)

    def broken(*args, **kwargs):
        raise ConnectionError("W&B went away")

    tracker.run.log = broken
    for epoch in range(3):
        tracker.log(epoch, RECORD)  # must not raise
    tracker.close()
    assert len(warnings) == 1 and "W&B went away" in warnings[0]


# --- through the runtime: `dbl-ps train` with tracking on --------------------------

TINY = ["schedule.epochs=2", "schedule.milestones=[1]", "schedule.warmup_epochs=0", "dbl.workers=2",
        "tracking.wandb.enabled=true", "tracking.wandb.mode=offline"]


def _train(run_dir, overrides):
    from dbl_ps.commands.train import train_run
    from dbl_ps.config import load_config

    return train_run(load_config(None, overrides), run_dir=str(run_dir), progress=False)


def test_a_tracked_digits_run_writes_an_offline_run_with_metrics_plan_and_summary(tmp_path):
    assert _train(tmp_path / "run", TINY) == 0
    (run_path,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    run = read_offline_run(run_path)
    rows = [h for h in run["history"] if "test/acc" in h]
    assert [h["epoch"] for h in rows] == [1, 2]  # as the console counts them
    assert {"test/loss", "schedule/lr", "schedule/resolution", "store/version", "train/worker0/loss",
            "train/worker1/samples_per_s", "train/worker0/wait_seconds", "store/staleness_max"} <= set(rows[-1])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert run["summary"]["final/test_acc"] == pytest.approx(metrics[-1]["test_acc"])
    assert list(run_path.rglob("plan_*.table.json")) and list(run_path.rglob("schedule_*.table.json"))
    assert run["config"]["dbl"]["workers"] == 2  # the full run config...
    assert run["config"]["system"]["torch"] and run["config"]["system"]["cpus"] >= 1  # ...and system info


@pytest.mark.slow
def test_a_tracker_that_breaks_mid_run_does_not_stop_training(tmp_path, monkeypatch, capsys):
    import wandb

    def broken(self, *args, **kwargs):
        raise ConnectionError("W&B is unreachable")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)
    assert _train(tmp_path / "run", TINY) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # every epoch still recorded
    assert capsys.readouterr().out.count("W&B tracking failed") == 1
