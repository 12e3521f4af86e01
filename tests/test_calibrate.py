"""Tests of dbl_ps.calibrate and the `plan` / `calibrate` commands."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest

from dbl_ps.calibrate import (
    Calibration,
    batch_grid,
    best_throughput_index,
    calibrate,
    calibration_time_models,
    format_calibration_table,
    load_calibration,
    probe_max_batch,
    save_calibration,
)
from dbl_ps.commands import calibrate as calibrate_cmd
from dbl_ps.config import RunConfig, load_config
from dbl_ps.planner import make_plan
from dbl_ps.commands import plan as plan_cmd
from dbl_ps.training.engine import TorchEngine, engine_step_factory

REPO = Path(__file__).resolve().parents[1]
# The step `dbl-ps calibrate` times: an `engine: torch` worker's with the default run's optimizer and loss.
RUN_STEP = engine_step_factory(RunConfig())


def run_command(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def write_calibration(path: Path, alpha32: float, beta32: float, batch32: int, device: str = "cpu") -> Path:
    data = {
        "device": device,
        "model": "resnet18_cifar",
        "resolutions": {
            "24": {"alpha": 0.014788833468238893, "beta": 0.00035268184915307385, "r2": 0.99, "batch_large": 600,
                   "samples": [[100, 0.05], [600, 0.23]]},
            "32": {"alpha": alpha32, "beta": beta32, "r2": 0.99, "batch_large": batch32, "samples": []},
        },
        "torch_version": "2.x",
        "created": "2026-01-01T00:00:00+00:00",
    }
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- pure helpers


def test_batch_grid():
    assert batch_grid(256) == [8, 16, 32, 64, 128, 256]
    grid = batch_grid(560, points=8)
    assert grid[0] == 8 and grid[-1] == 560 and grid == sorted(set(grid)) and len(grid) == 8
    assert batch_grid(5) == [2, 5]
    with pytest.raises(ValueError, match=r"points=1 must be >= 2"):
        batch_grid(64, points=1)


@pytest.mark.parametrize("largest", [1, 2, 3, 17, 300, 4096, 65536])
def test_probe_max_batch_finds_the_oom_edge(largest):
    calls = []

    def fits(b: int) -> bool:
        calls.append(b)
        return b <= largest

    assert probe_max_batch(fits, start=16, limit=65536) == largest
    assert len(calls) <= 40  # doubling then bisection, not a linear scan


@pytest.mark.parametrize("largest", [3, 300, 5000, 40000])
def test_probe_max_batch_with_tolerance_stops_near_the_edge_with_fewer_probes(largest):
    exact, near = [], []
    assert probe_max_batch(lambda b: exact.append(b) or b <= largest, limit=65536) == largest
    found = probe_max_batch(lambda b: near.append(b) or b <= largest, limit=65536, tolerance=1 / 64)
    assert largest * (1 - 1 / 64) - 1 <= found <= largest  # a batch that fits, within the tolerance
    assert len(near) <= len(exact)
    if largest >= 5000:
        assert len(near) < len(exact) - 3


def test_best_throughput_index():
    # seconds per sample: 0.5, 0.25, 0.2, 0.25 -> batch 16 is the CPU's best
    assert best_throughput_index([(4, 2.0), (8, 2.0), (16, 3.2), (32, 8.0)]) == 2
    assert best_throughput_index([(4, 1.0), (8, 2.0)]) == 1  # tie: the larger batch


def test_probe_max_batch_limits():
    assert probe_max_batch(lambda b: False) == 0
    assert probe_max_batch(lambda b: True, limit=1000) == 1000


# --------------------------------------------------------------------------- calibration files


def test_load_roundtrip_and_table(tmp_path):
    path = write_calibration(tmp_path / "c.json", 0.015562114074817612, 0.0005056358858583448, 560)
    cal = load_calibration(path)
    assert sorted(cal.resolutions) == [24, 32]
    assert cal.batch_large() == {24: 600, 32: 560}
    assert cal.time_models()[32].alpha == 0.015562114074817612
    assert cal.resolutions[24].samples == ((100, 0.05), (600, 0.23))
    save_calibration(cal, tmp_path / "d.json")
    assert load_calibration(tmp_path / "d.json") == cal
    table = format_calibration_table(cal)
    assert "560" in table and "0.01556" in table


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("not json", r"is not valid JSON"),
        ("[]", r"expected a JSON object"),
        ('{"device": "cpu", "model": "m"}', r"missing key 'resolutions'"),
        ('{"device": "cpu", "model": "m", "resolutions": {"x": {}}}', r"key must be a resolution in pixels"),
        ('{"device": "cpu", "model": "m", "resolutions": {"32": {"alpha": 0.1, "beta": 0.01}}}', r"missing key 'batch_large'"),
        ('{"device": "cpu", "model": "m", "resolutions": {"32": {"alpha": 0.1, "beta": 0.01, "batch_large": 0}}}',
         r"batch_large=0 must be a positive integer"),
        ('{"device": "cpu", "model": "m", "resolutions": {"32": {"alpha": 0.1, "beta": -1, "batch_large": 8}}}',
         r"resolutions\['32'\]: beta=-1 must be >= 0"),
    ],
)
def test_load_errors(tmp_path, content, pattern):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern):
        load_calibration(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"cannot be read"):
        load_calibration(tmp_path / "nope.json")


# --------------------------------------------------------------------------- real measurement (CPU)


def test_calibrate_cpu_measures_real_steps(tmp_path):
    torch = pytest.importorskip("torch")
    threads_before = torch.get_num_threads()
    cal = calibrate(
        "small_resnet", [8, 12], make_step=RUN_STEP, batch_sizes=[2, 64], batch_cap=64, warmup=1, repeats=3,
        threads=1, progress=False
    )
    assert isinstance(cal, Calibration)
    assert cal.device == "cpu" and cal.model == "small_resnet"
    assert cal.settings["threads"] == 1
    assert torch.get_num_threads() == threads_before  # restored
    for r in (8, 12):
        c = cal.resolutions[r]
        assert [b for b, _ in c.samples] == [2, 64]
        assert all(0 < s < 5 for _, s in c.samples)
        assert c.batch_large == 64
        assert c.beta > 0
        # two points: the line passes through both
        assert c.alpha + c.beta * 64 == pytest.approx(c.samples[1][1])
    save_calibration(cal, tmp_path / "cal.json")
    data = json.loads((tmp_path / "cal.json").read_text())
    assert set(data) >= {"device", "model", "resolutions", "torch_version", "created"}
    assert set(data["resolutions"]["8"]) == {"alpha", "beta", "r2", "batch_large", "samples"}


def test_timed_step_runs_under_the_runs_precision_and_memory_format():
    """A bf16, channels-last run is planned from bf16, channels-last step times (the
    workers' `engine: torch` step), not from fp32 ones."""
    torch = pytest.importorskip("torch")
    seen = []

    def spying_step(model, **settings):  # the run's step, with a look at its first convolution
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, inputs, out: seen.append((out.dtype, inputs[0].is_contiguous(
            memory_format=torch.channels_last))))
        return RUN_STEP(model, **settings)

    for precision, channels_last, expected in (("bf16", True, (torch.bfloat16, True)),
                                               ("fp32", False, (torch.float32, False))):
        seen.clear()
        cal = calibrate("small_resnet", [8], make_step=spying_step, batch_sizes=[2, 4], batch_cap=4, warmup=0,
                        repeats=1, progress=False, precision=precision, channels_last=channels_last)
        assert seen and set(seen) == {expected}
        assert cal.settings["precision"] == precision and cal.settings["channels_last"] is channels_last


