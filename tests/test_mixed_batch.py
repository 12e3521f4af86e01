"""Mixed-batch data parallelism (`sync: mixed_batch`): every rank trains its planned share of
one global batch per step and the gradients are merged inside the step, weighted by each
rank's share, so the step is the step of the concatenated batch."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbl_ps.metrics import read_metrics
from dbl_ps.training.rundir import RunDirectory
from launch_helpers import free_port, launch_env, torchrun_train

STEPS = Path(__file__).with_name("mixed_batch_steps.py")
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def run_steps(nproc: int, engines: list[str], out: Path) -> dict[str, list[dict]]:
    """One launch, every engine in turn: {engine: [rank 0's result, rank 1's, ...]}."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), str(STEPS), ",".join(engines), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=launch_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return {e: [json.loads((out / f"{e}.rank{r}.json").read_text()) for r in range(nproc)] for e in engines}


def assert_concatenated_batch_gradient(results: dict[str, list[dict]], nproc: int) -> None:
    for engine, ranks in results.items():
        assert [r["batch"] for r in ranks] == [2 + 3 * i for i in range(nproc)], engine
        for r in ranks:
            assert r["error"] <= 1e-6 * max(1.0, r["scale"]), (engine, r)


def test_a_step_applies_the_gradient_of_the_concatenated_batch(tmp_path):
    """Ranks with batches 2 and 5 (one global batch of 7): the applied gradient is the
    single-process gradient of all 7 samples, to float32 rounding (stock DDP's mean would
    weigh the 2-sample rank like the 5-sample one), through dbl-ps's torch engine (DDP with
    the weighting hook; also with micro-batches: 1 and 3 of them) and through the public API
    on a user's own DDP model and FSDP2 module (sharded over both ranks)."""
    results = run_steps(2, ["torch", "torch-accumulated", "ddp", "fsdp"], tmp_path)
    assert_concatenated_batch_gradient(results, 2)
    assert all(r["wait"] > 0 for r in results["ddp"])  # the hook timed the last bucket's all-reduce


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the [deepspeed] extra")
def test_a_deepspeed_engine_applies_the_gradient_of_the_concatenated_batch_at_zero_0_2_and_3(tmp_path):
    """`dbl.deepspeed_mixed_config` (one data-parallel group over both ranks, this rank's micro
    batch) and the loss through `mixed.scale` (W b_i / B, since DeepSpeed averages over the
    ranks): ZeRO stages 0, 2 and 3 apply the concatenated batch's gradient."""
    assert_concatenated_batch_gradient(run_steps(2, ["deepspeed0", "deepspeed2", "deepspeed3"], tmp_path), 2)


@pytest.mark.slow
def test_four_ranks_apply_the_gradient_of_the_concatenated_batch(tmp_path):
    assert_concatenated_batch_gradient(run_steps(4, ["torch", "torch-accumulated", "ddp"], tmp_path), 4)


RUN = ["sync=mixed_batch", "dbl.small=0", "dbl.workers=2", "schedule.epochs=3", "schedule.milestones=[2]",
       "schedule.warmup_epochs=0", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "data.eval_batch_size=1024",
       "mixed.global_batch={12: 160, 16: 96}"]


def test_dbl_ps_train_runs_mixed_batch_under_torchrun_and_resumes_to_the_same_weights(tmp_path):
    """The CLI's mixed-batch run: the plan names the split (equal time models here: equal
    halves of the global batch), every rank takes the same steps, plan.json and summary.json
    name the sync, and a run stopped after epoch 1 and resumed ends with exactly the weights
    of the uninterrupted run."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    proc = torchrun_train(2, "--run-dir", str(whole), *RUN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "mixed batch at 12 px: global batch 160 split 80/80 over 2 ranks" in proc.stderr
    plan = json.loads((whole / "plan.json").read_text())
    summary = json.loads((whole / "summary.json").read_text())
    assert plan["sync"] == summary["sync"] == {"kind": "mixed_batch", "mode": "bsp", "rule": "gradient_average",
                                               "period": "step", "staleness": 0}
    records = read_metrics(whole)
    assert [r["epoch"] for r in records] == [0, 1, 2] and records[-1]["test_acc"] >= 0.5, records[-1]
    for record in records:
        assert len({w["steps"] for w in record["workers"]}) == 1  # the same steps on every rank
        assert sum(w["batch"] for w in record["workers"]) == {12: 160, 16: 96}[record["workers"][0]["resolution"]]

    proc = torchrun_train(2, "--run-dir", str(split), *RUN, DBL_PS_STOP_AFTER_EPOCH="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = torchrun_train(2, "--resume", str(split))
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = [RunDirectory(d).load_model(RunDirectory(d).load_checkpoint()) for d in (whole, split)]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0]), "the resumed run's weights differ"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the [deepspeed] extra")
def test_the_torch_deepspeed_and_fsdp_engines_train_the_same_mixed_batch_run(tmp_path):
    """engine torch (DDP with the hook), deepspeed (one data-parallel group, the loss scaled by
    W b_i / B) and fsdp (sharded over both ranks, the same scale) under dbl-ps train: the same
    plan, the same losses and accuracy every epoch, to float rounding."""
    short = [*RUN[:3], "schedule.epochs=2", "schedule.milestones=[]", *RUN[6:]]
    runs = {}
    for engine in ("torch", "deepspeed", "fsdp"):
        proc = torchrun_train(2, "--run-dir", str(tmp_path / engine), *short, f"engine={engine}")
        assert proc.returncode == 0, (engine, proc.stderr[-4000:])
        runs[engine] = [v for r in read_metrics(tmp_path / engine) for v in (r["train_loss"], r["test_loss"], r["test_acc"])]
    for engine in ("deepspeed", "fsdp"):
        assert runs[engine] == pytest.approx(runs["torch"], rel=1e-4, abs=1e-4), (engine, runs)


def test_settings_mixed_batch_cannot_honour_are_refused_at_load(tmp_path):
    proc = torchrun_train(2, "--run-dir", str(tmp_path / "run"), "sync=mixed_batch", "dbl.workers=2")
    assert proc.returncode != 0
    lines = {line for line in proc.stderr.splitlines() if line.startswith("dbl-ps train:")}
    assert lines == {"dbl-ps train: error: config key 'dbl.small': got 1, expected 0 with sync 'mixed_batch': every "
                     "step trains one global batch split over the ranks by their speed; gradients are merged in every "
                     "step, weighted by each rank's share of the batch (DBSL's small workers do not apply); add "
                     "dbl.small=0"}, proc.stderr[-3000:]


@pytest.mark.parametrize("override, key", [("store.post_local_every=4", "store.post_local_every"),
                                           ("store.sync_every=2", "store.sync_every"),
                                           ("divergence=skip", "divergence")])
def test_sync_periods_and_skips_are_refused_with_mixed_batch_in_one_line(override, key):
    """Every step merges gradients: a sync period (post-local SGD's included) or leaving a rank's
    update out cannot be honoured, and the config says so before any work (no launch needed)."""
    from dbl_ps.config import ConfigError, load_config, resolve_sync

    cfg = load_config(None, ["sync=mixed_batch", "dbl.small=0", "dbl.workers=2", override])
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': .*sync 'mixed_batch'"):
        resolve_sync(cfg, launched=True)
