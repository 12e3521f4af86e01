"""DeepSpeed collective mode on the CPU (gloo) under the real launchers.

Each rank is a DBSL worker with its own DeepSpeed engine and batch size (worker 0
small, worker 1 large, so their step counts differ); the test checks the first sync
against the weighted mean computed here from the ranks' pre-sync states, that a
short run on digits learns, that it resumes from its checkpoint, and that a launch
contradicting the plan fails fast.

The `deepspeed` launcher on a machine without GPUs: `deepspeed --num_gpus N` starts
N local processes (DeepSpeed's CPU accelerator is picked automatically, or with
DS_ACCELERATOR=cpu; CUDA_VISIBLE_DEVICES it sets is harmless); `--module` runs
`python -m`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbl_ps.metrics import read_metrics
from launch_helpers import RUN, free_port

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# Every test here but the missing-extra one needs DeepSpeed installed.
pytestmark = pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the [deepspeed] extra")

TRAIN = ["train", "engine=deepspeed"]  # `python -m dbl_ps train ...` under the launcher


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def deepspeed_cmd(nproc: int, *args: str) -> list[str]:
    exe = shutil.which("deepspeed")
    assert exe, "the deepspeed launcher is not on PATH"
    return [exe, "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module", "dbl_ps", *TRAIN, *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    if args and args[0] == "--resume":
        args = ("train", *args)  # a resume takes its config (engine included) from the run directory
    else:
        args = (*TRAIN, *args)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), "-m", "dbl_ps", *args]


def launch(cmd: list[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**env))


def _ds_shm() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("deepspeed_allreduce_buffer*")} if shm.is_dir() else set()


def check_weighted_mean(dump: Path, ranks: int) -> None:
    """post-sync tensors equal sum f_i pre_i / sum f_i on every rank (computed here)."""
    pres = [torch.load(dump / f"pre_rank{r}.pt") for r in range(ranks)]
    posts = [torch.load(dump / f"post_rank{r}.pt") for r in range(ranks)]
    weights = [p["weight"] for p in pres]
    assert len(set(weights)) > 1, f"the workers should have different merge weights, got {weights}"
    for i in range(len(pres[0]["local"])):
        want = sum(w * p["local"][i].double() for w, p in zip(weights, pres)) / sum(weights)
        for r in range(ranks):
            torch.testing.assert_close(posts[r]["local"][i].double(), want, rtol=1e-5, atol=1e-6)
        assert all(torch.equal(posts[0]["local"][i], posts[r]["local"][i]) for r in range(ranks))
    # the ranks really had different models before the sync
    assert any(not torch.equal(a, b) for a, b in zip(pres[0]["local"], pres[1]["local"]))


def check_run(run_dir: Path, min_acc: float = 0.8) -> list[dict]:
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["test_acc"] >= min_acc, records[-1]  # chance is 0.1
    steps = [w["steps"] for w in records[-1]["workers"]]
    batches = [w["batch"] for w in records[-1]["workers"]]
    assert batches[0] < batches[1] and steps[0] > steps[1], (batches, steps)  # unequal step counts, no hang
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["status"] == "finished" and meta["next_epoch"] == 4
    return records


@pytest.mark.slow
def test_deepspeed_launcher_two_ranks_sync_is_weighted_mean_and_learns(tmp_path: Path) -> None:
    run_dir, dump = tmp_path / "run", tmp_path / "dump"
    shm_before = _ds_shm()
    proc = launch(deepspeed_cmd(2, "--run-dir", str(run_dir), *RUN), DBL_PS_DUMP_SYNC=str(dump))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _ds_shm() <= shm_before, "DeepSpeed's CPU all-reduce buffers were left in /dev/shm"
    check_weighted_mean(dump, 2)
    check_run(run_dir)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["engine"] == "deepspeed" and plan["small"] == 1


@pytest.mark.slow
def test_launch_contradicting_the_plan_fails_fast(tmp_path: Path) -> None:
    # 2 processes for a plan of 3 workers: every rank refuses before any collective
    proc = launch(torchrun_cmd(2, "--run-dir", str(tmp_path / "run"), *RUN, "dbl.workers=3"), timeout=120)
    assert proc.returncode != 0
    assert "dbl.workers=3" in proc.stderr and "WORLD_SIZE=2" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_not_launched_by_a_launcher_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # engine fsdp needs a launcher: without one, `dbl-ps train` says how to start it
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "engine=fsdp", "--run-dir", str(tmp_path / "r"),
                           *RUN], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "torchrun" in proc.stderr and "fsdp" in proc.stderr, proc.stderr


def test_ds_config_preparation_rules() -> None:
    from dbl_ps.integrations.deepspeed import _prepare_ds_config, load_ds_config
    from dbl_ps.training.topology import LaunchError

    for name in ("cpu_gloo", "gpu_bf16", "gpu_fp16_zero1"):
        conf = _prepare_ds_config(load_ds_config(name), 37, 0.1)
        assert conf["train_micro_batch_size_per_gpu"] == conf["train_batch_size"] == 37
        assert conf["gradient_accumulation_steps"] == 1
    with pytest.raises(LaunchError, match="zero_optimization.stage=3"):
        _prepare_ds_config({"zero_optimization": {"stage": 3}}, 8, 0.1)
    # the user's optimizer block is DeepSpeed's to build, at schedule.lr (the JSON's own unless the user set one)
    conf = _prepare_ds_config({"optimizer": {"type": "Adam", "params": {"lr": 0.002}},
                               "gradient_accumulation_steps": 3}, 8, 0.1)
    assert conf["optimizer"] == {"type": "Adam", "params": {"lr": 0.1}}
    assert (conf["train_micro_batch_size_per_gpu"], conf["gradient_accumulation_steps"], conf["train_batch_size"]) \
        == (3, 3, 9)  # 8 samples as micro-batches of 3, 3, 2
    with pytest.raises(LaunchError, match="does not exist"):
        load_ds_config("no/such/file.json")


def test_the_users_deepspeed_lr_is_the_runs_unless_schedule_lr_is_set(tmp_path: Path) -> None:
    """The JSON's optimizer LR is what the run trains at (config.yaml, the saved DeepSpeed config);
    an explicit schedule.lr wins, and one line says so with both values. It used to be replaced
    by the embedded job's 0.1, a value the user never set (50x their AdamW's 0.002)."""
    from dbl_ps.config import load_config
    from dbl_ps.integrations.deepspeed import DS_CONFIG_FILE
    from dbl_ps.runtime.engine_setup import check_engine_config, engine_options

    user = tmp_path / "my_ds_config.json"
    user.write_text(json.dumps({"train_batch_size": 512, "gradient_accumulation_steps": 2, "gradient_clipping": 1.0,
                                "optimizer": {"type": "AdamW", "params": {"lr": 0.002, "weight_decay": 0.05}}}))
    notes: list[str] = []
    cfg = load_config(None, ["engine=deepspeed", f"deepspeed_config={user}", "schedule.epochs=3"], notes=notes)
    assert cfg.schedule.lr == 0.002
    assert f"schedule.lr 0.002: the lr of optimizer AdamW in the DeepSpeed config {user} (set schedule.lr to " \
           f"train at another)" in notes
    said: list[str] = []
    check_engine_config(cfg, said.append)
    assert not any("lr" in line and "optimizer" in line for line in said), said
    assert "DeepSpeed config: gradient_clipping 1 kept: DeepSpeed clips each rank's gradient norm at 1 before every " \
           "optimizer step" in said
    engine_options(cfg, tmp_path / "run", resuming=False)
    saved = json.loads((tmp_path / "run" / DS_CONFIG_FILE).read_text())
    assert saved["optimizer"] == {"type": "AdamW", "params": {"lr": 0.002, "weight_decay": 0.05}}
    assert "train_batch_size" not in saved and saved["gradient_accumulation_steps"] == 2
    # set on the command line, or in the user's own YAML: theirs wins, said once with both values
    (tmp_path / "run.yaml").write_text("schedule: {lr: 0.01}\n")
    for path, overrides in ((None, ["schedule.lr=0.1"]), (tmp_path / "run.yaml", [])):
        notes = []
        cfg = load_config(path, ["engine=deepspeed", f"deepspeed_config={user}", *overrides], notes=notes)
        assert not any(n.startswith("schedule.lr") for n in notes)
        said = []
        check_engine_config(cfg, said.append)
        assert [line for line in said if "lr" in line] == [
            f"DeepSpeed config: optimizer AdamW lr 0.002 in the DeepSpeed config replaced by schedule.lr "
            f"{cfg.schedule.lr:g}, which the run config sets (leave schedule.lr out to train at the JSON's lr; "
            f"DeepSpeed builds this optimizer, optim.* is not used)"]
    # a resumed run's config.yaml is the whole config: nothing follows the JSON again
    resumed = load_config(None, ["engine=deepspeed", f"deepspeed_config={user}"])
    assert apply_full(resumed.to_dict()).schedule.lr == 0.002


def apply_full(data: dict):
    from dbl_ps.config import RunConfig, apply_overrides

    return apply_overrides(RunConfig.from_dict(data), [])


def test_a_deepspeed_scheduler_is_refused_alike_in_the_cli_and_the_api_with_its_epochs(tmp_path: Path) -> None:
    """DeepSpeed steps a scheduler per optimizer step and DBSL workers take different step
    counts: both the run and the API refuse it, saying what its warm-up is in epochs at a
    large worker's steps per epoch (the CLI dropped it for its own 1-epoch warm-up, the API
    refused it; neither turned steps into epochs)."""
    import dbl_ps.api as dbl
    from dbl_ps.config import load_config
    from dbl_ps.runtime.engine_setup import check_engine_schedule

    block = {"type": "WarmupLR", "params": {"warmup_num_steps": 25, "warmup_min_lr": 0.0005,
                                            "warmup_max_lr": 0.005, "warmup_type": "linear"}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"scheduler": block}))
    cfg = load_config(None, ["engine=deepspeed", f"deepspeed_config={path}"])  # 4 workers, B_L 96 at 12 px
    with pytest.raises(dbl.DeepSpeedConfigError) as run_error:
        check_engine_schedule(cfg, 3840)  # 3840 / 4 / 96 = 10 steps per epoch
    message = str(run_error.value)
    assert "scheduler 'WarmupLR' counts optimizer steps, and DBSL workers take different numbers of steps" in message
    assert "its warm-up of 25 steps is 2.5 epochs at 10 optimizer steps per epoch (a large worker: 3840 samples / " \
           "4 workers / batch 96); in epochs: schedule.warmup_epochs=3 schedule.warmup_start_factor=0.1 " \
           "schedule.lr=0.005" in message
    with pytest.raises(dbl.DeepSpeedConfigError) as api_error:
        dbl.deepspeed_rank_config({"scheduler": block}, 96, steps_per_epoch=10)
    message = str(api_error.value)
    assert "its warm-up of 25 steps is 2.5 epochs at 10 optimizer steps per epoch (steps_per_epoch); in epochs: " \
           "ScheduleSpec(warmup_epochs=2.5, warmup_start_factor=0.1, base_lr=0.005, ...)" in message
    assert "dbl.ScheduleLR(opt, spec, mine.steps)" in message


@pytest.fixture
def world_of_one():
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    before = dict(os.environ)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # worker_engine sets them for DeepSpeed; a later
        if name not in before:                         # launch would take this process for a launcher
            os.environ.pop(name, None)


def test_deepspeed_accumulation_steps_train_as_the_whole_batch(world_of_one) -> None:
    """gradient_accumulation_steps 3 on a planned batch of 10 (micro-batches 4, 3, 3, weighted by
    size): one optimizer step that equals the unsplit batch's, for a model without BatchNorm."""
    from torch import nn

    from dbl_ps.config import load_config
    from dbl_ps.integrations.deepspeed import worker_engine
    from dbl_ps.training.topology import Topology

    cfg = load_config(None, ["engine=deepspeed", "schedule.lr=0.5", "optim.weight_decay=0.01"])
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 8, generator=g), torch.randint(0, 5, (10,), generator=g)
    params = []
    for accumulation in (1, 3):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
        engine = worker_engine(model, cfg, "cpu", Topology.single(0, 1), batch_size=10,
                               ds_config={"gradient_accumulation_steps": accumulation})
        for _ in range(2):
            loss, out = engine.train_step(x, y)
        assert out.shape == (10, 5) and engine.engine.global_steps == 2  # optimizer steps, not micro-batches
        params.append([p.detach().clone() for p in engine.module.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_ranks_resume_repeats_the_uninterrupted_run(tmp_path: Path) -> None:
    """Under torchrun: the same checks, and a run stopped after epoch 1 and resumed ends
    with exactly the model of the uninterrupted run."""
    full, part, dump = tmp_path / "full", tmp_path / "part", tmp_path / "dump"
    proc = launch(torchrun_cmd(2, "--run-dir", str(full), *RUN), DBL_PS_DUMP_SYNC=str(dump))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_weighted_mean(dump, 2)
    records = check_run(full)
    proc = launch(torchrun_cmd(2, "--run-dir", str(part), *RUN), DBL_PS_STOP_AFTER_EPOCH="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((part / "checkpoint.json").read_text())["next_epoch"] == 2
    proc = launch(torchrun_cmd(2, "--resume", str(part)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = check_run(part)
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    a = torch.load(full / "checkpoints" / "epoch00003" / "model.pt")
    b = torch.load(part / "checkpoints" / "epoch00003" / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed[-1]["test_acc"] == records[-1]["test_acc"]


@pytest.mark.slow
def test_deepspeed_bf16_config_runs_on_cpu(tmp_path: Path) -> None:
    """The GPU bf16 config also runs on DeepSpeed's CPU accelerator (bf16 BN buffers, fp32 masters refreshed)."""
    run_dir = tmp_path / "run"
    proc = launch(deepspeed_cmd(2, "--run-dir", str(run_dir), "deepspeed_config=gpu_bf16", *RUN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(run_dir, min_acc=0.6)


def _train_with_engine(tmp_path: Path, extra: list[str]) -> dict:
    from dbl_ps.config import load_config
    from dbl_ps.runtime.launcher import Trainer

    cfg = load_config(None, ["engine=deepspeed", "dbl.workers=2", "dbl.small=1", "schedule.epochs=6",
                             "schedule.milestones=[4]", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]",
                             "store.mode=bsp", "store.rule=average", f"out_dir={tmp_path}", *extra])
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return Trainer(cfg, tmp_path / "run", progress=False, log=lambda m: None).train()


def test_dbl_ps_train_worker_with_deepspeed_engine_learns(tmp_path: Path) -> None:
    """`engine: deepspeed` in a `dbl-ps train` run: each worker process steps through a DeepSpeed engine."""
    summary = _train_with_engine(tmp_path, [])
    assert summary["status"] == "finished" and summary["epochs"] == 6
    assert summary["final_test_acc"] >= 0.6, summary  # chance 0.1
    records = read_metrics(tmp_path / "run")
    # the schedule changed batch sizes (12 -> 16 px) without new processes
    assert {w["batch"] for r in records for w in r["workers"] if w["worker"] == 1} == {96, 64}


@pytest.mark.slow  # measures the time model through DeepSpeed: about 3.5 minutes on 2 shared cores
def test_dbl_ps_train_with_a_users_deepspeed_json(tmp_path: Path) -> None:
    """A user's JSON with an optimizer block, accumulation and its own batch fields:
    what dbl-ps changes is said once with its values, before the time model is measured;
    DeepSpeed builds the optimizer at schedule.lr; deepspeed_config.json is what every worker's
    engine ran but for the two per-worker batch fields, which each worker's file records."""
    user = {"train_batch_size": 512, "gradient_accumulation_steps": 2,
            "optimizer": {"type": "AdamW", "params": {"lr": 0.002}}}
    (tmp_path / "ds.json").write_text(json.dumps(user))
    run_dir = tmp_path / "run"
    proc = launch([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                   "engine=deepspeed", f"deepspeed_config={tmp_path / 'ds.json'}", "dbl.alpha=null", "dbl.beta=null",
                   *[o for o in RUN if not o.startswith("dbl.alpha") and not o.startswith("dbl.beta")],
                   "schedule.epochs=2", "schedule.milestones=[]", "schedule.lr=0.001"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    notes = [line for line in out.splitlines() if line.startswith("DeepSpeed config:")]
    assert len(notes) == 3, out[-3000:]  # accumulation kept, train_batch_size, optimizer's lr
    assert "DeepSpeed config: optimizer AdamW lr 0.002 in the DeepSpeed config replaced by schedule.lr 0.001" in out
    assert out.index("DeepSpeed config: optimizer AdamW") < out.index("measuring the time model")
    saved = json.loads((run_dir / "deepspeed_config.json").read_text())
    assert saved["optimizer"] == {"type": "AdamW", "params": {"lr": 0.001}} and "scheduler" not in saved
    assert saved["gradient_accumulation_steps"] == 2 and "train_batch_size" not in saved
    records = read_metrics(run_dir)
    for worker in (0, 1):
        own = json.loads((run_dir / f"deepspeed_config.worker{worker}.json").read_text())
        trained = {w["batch"] for r in records for w in r["workers"] if w["worker"] == worker}
        assert trained <= {e["batch"] for e in own["batches"]}, (trained, own)  # the plan's, every resolution
        for entry in own["batches"]:  # DeepSpeed's fields for each batch it ran: ceil(b / 2) x 2
            micro = -(-entry["batch"] // 2)
            assert (entry["train_micro_batch_size_per_gpu"], entry["gradient_accumulation_steps"],
                    entry["train_batch_size"]) == (micro, 2, 2 * micro)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_a_deepspeed_json_that_cannot_work_fails_before_measuring(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}, "pipeline": {"stages": 2}}))
    proc = launch([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(tmp_path / "run"),
                   "engine=deepspeed", f"deepspeed_config={tmp_path / 'ds.json'}", "dbl.alpha=null", "dbl.beta=null"])
    assert proc.returncode != 0
    assert "zero_optimization.stage=3" in proc.stderr and "'pipeline'" in proc.stderr
    assert "measuring" not in proc.stdout + proc.stderr and not (tmp_path / "run").exists()
    # a scheduler block: one line with its epochs, once the data's size is known, before measuring
    (tmp_path / "ds.json").write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    proc = launch([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(tmp_path / "run"),
                   "engine=deepspeed", f"deepspeed_config={tmp_path / 'ds.json'}", "dbl.alpha=null", "dbl.beta=null"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "scheduler 'WarmupLR' counts optimizer steps" in proc.stderr and "its warm-up of 1000 steps is " in proc.stderr
    assert "measuring" not in proc.stdout + proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_dbl_ps_train_zero1_engine_resumes_after_a_worker_failure(tmp_path: Path, monkeypatch) -> None:
    """ZeRO's optimizer takes a list of per-rank states: a `dbl-ps train` worker resuming
    with a ZeRO-1 engine must restore its checkpointed optimizer state through it."""
    from dbl_ps.runtime.launcher import Trainer, WorkerError

    conf = tmp_path / "zero1.json"
    conf.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    monkeypatch.setenv("DBL_PS_FAIL_WORKER", "1:1")
    with pytest.raises(WorkerError, match="injected failure of worker 1 at epoch 1"):
        _train_with_engine(tmp_path, [f"deepspeed_config={conf}", "schedule.epochs=3", "schedule.milestones=[2]",
                                      "data.train_limit=400"])
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [0]
    monkeypatch.delenv("DBL_PS_FAIL_WORKER")
    summary = Trainer.resume(tmp_path / "run", progress=False, log=lambda m: None).train()
    assert summary["status"] == "finished" and summary["epochs"] == 3, summary
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2]


@pytest.mark.slow
def test_dbl_ps_train_worker_with_deepspeed_bf16_engine(tmp_path: Path) -> None:
    summary = _train_with_engine(tmp_path, ["deepspeed_config=gpu_bf16"])
    assert summary["final_test_acc"] >= 0.5, summary


@pytest.mark.slow
def test_zero1_stop_and_resume_keeps_its_engine_config(tmp_path: Path) -> None:
    """ZeRO-1 (fp32 masters in DeepSpeed's optimizer, refreshed after each merge): a run stopped
    after epoch 1 resumes without repeating --deepspeed-config (saved in the run directory)."""
    conf = tmp_path / "zero1.json"
    conf.write_text(json.dumps({"zero_optimization": {"stage": 1}, "gradient_clipping": 5.0}))
    run_dir = tmp_path / "run"
    proc = launch(torchrun_cmd(2, "--run-dir", str(run_dir), f"deepspeed_config={conf}", *RUN),
                  DBL_PS_STOP_AFTER_EPOCH="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 1
    proc = launch(torchrun_cmd(2, "--resume", str(run_dir)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(run_dir)
