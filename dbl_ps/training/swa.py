"""Stochastic weight averaging of the global model (`swa.*`; Izmailov et al., "Averaging
Weights Leads to Wider Optima and Better Generalization", 2018).

From global epoch `swa_start_epoch(...)` on, the main process (the launcher, or rank 0)
averages the global model at the end of every epoch into a `torch.optim.swa_utils.AveragedModel`
(equal weights), and evaluates that average instead of the last model; the evaluation
recomputes its BatchNorm statistics on training images first (`eval.recalibrate_bn`, what
`swa_utils.update_bn` does), which an average of weights needs. The learning rate of the SWA
epochs is the schedule's (`dbl_ps.schedule.lr_at`): held at its value at the start, or annealed
to `swa.lr` as `swa_utils.SWALR` does. The workers train as before; `model.pt` stays the merged
state a resume continues from, and `swa.pt` beside it holds the average and its count, so a
resumed run averages on where it stopped.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from dbl_ps.config import RunConfig
from dbl_ps.training.engine import atomic_save

__all__ = ["SWA_FILE", "StochasticWeightAverage", "swa_start_epoch"]

SWA_FILE = "swa.pt"


def swa_start_epoch(start: float, epochs: int) -> int:
    """The first averaged global epoch (from 0): `start` itself when it is an epoch (>= 1), else
    that fraction of the run (0.75 of 12 epochs: epoch 9, the last 3 averaged)."""
    epoch = int(start) if start >= 1 else int(math.floor(start * epochs + 0.5))
    return min(max(epoch, 0), epochs - 1)


class StochasticWeightAverage:
    """The running equal-weight average of the global models of epochs `start..` (main process)."""

    def __init__(self, model: nn.Module, start: int):
        self.start = start
        self.model = model  # a scratch copy the global states are loaded into
        self.average = AveragedModel(model, device=torch.device("cpu"))

    @property
    def count(self) -> int:
        return int(self.average.n_averaged)

    def active(self, epoch: int) -> bool:
        return epoch >= self.start

    def update(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average the global state in; returns the averaged model's state (its buffers, which
        the average does not cover, the latest model's: the evaluation recomputes them)."""
        self.model.load_state_dict(state)
        self.average.update_parameters(self.model)
        for mine, latest in zip(self.average.module.buffers(), self.model.buffers()):
            mine.copy_(latest)
        return self.state()

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged model as a state dict of the model (what `Evaluator` and model_eval.pt take)."""
        return {k: v.detach().clone() for k, v in self.average.module.state_dict().items()}

    def save(self, folder: Path) -> None:
        atomic_save(self.average.state_dict(), folder / SWA_FILE)

    def load(self, folder: Path) -> bool:
        """The average a checkpoint folder holds; False when it has none (the average had not started)."""
        path = folder / SWA_FILE
        if not path.is_file():
            return False
        self.average.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return True

    @classmethod
    def for_run(cls, cfg: RunConfig, model: nn.Module, resume_folder: Path | None = None) -> "StochasticWeightAverage | None":
        """The average a config asks for (`swa.enabled`), over a CPU copy of `model`, with what
        the checkpoint folder a run resumes from holds; None when SWA is off."""
        if not cfg.swa.enabled:
            return None
        swa = cls(copy.deepcopy(model).to("cpu"), swa_start_epoch(cfg.swa.start, cfg.schedule.epochs))
        if resume_folder is not None:
            swa.load(resume_folder)
        return swa
