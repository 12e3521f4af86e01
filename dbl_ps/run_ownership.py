"""Run directories: unique names for new runs, and the `--run-dir` check done before
any work starts.

    path = create_unique_dir(Path("runs"), "digits-hybrid-20261125-101500")
    problem = run_dir_problem(Path(args.run_dir))      # None when it can be used

Two runs started in the same second used to compute the same `<name>-<timestamp>`
and the second one failed once it tried to write there. `create_unique_dir` creates
the directory itself with an atomic `mkdir` (it fails if the name exists, whoever
made it), so of any number of concurrent callers each gets its own directory.

A run directory has one owner at a time: the process training in it holds `run.lock`
(`RunLock`: an exclusive flock held for the owner's lifetime; the file names pid, process
start time, host and command line), so a second `dbl-ps train --resume` (or `--run-dir`)
on a directory that is still training is one error naming the owner, instead of two
processes rewriting the same metrics and checkpoints. The lock is removed when the owner
ends; an owner killed with SIGKILL leaves the file behind, but not its flock, and the next
taker takes it over. Whether a lock is stale is never read from the file's content (an
earlier version took a lock whose creator had not written it yet for stale: two owners).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # Windows: the lock is linked into place instead
    fcntl = None  # type: ignore[assignment]

__all__ = ["create_unique_dir", "run_dir_problem", "never_trained", "remove_if_empty", "RunLock", "RunDirectoryBusy", "LOCK_FILE",
           "lock_owner", "RunWriteError", "write_failure", "atomic_write"]

LOCK_FILE = "run.lock"
FULL_BELOW = 1 << 20  # bytes: a device with less free space than this is full for a checkpoint

LOCK_PATIENCE = 2.0  # seconds of retries while other processes take and release the lock
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
    if path.is_dir() and any(path.iterdir()) and not never_trained(path):
        return f"run directory {path} is not empty; resume it with --resume or choose another"
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"--run-dir {path}: {ancestor} is a file, so no directory can be made under it"
            break
    return None


# What a run writes while it starts, before anything of an epoch: a directory holding only
# these (and temporary files) never trained, so a new start there loses nothing.
SETUP_FILES = frozenset({"config.yaml", "plan.json", "schedule.json", "schedule.txt", "schedule.png", LOCK_FILE})


def never_trained(path: Path) -> bool:
    """Whether `path` is a directory holding only what a run writes while it starts (config,
    plan, schedule, an empty metrics.jsonl, a lock nobody holds): a stop during start-up (Ctrl-C, SIGTERM, SIGHUP, a
    kill) left it, and `--run-dir` starts it anew (it used to say "not empty; resume it"
    while `--resume` said "not a run directory")."""
    try:
        names = os.listdir(path)
        empty_metrics = "metrics.jsonl" not in names or os.path.getsize(os.path.join(path, "metrics.jsonl")) == 0
    except OSError:
        return False
    return empty_metrics and all(n in SETUP_FILES or n.endswith(".tmp") or n == "metrics.jsonl" for n in names) \
        and lock_owner(Path(path)) is None


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
        if self.host != socket.gethostname():
            return (f"is locked by pid {self.pid} on another host, {self.host} (`{self.command}`); this machine cannot "
                    f"tell whether it still runs: if you know that run has ended, remove its {LOCK_FILE} and try again")
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


def _read_owner(text: str) -> _Owner | None:
    try:
        return _Owner(**json.loads(text))
    except (ValueError, TypeError):
        return None


def _flock(fd: int) -> bool | None:
    """Take the exclusive flock on `fd` without waiting: True taken, False held by another open
    file (a live owner), None where the file system or platform has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP: a file system without flock
    return True


def lock_owner(run_dir: Path) -> _Owner | None:
    """The live process holding `run_dir`'s lock, or None (no lock, or its owner is gone).
    Live means: it holds the lock file's flock (released by the kernel however the owner
    ends, SIGKILL included), or the file names another host (which this machine cannot
    check), or, where there is no flock, its pid runs with the start time it wrote."""
    path = Path(run_dir) / LOCK_FILE
    deadline = time.monotonic() + LOCK_PATIENCE
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            owner = _read_owner(os.read(fd, 1 << 16).decode("utf-8", "replace"))
            held = _flock(fd)  # a probe: released at once by the close below
        finally:
            os.close(fd)
        # Held, yet naming nobody alive: another probe (ranks of one launch probe at once) or
        # an owner still writing its name; both pass within milliseconds, a real owner stays.
        if held is not False or (owner is not None and owner.alive()) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if owner is not None and owner.host != socket.gethostname():
        return owner
    if held is False:
        return owner or _Owner(pid=-1, start_time=None, host=socket.gethostname(), command="?")
    if held is True:
        return None
    return owner if owner is not None and owner.alive() else None


