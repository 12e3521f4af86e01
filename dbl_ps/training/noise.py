"""The gradient noise scale of a run, per epoch (`noise_scale.*`; the maths in `dbl_ps.noise_scale`).

Two sources, whichever the epoch has:

* **the workers' own steps**: every worker already computes its whole-batch gradient at its
  own batch size each step. `GradientNormMeter` (a callback on the worker loop) switches the
  engine's measurement on (`Engine.measure_gradients`: one fused norm after backward, kept on
  the device, no host sync per step) and puts the epoch's `(batch, |g|^2)` into the worker's
  `EpochReport`. When the plan has two batch sizes (DBSL: small and large workers), the main
  process combines them (`worker_observations`): the two-batch estimate for free, at nearby
  (not identical) weights.
* **a probe** where every batch is the same (the baseline, SWA, local SGD, one process): after
  an evaluated epoch the main process takes gradients of the global model at a small and a
  large batch of training images, `noise_scale.probe_repeats` times each (`NoiseProbe`), with
  the workers' loss, dropout and augmentation, on a copy of the model.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from dbl_ps.config import RunConfig
from dbl_ps.models import set_dropout
from dbl_ps.noise_scale import NoiseScale, estimate
from dbl_ps.training.engine import loss_for
from dbl_ps.training.events import Callback
from dbl_ps.training.messages import EpochReport

if TYPE_CHECKING:
    from dbl_ps.training.loop import WorkerLoop

__all__ = ["GradientNormMeter", "NoiseProbe", "NoiseMeter", "worker_observations", "probe_batches", "build_noise_meter"]


class GradientNormMeter(Callback):
    """Records each step's `|g|^2` in the engine while the worker trains, into its epoch report."""

    def on_epoch_start(self, loop: "WorkerLoop", epoch: int) -> None:
        loop.engine.measure_gradients(True)

    def on_epoch_end(self, loop: "WorkerLoop", report: EpochReport) -> None:
        report.grad_sq = loop.engine.take_grad_sq()


def worker_observations(reports: list[EpochReport]) -> list[tuple[int, float]]:
    """The workers' `(batch, |g|^2)` at their planned batches (a share's last, smaller batch left
    out), or [] when the epoch has fewer than two planned batch sizes with measured steps."""
    observations = [(r.batch, sq) for r in reports for sq in r.planned_grad_sq]
    return observations if len({b for b, _ in observations}) >= 2 else []


def probe_batches(batch_large: int, batch_small: int | None) -> tuple[int, int]:
    """The probe's (small, large) batch: the epoch's batch and the configured small batch where
    it is below it, else an eighth of it (at least 1; the config checks the configured one
    against B_L where B_L is known)."""
    small = batch_small if batch_small is not None and batch_small < batch_large else max(2, batch_large // 8)
    return min(small, batch_large - 1), batch_large


class NoiseProbe:
    """Squared gradient norms of one model state at a small and a large batch of training images.

    `train` holds the training images in memory; `transform` and `loss_fn` are the workers'.
    The model is a copy (the caller's is never changed); the gradients are taken in training
    mode at the epoch's dropout, inside a forked RNG seeded by `(seed, epoch)`, so the
    workers' draws and a resumed run's probes are the same as an uninterrupted run's."""

    def __init__(self, model: nn.Module, train: Any, transform: Any, loss_fn: nn.Module, *, device: torch.device,
                 repeats: int, seed: int):
        self.model = copy.deepcopy(model).to(device)
        self.train, self.transform, self.loss_fn = train, transform, loss_fn
        self.device, self.repeats, self.seed = device, repeats, seed

    def _sq_norm(self, count: int, resolution: int, seed: int) -> float:
        pick = np.random.default_rng(seed).choice(len(self.train), size=min(count, len(self.train)), replace=False)
        index = torch.from_numpy(np.sort(pick))
        images, labels = self.transform.mix(  # as the workers' loaders draw a training batch
            self.transform(self.train.images[index].to(self.device), resolution, train=True),
            self.train.labels[index].to(self.device))
        self.model.zero_grad(set_to_none=True)
        self.loss_fn(self.model(images).float(), labels).backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) ** 2

    def __call__(self, state: dict[str, torch.Tensor], *, epoch: int, resolution: int, dropout: float,
                 batches: tuple[int, int]) -> list[tuple[int, float]]:
        self.model.load_state_dict(state)
        self.model.train()
        set_dropout(self.model, dropout)
        devices = [self.device] if self.device.type == "cuda" else []
        out = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, 7_777, epoch]).generate_state(1)[0]))
            for k in range(self.repeats):
                for j, batch in enumerate(batches):
                    out.append((batch, self._sq_norm(batch, resolution, seed=self.seed * 1_000_003 + epoch * 1009
                                                     + 2 * k + j)))
        self.model.zero_grad(set_to_none=True)
        return out


class NoiseMeter:
    """The epoch's noise scale for the finisher: from the workers' steps where the plan has two
    batch sizes, else from the probe on evaluated epochs (None: neither)."""

    def __init__(self, probe: NoiseProbe | None, *, probe_batch_small: int | None):
        self.probe, self.probe_batch_small = probe, probe_batch_small

    def __call__(self, epoch: int, reports: list[EpochReport], state: dict[str, torch.Tensor], *,
                 resolution: int, dropout: float, evaluated: bool) -> tuple[NoiseScale | None, str]:
        observations = worker_observations(reports)
        if observations:
            return estimate(observations, seed=epoch), "workers"
        if self.probe is None or not evaluated:
            return None, ""
        batches = probe_batches(max(r.batch for r in reports), self.probe_batch_small)
        return estimate(self.probe(state, epoch=epoch, resolution=resolution, dropout=dropout, batches=batches),
                        seed=epoch), "probe"


def build_noise_meter(cfg: RunConfig, model: nn.Module, train: Any, transform: Any, *, device: torch.device,
                      log: Callable[[str], None] = print) -> NoiseMeter | None:
    """The finisher's noise meter of a run (`noise_scale.*`), None when it is off. The probe
    needs the training images in memory in the main process; without them (a `shards`
    source, a folder read sample by sample) only plans with two batch sizes are measured."""
    ns = cfg.noise_scale
    if not ns.measure:
        return None
    probe = None
    if ns.probe_repeats > 0:
        if getattr(train, "in_memory", False) and len(train) and train.images.numel():
            probe = NoiseProbe(model, train, transform, loss_for(cfg), device=device, repeats=ns.probe_repeats,
                               seed=cfg.seed)
        else:
            log("noise_scale: the main process holds no training images in memory to probe; B_noise is measured "
                "only in epochs whose plan has two batch sizes (DBSL)")
    return NoiseMeter(probe, probe_batch_small=ns.probe_batch_small)
