"""Users' callbacks on the run's events (`callbacks:` in the config, `Trainer(callbacks=)`),
called by the run driver on the main process in every mode.

Each callback sits behind its own `dbl_ps.metrics.Isolated` guard (`tracking.timeout` seconds
a call, as trackers): an exception (or a hang) is reported once and that callback is off for
the rest of the run, training goes on. `StopTraining` is the one exception that passes: the
driver collects it and stops the run after the epoch's checkpoint, on every process.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from dbl_ps.imports import ImportPathError, import_callable
from dbl_ps.metrics import Isolated
from dbl_ps.training.events import RunCallback, StopTraining
from dbl_ps.training.topology import LaunchError

__all__ = ["UserCallbacks", "load_callbacks", "EVENTS"]

EVENTS = ("on_run_start", "on_epoch_end", "on_replan", "on_checkpoint", "on_run_end")


def load_callbacks(paths: Iterable[str]) -> list[tuple[str, Any]]:
    """`(name, callback)` for each import path of the config's `callbacks`: the named class or
    factory called with no arguments. One that does not import, fails to build, or builds
    something with none of the events is one `LaunchError` naming the key."""
    loaded = []
    for i, path in enumerate(paths):
        key = f"callbacks[{i}]"
        try:
            factory = import_callable(path, key)
        except ImportPathError as exc:
            raise LaunchError(str(exc)) from None
        try:
            callback = factory()
        except Exception as exc:  # noqa: BLE001 (user code: its error, named)
            raise LaunchError(f"config key '{key}': {path}() raised {type(exc).__name__}: {exc}") from None
        if not any(callable(getattr(callback, event, None)) for event in EVENTS):
            raise LaunchError(f"config key '{key}': {path}() returned a {type(callback).__name__}, which has none of "
                              f"the run's events ({', '.join(EVENTS)}); subclass dbl_ps.training.events.RunCallback")
        loaded.append((path, callback))
    return loaded


class UserCallbacks:
    """The run's user callbacks, each behind its own guard."""

    def __init__(self, callbacks: Iterable[tuple[str, Any]], *, timeout: float, warn: Callable[[str], None]):
        self.guarded = [(callback, Isolated(f"callback {name}", timeout=timeout, warn=warn,
                                            passthrough=(StopTraining,)))
                        for name, callback in callbacks]

    def __bool__(self) -> bool:
        return bool(self.guarded)

    def fire(self, event: str, *args: Any) -> StopTraining | None:
        """Call `event` on every callback that has it; returns the first `StopTraining` one
        raised (every callback is still called), None when none asked to stop."""
        stop = None
        for callback, guard in self.guarded:
            handler = getattr(callback, event, None)
            if handler is None or getattr(type(callback), event, None) is getattr(RunCallback, event, None):
                continue  # the base class's no-op
            try:
                guard(handler, *args)
            except StopTraining as request:
                stop = stop or request
        return stop
