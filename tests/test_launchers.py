"""One front door, one run format, one run driver: `dbl-ps train` under torchrun with every
engine available here writes the same run directory (files, metric keys, plan.json and
summary.json keys) as `dbl-ps train` on one machine and fires the same events in the same
order, and `dbl-ps report` and `--resume` work on it; one BSP config trains the same values
in both modes, through a re-plan.

Each run, in both modes, is stopped after epoch 1 (as if killed there,
`DBL_PS_STOP_AFTER_EPOCH`) and resumed to the end (`--resume RUN_DIR`); every process logs
its events (`DBL_PS_EVENT_LOG`)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dbl_ps.metrics import read_metrics
from dbl_ps.training.messages import WORKER_KEYS
from launch_helpers import RUN, launch_env as env, torchrun_train as torchrun

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# Files whose presence depends on the engine, not on the mode: DeepSpeed's run config and each
# worker's batch fields next to it (deepspeed_config.json, deepspeed_config.worker<i>.json).
ENGINE_FILES = "deepspeed_config"


def files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if not p.name.startswith(ENGINE_FILES)}


def keys(run_dir: Path) -> tuple[set[str], set[str]]:
    records = read_metrics(run_dir)
    top = set().union(*(set(r) for r in records))
    workers = set().union(*(set(w) for r in records for w in r["workers"]))
    return top, workers


def events(log: Path) -> tuple[list[tuple], dict[int, list[tuple]]]:
    """The main process's run events, and each worker's loop events (rank 0 of its group),
    in the order fired: what must not differ between the modes."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    run = [(e["event"], e["epoch"]) for e in lines if e.get("run") and e["rank"] == 0]
    workers: dict[int, list[tuple]] = {}
    for e in lines:
        if not e.get("run") and e["member"] == 0:  # one rank per worker
            workers.setdefault(e["worker"], []).append((e["event"], e["epoch"]))
    # A store-mode worker may run an epoch ahead (asp) and start, or even finish, the epoch
    # after the stop before the stop reaches it; the resume trains that epoch again and its
    # events come again: the last time each event fired is the one that counts.
    finished = {w: [ev for i, ev in enumerate(seq) if ev not in seq[i + 1:]] for w, seq in workers.items()}
    return run, finished


def stop_and_resume(run_dir: Path, launch, *args: str) -> Path:
    """Train `args` into `run_dir`, stopped after epoch 1, then resume it to the end; returns the event log."""
    log = run_dir.parent / "events.jsonl"
    proc = launch("--run-dir", str(run_dir), *args, DBL_PS_STOP_AFTER_EPOCH="1", DBL_PS_EVENT_LOG=str(log))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert (meta["next_epoch"], meta["status"]) == (2, "interrupted")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    proc = launch("--resume", str(run_dir), DBL_PS_EVENT_LOG=str(log))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "resuming" in proc.stdout + proc.stderr
    return log


def store_mode(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300, env=env(**extra))


@pytest.fixture(scope="module")
def store_run(tmp_path_factory) -> Path:
    """The reference: the same config on one machine (parameter store + worker processes),
    stopped after epoch 1 and resumed like the multi-rank runs (the stop hook fires on the
    store mode's checkpoints too)."""
    run_dir = tmp_path_factory.mktemp("store") / "run"
    stop_and_resume(run_dir, store_mode, *RUN)
    return run_dir


