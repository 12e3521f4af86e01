"""FSDP2 worker groups on the CPU (gloo) under the real torchrun.

4 ranks as 2 groups of 2 and 2 ranks as 2 groups of 1: group 0 trains with the small
batch, group 1 with the large one (different step counts, and several syncs per epoch
with `store.sync_every`). After the first sync every rank's local shard must equal
the weighted mean of the two groups' pre-sync shards at the same mesh position, and
the gathered full state dicts (parameters; BatchNorm statistics over every member)
must equal the weighted mean computed here. Short runs learn digits; a checkpoint
(torch.distributed.checkpoint) resumes, also onto another number of groups; bad
meshes and plans for more groups than exist fail fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbl_ps.metrics import read_metrics
from launch_helpers import RUN, free_port

def torchrun(nproc: int, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """`torchrun -m dbl_ps train engine=fsdp ...`; `--ranks-per-worker N` stands for fsdp.ranks_per_worker=N."""
    args = list(args)
    overrides = []
    if "--ranks-per-worker" in args:
        i = args.index("--ranks-per-worker")
        overrides.append(f"fsdp.ranks_per_worker={args[i + 1]}")
        del args[i:i + 2]
    if "--param-dtype" in args:
        i = args.index("--param-dtype")
        overrides.append(f"fsdp.param_dtype={args[i + 1]}")
        del args[i:i + 2]
    if "--resume" in args:  # a resume may change the shard groups (fsdp.ranks_per_worker)
        args = [*args, *overrides]
    else:
        args = ["engine=fsdp", *overrides, *args]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
           "-m", "dbl_ps", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env))


def check_sync(dump: Path, world: int, group_size: int) -> None:
    pres = [torch.load(dump / f"pre_rank{r}.pt") for r in range(world)]
    posts = [torch.load(dump / f"post_rank{r}.pt") for r in range(world)]
    groups = world // group_size
    weights = [pres[g * group_size]["weight"] for g in range(groups)]
    assert len(set(weights)) > 1, weights
    # 1. local shards: mean over groups at the same position of the shard axis
    for m in range(group_size):
        members = [g * group_size + m for g in range(groups)]
        for i in range(len(pres[m]["local"])):
            want = sum(w * pres[r]["local"][i].double() for w, r in zip(weights, members)) / sum(weights)
            for r in members:
                torch.testing.assert_close(posts[r]["local"][i].double(), want, rtol=1e-5, atol=1e-6)
    # 2. gathered full state dicts (independent of the shard layout)
    group_full = [pres[g * group_size]["full"] for g in range(groups)]
    after = posts[0]["full"]
    for key, value in after.items():
        if not value.is_floating_point():
            continue
        if "running_" in key:  # buffers: every member's own statistics, weight of its group
            ws = [pres[r]["weight"] for r in range(world)]
            want = sum(w * pres[r]["full"][key].double() for w, r in zip(ws, range(world))) / sum(ws)
        else:
            want = sum(w * full[key].double() for w, full in zip(weights, group_full)) / sum(weights)
        for r in range(world):
            torch.testing.assert_close(posts[r]["full"][key].double(), want, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(group_full[0][k], group_full[1][k]) for k in group_full[0])


def check_run(run_dir: Path, epochs: list[int], min_acc: float = 0.8) -> list[dict]:
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == epochs
    assert records[-1]["test_acc"] >= min_acc, records[-1]
    return records


@pytest.mark.slow
def test_two_groups_of_two_sync_is_weighted_mean_and_learns(tmp_path: Path) -> None:
    run_dir, dump = tmp_path / "run", tmp_path / "dump"
    proc = torchrun(4, "--ranks-per-worker", "2", "--run-dir", str(run_dir), *RUN, "store.sync_every=4",
                    DBL_PS_DUMP_SYNC=str(dump))
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_sync(dump, 4, 2)
    records = check_run(run_dir, [0, 1, 2, 3])
    workers = records[-1]["workers"]
    assert workers[0]["batch"] < workers[1]["batch"] and workers[0]["steps"] > workers[1]["steps"]
    assert workers[0]["syncs"] == workers[1]["syncs"] > 1  # same syncs, different steps: no hang
    assert json.loads((run_dir / "checkpoint.json").read_text())["status"] == "finished"
    assert (run_dir / "checkpoints" / "epoch00003" / "model.pt").is_file()
    assert (run_dir / "checkpoints" / "epoch00003" / "optim_group1" / ".metadata").is_file()


@pytest.mark.slow
def test_bad_mesh_fails_fast_under_torchrun(tmp_path: Path) -> None:
    # 3 ranks cannot be groups of 2: every rank refuses before any collective
    proc = torchrun(3, "--ranks-per-worker", "2", "--run-dir", str(tmp_path / "a"), *RUN, timeout=120)
    assert proc.returncode != 0 and "not divisible" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("world,group_size,workers,message", [
    (3, 2, 2, "not divisible"),            # mesh does not divide the world
    (2, 1, 3, "dbl.workers=3"),            # a plan for more groups than exist
    (4, 2, 3, "dbl.workers=3"),
    (8, 2, 2, "WORLD_SIZE=8"),             # fewer groups planned than launched
    (4, 0, 2, "group size"),
])
def test_launch_checks_before_any_collective(monkeypatch: pytest.MonkeyPatch, world: int, group_size: int,
                                             workers: int, message: str) -> None:
    from dbl_ps.training.topology import LaunchError, read_topology

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(LaunchError, match=message):
        read_topology(workers, group_size)
    monkeypatch.setenv("WORLD_SIZE", str(workers * max(group_size, 1)))
    if group_size >= 1:
        topo = read_topology(workers, group_size)
        assert (topo.workers, topo.worker, topo.member) == (workers, 0, 0)


@pytest.mark.slow
def test_two_groups_of_one_degenerate_mesh(tmp_path: Path) -> None:
    run_dir, dump = tmp_path / "run", tmp_path / "dump"
    proc = torchrun(2, "--ranks-per-worker", "1", "--run-dir", str(run_dir), *RUN, DBL_PS_DUMP_SYNC=str(dump))
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_sync(dump, 2, 1)
    records = check_run(run_dir, [0, 1, 2, 3])
    w = records[-1]["workers"]
    assert w[0]["steps"] != w[1]["steps"]


@pytest.mark.slow
def test_resume_same_and_other_number_of_groups(tmp_path: Path) -> None:
    """Checkpoint written by 2 groups of 2 after epoch 1; resumed as 2 groups of 2, as 2 groups
    of 1 (other shard size) and as 3 groups of 1 (other number of groups: re-planned)."""
    import shutil

    run_dir = tmp_path / "run"
    proc = torchrun(4, "--ranks-per-worker", "2", "--run-dir", str(run_dir), *RUN, DBL_PS_STOP_AFTER_EPOCH="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved, same = tmp_path / "saved", tmp_path / "same"
    shutil.copytree(run_dir, saved)
    shutil.copytree(run_dir, same)
    proc = torchrun(4, "--ranks-per-worker", "2", "--resume", str(same))
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_run(same, [0, 1, 2, 3])
    proc = torchrun(2, "--ranks-per-worker", "1", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_run(run_dir, [0, 1, 2, 3])
    proc = torchrun(3, "--ranks-per-worker", "1", "--resume", str(saved))
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = check_run(saved, [0, 1, 2, 3], min_acc=0.7)
    assert len(records[-1]["workers"]) == 3
    assert json.loads((saved / "plan.json").read_text())["workers"] == 3


@pytest.mark.slow
def test_bf16_compute_with_fp32_shards(tmp_path: Path) -> None:
    """--param-dtype bf16 (FSDP2 mixed precision; BatchNorm statistics in bf16) runs and learns on the CPU."""
    run_dir = tmp_path / "run"
    proc = torchrun(2, "--param-dtype", "bf16", "--run-dir", str(run_dir), *RUN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_run(run_dir, [0, 1, 2, 3], min_acc=0.7)
