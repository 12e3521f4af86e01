"""The body of one worker process.

A worker builds the model, attaches to the parameter store, and for every global
epoch from `start_epoch` on:

1. (bsp) waits at the launcher's gate until the launcher has read the previous
   epoch's global state (a memory copy; the bsp pull already waited for the round);
2. takes the schedule's LR, resolution and dropout and the plan's share, batch size
   and merge weight for that resolution (switching in place at phase boundaries);
3. trains on exactly its share of the epoch (`epoch_shares(seed, epoch)`), pushing
   at the sync points (`sync_boundaries`: once per mini-epoch, or every k steps) and
   pulling the merged global model after each push;
4. writes its own state file (optimizer momentum, integer buffers, RNG) for the
   launcher's checkpoint, then reports the epoch's statistics.

Every random draw is a function of (seed, worker, epoch): data order
(`epoch_shares`), augmentation (`batch_seed`), dropout (`epoch_seed`), so a resumed
bsp run repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WorkerArgs", "worker_main", "worker_state_path", "pack_train_data", "unpack_train_data"]

PROGRESS_INTERVAL = 0.25  # seconds between progress messages
# Testing hook: "WORKER:EPOCH" makes that worker raise at the start of that epoch,
# "WORKER:EPOCH:kill" makes it SIGKILL itself there.
FAULT_ENV = "DBL_PS_FAIL_WORKER"


@dataclass
class WorkerArgs:
    worker: int
    config: dict[str, Any]
    plan: dict[str, Any]
    store_name: str
    run_dir: str
    start_epoch: int
    resume_file: str | None
    threads: int
    device: str
    launcher_pid: int
    # The training split as numpy arrays, when the launcher passes it (saves every
    # worker from loading and decoding the source again); None = load it here.
    train_data: dict[str, Any] | None = None


def pack_train_data(data: Any) -> dict[str, Any]:
    """A data set's training split and metadata as plain numpy/python values (picklable by value)."""
    return {"name": data.name, "images": data.train.images.numpy(), "labels": data.train.labels.numpy(),
            "num_classes": data.num_classes, "mean": data.mean, "std": data.std, "flip": data.flip,
            "classes": list(data.classes)}


def unpack_train_data(packed: dict[str, Any]) -> Any:
    import torch

    from dbl_ps.data import Dataset, Split

    train = Split(torch.from_numpy(packed["images"]), torch.from_numpy(packed["labels"]))
    return Dataset(packed["name"], train, Split(train.images[:0], train.labels[:0]), packed["num_classes"],
                   tuple(packed["mean"]), tuple(packed["std"]), packed["flip"], packed["classes"])


class _Stopped(Exception):
    """The launcher asked the workers to stop (or died)."""


