"""The run directory: the same files for every mode and engine.

    config.yaml                   the run config (what a resume reads)
    plan.json                     the DBSL plan (+ engine, ranks_per_worker, time-model source,
                                  replans); rewritten after each re-plan (dbl.replan); written
                                  and read by dbl_ps.training.run_plan
    schedule.json/.txt/.png       the schedule's phases, as data, a table and a plot
    metrics.jsonl                 one record per global epoch (dbl_ps.metrics), and one per
                                  re-plan ("event": "replan", dbl_ps.training.replanning)
    checkpoint.json               the last complete checkpoint (written last: it always
                                  names a complete folder)
    checkpoints/epochNNNNN/       model.pt (the global model, a state dict) and each
                                  worker's own state (worker<i>.pt, or FSDP's sharded
                                  optim_group<i>/), written by the engines
    summary.json                  status and final numbers
    wandb_id.txt                  the W&B run a resume continues (when tracking)

`checkpoint.json` holds: epoch, next_epoch, path (of the folder), wall_time,
store_version, workers, ranks_per_worker, engine, test_acc, status
("running" | "finished" | "interrupted"). Older folders are pruned once a newer
checkpoint is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from dbl_ps.config import RunConfig
from dbl_ps.metrics import strict_dumps
from dbl_ps.run_ownership import atomic_write, create_unique_dir, never_trained, write_failure
from dbl_ps.schedule import ScheduleSpec, format_phases, phases, plot_schedule
from dbl_ps.training.engine import atomic_save
from dbl_ps.training.run_plan import PLAN_FILE, save_plan

__all__ = ["RunDirectory", "CheckpointError", "RunDirectoryGone", "new_run_dir", "CHECKPOINT_FILE", "MODEL_FILE", "EVAL_MODEL_FILE"]

CHECKPOINT_FILE = "checkpoint.json"
MODEL_FILE = "model.pt"
# The last epoch's global model as evaluated: BatchNorm statistics recomputed (eval.recalibrate_bn).
EVAL_MODEL_FILE = "model_eval.pt"


class CheckpointError(ValueError):
    """A run directory has no usable checkpoint."""


class RunDirectoryGone(CheckpointError):
    """The run directory was deleted (or replaced) while the run trained in it."""


def _check_torch_file(path: Path) -> None:
    """A file torch.save wrote is a zip archive whose index is at its end: a truncated copy
    (a full disk, an interrupted copy) fails here at once, without reading the tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); restore it, or start a new run") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprints(folder: Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"bytes", "sha256"}}` of every file under an epoch's folder (a worker's
    state file, FSDP's sharded folders, the model): what its checkpoint is made of."""
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.endswith(".tmp"))
    return {str(f.relative_to(folder)): {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files}


def check_fingerprints(folder: Path, recorded: dict[str, dict[str, Any]], checkpoint: Path) -> None:
    """Every file the checkpoint recorded is there with the same content; one CheckpointError
    naming the first that is missing, torn or another's (two workers' files swapped)."""
    by_hash = {v["sha256"]: name for name, v in recorded.items()}
    for name, want in recorded.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (the checkpoint in {checkpoint} was written with it); "
                                  f"restore it, or start a new run")
        if file.stat().st_size == want["bytes"] and _sha256(file) == want["sha256"]:
            continue
        other = by_hash.get(_sha256(file)) if file.stat().st_size in {v["bytes"] for v in recorded.values()} else None
        what = (f"holds what the checkpoint wrote as {other} (were the two swapped?)" if other not in (None, name)
                else "is not the file the checkpoint wrote (torn, replaced or edited since)")
        raise CheckpointError(f"{file} {what}; restore the checkpoint's own file, or start a new run")


