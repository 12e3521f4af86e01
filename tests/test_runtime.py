"""End-to-end runs of the training runtime on small data (digits, W=2, a few epochs)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dbl_ps.config import load_config
from dbl_ps.data import epoch_shares
from dbl_ps.metrics import read_metrics
from dbl_ps.models import build_model
from dbl_ps.runtime import Trainer, WorkerError
from dbl_ps.training.flat import FlatState
from dbl_ps.training.rundir import RunDirectory
from dbl_ps.training.run_plan import plan_from_dict
from dbl_ps.training.steps import sync_boundaries

# Small, fast runs: 2 workers (1 small), time model given (no measuring), digits.
BASE = ["dbl.workers=2", "dbl.small=1", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.warmup_epochs=0",
        "schedule.lr=0.05"]


def cfg_for(*overrides: str):
    return load_config(None, [*BASE, *overrides])


def run(cfg, run_dir: Path) -> dict:
    return Trainer(cfg, run_dir, progress=False, log=lambda m: None).train()


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    run = RunDirectory(run_dir)
    return run.load_model(run.load_checkpoint())


# ---------------------------------------------------------------- pure pieces


def test_flat_state_round_trip_keeps_int_buffers_out():
    model = build_model("small_resnet", 10, in_channels=1)
    flat = FlatState(model)
    n_float = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    assert flat.numel == n_float
    assert flat.int_names and all("num_batches_tracked" in n for n in flat.int_names)
    vec = torch.arange(flat.numel, dtype=torch.float32)
    flat.scatter(vec)
    assert torch.equal(flat.gather(), vec)
    other = FlatState(build_model("small_resnet", 10, in_channels=1))
    other.scatter(vec.numpy())
    for (_, a), (_, b) in zip(model.state_dict().items(), other.model.state_dict().items()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="values"):
        flat.scatter(torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flat_state_on_gpu_moves_through_pinned_memory_and_matches_the_cpu_path():
    torch.manual_seed(0)
    cpu_model = build_model("small_resnet", 10, in_channels=1)
    gpu_model = build_model("small_resnet", 10, in_channels=1).cuda()
    gpu_model.load_state_dict(cpu_model.state_dict())
    cpu_flat, gpu_flat = FlatState(cpu_model), FlatState(gpu_model)
    vec = gpu_flat.new_vector()
    assert vec.is_pinned() and not cpu_flat.new_vector().is_pinned()
    assert torch.equal(gpu_flat.gather(vec), cpu_flat.gather())
    new = torch.randn(gpu_flat.numel)
    gpu_flat.scatter(new)  # pageable source
    assert torch.equal(gpu_flat.gather(vec), new)
    vec.copy_(new * 2)
    gpu_flat.scatter(vec.numpy())  # pinned memory seen through numpy
    cpu_flat.scatter(new * 2)
    for (name, a), (_, b) in zip(gpu_model.state_dict().items(), cpu_model.state_dict().items()):
        assert torch.equal(a.cpu(), b), name
    cpu_model.fc.cuda()
    with pytest.raises(ValueError, match="several devices"):
        FlatState(cpu_model)


def test_sync_boundaries():
    assert sync_boundaries(7, "mini_epoch", "asp", [7, 3]) == [7]
    assert sync_boundaries(7, 3, "asp", [7, 3]) == [3, 6, 7]
    # bsp: the same number of pushes for every worker, spread over its own steps
    assert sync_boundaries(7, 3, "bsp", [7, 3]) == [3, 5, 7]
    assert sync_boundaries(3, 3, "bsp", [7, 3]) == [1, 2, 3]
    assert sync_boundaries(2, 1, "bsp", [3, 2]) == [1, 2, 2]


# ---------------------------------------------------------------- runs


def test_bsp_run_learns_and_switches_resolution(tmp_path):
    # CPL in one LR stage over 4 epochs: 12 px for epochs 0-1, 16 px for 2-3.
    cfg = cfg_for("store.mode=bsp", "store.rule=average", "schedule.epochs=4", "schedule.milestones=[]")
    summary = run(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [r["resolution"] for r in records] == [12, 12, 16, 16]
    assert {w["resolution"] for r in records for w in r["workers"]} == {12, 16}
    for r in records:
        assert {"wall_time", "test_loss", "test_acc", "lr", "store_version", "workers"} <= set(r)
        assert [w["worker"] for w in r["workers"]] == [0, 1]
        assert all(w["samples_per_s"] > 0 and w["batch"] >= 1 for w in r["workers"])
    assert records[-1]["store_version"] == 4  # one bsp round per epoch
    assert summary["final_test_acc"] > 0.6, records  # chance is 0.1
    for name in ("config.yaml", "plan.json", "schedule.json", "summary.json", "checkpoint.json"):
        assert (tmp_path / "run" / name).is_file()
    assert (tmp_path / "run" / "schedule.png").read_bytes().startswith(b"\x89PNG")  # the schedule, drawn


def test_asp_run_learns_and_shares_cover_the_data(tmp_path, capsys):
    cfg = cfg_for("store.mode=asp", "store.rule=blend", "schedule.epochs=4", "schedule.milestones=[3]",
                  "schedule.resolutions=[16]")
    summary = Trainer(cfg, tmp_path / "run", progress=True).train()  # progress bars on (to stderr)
    captured = capsys.readouterr()
    assert "epochs" in captured.err and "final test acc" in captured.out
    assert summary["final_test_acc"] > 0.6
    records = read_metrics(tmp_path / "run")
    plan = plan_from_dict(json.loads((tmp_path / "run" / "plan.json").read_text()))
    n = plan.dataset_size
    assert n == 1437  # digits training split
    for r in records:
        # every sample trained exactly once per epoch across the workers
        assert sum(w["samples"] for w in r["workers"]) == n
        assert [w["samples"] for w in r["workers"]] == list(plan[16].shares)
        assert [w["batch"] for w in r["workers"]] == list(plan[16].batches)
        shares = epoch_shares(n, plan[16].shares, r["epoch"], cfg.seed)
        together = np.concatenate(shares)
        assert len(np.unique(together)) == n == len(together)
    assert plan[16].batches[0] < plan[16].batches[1]  # worker 0 is the small-batch worker
    assert records[-1]["store_version"] == 8  # asp: one update per push, W pushes per epoch


def test_eval_every_k_epochs_and_a_chosen_small_batch_said_at_start(tmp_path):
    """eval.every=3: epochs 3 and 4 (the last) evaluated, 1 and 2 recorded without test keys;
    dbl.batch_small=0.5: the small worker trains at half of B_L, said in one start-up line and
    kept in plan.json with b_S / B_L."""
    lines: list[str] = []
    cfg = cfg_for("store.mode=bsp", "store.rule=average", "schedule.epochs=4", "schedule.milestones=[]",
                  "schedule.resolutions=[16]", "dbl.batch_large=[64]", "dbl.batch_small=[0.5]", "eval.every=3")
    summary = Trainer(cfg, tmp_path / "run", progress=False, log=lines.append).train()
    records = read_metrics(tmp_path / "run")
    assert [("test_acc" in r) for r in records] == [False, False, True, True]
    assert summary["epochs"] == 4 and summary["final_test_acc"] == records[-1]["test_acc"]
    assert any("not evaluated (eval.every)" in line for line in lines)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["batch_small"] == [32] and plan["small_fraction"] == [0.5]
    assert plan["per_resolution"]["16"]["regime"]["kind"] == "chosen"
    said = [line for line in lines if line.startswith("DBSL at 16 px: b_S = 32 of B_L 64 (50%), chosen")]
    assert len(said) == 1, lines
    assert [w["batch"] for w in records[0]["workers"]] == [32, 64]


@pytest.mark.slow
def test_asp_gradient_pushes_every_step_learn(tmp_path):
    # rule sgd, a push per local step: the store adds each worker's update as it arrives
    # (asynchronous, so the outcome varies with timing: a loose bound, chance is 0.1)
    cfg = cfg_for("store.mode=asp", "store.rule=sgd", "store.sync_every=1", "schedule.epochs=4",
                  "schedule.milestones=[3]", "schedule.resolutions=[16]")
    summary = run(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert summary["final_test_acc"] > 0.4, [(r["train_loss"], r["test_acc"]) for r in records]
    assert all(w["syncs"] == w["steps"] for r in records for w in r["workers"])


def _train_cli(run_dir: Path, *overrides: str, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dbl_ps.cli", "train", "--no-progress"]
    cmd += ["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir), *BASE, *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


RESUME_OVERRIDES = ["store.mode=bsp", "store.rule=average", "schedule.epochs=5", "schedule.milestones=[3]",
                    "data.train_limit=600"]


@pytest.fixture(scope="module")
def uninterrupted_bsp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bsp") / "full"
    run(load_config(None, [*BASE, *RESUME_OVERRIDES]), run_dir)
    return run_dir


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGKILL],
                         ids=["sigint", "sigkill"])  # a clean SIGINT stop: also tests/test_reliability.py
@pytest.mark.slow
def test_bsp_resume_after_kill_matches_uninterrupted_run(tmp_path, uninterrupted_bsp_run, sig):
    # kill the launcher once epoch 1 is in the metrics, then resume
    proc = _train_cli(tmp_path / "cut", *RESUME_OVERRIDES)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    ckpt = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert 1 <= ckpt["next_epoch"] < 5
    if sig == signal.SIGINT:
        assert proc.returncode == 130, out
        assert "--resume" in out
        assert ckpt["status"] == "interrupted"
        # counted from 1, as the console's "epoch N/5" lines are
        assert f"stopped after epoch {ckpt['next_epoch']};" in out and f"epoch {ckpt['next_epoch']}/5 " in out
    else:
        assert proc.returncode == -signal.SIGKILL
    proc = _train_cli(tmp_path / "cut", resume=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    full = read_metrics(uninterrupted_bsp_run)
    records = read_metrics(tmp_path / "cut")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]  # metrics continue, no epoch twice
    resumed, full_state = final_state(tmp_path / "cut"), final_state(uninterrupted_bsp_run)
    assert all(torch.equal(resumed[k], full_state[k]) for k in full_state)
    assert [r["test_acc"] for r in records] == [r["test_acc"] for r in full]
    assert records[-1]["store_version"] == full[-1]["store_version"] == 5


def test_worker_failure_fails_the_run_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("DBL_PS_FAIL_WORKER", "1:1")
    cfg = cfg_for("store.mode=bsp", "store.rule=average", "schedule.epochs=3", "schedule.milestones=[]",
                  "data.train_limit=300")
    start = time.monotonic()
    with pytest.raises(WorkerError, match="(?s)worker 1 failed.*Traceback.*injected failure of worker 1 at epoch 1"):
        run(cfg, tmp_path / "run")
    assert time.monotonic() - start < 60
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [0]


def test_worker_killed_by_a_signal_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DBL_PS_FAIL_WORKER", "0:1:kill")
    cfg = cfg_for("store.mode=asp", "store.rule=blend", "schedule.epochs=3", "schedule.milestones=[]",
                  "data.train_limit=300")
    with pytest.raises(WorkerError, match="worker 0 exited with code -9"):
        run(cfg, tmp_path / "run")
