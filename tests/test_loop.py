"""The worker loop in-process: a tiny model, a synchronizer that only records, the real
engine, loader, plan and schedule. What every mode relies on: LR, resolution, batch
size and dropout change at the right epochs, syncs fall after the planned steps, every
planned sample is trained once per epoch, and the reports are complete."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dbl_ps.config import load_config
from dbl_ps.data import ShareLoader, build_transform, load_dataset
from dbl_ps.models import build_model
from dbl_ps.planner import TimeModel, make_plan
from dbl_ps.schedule import schedule_at
from dbl_ps.training import (WORKER_KEYS, Callback, EpochReport, StopTraining, Synchronizer, SyncResult,
                             TorchEngine, Topology, WorkerLoop)
from dbl_ps.training.run_plan import build_spec
from dbl_ps.training.steps import sync_boundaries


class RecordingSync(Synchronizer):
    """Counts syncs and checks the merge weight; leaves the model as it is."""

    def __init__(self, sync_every):
        self.sync_every, self.version, self.weights = sync_every, 0, []

    def boundaries(self, steps, all_steps):
        return sync_boundaries(steps, self.sync_every, "bsp", all_steps)

    def start(self, engine, *, fresh):
        return self.version

    def sync(self, engine, weight, *, loss=None):
        self.version += 1
        self.weights.append(weight)
        return SyncResult(version=self.version, wait_seconds=0.0, sync_seconds=0.0)


class Spy(Callback):
    def __init__(self):
        self.seen: dict[int, dict] = {}
        self.sync_steps: dict[int, list[int]] = {}

    def on_step(self, loop, state):
        opt_lr = loop.engine.optimizer.param_groups[0]["lr"]
        dropout = [m.p for m in loop.engine.module.modules() if isinstance(m, torch.nn.Dropout)]
        self.seen.setdefault(state.epoch, {"lr": opt_lr, "resolution": state.point.resolution, "batch": state.batch,
                                           "dropout": dropout, "shapes": set()})
        self.seen[state.epoch]["shapes"].add(tuple(loop.loader.last_shape))

    def before_sync(self, loop, state):
        self.sync_steps.setdefault(state.epoch, []).append(state.step)


class ShapeLoader(ShareLoader):
    """The real share loader, remembering the shape of the last batch it gave."""

    last_shape = (0, 0)

    def __iter__(self):
        for images, labels in super().__iter__():
            self.last_shape = tuple(images.shape[-2:])
            yield images, labels


def make_loop(worker: int, sync_every, callbacks=(), epochs: int = 4, restart_momentum: bool = False):
    cfg = load_config(None, [f"schedule.epochs={epochs}", "schedule.milestones=[2]", "schedule.warmup_epochs=0",
                             "dbl.workers=2", "dbl.small=1", "data.train_limit=300", f"store.sync_every={sync_every}"])
    data = load_dataset(cfg.data, image_size=16)
    models = {r: TimeModel(alpha=0.003, beta=0.0002) for r in cfg.schedule.resolutions}
    plan = make_plan(models, dict(zip(cfg.schedule.resolutions, cfg.batch_large())), 2, 1, cfg.dbl.tau, len(data.train))
    spec = build_spec(cfg, plan)
    torch.manual_seed(0)
    module = build_model(cfg.model.name, data.num_classes, in_channels=data.in_channels, dropout=spec.dropouts[0])
    engine = TorchEngine(module, cfg, torch.device("cpu"), Topology.single(worker, 2))
    sync = RecordingSync(sync_every)
    first = plan[spec.resolutions[0]]
    loader = ShapeLoader(data.train, build_transform(cfg.data, data), worker=worker, shares=first.shares,
                         batch_size=first.batches[worker], resolution=spec.resolutions[0], seed=cfg.seed, epoch=0)
    loop = WorkerLoop(engine=engine, synchronizer=sync, loader=loader, plan=plan, spec=spec, seed=cfg.seed,
                      callbacks=callbacks, restart_momentum=restart_momentum)
    return loop, plan, spec, sync


@pytest.mark.parametrize("worker", [0, 1])
def test_schedule_changes_and_syncs_fall_where_planned(worker):
    spy = Spy()
    loop, plan, spec, sync = make_loop(worker, sync_every=3, callbacks=[spy])
    loop.start(fresh=True)
    reports = list(loop.run(0))
    assert [r.epoch for r in reports] == [0, 1, 2, 3]
    for r in reports:
        point = schedule_at(r.epoch, spec)
        rp = plan[point.resolution]
        seen = spy.seen[r.epoch]
        # LR, resolution, batch and dropout of the schedule and plan, applied to engine, loader and model
        assert seen["lr"] == pytest.approx(point.lr)
        assert seen["resolution"] == point.resolution == r.resolution
        assert seen["shapes"] == {(point.resolution, point.resolution)}
        assert seen["batch"] == rp.batches[worker] == r.batch
        assert seen["dropout"] and all(p == pytest.approx(point.dropout) for p in seen["dropout"])
        # exactly the planned share, in ceil(share / batch) steps
        assert r.samples == rp.shares[worker]
        assert r.steps == math.ceil(rp.shares[worker] / rp.batches[worker]) == rp.steps()[worker]
        # syncs after the planned local steps; the same count for every worker (bsp)
        want = sync_boundaries(r.steps, 3, "bsp", rp.steps())
        assert spy.sync_steps[r.epoch] == want and r.syncs == len(want)
        assert r.weight == rp.merge_weights[worker]
        assert 0.0 <= r.acc <= 1.0 and r.loss > 0 and r.seconds > 0
        assert set(r.to_record()) == set(WORKER_KEYS)
    # LR drops at the milestone; the resolution cycles inside each stage (12, 16 | 12, 16)
    assert [r.resolution for r in reports] == [12, 16, 12, 16]
    assert spy.seen[2]["lr"] == pytest.approx(spy.seen[0]["lr"] * 0.1)
    assert reports[0].batch != reports[1].batch  # B_L differs per resolution
    # versions count the syncs, the weights are the plan's
    assert reports[-1].version == sync.version == sum(r.syncs for r in reports)
    assert set(sync.weights) == {plan[r].merge_weights[worker] for r in spec.resolutions}


def test_resumed_loop_starts_at_its_epoch_and_draws_the_same():
    """Epoch 2 trained by a loop started at 2 equals epoch 2 of an uninterrupted loop
    (same model state going in): seeds are functions of (seed, worker, epoch)."""
    full, _, _, _ = make_loop(0, "mini_epoch")
    full.start(fresh=True)
    states = {}
    for report in full.run(0):
        states[report.epoch] = {k: v.clone() for k, v in full.engine.module.state_dict().items()}
        if report.epoch == 1:
            opt = copy.deepcopy(full.engine.optimizer.state_dict())  # state_dict() shares the buffers
    resumed, _, _, _ = make_loop(0, "mini_epoch")
    resumed.engine.module.load_state_dict(states[1])
    resumed.engine.optimizer.load_state_dict(opt)
    resumed.start(fresh=False)
    report = next(iter(resumed.run(2)))
    assert report.epoch == 2
    after = resumed.engine.module.state_dict()
    assert all(torch.equal(after[k], states[2][k]) for k in after)


def test_a_callback_can_stop_the_loop_and_reports_are_messages():
    class StopAt(Callback):
        def on_epoch_start(self, loop, epoch):
            if epoch == 1:
                raise StopTraining("enough")

    loop, *_ = make_loop(1, "mini_epoch", callbacks=[StopAt()])
    loop.start(fresh=True)
    reports = []
    with pytest.raises(StopTraining):
        for r in loop.run(0):
            reports.append(r)
    assert [r.epoch for r in reports] == [0] and isinstance(reports[0], EpochReport)


@pytest.mark.parametrize("restart", [False, True])
def test_restart_momentum_zeroes_it_at_each_new_phase_only(restart):
    """optim.restart_momentum (the authors' Keras recompiles at every LR or resolution change):
    LR stages [0, 2) and [2, 4), each 12 px then 16 px: new phases at epochs 1, 2 and 3."""
    loop, plan, spec, sync = make_loop(1, sync_every="mini_epoch", restart_momentum=restart)
    restarted: list[int] = []
    reset = loop.engine.reset_optimizer_state

    def recording_reset():
        restarted.append(loop.schedule.current.epoch)
        reset()
        buffers = [s["momentum_buffer"] for s in loop.engine.optimizer.state.values() if "momentum_buffer" in s]
        assert buffers and all(float(b.abs().max()) == 0 for b in buffers)

    loop.engine.reset_optimizer_state = recording_reset
    loop.start(fresh=True)
    list(loop.run(0))
    assert [schedule_at(e, spec).phase for e in range(4)] == [0, 1, 2, 3]
    assert restarted == ([1.0, 2.0, 3.0] if restart else [])
