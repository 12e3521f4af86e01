"""The trackers of a run: sinks of its metrics records beside metrics.jsonl, opened by the
launcher or rank 0 (`open_trackers`).

Which ones: W&B when `tracking.wandb.enabled`, then each of `tracking.trackers`, a name
in `dbl_ps.registry.TRACKERS` (wandb, tensorboard, csv) or an import path to the user's
factory `(cfg, run_dir, *, resuming, tags, warn) -> sink` (a sink has `log(step, record)`
and `close()`, `dbl_ps.metrics.Sink`; a factory may return None: nothing to log to).

* wandb: logs the plan and schedule as tables and keeps its run id in `wandb_id.txt`, so a
  resumed run, in any mode, continues the same W&B run.
* tensorboard: scalars under RUN_DIR/tensorboard/; a resumed run appends to that folder.
* csv: RUN_DIR/metrics.csv, one row per epoch.
"""

from __future__ import annotations

from typing import Callable, Sequence

from dbl_ps.config import RunConfig
from dbl_ps.imports import ImportPathError
from dbl_ps.integrations.tensorboard import TENSORBOARD_DIR, TensorBoardTracker
from dbl_ps.integrations.wandb import WandbTracker
from dbl_ps.metrics import CsvWriter, Isolated, IsolatedSink, Sink
from dbl_ps.registry import TRACKERS
from dbl_ps.training.rundir import RunDirectory
from dbl_ps.training.run_plan import read_plan_file
from dbl_ps.training.topology import LaunchError

__all__ = ["open_trackers", "open_wandb", "open_tensorboard", "open_csv", "tracker_names"]

WANDB_ID_FILE = "wandb_id.txt"


def tracker_names(cfg: RunConfig) -> list[str]:
    """The trackers a run opens, in order: wandb when tracking.wandb.enabled, then tracking.trackers."""
    names = ["wandb"] if cfg.tracking.wandb.enabled else []
    return names + [n for n in cfg.tracking.trackers if n not in names]


def open_trackers(cfg: RunConfig, run_dir: RunDirectory, *, resuming: bool, tags: Sequence[str] = (),
                  warn: Callable[[str], None] = print) -> list[Sink]:
    """Open every tracker the config names (`tracker_names`); add each to the run's Logger.
    `tags` label the run where a tracker has labels (W&B tags). A tracker by import path
    that does not import is one LaunchError naming the key; if one fails to open, those
    already open are closed.

    Tracking never stops training: each tracker is opened, fed and closed through its own
    `Isolated` guard (`tracking.timeout` seconds a call). One that raises (SystemExit
    included) or hangs when opened or later is named once and left out for the rest of the
    run; a factory that returns no sink (no `log`/`close`) is named and left out too."""
    sinks: list[Sink] = []
    try:
        for name in tracker_names(cfg):
            try:
                factory = TRACKERS.get(name).obj
            except ImportPathError as exc:
                raise LaunchError(str(exc)) from None
            guard = Isolated(f"tracker {name!r}", timeout=cfg.tracking.timeout, warn=warn)
            sink = guard(factory, cfg, run_dir, resuming=resuming, tags=list(tags), warn=warn)
            if sink is None:
                continue
            if not (callable(getattr(sink, "log", None)) and callable(getattr(sink, "close", None))):
                warn(f"warning: tracker {name!r}: its factory returned {type(sink).__name__} {sink!r:.60}, not a sink "
                     f"with log(step, record) and close(); it is left out of this run, training goes on")
                continue
            sinks.append(IsolatedSink(sink, guard))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


# --------------------------------------------------------------------------- built-ins


def open_wandb(cfg: RunConfig, run_dir: RunDirectory, *, resuming: bool, tags: Sequence[str] = (),
               warn: Callable[[str], None] = print) -> WandbTracker | None:
    """`wandb`: the run mirrored into W&B (tracking.wandb.*); None when its mode is disabled."""
    wb = cfg.tracking.wandb
    if wb.mode == "disabled":
        return None
    id_file = run_dir.path / WANDB_ID_FILE
    resume_id = id_file.read_text().strip() if resuming and id_file.is_file() else None
    tracker = WandbTracker(run_dir=run_dir.path, config=cfg.to_dict(), project=wb.project, entity=wb.entity,
                           mode=wb.mode, tags=[*wb.tags, *tags], group=wb.group, name=run_dir.path.name,
                           resume_id=resume_id, warn=warn)
    if tracker.run_id:
        id_file.write_text(tracker.run_id + "\n")
    tracker.log_tables(plan=read_plan_file(run_dir.path), phases=run_dir.read_json("schedule.json")["phases"])
    return tracker


def open_tensorboard(cfg: RunConfig, run_dir: RunDirectory, *, resuming: bool, tags: Sequence[str] = (),
                     warn: Callable[[str], None] = print) -> TensorBoardTracker:
    """`tensorboard`: every numeric record key as a scalar under RUN_DIR/tensorboard/."""
    return TensorBoardTracker(run_dir.path / TENSORBOARD_DIR, resuming=resuming)


def open_csv(cfg: RunConfig, run_dir: RunDirectory, *, resuming: bool, tags: Sequence[str] = (),
             warn: Callable[[str], None] = print) -> CsvWriter:
    """`csv`: RUN_DIR/metrics.csv, one row per epoch record."""
    return CsvWriter(run_dir.path, resume=resuming)
