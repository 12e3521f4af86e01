"""The example scripts (examples/) under their real launchers, 2 ranks on CPU with gloo:
the ranks train with different batch sizes and hold identical weights after every sync;
a slowed rank makes the ranks re-plan together; every misuse of the public API is one
clear error on every rank."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
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


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a reaped-late child of a dead launcher is one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def held_launch(script: Path, *args: str, timeout: float = 240.0) -> tuple[subprocess.Popen, list[int]]:
    """A torchrun launch whose ranks train until `--hold-after N`, then wait there; returns it
    and the ranks' pids once every rank holds (its checkpoint of epoch N written). The output is
    read with a deadline, and every "(pid N)" of a holding line counts (two ranks' lines written
    at once can share a line)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT)
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # also keeps the pipe from filling while the ranks hold
        for text in proc.stdout:
            lines.put(text)
        lines.put("")  # the launch ended

    threading.Thread(target=drain, daemon=True).start()
    pids: list[int] = []
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(pids) < 2:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if not line:
            proc.kill()
            pytest.fail(("the launch ended" if line == "" else f"no rank held within {timeout:.0f} s") +
                        " before its ranks held:\n" + "".join(seen[-40:]))
        seen.append(line)
        pids += [int(pid) for pid in re.findall(r"holding after epoch \d+ \(pid (\d+)\)", line)]
    return proc, pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
def test_torch_example_killed_with_its_launcher_resumes_to_the_same_weights_with_dropout(tmp_path: Path) -> None:
    """torchrun killed with SIGKILL after epoch 2 of 3 (its ranks in sessions of their own):
    the ranks end with it instead of training on as orphans; a relaunch while they held the
    checkpoint folder was refused on every rank; started again with the same --checkpoint,
    the ranks resume at epoch 3 and end with exactly the weights, momentum and counters of an
    uninterrupted run, dropout included (`dbl.rank_state` keeps every RNG; mini-epoch syncs,
    fixed seeds; no --replan: it follows measured times)."""
    import signal

    import torch

    script = EXAMPLES / "torch_ddp_train.py"
    common = ["--epochs", "3", "--dropout", "0.3", *TIME_MODEL]
    whole = torchrun(script, *common, "--checkpoint", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    launcher, ranks = held_launch(script, *common, "--checkpoint", str(tmp_path / "split"), "--hold-after", "2")
    try:
        racing = torchrun(script, *common, "--checkpoint", str(tmp_path / "split"))
        assert racing.returncode != 0
        for r in (0, 1):
            assert f"rank {r}: run directory {tmp_path / 'split'} " in racing.stderr, racing.stderr[-3000:]
        assert all(alive(pid) for pid in ranks)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in ranks), "the ranks outlived their killed launcher"
    finally:
        for pid in ranks:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    out = tmp_path / "out"
    resumed = torchrun(script, *common, "--checkpoint", str(tmp_path / "split"), "--out", str(out))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at epoch 3" in resumed.stdout
    for r, record in enumerate(records(out)):
        assert record["resumed_at"] == 2 and [e["epoch"] for e in record["epochs"]] == [2]
        a = torch.load(tmp_path / "whole" / f"rank{r}.pt", weights_only=True)
        b = torch.load(tmp_path / "split" / f"rank{r}.pt", weights_only=True)
        assert a["model"].keys() == b["model"].keys()
        for name in a["model"]:
            assert torch.equal(a["model"][name], b["model"][name]), (r, name)
        for key, state in a["optimizer"]["state"].items():
            assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
        assert a["averager"] == b["averager"] and a["averager"]["merges"] == 3  # one per epoch
        assert a["sampler"] == b["sampler"] and a["lr_schedule"] == b["lr_schedule"]
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_rank_state_without_the_rngs_would_not_resume_dropout_exactly() -> None:
    """Why the RNG states are in the rank state: the same model, optimizer and data with
    dropout, resumed with and without them. Without, the next step's dropout mask differs."""
    import copy

    import torch

    import dbl_ps.api as dbl

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    def step(model, optimizer):
        optimizer.zero_grad()
        model(torch.ones(4, 8)).sum().backward()
        optimizer.step()

    model, optimizer = make()
    step(model, optimizer)
    saved = copy.deepcopy(dbl.rank_state(model=model, optimizer=optimizer))  # state dicts share the tensors
    step(model, optimizer)
    expected = [p.detach().clone() for p in model.parameters()]
    for with_rng in (True, False):
        again, opt = make()
        torch.manual_seed(123)  # a restarted process's generator is anywhere
        state = dict(saved)
        if with_rng:
            dbl.load_rank_state(state, model=again, optimizer=opt)
        else:
            again.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        step(again, opt)
        same = all(torch.equal(a, b) for a, b in zip(expected, again.parameters()))
        assert same is with_rng
    with pytest.raises(KeyError, match="the saved rank state has no sampler"):
        dbl.load_rank_state(saved, model=model, sampler=object())


