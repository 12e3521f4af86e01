"""The example scripts (examples/) under their real launchers, 2 ranks on CPU with gloo:
the ranks train with different batch sizes and hold identical weights after every sync;
a slowed rank makes the ranks re-plan together; every misuse of the public API is one
clear error on every rank."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dbl_ps.integrations.deepspeed import DeepSpeedConfigError, check_rank_config
from launch_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu",
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def torchrun(script: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(), cwd=ROOT)


def records(out: Path, ranks: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def check_dbsl_ran(proc: subprocess.CompletedProcess, out: Path) -> list[dict]:
    """Different batches on the two ranks, shares within the data, and after every sync the
    same weights on both (a fingerprint of every parameter and BatchNorm statistic)."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = records(out)
    epochs = len(ranks[0]["epochs"])
    assert epochs >= 2 and all(len(r["syncs"]) == epochs for r in ranks)  # one sync per mini-epoch
    batches = [r["epochs"][0]["batch"] for r in ranks]
    assert batches[0] < batches[1], batches  # rank 0 is the small-batch worker
    assert sum(r["epochs"][0]["share"] for r in ranks) <= 1437
    for a, b in zip(ranks[0]["syncs"], ranks[1]["syncs"]):
        assert a["fingerprint"] == b["fingerprint"]
    assert ranks[0]["syncs"][0]["fingerprint"] != ranks[0]["syncs"][1]["fingerprint"]  # and they trained
    return ranks


# A time model for the DBSL plans of these tests (one small rank needs a fixed cost per step to
# trade against): measured on this 2-core machine, a fitted alpha can come out <= 0 when other
# jobs run. The time models measured in the first steps are exercised by the re-planning test.
TIME_MODEL = ["--time-model", "0.002,0.0001"]


def test_torch_example_under_torchrun(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ranks = check_dbsl_ran(torchrun(EXAMPLES / "torch_ddp_train.py", "--epochs", "3", *TIME_MODEL, "--out", str(out)),
                           out)
    # the LR schedule steps per rank's own steps: both ranks at the same LR at each epoch's end
    assert [e["lr"] for e in ranks[0]["epochs"]] == [e["lr"] for e in ranks[1]["epochs"]]


def test_torch_example_default_run_plans_from_the_time_model_it_measures(tmp_path: Path) -> None:
    """As the docstring runs it: each rank measures its own time model in its first steps. On
    a busy 2-core machine the fit is often alpha = 0 (no fixed cost per step); that gave an
    InfeasiblePlanError in one of two tries before the planner planned every time model."""
    out = tmp_path / "out"
    proc = torchrun(EXAMPLES / "torch_ddp_train.py", "--epochs", "2", "--out", str(out))
    check_dbsl_ran(proc, out)
    regime = [line for line in proc.stdout.splitlines() if line.startswith("DBSL: b_S = ")]
    assert len(regime) == 1 and "of B_L 64" in regime[0] and "alpha/beta = " in regime[0], proc.stdout[-2000:]


def test_fsdp_example_under_torchrun(tmp_path: Path) -> None:
    out = tmp_path / "out"
    check_dbsl_ran(torchrun(EXAMPLES / "fsdp_train.py", "--epochs", "2", *TIME_MODEL, "--out", str(out)), out)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the [deepspeed] extra")
def test_deepspeed_example_under_the_deepspeed_launcher(tmp_path: Path) -> None:
    """The user's JSON with optimizer and scheduler blocks: DeepSpeed builds both; the batch
    fields are said once to be replaced, and each rank's saved config shows its own batch."""
    out = tmp_path / "out"
    cmd = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
           str(EXAMPLES / "deepspeed_train.py"), "--deepspeed_config", str(EXAMPLES / "ds_config.json"),
           "--epochs", "2", *TIME_MODEL, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env(), cwd=ROOT)
    ranks = check_dbsl_ran(proc, out)
    notes = [line for line in proc.stdout.splitlines() if "dbl-ps: DeepSpeed config:" in line]
    assert len(notes) == 1 and "train_batch_size 128 -> the rank's planned batch" in notes[0]
    for r, record in enumerate(ranks):
        used = json.loads((out / f"ds_config_rank{r}.json").read_text())
        assert used["train_batch_size"] == used["train_micro_batch_size_per_gpu"] == record["epochs"][0]["batch"]
        assert used["optimizer"]["type"] == "SGD" and used["scheduler"]["type"] == "WarmupLR"
    lrs = [record["epochs"][0]["lr"] for record in ranks]
    assert all(0.005 <= lr <= 0.05 for lr in lrs)  # WarmupLR from the user's JSON drives the LR


def test_a_slowed_rank_makes_the_ranks_replan_together(tmp_path: Path) -> None:
    """Rank 1 sleeps 30 ms after each step from the first epoch on (after the time models were
    measured): after epoch 1 both ranks re-plan to the same shares, rank 1 with less data."""
    out = tmp_path / "out"
    proc = torchrun(EXAMPLES / "torch_ddp_train.py", "--epochs", "2", "--small", "0", "--replan",
                    "--replan-threshold", "0.3", "--slow-rank", "1", "--slow-seconds", "0.03", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = records(out)
    first = [r["replans"][0] for r in ranks]
    assert first[0] == first[1] and first[0]["epoch"] == 0  # the same decision on both ranks, after epoch 1
    factors, shares = first[0]["factors"], first[0]["shares"]
    assert factors[1] > 1.3 * factors[0]
    assert shares[1] < shares[0] and sum(shares) == sum(e["share"] for e in (r["epochs"][0] for r in ranks))
    assert [r["epochs"][1]["share"] for r in ranks] == shares  # the second epoch trains with the new plan
    assert "re-planned" in proc.stdout


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("world-mismatch", "the plan is for 3 worker(s) of 1 rank(s) = 3 ranks, but the process group has 2"),
        ("models-differ", "the ranks' models differ (parameter names or shapes)"),
        ("dataset-short", "the planned shares [50, 50] add up to 100 samples, but the dataset has 60"),
    ],
)
def test_misuse_of_the_api_is_one_clear_error_on_every_rank(tmp_path: Path, mode: str, message: str) -> None:
    proc = torchrun(Path(__file__).with_name("api_misuse.py"), mode, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert message in (tmp_path / f"rank{rank}.txt").read_text()


def test_deepspeed_config_conflicts_are_listed_together() -> None:
    user = {"train_batch_size": 256, "gradient_accumulation_steps": 4, "zero_optimization": {"stage": 3},
            "pipeline": {"stages": 2}, "bf16": {"enabled": True}, "fp16": {"enabled": True}}
    with pytest.raises(DeepSpeedConfigError) as info:
        check_rank_config(user, 32)
    message = str(info.value)
    assert message.count("\n  - ") == 3
    for part in ("zero_optimization.stage=3", "'pipeline'", "bf16.enabled and fp16.enabled"):
        assert part in message
    config, notes = check_rank_config({"train_batch_size": 256, "gradient_accumulation_steps": 4,
                                       "scheduler": {"type": "WarmupLR"}}, 32, lr_schedule_owned=True)
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] == 32
    assert config["gradient_accumulation_steps"] == 1 and "scheduler" not in config
    assert notes == ["train_batch_size 256 -> the rank's planned batch",
                     "gradient_accumulation_steps 4 -> 1 (one optimizer step per planned batch)",
                     "scheduler 'WarmupLR' removed: the run's schedule (schedule.*) sets the LR"]