ENGINES = [
    pytest.param(2, ["engine=torch"], id="torch"),
    # the DeepSpeed and FSDP engines under a launcher are in the default suite through
    # tests/test_integration_deepspeed.py and tests/test_integration_fsdp.py; this parity check is slow
    pytest.param(2, ["engine=deepspeed"], id="deepspeed",
                 marks=[pytest.mark.slow,
                        pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the [deepspeed] extra")]),
    pytest.param(2, ["engine=fsdp", "fsdp.ranks_per_worker=1"], id="fsdp-1-rank-per-worker", marks=pytest.mark.slow),
    # 4 ranks on this machine's 2 cores: slow; FSDP groups of two ranks are in the default suite
    # through tests/test_integration_fsdp.py::test_two_groups_of_two_sync_is_weighted_mean_and_learns
    pytest.param(4, ["engine=fsdp", "fsdp.ranks_per_worker=2"], id="fsdp-2-ranks-per-worker", marks=pytest.mark.slow),
]


@pytest.mark.slow
@pytest.mark.parametrize("nproc,engine", ENGINES)
def test_torchrun_run_directory_matches_store_mode_and_resumes(tmp_path: Path, store_run: Path, nproc: int,
                                                               engine: list[str]) -> None:
    run_dir = tmp_path / "run"
    log = stop_and_resume(run_dir, lambda *a, **e: torchrun(nproc, *a, **e), *RUN, *engine)

    # the same files and the same metric keys as the store-mode run of the same config
    assert files(run_dir) == files(store_run)
    assert keys(run_dir) == keys(store_run)
    assert keys(run_dir)[1] == set(WORKER_KEYS)
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]  # resumed, no epoch twice
    assert records[-1]["test_acc"] >= 0.7, records[-1]  # chance is 0.1
    batches = [w["batch"] for w in records[-1]["workers"]]
    assert batches[0] < batches[1]  # worker 0 is the small-batch one
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    store_summary = json.loads((store_run / "summary.json").read_text())
    assert meta["status"] == summary["status"] == "finished" and summary["epochs"] == 4
    assert set(store_summary) == set(summary)
    plan, store_plan = (json.loads((d / "plan.json").read_text()) for d in (run_dir, store_run))
    assert set(plan) == set(store_plan) and plan["replans"] == store_plan["replans"] == []
    # which algorithm ran is named in both modes: sync auto is the store on one machine (its
    # default, the authors' asp/blend) and weighted averaging under torchrun
    assert store_plan["sync"] == store_summary["sync"] == {"kind": "store", "mode": "asp", "rule": "blend",
                                                           "period": "mini_epoch", "staleness": 0}
    assert plan["sync"] == summary["sync"] == {"kind": "collective", "mode": "bsp", "rule": "average",
                                               "period": "mini_epoch", "staleness": 0}
    # the same events in the same order: the run's (stop after epoch 1, resume, the rest) and every worker's
    run_events, worker_events = events(log)
    store_run_events, store_worker_events = events(store_run.parent / "events.jsonl")
    assert run_events == store_run_events == [("on_checkpoint", e) for e in range(4)]
    assert worker_events == store_worker_events
    assert worker_events[0] == [(event, e) for e in range(4) for event in ("on_epoch_start", "on_epoch_end")]
    assert (run_dir / "checkpoints" / "epoch00003" / "model.pt").is_file()

    # dbl-ps report reads it like any run
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "report", str(run_dir), str(store_run), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(out.glob("*.png")) and any(out.glob("*.md"))


# The same algorithm in both modes (bulk-synchronous averaging once per mini-epoch, the plan
# from given time models) and a re-plan: worker 1 sleeps after every step.
BSP = [*RUN, "store.mode=bsp", "store.rule=average", "dbl.replan=true", "threads_per_worker=1"]


@pytest.mark.slow  # two launches, ~30 s
def test_the_same_config_trains_the_same_values_in_both_modes_through_a_replan(tmp_path: Path) -> None:
    """Values, not only keys: one BSP config run by the store on one machine and by collectives
    under torchrun starts from the same plan (shares, batches, merge weights), trains epoch 0
    to the same losses and accuracy (the same data order, the same weighted means), re-plans
    after it with the same semantics (each mode's new plan is the planner's answer to the
    speed factors it measured; the factors themselves are timings and differ), and every
    epoch after the re-plan trains the whole training set to the same accuracy, within noise."""
    from dbl_ps.calibrate import configured_time_models
    from dbl_ps.config import load_config, resolve_sync
    from dbl_ps.planner import replan_any
    from dbl_ps.training.replanning import plan_shapes
    from dbl_ps.training.run_plan import build_plan

    slow = {"DBL_PS_SLOW_WORKER": "1:0.05"}
    runs = {"store": tmp_path / "store", "torchrun": tmp_path / "torchrun"}
    proc = store_mode("--run-dir", str(runs["store"]), *BSP, **slow)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(2, "--run-dir", str(runs["torchrun"]), *BSP, **slow)
    assert proc.returncode == 0, proc.stderr[-3000:]

    cfg = resolve_sync(load_config(None, BSP), launched=False)  # the plan is the same in both modes
    given = configured_time_models(cfg)
    initial = build_plan(cfg, 1437, given.models, given.batches)
    evaluated, replans = {}, {}
    for mode, run_dir in runs.items():
        records = read_metrics(run_dir)
        evaluated[mode] = [r for r in records if "test_acc" in r]
        replans[mode] = [r for r in records if r.get("event") == "replan"]
        assert [r["epoch"] for r in evaluated[mode]] == [0, 1, 2, 3]
        first = replans[mode][0]
        assert first["epoch"] == 0 and first["old"] == plan_shapes(initial), (mode, first)  # the same start
        # the same re-plan semantics: the planner's answer to the factors this mode measured
        assert first["new"] == plan_shapes(replan_any(initial, first["factors"])), mode
        assert json.loads((run_dir / "plan.json").read_text())["replans"][0]["after_epoch"] == 0
        assert all(sum(w["samples"] for w in r["workers"]) == 1437 for r in evaluated[mode])
    store, ranks = evaluated["store"], evaluated["torchrun"]
    # epoch 0: one plan, one data order, one weighted mean: the same numbers to float rounding
    for key in ("train_loss", "test_loss", "test_acc"):
        assert store[0][key] == pytest.approx(ranks[0][key], rel=1e-5), key
    for a, b in zip(store[0]["workers"], ranks[0]["workers"]):
        assert (a["samples"], a["batch"], a["steps"], a["syncs"]) == (b["samples"], b["batch"], b["steps"], b["syncs"])
    # after the re-plan the shares follow each run's timings: the same accuracy within noise
    assert min(store[-1]["test_acc"], ranks[-1]["test_acc"]) >= 0.85
    assert abs(store[-1]["test_acc"] - ranks[-1]["test_acc"]) <= 0.05


def test_a_torchrun_launch_with_a_sync_it_cannot_run_is_refused_in_one_line(tmp_path: Path) -> None:
    """store.mode asp (the store's own default) cannot run as collectives: every rank stops at
    load, before the process group or any data, and the launch prints one line saying what
    to write instead."""
    proc = torchrun(2, "--run-dir", str(tmp_path / "run"), *RUN, "store.mode=asp")
    assert proc.returncode != 0
    ours = sorted({line for line in proc.stderr.splitlines() if line.startswith("dbl-ps train:")})
    assert ours == ["dbl-ps train: error: config key 'store.mode': got 'asp', expected 'bsp' with sync 'collective': "
                    "every rank meets the others at each sync and takes the share-weighted mean of the models "
                    "(torch.distributed all_reduce): bulk-synchronous averaging; leave it unset (= 'bsp', store.rule "
                    "'average'), or train with sync 'store' (on one machine)"], proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchrun_divergence_stops_every_rank_at_the_same_sync_or_skips(tmp_path: Path) -> None:
    """A diverging multi-rank run: every rank learns it at the same sync (the flag travels in
    the collective that opens every sync), so both stop together, without waiting for the
    collective timeout; rank 0 prints one line and writes status "diverged". With
    `divergence=skip` the diverged ranks contribute their state of the last merge instead."""
    import re
    import time

    import torch

    from dbl_ps.models import build_model
    from dbl_ps.training.rundir import RunDirectory

    run_dir = tmp_path / "stop"
    start = time.monotonic()
    proc = torchrun(2, "--run-dir", str(run_dir), *RUN, "schedule.lr=1000000", "schedule.warmup_epochs=1",
                    "schedule.warmup_start_factor=0", "launch.timeout=120")
    assert proc.returncode != 0 and time.monotonic() - start < 110, proc.stderr[-4000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("dbl-ps train:")]
    assert len(ours) == 1, proc.stderr[-4000:]
    assert re.fullmatch(r"dbl-ps train: error: worker \d diverged at epoch 2 step \d+ \(loss (nan|-?inf|[-+.e\d]+, but its model state is not finite)\); the last "
                        r"finite checkpoint \(epoch 1\) is kept; .*", ours[0]), ours[0]
    assert "/dbl_ps/" not in proc.stderr  # no traceback through our code (torchrun prints one of its own)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    assert json.loads((run_dir / "checkpoint.json").read_text())["epoch"] == 0
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0]

    run_dir = tmp_path / "skip"
    proc = torchrun(2, "--run-dir", str(run_dir), *RUN, "schedule.epochs=2", "schedule.milestones=[]",
                    "schedule.lr=1e38", "divergence=skip")
    # every epoch ran but every update was left out: rank 0 says so and exits 1, status diverged
    assert proc.returncode != 0, proc.stderr[-4000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("dbl-ps train:")]
    assert len(ours) == 1 and ours[0].startswith("dbl-ps train: error: every sync of the run was skipped"), ours
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    records = read_metrics(run_dir)
    assert all(w["skipped_syncs"] == w["syncs"] > 0 for r in records for w in r["workers"])
    run = RunDirectory(run_dir)
    final = run.load_model(run.load_checkpoint())
    torch.manual_seed(0)
    initial = build_model("small_resnet", 10, in_channels=1).state_dict()
    # every merge averaged the ranks' (equal) states of the last merge: the initial model, to float rounding
    # (integer buffers, BatchNorm's batch counts, stay with each rank and are not merged)
    differ = [k for k, v in initial.items() if v.is_floating_point() and not torch.allclose(final[k], v, rtol=1e-6, atol=1e-7)]
    assert differ == [], differ
