"""TensorBoard tracking (`tracking.trackers: [tensorboard]`): the scalars W&B logs
(`dbl_ps.metrics.epoch_metrics`: `test/`, `train/`, each worker's `train/worker{i}/`,
`schedule/`, `store/`, `time/`; a re-plan's `replan/worker{i}/`), at the epoch as users
count it (1-based), in `RUN_DIR/tensorboard/` (`tensorboard --logdir RUN_DIR`).

Written through `torch.utils.tensorboard.SummaryWriter`, which needs the `tensorboard`
package (`pip install "dbl-ps[tensorboard]"`), imported only when the tracker opens.
A resumed run appends to the same folder: its writer opens at the first record with
`purge_step` set to that step, so TensorBoard hides what the interrupted run logged at
or after it (epochs after the checkpoint, trained again) and each epoch shows once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from dbl_ps._optional import require
from dbl_ps.metrics import epoch_metrics, shown_epoch

__all__ = ["TensorBoardTracker", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"
FEATURE = "TensorBoard tracking (tracking.trackers: [tensorboard])"


class TensorBoardTracker:
    """A metrics sink (`log(step, record)`, `close()`) writing TensorBoard scalars, tagged as
    W&B names them (`epoch_metrics`), at step `shown_epoch(step)`."""

    def __init__(self, log_dir: str | os.PathLike, *, resuming: bool = False):
        require("tensorboard", feature=FEATURE)  # the error names the extra to install
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.resuming = resuming
        self.writer: Any = None

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        shown = shown_epoch(step)
        if self.writer is None:
            self.writer = self._writer_class(str(self.log_dir), purge_step=shown if self.resuming else None)
        for tag, value in epoch_metrics(record).items():
            self.writer.add_scalar(tag, value, global_step=shown)
        self.writer.flush()  # one record per epoch: visible to a running TensorBoard at once

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
