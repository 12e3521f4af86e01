"""The run directory: the same files for every mode and engine.

    config.yaml                   the run config (what a resume reads)
    plan.json                     the DBSL plan (+ engine, ranks_per_worker, time-model source,
                                  replans); rewritten after each re-plan (dbl.replan)
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

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from dbl_ps.metrics import strict_dumps
from dbl_ps.run_ownership import create_unique_dir, write_failure
from dbl_ps.schedule import ScheduleSpec, format_phases, phases, plot_schedule
from dbl_ps.training.engine import atomic_save

__all__ = ["RunDirectory", "CheckpointError", "new_run_dir", "CHECKPOINT_FILE", "MODEL_FILE", "EVAL_MODEL_FILE"]

CHECKPOINT_FILE = "checkpoint.json"
MODEL_FILE = "model.pt"
# The last epoch's global model as evaluated: BatchNorm statistics recomputed (eval.recalibrate_bn).
EVAL_MODEL_FILE = "model_eval.pt"


class CheckpointError(ValueError):
    """A run directory has no usable checkpoint."""


def new_run_dir(cfg: Any) -> Path:
    """`out_dir/<name>-<YYYYmmdd-HHMMSS>`, created empty here (`-1`, `-2`, ... when taken)
    so that runs started in the same second never get the same directory."""
    return create_unique_dir(Path(cfg.out_dir), f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def atomic_json(path: Path, data: Any) -> None:
    """Strict JSON (a non-finite number as null), written under a temporary name, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(strict_dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, exc) from None


class RunDirectory:
    """Reads and writes one run's directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # -- set-up

    def create(self) -> None:
        """A new run: the directory must be absent or empty (nothing is overwritten)."""
        if self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(f"run directory {self.path} is not empty; resume it with --resume or choose another")
        self.path.mkdir(parents=True, exist_ok=True)

    def write_setup(self, cfg: Any, plan: dict[str, Any], spec: ScheduleSpec, *, fresh: bool) -> None:
        """config.yaml (new runs), plan.json and the schedule files."""
        if fresh:
            cfg.save(self.path / "config.yaml")
        self.write_plan(plan)
        atomic_json(self.path / "schedule.json",
                    {"method": spec.method, "epochs": spec.epochs, "phases": [p.to_dict() for p in phases(spec)]})
        (self.path / "schedule.txt").write_text(format_phases(spec) + "\n")
        plot_schedule(spec, str(self.path / "schedule.png"))

    def write_plan(self, plan: dict[str, Any]) -> None:
        """plan.json: at set-up, and again after each re-plan (`dbl.replan`), so that a resume
        and the workers' next epoch read the latest plan."""
        atomic_json(self.path / "plan.json", plan)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    # -- checkpoints

    def epoch_folder(self, epoch: int) -> Path:
        return self.path / "checkpoints" / f"epoch{epoch:05d}"

    def save_model(self, epoch: int, state: dict[str, torch.Tensor], name: str = MODEL_FILE) -> None:
        atomic_save(state, self.epoch_folder(epoch) / name)

    def commit_checkpoint(self, meta: dict[str, Any]) -> None:
        """Name the epoch's folder (complete by now) as the checkpoint; prune older folders."""
        folder = self.epoch_folder(meta["epoch"])
        atomic_json(self.path / CHECKPOINT_FILE, {**meta, "path": str(folder.relative_to(self.path))})
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
        if not (self.path / "plan.json").is_file():
            raise CheckpointError(f"{self.path} is not a run directory that can be resumed (no plan.json)")
        if not path.is_file():
            return {}
        try:
            meta = json.loads(path.read_text())
            folder = self.path / meta["path"]
        except (ValueError, KeyError, TypeError) as exc:  # a torn or foreign file
            raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from None
        if not (folder / MODEL_FILE).is_file():
            raise CheckpointError(f"{path} names {folder / MODEL_FILE}, which is missing")
        return meta

    def load_model(self, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        return torch.load(self.path / meta["path"] / MODEL_FILE, map_location="cpu", weights_only=True)

    def checkpoint_folder(self, meta: dict[str, Any]) -> Path:
        return self.path / meta["path"]

    # -- results

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_json(self.path / "summary.json", summary)

    def read_summary(self) -> dict[str, Any]:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}
