"""The remedies users pick against the large-batch gap, as config and as comparison methods:
SWA of the global model and post-local SGD; and the noise scale's regime line in a run."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from dbl_ps.commands.compare import LOCAL_SGD_EVERY, method_label, parse_method, variant
from dbl_ps.config import ConfigError, load_config
from dbl_ps.metrics import read_metrics
from dbl_ps.models import build_model
from dbl_ps.runtime import Trainer
from dbl_ps.schedule import ScheduleSpec, lr_at
from dbl_ps.training.algorithms import PostLocalSGD, post_local_period, worker_callbacks
from dbl_ps.training.noise import GradientNormMeter
from dbl_ps.training.rundir import EVAL_MODEL_FILE, MODEL_FILE
from dbl_ps.training.steps import sync_boundaries
from dbl_ps.training.swa import SWA_FILE, swa_start_epoch
from launch_helpers import RUN, torchrun_train

# digits, 2 workers, a fixed time model; bsp average: a deterministic run (and resume)
BASE = ["dbl.workers=2", "dbl.small=0", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.warmup_epochs=0",
        "schedule.lr=0.05", "schedule.epochs=3", "schedule.milestones=[2]", "schedule.resolutions=[16]",
        "model.dropout=[0.0]", "dbl.batch_large=[64]", "store.mode=bsp", "store.rule=average"]


def train(overrides: list[str], run_dir: Path, lines: list[str] | None = None) -> dict:
    cfg = load_config(None, [*BASE, *overrides])
    return Trainer(cfg, run_dir, progress=False, log=_keep(lines)).train()


def resume(run_dir: Path, lines: list[str]) -> dict:
    return Trainer.resume(run_dir, progress=False, log=_keep(lines)).train()


def _keep(lines: list[str] | None):
    """A log callback keeping each console line (a message may hold several)."""
    return (lambda message: lines.extend(message.splitlines())) if lines is not None else (lambda message: None)


# ------------------------------------------------------------ the pure parts

def test_swa_start_and_its_learning_rate():
    assert swa_start_epoch(0.75, 12) == 9 and swa_start_epoch(3, 12) == 3 and swa_start_epoch(0.99, 4) == 3
    held = ScheduleSpec(epochs=12, base_lr=0.1, milestones=(7, 10), swa_start=9)
    assert [lr_at(e, held) for e in (6, 7, 9, 10, 11)] == pytest.approx([0.1, 0.01, 0.01, 0.01, 0.01])
    annealed = ScheduleSpec(epochs=12, base_lr=0.1, milestones=(7, 10), swa_start=9, swa_lr=0.05, swa_anneal_epochs=2)
    assert [lr_at(e, annealed) for e in (9, 10, 11)] == pytest.approx([0.01, 0.03, 0.05])  # SWALR's cosine
    with pytest.raises(ValueError, match="swa_start=12"):
        ScheduleSpec(epochs=12, base_lr=0.1, swa_start=12)


def test_swa_and_post_local_config_errors_name_the_key_before_any_work():
    with pytest.raises(ConfigError, match="swa.start.*epoch 1..2"):
        load_config(None, [*BASE, "swa.enabled=true", "swa.start=3"])
    with pytest.raises(ConfigError, match="eval.recalibrate_bn"):
        load_config(None, [*BASE, "swa.enabled=true", "eval.recalibrate_bn=false"])
    with pytest.raises(ConfigError, match="store.post_local_start.*no milestone"):
        load_config(None, [*BASE, "store.post_local_every=2", "schedule.milestones=[]"])
    with pytest.raises(ConfigError, match="store.post_local_start.*unless store.post_local_every"):
        load_config(None, [*BASE, "store.post_local_start=1"])


def test_post_local_period_switches_at_its_epoch():
    assert [post_local_period(e, start=2, every=4, before=1) for e in range(4)] == [1, 1, 4, 4]


def test_compare_methods_of_the_remedies():
    cfg = load_config("fashion_mnist_large_batch", ["data.path=/nonexistent"])
    assert parse_method("dbsl:3+swa") == ("dbsl", 3, True) and method_label("dbsl:3+swa") == "dbsl-n3-swa"
    assert parse_method("swa") == ("swa", None, False) and method_label("local-sgd") == "local-sgd"
    for bad in ("baseline+swa", "dbsl:3+ema", "swa:2", "local-sgd+swa"):
        with pytest.raises(ValueError, match="with \\+swa after dbsl or hybrid"):
            parse_method(bad)
    swa = variant(cfg, "swa", 0)
    assert swa.swa.enabled and swa.dbl.small == 0 and swa.schedule.resolutions == [14] and swa.store.mode == "asp"
    both = variant(cfg, "dbsl:3+swa", 1)
    assert both.swa.enabled and both.dbl.small == 3 and both.name == "dbsl-n3-swa" and both.seed == 1
    local = variant(cfg, "local-sgd", 0)
    assert (local.store.mode, local.store.rule, local.store.sync_every) == ("bsp", "average", 1)
    assert local.store.post_local_every == cfg.store.post_local_every == 2 and not local.swa.enabled
    own = load_config(None, ["store.post_local_every=null"])
    assert variant(own, "local-sgd", 0).store.post_local_every == LOCAL_SGD_EVERY
    # the remedies are what their methods add: a config that sets them (the large-batch config
    # gives local-sgd its period) does not pass them to the other methods
    with_both = load_config("fashion_mnist_large_batch", ["data.path=/nonexistent", "swa.enabled=true"])
    for method in ("baseline", "dbsl:3", "hybrid:3", "plain", "ddp-like"):
        other = variant(with_both, method, 0)
        assert not other.swa.enabled and other.store.post_local_every is None, method
    assert variant(with_both, "dbsl:3+swa", 0).store.post_local_every is None


# ------------------------------------------------------------ short runs

@pytest.fixture(scope="module")
def swa_run(tmp_path_factory) -> dict:
    """SWA from epoch 1 of 3, stopped after epoch 1 (that checkpoint's files kept aside) and
    resumed to the end; the console lines of each part."""
    root = tmp_path_factory.mktemp("swa")
    run_dir, first, second = root / "run", [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DBL_PS_STOP_AFTER_EPOCH", "1")
        train(["swa.enabled=true", "swa.start=1"], run_dir, first)
    stopped = root / "epoch1"
    shutil.copytree(run_dir / "checkpoints" / "epoch00001", stopped)
    resume(run_dir, second)
    return {"run": run_dir, "first": first, "second": second, "stopped": stopped}


def _params(state: dict, model: torch.nn.Module) -> dict:
    names = {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def test_a_short_swa_run_evaluates_the_average_of_the_last_epochs_and_a_resume_averages_on(swa_run):
    model = build_model("small_resnet", 10, in_channels=1)
    last = swa_run["run"] / "checkpoints" / "epoch00002"
    records = read_metrics(swa_run["run"])
    assert [r.get("swa_models") for r in records] == [None, 1, 2]
    assert [r["lr"] for r in records] == pytest.approx([0.05, 0.05, 0.05])  # held at swa.start's, not x0.1 at 2
    assert int(torch.load(swa_run["stopped"] / SWA_FILE, weights_only=True)["n_averaged"]) == 1
    final = torch.load(last / SWA_FILE, weights_only=True)
    assert int(final["n_averaged"]) == 2  # the resumed part went on with the saved average
    # ... the mean of the global models of epochs 1 and 2
    epoch1 = _params(torch.load(swa_run["stopped"] / MODEL_FILE, weights_only=True), model)
    epoch2 = _params(torch.load(last / MODEL_FILE, weights_only=True), model)
    average = {k[len("module."):]: v for k, v in final.items() if k.startswith("module.")}
    for name in epoch1:
        torch.testing.assert_close(average[name], (epoch1[name] + epoch2[name]) / 2)
    # the evaluated model (model_eval.pt) is that average, with recomputed BatchNorm statistics
    evaluated = torch.load(last / EVAL_MODEL_FILE, weights_only=True)
    assert all(torch.equal(evaluated[k], average[k]) for k in epoch1)
    assert not torch.equal(evaluated["stem.1.running_mean"], average["stem.1.running_mean"])
    assert records[-1]["test_acc"] > 0.3


def test_the_regime_line_after_the_first_measured_epoch_and_when_a_run_resumes(swa_run):
    first = [line for line in swa_run["first"] if line.startswith("gradient noise scale")]
    assert len(first) == 1 and first[0].startswith("gradient noise scale (epoch 1): B_noise = ")
    assert "B_L 64 is" in first[0]
    at_resume = [line for line in swa_run["second"] if line.startswith("gradient noise scale")]
    assert len(at_resume) == 1 and at_resume[0].endswith("(the last measured before this resume)")
    assert "(epoch 2)" in at_resume[0]  # the last epoch the stopped part measured
    records = read_metrics(swa_run["run"])
    assert all(r["noise_source"] == "probe" and r["noise_batches"] == [8, 64] for r in records)
    assert all(isinstance(r["b_noise"], float) and r["b_noise"] > 0 for r in records)


def test_a_dbsl_run_measures_the_noise_scale_from_its_workers(tmp_path):
    lines: list[str] = []
    summary = train(["dbl.small=1", "schedule.epochs=2", "schedule.milestones=[1]", "eval.every=2"],
                    tmp_path / "run", lines)
    records = read_metrics(tmp_path / "run")
    batches = sorted(w["batch"] for w in records[0]["workers"])
    assert batches[0] < batches[1]
    for r in records:  # every epoch, evaluated or not: the workers' steps are the measurement
        assert r["noise_source"] == "workers" and r["noise_batches"] == batches
        assert all(w["grad_sq"] > 0 for w in r["workers"])
    noise = [line for line in lines if line.startswith("gradient noise scale (epoch 1)")]
    assert len(noise) == 1 and f"b_S {batches[0]} is" in noise[0]
    assert summary["noise_regime"].startswith("gradient noise scale (epoch ")  # the last one resolved


def test_the_config_asks_the_workers_for_what_it_measures_and_nothing_else():
    assert worker_callbacks(load_config(None, ["noise_scale.measure=false"])) == []
    (meter,) = worker_callbacks(load_config(None, []))
    assert isinstance(meter, GradientNormMeter)
    local, meter = worker_callbacks(load_config(None, [*BASE, "store.post_local_every=3"]))
    assert isinstance(local, PostLocalSGD) and (local.start, local.every, local.before) == (2, 3, "mini_epoch")


def _syncs(run_dir: Path) -> list[list[int]]:
    return [[w["syncs"] for w in r["workers"]] for r in read_metrics(run_dir)]


def test_a_short_local_sgd_run_merges_every_step_until_the_milestone_then_every_k(tmp_path):
    train(["store.sync_every=1", "store.post_local_every=3"], tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    steps = [[w["steps"] for w in r["workers"]] for r in records]
    expected = [[len(sync_boundaries(s, 1 if e < 2 else 3, "bsp", row)) for s in row] for e, row in enumerate(steps)]
    assert _syncs(tmp_path / "run") == expected
    assert expected[0] == steps[0] and expected[2][0] == math.ceil(max(steps[2]) / 3) < steps[2][0]


@pytest.mark.slow  # a torchrun launch (~40 s here); the store mode's run above covers the period switch
def test_local_sgd_under_torchrun_syncs_as_the_store_mode_does(tmp_path):
    args = [*RUN, "dbl.small=0", "schedule.epochs=3", "store.mode=bsp", "store.rule=average", "store.sync_every=1",
            "store.post_local_every=3"]
    proc = torchrun_train(2, "--no-progress", "--run-dir", str(tmp_path / "ranks"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(tmp_path / "ranks")
    steps = [r["workers"][0]["steps"] for r in records]
    assert _syncs(tmp_path / "ranks") == [[s, s] for s in steps[:2]] + [[math.ceil(steps[2] / 3)] * 2]