def test_a_runs_measured_time_model_times_the_runs_own_engine_step(monkeypatch):
    """The on-the-spot measurement times `TorchEngine.train_step` built from the run's config:
    its precision, memory format, compile, optimizer and loss (it timed a step of its own,
    SGD and no compile, before)."""
    torch = pytest.importorskip("torch")
    from dbl_ps.training.time_models import MEASURED, resolve_time_models

    timed = []
    step = TorchEngine.train_step

    def spy(self, images, labels):
        loss, out = step(self, images, labels)
        timed.append((out.dtype, self.memory_format, type(self.optimizer).__name__, self.loss_fn.label_smoothing,
                      self.compiled))
        return loss, out

    monkeypatch.setattr(TorchEngine, "train_step", spy)
    compiled = []  # compiling for real takes minutes on a CPU: that the engine asks for it is the point
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    cfg = load_config(None, ["precision=bf16", "channels_last=true", "compile=true", "optim.name=adamw",
                             "loss.label_smoothing=0.1", "dbl.batch_large=[16]", "threads_per_worker=1"])
    measured = resolve_time_models(cfg, num_classes=10, in_channels=1, log=lambda m: None)
    # The fit of so small a grid may fail on a busy machine (the run then takes the default
    # model and says so); the steps it timed are the point here.
    assert measured.source in (MEASURED, "default (measurement failed)") and measured.seconds > 0
    assert timed and set(timed) == {(torch.bfloat16, torch.channels_last, "AdamW", 0.1, True)}
    assert len(compiled) == 1  # one engine, compiled once, for the whole measurement


