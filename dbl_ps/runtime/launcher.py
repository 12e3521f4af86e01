"""The single-node launcher: `Trainer` runs one training job.

    trainer = Trainer(cfg)                     # or Trainer.resume("runs/digits-hybrid-...")
    summary = trainer.train()

`prepare()` loads the data (test split for evaluation, training-set size for the
plan), resolves the time models (config, calibration file, or measured on the spot),
makes the DBSL plan and the schedule, and writes `config.yaml`, `plan.json` and
`schedule.json`/`schedule.txt`/`schedule.png` into the run directory. `train()` starts the
parameter store with the seeded initial model (or the checkpoint's), spawns W
worker processes, and then, for every global epoch (W pushes, one mini-epoch per
worker), once all workers reported it: reads the global model from the store,
opens the bsp gate for the next epoch, evaluates the global model on the test set
at the highest resolution, appends a metrics record and writes the checkpoint.

Stopping: SIGINT/SIGTERM set a flag; the launcher then stops the workers, keeps the
last complete epoch's checkpoint (rewritten with status "interrupted"), closes the
store (its shared memory goes) and raises `TrainingInterrupted`. A worker that fails
makes `train()` raise `WorkerError` carrying that worker's traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

__all__ = ["Trainer", "WorkerError", "StoreSetupError", "TrainingInterrupted", "new_run_dir"]

STOP_TIMEOUT = 30.0  # seconds a worker gets to stop before it is terminated
PASS_DATA_BYTES = 1 << 30  # training splits up to this size go to the workers with their arguments


class WorkerError(RuntimeError):
    """A worker process failed; the message holds its traceback."""


class StoreSetupError(RuntimeError):
    """The parameter store could not be created (e.g. too little shared memory)."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after writing its checkpoint."""

    def __init__(self, message: str, run_dir: Path, epoch: int | None):
        super().__init__(message)
        self.run_dir = run_dir
        self.epoch = epoch


