"""Run directories: unique names for new runs, and the `--run-dir` check done before
any work starts.

    path = create_unique_dir(Path("runs"), "digits-hybrid-20261125-101500")
    problem = run_dir_problem(Path(args.run_dir))      # None when it can be used

Two runs started in the same second used to compute the same `<name>-<timestamp>`
and the second one failed once it tried to write there. `create_unique_dir` creates
the directory itself with an atomic `mkdir` (it fails if the name exists, whoever
made it), so of any number of concurrent callers each gets its own directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["create_unique_dir", "run_dir_problem", "remove_if_empty"]

MAX_SUFFIX = 10_000  # more taken names than this is not a collision but a full folder


def create_unique_dir(parent: Path, stem: str) -> Path:
    """Create and return `parent/stem`, or `parent/stem-1`, `-2`, ... when that is taken.
    The directory is new and empty and no other caller got the same one."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_SUFFIX):
        path = parent / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()  # atomic: exactly one caller creates a given name
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{parent} already holds {stem} and {MAX_SUFFIX - 1} numbered variants of it; "
                          f"choose another out_dir or name")


def run_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be a new run's directory (it names a file, lies under a file, or
    already holds files), or None when it can: checked before any data is loaded or time
    measured, so a wrong `--run-dir` costs nothing."""
    if path.exists() and not path.is_dir():
        return f"--run-dir {path} is a file; give a new or empty directory"
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
