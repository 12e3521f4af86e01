"""dbl_ps.api without a process group: plans, a rank's part of one, the LR schedule as a
torch scheduler, and the DeepSpeed config of a rank."""

from __future__ import annotations

import pytest
import torch

import dbl_ps.api as dbl


def test_public_names_are_listed_and_documented():
    for name in dbl.__all__:
        obj = getattr(dbl, name)
        assert obj.__doc__, name


def test_plan_ranks_for_mixed_hardware_balances_the_epoch():
    fast, slow = dbl.TimeModel(alpha=0.01, beta=0.001), dbl.TimeModel(alpha=0.02, beta=0.002)
    plan = dbl.plan_ranks([fast, slow], batch_large=100, dataset_size=3000)
    a, b = dbl.rank_plan(plan, 0), dbl.rank_plan(plan, 1)
    assert a.share + b.share == 3000 and a.share == pytest.approx(2 * b.share, rel=0.02)
    assert a.predicted_seconds == pytest.approx(b.predicted_seconds, rel=0.03)
    assert a.merge_weight > b.merge_weight  # weights follow the shares
    with pytest.raises(dbl.APIError, match=r"rank 2 is outside the plan's ranks 0..1"):
        dbl.rank_plan(plan, 2)


def test_plan_ranks_with_a_small_batch_rank():
    plan = dbl.plan_ranks(dbl.TimeModel(alpha=0.01, beta=0.001), batch_large=128, dataset_size=4000, ranks=4,
                          small=1, tau=1.1)
    mine = [dbl.rank_plan(plan, r) for r in range(4)]
    assert mine[0].batch < 128 == mine[1].batch == mine[3].batch
    assert sum(m.share for m in mine) == 4000
    with pytest.raises(dbl.InfeasiblePlanError, match="alpha"):
        dbl.plan_ranks(dbl.TimeModel(alpha=-0.001, beta=0.001), batch_large=128, dataset_size=4000, ranks=2, small=1,
                       tau=1.1)


def test_schedule_lr_follows_the_fractional_epoch_of_each_rank():
    spec = dbl.ScheduleSpec(epochs=4, base_lr=0.1, milestones=(2,), warmup_epochs=1, warmup_start_factor=0.1)
    model = torch.nn.Linear(2, 2)
    lrs = {}
    for steps in (4, 10):  # a small-batch rank takes more steps per epoch than a large-batch one
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = dbl.ScheduleLR(opt, spec, steps)
        seen = []
        for epoch in range(4):
            sched.set_epoch(epoch, steps)
            seen.append(opt.param_groups[0]["lr"])
            for _ in range(steps // 2):
                opt.step()
                sched.step()
            seen.append(opt.param_groups[0]["lr"])  # half-way through the epoch
            for _ in range(steps - steps // 2):
                opt.step()
                sched.step()
        lrs[steps] = seen
    expected = [dbl.lr_at(e / 2, spec) for e in range(8)]
    assert lrs[4] == pytest.approx(expected) and lrs[10] == pytest.approx(expected)


def test_deepspeed_rank_config_keeps_the_users_optimizer_and_scheduler():
    user = {"train_batch_size": 128, "train_micro_batch_size_per_gpu": 64, "optimizer": {"type": "Adam"},
            "scheduler": {"type": "WarmupLR"}}
    config, notes = dbl.deepspeed_rank_config(user, 24)
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] == 24
    assert config["optimizer"] == {"type": "Adam"} and config["scheduler"] == {"type": "WarmupLR"}
    assert notes == ["train_batch_size 128 -> the rank's planned batch",
                     "train_micro_batch_size_per_gpu 64 -> the rank's planned batch"]
    assert user["train_batch_size"] == 128  # the user's dict is left as it was


def test_a_measured_time_model_keeps_alpha_and_beta_non_negative():
    """A step that costs nothing measurable still gives a usable line (the known-value cases
    of the non-negative fit are in tests/test_planner.py)."""
    flat = dbl.measure_time_model(lambda b: None, [8, 16], repeats=1)
    assert flat.alpha >= 0 and flat.beta >= 0


def test_plan_from_a_calibration_file(tmp_path):
    from dbl_ps.calibrate import Calibration, ResolutionCalibration, save_calibration

    fits = {r: ResolutionCalibration(resolution=r, alpha=0.002 * r / 16, beta=0.0001 * r / 16, r2=0.99,
                                     batch_large=128, samples=((8, 0.003), (128, 0.015))) for r in (16, 24)}
    save_calibration(Calibration(device="cpu", model="small_resnet", resolutions=fits, torch_version="x",
                                 created="today"), tmp_path / "cal.json")
    plan = dbl.plan_from_calibration(str(tmp_path / "cal.json"), ranks=2, dataset_size=1000, small=1, tau=1.1)
    assert list(plan.resolutions) == [16, 24] and plan[24].time_models[0].alpha == pytest.approx(0.003)
    with pytest.raises(dbl.APIError, match=r"no entry for resolution\(s\) \[32\]; it covers \[16, 24\]"):
        dbl.plan_from_calibration(str(tmp_path / "cal.json"), ranks=2, dataset_size=1000, resolutions=[32])
