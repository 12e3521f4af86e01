"""The epoch finisher: what happens once every worker has reported a global epoch.

Used by the store mode's launcher and by rank 0 of a multi-rank job alike:

1. evaluate the global model on the test set at the highest resolution, its BatchNorm
   running statistics first recomputed on a fixed set of training images
   (`eval.recalibrate_bn`): a merged model's weights do not match its merged statistics;
2. build the one epoch record (the same keys in every mode and engine) and log it
   through the logger fan-out (metrics.jsonl, W&B when enabled, ...);
3. write the global model into the epoch's checkpoint folder; `commit` then names
   the folder in checkpoint.json once the workers' own state files are there too;
4. at the end, `summary.json`; with recalibrated statistics also the evaluated final model
   (`model_eval.pt` next to the last `model.pt`, which stays the resumable merged state).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from dbl_ps.data import DataError, Split, eval_batches
from dbl_ps.data.transforms import BatchTransform
from dbl_ps.metrics import Logger, read_metrics
from dbl_ps.noise_scale import regime_line
from dbl_ps.schedule import ScheduleSpec, schedule_at
from dbl_ps.training.messages import EpochReport
from dbl_ps.training.noise import NoiseMeter
from dbl_ps.training.rundir import EVAL_MODEL_FILE, RunDirectory
from dbl_ps.training.swa import StochasticWeightAverage

__all__ = ["Evaluator", "EpochFinisher", "TestScores", "epoch_record", "bn_calibration_split"]


def bn_calibration_split(train: Any, samples: int, seed: int) -> Any | None:
    """The training images the global model's BatchNorm statistics are recomputed on: a
    fixed seeded subset (the same every epoch, so evaluations differ only by the model), in
    memory or read sample by sample. None when the split holds no pixels (the launcher of a
    `dbl-ps shard` source reads labels only)."""
    if train.in_memory and train.images.numel() == 0:
        return None
    return train.subset(samples, seed=seed)


class TestScores(NamedTuple):
    loss: float
    acc: float  # top-1
    acc5: float | None  # top-5; None with 5 classes or fewer, where it is always 1


class Evaluator:
    """Test loss, top-1 and top-5 of a whole-model state dict, at one resolution.

    With `bn_images` (a training split), the model's BatchNorm running statistics are
    first recomputed on those images at the evaluation resolution, as
    `torch.optim.swa_utils.update_bn` does for an averaged model. Why: the global model
    is a weighted mean of workers' weights, and its running statistics the same mean of
    the workers' statistics, but the activations of averaged weights are not the average
    of the workers' activations (their variance is smaller where the workers moved apart),
    so the stored statistics over-normalise layer after layer. With a small-batch worker
    that trains many more steps than the large ones the evaluated model fell to chance
    while every worker trained well (issue 17, benchmarks/RESULTS.md). The statistics are
    also those of the evaluation resolution, not of whichever CPL resolution the workers
    trained at last. The caller's state dict is not changed; `last_state` holds what was
    evaluated.
    """

    def __init__(self, model: nn.Module, test: Split, transform: BatchTransform, *, batch_size: int, resolution: int,
                 device: torch.device, bn_images: Any = None):
        # A copy of its own: recalibrating its BatchNorm statistics must not reach the caller's
        # model or the state dict it passes (model.pt is the merged state, what a resume continues).
        self.model = copy.deepcopy(model).to(device)
        self.test, self.transform = test, transform
        self.batch_size, self.resolution, self.device = batch_size, resolution, device
        self.bn_images = bn_images
        self.recalibrates = bn_images is not None and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        # The test labels are checked against the model's classes in the first evaluation only:
        # they do not change, and the check reads each batch back to the host (a device sync).
        self.labels_checked = False

    def recalibrate(self) -> None:
        """Recompute the BatchNorm running statistics of `self.model` on `bn_images`."""
        assert self.bn_images is not None
        inputs = (images for images, _ in eval_batches(self.bn_images, self.transform, self.batch_size,
                                                        self.resolution, device=self.device))
        with torch.no_grad():  # update_bn runs the model in training mode; no graph is needed
            update_bn(inputs, self.model)  # cumulative mean over the images, then back to the old momentum

    def last_state(self) -> dict[str, torch.Tensor]:
        """The state dict of the model as last evaluated (recalibrated statistics included)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @staticmethod
    def _check_labels(labels: torch.Tensor, classes: int, *, first_item: int) -> None:
        """A user's test labels outside the model's classes: cross_entropy would fail with an
        index error (on a GPU a device-side assert), so they are one DataError first."""
        bad = (labels < 0) | (labels >= classes)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise DataError(f"test set item {first_item + i}: label {int(labels[i])} outside 0..{classes - 1} "
                            f"(the model has {classes} classes); fix the test labels")

    def __call__(self, state: dict[str, torch.Tensor]) -> TestScores:
        self.model.load_state_dict(state)
        if self.recalibrates:
            self.recalibrate()
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        correct5 = torch.zeros((), dtype=torch.int64, device=self.device)
        count, classes = 0, 0
        with torch.no_grad():
            for images, labels in eval_batches(self.test, self.transform, self.batch_size, self.resolution,
                                               device=self.device):
                out = self.model(images).float()
                classes = out.shape[1]
                if not self.labels_checked:
                    self._check_labels(labels, classes, first_item=count)
                loss_sum += nn.functional.cross_entropy(out, labels, reduction="sum").double()
                correct += (out.argmax(1) == labels).sum()
                top5 = out.topk(min(5, classes), dim=1).indices
                correct5 += (top5 == labels[:, None]).any(dim=1).sum()
                count += labels.shape[0]
        self.labels_checked = True
        n = max(count, 1)
        return TestScores(float(loss_sum) / n, int(correct) / n, int(correct5) / n if classes > 5 else None)


