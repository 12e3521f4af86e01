"""One run driver in every mode: behaviours that used to differ between the store mode's
launcher and the multi-rank runner, each checked where it drifted (the store-vs-torchrun
parity of files, keys, events and values is tests/test_launchers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbl_ps.metrics import read_metrics
from launch_helpers import RUN, free_port, launch_env as env, torchrun_train as torchrun


def logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_multi_rank_run_uses_threads_per_worker(tmp_path: Path) -> None:
    """`threads_per_worker` sets every worker's torch threads in every mode (the multi-rank
    mode used cores // local ranks whatever the config said)."""
    log = tmp_path / "events.jsonl"
    proc = torchrun(2, "--run-dir", str(tmp_path / "run"), *RUN, "schedule.epochs=1", "schedule.milestones=[]",
                    "threads_per_worker=3", DBL_PS_EVENT_LOG=str(log))
    assert proc.returncode == 0, proc.stderr[-4000:]
    starts = [e for e in logged(log) if e["event"] == "on_epoch_start"]
    assert sorted(e["rank"] for e in starts) == [0, 1] and {e["threads"] for e in starts} == {3}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["threads_per_worker"] == 3


def test_a_multi_rank_replan_is_in_plan_json_before_its_epoch_is_committed(tmp_path: Path) -> None:
    """A re-plan (worker 1 slowed) is written to plan.json, with the `replans` list every mode's
    plan.json has, and recorded before the epoch's checkpoint is committed: a resume keeps both
    or neither (the multi-rank mode used to commit first and had no `replans`)."""
    run_dir, log = tmp_path / "run", tmp_path / "events.jsonl"
    proc = torchrun(2, "--run-dir", str(run_dir), "dbl.workers=2", "dbl.small=0", "dbl.alpha=[0.003]",
                    "dbl.beta=[0.0002]", "schedule.warmup_epochs=0", "schedule.epochs=3", "schedule.milestones=[]",
                    "dbl.replan=true", "data.eval_batch_size=1024",
                    DBL_PS_SLOW_WORKER="1:0.08", DBL_PS_EVENT_LOG=str(log))
    assert proc.returncode == 0, proc.stderr[-4000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    replan_records = [r for r in read_metrics(run_dir) if r.get("event") == "replan"]
    assert plan["replans"] and [r["after_epoch"] for r in plan["replans"]] == [r["epoch"] for r in replan_records]
    run_events = [(e["event"], e["epoch"]) for e in logged(log) if e.get("run") and e["rank"] == 0]
    first = plan["replans"][0]["after_epoch"]
    at = run_events.index(("on_replan", first))
    assert run_events[at + 1] == ("on_checkpoint", first), run_events
    # every rank decided the same re-plan at the same epoch
    assert [e for e in run_events if e[0] == "on_replan"] == \
        [(e["event"], e["epoch"]) for e in logged(log) if e.get("run") and e["rank"] == 1 and e["event"] == "on_replan"]


def test_ranks_launched_with_different_configs_stop_together_in_one_line(tmp_path: Path) -> None:
    """A launcher gives every rank its own command line: ranks whose configs differ (here
    `schedule.epochs`) are stopped before anything is written, in one line from rank 0
    (they used to train together with different schedules, then hang in a barrier)."""
    script = tmp_path / "per_rank.py"
    script.write_text("import os, sys\nfrom dbl_ps.cli import main\n"
                      "sys.exit(main(sys.argv[1:] + [f\"schedule.epochs={4 + int(os.environ['RANK'])}\"]))\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), "train", "--run-dir", str(tmp_path / "run"), *RUN]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("dbl-ps train:")]
    assert ours == ["dbl-ps train: error: rank 1's run config differs from rank 0's: schedule.epochs (4 vs 5); "
                    "launch every rank with the same config and overrides"], proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~60 s, three torchrun launches and a refused store-mode resume; `make test-slow` runs it
def test_a_resume_onto_another_number_of_workers_is_replanned_recorded_and_trains_all_the_data(tmp_path: Path) -> None:
    """2 ranks under torchrun, resumed with 3 (re-planned, as documented), then with 2 again:
    re-planned for 2 (the store mode once ran 2 processes on a 3-worker plan.json, leaving
    worker 2's share untrained, and said finished). Every epoch trains the whole training set;
    plan.json records both re-plans. A resume without a launcher is refused in one line (the
    run's sync kind is in its config.yaml: the store mode would train another algorithm)."""
    run_dir = tmp_path / "run"
    args = [*RUN, "schedule.epochs=3", "schedule.milestones=[2]", "data.train_limit=600"]
    first = torchrun(2, "--run-dir", str(run_dir), *args, DBL_PS_STOP_AFTER_EPOCH="0")
    assert first.returncode == 0, first.stderr[-3000:]
    store = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--resume", str(run_dir)],
                           capture_output=True, text=True, timeout=300, env=env())
    assert store.returncode == 2 and store.stderr.strip() == (
        f"dbl-ps train: error: {run_dir} was trained with sync 'collective', under a launcher; resume it the same "
        f"way, e.g. torchrun --nproc_per_node 2 -m dbl_ps train --resume {run_dir}"), store.stderr[-3000:]
    wider = torchrun(3, "--resume", str(run_dir), DBL_PS_STOP_AFTER_EPOCH="1")
    assert wider.returncode == 0, wider.stderr[-3000:]
    assert "resuming with 3 workers (the plan has 2): re-planning" in wider.stderr
    back = torchrun(2, "--resume", str(run_dir))
    assert back.returncode == 0, back.stderr[-3000:]
    assert "resuming with 2 workers (the plan has 3): re-planning" in back.stdout + back.stderr
    epochs = [r for r in read_metrics(run_dir) if "workers" in r]
    assert [len(r["workers"]) for r in epochs] == [2, 3, 2]
    assert all(sum(w["samples"] for w in r["workers"]) == 600 for r in epochs)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["workers"] == 2 and [(r["at_resume"], r["workers_before"], r["workers"]) for r in plan["replans"]] \
        == [(1, 2, 3), (2, 3, 2)]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_an_unchanged_model_evaluated_again_is_said_so_on_its_epoch_line(tmp_path):
    """Two epoch lines with the identical test loss (one model evaluated twice, nothing merged
    in between) read as two measurements; the second line now names the epoch it repeats."""
    from dbl_ps.metrics import Logger
    from dbl_ps.schedule import ScheduleSpec
    from dbl_ps.training.finisher import EpochFinisher, TestScores
    from dbl_ps.training.messages import EpochReport
    from dbl_ps.training.rundir import RunDirectory

    class Evaluate:
        recalibrates = False

        def __call__(self, state):
            return TestScores(float(state["w"].sum()), 0.5, None)

    run_dir = RunDirectory(tmp_path / "run")
    run_dir.path.mkdir()
    finisher = EpochFinisher(run_dir, ScheduleSpec(epochs=3, base_lr=0.1), Evaluate(), Logger([]), engine="torch",
                             workers=1)
    report = EpochReport(worker=0, epoch=0, loss=1.0, acc=0.5, batch=8, resolution=32, samples=8, steps=1, syncs=1,
                         seconds=1.0, wait_seconds=0.0, sync_seconds=0.0, weight=1.0, version=1)
    lines = []
    for epoch, w in enumerate((1.0, 1.0, 2.0)):
        record = finisher.finish(epoch, [report], {"w": torch.full((3,), w)}, version=epoch + 1)
        lines.append(finisher.console_line(record))
    assert "again" not in lines[0] and "again" not in lines[2]
    assert lines[1].startswith("epoch 2/3") and "(the model of epoch 1 again: nothing was merged since)" in lines[1]
