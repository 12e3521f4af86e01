"""Collective DBSL training: every worker is a rank (or a group of ranks), no parameter store.

The loop shared by the DeepSpeed collective mode (one rank per worker) and FSDP
(a group of ranks per worker). Launched by ``torchrun`` or the ``deepspeed``
launcher, which set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``.

Per global epoch ``e`` (one epoch = every worker trains once on its planned share):

1. ``schedule_at(e)`` gives LR, resolution and dropout; the plan of that resolution
   gives this worker's share ``d_i``, batch ``b_i``, steps ``ceil(d_i / b_i)`` and
   merge weight ``f_i`` (workers ``0 .. n_S-1`` are the small-batch ones);
2. the worker trains on exactly its share (``epoch_shares``: disjoint within the
   epoch), syncing at ``sync_boundaries(steps, sync_every, "bsp", all_steps)``: once
   at the end of the mini-epoch, or ``S = ceil(max steps / k)`` times spread over
   each worker's own steps. Every worker syncs the same number of times per epoch
   whatever its step count, so all ranks run the same sequence of collectives;
3. a sync replaces the model by ``sum f_i w_i / sum f_i`` (``averaging.weighted_average_``),
   BatchNorm statistics included;
4. per-worker statistics are gathered, rank 0 evaluates the (now identical) global
   model on the test set at the highest resolution, appends ``metrics.jsonl`` and
   writes the checkpoint with the engine's own format; all ranks wait for it.

Fail fast: the launch (``WORLD_SIZE`` and ranks per worker) is checked against the
plan's worker count before ``init_process_group``, and the process group has a
timeout, so a contradiction is a clear error on every rank rather than a hang.

Run directory (written by rank 0): ``config.yaml``, ``plan.json``, ``schedule.txt``, ``schedule.png``,
``metrics.jsonl``, ``checkpoints/epochNNNNN/`` (engine files) and ``checkpoint.json``
(the last complete one), ``summary.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from dbl_ps.integrations.averaging import averaged_tensors, weighted_average_

__all__ = [
    "LaunchError",
    "Topology",
    "read_topology",
    "init_distributed",
    "WorkerEngine",
    "TorchEngine",
    "CollectiveTrainer",
    "CHECKPOINT_JSON",
    "DUMP_ENV",
    "STOP_ENV",
    "base_arg_parser",
]

CHECKPOINT_JSON = "checkpoint.json"
# Testing hooks: a folder where each rank writes its state before and after the first
# sync; an epoch after whose checkpoint every rank stops (as if the job were killed).
DUMP_ENV = "DBL_PS_DUMP_SYNC"
STOP_ENV = "DBL_PS_STOP_AFTER_EPOCH"
DEFAULT_TIMEOUT_S = 600.0


class LaunchError(RuntimeError):
    """The launch (world size, ranks per worker, environment) contradicts the plan."""


# --------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Topology:
    """Where this process sits: ``workers`` groups of ``group_size`` consecutive ranks;
    rank ``r`` is member ``r % group_size`` of worker ``r // group_size``."""

    rank: int
    world: int
    local_rank: int
    group_size: int

    @property
    def workers(self) -> int:
        return self.world // self.group_size

    @property
    def worker(self) -> int:
        return self.rank // self.group_size

    @property
    def member(self) -> int:
        return self.rank % self.group_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def read_topology(workers: int, group_size: int = 1) -> Topology:
    """The topology from the launcher's environment, checked against a plan for ``workers``
    workers of ``group_size`` ranks each. Raises ``LaunchError`` (no collective has run)."""
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None or world is None:
        raise LaunchError("RANK and WORLD_SIZE are not set: start this with torchrun or the deepspeed launcher, "
                          "e.g. `torchrun --nproc_per_node 2 -m dbl_ps.integrations.deepspeed --config FILE`")
    if group_size < 1:
        raise LaunchError(f"ranks per worker (group size) {group_size} must be >= 1")
    if world % group_size:
        raise LaunchError(f"WORLD_SIZE={world} is not divisible by the ranks per worker ({group_size}): the mesh "
                          f"(replicate x shard) needs WORLD_SIZE = workers x ranks per worker")
    if world // group_size != workers:
        raise LaunchError(
            f"the plan is for dbl.workers={workers} worker(s) of {group_size} rank(s) = {workers * group_size} "
            f"rank(s), but the launcher started WORLD_SIZE={world}; launch {workers * group_size} processes "
            f"(e.g. --nproc_per_node / --num_gpus) or set dbl.workers={world // group_size}")
    if not 0 <= rank < world:
        raise LaunchError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return Topology(rank=rank, world=world, local_rank=local_rank if local_rank is not None else rank,
                    group_size=group_size)