def epoch_record(epoch: int, spec: ScheduleSpec, workers: list[EpochReport], *, wall_time: float,
                 store_version: int, scores: TestScores | None, eval_seconds: float,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics record of one global epoch (without the `epoch` key, which the logger adds);
    without the test_* and eval_seconds keys when the epoch was not evaluated (`eval.every`).
    `extra`: the noise scale's keys where it was measured, `swa_models` in SWA epochs."""
    point = schedule_at(epoch, spec)
    samples = sum(r.samples for r in workers)
    tested = {} if scores is None else {"test_loss": scores.loss, "test_acc": scores.acc, "test_acc5": scores.acc5,
                                        "eval_seconds": eval_seconds}
    return {
        "wall_time": wall_time,
        "lr": point.lr,
        "resolution": point.resolution,
        "dropout": point.dropout,
        "store_version": store_version,
        **tested,
        "train_loss": sum(r.loss * r.samples for r in workers) / max(samples, 1),
        "train_acc": sum(r.acc * r.samples for r in workers) / max(samples, 1),
        "samples": samples,
        "samples_per_s": sum(r.samples_per_s for r in workers),
        "sync_seconds": max(r.sync_seconds for r in workers),
        "wait_seconds": max(r.wait_seconds for r in workers),
        **(extra or {}),
        "workers": [r.to_record() for r in workers],
    }


class EpochFinisher:
    """Evaluates, records and checkpoints each global epoch of one run (launcher or rank 0)."""

    def __init__(self, run_dir: RunDirectory, spec: ScheduleSpec, evaluate: Evaluator, logger: Logger, *,
                 engine: str, workers: int, ranks_per_worker: int = 1, wall_offset: float = 0.0,
                 version_offset: int = 0, evaluate_every: int = 1, log: Callable[[str], None] = print,
                 first_epoch: int = 0, swa: StochasticWeightAverage | None = None,
                 noise: NoiseMeter | None = None, global_batch: bool = False):
        self.run_dir, self.spec, self.evaluate, self.logger = run_dir, spec, evaluate, logger
        self.swa, self.noise = swa, noise
        # Gradients merged inside every step (sync mixed_batch): the batch a step trains is the
        # ranks' batches summed, and that is what the noise scale is compared with.
        self.global_batch = global_batch
        self.noise_said = False  # the regime line against B_noise: once, at the first measurement
        self.evaluate_every = evaluate_every
        self.engine, self.workers, self.ranks_per_worker = engine, workers, ranks_per_worker
        self.wall_offset, self.version_offset = wall_offset, version_offset
        self.log = log
        self.first_epoch = first_epoch  # where this launch started: the epochs before it are trained
        self.t0 = time.perf_counter()
        self.last: dict[str, Any] | None = None  # the last checkpoint's metadata
        self.evaluated: tuple[int, tuple[float, ...]] | None = None  # (epoch, fingerprint) of the last evaluation
        self.same_as: int | None = None  # this epoch's evaluated model is the one evaluated at that epoch

    def start_clock(self) -> None:
        """Training starts now: the wall time excludes what came before (process start-up)."""
        self.t0 = time.perf_counter()

    def wall_time(self) -> float:
        """Seconds of training so far (a resumed run continues from its checkpoint's; pauses do not count)."""
        return self.wall_offset + time.perf_counter() - self.t0

    def finish(self, epoch: int, reports: list[EpochReport], model_state: dict[str, torch.Tensor],
               version: int) -> dict[str, Any]:
        """Evaluate and log epoch `epoch`; write its global model. Returns the record."""
        wall = self.wall_time()
        started = time.perf_counter()
        last_epoch = epoch == int(self.spec.epochs) - 1
        evaluated = last_epoch or (epoch + 1) % self.evaluate_every == 0
        swa = self.swa if self.swa is not None and self.swa.active(epoch) else None  # averaging this epoch
        evaluated_state = swa.update(model_state) if swa is not None else model_state  # SWA: the average's
        scores = self.evaluate(evaluated_state) if evaluated else None
        eval_seconds = time.perf_counter() - started
        test_acc = scores.acc if scores is not None else None
        self.same_as = None
        if scores is not None:  # an unchanged model evaluated again (nothing merged since) is said so
            mark = tuple(float(t.double().sum()) for t in evaluated_state.values() if t.is_floating_point())
            if self.evaluated is not None and self.evaluated[1] == mark:
                self.same_as = self.evaluated[0]
            self.evaluated = (epoch, mark)
        extra = self._noise(epoch, reports, model_state, evaluated)
        if swa is not None:
            extra["swa_models"] = swa.count
        record = epoch_record(epoch, self.spec, reports, wall_time=wall, store_version=self.version_offset + version,
                              scores=scores, eval_seconds=eval_seconds, extra=extra)
        self.logger.log(epoch, record)
        self.run_dir.save_model(epoch, model_state)  # the global state as merged: what a resume continues from
        if swa is not None:
            swa.save(self.run_dir.epoch_folder(epoch))  # the average so far: a resume averages on
        if self.evaluate.recalibrates and last_epoch:
            self.run_dir.save_model(epoch, self.evaluate.last_state(), EVAL_MODEL_FILE)  # the model to use
        self.last = {"epoch": epoch, "next_epoch": epoch + 1, "wall_time": wall,
                     "store_version": self.version_offset + version, "workers": self.workers,
                     "ranks_per_worker": self.ranks_per_worker, "engine": self.engine, "test_acc": test_acc,
                     "status": "finished" if last_epoch else "running"}
        return {"epoch": epoch, **record}

    def _noise(self, epoch: int, reports: list[EpochReport], state: dict[str, torch.Tensor],
               evaluated: bool) -> dict[str, Any]:
        """The record's noise-scale keys (`dbl_ps.noise_scale.NoiseScale.to_record`), {} when unmeasured."""
        if self.noise is None:
            return {}
        point = schedule_at(epoch, self.spec)
        est, source = self.noise(epoch, reports, state, resolution=point.resolution, dropout=point.dropout,
                                 evaluated=evaluated)
        return est.to_record(source) if est is not None else {}

    def noise_line(self, record: dict[str, Any], *, resumed: bool = False) -> str:
        """Where the record's batches stand against its B_noise, in one line."""
        batches = [w["batch"] for w in record["workers"]]
        if self.global_batch:  # one step trains the union of the ranks' batches
            large, small, name = sum(batches), None, "the global batch"
        else:
            large, name = max(batches), "B_L"
            small = min(batches) if min(batches) < large else None
        line = regime_line(record.get("b_noise"), record.get("b_noise_std"), batch_large=large, batch_small=small,
                           batch_name=name, epoch=record["epoch"] + 1, grad_sq=record.get("noise_grad_sq"))
        return f"{line} (the last measured before this resume)" if resumed else line

    def say_noise_scale_so_far(self) -> None:
        """A resumed run: the regime line of the latest B_noise in its metrics, if it has one."""
        measured = [r for r in read_metrics(self.run_dir.path) if "noise_source" in r and "workers" in r]
        if measured:
            self.log(self.noise_line(measured[-1], resumed=True))
            self.noise_said = True

    def commit(self) -> None:
        """checkpoint.json := the last finished epoch (every file of its folder is written)."""
        assert self.last is not None
        self.run_dir.commit_checkpoint(self.last)

    def console_line(self, record: dict[str, Any]) -> str:
        skipped = sum(w["skipped_syncs"] for w in record["workers"])
        tested = (f"test loss {record['test_loss']:.4f}  test acc {record['test_acc']:.4f}" if "test_acc" in record
                  else "not evaluated (eval.every)")
        if self.same_as is not None and self.same_as != record["epoch"]:
            tested += f" (the model of epoch {self.same_as + 1} again: nothing was merged since)"
        noise = f"  B_noise {record['b_noise']:.3g}" if isinstance(record.get("b_noise"), (int, float)) else ""
        line = (f"epoch {record['epoch'] + 1}/{int(self.spec.epochs)}  res {record['resolution']}px  "
                f"lr {record['lr']:.4g}  train loss {record['train_loss']:.4f}  {tested}{noise}  "
                f"{record['samples_per_s']:,.0f} samples/s  "
                f"t {record['wall_time']:.1f}s" + (f"  skipped {skipped} non-finite syncs" if skipped else ""))
        if "noise_source" in record and not self.noise_said:  # the first B_noise of this process: say the regime
            self.noise_said = True
            line += "\n" + self.noise_line(record)
        return line

    def summary(self, status: str, **extra: Any) -> dict[str, Any]:
        """summary.json from metrics.jsonl (every epoch of the run, resumed parts included)."""
        records = read_metrics(self.run_dir.path)
        epochs = [r for r in records if "workers" in r]  # every trained epoch (replan records have no workers)
        evals = [r for r in epochs if isinstance(r.get("test_acc"), (int, float))]
        last = evals[-1] if evals else {}
        seconds = epochs[-1]["wall_time"] if epochs else 0.0
        workers = [w for r in epochs for w in r.get("workers", [])]
        if status == "finished" and workers and all(0 < w.get("syncs", 0) == w.get("skipped_syncs", 0) for w in workers):
            # divergence: skip left every update out: the global model is the initial one, nothing was learnt
            status = "diverged"
            extra = {**extra, "reason": (f"every sync of the run was skipped as non-finite ({len(epochs)} epoch(s), "
                                         f"divergence=skip): the global model never changed; lower schedule.lr (or "
                                         f"lengthen schedule.warmup_epochs) and start a new run")}
        summary = {
            "run_dir": str(self.run_dir.path),
            "status": status,
            "method": self.spec.method,
            "engine": self.engine,
            "workers": self.workers,
            "ranks_per_worker": self.ranks_per_worker,
            # the epochs trained (those checkpointed), not the records (a cut metrics.jsonl has fewer)
            "epochs": self.last["epoch"] + 1 if self.last is not None else self.first_epoch,
            "final_test_acc": last.get("test_acc"),
            "best_test_acc": max(r["test_acc"] for r in evals) if evals else None,
            "final_test_loss": last.get("test_loss"),
            "wall_time": last.get("wall_time"),
            "samples_per_s": sum(r["samples"] for r in epochs) / seconds if epochs and seconds > 0 else None,
            "store_version": last.get("store_version"),
            # divergence: skip (records written before the key existed count 0)
            "skipped_syncs": sum(w.get("skipped_syncs", 0) for r in evals for w in r.get("workers", [])),
            **self._noise_summary(epochs),
            **extra,
        }
        self.run_dir.write_summary(summary)
        return summary

    def _noise_summary(self, epochs: list[dict[str, Any]]) -> dict[str, Any]:
        """The last B_noise measured (null when none resolved one) and its regime line; the SWA
        average's size."""
        measured = [r for r in epochs if "noise_source" in r]
        resolved = [r for r in measured if isinstance(r.get("b_noise"), (int, float))]
        last = (resolved or measured or [{}])[-1]
        out = {"b_noise": last.get("b_noise"), "b_noise_std": last.get("b_noise_std"),
               "noise_regime": self.noise_line(last) if last else None}
        if self.swa is not None:
            out["swa_models"] = self.swa.count
        return out
