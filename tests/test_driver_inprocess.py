"""The run driver in one process, in seconds: a fake coordinator runs every worker's real loop
(TorchEngine on digits) in turn and averages their models between epochs, so the driver's own
order of steps (gather, global state, re-plan, release, finish, worker state, commit,
on_checkpoint), its files and its resume are checked without a subprocess. The modes' real
coordinators are checked against each other by tests/test_launchers.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from dbl_ps.config import load_config, resolve_sync
from dbl_ps.metrics import read_metrics
from dbl_ps.runtime.driver import RunDriver
from dbl_ps.runtime.hooks import SlowWorker
from dbl_ps.runtime.worker_loop import Resume, WorkerPart, build_worker_loop
from dbl_ps.training.averaging import averaged_tensors
from dbl_ps.training.coordinator import GlobalEpoch, OneProcess
from dbl_ps.training.events import Callback, StopTraining
from dbl_ps.training.rundir import RunDirectory
from dbl_ps.training.sync import Synchronizer, SyncResult
from dbl_ps.training.topology import Topology

RUN = ["schedule.epochs=4", "schedule.milestones=[2]", "schedule.warmup_epochs=0", "dbl.workers=2", "dbl.small=1",
       "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "data.eval_batch_size=1024", "threads_per_worker=1",
       "store.mode=bsp", "store.rule=average", "data.train_limit=600", "data.test_limit=200",
       "schedule.resolutions=[12]", "dbl.batch_large=[32]", "model.dropout=[0.0]", "eval.bn_samples=128",
       "model.name=tiny_net:build"]


class KeepLocal(Synchronizer):
    """Merges nothing at its sync: the fake coordinator averages the models after the epoch."""

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        return [steps]

    def start(self, engine: Any, *, fresh: bool) -> int:
        return 0

    def sync(self, engine: Any, weight: float, *, loss: Any = None) -> SyncResult:
        return SyncResult(version=0, wait_seconds=0.0, sync_seconds=0.0)


class InProcess(OneProcess):
    """Every worker's loop in this process, one after the other; after each epoch the global
    model is the share-weighted mean of the workers' (bsp with mini-epoch syncs)."""

    def __init__(self, workers: int, worker_callbacks: Sequence[Callback] = ()):
        self.workers, self.threads, self.eval_device = workers, 1, torch.device("cpu")
        self.worker_callbacks = list(worker_callbacks)
        self.loops: list[Any] = []
        self.events: list[tuple[str, int]] = []

    def start(self, run: Any, start_epoch: int, on_ready: Callable[[], None]) -> None:
        self.run = run
        folder = run.run_dir.checkpoint_folder(run.checkpoint) if run.checkpoint else None
        for w in range(self.workers):
            part = WorkerPart(module=copy.deepcopy(run.model), plan=run.plan, spec=run.spec, train=run.data.train,
                              transform=run.transform, in_channels=run.data.in_channels,
                              topology=Topology.single(w, self.workers), device=self.eval_device,
                              engine_options=run.engine_options, start_epoch=start_epoch,
                              resume=Resume(folder, int(run.checkpoint["workers"])) if folder else None,
                              global_state=run.model.state_dict() if folder else None)
            self.loops.append(build_worker_loop(run.cfg, part, synchronizer=KeepLocal(),
                                                callbacks=self.worker_callbacks))
        self.loop = self.loops[0]
        on_ready()

    def epochs(self, start_epoch: int) -> Iterator[GlobalEpoch]:
        for epoch in range(start_epoch, int(self.run.spec.epochs)):
            self.events.append(("epoch", epoch))
            yield GlobalEpoch(epoch, [loop.run_epoch(epoch) for loop in self.loops], epoch + 1)

    def global_state(self, epoch: GlobalEpoch) -> dict[str, torch.Tensor]:
        weights = [r.weight for r in epoch.reports]
        tensors = [averaged_tensors(loop.engine.module) for loop in self.loops]
        with torch.no_grad():
            for merged in zip(*tensors):
                mean = sum(w * t.double() for w, t in zip(weights, merged)) / sum(weights)
                for t in merged:
                    t.copy_(mean.to(t.dtype))
        self.run.model.load_state_dict(self.loops[0].engine.module.state_dict())
        return self.run.model.state_dict()

    def adopt_plan(self, plan: Any) -> None:
        self.events.append(("adopt_plan", -1))
        for loop in self.loops:
            loop.set_plan(plan)

    def release(self, epoch: int) -> None:
        self.events.append(("release", epoch))

    def save_worker_state(self, folder: Path) -> None:
        for loop in self.loops:
            loop.engine.save_worker_state(folder)

    def stop(self, *, clean: bool = False) -> None:
        self.events.append(("stop", -1))

    def close(self) -> None:
        self.events.append(("close", -1))


