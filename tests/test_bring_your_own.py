"""Bring your own model and recipe: `dbl-ps train` with torchvision's ResNet-18 and with a
user's module written to a temporary folder, in the store mode and under torchrun; the
recipe options (AdamW, label smoothing, bf16 autocast, channels_last); every bad input
is one error line before any worker starts."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbl_ps.metrics import read_metrics
from launch_helpers import free_port

# 2 epochs of 256 digits at 12 then 16 px, 2 workers (one small), a fixed time model.
TINY = ["schedule.epochs=2", "schedule.milestones=[]", "schedule.warmup_epochs=0", "dbl.workers=2", "dbl.small=1",
        "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "data.train_limit=256", "data.test_limit=200"]

USER_MODELS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's model: no nn.Dropout, a linear head."""

    def __init__(self, num_classes, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def build(num_classes, width=8):
    return TinyNet(num_classes, width)


def three_outputs(num_classes):
    return TinyNet(3)


def not_a_module(num_classes):
    return "a string"


class Squares(torch.utils.data.Dataset):
    """A user's own dataset: 12x12 grayscale uint8 images, the label is where a bright square is."""

    classes = ["left", "middle", "right"]

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.noise = torch.randint(0, 60, (n, 1, 12, 12), generator=g, dtype=torch.uint8)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.noise[i].clone()
        c = int(self.labels[i]) * 4
        x[:, 4:8, c:c + 4] = 250
        return x, int(self.labels[i])


def squares():
    return Squares(240, seed=0), Squares(90, seed=1)
'''


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def train(cwd: Path, run_dir: Path, *overrides: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    """`dbl-ps train` started in `cwd` (the console script, as a user types it), or under torchrun."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_port",
               str(free_port()), "-m", "dbl_ps", "train"]
    else:
        cmd = [shutil.which("dbl-ps") or "dbl-ps", "train"]
    return subprocess.run([*cmd, "--no-progress", "--run-dir", str(run_dir), *TINY, *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env())


def finished(proc: subprocess.CompletedProcess, run_dir: Path) -> list[dict]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    return read_metrics(run_dir)


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_models.py").write_text(USER_MODELS)
    return folder


# ~22 s: a torchvision model through `dbl-ps train` (built, calibrated and stepped in-process by the tests below)
@pytest.mark.parametrize("torchrun", [pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)],
                         ids=["store", "torchrun"])
def test_torchvision_resnet18_with_cifar_stem(tmp_path: Path, torchrun: int) -> None:
    run_dir = tmp_path / "run"
    # digits' own 8 px and 128 images: ResNet-18 (11 M parameters) is slow on a CPU
    proc = train(tmp_path, run_dir, "model.name=torchvision.models:resnet18", "model.cifar_stem=true",
                 "schedule.resolutions=[8]", "model.dropout=[0.0]", "data.train_limit=128", torchrun=torchrun)
    records = finished(proc, run_dir)
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(0.0 <= r["test_acc"] <= r["test_acc5"] <= 1.0 for r in records)
    state = torch.load(run_dir / "checkpoints" / "epoch00001" / "model.pt", map_location="cpu")
    from torchvision.models import resnet18

    # torchvision's keys, the CIFAR stem, grayscale digits fed through the 3-channel stem
    assert state.keys() == resnet18(num_classes=10).state_dict().keys()
    assert state["conv1.weight"].shape == (64, 3, 3, 3)


# under torchrun a user's module is also imported by every rank in test_user_model_and_dataset_from_a_factory
@pytest.mark.parametrize("torchrun", [0, pytest.param(2, marks=pytest.mark.slow)], ids=["store", "torchrun"])
def test_user_model_from_the_current_directory(user_folder: Path, tmp_path: Path, torchrun: int) -> None:
    """A model in my_models.py next to where the run starts, with kwargs and no dropout of its own:
    every worker process (or rank) imports it, the schedule's dropout goes before its head."""
    run_dir = tmp_path / "run"
    proc = train(user_folder, run_dir, "model.name=my_models:build", "model.kwargs={width: 6}",
                 "model.dropout=[0.0, 0.2]", torchrun=torchrun)
    records = finished(proc, run_dir)
    assert [r["dropout"] for r in records] == [0.0, 0.2]
    state = torch.load(run_dir / "checkpoints" / "epoch00001" / "model.pt", map_location="cpu")
    assert state["head.weight"].shape == (10, 24)  # width 6 reached the user's callable
    assert all(math.isfinite(r["train_loss"]) for r in records)


@pytest.mark.parametrize(("torchrun", "extra"), [pytest.param(0, ["data.num_workers=1"], marks=pytest.mark.slow),
                                                (2, ["data.mixup_alpha=0.4"])],
                         ids=["store-dataloader-process", "torchrun-mixup"])
def test_user_model_and_dataset_from_a_factory(user_folder: Path, tmp_path: Path, torchrun: int,
                                               extra: list[str]) -> None:
    """data.factory returning the user's Dataset class, read sample by sample by every worker
    (through a DataLoader process in the store mode; MixUp's soft labels under torchrun)."""
    run_dir = tmp_path / "run"
    proc = train(user_folder, run_dir, "model.name=my_models:build", "data.factory=my_models:squares",
                 "data.train_limit=null", "data.test_limit=null", "schedule.resolutions=[12]", "model.dropout=[0.1]",
                 "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", *extra, torchrun=torchrun)
    records = finished(proc, run_dir)
    assert sum(w["samples"] for w in records[0]["workers"]) == 240  # every sample once per epoch, in the shares
    assert records[-1]["test_acc"] is not None and records[-1]["test_acc5"] is None  # 3 classes: no top-5
    state = torch.load(run_dir / "checkpoints" / "epoch00001" / "model.pt", map_location="cpu")
    assert state["head.weight"].shape == (3, 32)  # the factory's 3 classes reached the model


@pytest.mark.slow  # the engine-level test below drives each option; this is the whole run
def test_recipe_options_train(tmp_path: Path) -> None:
    """AdamW, label smoothing, bf16 autocast and channels_last together (CPU: bf16 autocast runs there too)."""
    run_dir = tmp_path / "run"
    proc = train(tmp_path, run_dir, "optim.name=adamw", "schedule.lr=0.003", "optim.weight_decay=0.05",
                 "loss.label_smoothing=0.1", "precision=bf16", "channels_last=true")
    records = finished(proc, run_dir)
    assert all(math.isfinite(r["train_loss"]) for r in records)
    saved = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    assert saved["optim"]["name"] == "adamw" and saved["precision"] == "bf16"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.name=no_such_module_xyz:build"], "model.name='no_such_module_xyz:build': module 'no_such_module_xyz' "
                                                  "does not import (ModuleNotFoundError"),
        (["model.name=my_models:nothing_here"], "'my_models' has no attribute 'nothing_here'"),
        (["model.name=my_models:not_a_module"], "model.name='my_models:not_a_module' returned a str, not a torch nn.Module"),
        (["model.name=my_models:three_outputs"], "gives outputs of shape (2, 3) for 2 images, expected (2, 10): "
                                                 "the data has 10 classes"),
        (["model.name=my_models:build", "model.kwargs={depth: 3}"], "could not be called with num_classes=10 and "
                                                                    "model.kwargs={'depth': 3}: TypeError"),
        (["imports=[not_installed_plugin_xyz]"], "imports[0]='not_installed_plugin_xyz': module "
                                                 "'not_installed_plugin_xyz' does not import"),
    ],
    ids=["no-module", "no-attribute", "not-a-module", "wrong-classes", "bad-kwargs", "bad-imports"],
)
def test_bad_model_is_one_error_before_any_worker_starts(user_folder: Path, tmp_path: Path, overrides: list[str],
                                                         expected: str) -> None:
    run_dir = tmp_path / "run"
    proc = train(user_folder, run_dir, *overrides)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dbl-ps train: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()  # nothing started: no run directory, no metrics, no store


@pytest.mark.parametrize(
    ("options", "optimizer", "out_dtype"),
    [
        ({}, torch.optim.SGD, torch.float32),
        ({"optim": {"name": "adamw"}, "loss": {"label_smoothing": 0.1}}, torch.optim.AdamW, torch.float32),
        ({"precision": "bf16", "channels_last": True}, torch.optim.SGD, torch.bfloat16),
        ({"precision": "fp16"}, torch.optim.SGD, torch.float16),
    ],
    ids=["sgd-fp32", "adamw-smoothing", "bf16-channels-last", "fp16-scaler"],
)
def test_torch_engine_recipe_learns_a_batch(options: dict, optimizer: type, out_dtype: torch.dtype) -> None:
    """Each recipe drives the engine it names (optimizer, autocast dtype, memory format, loss
    scaling) and fits one fixed batch; weights stay fp32."""
    from dbl_ps.config import RunConfig
    from dbl_ps.models import build_model
    from dbl_ps.training.engine import TorchEngine
    from dbl_ps.training.topology import Topology

    cfg = RunConfig.from_dict({**RunConfig().to_dict(), **options, "schedule": {"lr": 0.01 if options.get("optim") else 0.05}})
    torch.manual_seed(0)
    engine = TorchEngine(build_model("small_resnet", 10, in_channels=1), cfg, torch.device("cpu"), Topology.single(0, 1))
    assert type(engine.optimizer) is optimizer
    assert engine.loss_fn.label_smoothing == cfg.loss.label_smoothing
    assert (engine.scaler is not None) == (cfg.precision == "fp16")
    conv = engine.module.stages[0][0].conv1.weight  # 16 input channels: the two formats differ
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last) == cfg.channels_last
    images, labels = torch.randn(16, 1, 12, 12), torch.arange(16) % 10
    first, out = engine.train_step(images, labels)
    assert out.dtype == out_dtype
    for _ in range(30):
        loss, _ = engine.train_step(images, labels)
    assert float(loss) < 0.5 * float(first)


def test_soft_labels_train_and_count_as_their_largest_class() -> None:
    """MixUp/CutMix batches carry (N, classes) soft targets: the loss takes them, accuracy counts
    each as its largest class."""
    from dbl_ps.training.engine import hard_labels, loss_for
    from dbl_ps.config import RunConfig

    soft = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.0, 0.8]])
    assert hard_labels(soft).tolist() == [0, 2]
    assert hard_labels(torch.tensor([1, 2])).tolist() == [1, 2]
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, -1.0, 3.0]])
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss_for(RunConfig())(logits, soft), expected)


@pytest.mark.slow
def test_compile_warms_up_every_shape_so_epochs_do_not_recompile() -> None:
    """`compile: true`: the warm-up compiles every (batch, resolution) the plan gives a worker,
    leaves the model's state as it was, and training steps at those shapes compile nothing new
    (on this CPU the warm-up of the small ResNet takes 1-2 minutes)."""
    from torch._dynamo.utils import counters

    from dbl_ps.config import RunConfig
    from dbl_ps.models import build_model
    from dbl_ps.training.engine import TorchEngine
    from dbl_ps.training.topology import Topology

    torch._dynamo.reset()
    counters.clear()
    cfg = RunConfig.from_dict({**RunConfig().to_dict(), "compile": True})
    torch.manual_seed(0)
    engine = TorchEngine(build_model("small_resnet", 10, in_channels=1, dropout=0.1), cfg, torch.device("cpu"),
                         Topology.single(0, 1))
    before = {k: v.clone() for k, v in engine.module.state_dict().items()}
    shapes = [(16, 12, 0.0), (5, 12, 0.0), (16, 16, 0.1)]
    assert engine.warm_up(shapes, 1) > 0
    assert engine.module.dropout.p == 0.1  # the model's own rate (built with 0.1) is put back
    engine.module.dropout.p = 0.0
    assert all(torch.equal(before[k], v) for k, v in engine.module.state_dict().items())
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= len(shapes) - 1  # dynamo may share one graph between two batch sizes
    for batch, resolution, dropout in shapes + shapes[:1]:  # as the loop does: the schedule sets the rate
        engine.module.dropout.p = dropout
        engine.train_step(torch.randn(batch, 1, resolution, resolution), torch.arange(batch) % 10)
    assert counters["stats"]["unique_graphs"] == graphs


def test_fsdp_wrap_units_for_any_model() -> None:
    """FSDP shards residual blocks where a model has them, the named classes when given, and
    otherwise every submodule past the size threshold (bottom-up), never the root itself."""
    from torch import nn
    from torchvision.models import vit_b_16

    from dbl_ps.integrations.fsdp import wrap_units
    from dbl_ps.models import build_model

    resnet = build_model("torchvision.models:resnet18", 10)
    assert [type(m).__name__ for m in wrap_units(resnet)] == ["BasicBlock"] * 8
    vit = vit_b_16(num_classes=10)
    assert [type(m).__name__ for m in wrap_units(vit, classes=["EncoderBlock"])] == ["EncoderBlock"] * 12
    by_size = wrap_units(vit, min_params=5_000_000)  # each encoder block holds 7.1 M parameters
    assert [type(m).__name__ for m in by_size] == ["EncoderBlock"] * 12
    mlp = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 100), nn.Linear(100, 10))
    assert wrap_units(mlp, min_params=10_000) == [mlp[0], mlp[2]]  # 10,100 each; the last (1,010) stays with the root


def test_calibrate_measures_a_model_by_import_path() -> None:
    from dbl_ps.calibrate import calibrate
    from dbl_ps.config import RunConfig
    from dbl_ps.training.engine import engine_step_factory

    cal = calibrate("torchvision.models:resnet18", [8], make_step=engine_step_factory(RunConfig()), num_classes=10,
                    in_channels=1, cifar_stem=True, batch_sizes=[2, 4, 8], warmup=1, repeats=1, progress=False)
    assert cal.model == "torchvision.models:resnet18"
    assert cal.resolutions[8].samples and all(seconds > 0 for _, seconds in cal.resolutions[8].samples)
