"""The mixed-batch plan (`dbl_ps.planner.mixed`): one global batch split over the ranks so every
rank's step takes the same time, checked against the closed form and by brute force."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from dbl_ps.planner import (
    balanced_batches,
    plan_lines,
    plan_mixed,
    plan_mixed_resolution,
    replan_any,
    step_seconds,
)
from dbl_ps.planner import InfeasiblePlanError, TimeModel, speed_factors
from dbl_ps.training.run_plan import plan_from_dict


def closed_form(models: list[TimeModel], global_batch: int) -> list[float]:
    """DESIGN.md: T = (B + sum alpha_i/beta_i) / sum 1/beta_i, b_i = (T - alpha_i) / beta_i."""
    t = (global_batch + sum(m.alpha / m.beta for m in models)) / sum(1 / m.beta for m in models)
    return [(t - m.alpha) / m.beta for m in models]


def slowest(models, batches, caps=None) -> float:
    caps = caps or [None] * len(models)
    return max(step_seconds(m, b, c) for m, b, c in zip(models, batches, caps))


@pytest.mark.parametrize("models, global_batch", [
    ([TimeModel(0.01, 0.001), TimeModel(0.01, 0.002)], 300),  # rank 1 half speed: 200 / 100
    ([TimeModel(0.02, 0.0005), TimeModel(0.005, 0.0005), TimeModel(0.01, 0.0015)], 512),
    ([TimeModel(0.015562114074817612, 0.0005056358858583448)] * 4, 560 * 4),  # the authors' GTX 1080, equal ranks
])
def test_batches_are_the_closed_form_rounded(models, global_batch):
    batches = balanced_batches(models, global_batch)
    assert sum(batches) == global_batch and min(batches) >= 1
    assert all(abs(b - exact) <= 1.0 for b, exact in zip(batches, closed_form(models, global_batch)))


def test_a_half_speed_rank_gets_a_third_of_the_batch_and_the_step_takes_two_thirds_of_an_equal_splits():
    models = [TimeModel(0.0, 0.001), TimeModel(0.0, 0.002)]
    assert balanced_batches(models, 300) == [200, 100]
    rp = plan_mixed_resolution(models, 300, 3000, resolution=32)
    assert rp.steps() == [10, 10] and rp.shares == (2000, 1000) and rp.merge_weights == (2 / 3, 1 / 3)
    assert rp.epoch_seconds / rp.baseline_epoch_seconds == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(30))
def test_the_split_is_the_fastest_possible_integer_split(seed):
    """Brute force over every split of a small global batch, with caps (micro-batches) and
    launch-bound ranks (beta 0): no split has a faster slowest step."""
    import random

    rng = random.Random(seed)
    ranks = rng.choice([2, 3])
    models = [TimeModel(rng.choice([0.0, 0.01, 0.03]), rng.choice([0.0, 0.001, 0.003])) for _ in range(ranks)]
    caps = [rng.choice([None, 3, 7]) for _ in range(ranks)]
    global_batch = rng.randint(ranks, 24)
    batches = balanced_batches(models, global_batch, caps)
    assert sum(batches) == global_batch and min(batches) >= 1
    best = min(slowest(models, split, caps)
               for split in itertools.product(range(1, global_batch + 1), repeat=ranks) if sum(split) == global_batch)
    assert slowest(models, batches, caps) == pytest.approx(best)


def test_a_memory_cap_is_reached_by_micro_batches_and_priced_in():
    models = [TimeModel(0.01, 0.001), TimeModel(0.01, 0.002)]
    rp = plan_mixed_resolution(models, 300, 3000, caps=[64, None])
    assert rp.batches == (192, 108)  # 3 micro-batches of 64 cost 2 more fixed costs: 200/100 would be slower
    assert rp.micro_batches == (3, 1) and rp.memory_caps == (64, None)
    assert rp.predicted_epoch_seconds[0] == pytest.approx(10 * (3 * 0.01 + 0.192))


def test_a_launch_bound_rank_fills_its_time_and_ties_are_spread():
    # rank 0's step costs 50 ms at any batch: it takes what fits, rank 1 as much as it does in 50 ms
    assert balanced_batches([TimeModel(0.05, 0.0), TimeModel(0.01, 0.001)], 100) == [71, 29]
    assert balanced_batches([TimeModel(0.05, 0.0), TimeModel(0.05, 0.0)], 100) == [50, 50]


def test_shares_give_every_rank_the_same_steps_and_drop_fewer_than_one_global_batch():
    rp = plan_mixed_resolution([TimeModel(0.01, 0.001), TimeModel(0.02, 0.003)], 100, 1050)
    assert len(set(rp.steps())) == 1 and rp.steps()[0] == 10
    assert sum(rp.shares) == 1000 and all(s == 10 * b for s, b in zip(rp.shares, rp.batches))
    assert "50 samples a different few each epoch sit it out" in plan_lines_of(rp)


def plan_lines_of(rp) -> str:
    from dbl_ps.planner import Plan

    return "\n".join(plan_lines(Plan(workers=rp.workers, small=0, tau=1.0, dataset_size=rp.dataset_size,
                                     resolutions={rp.resolution: rp})))


@pytest.mark.parametrize("global_batch, dataset_size, message", [
    (1, 100, "global batch 1 is smaller than the 2 ranks"),
    (200, 100, "global batch 200 is larger than the 100 training samples"),
])
def test_infeasible_splits_say_what_to_change(global_batch, dataset_size, message):
    with pytest.raises(InfeasiblePlanError, match=message):
        plan_mixed_resolution([TimeModel(0.01, 0.001)] * 2, global_batch, dataset_size)


def test_a_replan_moves_batch_and_samples_between_ranks_but_keeps_the_global_batch():
    plan = plan_mixed({16: TimeModel(0.01, 0.001), 24: TimeModel(0.02, 0.002)}, {16: 256, 24: 128}, 2, 5000)
    assert plan[16].batches == (128, 128)
    measured = [s * f for s, f in zip(plan[16].predicted_epoch_seconds, (1.0, 2.0))]  # rank 1 at half speed
    factors = speed_factors(plan[16], measured)
    assert factors == pytest.approx([1.0, 2.0])
    new = replan_any(plan, factors)
    for r in (16, 24):
        assert new[r].global_batch == plan[r].global_batch and sum(new[r].batches) == plan[r].global_batch
        assert new[r].batches[0] > new[r].batches[1] and len(set(new[r].steps())) == 1
    assert new[16].steps() == plan[16].steps()  # the same number of steps: the LR schedule is untouched


def test_plan_json_round_trip_rebuilds_the_same_mixed_plan():
    plan = plan_mixed({16: [TimeModel(0.01, 0.001), TimeModel(0.02, 0.003)]}, {16: 100}, 2, 1234, caps=[16, None])
    again = plan_from_dict(plan.to_dict())
    assert again[16] == plan[16]
    saved = plan.to_dict()["per_resolution"]["16"]
    assert (saved["global_batch"], saved["micro_batches"], saved["memory_caps"]) == (100, list(again[16].micro_batches),
                                                                                      [16, None])


def test_thousands_of_ranks_are_planned_in_well_under_a_second():
    import time

    models = [TimeModel(0.01 * (1 + i % 3), 0.0001 * (1 + i % 5)) for i in range(4096)]
    started = time.perf_counter()
    batches = balanced_batches(models, 1 << 20, [None if i % 2 else 64 for i in range(4096)])
    assert sum(batches) == 1 << 20 and time.perf_counter() - started < 5.0  # < 1 s on a quiet core
    assert math.isfinite(slowest(models, batches))


def test_dbl_ps_plan_prints_the_split_per_rank_against_an_equal_split(capsys):
    from dbl_ps.cli import main

    assert main(["plan", "--alpha", "0.01", "--beta", "0.001", "--batch-large", "128", "--resolutions", "32",
                 "--dataset-size", "10000", "--workers", "3", "--global-batch", "300", "--memory-caps", "64,0,0"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("32 ")]
    assert [row[2:6] for row in rows] == [["94", "2", "3102", "33"], ["103", "1", "3399", "33"],
                                          ["103", "1", "3399", "33"]]
    assert "global batch 300 split 94/103/103 over 3 ranks (micro-batches 2/1/1 under the memory caps)" in out
    assert main(["plan", "--config", "digits_default", "sync=mixed_batch", "dbl.small=0", "dbl.alpha=[0.003]",
                 "dbl.beta=[0.0002]", "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["per_resolution"]["16"]["global_batch"] == 256 and saved["per_resolution"]["16"]["batches"] == [64] * 4