def test_a_deepspeed_run_times_its_deepspeed_step_and_leaves_no_process_group(tmp_path, monkeypatch):
    """`engine: deepspeed`: the time model is measured on a DeepSpeed engine built from the run's
    DeepSpeed JSON (its optimizer block and gradient_accumulation_steps), not the plain torch
    step, at learning rate 0; the one-process group the measurement needed is gone afterwards
    and the launcher's variables DeepSpeed reads are as they were (the store-mode workers the
    launcher spawns next inherit its environment)."""
    pytest.importorskip("deepspeed")
    import torch
    import torch.distributed as dist
    from dbl_ps.integrations.deepspeed import DeepSpeedEngine
    from dbl_ps.training.time_models import MEASURED, resolve_time_models, run_engine_steps

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                                   "optimizer": {"type": "AdamW", "params": {"lr": 0.002}}}))
    timed = []
    step = DeepSpeedEngine.train_step

    def spy(self, images, labels):
        timed.append((int(images.shape[0]), self.accumulation, type(self.optimizer).__name__,
                      self.optimizer.param_groups[0]["lr"]))
        return step(self, images, labels)

    monkeypatch.setattr(DeepSpeedEngine, "train_step", spy)
    cfg = load_config(None, ["engine=deepspeed", f"deepspeed_config={ds_json}", "dbl.batch_large=[16]",
                             "schedule.resolutions=[12]", "threads_per_worker=1"])
    with run_engine_steps(cfg, "cpu") as make_step:
        train_step = make_step(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10)), device="cpu",
                               precision="fp32", channels_last=False, compile=False)
        with pytest.raises(ValueError, match="gradient_accumulation_steps 2"):
            train_step(torch.randn(1, 1, 12, 12), torch.zeros(1, dtype=torch.long))
    assert not dist.is_initialized() and not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} & set(os.environ)

    measured = resolve_time_models(cfg, num_classes=10, in_channels=1, log=lambda m: None)
    assert measured.source in (MEASURED, "default (measurement failed)") and measured.seconds > 0
    # the JSON's AdamW (DeepSpeed builds it: FusedAdam), not the run's optim.name sgd; the LR held at 0
    assert timed and {(t[1], "Adam" in t[2], t[3]) for t in timed} == {(2, True, 0.0)}
    assert max(t[0] for t in timed) == 16 and not dist.is_initialized()


