"""Gradient accumulation: a planned batch larger than a rank's memory runs as micro-batches
with one optimizer step, and trains exactly as the unsplit batch (for a model without
BatchNorm). Your own loop (`dbl.accumulate`), `dbl-ps train` (`micro_batch`, the engine's
`train_step`), and the averager, which counts optimizer steps, not micro-batches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import dbl_ps.api as dbl
from dbl_ps.config import ConfigError, load_config
from dbl_ps.training.engine import TorchEngine
from dbl_ps.training.topology import Topology
from launch_helpers import free_port


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))


def conv_net() -> nn.Module:  # no BatchNorm: micro-batches cannot change anything but rounding
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.0), nn.Linear(24, 10))


def batch(n: int = 10, shape: tuple[int, ...] = (8,), classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def train_one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **split) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    opt.zero_grad()
    for mx, my, scale in dbl.accumulate(x, y, **split):
        (nn.functional.cross_entropy(model(mx), my) * scale).backward()
    opt.step()
    return model


@pytest.mark.parametrize("split", [{"micro_batch": 3}, {"micro_batch": 5}, {"parts": 3}, {"parts": 10}])
def test_accumulated_micro_batches_give_the_unsplit_batchs_step(split):
    x, y = batch(10)
    whole = train_one_step(mlp(), x, y)
    accumulated = train_one_step(mlp(), x, y, **split)
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    sizes = [len(mx) for mx, _, _ in dbl.accumulate(x, y, **split)]
    assert sum(sizes) == 10 and len(sizes) == (-(-10 // split["micro_batch"]) if "micro_batch" in split
                                               else split["parts"])


def test_accumulate_leaves_a_batch_that_fits_whole_and_refuses_bad_input():
    x, y = batch(10)
    [(mx, my, scale)] = dbl.accumulate(x, y, micro_batch=16)
    assert mx is x and my is y and scale == 1.0
    assert [s for _, _, s in dbl.accumulate(x, y, micro_batch=4)] == [0.4, 0.4, 0.2]
    with pytest.raises(dbl.APIError, match=r"micro_batch=0\): give a whole number >= 1"):
        dbl.accumulate(x, y, micro_batch=0)
    with pytest.raises(dbl.APIError, match="give one of them"):
        dbl.accumulate(x, y, micro_batch=2, parts=2)
    with pytest.raises(dbl.APIError, match=r"parts=11\): the batch has 10 samples.*parts <= 10"):
        dbl.accumulate(x, y, parts=11)
    with pytest.raises(dbl.APIError, match="10 inputs but 9 targets"):
        dbl.accumulate(x, y[:9])


# --------------------------------------------------------------------------- dbl-ps train


def engine_for(micro_batch: int | None, *extra: str) -> TorchEngine:
    cfg = load_config(None, [f"micro_batch={'null' if micro_batch is None else micro_batch}", "optim.weight_decay=0.01",
                             *extra])
    return TorchEngine(conv_net(), cfg, torch.device("cpu"), Topology.single(0, 1))


@pytest.mark.parametrize("micro_batch", [4, 7])
def test_the_engine_step_with_micro_batch_trains_as_the_whole_batch(micro_batch):
    whole, split = engine_for(None), engine_for(micro_batch)
    x, y = batch(18, (3, 8, 8), 10)
    for _ in range(3):  # momentum carries the accumulated gradients into the later steps too
        loss_w, out_w = whole.train_step(x, y)
        loss_s, out_s = split.train_step(x, y)
        torch.testing.assert_close(loss_s, loss_w, rtol=1e-6, atol=1e-7)  # the batch's mean loss
        torch.testing.assert_close(out_s, out_w, rtol=1e-5, atol=1e-6)  # every sample's logits, in order
    for a, b in zip(whole.module.parameters(), split.module.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_micro_batch_is_checked_and_said_once(tmp_path):
    with pytest.raises(ConfigError, match=r"'micro_batch': got 0, expected an integer >= 1"):
        load_config(None, ["micro_batch=0"])
    with pytest.raises(ConfigError, match="null with engine 'deepspeed' .*gradient_accumulation_steps"):
        load_config(None, ["micro_batch=8", "engine=deepspeed"])
    from dbl_ps.runtime.engine_setup import check_engine_config

    lines: list[str] = []
    check_engine_config(load_config(None, ["micro_batch=32"]), lines.append)
    assert lines == ["micro_batch 32: a planned batch above 32 runs as ceil(batch / 32) micro-batches and one "
                     "optimizer step (gradient accumulation: the same gradient; BatchNorm statistics see each "
                     "micro-batch)"]


@pytest.mark.slow  # a whole store-mode run, about a minute on 2 shared cores
def test_a_store_mode_run_with_micro_batches_trains_and_says_it_once(tmp_path):
    from dbl_ps.metrics import read_metrics
    from dbl_ps.runtime.launcher import Trainer

    cfg = load_config(None, ["micro_batch=24", "dbl.workers=2", "dbl.small=1", "schedule.epochs=2",
                             "schedule.milestones=[]", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "store.mode=bsp",
                             "store.rule=average", f"out_dir={tmp_path}"])
    lines: list[str] = []
    summary = Trainer(cfg, tmp_path / "run", progress=False, log=lines.append).train()
    assert summary["status"] == "finished"
    assert sum(line.startswith("micro_batch 24:") for line in lines) == 1, lines
    batches = {w["batch"] for r in read_metrics(tmp_path / "run") for w in r["workers"]}
    assert max(batches) > 24  # the large worker's batch really ran as micro-batches


# --------------------------------------------------------------------------- your own loop


@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_averager_counts_optimizer_steps_not_micro_batches(world_of_one):
    """A rank whose planned batch is larger than its memory: micro-batches, one optimizer step and
    one averager.step() per planned batch, and the step check passes; stepping the averager per
    micro-batch is one error naming the numbers and the fix."""
    plan = dbl.plan_ranks(dbl.TimeModel(alpha=0.01, beta=0.001), batch_large=16, dataset_size=64, ranks=1)
    model = mlp()
    averager = dbl.ModelAverager(model, plan)
    data = batch(64)
    sampler = dbl.ShareBatchSampler(64, averager.mine.shares, 0, averager.mine.batch, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(2):
        mine = averager.set_epoch(epoch)
        sampler.set_epoch(epoch, shares=mine.shares, batch_size=mine.batch)
        for index in sampler:
            opt.zero_grad()
            for x, y, scale in dbl.accumulate(data[0][index], data[1][index], micro_batch=5):
                (nn.functional.cross_entropy(model(x), y) * scale).backward()
            opt.step()
            averager.step()
        averager.end_epoch()
        assert averager.steps == mine.steps == 4
    averager.set_epoch(2)
    for index in sampler:
        for _ in dbl.accumulate(data[0][index], data[1][index], micro_batch=5):
            averager.step()  # wrong: once per micro-batch
    with pytest.raises(dbl.APIError, match=r"took 16 of its 4 planned steps .*step\(\) called per micro-batch"):
        averager.end_epoch()


def test_one_averager_step_per_accumulated_step_keeps_the_model_of_the_unsplit_loop(world_of_one):
    plan = dbl.plan_ranks(dbl.TimeModel(alpha=0.01, beta=0.001), batch_large=16, dataset_size=64, ranks=1)
    x, y = batch(64)
    models = []
    for micro in (None, 6):
        model = copy.deepcopy(mlp())
        averager = dbl.ModelAverager(model, plan, sync_every=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        mine = averager.set_epoch(0)
        for start in range(0, 64, mine.batch):
            opt.zero_grad()
            for mx, my, scale in dbl.accumulate(x[start:start + mine.batch], y[start:start + mine.batch], micro):
                (nn.functional.cross_entropy(model(mx), my) * scale).backward()
            opt.step()
            averager.step()
        averager.end_epoch()
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