def init_distributed(topo: Topology, backend: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """``init_process_group`` with a timeout (a missing rank is an error, not a hang)."""
    if dist.is_initialized():
        return
    if backend == "nccl":
        torch.cuda.set_device(topo.local_rank)
    dist.init_process_group(backend, rank=topo.rank, world_size=topo.world, timeout=timedelta(seconds=timeout_s))


def pick_device(cfg: Any, topo: Topology) -> tuple[torch.device, str]:
    """``(device, backend)``: the rank's GPU with NCCL, else the CPU with gloo."""
    want = cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise LaunchError("config key 'device': got 'cuda', but torch finds no CUDA GPU; use 'auto' or 'cpu'")
    if want in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", topo.local_rank % torch.cuda.device_count()), "nccl"
    return torch.device("cpu"), "gloo"


# --------------------------------------------------------------------------- engines


class WorkerEngine:
    """What the loop needs from a per-worker training engine. ``TorchEngine`` is the
    plain one; DeepSpeed and FSDP subclass it."""

    module: nn.Module
    device: torch.device

    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns ``(mean loss, logits)`` of this rank's part of the batch.
        (The loss is taken in fp32, which is a no-op for fp32 logits.)"""
        out = self.module(images)
        loss = self.loss_fn(out.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), out.detach()

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def set_batch_size(self, batch_size: int) -> None:
        """The worker's batch changed (resolution boundary); engines that track it update here."""

    def local_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of the worker's batch (all of it for one rank per worker)."""
        return images, labels

    def sync_tensors(self) -> list[torch.Tensor]:
        """The tensors the merge averages (local shards for sharded engines)."""
        return averaged_tensors(self.module)

    def sync_group(self) -> dist.ProcessGroup | None:
        """The group across workers (None = the world, one rank per worker)."""
        return None

    def buffer_sync(self, weight: float) -> None:
        """Average what ``sync_tensors`` does not cover (FSDP: buffers over the world)."""

    def after_sync(self) -> None:
        """Propagate averaged values into engine copies (e.g. fp32 master weights)."""

    def sync(self, weight: float) -> float:
        total = weighted_average_(self.sync_tensors(), weight, self.sync_group())
        self.buffer_sync(weight)
        self.after_sync()
        return total

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's state on rank 0 (CPU tensors); collective for sharded engines."""
        if dist.get_rank() != 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def save(self, folder: Path, topo: Topology) -> None:
        raise NotImplementedError

    def load(self, folder: Path, topo: Topology, meta: dict[str, Any]) -> None:
        raise NotImplementedError


def plain_sgd(module: nn.Module, cfg: Any) -> torch.optim.SGD:
    """The workers' local optimizer: SGD with the run's optim settings."""
    o = cfg.optim
    return torch.optim.SGD(module.parameters(), lr=cfg.schedule.lr, momentum=o.momentum,
                           weight_decay=o.weight_decay, nesterov=o.nesterov)


class TorchEngine(WorkerEngine):
    """A plain module + SGD: the baseline engine (and what ``engine: torch`` means)."""

    def __init__(self, module: nn.Module, cfg: Any, device: torch.device):
        self.module = module.to(device)
        self.device = device
        self.optimizer = plain_sgd(self.module, cfg)
        self.loss_fn = nn.CrossEntropyLoss()

    def save(self, folder: Path, topo: Topology) -> None:
        _save_replicated(folder, topo, self.module, self.optimizer.state_dict())

    def load(self, folder: Path, topo: Topology, meta: dict[str, Any]) -> None:
        optim = _load_replicated(folder, topo, self.module, meta)
        if optim is not None:
            self.optimizer.load_state_dict(optim)


def _int_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: b.detach().cpu().clone() for k, b in module.named_buffers() if not b.is_floating_point()}