def test_an_fsdp_run_times_its_fsdp_step_on_its_groups_mesh(monkeypatch):
    """`engine: fsdp` (under a launcher; here a process group of one rank): the time model is
    measured on the FSDP2 engine of the run's settings (fsdp.param_dtype bf16: the compute in
    bf16) at learning rate 0, not on the plain fp32 torch step; outside a process group it says
    where it can run instead of measuring something else."""
    import torch
    import torch.distributed as dist
    from dbl_ps.integrations.fsdp import FSDPEngine
    from launch_helpers import free_port
    from dbl_ps.training.time_models import run_engine_steps

    cfg = load_config(None, ["engine=fsdp", "fsdp.param_dtype=bf16", "threads_per_worker=1"])
    with pytest.raises(RuntimeError, match="under a launcher only"):
        with run_engine_steps(cfg, "cpu"):
            pass
    timed = []
    step = FSDPEngine.train_step

    def spy(self, images, labels):
        loss, out = step(self, images, labels)
        timed.append((out.dtype, self.optimizer.param_groups[0]["lr"], self.topology.group_size))
        return loss, out

    monkeypatch.setattr(FSDPEngine, "train_step", spy)
    dist.init_process_group("gloo", store=dist.TCPStore("127.0.0.1", free_port(), 1, True), rank=0, world_size=1)
    try:
        with run_engine_steps(cfg, "cpu", log=pytest.fail) as make_step:  # no "timed as torch" line
            train_step = make_step(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10)), device="cpu",
                                   precision="fp32", channels_last=False, compile=False)
            train_step(torch.randn(8, 1, 12, 12), torch.zeros(8, dtype=torch.long))
    finally:
        dist.destroy_process_group()
    assert timed == [(torch.bfloat16, 0.0, 1)]


def test_every_reader_of_a_calibration_file_gives_the_same_time_models(tmp_path):
    """`dbl-ps train` (resolve_time_models), `dbl-ps plan --config`, `dbl-ps plan
    --calibration` and `api.plan_from_calibration` read a file through one function."""
    import dbl_ps.api as dbl
    from dbl_ps.training.time_models import resolve_time_models

    path = tmp_path / "cal.json"
    fits = {r: {"alpha": 0.002 * r, "beta": 0.0001 * r, "r2": 0.99, "batch_large": 8 * r, "samples": []}
            for r in (12, 16)}
    path.write_text(json.dumps({"device": "cpu", "model": "small_resnet", "resolutions": fits}))
    expected = calibration_time_models(path)
    assert expected.source == f"calibration file {path}" and expected.batches == {12: 96, 16: 128}

    cfg = load_config(None, [f"dbl.calibration={path}", "dbl.batch_large=null"])
    train = resolve_time_models(cfg, num_classes=10, in_channels=1, log=lambda m: None)
    assert (train.models, train.batches, train.source, train.seconds) == (expected.models, expected.batches,
                                                                          expected.source, 0.0)
    planned = plan_cmd.inputs_from_config(cfg, dataset_size=1000)
    assert (planned.time_models, planned.batch_large) == (expected.models, expected.batches)
    parser = argparse.ArgumentParser()
    plan_cmd.add_arguments(parser)
    flags = plan_cmd.gather_inputs(parser.parse_args(["--calibration", str(path), "--dataset-size", "1000"]))
    assert (flags.time_models, flags.batch_large) == (expected.models, expected.batches)
    plan = dbl.plan_from_calibration(str(path), ranks=4, dataset_size=1000)
    assert {r: plan[r].time_models[0] for r in plan.resolutions} == expected.models
    assert {r: plan[r].batch_large[0] for r in plan.resolutions} == expected.batches

    # one message for a file that lacks a resolution; a config names the key to change
    fits.pop(16)
    path.write_text(json.dumps({"device": "cpu", "model": "small_resnet", "resolutions": fits}))
    message = f"calibration file {str(path)!r} has no entry for resolution(s) [16]; it covers [12]"
    for read in (lambda: resolve_time_models(cfg, num_classes=10, in_channels=1, log=lambda m: None),
                 lambda: plan_cmd.inputs_from_config(cfg, dataset_size=1000)):
        with pytest.raises(ValueError) as err:
            read()
        assert str(err.value) == message + " (set dbl.calibration to a matching file)"
    with pytest.raises(dbl.APIError) as err:
        dbl.plan_from_calibration(str(path), ranks=4, dataset_size=1000, resolutions=[12, 16])
    assert str(err.value) == message