def new_run_dir(cfg: Any) -> Path:
    """`out_dir/<name>-<YYYYmmdd-HHMMSS>`, created empty here (`-1`, `-2`, ... when taken)
    so that runs started in the same second never get the same directory."""
    from dbl_ps.run_dirs import create_unique_dir

    return create_unique_dir(Path(cfg.out_dir), f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


class Trainer:
    """One run of `cfg` in `run_dir`. `progress`: True/False, None = when stderr is a terminal."""

    def __init__(self, cfg: Any, run_dir: str | Path | None = None, *, progress: bool | None = None,
                 log: Callable[[str], None] | None = None, _checkpoint: dict[str, Any] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._log = log or (lambda msg: print(msg, flush=True))
        self.checkpoint = _checkpoint
        self.resuming = _checkpoint is not None
        self._signal: int | None = None
        self._prepared = False

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs: Any) -> "Trainer":
        """Continue the run in `run_dir` from its last checkpoint (config and plan from the directory)."""
        from dbl_ps.config import load_config
        from dbl_ps.runtime.checkpoint import CheckpointError, load_checkpoint

        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml")
        return cls(cfg, run_dir, _checkpoint=load_checkpoint(run_dir), **kwargs)

    def log(self, message: str) -> None:
        if self._bars:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            self._log(message)

    _bars: list[Any] = []

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Data, plan, schedule, run directory. Raises before any process starts."""
        if self._prepared:
            return
        import torch

        from dbl_ps.config import check_workers_fit
        from dbl_ps.data import build_transform, load_dataset
        from dbl_ps.models import build_model
        from dbl_ps.runtime.flat import FlatState
        from dbl_ps.runtime.setup import (build_plan, build_spec, plan_from_dict, resolve_time_models,
                                          threads_per_worker)
        from dbl_ps.schedule import format_phases, phases, plot_schedule

        cfg = self.cfg
        self.threads = threads_per_worker(cfg)
        torch.set_num_threads(self.threads)
        self.devices = self._devices()
        self.data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))
        if cfg.data.source == "shards":  # every resolution of the schedule has a complete set, before any process starts
            from dbl_ps.shards import ShardIndex

            ShardIndex.load(cfg.data.path).check_resolutions(cfg.schedule.resolutions)
        self.transform = build_transform(cfg.data, self.data)
        n = len(self.data.train)
        check_workers_fit(cfg, n)  # before any time is measured
        plan_file = self.run_dir / "plan.json"
        if self.resuming:
            self.plan = plan_from_dict(json.loads(plan_file.read_text()))
            self.plan_source = "plan.json of the run"
        else:
            models, batches, source = resolve_time_models(cfg, num_classes=self.data.num_classes,
                                                          in_channels=self.data.in_channels,
                                                          device="cuda" if self.devices[0].startswith("cuda") else "cpu",
                                                          log=self._log)
            self.plan = build_plan(cfg, n, models, batches, source, log=self._log)
            self.plan_source = source
        self.spec = build_spec(cfg, self.plan)
        self.eval_resolution = max(self.spec.resolutions)
        self.eval_device = torch.device(self.devices[0])
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model.name, self.data.num_classes, in_channels=self.data.in_channels).to(self.eval_device)
        self.flat = FlatState(self.model)
        if not self.resuming:
            if self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise FileExistsError(f"run directory {self.run_dir} is not empty; resume it with --resume or choose another")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.yaml")
            plan_dict = self.plan.to_dict()
            plan_dict["time_model_source"] = self.plan_source
            plan_file.write_text(json.dumps(plan_dict, indent=2) + "\n")
            (self.run_dir / "schedule.json").write_text(json.dumps(
                {"method": self.spec.method, "epochs": self.spec.epochs, "phases": [p.to_dict() for p in phases(self.spec)]},
                indent=2) + "\n")
            (self.run_dir / "schedule.txt").write_text(format_phases(self.spec) + "\n")
            plot_schedule(self.spec, str(self.run_dir / "schedule.png"))
        if self.cfg.tracking.wandb.enabled:  # a missing extra fails before any process starts
            from dbl_ps._optional import require

            require("wandb", feature="tracking.wandb (Weights & Biases)")
        self._prepared = True

    def _devices(self) -> list[str]:
        import torch

        want = self.cfg.device
        if want == "cuda" and not torch.cuda.is_available():
            raise ValueError("config key 'device': got 'cuda', but torch finds no CUDA GPU; use 'auto' or 'cpu'")
        if want in ("auto", "cuda") and torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            return [f"cuda:{i % gpus}" for i in range(self.cfg.dbl.workers)]
        return ["cpu"] * self.cfg.dbl.workers

    # ------------------------------------------------------------------ training

    def train(self) -> dict[str, Any]:
        """Run to the last epoch; returns the summary (also saved as summary.json)."""
        import multiprocessing as mp

        import torch

        from dbl_ps.metrics import Logger, MetricsWriter
        from dbl_ps.runtime.worker import WorkerArgs, pack_train_data, worker_main
        from dbl_ps.store import ParameterStore

        self.prepare()
        cfg, W = self.cfg, self.cfg.dbl.workers
        epochs = int(self.spec.epochs)
        ckpt = self.checkpoint
        if ckpt is not None and ckpt.get("status") == "finished":
            self.log(f"{self.run_dir} already finished all {epochs} epochs")
            return json.loads((self.run_dir / "summary.json").read_text()) if (self.run_dir / "summary.json").is_file() else {}
        self.start_epoch = ckpt["next_epoch"] if ckpt else 0
        self.wall_offset = float(ckpt["wall_time"]) if ckpt else 0.0
        self.version_offset = int(ckpt["store_version"]) if ckpt else 0
        self.last_complete = self.start_epoch - 1
        initial = ckpt["state"] if ckpt else self.flat.gather()
        self.records: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        if ckpt:
            self.log(f"resuming {self.run_dir} at epoch {self.start_epoch} of {epochs}")
        # The store first: a machine short of shared memory fails here, before anything
        # else is opened or installed.
        try:
            # rule sgd: payloads are displacements already scaled by the local LR (see worker.py)
            store = ParameterStore(
                self.flat.numel, W, mode=cfg.store.mode, rule=cfg.store.rule, staleness=cfg.store.staleness,
                apply_threads=cfg.store.apply_threads or None, lr=1.0, momentum=0.0, initial=initial,
            )
        except OSError as exc:
            raise StoreSetupError(f"cannot create the parameter store: {exc}") from None
        try:
            self.metrics = Logger([MetricsWriter(self.run_dir, resume=self.resuming, keep_through=self.last_complete)])
            tracker = self._start_tracker()
            if tracker is not None:
                self.metrics.add(tracker)
        except BaseException:
            store.close()
            raise

        old_handlers = self._install_signal_handlers()
        ctx = mp.get_context("spawn")
        queue, stop, gate = ctx.Queue(), ctx.Event(), ctx.Value("i", self.start_epoch)
        procs: list[Any] = []
        self._status = "running"
        try:
            plan_dict = self.plan.to_dict()
            images = self.data.train.images
            train_data = pack_train_data(self.data) if images.numel() <= PASS_DATA_BYTES else None
            for w in range(W):
                resume_file = str(self.run_dir / ckpt["workers"][w]) if ckpt else None
                args = WorkerArgs(worker=w, config=cfg.to_dict(), plan=plan_dict, store_name=store.name,
                                  run_dir=str(self.run_dir), start_epoch=self.start_epoch, resume_file=resume_file,
                                  threads=self.threads, device=self.devices[w], launcher_pid=os.getpid(),
                                  train_data=train_data)
                p = ctx.Process(target=worker_main, args=(args, queue, stop, gate), name=f"dbl-ps-worker-{w}", daemon=True)
                p.start()
                procs.append(p)
            self._open_bars(epochs)
            self._loop(store, queue, stop, gate, procs, epochs)
            self._status = "finished"
            self._server_stats = store.server_stats()
            self._print_summary(self._summary())
            self._join(procs, stop, queue, timeout=STOP_TIMEOUT)
        except BaseException:
            stop.set()
            self._join(procs, stop, queue, timeout=STOP_TIMEOUT)
            if self._signal is not None and self.last_complete >= 0:
                self._status = "interrupted"
                self._rewrite_checkpoint_status("interrupted")
            raise
        finally:
            store.close()
            self._close_bars()
            self.metrics.close()
            self._restore_signal_handlers(old_handlers)
        return self._summary()

    def _start_tracker(self) -> Any:
        """A W&B sink for the epoch records (None unless tracking.wandb.enabled); it logs
        the plan and schedule as tables and keeps its run id so a resumed run continues it."""
        wb = self.cfg.tracking.wandb
        if not wb.enabled or wb.mode == "disabled":
            return None
        from dbl_ps.integrations.wandb import WandbTracker

        id_file = self.run_dir / "wandb_id.txt"
        resume_id = id_file.read_text().strip() if self.resuming and id_file.is_file() else None
        tracker = WandbTracker(run_dir=self.run_dir, config=self.cfg.to_dict(), project=wb.project, entity=wb.entity,
                               mode=wb.mode, tags=wb.tags, group=wb.group, name=self.run_dir.name,
                               resume_id=resume_id, warn=self.log)
        if tracker.run_id:
            id_file.write_text(tracker.run_id + "\n")
        tracker.log_tables(plan=json.loads((self.run_dir / "plan.json").read_text()),
                           phases=json.loads((self.run_dir / "schedule.json").read_text())["phases"])
        return tracker

    def _loop(self, store: Any, queue: Any, stop: Any, gate: Any, procs: list[Any], epochs: int) -> None:
        import queue as queue_mod

        W = self.cfg.dbl.workers
        reports: dict[int, dict[int, dict[str, Any]]] = {}
        finished: set[int] = set()
        last_check = time.monotonic()
        while self.last_complete < epochs - 1:
            if self._signal is not None:
                raise TrainingInterrupted(self._interrupt_message(), self.run_dir, self.last_complete)
            if time.monotonic() - last_check > 0.5:
                last_check = time.monotonic()
                dead = [w for w, p in enumerate(procs) if p.exitcode is not None and w not in finished]
                if dead:
                    # It may have reported just before exiting: handle what is queued (for at
                    # most a second; the others keep sending progress), then look again.
                    until = time.monotonic() + 1.0
                    while time.monotonic() < until:
                        try:
                            self._handle(queue.get(timeout=0.2), reports, finished, store, gate)
                        except queue_mod.Empty:
                            break
                    dead = [w for w in dead if w not in finished]
                    if dead:
                        w = dead[0]
                        raise WorkerError(f"worker {w} exited with code {procs[w].exitcode} without reporting an "
                                          f"error (killed by a signal or out of memory?)")
                    continue
            try:
                msg = queue.get(timeout=0.1)
            except queue_mod.Empty:
                continue
            self._handle(msg, reports, finished, store, gate)

    def _handle(self, msg: tuple, reports: dict[int, dict[int, dict[str, Any]]], finished: set[int], store: Any,
                gate: Any) -> None:
        W = self.cfg.dbl.workers
        kind, w = msg[0], msg[1]
        if kind == "error":
            raise WorkerError(f"worker {w} failed:\n{msg[2]}")
        if kind in ("finished", "stopped"):
            finished.add(w)
            if kind == "stopped" and self._signal is None:
                raise WorkerError(f"worker {w} stopped unexpectedly (the parameter store closed?)")
        elif kind == "progress":
            self._update_worker_bar(*msg[1:])
        elif kind == "epoch":
            reports.setdefault(msg[2], {})[w] = msg[3]
            while len(reports.get(self.last_complete + 1, {})) == W:
                epoch = self.last_complete + 1
                self._complete_epoch(epoch, reports.pop(epoch), store, gate)

    def _complete_epoch(self, epoch: int, reports: dict[int, dict[str, Any]], store: Any, gate: Any) -> None:
        import torch

        from dbl_ps.runtime.checkpoint import prune_worker_states, rng_states, save_checkpoint
        from dbl_ps.runtime.worker import worker_state_path
        from dbl_ps.schedule import schedule_at

        target = max(r["version"] for r in reports.values())
        while store.version < target:  # the server may still be applying the last pushes
            time.sleep(0.0005)
        state = self.flat.new_vector()
        version = store.read(state)
        gate.value = epoch + 1  # bsp: workers may start the next epoch now
        self.last_complete = epoch
        wall = self.wall_offset + time.perf_counter() - self.t0
        eval_start = time.perf_counter()
        test_loss, test_acc = self.evaluate(state)
        eval_seconds = time.perf_counter() - eval_start
        point = schedule_at(epoch, self.spec)
        workers = [reports[w] for w in sorted(reports)]
        samples = sum(r["samples"] for r in workers)
        record = {
            "epoch": epoch,
            "wall_time": wall,
            "lr": point.lr,
            "resolution": point.resolution,
            "dropout": point.dropout,
            "store_version": self.version_offset + version,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "eval_seconds": eval_seconds,
            "train_loss": sum(r["loss"] * r["samples"] for r in workers) / max(samples, 1),
            "train_acc": sum(r["acc"] * r["samples"] for r in workers) / max(samples, 1),
            "samples": samples,
            "samples_per_s": sum(r["samples_per_s"] for r in workers),
            "workers": [{k: r[k] for k in ("worker", "loss", "acc", "batch", "resolution", "samples", "steps",
                                           "pushes", "samples_per_s", "seconds", "wait_seconds", "weight", "version")} for r in workers],
        }
        self.metrics.log(epoch, {k: v for k, v in record.items() if k != "epoch"})
        self.records.append(record)
        self.last_state = state
        self._checkpoint_state = {
            "epoch": epoch,
            "next_epoch": epoch + 1,
            "state": state,
            "workers": [str(worker_state_path("", w, epoch)) for w in range(len(workers))],
            "wall_time": wall,
            "store_version": self.version_offset + version,
            "schedule": {"next_epoch": epoch + 1, "lr": point.lr, "resolution": point.resolution, "phase": point.phase},
            "rng": rng_states(),
            "test_acc": test_acc,
            "status": "finished" if epoch == int(self.spec.epochs) - 1 else "running",
        }
        save_checkpoint(self.run_dir, self._checkpoint_state)
        prune_worker_states(self.run_dir, len(workers), keep_from=epoch)
        self._epoch_done(record)

    def _rewrite_checkpoint_status(self, status: str) -> None:
        from dbl_ps.runtime.checkpoint import save_checkpoint

        state = getattr(self, "_checkpoint_state", None)
        if state is not None:
            state = dict(state, status=status)
            save_checkpoint(self.run_dir, state)

    def evaluate(self, state: Any) -> tuple[float, float]:
        """Test loss and top-1 of a flat global state at the highest resolution."""
        import torch

        from dbl_ps.data import eval_batches

        self.flat.scatter(state)
        self.model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for images, labels in eval_batches(self.data.test, self.transform, self.cfg.data.eval_batch_size,
                                               self.eval_resolution, device=self.eval_device):
                out = self.model(images)
                loss_sum += float(torch.nn.functional.cross_entropy(out, labels, reduction="sum"))
                correct += int((out.argmax(1) == labels).sum())
                count += labels.shape[0]
        return loss_sum / max(count, 1), correct / max(count, 1)

    # ------------------------------------------------------------------ stopping

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop waiting
            self._signal = signum

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    def _restore_signal_handlers(self, old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    def _interrupt_message(self) -> str:
        name = signal.Signals(self._signal).name if self._signal else "signal"
        if self.last_complete >= 0:
            return (f"{name}: stopped after epoch {self.last_complete + 1}; checkpoint written. "
                    f"Continue with: dbl-ps train --resume {self.run_dir}")
        return f"{name}: stopped before the first epoch completed; no checkpoint to resume from"

    def _join(self, procs: list[Any], stop: Any, queue: Any, timeout: float) -> None:
        import queue as queue_mod

        deadline = time.monotonic() + timeout
        for p in procs:
            while p.is_alive() and time.monotonic() < deadline:
                p.join(0.05)
                try:  # keep the queue drained so no worker blocks on a full pipe
                    while True:
                        queue.get_nowait()
                except (queue_mod.Empty, OSError, ValueError):
                    pass
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()

    # ------------------------------------------------------------------ display

    def _open_bars(self, epochs: int) -> None:
        if not self.progress:
            return
        from tqdm import tqdm

        W = self.cfg.dbl.workers
        self._bars = [tqdm(total=1, position=w, desc=f"worker {w}", leave=False, file=sys.stderr,
                           bar_format="{desc} {bar:20} {postfix}") for w in range(W)]
        self._global_bar = tqdm(total=epochs, initial=self.start_epoch, position=W, desc="epochs", unit="epoch",
                                file=sys.stderr, leave=True)
        self._bars.append(self._global_bar)

    def _update_worker_bar(self, w: int, epoch: int, step: int, steps: int, batch: int, res: int, sps: float) -> None:
        if not self._bars:
            return
        bar = self._bars[w]
        bar.total = steps
        bar.n = step
        bar.set_postfix_str(f"epoch {epoch} step {step}/{steps} batch {batch} res {res}px {sps:,.0f} samples/s", refresh=False)
        bar.refresh()

    def _epoch_done(self, record: dict[str, Any]) -> None:
        line = (f"epoch {record['epoch'] + 1}/{int(self.spec.epochs)}  res {record['resolution']}px  lr {record['lr']:.4g}  "
                f"train loss {record['train_loss']:.4f}  test loss {record['test_loss']:.4f}  "
                f"test acc {record['test_acc']:.4f}  {record['samples_per_s']:,.0f} samples/s  "
                f"t {record['wall_time']:.1f}s")
        if self._bars:
            self._global_bar.update(1)
            self._global_bar.set_postfix_str(f"test acc {record['test_acc']:.4f}", refresh=True)
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            self._log(line)

    def _close_bars(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars = []

    # ------------------------------------------------------------------ summary

    def _summary(self) -> dict[str, Any]:
        from dbl_ps.metrics import read_metrics, strict_dumps

        records = read_metrics(self.run_dir)
        evals = [r for r in records if isinstance(r.get("test_acc"), (int, float))]
        summary = {
            "run_dir": str(self.run_dir),
            "name": self.cfg.name,
            "method": self.spec.method,
            "status": self._status,
            "epochs": len(evals),
            "final_test_acc": evals[-1]["test_acc"] if evals else None,
            "best_test_acc": max(r["test_acc"] for r in evals) if evals else None,
            "final_test_loss": evals[-1]["test_loss"] if evals else None,
            "wall_time": evals[-1]["wall_time"] if evals else None,
            "samples_per_s": (sum(r["samples"] for r in evals) / sum(
                r["wall_time"] - p["wall_time"] for p, r in zip([{"wall_time": 0.0}] + evals, evals))) if evals else None,
            "workers": self.cfg.dbl.workers,
            "small_workers": self.cfg.dbl.small,
            "store_version": evals[-1].get("store_version") if evals else None,
            "server": getattr(self, "_server_stats", None),
            "plan_source": self.plan_source,
        }
        (self.run_dir / "summary.json").write_text(strict_dumps(summary, indent=2) + "\n")
        return summary

    def _print_summary(self, s: dict[str, Any]) -> None:
        def fmt(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        lines = [
            f"run {s['name']} ({s['method']}, {s['workers']} workers, {s['small_workers']} small) in {s['run_dir']}",
            f"  epochs {s['epochs']}  final test acc {fmt(s['final_test_acc'], '.4f')}  best {fmt(s['best_test_acc'], '.4f')}  "
            f"final test loss {fmt(s['final_test_loss'], '.4f')}",
            f"  wall time {fmt(s['wall_time'], '.1f')} s  mean {fmt(s['samples_per_s'], ',.0f')} samples/s  "
            f"store version {s['store_version']}  (time model: {s['plan_source']})",
        ]
        self._log("\n".join(lines))