@pytest.mark.slow
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
    """The user's JSON with an optimizer block: DeepSpeed builds it; the batch fields are said
    once to be replaced, and each rank's saved config shows its own batch; the LR follows
    dbl.ScheduleLR in epochs, the same on both ranks despite their different step counts."""
    out = tmp_path / "out"
    port = free_port()
    cmd = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", "2", "--master_port", str(port),
           str(EXAMPLES / "deepspeed_train.py"), "--deepspeed_config", str(EXAMPLES / "ds_config.json"),
           "--epochs", "2", *TIME_MODEL, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env(), cwd=ROOT)
    ranks = check_dbsl_ran(proc, out)
    # DeepSpeed's CPU all-reduce buffers (2 x 66 MiB per launch) were left in /dev/shm: each rank's
    # is unlinked once the averager's first collective shows every rank has mapped them
    left = [p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")]
    assert not left, left
    notes = [line for line in proc.stdout.splitlines() if "dbl-ps: DeepSpeed config:" in line]
    assert len(notes) == 1 and "train_batch_size 128 -> the rank's planned batch" in notes[0]
    for r, record in enumerate(ranks):
        used = json.loads((out / f"ds_config_rank{r}.json").read_text())
        assert used["train_batch_size"] == used["train_micro_batch_size_per_gpu"] == record["epochs"][0]["batch"]
        assert used["optimizer"]["type"] == "SGD" and "scheduler" not in used
    lrs = [record["epochs"][0]["lr"] for record in ranks]
    assert all(0.005 <= lr <= 0.05 for lr in lrs) and lrs[0] == pytest.approx(lrs[1])  # epoch units on every rank


@pytest.mark.slow  # two DeepSpeed launches, about a minute here; the resume itself is the torch example's test
@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the [deepspeed] extra")
def test_deepspeed_example_checkpoints_each_rank_into_its_own_folder_and_resumes(tmp_path: Path) -> None:
    """Every engine is DeepSpeed's data-parallel rank 0 (a world of one), so one folder for all
    ranks would have them write the same files: each rank saves under DIR/rank<R>/, and a run
    stopped after epoch 1 resumes at epoch 2 from them (model, optimizer, the JSON's scheduler,
    averager and sampler), the ranks equal after its sync."""
    ckpt = tmp_path / "ckpt"

    def launch(*extra: str) -> subprocess.CompletedProcess:
        cmd = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
               str(EXAMPLES / "deepspeed_train.py"), "--deepspeed_config", str(EXAMPLES / "ds_config.json"),
               "--epochs", "2", *TIME_MODEL, "--checkpoint", str(ckpt), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env(), cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    launch("--stop-after", "1")
    for r in (0, 1):
        assert (ckpt / f"rank{r}" / "epoch1" / "mp_rank_00_model_states.pt").is_file()
        assert (ckpt / f"rank{r}" / "dbl_ps.pt").is_file()
    assert not (ckpt / "latest").exists() and not (ckpt / "epoch1").exists()
    out = tmp_path / "out"
    proc = launch("--out", str(out))
    assert "at epoch 2" in proc.stdout
    ranks = records(out)
    assert [r["resumed_at"] for r in ranks] == [1, 1]
    assert [[e["epoch"] for e in r["epochs"]] for r in ranks] == [[1], [1]]
    assert ranks[0]["syncs"] == ranks[1]["syncs"] and len(ranks[0]["syncs"]) == 1


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
    config, notes = check_rank_config({"train_batch_size": 256, "gradient_accumulation_steps": 4}, 32,
                                      schedule_lr=0.1)
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"]) == (32, 8)
    assert config["gradient_accumulation_steps"] == 4
    assert notes[1:] == ["train_batch_size 256 -> the micro batch x 4"]
    # a scheduler block is one more conflict in the list, in dbl-ps train as in a user's loop
    with pytest.raises(DeepSpeedConfigError) as info:
        check_rank_config({**user, "scheduler": {"type": "WarmupLR"}}, 32, schedule_lr=0.1)
    assert str(info.value).count("\n  - ") == 4 and "scheduler 'WarmupLR' counts optimizer steps" in str(info.value)


def run_api_steps(tmp_path: Path, mode: str) -> list[dict]:
    proc = torchrun(Path(__file__).with_name("api_steps.py"), mode, str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_the_averager_runs_every_due_sync_when_ranks_take_very_different_steps(tmp_path: Path) -> None:
    """112 and 13 steps per epoch with sync_every=8: 14 syncs on both ranks, rank 1 owing two
    at its 13th step. step() merged at most once per call before, and the run ended with
    rank 1 named lost after the timeout."""
    ranks = run_api_steps(tmp_path, "uneven")
    assert [r["error"] for r in ranks] == [None, None]
    assert ranks[0]["syncs"] == ranks[1]["syncs"] == [14, 14]
    assert ranks[0]["steps"] == [112, 112] and ranks[1]["steps"] == [13, 13]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # the last sync is the epoch's last step on both


def test_a_rank_that_stops_early_is_one_clear_error_on_every_rank(tmp_path: Path) -> None:
    """Rank 1 breaks out of epoch 0 after 5 of its 13 planned steps: both ranks stop at rank 0's
    next sync with the same message naming rank 1 and both numbers, long before the 60 s
    timeout (the syncs used to pair up across epochs until one rank waited for ever). More
    steps than planned: tests/test_api.py."""
    ranks = run_api_steps(tmp_path, "short")
    for r in ranks:
        assert r["error"] is not None and r["error"].startswith("APIError: epoch 0: "), r["error"]
        assert "rank 1 took 5 of its 13 planned steps (an early break" in r["error"]
        assert "sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)" in r["error"]
        assert r["seconds"] < 30
    assert ranks[0]["error"] == ranks[1]["error"]


def test_ranks_holding_different_plans_stop_at_the_first_sync_naming_the_field(tmp_path: Path) -> None:
    """Rank 1 planned for 1500 samples, rank 0 for 1438: shares overlapped, merge weights
    disagreed and both ranks exited 0 (each checked its steps against its own plan). One hash
    of the plan now travels with the first sync's step check; every rank stops with one line."""
    ranks = run_api_steps(tmp_path, "plans-differ")
    for r in ranks:
        assert r["error"] == ("APIError: the ranks hold different plans: dataset_size is 1438 on rank 0 but 1500 on "
                              "rank 1; every rank must use the same plan (plan_together from each rank's time model, "
                              "or plan_ranks with the same inputs on every rank), else shares overlap or leave "
                              "samples out and the merge weights disagree"), r["error"]
        assert r["syncs"] == [] and r["seconds"] < 30


@pytest.mark.slow
def test_a_lost_rank_is_named_with_the_averagers_own_timeout(tmp_path: Path) -> None:
    ranks = run_api_steps(tmp_path, "lost")
    error = ranks[0]["error"]
    assert error.startswith("RankLost: rank 0 waited 3 s at sync 1: rank(s) 1 did not arrive"), error
    assert "ModelAverager(timeout_s=3)" in error and "launch.sync_timeout" not in error


def test_mixed_batch_example_gives_a_slow_rank_fewer_samples_per_step(tmp_path: Path) -> None:
    """The README's mixed-GPU recipe: an ordinary DDP script with dbl-ps's lines, rank 1 a
    half-speed device. Each rank measures itself in its first steps, the ranks split the global
    batch so their steps take the same time (rank 1 gets fewer samples), both take the same
    steps, and the model learns."""
    out = tmp_path / "out"
    proc = torchrun(EXAMPLES / "mixed_batch_ddp.py", "--epochs", "3", "--lr", "0.1", "--slow-rank", "1",
                    "--global-batch", "128", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "mixed batch: global batch 128 split" in proc.stdout
    ranks = records(out)
    batches = ranks[0]["batches"]
    assert sum(batches) == 128 and batches[1] < batches[0], batches
    assert [e["batch"] for r in ranks for e in r["epochs"][:1]] == batches
    assert ranks[0]["epochs"][-1]["steps"] == ranks[1]["epochs"][-1]["steps"] == 1437 // 128
    assert ranks[0]["epochs"][-1]["test_acc"] > 0.3  # chance is 0.1