def test_a_launch_bound_step_calibrates_to_a_flat_line(monkeypatch):
    """On a GPU a ResNet-18 step at batch <= 1024 costs the same at every batch (measured on
    an H200: 6.6 ms, slope -1.4e-7 s/sample in the noise). That is alpha = the step time,
    beta = 0, not a failed measurement: the run fell back to a default time model 10x off
    and planned the small worker a batch of 24 (3.2x the baseline's time;
    benchmarks/RESULTS.md). With a flat line the small batch is d_S / d_L x B_L."""
    import dbl_ps.calibrate as cal_mod

    monkeypatch.setattr(cal_mod, "measure_grid", lambda model, grid, resolution, **kw: [
        (b, 0.0066 - 1.4e-7 * b) for b in grid])
    cal = calibrate("small_resnet", [8], make_step=RUN_STEP, batch_sizes=[8, 64, 512], batch_cap=512, progress=False)
    c = cal.resolutions[8]
    assert c.beta == 0 and c.alpha == pytest.approx(sum(0.0066 - 1.4e-7 * b for b in (8, 64, 512)) / 3)
    plan = make_plan({8: c.time_model()}, {8: 512}, workers=4, small=1, tau=1.1, dataset_size=24000)
    assert plan.resolutions[8].batch_small == round(4200 / 6600 * 512) == 326


def test_auto_cap_keeps_grid_up_to_best_throughput(monkeypatch):
    import dbl_ps.calibrate as cal_mod

    def fake_measure(model, grid, resolution, **kwargs):  # 2 ms + 1 ms/sample up to 16, then 2 ms/sample
        assert kwargs["statistic"] == "median"
        return [(b, 0.002 + 0.001 * b if b <= 16 else 0.002 * b) for b in grid]

    monkeypatch.setattr(cal_mod, "measure_grid", fake_measure)
    cal = calibrate("small_resnet", [8], make_step=RUN_STEP, batch_sizes=[4, 8, 16, 32, 64], batch_cap=64,
                    auto_cap=True, progress=False)
    c = cal.resolutions[8]
    assert c.batch_large == 16
    assert [b for b, _ in c.samples] == [4, 8, 16]
    assert c.alpha == pytest.approx(0.002) and c.beta == pytest.approx(0.001)
    assert cal.settings["auto_cap"] is True
    assert cal.settings["statistic"] == "median"
    plain = calibrate("small_resnet", [8], make_step=RUN_STEP, batch_sizes=[4, 8, 16, 32, 64], batch_cap=64,
                      progress=False)
    assert plain.resolutions[8].batch_large == 64


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"resolutions": []}, r"resolutions is empty"),
        ({"device": "tpu"}, r"device='tpu' must be 'cpu' or 'cuda'"),
        ({"batch_sizes": [64], "batch_cap": 64}, r"need at least 2 batch sizes"),
        ({"model_name": "vgg"}, r"model name 'vgg' is unknown"),
        ({"statistic": "mean"}, r"statistic='mean' must be one of median, min"),
        ({"precision": "int8"}, r"precision='int8' must be one of fp32, bf16, fp16"),
    ],
)
def test_calibrate_errors(kwargs, pattern):
    args = {"model_name": "small_resnet", "resolutions": [8], "make_step": RUN_STEP, "progress": False, "warmup": 0,
            "repeats": 1} | kwargs
    with pytest.raises(ValueError, match=pattern):
        calibrate(args.pop("model_name"), args.pop("resolutions"), **args)


