"""Run directories: unique names for new runs, and the `--run-dir` check done before
any work starts.

    path = create_unique_dir(Path("runs"), "digits-hybrid-20261125-101500")
    problem = run_dir_problem(Path(args.run_dir))      # None when it can be used

Two runs started in the same second used to compute the same `<name>-<timestamp>`
and the second one failed once it tried to write there. `create_unique_dir` creates
the directory itself with an atomic `mkdir` (it fails if the name exists, whoever
made it), so of any number of concurrent callers each gets its own directory.

A run directory has one owner at a time: the process training in it holds `run.lock`
(`RunLock`: pid, process start time, host, command line), created with `O_EXCL`, so a
second `dbl-ps train --resume` (or `--run-dir`) on a directory that is still training
is one error naming the owner, instead of two processes rewriting the same metrics and
checkpoints. The lock is removed when the owner ends; an owner killed with SIGKILL
leaves it behind, and the next taker sees that its pid is gone (or is another process:
the start time differs) and takes the lock over.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["create_unique_dir", "run_dir_problem", "remove_if_empty", "RunLock", "RunDirectoryBusy", "LOCK_FILE",
           "lock_owner", "RunWriteError", "write_failure"]

LOCK_FILE = "run.lock"
FULL_BELOW = 1 << 20  # bytes: a device with less free space than this is full for a checkpoint

MAX_SUFFIX = 10_000  # more taken names than this is not a collision but a full folder


def create_unique_dir(parent: Path, stem: str) -> Path:
    """Create and return `parent/stem`, or `parent/stem-1`, `-2`, ... when that is taken.
    The directory is new and empty and no other caller got the same one. A parent that
    cannot hold it (read-only, under a file, no permission) is one `RunWriteError`."""
    for n in range(MAX_SUFFIX):
        path = parent / (stem if n == 0 else f"{stem}-{n}")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()  # atomic: exactly one caller creates a given name
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunWriteError(f"cannot create a run directory under {parent} ({exc.strerror or exc}); choose "
                                f"another out_dir or --run-dir") from None
        return path
    raise FileExistsError(f"{parent} already holds {stem} and {MAX_SUFFIX - 1} numbered variants of it; "
                          f"choose another out_dir or name")


def run_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be a new run's directory (it names a file, lies under a file, or
    already holds files), or None when it can: checked before any data is loaded or time
    measured, so a wrong `--run-dir` costs nothing."""
    if path.exists() and not path.is_dir():
        return f"--run-dir {path} is a file; give a new or empty directory"
    owner = lock_owner(path) if path.is_dir() else None
    if owner is not None:
        return f"run directory {path} {owner.describe()}"
    if path.is_dir() and any(path.iterdir()):
        return f"run directory {path} is not empty; resume it with --resume or choose another"
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"--run-dir {path}: {ancestor} is a file, so no directory can be made under it"
            break
    return None


def remove_if_empty(path: Path) -> None:
    """Remove `path` if it is an empty directory (a run that failed before writing)."""
    try:
        path.rmdir()
    except OSError:  # not empty, already gone, or not a directory: leave it
        pass


class RunDirectoryBusy(RuntimeError):
    """Another live process is training in the run directory."""


@dataclass
class _Owner:
    pid: int
    start_time: int | None  # clock ticks since boot (Linux), None where unknown
    host: str
    command: str

    def describe(self) -> str:
        return (f"is in use by pid {self.pid} on {self.host} (`{self.command}`); wait for it to finish or stop it "
                f"(Ctrl-C keeps its checkpoint), then resume")

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # another machine's process: cannot tell, so never take its lock over
        if os.name != "posix":
            return True  # no cheap liveness check here: a stale lock is removed by hand (the error says where)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, owned by another user
        return self.start_time is None or _start_time(self.pid) in (None, self.start_time)


def _start_time(pid: int) -> int | None:
    """The process's start time (Linux: field 22 of /proc/PID/stat), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def lock_owner(run_dir: Path) -> _Owner | None:
    """The live process holding `run_dir`'s lock, or None (no lock, or its owner is gone)."""
    try:
        owner = _Owner(**json.loads((Path(run_dir) / LOCK_FILE).read_text()))
    except (OSError, ValueError, TypeError):  # no lock, or one being written: not an owner to name
        return None
    return owner if owner.alive() else None


class RunLock:
    """This process's ownership of a run directory; `release()` (or the end of a `with`) gives it up."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        me = _Owner(pid=os.getpid(), start_time=_start_time(os.getpid()), host=socket.gethostname(),
                    command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200])
        for _ in range(3):  # a stale lock is removed and the creation tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock_owner(self.path.parent)
                if owner is not None:
                    raise RunDirectoryBusy(f"run directory {self.path.parent} {owner.describe()}") from None
                self.path.unlink(missing_ok=True)  # its owner died (SIGKILL, power loss): take over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(me), f)
            self.held = True
            return
        raise RunDirectoryBusy(f"cannot take {self.path}: other processes keep creating it")

    def release(self) -> None:
        if getattr(self, "held", False):
            self.held = False
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunWriteError(OSError):
    """A run's file could not be written (typically a full disk); what was written before is intact."""


def write_failure(path: Path, exc: BaseException) -> RunWriteError:
    """One line for a failed write of `path`: the cause and the free space where it goes.
    (torch.save reports a full disk as a RuntimeError from its stream writer, not ENOSPC,
    so an almost empty device is named as the cause whatever the exception says.)"""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(exc, "errno", None) == errno.ENOSPC or (free is not None and free < FULL_BELOW):
        cause = "no space left on the device"
    else:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = f"{free / 2**20:,.1f} MiB free there" if free is not None else "free space unknown"
    return RunWriteError(f"cannot write {path} ({cause}; {where})")
