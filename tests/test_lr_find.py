"""The LR range test (`dbl_ps.training.lr_find`) on known loss curves, and `dbl-ps lr-find`
on the run's own model and data, writing the suggestion into the user's config."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dbl_ps.commands.lr_find import write_schedule_lr
from dbl_ps.config import load_config
from dbl_ps.training.lr_find import lr_ramp, lr_range_test, smooth_losses, suggest_lr


def valley(lr: float) -> float:
    """A range test's loss curve: flat at 2.3 for small LRs, falling over two decades to its
    lowest at lr 0.3, then rising steeply (the model is being destroyed)."""
    x = math.log10(lr)
    if x <= -2.5:
        return 2.3
    if x <= math.log10(0.3):
        return 2.3 - 1.5 * (x + 2.5) / (math.log10(0.3) + 2.5)
    return 0.8 + 40 * (x - math.log10(0.3)) ** 2


def test_the_ramp_is_exponential_from_min_to_max():
    lrs = lr_ramp(1e-6, 10.0, 8)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(10.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(10.0) for r in ratios)
    for bad in ((0.0, 1.0, 10), (1.0, 0.1, 10), (1e-6, 1.0, 1)):
        with pytest.raises(ValueError):
            lr_ramp(*bad)


def test_the_moving_average_is_bias_corrected_and_lags():
    assert smooth_losses([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    lrs = lr_ramp(1e-3, 1.0, 301)
    step = [1.0 if lr < 0.03 else 0.0 for lr in lrs]  # a drop at 0.03
    late = next(lr for lr, v in zip(lrs, smooth_losses(step)) if v < 0.5)
    assert late > 0.03 * 2  # the average sees it about 1/(1 - beta) = 50 steps later (the factor 10 allows for it)


def test_the_suggestion_is_a_tenth_of_the_lowest_smoothed_losss_lr_and_the_test_stops_on_divergence():
    seen: list[float] = []

    def step(lr: float) -> float:
        seen.append(lr)
        return valley(lr)

    finding = lr_range_test(step, min_lr=1e-5, max_lr=100.0, steps=300)
    assert finding.stop == "diverged" and len(seen) < 300 and seen[-1] < 100.0  # stopped early
    assert 0.3 <= finding.min_loss_lr <= 3.0  # the raw losses' lowest is at 0.3; the average lags behind it
    assert finding.suggestion == pytest.approx(finding.min_loss_lr / 10)
    assert finding.steepest_lr is not None and 10 ** -2.5 <= finding.steepest_lr <= finding.min_loss_lr
    steepest = lr_range_test(valley, min_lr=1e-5, max_lr=100.0, steps=300, method="steepest")
    assert steepest.suggestion == steepest.steepest_lr
    assert not finding.still_falling and finding.lrs == tuple(seen)
    assert finding.smoothed == pytest.approx(smooth_losses(finding.losses))


def test_a_nan_loss_stops_the_test_and_a_curve_that_never_turns_says_so():
    finding = lr_range_test(lambda lr: math.nan if lr > 0.5 else valley(lr), min_lr=1e-5, max_lr=10.0, steps=200)
    assert finding.stop == "not finite" and math.isnan(finding.losses[-1]) and finding.suggestion is not None
    falling = lr_range_test(lambda lr: 2.0 - 0.1 * math.log10(lr / 1e-6), min_lr=1e-6, max_lr=1e-3, steps=60)
    assert falling.stop == "all steps" and falling.still_falling
    assert suggest_lr([0.1] * 5, [1.0] * 5) == (None, None, None)  # too short to say
    with pytest.raises(ValueError, match="method"):
        suggest_lr([0.1] * 20, [1.0] * 20, method="valley")


def test_write_schedule_lr_keeps_every_other_line_and_comment(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("# my run\nname: mine   # keep me\nschedule:\n  epochs: 6   # six\n  lr: 0.1  # was\n"
                    "  resolutions: [28]\ndbl:\n  batch_large: 64\n")
    write_schedule_lr(path, 0.012345)
    assert path.read_text() == ("# my run\nname: mine   # keep me\nschedule:\n  epochs: 6   # six\n  lr: 0.0123  # was\n"
                                "  resolutions: [28]\ndbl:\n  batch_large: 64\n")
    # a schedule section without lr gets it as its first key; a file without one gets the section
    path.write_text("schedule:\n    epochs: 6\nname: x\n")
    write_schedule_lr(path, 0.5)
    assert path.read_text() == "schedule:\n    lr: 0.5\n    epochs: 6\nname: x\n"
    path.write_text("name: x\n")
    write_schedule_lr(path, 0.02)
    assert load_config(path).schedule.lr == 0.02 and path.read_text().startswith("name: x\n")
    # a one-line flow mapping, as the README's example writes it
    path.write_text("schedule: {epochs: 6, lr: 0.1, resolutions: [28]}   # six\n")
    write_schedule_lr(path, 0.02)
    assert path.read_text() == "schedule: {epochs: 6, lr: 0.02, resolutions: [28]}   # six\n"
    path.write_text("name: x\nschedule: {epochs: 6, resolutions: [28]}\n")
    write_schedule_lr(path, 0.0025)
    assert path.read_text() == "name: x\nschedule: {lr: 0.0025, epochs: 6, resolutions: [28]}\n"
    assert load_config(path).schedule.lr == 0.0025
    # what cannot be edited as text is refused and the file left as it was
    path.write_text("schedule: {epochs: 6,\n  lr: 0.1}\n")
    with pytest.raises(ValueError, match="set schedule.lr by hand"):
        write_schedule_lr(path, 0.02)
    assert path.read_text() == "schedule: {epochs: 6,\n  lr: 0.1}\n"
    path.write_text("schedule:\n  epochs: 6\nnot_a_key: 1\n")
    with pytest.raises(ValueError, match="not a valid config"):
        write_schedule_lr(path, 0.02)
    assert path.read_text() == "schedule:\n  epochs: 6\nnot_a_key: 1\n" and len(list(tmp_path.iterdir())) == 1


def test_lr_find_on_the_runs_own_model_and_data_writes_its_suggestion_into_the_config(tmp_path: Path):
    """The real command on digits (small ResNet, the run's batch and augmentation): a plot, the
    JSON, and the suggestion in the user's YAML, which then loads as that run's schedule.lr."""
    config = tmp_path / "run.yaml"
    config.write_text("# digits, mine\nschedule:\n  epochs: 4\n  lr: 0.1\ndbl:\n  workers: 2\n")
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "lr-find", "--config", str(config), "--steps", "60",
                           "--min-lr", "1e-4", "--max-lr", "30", "--out", str(tmp_path / "out"), "--write",
                           "threads_per_worker=1"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "lr_find.json").read_text())
    assert (record["model"], record["batch"], record["resolution"]) == ("small_resnet", 64, 16)
    assert len(record["lrs"]) == len(record["losses"]) <= 60 and record["suggestion"] > 0
    assert (tmp_path / "out" / "lr_find.png").stat().st_size > 10_000
    written = load_config(config).schedule.lr
    assert written == pytest.approx(record["suggestion"], rel=1e-2) and written != 0.1
    assert config.read_text().startswith("# digits, mine\nschedule:\n  epochs: 4\n  lr: ")
    assert f"suggested schedule.lr {written:.3g}" in proc.stdout and f"written to {config}" in proc.stdout
    # bad arguments: one line, before anything is loaded or trained
    for args, message in ((["--resolution", "99"], "--resolution 99: give one of schedule.resolutions [12, 16]"),
                          (["--write"], "--write writes into the --config file, and there is none here"),
                          (["--write-to", str(tmp_path)], f"--write-to {tmp_path}: that is a folder")):
        bad = subprocess.run([sys.executable, "-m", "dbl_ps", "lr-find", *args], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