def test_calibrate_command_writes_file(tmp_path, capsys):
    out = tmp_path / "cal.json"
    rc = run_command(
        calibrate_cmd,
        ["--resolutions", "8", "--batch-sizes", "2,32", "--batch-cap", "32", "--warmup", "1", "--repeats", "2",
         "--threads", "1", "--quiet", "--out", str(out)],
    )
    assert rc == 0
    assert load_calibration(out).resolutions[8].batch_large == 32
    assert "wrote" in capsys.readouterr().out


# --------------------------------------------------------------------------- plan command


def test_plan_json_preset_check_values(capsys):
    assert run_command(plan_cmd, ["--preset", "cifar", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["d_large"] == [13125, 13125]
    assert out["d_small"] == [10625, 10625]
    assert out["batch_small"][1] == 102
    assert out["batch_large"] == [600, 560]
    assert len(out["predicted_epoch_seconds"]) == 2
    assert [o["small"] for o in out["options"]] == [0, 1, 2, 3, 4]
    assert out["options"][2]["batch_small"][1] == 185


def test_plan_flags_table(capsys):
    argv = ["--alpha", "0.015562114074817612", "--beta", "0.0005056358858583448", "--batch-large", "560",
            "--resolutions", "32", "--dataset-size", "50000", "--tau", "1.1"]
    assert run_command(plan_cmd, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    chosen = [line for line in lines if line.startswith("*")]
    assert len(chosen) == 1
    assert chosen[0].split()[1:8] == ["1", "32", "47", "560", "8%", "8750", "13750"]  # b_S / B_L = 47 / 560
    regime = [line for line in lines if line.startswith("DBSL at 32 px: b_S = 47 of B_L 560 (8%)")]
    assert len(regime) == 1 and "alpha/beta = 30.8 samples" in regime[0] and "dbl.batch_small" in regime[0]


def test_plan_infeasible_exit_code_and_message(capsys):
    assert run_command(plan_cmd, ["--preset", "cifar", "--tau", "1.6"]) == 2
    err = capsys.readouterr().err
    assert "tau=1.6 leaves no data for small workers with n_S=1" in err
    assert "use tau < 1.3333" in err


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--alpha", "0.1", "--beta", "0.001", "--batch-large", "64", "--dataset-size", "100"], r"--alpha needs"),
        (["--alpha", "0.1,0.2", "--beta", "0.001", "--batch-large", "64", "--resolutions", "8,16", "--dataset-size", "100"],
         r"--beta has 1 values for 2 resolutions"),
        (["--preset", "cifar", "--alpha", "0.1"], r"give one time model source"),
        ([], r"no time model"),
        (["--preset", "cifar", "--small", "9"], r"small=9 must be in 0..4"),
    ],
)
def test_plan_input_errors(argv, pattern, capsys):
    assert run_command(plan_cmd, argv) == 2
    assert re.search(pattern, capsys.readouterr().err)


def test_plan_calibration_file_and_mixed_hardware(tmp_path, capsys):
    one = write_calibration(tmp_path / "one.json", 0.015562114074817612, 0.0005056358858583448, 560)
    assert run_command(plan_cmd, ["--calibration", str(one), "--dataset-size", "50000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch_small"][1] == 102 and out["d_small"] == [10625, 10625]

    slow = write_calibration(tmp_path / "slow.json", 0.03, 0.001, 280)
    argv = ["--dataset-size", "50000", "--small", "0", "--json"]
    for path in (one, one, slow, slow):
        argv += ["--calibration", str(path)]
    assert run_command(plan_cmd, argv) == 0
    out = json.loads(capsys.readouterr().out)
    shares = out["per_resolution"]["32"]["shares"]
    assert sum(shares) == 50000
    assert shares[0] == shares[1] > 1.8 * shares[2]  # the fast devices get more data
    assert out["per_resolution"]["32"]["batches"] == [560, 560, 280, 280]
    times = out["per_resolution"]["32"]["predicted_epoch_seconds"]
    assert max(times) / min(times) < 1.01


def test_plan_from_config(capsys):
    pytest.importorskip("yaml")
    config = REPO / "configs" / "cifar100_resnet18.yaml"
    if not config.exists():
        pytest.skip("config file not in this checkout")
    assert run_command(plan_cmd, ["--config", str(config), "--json", "dbl.tau=1.1", "dbl.small=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset_size"] == 50000
    assert out["d_large"][1] == 13750 and out["d_small"][1] == 8750 and out["batch_small"][1] == 47


def test_plan_show_schedule(tmp_path, capsys):
    png = tmp_path / "s.png"
    assert run_command(plan_cmd, ["--preset", "cifar", "--show-schedule", "--schedule-png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "131-140  0.002   32      0.2          560          102" in out  # epochs 1-based, as the console
    assert "x all-large training at 32 px" in out


def test_an_absurd_resolution_is_refused_before_anything_is_allocated(tmp_path, capsys):
    # 100000 px at batch 128 would be petabytes of activations: refused from shapes alone.
    out = tmp_path / "cal.json"
    rc = run_command(calibrate_cmd, ["--resolutions", "100000", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "resolution 100000 px" in err and "GiB" in err and "give smaller resolutions" in err
    assert len(err.strip().splitlines()) == 1


def test_activation_bytes_grow_with_batch_and_area():
    from dbl_ps.calibrate import activation_bytes

    base = activation_bytes("small_resnet", 4, 16, num_classes=10, in_channels=3)
    assert base > 4 * 3 * 16 * 16 * 4  # more than the input alone
    assert activation_bytes("small_resnet", 8, 16, num_classes=10, in_channels=3) == pytest.approx(2 * base, rel=0.01)
    assert activation_bytes("small_resnet", 4, 32, num_classes=10, in_channels=3) == pytest.approx(4 * base, rel=0.05)


def test_a_run_reports_the_seconds_it_spent_measuring_its_time_model_and_none_when_given():
    """`resolve_time_models` is where the measuring happens, so it says how long it took;
    the launchers and `compare` report that apart from the training time."""
    from dbl_ps.config import load_config
    from dbl_ps.training.time_models import MEASURED, resolve_time_models

    measured = resolve_time_models(load_config(None, ["data.train_limit=200"]), num_classes=10, in_channels=1,
                                   log=lambda m: None)
    assert measured.source == MEASURED and measured.seconds > 0
    assert set(measured.models) == {12, 16}
    given = resolve_time_models(load_config(None, ["dbl.alpha=[0.003]", "dbl.beta=[0.0002]"]), num_classes=10,
                                in_channels=1, log=lambda m: None)
    assert given.source == "config (dbl.alpha, dbl.beta)" and given.seconds == 0.0


def test_plan_with_a_chosen_small_batch(capsys):
    """--batch-small as a fraction of B_L: the chosen n_S trains at 25 % of B_L, the shares
    planned to finish together; below what tau allows, one error naming the smallest batch."""
    argv = ["--preset", "cifar", "--small", "3", "--tau", "1.1", "--batch-small", "0.5", "--json"]
    assert run_command(plan_cmd, argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch_small"] == [300, 280] and out["small_fraction"] == [0.5, 0.5]
    assert out["per_resolution"]["32"]["regime"]["kind"] == "chosen"
    assert run_command(plan_cmd, ["--preset", "cifar", "--small", "3", "--batch-small", "10"]) == 2
    err = capsys.readouterr().err
    assert "batch_small=10 at 24 px with n_S=3 needs tau >= " in err and "use batch_small >= " in err
