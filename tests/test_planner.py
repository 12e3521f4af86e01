"""Tests of dbl_ps.planner: the authors' check values, properties of the plan, errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dbl_ps.planner import (
    AUTHORS_BEST,
    PAPER_BATCH_LARGE,
    PAPER_TIME_MODELS,
    InfeasiblePlanError,
    TimeModel,
    apportion,
    feasible_tau_range,
    fit_nonnegative_time_model,
    fit_time_model,
    make_plan,
    epoch_time_ratio,
    plan_all_small_counts,
    plan_resolution,
    reference_small_fraction,
)
from dbl_ps.planner import replan
from dbl_ps.training.run_plan import plan_from_dict

CIFAR32 = TimeModel(alpha=0.015562114074817612, beta=0.0005056358858583448)


def cifar_plan(small: int, tau: float):
    return plan_resolution([CIFAR32] * 4, [560] * 4, small=small, tau=tau, dataset_size=50000)


# --------------------------------------------------------------------------- check values


@pytest.mark.parametrize(
    ("small", "tau", "d_large", "d_small", "b_small"),
    [
        (1, 1.05, 13125, 10625, 102),
        (2, 1.05, 13125, 11875, 185),
        (3, 1.05, 13125, 12292, 243),  # exact d_S = 12291.67: shares 12292, 12292, 12291
        (1, 1.1, 13750, 8750, 47),
    ],
)
def test_authors_check_values(small, tau, d_large, d_small, b_small):
    p = cifar_plan(small, tau)
    assert p.d_large == d_large
    assert p.d_small == d_small
    assert p.batch_small == b_small
    assert all(s == d_large for s in p.shares[small:])
    assert p.batches == (b_small,) * small + (560,) * (4 - small)
    assert sum(p.shares) == 50000


def test_rounding_rule_is_nearest_not_floor_or_ceil():
    exact = [cifar_plan(s, t).batch_small_exact for s, t in [(1, 1.05), (2, 1.05), (3, 1.05), (1, 1.1)]]
    assert [math.floor(b) for b in exact] != [102, 185, 243, 47]
    assert [math.ceil(b) for b in exact] != [102, 185, 243, 47]
    assert [round(b) for b in exact] == [102, 185, 243, 47]
    assert exact[0] == pytest.approx(101.5132, abs=1e-4)


def test_three_small_shares_sum_exactly():
    p = cifar_plan(3, 1.05)
    assert p.shares == (12292, 12292, 12291, 13125)
    assert p.shares_exact[0] == pytest.approx(36875 / 3)


def test_merge_weights_are_share_over_large_share():
    p = cifar_plan(1, 1.05)
    assert p.merge_weights == pytest.approx((10625 / 13125, 1.0, 1.0, 1.0))
    assert cifar_plan(0, 1.05).merge_weights == (1.0, 1.0, 1.0, 1.0)


def test_no_small_workers_splits_evenly_at_largest_batch():
    p = cifar_plan(0, 1.05)
    assert p.shares == (12500,) * 4
    assert p.batch_small is None
    assert p.batches == (560,) * 4
    t0 = 12500 * (CIFAR32.beta + CIFAR32.alpha / 560)
    assert p.baseline_epoch_seconds == pytest.approx(t0, rel=1e-12)
    assert p.epoch_seconds_exact == pytest.approx(t0, rel=1e-12)
    # rounded prediction counts whole steps: ceil(12500/560) = 23 steps
    assert p.epoch_seconds == pytest.approx(23 * CIFAR32.alpha + 12500 * CIFAR32.beta)


def test_uneven_dataset_remainder_goes_to_lower_ids():
    p = plan_resolution([CIFAR32] * 4, [560] * 4, small=0, tau=1.0, dataset_size=50003)
    assert p.shares == (12501, 12501, 12501, 12500)


def test_tau_one_gives_largest_batch_and_even_split():
    p = cifar_plan(2, 1.0)
    assert p.batch_small == 560
    assert p.shares == (12500,) * 4


def test_all_small_workers():
    p = cifar_plan(4, 1.05)
    assert p.shares == (12500,) * 4
    # every worker: 12500 (beta + alpha / b) = 1.05 T0
    assert 12500 * CIFAR32.sample_seconds(p.batch_small_exact) == pytest.approx(1.05 * p.baseline_epoch_seconds)
    assert p.merge_weights == (1.0,) * 4


def test_time_ratio_is_tau():
    p = cifar_plan(1, 1.05)
    assert p.epoch_seconds_exact / p.baseline_epoch_seconds == pytest.approx(1.05, rel=1e-12)


# --------------------------------------------------------------------------- errors


def test_tau_too_large_names_feasible_range():
    with pytest.raises(InfeasiblePlanError, match=r"tau=1.6 leaves no data for small workers with n_S=1; use tau < 1.3333"):
        cifar_plan(1, 1.6)


def test_tau_above_batch_one_limit():
    lo, hi, no_data = feasible_tau_range([CIFAR32] * 4, [560] * 4, 1, 50000)
    assert lo == pytest.approx(1.0)
    assert no_data == pytest.approx(4 / 3)
    assert 1.3 < hi < no_data
    with pytest.raises(InfeasiblePlanError, match=r"below 1 .* tau <= 1.318"):
        cifar_plan(1, 1.33)
    assert cifar_plan(1, hi).batch_small == 1


def test_small_batch_floor_caps_tau_at_known_value():
    # b_S >= 16 needs tau <= W / (n_L + n_S c / (beta + alpha/16)), c = beta + alpha/B_L: 1.19017693 here.
    c = CIFAR32.sample_seconds(560)
    tau_max = 4 / (3 + c / CIFAR32.sample_seconds(16))
    assert tau_max == pytest.approx(1.1901769342807567, rel=1e-12)
    assert feasible_tau_range([CIFAR32] * 4, [560] * 4, 1, 50000, min_small_batch=16)[1] == pytest.approx(tau_max)
    at_limit = plan_resolution([CIFAR32] * 4, [560] * 4, small=1, tau=1.19, dataset_size=50000, min_small_batch=16)
    assert at_limit.batch_small == 16 and at_limit.shares == (5375, 14875, 14875, 14875)
    assert at_limit.min_small_batch == 16 and at_limit.to_dict()["min_small_batch"] == 16
    with pytest.raises(InfeasiblePlanError, match=r"tau=1.2 needs a small batch below 16 \(min_small_batch\) with "
                                                  r"n_S=1; use 1 <= tau <= 1.1901, a lower min_small_batch"):
        plan_resolution([CIFAR32] * 4, [560] * 4, small=1, tau=1.2, dataset_size=50000, min_small_batch=16)
    # without the floor the paper's plan at tau=1.2 goes below it
    assert cifar_plan(1, 1.2).batch_small == 14


@pytest.mark.parametrize("floor", [1, 8, 16, 32, 102])
@pytest.mark.parametrize("tau", [1.0, 1.02, 1.05, 1.1, 1.15, 1.2, 1.3])
def test_small_batch_is_never_below_the_floor(floor, tau):
    try:
        plan = make_plan({32: CIFAR32}, {32: 560}, 4, 1, tau, 50000, min_small_batch=floor)
    except InfeasiblePlanError as exc:
        assert "min_small_batch" in str(exc)
        return
    assert plan[32].batch_small >= floor


def test_small_batch_floor_above_largest_batch_is_an_error():
    with pytest.raises(InfeasiblePlanError, match=r"min_small_batch=600 is above the largest batch 560"):
        plan_resolution([CIFAR32] * 4, [560] * 4, small=1, tau=1.05, dataset_size=50000, min_small_batch=600)
    assert plan_resolution([CIFAR32] * 4, [560] * 4, small=0, tau=1.05, dataset_size=50000,
                           min_small_batch=600).batch_small is None  # no small worker, no floor to meet


def test_saved_plan_keeps_its_small_batch_floor():
    from dbl_ps.training.run_plan import plan_from_dict

    plan = make_plan({32: CIFAR32}, {32: 560}, 4, 1, 1.19, 50000, min_small_batch=16)
    assert plan_from_dict(plan.to_dict())[32].min_small_batch == 16


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"tau": 0.9}, r"tau=0.9 must be a number >= 1"),
        ({"small": 5}, r"small=5 must be in 0..4"),
        ({"small": -1}, r"small=-1 must be in 0..4"),
        ({"dataset_size": 3}, r"dataset_size=3 must be >= 4"),
        ({"dataset_size": 10.5}, r"dataset_size=10.5 must be an integer"),
    ],
)
def test_bad_inputs(kwargs, pattern):
    args = {"small": 1, "tau": 1.05, "dataset_size": 50000} | kwargs
    with pytest.raises(ValueError, match=pattern):
        plan_resolution([CIFAR32] * 4, [560] * 4, **args)


def test_bad_batch_large_and_models():
    with pytest.raises(ValueError, match=r"batch_large\[2\] at 32 px=0 must be >= 1"):
        plan_resolution([CIFAR32] * 4, [560, 560, 0, 560], small=1, tau=1.05, dataset_size=50000, resolution=32)
    with pytest.raises(ValueError, match=r"batch_large has 3 entries for 4 workers"):
        plan_resolution([CIFAR32] * 4, [560] * 3, small=1, tau=1.05, dataset_size=50000)
    with pytest.raises(ValueError, match=r"beta=-1.0 must be >= 0"):
        TimeModel(0.1, -1.0)


def test_make_plan_input_errors():
    with pytest.raises(ValueError, match=r"differ from batch_large resolutions"):
        make_plan({24: CIFAR32, 32: CIFAR32}, {32: 560}, 4, 1, 1.05, 50000)
    with pytest.raises(ValueError, match=r"batch_large at 32 px has 2 entries; give one value or one per worker \(4\)"):
        make_plan({32: CIFAR32}, {32: [560, 560]}, 4, 1, 1.05, 50000)
    with pytest.raises(ValueError, match=r"workers=0 must be >= 1"):
        make_plan({32: CIFAR32}, {32: 560}, 0, 0, 1.05, 50000)


def test_worker_without_data_is_an_error():
    with pytest.raises(InfeasiblePlanError, match=r"gets no data"):
        plan_resolution([TimeModel(1.0, 0.001)] * 2, [1000] * 2, small=1, tau=1.95, dataset_size=10)


# --------------------------------------------------------------------------- make_plan / Plan


def test_make_plan_paper_cifar_hybrid_and_json():
    plan = make_plan(PAPER_TIME_MODELS["cifar"], PAPER_BATCH_LARGE["cifar"], 4, 1, 1.05, 50000)
    d = plan.to_dict()
    assert d["resolutions"] == [24, 32]
    assert d["d_large"] == [13125, 13125]
    assert d["d_small"] == [10625, 10625]
    assert d["batch_large"] == [600, 560]
    assert d["batch_small"][1] == 102
    assert d["batch_small"][0] == plan[24].batch_small
    assert len(d["predicted_epoch_seconds"]) == 2
    assert d["per_resolution"]["32"]["shares"] == [10625, 13125, 13125, 13125]
    assert d["per_resolution"]["32"]["steps"] == [math.ceil(10625 / 102)] + [math.ceil(13125 / 560)] * 3
    import json

    json.dumps(d)  # JSON-ready


def test_plan_all_small_counts_marks_infeasible():
    rows = plan_all_small_counts({32: CIFAR32}, {32: 560}, 4, 1.32, 50000)
    assert [n for n, _ in rows] == [0, 1, 2, 3, 4]
    assert not isinstance(rows[0][1], Exception)
    assert isinstance(rows[1][1], InfeasiblePlanError)  # tau=1.32 -> b_S < 1 with one small worker
    assert rows[2][1][32].batch_small >= 1


# --------------------------------------------------------------------------- mixed hardware


def test_mixed_hardware_load_balance():
    fast = TimeModel(0.01, 0.0002)
    slow = TimeModel(0.02, 0.0006)
    p = plan_resolution([slow, fast, fast, slow], [256, 512, 512, 256], small=0, tau=1.0, dataset_size=40000)
    times = [m.epoch_seconds(d, b) for m, d, b in zip(p.time_models, p.shares_exact, p.batches)]
    assert times == pytest.approx([times[0]] * 4, rel=1e-12)
    assert p.shares[1] > 2 * p.shares[0]
    assert sum(p.shares) == 40000
    assert p.merge_weights[1] / p.merge_weights[0] == pytest.approx(p.shares[1] / p.shares[0])


def test_mixed_hardware_small_workers_keep_tau():
    a, b = TimeModel(0.02, 0.0004), TimeModel(0.03, 0.0003)
    models = [a, b, a, b]
    p = plan_resolution(models, [300, 400, 300, 400], small=2, tau=1.1, dataset_size=60000)
    times = [m.epoch_seconds(d, bs) for m, d, bs in zip(models, p.shares_exact, [p.batch_small_exact] * 2 + [300, 400])]
    assert times == pytest.approx([1.1 * p.baseline_epoch_seconds] * 4, rel=1e-9)
    assert 1 <= p.batch_small <= 300


# --------------------------------------------------------------------------- properties

models_st = st.builds(
    TimeModel,
    alpha=st.floats(1e-4, 0.1),
    beta=st.floats(1e-6, 1e-2),
)


@settings(max_examples=200, deadline=None)
@given(
    workers=st.integers(1, 8),
    data=st.data(),
    dataset_size=st.integers(100, 2_000_000),
    tau_frac=st.floats(0.0, 1.0),
    mixed=st.booleans(),
)
def test_property_equal_times_and_exact_sum(workers, data, dataset_size, tau_frac, mixed):
    if mixed:
        models = data.draw(st.lists(models_st, min_size=workers, max_size=workers))
        batches = data.draw(st.lists(st.integers(2, 2048), min_size=workers, max_size=workers))
    else:
        models = [data.draw(models_st)] * workers
        batches = [data.draw(st.integers(2, 2048))] * workers
    small = data.draw(st.integers(0, workers))
    if small:
        lo, hi, _ = feasible_tau_range(models, batches, small, dataset_size)
        assume(hi > lo)
        tau = lo + tau_frac * (hi - lo)
    else:
        tau = 1 + tau_frac
    try:
        p = plan_resolution(models, batches, small=small, tau=tau, dataset_size=dataset_size)
    except InfeasiblePlanError as err:
        assert "gets no data" in str(err)  # only rounding to 0 samples may still fail
        return
    b_exact = [p.batch_small_exact] * small + batches[small:]
    times = [m.epoch_seconds(d, b) for m, d, b in zip(models, p.shares_exact, b_exact)]
    for t in times:
        assert abs(t - p.epoch_seconds_exact) <= 1e-9 * p.epoch_seconds_exact
    assert sum(p.shares_exact) == pytest.approx(dataset_size, rel=1e-9)
    assert sum(p.shares) == dataset_size
    assert all(abs(s - e) < 1 for s, e in zip(p.shares, p.shares_exact))
    if small and p.small_batch_source == "reference":  # no fixed cost: the authors' fraction, within tau
        assert p.epoch_seconds_exact <= tau * p.baseline_epoch_seconds * (1 + 1e-9)
    else:
        expected_ratio = tau if small else 1.0
        assert p.epoch_seconds_exact == pytest.approx(expected_ratio * p.baseline_epoch_seconds, rel=1e-9)
    if small:
        assert 1 <= p.batch_small <= min(batches[:small])


@settings(max_examples=200, deadline=None)
@given(
    model=models_st,
    batch=st.integers(2, 2048),
    workers=st.integers(2, 8),
    data=st.data(),
    fracs=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_property_larger_tau_never_raises_small_batch(model, batch, workers, data, fracs):
    small = data.draw(st.integers(1, workers))
    lo, hi, _ = feasible_tau_range([model] * workers, [batch] * workers, small, 100_000)
    assume(hi > lo)
    t1, t2 = sorted(lo + f * (hi - lo) for f in fracs)
    p1 = plan_resolution([model] * workers, [batch] * workers, small=small, tau=t1, dataset_size=100_000)
    p2 = plan_resolution([model] * workers, [batch] * workers, small=small, tau=t2, dataset_size=100_000)
    assert p2.batch_small_exact <= p1.batch_small_exact * (1 + 1e-12)
    assert p2.batch_small <= p1.batch_small


# --------------------------------------------------------------------------- fit and apportion


def test_fit_recovers_exact_line():
    m = fit_time_model([(b, 0.02 + 0.001 * b) for b in (8, 16, 32, 64)])
    assert m.alpha == pytest.approx(0.02)
    assert m.beta == pytest.approx(0.001)
    assert m.r2 == pytest.approx(1.0)


def test_fit_r2_drops_with_noise():
    samples = [(8, 0.03), (16, 0.05), (32, 0.04), (64, 0.09)]
    m = fit_time_model(samples)
    assert 0 < m.r2 < 0.95
    # by hand: mean b = 30, mean t = 0.0525, sum db*dt = 1.78, sum db^2 = 1840
    assert m.beta == pytest.approx(1.78 / 1840, rel=1e-12)
    assert m.alpha == pytest.approx(0.0525 - 30 * 1.78 / 1840, rel=1e-12)


@pytest.mark.parametrize(
    ("samples", "pattern"),
    [
        ([(8, 0.1)], r"at least 2"),
        ([(8, 0.1), (8, 0.2)], r"2 distinct batch sizes"),
        ([(8, 0.1), (16, -0.2)], r"step time -0.2"),
        ([(8, 0.2), (16, 0.1)], r"fitted beta=.* < 0"),
        ([(0, 0.2), (16, 0.1)], r"batch size 0"),
    ],
)
def test_fit_errors(samples, pattern):
    with pytest.raises(ValueError, match=pattern):
        fit_time_model(samples)


def test_non_negative_fit_of_launch_bound_and_origin_bound_steps():
    """A launch-bound GPU step (flat in the batch, noise tipping the slope below zero) gives
    beta 0 and the mean time; a step without fixed cost gives alpha 0 and the best slope
    through the origin; a clean line is the free fit."""
    m = fit_nonnegative_time_model([(8, 0.003), (16, 0.0031), (32, 0.0029), (256, 0.00295)])
    assert m.beta == 0 and m.alpha == pytest.approx(0.0029875)
    m = fit_nonnegative_time_model([(8, 0.0001), (16, 0.0003), (32, 0.0008)])
    assert m.alpha == 0 and m.beta == pytest.approx((8 * 0.0001 + 16 * 0.0003 + 32 * 0.0008) / (64 + 256 + 1024))
    m = fit_nonnegative_time_model([(8, 0.001), (16, 0.0015), (32, 0.0025)])
    assert m.alpha == pytest.approx(0.0005) and m.beta == pytest.approx(6.25e-5) and m.r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"2 distinct batch sizes"):
        fit_nonnegative_time_model([(8, 0.1), (8, 0.2)])


def test_apportion():
    assert apportion([1.5, 1.5, 1.0], 4) == [2, 1, 1]
    assert apportion([0.2, 0.3, 0.5], 1) == [0, 0, 1]
    with pytest.raises(ValueError, match="not to total"):
        apportion([1.0, 1.0], 3)


# --------------------------------------------------------------------------- every device plans

# Time models measured so far (benchmarks/RESULTS.md): this 2-core CPU, small ResNet at 28 px
# (issue 17, dbl-ps compare); an H200, ResNet-18 bf16 at 28 px (launch-bound, issue 17's call 2);
# and the two degenerate fits the non-negative fit can return.
CPU_28 = TimeModel(alpha=0.00392, beta=0.0009346)
H200_28 = TimeModel(alpha=0.0066, beta=4.8e-6)
NO_FIXED_COST = TimeModel(alpha=0.0, beta=0.0009346)
FLAT = TimeModel(alpha=0.0066, beta=0.0)
DEVICES = {"cpu B_L 128": (CPU_28, 128), "cpu B_L 32": (CPU_28, 32), "h200": (H200_28, 512),
           "alpha 0": (NO_FIXED_COST, 128), "beta 0": (FLAT, 512)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tau", [1.0, 1.05, 1.1, 1.3])
def test_every_measured_time_model_plans_or_says_what_to_change(device, tau):
    model, b_large = DEVICES[device]
    for small in range(5):
        try:
            p = plan_resolution([model] * 4, [b_large] * 4, small=small, tau=tau, dataset_size=15000, resolution=28)
        except InfeasiblePlanError as err:
            assert "tau" in str(err)  # names the input to change
            continue
        assert sum(p.shares) == 15000 and min(p.shares) >= 1
        assert p.epoch_seconds_exact <= tau * p.baseline_epoch_seconds * (1 + 1e-9)
        if small:
            assert 1 <= p.batch_small <= b_large
            regime = p.regime()
            assert f"b_S = {p.batch_small} of B_L {b_large}" in regime.message
            assert "alpha/beta = " in regime.message and "\n" not in regime.message


def test_the_regime_of_each_device():
    kinds = {}
    for device, (model, b_large) in DEVICES.items():
        p = plan_resolution([model] * 4, [b_large] * 4, small=1, tau=1.1, dataset_size=15000, resolution=28)
        kinds[device] = p.regime().kind
    assert kinds == {"cpu B_L 128": "tiny-batch", "cpu B_L 32": "dual-batch", "h200": "launch-bound",
                     "alpha 0": "no-fixed-cost", "beta 0": "launch-bound"}
    cifar = plan_resolution([CIFAR32] * 4, [560] * 4, small=3, tau=1.05, dataset_size=50000)
    assert cifar.regime().kind == "dual-batch" and AUTHORS_BEST in cifar.regime().message


def test_tiny_batch_line_gives_the_numbers_and_the_way_out():
    p = plan_resolution([CPU_28] * 4, [128] * 4, small=1, tau=1.1, dataset_size=15000, resolution=28)
    assert p.batch_small == 7 and p.small_fraction == pytest.approx(7 / 128)
    line = p.regime().message
    assert line.startswith("DBSL at 28 px: b_S = 7 of B_L 128 (5%); alpha/beta = 4.19 samples")
    assert "dbl.batch_small" in line


def test_launch_bound_line_says_what_a_smaller_batch_costs():
    p = plan_resolution([H200_28] * 4, [512] * 4, small=1, tau=1.1, dataset_size=24000, resolution=28)
    line = p.regime().message
    needed = epoch_time_ratio([H200_28] * 4, [512] * 4, 1, 24000, 128)
    assert needed > 1.1 and f"b_S = 128 needs tau >= {math.ceil(needed * 1e4) / 1e4:g}" in line


def test_no_fixed_cost_takes_the_authors_fraction_and_equal_shares():
    """alpha = 0 (common on a busy CPU): a smaller batch costs no time, the formula gives b_S < 1.
    The plan takes the fraction the authors' time model gives for the same n_S, W, tau, and every
    worker finishes together, so the shares are equal."""
    p = plan_resolution([NO_FIXED_COST] * 4, [128] * 4, small=3, tau=1.1, dataset_size=15000, resolution=28)
    assert p.small_batch_source == "reference"
    assert p.batch_small == round(reference_small_fraction(4, 3, 1.1) * 128)
    assert p.shares == (3750,) * 4 and p.merge_weights == (1.0,) * 4
    assert p.regime().kind == "no-fixed-cost" and "cannot choose" in p.regime().message


def test_reference_fraction_is_the_authors_own_plan():
    for small, tau in [(1, 1.05), (2, 1.05), (3, 1.05), (1, 1.1), (3, 1.1)]:
        exact = cifar_plan(small, tau).batch_small_exact / 560
        assert reference_small_fraction(4, small, tau) == pytest.approx(exact, rel=1e-9)


# --------------------------------------------------------------------------- a chosen small batch


def test_chosen_small_batch_as_size_or_fraction_plans_equal_finish():
    by_size = plan_resolution([CPU_28] * 4, [128] * 4, small=1, tau=1.1, dataset_size=15000, batch_small=32)
    by_fraction = plan_resolution([CPU_28] * 4, [128] * 4, small=1, tau=1.1, dataset_size=15000, batch_small=0.25)
    assert by_size.shares == by_fraction.shares and by_size.batch_small == by_fraction.batch_small == 32
    p = by_size
    assert p.small_batch_source == "chosen" and p.regime().kind == "chosen"
    t = p.epoch_seconds_exact
    assert all(d * m.sample_seconds(b) == pytest.approx(t) for d, m, b in zip(p.shares_exact, p.time_models, p.batches))
    assert t <= 1.1 * p.baseline_epoch_seconds
    assert p.merge_weights[0] == pytest.approx(p.shares[0] / p.shares[1], rel=1e-3)


def test_chosen_small_batch_below_what_tau_allows_names_the_smallest_that_fits():
    formula = plan_resolution([H200_28] * 4, [512] * 4, small=1, tau=1.1, dataset_size=24000)
    with pytest.raises(InfeasiblePlanError, match=r"batch_small=128 with n_S=1 needs tau >= 1\.\d+ .* use "
                                                  rf"batch_small >= {formula.batch_small}"):
        plan_resolution([H200_28] * 4, [512] * 4, small=1, tau=1.1, dataset_size=24000, batch_small=128)
    # the formula's b_S is the smallest batch that fits tau: choosing it gives the formula's plan
    same = plan_resolution([H200_28] * 4, [512] * 4, small=1, tau=1.1, dataset_size=24000,
                           batch_small=formula.batch_small)
    assert abs(same.shares[0] - formula.shares[0]) <= 0.01 * formula.shares[0]


@pytest.mark.parametrize(("value", "pattern"), [(1.5, "whole batch size"), (0, "batch size"), (-0.2, "batch size"),
                                                (600, "above the small workers' largest batch"), (True, "batch size")])
def test_bad_chosen_small_batch(value, pattern):
    with pytest.raises(ValueError, match=pattern):
        plan_resolution([CIFAR32] * 4, [560] * 4, small=1, tau=1.05, dataset_size=50000, batch_small=value)


def test_chosen_small_batch_survives_plan_json_and_replanning():
    plan = make_plan({21: CPU_28, 28: CPU_28}, {21: 192, 28: 128}, 4, 3, 1.1, 15000, batch_small={21: 0.25, 28: 40})
    assert [plan[r].batch_small for r in (21, 28)] == [48, 40]
    again = plan_from_dict(plan.to_dict())
    assert again.to_dict() == plan.to_dict()
    slower = replan(plan, [1.0, 1.0, 1.0, 1.5])
    assert [slower[r].batch_small for r in (21, 28)] == [48, 40] and slower[28].shares[3] < plan[28].shares[3]
    d = plan.to_dict()
    assert d["small_fraction"] == [0.25, 40 / 128]
    assert d["per_resolution"]["28"]["regime"]["kind"] == "chosen"
    assert plan.regime_lines()[1].startswith("DBSL at 28 px: b_S = 40 of B_L 128 (31%), chosen with dbl.batch_small")


@settings(max_examples=300, deadline=None)
@given(alpha=st.floats(0, 0.05), beta=st.floats(0, 0.005), b_large=st.integers(1, 2048), small=st.integers(0, 4),
       tau=st.floats(1.0, 1.5), n=st.integers(4, 100000), chosen=st.one_of(st.none(), st.floats(0.01, 0.99)))
def test_any_nonnegative_time_model_plans_or_is_infeasible(alpha, beta, b_large, small, tau, n, chosen):
    assume(alpha + beta * b_large > 1e-9)
    try:
        p = plan_resolution([TimeModel(alpha, beta)] * 4, [b_large] * 4, small=small, tau=tau, dataset_size=n,
                            batch_small=chosen)
    except InfeasiblePlanError:
        return
    assert sum(p.shares) == n
    if small:
        assert p.regime() is not None and 1 <= p.batch_small <= b_large


def test_a_batch_above_a_workers_share_is_said_with_the_numbers():
    from dbl_ps.api import plan_ranks

    plan = plan_ranks(TimeModel(0.01, 0.001), batch_large=5000, dataset_size=4000, ranks=2, small=1, tau=1.1)
    (line,) = plan.batch_lines()
    share = plan.resolutions[0].shares[1]
    assert f"worker 1: batch 5000 > share {share} of 4000 samples" in line and "dbl.batch_large" in line
    assert line in plan.regime_lines()
    fits = plan_ranks(TimeModel(0.01, 0.001), batch_large=64, dataset_size=4000, ranks=2, small=1, tau=1.1)
    assert fits.batch_lines() == []


def test_measured_time_models_that_should_not_be_trusted_are_said():
    from dbl_ps.training.time_models import poor_fit_lines

    good, noisy = TimeModel(0.01, 0.001, r2=0.99), TimeModel(0.01, 0.001, r2=0.1)
    flat = TimeModel(0.02, 0.0, r2=0.0)
    assert poor_fit_lines({16: good, 12: [good, good]}) == []
    assert poor_fit_lines({16: [flat, flat]}) == []  # launch-bound everywhere: the regime line says it
    (line,) = poor_fit_lines({16: noisy})
    assert line.startswith("time model at 16 px: alpha 0.01 s, beta 0.001 s/sample fitted with R^2 = 0.10")
    (line,) = poor_fit_lines({16: [flat, good]})  # torchrun: each worker measured its own
    assert "worker(s) [0] measured no cost per sample (beta 0) and worker(s) [1] did" in line
