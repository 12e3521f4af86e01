"""The W&B sink of a run (tracking.wandb.enabled), opened by the launcher or rank 0.

It logs the plan and schedule as tables and keeps its run id in `wandb_id.txt`, so a
resumed run, in any mode, continues the same W&B run.
"""

from __future__ import annotations

from typing import Any, Callable

from dbl_ps.integrations.wandb import WandbTracker
from dbl_ps.training.rundir import RunDirectory

__all__ = ["open_tracker"]

WANDB_ID_FILE = "wandb_id.txt"


def open_tracker(cfg: Any, run_dir: RunDirectory, *, resuming: bool, tags: list[str] = (),
                 warn: Callable[[str], None] = print) -> WandbTracker | None:
    wb = cfg.tracking.wandb
    if not wb.enabled or wb.mode == "disabled":
        return None
    id_file = run_dir.path / WANDB_ID_FILE
    resume_id = id_file.read_text().strip() if resuming and id_file.is_file() else None
    tracker = WandbTracker(run_dir=run_dir.path, config=cfg.to_dict(), project=wb.project, entity=wb.entity,
                           mode=wb.mode, tags=[*wb.tags, *tags], group=wb.group, name=run_dir.path.name,
                           resume_id=resume_id, warn=warn)
    if tracker.run_id:
        id_file.write_text(tracker.run_id + "\n")
    tracker.log_tables(plan=run_dir.read_json("plan.json"), phases=run_dir.read_json("schedule.json")["phases"])
    return tracker
