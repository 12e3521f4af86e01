"""dbl_ps.planner: speed factors against the plan, drift, and the plan made again."""

from __future__ import annotations

import pytest

from dbl_ps.planner import TimeModel, drifted, make_plan, replan, scaled_models, speed_factors

MODEL = TimeModel(alpha=0.01, beta=0.001)


def uniform_plan(small: int = 0):
    return make_plan({16: MODEL}, {16: 100}, workers=2, small=small, tau=1.1, dataset_size=2000)


def test_speed_factors_are_measured_over_predicted_seconds():
    rp = uniform_plan()[16]
    predicted = [MODEL.epoch_seconds_whole_steps(d, b) for d, b in zip(rp.shares, rp.batches)]
    assert rp.shares == (1000, 1000) and predicted == pytest.approx([1.1, 1.1])
    assert speed_factors(rp, [1.1, 2.2]) == pytest.approx([1.0, 2.0])
    with pytest.raises(ValueError, match="3 measured times for a plan of 2 workers"):
        speed_factors(rp, [1, 2, 3])
    with pytest.raises(ValueError, match="measured seconds of worker 1 must be a positive number, got 0"):
        speed_factors(rp, [1.0, 0])


def test_drift_is_relative_to_the_median_worker():
    assert not drifted([1.0, 1.1])            # within 15 %
    assert drifted([1.0, 1.5])                # one worker 50 % slower
    assert not drifted([2.0, 2.1, 2.05])      # the whole machine slower: the plan stays balanced
    assert drifted([1.0, 1.0, 1.0, 0.5], threshold=0.3)
    with pytest.raises(ValueError, match="threshold=0 must be > 0"):
        drifted([1.0], threshold=0)


def test_replan_gives_the_slow_worker_less_data_so_both_finish_together():
    plan = uniform_plan()
    new = replan(plan, [1.0, 2.0])  # worker 1 takes twice as long per sample and per step
    rp = new[16]
    assert rp.time_models[1] == scaled_models([MODEL], [2.0])[0] == TimeModel(alpha=0.02, beta=0.002)
    assert rp.shares[0] == pytest.approx(2 * rp.shares[1], rel=0.02)  # twice the data for the fast worker
    assert sum(rp.shares) == 2000
    seconds = rp.predicted_epoch_seconds
    assert max(seconds) / min(seconds) < 1.02  # and both finish together again
    assert max(seconds) < max(speed_factors(plan[16], [1.1, 2.2])) * 1.1  # faster than keeping the old plan


def test_replan_keeps_small_workers_tau_and_batches():
    plan = uniform_plan(small=1)
    new = replan(plan, [1.0, 1.5])
    assert new.small == 1 and new[16].small == 1 and new[16].tau == plan[16].tau
    assert new[16].batch_large == plan[16].batch_large
    with pytest.raises(ValueError, match="1 speed factors for a plan of 2 workers"):
        replan(plan, [1.0])