def worker_state_path(run_dir: str | Path, worker: int, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"worker{worker}" / f"epoch{epoch:05d}.pt"


def worker_main(args: WorkerArgs, queue: Any, stop: Any, gate: Any) -> None:
    """Process entry point: runs the worker, reports errors with their traceback."""
    # Ctrl-C reaches the whole process group; the launcher alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _Worker(args, queue, stop, gate).run()
        queue.put(("finished", args.worker))
    except _Stopped:
        queue.put(("stopped", args.worker))
    except BaseException:  # report everything, including SystemExit from a library
        if stop.is_set():
            queue.put(("stopped", args.worker))
            return
        queue.put(("error", args.worker, traceback.format_exc()))
        raise SystemExit(1)


class _Worker:
    def __init__(self, args: WorkerArgs, queue: Any, stop: Any, gate: Any):
        self.args = args
        self.queue = queue
        self.stop = stop
        self.gate = gate
        self.client: Any = None

    # -- stop checks

    def check_stop(self) -> None:
        if self.stop.is_set() or os.getppid() != self.args.launcher_pid:
            raise _Stopped

    def wait_gate(self, epoch: int) -> None:
        while self.gate.value < epoch:
            self.check_stop()
            time.sleep(0.002)

    # -- main loop

    def run(self) -> None:
        import torch

        from dbl_ps.config import RunConfig
        from dbl_ps.data import build_transform, load_dataset
        from dbl_ps.models import build_model, set_dropout
        from dbl_ps.runtime.flat import FlatState
        from dbl_ps.shards.loader import share_loader_for
        from dbl_ps.runtime.setup import build_spec, epoch_seed, plan_from_dict, sync_boundaries
        from dbl_ps.schedule import ScheduleTracker
        from dbl_ps.store import StoreClient

        a = self.args
        torch.set_num_threads(a.threads)
        cfg = RunConfig.from_dict(a.config)
        plan = plan_from_dict(a.plan)
        spec = build_spec(cfg, plan)
        device = torch.device(a.device)
        mode, rule = cfg.store.mode, cfg.store.rule

        if a.train_data is not None:
            data = unpack_train_data(a.train_data)
        else:
            data = load_dataset(cfg.data, image_size=max(spec.resolutions))
        transform = build_transform(cfg.data, data)
        model = build_model(cfg.model.name, data.num_classes, in_channels=data.in_channels,
                            dropout=spec.dropouts[0]).to(device)
        flat = FlatState(model)
        vec = flat.new_vector()
        # Rule sgd: the payload is the displacement since the last pull (the LR-scaled
        # update of the local optimizer, momentum included); the store adds it with weight
        # f_i at lr 1 and no server momentum, which would also amplify the BatchNorm
        # statistics' changes that travel in the same vector.
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.base_lr, momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
        ds_engine = None
        if cfg.engine == "deepspeed":  # a DeepSpeed engine steps the same model (dbl_ps.integrations.deepspeed)
            from dbl_ps.integrations.deepspeed import build_engine

            ds_engine = build_engine(model, cfg, device, batch_size=plan[spec.resolutions[0]].batches[a.worker],
                                     ds_config=cfg.deepspeed_config)
            model, optimizer = ds_engine.module, ds_engine.optimizer
            flat = FlatState(model)  # DeepSpeed may recast parameters and buffers (bf16/fp16)
        if a.resume_file:
            state = torch.load(a.resume_file, map_location="cpu", weights_only=False)
            if ds_engine is not None:  # ZeRO optimizers take a list of per-rank states
                ds_engine.load_optimizer_state(state["optimizer"])
            else:
                optimizer.load_state_dict(state["optimizer"])
            flat.load_int_buffers(state["int_buffers"])
        loss_fn = torch.nn.CrossEntropyLoss()

        self.check_stop()
        self.client = client = StoreClient(a.store_name, a.worker)
        try:
            version = client.pull(vec)
            flat.scatter(vec)
            if ds_engine is not None:
                ds_engine.after_sync()  # fp32 master weights := the pulled model
            reference = vec.clone() if rule == "sgd" else None
            payload = flat.new_vector() if rule == "sgd" else None
            first = plan[spec.resolutions[0]]
            # ShareLoader over data.train, or (data.source: shards) the shard set of each resolution.
            loader = share_loader_for(cfg.data, data.train, transform, resolutions=spec.resolutions, worker=a.worker,
                                      shares=first.shares, batch_size=first.batches[a.worker],
                                      resolution=spec.resolutions[0], seed=cfg.seed, epoch=a.start_epoch, device=device)
            tracker = ScheduleTracker(spec)
            last_progress = 0.0
            for epoch in range(a.start_epoch, int(spec.epochs)):
                # bsp: the launcher must copy round e-1 before round e can start. asp/ssp:
                # run at most two epochs ahead of the launcher, so that the state it
                # evaluates as "epoch e" is not many epochs newer (evaluation can be slower
                # than a training epoch on a busy CPU).
                self.wait_gate(epoch if mode == "bsp" else epoch - 1)
                self.check_stop()
                fault = os.environ.get(FAULT_ENV, "")
                if fault == f"{a.worker}:{epoch}":
                    raise RuntimeError(f"injected failure of worker {a.worker} at epoch {epoch} ({FAULT_ENV})")
                if fault == f"{a.worker}:{epoch}:kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                point, changed = tracker.update(epoch)
                rp = plan[point.resolution]
                batch, weight = rp.batches[a.worker], rp.merge_weights[a.worker]
                if "dropout" in changed:
                    set_dropout(model, point.dropout)
                for group in optimizer.param_groups:
                    group["lr"] = point.lr
                torch.manual_seed(epoch_seed(cfg.seed, a.worker, epoch))
                loader.set_epoch(epoch, shares=rp.shares, batch_size=batch, resolution=point.resolution)
                if ds_engine is not None:
                    ds_engine.set_batch_size(batch)  # same engine, new micro-batch (resolution boundary)
                steps = rp.steps()[a.worker]
                bounds = sync_boundaries(steps, cfg.store.sync_every, mode, rp.steps())
                model.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                samples = step = next_sync = pushes = 0
                wait_seconds = 0.0  # in push/pull: queue full, bsp round, ssp bound
                start = time.perf_counter()
                for images, labels in loader:
                    self.check_stop()
                    if ds_engine is not None:
                        loss, out = ds_engine.train_step(images, labels)
                    else:
                        out = model(images)
                        loss = loss_fn(out, labels)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    with torch.no_grad():
                        loss_sum += loss.detach().double() * labels.shape[0]
                        correct += (out.argmax(1) == labels).sum()
                    samples += labels.shape[0]
                    step += 1
                    while next_sync < len(bounds) and bounds[next_sync] <= step:
                        flat.gather(vec)
                        waited = time.perf_counter()
                        if rule == "sgd":
                            torch.sub(reference, vec, out=payload)
                            client.push(payload, weight=weight)
                        else:
                            client.push(vec, weight=weight)
                        version = client.pull(vec)
                        wait_seconds += time.perf_counter() - waited
                        flat.scatter(vec)
                        if ds_engine is not None:
                            ds_engine.after_sync()
                        if reference is not None:
                            reference.copy_(vec)
                        next_sync += 1
                        pushes += 1
                    now = time.perf_counter()
                    if now - last_progress >= PROGRESS_INTERVAL:
                        last_progress = now
                        self.queue.put(("progress", a.worker, epoch, step, steps, batch, point.resolution,
                                        samples / max(now - start, 1e-9)))
                seconds = time.perf_counter() - start
                self.save_state(epoch, optimizer, flat, loader)
                self.queue.put(("epoch", a.worker, epoch, {
                    "worker": a.worker,
                    "loss": float(loss_sum) / max(samples, 1),
                    "acc": int(correct) / max(samples, 1),
                    "batch": batch,
                    "resolution": point.resolution,
                    "samples": samples,
                    "steps": step,
                    "pushes": pushes,
                    "seconds": seconds,
                    "wait_seconds": wait_seconds,
                    "samples_per_s": samples / max(seconds, 1e-9),
                    "weight": weight,
                    "version": version,
                }))
        finally:
            client.close()

    def save_state(self, epoch: int, optimizer: Any, flat: Any, loader: Any) -> None:
        import torch

        path = worker_state_path(self.args.run_dir, self.args.worker, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"epoch": epoch, "worker": self.args.worker, "optimizer": optimizer.state_dict(),
                    "int_buffers": flat.int_buffers(), "torch_rng": torch.get_rng_state(),
                    "loader": loader.state_dict()}, tmp)
        os.replace(tmp, path)
