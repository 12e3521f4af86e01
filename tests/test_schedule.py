"""Tests of dbl_ps.schedule: the paper's schedules, the four methods, warm-up, the tracker."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbl_ps.schedule import (
    ScheduleSpec,
    ScheduleTracker,
    cifar100_paper,
    format_phases,
    imagenet_paper,
    phases,
    plot_schedule,
    schedule_at,
)


def test_cifar_paper_schedule_exact():
    spec = cifar100_paper("cpl")
    expected = [  # (start, end, resolution, lr)
        (0, 40, 24, 0.2),
        (40, 80, 32, 0.2),
        (80, 100, 24, 0.02),
        (100, 120, 32, 0.02),
        (120, 130, 24, 0.002),
        (130, 140, 32, 0.002),
    ]
    got = [(p.start, p.end, p.resolution, p.lr) for p in phases(spec)]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    assert [g[3] for g in got] == pytest.approx([e[3] for e in expected])
    for start, end, res, lr in expected:
        for e in (start, (start + end) / 2, end - 1e-9):
            point = schedule_at(e, spec)
            assert point.resolution == res, e
            assert point.lr == pytest.approx(lr)
            assert point.dropout == {24: 0.1, 32: 0.2}[res]
            assert point.batch_large == {24: 600, 32: 560}[res]
            assert point.batch_small is None
    assert schedule_at(140, spec).resolution == 32  # the end belongs to the last phase


def test_cifar_epoch_by_epoch_resolution():
    spec = cifar100_paper("cpl")
    res = [schedule_at(e, spec).resolution for e in range(140)]
    expected = [24] * 40 + [32] * 40 + [24] * 20 + [32] * 20 + [24] * 10 + [32] * 10
    assert res == expected
    assert [schedule_at(e, spec).lr_stage for e in (79, 80, 119, 120)] == [0, 1, 1, 2]


def test_imagenet_paper_schedule():
    spec = imagenet_paper("cpl")
    got = [(p.start, p.end, p.resolution, p.dropout) for p in phases(spec)]
    bounds = [0, 20, 40, 60, 70, 80, 90, 95, 100, 105]
    assert [g[0] for g in got] == bounds[:-1]
    assert [g[1] for g in got] == bounds[1:]
    assert [g[2] for g in got] == [160, 224, 288] * 3
    assert [g[3] for g in got] == [0.1, 0.2, 0.3] * 3
    assert schedule_at(59.5, spec).lr == pytest.approx(0.2)
    assert schedule_at(60, spec).lr == pytest.approx(0.02)
    assert schedule_at(104.9, spec).lr == pytest.approx(0.002)


def test_methods_are_same_function_different_inputs():
    base = cifar100_paper("baseline")
    dbsl = cifar100_paper("dbsl")
    cpl = cifar100_paper("cpl")
    hybrid = cifar100_paper("hybrid")
    assert [s.method for s in (base, dbsl, cpl, hybrid)] == ["baseline", "dbsl", "cpl", "hybrid"]
    assert base.resolutions == (32,) and base.batch_small is None
    assert dbsl.resolutions == (32,) and dbsl.batch_small == (102,)  # the paper's check value
    assert hybrid.batch_small[1] == 102
    assert hybrid.batch_small[0] > hybrid.batch_small[1]  # 24 px is cheaper per sample
    for e in (0, 50, 90, 135):
        assert schedule_at(e, base).resolution == 32
        assert schedule_at(e, base).lr == schedule_at(e, hybrid).lr
        assert schedule_at(e, cpl).resolution == schedule_at(e, hybrid).resolution
    assert schedule_at(10, hybrid).batch_small == hybrid.batch_small[0]
    assert schedule_at(50, hybrid).batch_small == 102


def test_warmup():
    spec = dataclasses.replace(cifar100_paper("baseline"), warmup_epochs=5, warmup_start_factor=0.0)
    assert schedule_at(0, spec).lr == 0.0
    assert schedule_at(2.5, spec).lr == pytest.approx(0.1)
    assert schedule_at(5, spec).lr == pytest.approx(0.2)
    assert "warm-up" in format_phases(spec)


def test_non_cyclic_progressive():
    spec = dataclasses.replace(cifar100_paper("cpl"), cyclic=False)
    got = [(p.start, p.end, p.resolution, p.lr_stage) for p in phases(spec)]
    assert got == [(0, 70, 24, 0), (70, 80, 32, 0), (80, 120, 32, 1), (120, 140, 32, 2)]


def test_phases_are_whole_epochs_with_the_remainder_to_higher_resolutions():
    # Runtimes change resolution between epochs, so a 10-epoch stage of 3 resolutions is 3/3/4.
    spec = ScheduleSpec(epochs=10, base_lr=0.1, resolutions=(8, 12, 16), batch_large=(64, 64, 64))
    assert [(p.start, p.end, p.resolution) for p in phases(spec)] == [(0, 3, 8), (3, 6, 12), (6, 10, 16)]
    assert schedule_at(2.9, spec).resolution == 8
    assert schedule_at(3, spec).resolution == 12


def test_a_stage_shorter_than_the_cycle_keeps_its_highest_resolutions():
    # Stages [0, 6), [6, 9), [9, 10) with 3 resolutions: 2/2/2, 1/1/1, then only the top one,
    # so the run ends at the resolution it is evaluated at (it ended at 8 px before).
    spec = ScheduleSpec(epochs=10, base_lr=0.1, milestones=(6, 9), resolutions=(8, 12, 16), batch_large=(64, 64, 64))
    got = [(p.start, p.end, p.resolution, p.lr_stage) for p in phases(spec)]
    assert got == [(0, 2, 8, 0), (2, 4, 12, 0), (4, 6, 16, 0), (6, 7, 8, 1), (7, 8, 12, 1), (8, 9, 16, 1),
                   (9, 10, 16, 2)]
    two = dataclasses.replace(spec, epochs=11)  # last stage [9, 11): 12 then 16
    assert [p.resolution for p in phases(two)][-2:] == [12, 16]
    assert all(float(p.start).is_integer() for p in phases(two))


@given(st.floats(0, 140))
def test_point_agrees_with_phase_table(epoch):
    spec = cifar100_paper("hybrid")
    point = schedule_at(epoch, spec)
    phase = phases(spec)[point.phase]
    assert phase.start <= epoch <= phase.end
    assert (phase.resolution, phase.dropout, phase.batch_large, phase.batch_small) == (
        point.resolution,
        point.dropout,
        point.batch_large,
        point.batch_small,
    )
    assert phase.lr == pytest.approx(point.lr)


def test_tracker_reports_changes():
    tracker = ScheduleTracker(cifar100_paper("hybrid"))
    _, changed = tracker.update(0)
    assert changed == set(ScheduleTracker.WATCHED)
    _, changed = tracker.update(10)
    assert changed == set()
    point, changed = tracker.update(40)
    assert changed == {"resolution", "dropout", "batch_large", "batch_small"}
    assert point.resolution == 32
    _, changed = tracker.update(80)
    assert changed == {"lr", "resolution", "dropout", "batch_large", "batch_small"}
    metrics = point.metrics()
    assert metrics["schedule/resolution"] == 32
    assert metrics["schedule/batch_small"] == 102


def test_spec_defaults_fit_any_number_of_resolutions_and_one_value_means_all():
    # what a user writes from docs/API.md: no per-resolution value given
    spec = ScheduleSpec(epochs=6, base_lr=0.05, resolutions=(20, 28))
    assert (spec.batch_large, spec.dropouts, spec.batch_small) == ((128, 128), (0.0, 0.0), None)
    assert schedule_at(5.5, spec).resolution == 28
    spec = ScheduleSpec(epochs=6, base_lr=0.05, resolutions=(16, 24, 32), dropouts=0.1, batch_large=(64,),
                        batch_small=16)
    assert (spec.dropouts, spec.batch_large, spec.batch_small) == ((0.1,) * 3, (64,) * 3, (16,) * 3)
    assert spec.method == "hybrid"


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"epochs": 0}, r"epochs=0 must be > 0"),
        ({"milestones": (80, 40)}, r"milestones=\[80, 40\] must increase"),
        ({"milestones": (150,)}, r"must increase strictly inside \(0, epochs=140\)"),
        ({"gamma": 0}, r"gamma=0 must be in \(0, 1\]"),
        ({"resolutions": (32, 24)}, r"low to high"),
        ({"dropouts": (0.1, 0.2, 0.3)}, r"dropouts has 3 entries for 2 resolutions .* one value for all"),
        ({"dropouts": (0.1, 1.0)}, r"dropout 1.0 must be in \[0, 1\)"),
        ({"batch_small": (700, 100)}, r"batch_small=\[700, 100\] must not exceed"),
        ({"batch_large": (600, 500, 400)}, r"batch_large has 3 entries"),
        ({"warmup_epochs": 90}, r"warmup_epochs=90"),
    ],
)
def test_spec_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        dataclasses.replace(cifar100_paper("hybrid"), **kwargs)


def test_epoch_out_of_range():
    with pytest.raises(ValueError, match=r"epoch=141 must be a number in \[0, epochs=140\]"):
        schedule_at(141, cifar100_paper())
    with pytest.raises(ValueError, match=r"method='foo' must be one of"):
        cifar100_paper("foo")


def test_plot_writes_png(tmp_path):
    path = tmp_path / "schedule.png"
    plot_schedule(imagenet_paper("hybrid"), str(path), points=200)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_new_phases_of_the_papers_cifar_run():
    """The authors' workers recompile (restarting momentum) at every LR or resolution change:
    24 px 0-40, 32 px 40-80, 24 px 80-100, 32 px 100-120, 24 px 120-130, 32 px 130-140."""
    from dbl_ps.schedule import ScheduleSpec, starts_phase

    spec = ScheduleSpec(epochs=140, base_lr=0.2, milestones=(80, 120), gamma=0.1, warmup_epochs=0,
                        warmup_start_factor=0.1, resolutions=(24, 32), dropouts=(0.1, 0.2), batch_large=(600, 560),
                        batch_small=None, cyclic=True)
    assert [e for e in range(140) if starts_phase(e, spec)] == [40, 80, 100, 120, 130]