def _save_replicated(folder: Path, topo: Topology, module: nn.Module, optim_state: dict[str, Any]) -> None:
    """One-rank-per-worker checkpoint: the global model once (rank 0), each worker's
    optimizer state (momentum), integer buffers and RNG in its own file."""
    if topo.is_main:
        _atomic_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, folder / "model.pt")
    _atomic_save({"optimizer": optim_state, "int_buffers": _int_buffers(module), "torch_rng": torch.get_rng_state()},
                 folder / f"worker{topo.worker}.pt")


def _load_replicated(folder: Path, topo: Topology, module: nn.Module, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Load the global model; return this worker's optimizer state when the checkpoint
    has the same number of workers (else None: a new plan starts with fresh momentum)."""
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    path = folder / f"worker{topo.worker}.pt"
    if meta.get("workers") != topo.workers or not path.is_file():
        return None
    own = torch.load(path, map_location="cpu", weights_only=False)
    buffers = dict(module.named_buffers())
    for k, v in own["int_buffers"].items():
        buffers[k].copy_(v)
    return own["optimizer"]


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the loop


def _plan_for(cfg: Any, workers: int, data: Any, device: torch.device, topo: Topology, log: Callable[[str], None]) -> Any:
    """The DBSL plan: from the config's time model / calibration file, or measured by
    every worker on its own hardware and planned per worker (mixed hardware)."""
    from dbl_ps.runtime.setup import build_plan, resolve_time_models

    if cfg.dbl.workers != workers:
        cfg = type(cfg).from_dict({**cfg.to_dict(), "dbl": {**cfg.to_dict()["dbl"], "workers": workers}})
    measure = cfg.time_model() is None and not cfg.dbl.calibration and cfg.dbl.small > 0
    models, batches, source = resolve_time_models(
        cfg, num_classes=data.num_classes, in_channels=data.in_channels,
        device="cuda" if device.type == "cuda" else "cpu", log=log if (topo.is_main or measure) else (lambda m: None))
    if measure:
        # Each worker measured its own device: plan with one time model per worker.
        gathered: list[Any] = [None] * topo.world
        dist.all_gather_object(gathered, models)
        per_worker = [gathered[w * topo.group_size] for w in range(workers)]
        models = {r: [pw[r] for pw in per_worker] for r in models}
        source = "measured per worker"
    return build_plan(cfg, len(data.train), models, batches, source, log=log)


class CollectiveTrainer:
    """One collective run. ``make_engine(module, cfg, device, topo)`` builds the worker's engine."""

    def __init__(self, cfg: Any, make_engine: Callable[..., WorkerEngine], *, run_dir: str | Path | None = None,
                 resume: bool = False, group_size: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                 engine_name: str = "torch", log: Callable[[str], None] | None = None,
                 run_files: dict[str, Any] | None = None):
        self.cfg = cfg
        self.make_engine = make_engine
        self.resume = resume
        self.group_size = group_size
        self.timeout_s = timeout_s
        self.engine_name = engine_name
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_files = dict(run_files or {})  # extra JSON files rank 0 writes into the run directory

    def log(self, message: str) -> None:
        if self.topo.is_main:
            self._log(message)

    # -- setup

    def setup(self) -> None:
        from dbl_ps.data import build_transform, load_dataset
        from dbl_ps.runtime.launcher import new_run_dir
        from dbl_ps.runtime.setup import build_spec, cpu_cores, plan_from_dict

        cfg = self.cfg
        meta = None
        if self.resume:
            if self.run_dir is None or not (self.run_dir / CHECKPOINT_JSON).is_file():
                raise LaunchError(f"cannot resume: {self.run_dir}/{CHECKPOINT_JSON} does not exist "
                                  f"(the run wrote no checkpoint yet; start it again without --resume)")
            meta = json.loads((self.run_dir / CHECKPOINT_JSON).read_text())
        # Checked before any collective: every rank reads the same environment and config.
        world = _env_int("WORLD_SIZE")
        workers = cfg.dbl.workers
        if meta is not None and world is not None and world % self.group_size == 0 and world // self.group_size != workers:
            # resuming onto a different number of workers: re-plan for the launch
            workers = world // self.group_size
        self.topo = topo = read_topology(workers, self.group_size)
        self.device, backend = pick_device(cfg, topo)
        torch.set_num_threads(max(1, cpu_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", topo.world)))))
        init_distributed(topo, backend, self.timeout_s)
        self.meta = meta

        if self.run_dir is None:
            name = [str(new_run_dir(cfg)) if topo.is_main else ""]
            dist.broadcast_object_list(name, src=0)
            self.run_dir = Path(name[0])
        self.data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))
        self.transform = build_transform(cfg.data, self.data)
        plan_file = self.run_dir / "plan.json"
        saved = json.loads(plan_file.read_text()) if (meta is not None and plan_file.is_file()) else None
        if saved is not None and saved["workers"] == topo.workers:
            self.plan = plan_from_dict(saved)
        else:
            if saved is not None:
                self.log(f"resuming with {topo.workers} workers (the checkpoint has {saved['workers']}): re-planning")
            plan = _plan_for(cfg, topo.workers, self.data, self.device, topo, self.log) if topo.is_main or \
                (cfg.time_model() is None and not cfg.dbl.calibration and cfg.dbl.small > 0) else None
            box = [plan.to_dict() if plan is not None and topo.is_main else None]
            dist.broadcast_object_list(box, src=0)  # every rank uses rank 0's plan, bit for bit
            self.plan = plan_from_dict(box[0])
        if self.plan.workers != topo.workers:
            raise LaunchError(f"the plan is for {self.plan.workers} workers, the launch has {topo.workers}")
        self.spec = build_spec(cfg, self.plan)

        from dbl_ps.models import build_model

        torch.manual_seed(cfg.seed)  # the same initial model on every rank
        module = build_model(cfg.model.name, self.data.num_classes, in_channels=self.data.in_channels,
                             dropout=self.spec.dropouts[0])
        self.engine = self.make_engine(module, cfg, self.device, topo)
        self.start_epoch = 0
        self.wall_offset = 0.0
        if meta is not None:
            self.engine.load(self.run_dir / meta["path"], topo, meta)
            self.start_epoch = int(meta["next_epoch"])
            self.wall_offset = float(meta["wall_time"])
            self.log(f"resuming {self.run_dir} at epoch {self.start_epoch} of {int(self.spec.epochs)}")
        else:
            self.engine.sync(1.0)  # identical start on every rank, whatever the seeding did
        if topo.is_main:
            self._write_run_files(fresh=meta is None)
        dist.barrier()

    def _write_run_files(self, fresh: bool) -> None:
        from dbl_ps.schedule import format_phases, plot_schedule

        run_dir = self.run_dir
        if fresh:
            if run_dir.exists() and any(run_dir.iterdir()):
                raise FileExistsError(f"run directory {run_dir} is not empty; resume it with --resume or choose another")
            run_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.save(run_dir / "config.yaml")
        plan = self.plan.to_dict()
        plan["engine"] = self.engine_name
        plan["ranks_per_worker"] = self.group_size
        (run_dir / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
        (run_dir / "schedule.txt").write_text(format_phases(self.spec) + "\n")
        plot_schedule(self.spec, str(run_dir / "schedule.png"))
        for name, content in self.run_files.items():
            _atomic_json(run_dir / name, content)

    # -- training

    def train(self) -> dict[str, Any]:
        """Run every remaining epoch; returns the summary (rank 0; others get {})."""
        from dbl_ps.metrics import MetricsWriter
        from dbl_ps.models import build_model, set_dropout
        from dbl_ps.runtime.setup import epoch_seed, sync_boundaries
        from dbl_ps.schedule import ScheduleTracker
        from dbl_ps.shards.loader import share_loader_for

        self.setup()
        cfg, topo, engine, spec = self.cfg, self.topo, self.engine, self.spec
        w = topo.worker
        metrics = MetricsWriter(self.run_dir, resume=self.meta is not None, keep_through=self.start_epoch - 1) \
            if topo.is_main else None
        eval_model = build_model(cfg.model.name, self.data.num_classes, in_channels=self.data.in_channels) \
            if topo.is_main else None
        self.tracker = self._open_tracker() if topo.is_main and cfg.tracking.wandb.enabled else None
        dist.barrier()  # start the clocks together (W&B start-up on rank 0 is slow)
        first = self.plan[spec.resolutions[0]]
        # ShareLoader over data.train, or (data.source: shards) the shard set of each resolution.
        loader = share_loader_for(cfg.data, self.data.train, self.transform, resolutions=spec.resolutions, worker=w,
                                  shares=first.shares, batch_size=first.batches[w], resolution=spec.resolutions[0],
                                  seed=cfg.seed, epoch=self.start_epoch, device=self.device)
        tracker = ScheduleTracker(spec)
        dump = os.environ.get(DUMP_ENV)
        syncs_done = 0
        t0 = time.perf_counter()
        last: dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, int(spec.epochs)):
                point, changed = tracker.update(epoch)
                rp = self.plan[point.resolution]
                batch, weight, steps = rp.batches[w], rp.merge_weights[w], rp.steps()[w]
                if "dropout" in changed:
                    set_dropout(engine.module, point.dropout)
                engine.set_lr(point.lr)
                if "batch_large" in changed or "batch_small" in changed or "resolution" in changed:
                    engine.set_batch_size(batch)
                torch.manual_seed(epoch_seed(cfg.seed, w * 1000 + topo.member, epoch))
                loader.set_epoch(epoch, shares=rp.shares, batch_size=batch, resolution=point.resolution)
                bounds = sync_boundaries(steps, cfg.store.sync_every, "bsp", rp.steps())
                engine.module.train()
                loss_sum = torch.zeros((), dtype=torch.float64)
                correct = samples = step = next_sync = 0
                sync_s = wait_s = 0.0
                start = time.perf_counter()
                for images, labels in loader:
                    images, labels = engine.local_batch(images, labels)
                    loss, out = engine.train_step(images, labels)
                    loss_sum += float(loss) * labels.shape[0]
                    correct += int((out.argmax(1) == labels).sum())
                    samples += labels.shape[0]
                    step += 1
                    while next_sync < len(bounds) and bounds[next_sync] <= step:
                        if dump and syncs_done == 0:
                            self._dump(Path(dump), "pre", weight)
                        s = time.perf_counter()
                        dist.barrier()  # waiting for slower workers, timed apart from the merge itself
                        m = time.perf_counter()
                        engine.sync(weight)
                        wait_s += m - s
                        sync_s += time.perf_counter() - m
                        if dump and syncs_done == 0:
                            self._dump(Path(dump), "post", weight)
                        next_sync += 1
                        syncs_done += 1
                seconds = time.perf_counter() - start
                if next_sync != len(bounds):  # cannot happen with a consistent plan; never skip a collective
                    raise RuntimeError(f"worker {w} ran {next_sync} of {len(bounds)} syncs in epoch {epoch}")
                record = {"worker": w, "rank": topo.rank, "loss": float(loss_sum) / max(samples, 1),
                          "acc": correct / max(samples, 1), "batch": batch, "samples": samples, "steps": step,
                          "syncs": next_sync, "seconds": seconds, "sync_seconds": sync_s,
                          "wait_seconds": wait_s, "train_seconds": seconds - sync_s - wait_s, "weight": weight}
                gathered: list[Any] = [None] * topo.world
                dist.all_gather_object(gathered, record)
                full = engine.full_state_dict()
                wall = self.wall_offset + time.perf_counter() - t0
                last = self._finish_epoch(epoch, point, gathered, full, eval_model, metrics, wall) or last
                folder = Path("checkpoints") / f"epoch{epoch:05d}"
                engine.save(self.run_dir / folder, topo)
                dist.barrier()
                if topo.is_main:
                    meta = {"epoch": epoch, "next_epoch": epoch + 1, "path": str(folder), "wall_time": wall,
                            "workers": topo.workers, "ranks_per_worker": topo.group_size, "engine": self.engine_name,
                            "test_acc": last.get("test_acc"),
                            "status": "finished" if epoch == int(spec.epochs) - 1 else "running"}
                    _atomic_json(self.run_dir / CHECKPOINT_JSON, meta)
                    _prune(self.run_dir, keep=folder.name)
                if os.environ.get(STOP_ENV) == str(epoch):
                    self.log(f"stopping after epoch {epoch} ({STOP_ENV})")
                    dist.barrier()
                    return {}
            dist.barrier()
        finally:
            if metrics is not None:
                metrics.close()
            if self.tracker is not None:
                self.tracker.close()
        summary: dict[str, Any] = {}
        if topo.is_main:
            summary = {"run_dir": str(self.run_dir), "name": cfg.name, "method": spec.method, "engine": self.engine_name,
                       "workers": topo.workers, "ranks_per_worker": topo.group_size, "small_workers": self.plan.small,
                       "epochs": int(spec.epochs), "final_test_acc": last.get("test_acc"),
                       "final_test_loss": last.get("test_loss"), "wall_time": last.get("wall_time"), "status": "finished"}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _finish_epoch(self, epoch: int, point: Any, gathered: list[dict[str, Any]], full: dict[str, Any] | None,
                      eval_model: nn.Module | None, metrics: Any, wall: float) -> dict[str, Any] | None:
        if not self.topo.is_main:
            return None
        test_loss, test_acc = self.evaluate(eval_model, full)
        # one entry per worker (member 0 of each group; the group's members saw parts of its batches)
        workers = []
        for w in range(self.topo.workers):
            members = gathered[w * self.topo.group_size:(w + 1) * self.topo.group_size]
            samples = sum(m["samples"] for m in members)
            workers.append({
                "worker": w, "batch": members[0]["batch"], "steps": members[0]["steps"], "syncs": members[0]["syncs"],
                "samples": samples, "weight": members[0]["weight"],
                "loss": sum(m["loss"] * m["samples"] for m in members) / max(samples, 1),
                "acc": sum(m["acc"] * m["samples"] for m in members) / max(samples, 1),
                "seconds": max(m["seconds"] for m in members),
                "sync_seconds": max(m["sync_seconds"] for m in members),
                "wait_seconds": max(m["wait_seconds"] for m in members),
                "train_seconds": max(m["train_seconds"] for m in members),
            })
        samples = sum(x["samples"] for x in workers)
        record = {
            "wall_time": wall, "lr": point.lr, "resolution": point.resolution, "dropout": point.dropout,
            "test_loss": test_loss, "test_acc": test_acc,
            "train_loss": sum(x["loss"] * x["samples"] for x in workers) / max(samples, 1),
            "train_acc": sum(x["acc"] * x["samples"] for x in workers) / max(samples, 1),
            "samples": samples,
            "samples_per_s": samples / max(max(x["seconds"] for x in workers), 1e-9),
            "sync_seconds": max(x["sync_seconds"] for x in workers),
            "train_seconds": max(x["train_seconds"] for x in workers),
            "workers": workers,
        }
        metrics.log(epoch, record)
        if self.tracker is not None:
            self.tracker.log(epoch, record)
        self._log(f"epoch {epoch + 1}/{int(self.spec.epochs)}  res {point.resolution}px  lr {point.lr:.4g}  "
                  f"train loss {record['train_loss']:.4f}  test acc {test_acc:.4f}  "
                  f"merge {record['sync_seconds']:.3f}s of {max(x['seconds'] for x in workers):.2f}s  t {wall:.1f}s")
        return {"test_acc": test_acc, "test_loss": test_loss, "wall_time": wall}

    def _open_tracker(self) -> Any:
        """W&B on rank 0 (tracking.wandb.enabled): the same records as metrics.jsonl, plan and phases tables."""
        from dbl_ps.integrations.wandb import WandbTracker
        from dbl_ps.schedule import phases

        w = self.cfg.tracking.wandb
        tracker = WandbTracker(run_dir=self.run_dir, config=self.cfg.to_dict(), project=w.project, entity=w.entity,
                               mode=w.mode, tags=[*w.tags, self.engine_name], group=w.group, name=self.run_dir.name)
        tracker.log_tables(plan=self.plan.to_dict(), phases=[p.to_dict() for p in phases(self.spec)])
        return tracker

    def evaluate(self, model: nn.Module, state: dict[str, Any]) -> tuple[float, float]:
        """Test loss and top-1 of the global model at the highest resolution (rank 0)."""
        from dbl_ps.data import eval_batches

        model.load_state_dict(state)
        model.to(self.device).eval()
        loss_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for images, labels in eval_batches(self.data.test, self.transform, self.cfg.data.eval_batch_size,
                                               max(self.spec.resolutions), device=self.device):
                out = model(images).float()
                loss_sum += float(nn.functional.cross_entropy(out, labels, reduction="sum"))
                correct += int((out.argmax(1) == labels).sum())
                count += labels.shape[0]
        return loss_sum / max(count, 1), correct / max(count, 1)

    def _dump(self, folder: Path, when: str, weight: float) -> None:
        """Testing hook: this rank's sync tensors and (collectively) the full state."""
        full = self.engine.full_state_dict_all() if hasattr(self.engine, "full_state_dict_all") else \
            {k: v.detach().cpu().clone() for k, v in self.engine.module.state_dict().items()}
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": weight, "worker": self.topo.worker, "member": self.topo.member,
                    "local": [t.detach().cpu().clone() for t in self.engine.sync_tensors()], "full": full},
                   folder / f"{when}_rank{self.topo.rank}.pt")


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _prune(run_dir: Path, keep: str) -> None:
    """Delete checkpoint folders older than the one just completed."""
    import shutil

    for folder in (run_dir / "checkpoints").glob("epoch*"):
        if folder.name < keep:
            shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def base_arg_parser(prog: str, description: str) -> Any:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", help="run config (YAML); none = the embedded default (digits)")
    p.add_argument("--run-dir", help="run directory (default: out_dir/<name>-<time>, chosen by rank 0)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a collective may wait for a missing rank before failing (default %(default)s)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE, e.g. schedule.epochs=4")
    return p


def load_run_config(args: Any) -> Any:
    from dbl_ps.config import load_config

    if args.resume:
        return load_config(Path(args.resume) / "config.yaml", args.overrides)
    return load_config(args.config, args.overrides)


def run_main(trainer: CollectiveTrainer) -> int:
    """Train and translate launch errors into one line and exit status 2."""
    try:
        trainer.train()
        return 0
    except LaunchError as err:
        print(f"dbl-ps: error: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        trainer.close()