class RunLock:
    """This process's ownership of a run directory; `release()` (or the end of a `with`) gives it up.

    The owner holds an exclusive `flock` on `run.lock` for as long as it owns the directory,
    and writes who it is (pid, start time, host, command) into it once it holds it. The
    kernel gives the flock to one process only and drops it when that process ends (also
    by SIGKILL), so a lock file nobody holds is stale whatever it says, and one being
    written is never mistaken for stale (the file's content is not what decides). A file
    naming another host is refused with the file to remove: a flock may not cross machines.
    Where there is no flock (Windows, a file system without it) the file is written under a
    temporary name and linked into place (atomic; fails when it exists), and a stale one is
    named for the user to remove."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False
        self._fd: int | None = None
        me = _Owner(pid=os.getpid(), start_time=_start_time(os.getpid()), host=socket.gethostname(),
                    command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200])
        self._content = json.dumps(asdict(me)).encode()
        self._last_holder: _Owner | None = None  # who held the flock at the last attempt
        self._held_by_other = False
        deadline = time.monotonic() + LOCK_PATIENCE
        while not self._try_take():
            if time.monotonic() > deadline:
                if self._held_by_other:
                    self._busy(self._last_holder, held=True)
                raise RunDirectoryBusy(f"cannot take {self.path}: other processes keep taking and releasing it")
            time.sleep(0.01)
        self.held = True

    def _try_take(self) -> bool:
        """One attempt: True when taken; False to try again (the file changed meanwhile);
        raises RunDirectoryBusy for a live owner."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            held = _flock(fd)
            if held is None:
                os.close(fd)
                fd = -1
                return self._link_take()
            if held is False:
                owner = _read_owner(os.read(fd, 1 << 16).decode("utf-8", "replace"))
                if owner is not None and owner.alive():
                    self._busy(owner, held=True)
                # not named yet (being written), or a brief probe (`lock_owner`): look again
                self._last_holder, self._held_by_other = owner, True
                return False
            self._held_by_other = False
            try:  # the previous owner may have unlinked the file between our open and our flock
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    return False
            except FileNotFoundError:
                return False
            owner = _read_owner(os.read(fd, 1 << 16).decode("utf-8", "replace"))
            if owner is not None and owner.host != socket.gethostname():
                self._busy(owner, held=False)
            if owner is not None and owner.pid != os.getpid() and owner.alive():
                self._busy(owner, held=False)  # alive without the flock: a dbl-ps from before the flock
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._content, 0)
            self._fd, fd = fd, -1
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    def _link_take(self) -> bool:
        """No flock: the content under a temporary name, linked to run.lock (fails if it exists)."""
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        tmp.write_bytes(self._content)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            try:
                owner = _read_owner(self.path.read_text())
            except OSError:
                return False  # released meanwhile
            if owner is not None and owner.alive():
                self._busy(owner, held=False)
            raise RunDirectoryBusy(
                f"{self.path} was left by a process that is gone ({f'pid {owner.pid}' if owner else 'unreadable'}); "
                f"this platform cannot tell a stale lock safely: remove {self.path} if no run uses "
                f"{self.path.parent}, then try again") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _busy(self, owner: _Owner | None, *, held: bool) -> None:
        run_dir = self.path.parent
        if owner is not None and owner.host != socket.gethostname():
            raise RunDirectoryBusy(f"run directory {run_dir} {owner.describe().replace(f'its {LOCK_FILE}', str(self.path))}")
        if owner is None or (held and not owner.alive()):
            raise RunDirectoryBusy(
                f"run directory {run_dir} is locked by a process that holds {self.path} "
                f"{'without having named itself yet' if owner is None else f'(it names pid {owner.pid}, which is gone: a child process of it?)'}; "
                f"wait for it to finish or stop it, then try again")
        raise RunDirectoryBusy(f"run directory {run_dir} {owner.describe()}")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.path.unlink(missing_ok=True)  # while still holding the flock: no one takes an unlinked file
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunWriteError(OSError):
    """A run's file could not be written (typically a full disk); what was written before is intact."""


def atomic_write(path: Path, write: Callable[[Path], Any], *, make_parent: bool = False) -> None:
    """The one way files of a run (and its set-up) are written: `write(tmp)` writes the whole
    file under a temporary name beside `path` (`<name>.tmp`), then it is renamed into place, so
    a reader never sees half a file and a failed write (a full disk) leaves the previous file as
    it was and no temporary behind. An OSError (or torch.save's RuntimeError, how its stream
    writer reports a full disk) is `write_failure`'s one line; anything else `write` raises
    (a check of what it wrote) is raised as it is, the temporary removed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if make_parent:
            path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
