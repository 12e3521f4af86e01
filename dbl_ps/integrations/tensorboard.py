"""TensorBoard tracking (`tracking.trackers: [tensorboard]`): every numeric key of each
metrics record as a scalar, in `RUN_DIR/tensorboard/` (`tensorboard --logdir RUN_DIR`).

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

__all__ = ["TensorBoardTracker", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"
FEATURE = "TensorBoard tracking (tracking.trackers: [tensorboard])"


class TensorBoardTracker:
    """A metrics sink (`log(step, record)`, `close()`) writing TensorBoard scalars. Tags are
    the record's keys; a record with an `event` (a re-plan) gets `<event>/<key>`, so its
    keys never mix with the epoch's."""

    def __init__(self, log_dir: str | os.PathLike, *, resuming: bool = False):
        require("tensorboard", feature=FEATURE)  # the error names the extra to install
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.resuming = resuming
        self.writer: Any = None

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            self.writer = self._writer_class(str(self.log_dir), purge_step=step if self.resuming else None)
        prefix = f"{record['event']}/" if "event" in record else ""
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(prefix + key, value, global_step=step)
        self.writer.flush()  # one record per epoch: visible to a running TensorBoard at once

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
