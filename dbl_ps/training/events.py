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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # type names only: loop.py imports this module
    from dbl_ps.training.loop import EpochState, WorkerLoop
    from dbl_ps.training.messages import EpochReport

__all__ = ["Callback", "Callbacks", "StopTraining"]


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
