"""One run driver in every mode: behaviours that used to differ between the store mode's
launcher and the multi-rank runner, each checked where it drifted (the store-vs-torchrun
parity of files, keys and events is tests/test_launchers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dbl_ps.metrics import read_metrics
from launch_helpers import RUN, free_port


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def torchrun(nproc: int, *args: str, **extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), "-m", "dbl_ps", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(**extra))


def logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


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
