"""Stop signals around the moments a launcher cannot handle them the usual way.

* While a run starts (data loading, the time-model measurement, the plan): SIGTERM and
  SIGHUP, what `timeout`, `docker stop`, a scheduler's pre-emption and a closed SSH session
  send, stop it as Ctrl-C does (`interrupt_on_signals`): one line, the run directory left
  as a resume or a new start accepts it. They used to kill the launcher without a word.
* While worker processes are spawned (`blocked_while_spawning`): SIGINT and SIGHUP are
  blocked, so a child starts with them blocked, and Ctrl-C during its `import torch`
  reaches the launcher alone instead of printing a KeyboardInterrupt traceback per worker
  (the worker ignores both once it runs: the launcher decides how to stop). Blocked, not
  ignored: a signal arriving meanwhile waits and reaches the launcher when it is unblocked.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["interrupt_on_signals", "received", "blocked_while_spawning"]

_received: list[str] = []  # the first stop signal inside `interrupt_on_signals`


def received() -> str:
    """The name of the signal that stopped the start (SIGINT when none was recorded)."""
    return _received[0] if _received else "SIGINT"


def _raise(signum: int, frame: Any) -> None:
    if not _received:
        _received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt inside (main thread only; elsewhere
    nothing changes), also where code inside turned it into another error; the handlers
    before come back at the end. A coordinator that installs
    its own handlers inside (once its workers start) puts these back when it closes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.signal(s, _raise) for s in sigs}
    try:
        yield
    except Exception as exc:
        # A C extension being imported when the signal came (scipy's pybind11 modules under
        # sklearn, while the data loads) turns the handler's KeyboardInterrupt into its own
        # error, e.g. ImportError("initialization failed"): the stop stays a stop.
        if _received:
            raise KeyboardInterrupt from exc
        raise
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def blocked_while_spawning() -> Iterator[None]:
    """SIGINT and SIGHUP blocked in this thread inside: a process started here inherits the
    mask, so neither reaches it while it imports (POSIX; elsewhere nothing changes)."""
    block = getattr(signal, "pthread_sigmask", None)
    if block is None or not hasattr(signal, "SIGHUP"):
        yield
        return
    old = block(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})
    try:
        yield
    finally:
        block(signal.SIG_SETMASK, old)