class Recorder(Callback):
    """The run's own events as the driver fires them, with what plan.json said then."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.events = run_dir, []

    def on_replan(self, loop: Any, epoch: int) -> None:
        self.events.append(("on_replan", epoch, json.loads((self.run_dir / "plan.json").read_text())["replans"]))

    def on_checkpoint(self, loop: Any, epoch: int) -> None:
        meta = json.loads((self.run_dir / "checkpoint.json").read_text())
        self.events.append(("on_checkpoint", epoch, meta["next_epoch"]))


def drive(run_dir: Path, *overrides: str, checkpoint: dict | None = None, worker_callbacks: Sequence[Callback] = (),
          run_callbacks: Sequence[Callback] = (), user_callbacks: Sequence[Any] = (),
          log: Callable[[str], None] = lambda line: None) -> tuple[RunDriver, InProcess, dict]:
    """One run of RUN + `overrides` in `run_dir` through the driver; `run_callbacks`: the driver's
    own (test hooks), `user_callbacks`: a user's `RunCallback`s."""
    cfg = resolve_sync(load_config(None, [*RUN, *overrides]), launched=False)
    coordinator = InProcess(cfg.dbl.workers, worker_callbacks)
    driver = RunDriver(cfg, coordinator, run_dir, checkpoint=checkpoint, log=log, callbacks=user_callbacks)
    driver.callbacks.callbacks.extend(run_callbacks)
    driver.prepare()
    return driver, coordinator, driver.run()


def test_one_global_epoch_runs_in_the_drivers_order_and_writes_the_run(tmp_path):
    recorder = Recorder(tmp_path / "run")
    driver, coordinator, summary = drive(tmp_path / "run", run_callbacks=[recorder])
    epochs = [e for e, _ in [(x, y) for x, y in coordinator.events] if e == "epoch"]
    assert len(epochs) == 4 and coordinator.events[-1] == ("close", -1)
    # each epoch: gathered, released before its checkpoint, checkpoint committed before on_checkpoint
    assert [e for e in coordinator.events if e[0] in ("epoch", "release")] == \
        [x for epoch in range(4) for x in (("epoch", epoch), ("release", epoch))]
    assert recorder.events == [("on_checkpoint", e, e + 1) for e in range(4)]
    assert summary["status"] == "finished" and summary["epochs"] == 4 and summary["threads_per_worker"] == 1
    assert summary["sync"] == json.loads((tmp_path / "run" / "plan.json").read_text())["sync"] == {
        "kind": "store", "mode": "bsp", "rule": "average", "period": "mini_epoch", "staleness": 0}
    records = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3] and records[-1]["test_acc"] > 0.3  # chance: 0.1


def test_a_replan_is_in_plan_json_and_taken_up_before_the_next_epoch_and_its_checkpoint(tmp_path):
    """Worker 1 sleeps after every step: after epoch 0 the driver re-plans, writes plan.json
    (with its `replans`) before the epoch's checkpoint is committed and on_checkpoint fires,
    and every worker trains epoch 1 with the new plan (worker 1 less data)."""
    recorder = Recorder(tmp_path / "run")
    driver, coordinator, summary = drive(tmp_path / "run", "dbl.small=0", "dbl.replan=true", "schedule.epochs=2",
                                         "schedule.milestones=[]", worker_callbacks=[SlowWorker(1, 0.05)],
                                         run_callbacks=[recorder])
    replan = next(e for e in recorder.events if e[0] == "on_replan")
    assert replan[1] == 0 and replan[2][0]["after_epoch"] == 0
    assert recorder.events.index(replan) < recorder.events.index(("on_checkpoint", 0, 1))
    assert coordinator.events.index(("adopt_plan", -1)) < coordinator.events.index(("release", 0))
    records = read_metrics(tmp_path / "run")
    factors = next(r for r in records if r.get("event") == "replan")["factors"]
    shares = [[w["samples"] for w in r["workers"]] for r in records if "workers" in r]
    slower = factors.index(max(factors))  # worker 1 (its sleeps), unless the machine stalled worker 0 more
    assert abs(shares[0][0] - shares[0][1]) <= 1 and shares[1][slower] < shares[1][1 - slower] - 10, (shares, factors)


def test_a_run_stopped_after_an_epoch_and_resumed_ends_with_the_uninterrupted_runs_weights(tmp_path):
    class StopAfter(Callback):
        def on_checkpoint(self, loop: Any, epoch: int) -> None:
            if epoch == 1:
                raise StopTraining("stop after epoch 1")

    _, _, whole = drive(tmp_path / "whole")
    _, _, stopped = drive(tmp_path / "split", run_callbacks=[StopAfter()])
    assert stopped["status"] == "interrupted"
    run = RunDirectory(tmp_path / "split")
    meta = run.load_checkpoint()
    assert (meta["next_epoch"], meta["status"]) == (2, "interrupted")
    _, _, resumed = drive(tmp_path / "split", checkpoint=meta)
    assert resumed["status"] == "finished" and resumed["epochs"] == 4
    final = [RunDirectory(d).load_model(RunDirectory(d).load_checkpoint()) for d in (tmp_path / "whole", tmp_path / "split")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == [0, 1, 2, 3]
