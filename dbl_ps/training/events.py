"""Named events of the worker loop, where callbacks hook in.

The loop calls, in this order per epoch: `on_epoch_start`, then per step
`on_step`, around each sync `before_sync` / `after_sync`, then `on_epoch_end`.
The run driver (`dbl_ps.runtime.driver`), in every mode and process, calls `on_replan`
once a re-plan after an epoch is in plan.json and `on_checkpoint` once the epoch's
checkpoint is committed; their `loop` is the worker loop the process trains, or None
(the store mode's launcher trains none). A
callback overrides the methods it needs; the loop never knows which callbacks it
holds. Launchers use them for their own duties (the store mode's epoch gate, stop
checks and progress messages), and tests use them for fault injection and state
dumps (`dbl_ps.runtime.hooks`), so none of that is an `if` inside the loop.

Raising from a callback stops the loop; `StopTraining` means a clean stop.

`RunCallback` is the user's extension point (config `callbacks:`, `Trainer(callbacks=)`): the
run's own events, called on the main process (the launcher, rank 0) in every mode, each call
isolated (an exception is reported once and that callback is off; a hang is bounded), with
`StopTraining` the one exception that reaches the run: it stops after the checkpoint, on every
process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # type names only: loop.py imports this module
    from dbl_ps.training.loop import EpochState, WorkerLoop
    from dbl_ps.training.messages import EpochReport

__all__ = ["Callback", "Callbacks", "StopTraining", "RunCallback"]


class StopTraining(Exception):
    """A callback asks the run to stop cleanly after what is saved."""


class Callback:
    """Base class: every event is a no-op."""

    def on_epoch_start(self, loop: "WorkerLoop", epoch: int) -> None: ...

    def on_step(self, loop: "WorkerLoop", state: "EpochState") -> None: ...

    def before_sync(self, loop: "WorkerLoop", state: "EpochState") -> None: ...

    def after_sync(self, loop: "WorkerLoop", state: "EpochState") -> None: ...

    def on_epoch_end(self, loop: "WorkerLoop", report: "EpochReport") -> None: ...

    def on_replan(self, loop: "WorkerLoop | None", epoch: int) -> None: ...

    def on_checkpoint(self, loop: "WorkerLoop | None", epoch: int) -> None: ...


class Callbacks(Callback):
    """Calls every callback's handler of an event, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def _all(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)

    def on_epoch_start(self, loop: "WorkerLoop", epoch: int) -> None:
        self._all("on_epoch_start", loop, epoch)

    def on_step(self, loop: "WorkerLoop", state: "EpochState") -> None:
        self._all("on_step", loop, state)

    def before_sync(self, loop: "WorkerLoop", state: "EpochState") -> None:
        self._all("before_sync", loop, state)

    def after_sync(self, loop: "WorkerLoop", state: "EpochState") -> None:
        self._all("after_sync", loop, state)

    def on_epoch_end(self, loop: "WorkerLoop", report: "EpochReport") -> None:
        self._all("on_epoch_end", loop, report)

    def on_replan(self, loop: "WorkerLoop | None", epoch: int) -> None:
        self._all("on_replan", loop, epoch)

    def on_checkpoint(self, loop: "WorkerLoop | None", epoch: int) -> None:
        self._all("on_checkpoint", loop, epoch)


class RunCallback:
    """Base class of a user's callback on the run's events; every event is a no-op. Called on
    the main process in every mode (the store mode's launcher, rank 0 under a launcher), in
    this order: `on_run_start` once training is about to start (`run`: a dict with `run_dir`,
    `config`, `plan`, `start_epoch`, `resumed`), then per global epoch `on_epoch_end` with the
    epoch's metrics record (what metrics.jsonl gets: `epoch` counts from 0, `test_acc` where
    evaluated), `on_replan` with the re-plan record when the plan changed after that epoch, and
    `on_checkpoint` once the epoch's checkpoint folder is committed (safe to copy); at the end
    `on_run_end` with summary.json's content. Raise `StopTraining(reason)` to stop the run
    after the current epoch's checkpoint (status "interrupted", resumable); any other
    exception is reported once and the callback is off for the rest of the run."""

    def on_run_start(self, run: dict[str, Any]) -> None: ...

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None: ...

    def on_replan(self, epoch: int, record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, epoch: int, folder: Any) -> None: ...

    def on_run_end(self, summary: dict[str, Any]) -> None: ...