def new_run_dir(cfg: RunConfig) -> Path:
    """`out_dir/<name>-<YYYYmmdd-HHMMSS>`, created empty here (`-1`, `-2`, ... when taken)
    so that runs started in the same second never get the same directory."""
    return create_unique_dir(Path(cfg.out_dir), f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def atomic_json(path: Path, data: Any) -> None:
    """Strict JSON (a non-finite number as null), written under a temporary name, then renamed."""
    atomic_write(path, lambda tmp: tmp.write_text(strict_dumps(data, indent=2) + "\n"))


class RunDirectory:
    """Reads and writes one run's directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._identity: tuple[int, int] | None = None  # (device, inode) of the directory this run owns
        self._fd: int | None = None  # held open: the inode cannot be freed and reused meanwhile

    def pin(self) -> None:
        """Remember which directory this run owns: one deleted and made again at the same
        path (by a user, or by a worker writing its state there) is another directory. The
        directory is held open, else a file system may hand its freed inode number straight
        to the re-created one."""
        self.unpin()
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        try:
            self._fd = os.open(self.path, flags)
            st = os.fstat(self._fd)
        except OSError:  # a platform that cannot open a directory: the inode alone
            self._fd, st = None, self.path.stat()
        self._identity = (st.st_dev, st.st_ino)

    def unpin(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._identity = None

    def moved_away(self) -> bool:
        """Whether the pinned directory is gone from its path (deleted, renamed or replaced)."""
        if self._identity is None:
            return False
        try:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # deleted (also when made again)
                return True
            st = self.path.stat()
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def check_still_there(self, epoch: int) -> None:
        """Raise RunDirectoryGone when the pinned directory left its path: the run's files
        would go into unlinked files or a re-created folder, and a checkpoint.json there
        would name a run that is not there. A folder at the path holding only what this run
        re-created there is removed first (`discard_recreated`)."""
        if self.moved_away():
            self.discard_recreated()
            raise RunDirectoryGone(
                f"run directory {self.path} was deleted or replaced while the run trained (seen at the end of epoch "
                f"{epoch + 1}); the run stops and writes nothing there (nothing is re-created): start a new run")

    def discard_recreated(self) -> None:
        """When the pinned directory went from its path: remove what this run wrote into a
        directory it re-created there (epoch folders of model and worker state files:
        `atomic_save` makes the folders it writes into, as the store-mode workers do),
        nothing else. Called at the check and again once the workers have stopped (a
        store-mode worker may save its state for the next epoch in between)."""
        if not self.moved_away() or not self.path.is_dir():
            return
        ours = ("worker", MODEL_FILE, EVAL_MODEL_FILE)
        try:
            if os.listdir(self.path) != ["checkpoints"]:
                return
            for epoch in os.listdir(self.path / "checkpoints"):
                files = os.listdir(self.path / "checkpoints" / epoch) if epoch.startswith("epoch") else [None]
                if not all(f is not None and f.startswith(ours) and f.endswith((".pt", ".tmp")) for f in files):
                    return
            shutil.rmtree(self.path)
        except OSError:  # changed meanwhile: leave it
            pass

    def __str__(self) -> str:
        return str(self.path)

    # -- set-up

    def create(self) -> None:
        """A new run: the directory must be absent or empty (nothing is overwritten)."""
        if self.path.exists() and any(self.path.iterdir()) and not never_trained(self.path):
            raise FileExistsError(f"run directory {self.path} is not empty; resume it with --resume or choose another")
        self.path.mkdir(parents=True, exist_ok=True)

    def write_setup(self, cfg: RunConfig, plan: dict[str, Any], spec: ScheduleSpec, *, fresh: bool) -> None:
        """config.yaml (new runs), plan.json and the schedule files."""
        if fresh:
            cfg.save(self.path / "config.yaml")
        save_plan(self.path, plan)
        atomic_json(self.path / "schedule.json",
                    {"method": spec.method, "epochs": spec.epochs, "phases": [p.to_dict() for p in phases(spec)]})
        for name, write in (("schedule.txt", lambda path: path.write_text(format_phases(spec) + "\n")),
                            ("schedule.png", lambda path: plot_schedule(spec, str(path)))):
            try:  # a full disk is one line naming the file, as for every other file of the run
                write(self.path / name)
            except (OSError, RuntimeError, ValueError) as exc:  # matplotlib may wrap the OSError
                raise write_failure(self.path / name, exc) from None

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    # -- checkpoints

    def epoch_folder(self, epoch: int) -> Path:
        return self.path / "checkpoints" / f"epoch{epoch:05d}"

    def save_model(self, epoch: int, state: dict[str, torch.Tensor], name: str = MODEL_FILE) -> None:
        atomic_save(state, self.epoch_folder(epoch) / name)

    def commit_checkpoint(self, meta: dict[str, Any]) -> None:
        """Name the epoch's folder (complete by now) as the checkpoint, with the size and SHA-256
        of every file in it (a resume checks them: a missing, torn or swapped worker state file
        gave other weights without a word); prune older folders."""
        folder = self.epoch_folder(meta["epoch"])
        atomic_json(self.path / CHECKPOINT_FILE, {**meta, "path": str(folder.relative_to(self.path)),
                                                  "files": fingerprints(folder)})
        for old in (self.path / "checkpoints").glob("epoch*"):
            if old.name < folder.name:
                shutil.rmtree(old, ignore_errors=True)

    def set_checkpoint_status(self, status: str) -> None:
        meta = self.checkpoint_meta()
        if meta is not None:
            atomic_json(self.path / CHECKPOINT_FILE, {**meta, "status": status})

    def checkpoint_meta(self) -> dict[str, Any] | None:
        path = self.path / CHECKPOINT_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def load_checkpoint(self) -> dict[str, Any]:
        """The last checkpoint's metadata, checked: its folder and model file exist. `{}` when
        the run stopped before its first checkpoint (a crash, a full disk): resuming it starts
        again from epoch 0 in the same directory, with the plan it made."""
        path = self.path / CHECKPOINT_FILE
        if not (self.path / PLAN_FILE).is_file():
            if never_trained(self.path):  # a stop while the run started, before it wrote its plan
                raise CheckpointError(f"{self.path} holds no plan.json: its run stopped while starting, before any "
                                      f"epoch; start it again with --run-dir {self.path} (and its config)")
            raise CheckpointError(f"{self.path} is not a run directory that can be resumed (no plan.json)")
        if not path.is_file():
            return {}
        try:
            meta = json.loads(path.read_text())
            folder = self.path / meta["path"]
            epoch, next_epoch = int(meta["epoch"]), int(meta["next_epoch"])
        except (ValueError, KeyError, TypeError) as exc:  # a torn or foreign file
            raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from None
        # The fields a resume relies on agree with each other: an edited next_epoch made a run
        # say "finished" after 3 of 6 epochs.
        if next_epoch != epoch + 1 or Path(meta["path"]) != self.epoch_folder(epoch).relative_to(self.path):
            raise CheckpointError(f"{path} disagrees with itself: epoch {epoch}, next_epoch {next_epoch}, path "
                                  f"{meta['path']!r} (a checkpoint of epoch e continues at e + 1 from "
                                  f"checkpoints/epoch<e>); was it edited? restore it")
        if not (folder / MODEL_FILE).is_file():
            raise CheckpointError(f"{path} names {folder / MODEL_FILE}, which is missing")
        # Checked before any work: a torn file used to be a traceback from a worker's torch.load.
        for file in [folder / MODEL_FILE, *sorted(folder.glob("worker*.pt"))]:
            _check_torch_file(file)
        if "files" in meta:
            check_fingerprints(folder, meta["files"], path)
        return meta

    def load_model(self, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        path = self.path / meta["path"] / MODEL_FILE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path} cannot be read ({reason}); restore it, or start a new run") from None

    def checkpoint_folder(self, meta: dict[str, Any]) -> Path:
        return self.path / meta["path"]

    # -- results

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_json(self.path / "summary.json", summary)

    def read_summary(self) -> dict[str, Any]:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}
