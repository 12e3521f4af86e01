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


def test_deepspeed_rank_config_keeps_the_users_optimizer_and_accumulation():
    user = {"train_batch_size": 128, "train_micro_batch_size_per_gpu": 64, "optimizer": {"type": "Adam"}}
    config, notes = dbl.deepspeed_rank_config(user, 24)
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] == 24
    assert config["gradient_accumulation_steps"] == 1 and config["optimizer"] == {"type": "Adam"}
    assert notes == ["train_batch_size 128 -> the rank's planned batch",
                     "train_micro_batch_size_per_gpu 64 -> the rank's planned batch"]
    assert user["train_batch_size"] == 128  # the user's dict is left as it was
    # accumulation 4 on a planned batch of 26: micro-batches of at most 7, DeepSpeed's 7 x 4 = 28
    config, notes = dbl.deepspeed_rank_config({**user, "gradient_accumulation_steps": 4}, 26)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"]) == (7, 4, 28)
    assert notes[0].startswith("gradient_accumulation_steps 4 kept: each rank's planned batch runs as 4 "
                               "micro-batches")
    assert [len(x) for x, _, _ in dbl.accumulate(torch.zeros(26, 1), torch.zeros(26), parts=4)] == [7, 7, 6, 6]


def test_deepspeed_rank_config_refuses_what_would_differ_per_rank():
    """A step-based scheduler would run at a different pace on every rank; a planned batch
    smaller than the accumulation steps cannot be split: each one error naming the values."""
    with pytest.raises(dbl.DeepSpeedConfigError) as info:
        dbl.deepspeed_rank_config({"gradient_accumulation_steps": 8,
                                   "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 20}}}, 5)
    message = str(info.value)
    assert "gradient_accumulation_steps=8 splits each planned batch into 8 micro-batches, but this rank's planned " \
           "batch is 5: use gradient_accumulation_steps <= 5" in message
    assert "scheduler 'WarmupLR' counts optimizer steps" in message and "dbl.ScheduleLR(opt, spec, mine.steps)" in message
    with pytest.raises(dbl.DeepSpeedConfigError, match=r"gradient_accumulation_steps=0: give a whole number >= 1"):
        dbl.deepspeed_rank_config({"gradient_accumulation_steps": 0}, 5)


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


# --------------------------------------------------------------------------- resume


def test_a_plan_round_trips_through_json():
    import json

    from dbl_ps.planner import replan

    plan = dbl.plan_ranks(dbl.TimeModel(alpha=0.002, beta=0.0001), batch_large=64, dataset_size=1437, ranks=2,
                          small=1, tau=1.2)
    for p in (plan, replan(plan, [1.0, 1.7])):  # a re-planned plan too: what a checkpoint holds after drift
        assert dbl.plan_from_dict(json.loads(json.dumps(dbl.plan_to_dict(p)))) == p
    with pytest.raises(dbl.APIError, match="not a plan written by plan_to_dict"):
        dbl.plan_from_dict({"workers": 2})


def test_schedule_lr_resumes_mid_epoch_through_torch_save(tmp_path):
    spec = dbl.ScheduleSpec(epochs=4, base_lr=0.1, milestones=(2,), warmup_epochs=1, warmup_start_factor=0.1)

    def make():
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        return opt, dbl.ScheduleLR(opt, spec, 10)

    def run(opt, sched, epochs, first_steps=0):
        lrs = []
        for epoch in epochs:
            sched.set_epoch(epoch, 10)
            for _ in range(10 - (first_steps if epoch == epochs[0] else 0)):
                opt.step()
                sched.step()
                lrs.append(opt.param_groups[0]["lr"])
        return lrs

    opt, sched = make()
    whole = run(opt, sched, range(4))
    opt, sched = make()
    run(opt, sched, range(1))
    sched.set_epoch(1, 10)
    for _ in range(4):  # 4 steps into epoch 1, then the job dies
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    opt, sched = make()
    sched.load_state_dict(torch.load(tmp_path / "sched.pt", weights_only=True))  # plain values only
    assert opt.param_groups[0]["lr"] == pytest.approx(whole[10 + 3])  # the LR where it stopped
    assert run(opt, sched, [1, 2, 3], first_steps=4) == pytest.approx(whole[14:])
    with pytest.raises(dbl.APIError, match="not a ScheduleLR state"):
        sched.load_state_dict({"base_lrs": [0.1]})


def test_share_batch_sampler_resumes_mid_epoch_and_starts_the_next_epoch_fresh():
    fresh = dbl.ShareBatchSampler(100, [40, 60], 1, 16, seed=3)
    fresh.set_epoch(2)
    whole = list(fresh)
    sampler = dbl.ShareBatchSampler(100, [40, 60], 1, 16, seed=3)
    sampler.set_epoch(2)
    batches = iter(sampler)
    seen = [next(batches), next(batches)]
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["position"] == 32
    resumed = dbl.ShareBatchSampler(100, [40, 60], 1, 16, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2, shares=[40, 60], batch_size=16)  # the loop's own call: the saved epoch continues
    assert seen + list(resumed) == whole
    resumed.set_epoch(3)
    assert len(list(resumed)) == 4 and resumed.position == 60  # the next epoch from its beginning
    with pytest.raises(ValueError, match="for rank 1 with seed 3; this one is over 100 for rank 0"):
        dbl.ShareBatchSampler(100, [40, 60], 0, 16, seed=3).load_state_dict(state)
    again = dbl.ShareBatchSampler(100, [40, 60], 1, 16, seed=3)
    again.load_state_dict(state)
    with pytest.raises(ValueError, match=r"continues the loaded epoch at sample 32 of shares \[40, 60\]"):
        again.set_epoch(2, shares=[50, 50])


def test_the_step_check_names_the_rank_and_its_planned_and_taken_steps():
    from dbl_ps.api import _progress_problem

    # rows: (epoch, syncs done, steps taken, planned steps, at the end of the epoch)
    assert _progress_problem([[1, 5, 48, 112, 0], [1, 5, 5, 13, 0]]) is None  # both at sync 6
    assert _progress_problem([[1, 14, 112, 112, 1], [1, 14, 13, 13, 1]]) is None  # both done
    short = _progress_problem([[0, 5, 48, 112, 0], [0, 5, 5, 13, 1]])
    assert short.startswith("epoch 0: rank 1 took 5 of its 13 planned steps (an early break")
    long = _progress_problem([[0, 14, 112, 112, 1], [0, 14, 15, 13, 1]])
    assert long.startswith("epoch 0: rank 1 took 15 of its 13 planned steps (a sampler on other shares")
    assert "sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)" in long
    apart = _progress_problem([[3, 0, 8, 112, 0], [2, 0, 1, 13, 0]])
    assert apart.startswith("the ranks are in different epochs: rank 0 at sync 1 of epoch 3 (8 of 112 planned "
                            "steps); rank 1 at sync 1 of epoch 2")
    assert "every rank's checkpoint of the same epoch" in apart


def test_plan_difference_names_an_input_before_what_follows_from_it():
    from dbl_ps.training.run_plan import plan_difference

    base = dbl.plan_ranks(dbl.TimeModel(alpha=0.01, beta=0.001), batch_large=64, dataset_size=200, ranks=2)
    same = dbl.plan_ranks(dbl.TimeModel(alpha=0.01, beta=0.001), batch_large=64, dataset_size=200, ranks=2)
    assert plan_difference(dbl.plan_to_dict(base), dbl.plan_to_dict(same)) is None
    more = dbl.plan_ranks(dbl.TimeModel(alpha=0.01, beta=0.001), batch_large=64, dataset_size=260, ranks=2)
    assert plan_difference(dbl.plan_to_dict(base), dbl.plan_to_dict(more)) == ("dataset_size", 200, 260)
    # each rank planned from its own measured time model (instead of plan_together)
    own = dbl.plan_ranks(dbl.TimeModel(alpha=0.012, beta=0.001), batch_large=64, dataset_size=200, ranks=2)
    assert plan_difference(dbl.plan_to_dict(base), dbl.plan_to_dict(own)) == \
        ("per_resolution.0.time_models[0].alpha", 0.01, 0.012)
def test_one_value_in_a_list_means_every_worker_and_every_resolution():
    """The one-value form the config takes (`dbl.batch_large: [64]`) works in the API too."""
    tm = dbl.TimeModel(alpha=0.002, beta=0.0001)
    one = dbl.plan_ranks(tm, batch_large=64, dataset_size=1000, ranks=2, small=1, tau=1.5, resolutions=(20, 28),
                         batch_small=0.5)
    listed = dbl.plan_ranks(tm, batch_large=[64], dataset_size=1000, ranks=2, small=1, tau=1.5, resolutions=(20, 28),
                            batch_small=[0.5])
    assert dbl.plan_to_dict(one) == dbl.plan_to_dict(listed)
    assert [one[r].batches for r in (20, 28)] == [(32, 64), (32, 64)]
