"""Weights & Biases tracking for dbl-ps runs: config, plan and schedule tables,
per-epoch metrics under ``test/``, ``train/``, ``train/worker{i}/``, ``schedule/`` and
``store/``, system info, and the final accuracy in the summary.

Enable it in a run config (or on the command line with ``--wandb`` or
``tracking.wandb.enabled=true``)::

    tracking:
      wandb: {enabled: true, project: dbl-ps, entity: null, mode: auto, tags: [cifar]}

``mode: auto`` logs online when an API key is configured and writes a W&B *offline*
run otherwise (a real run directory that ``wandb sync DIR`` uploads later). Tracking
never makes training fail: if W&B breaks mid-run, the error is reported once and the
run continues without it. wandb is imported only when tracking is enabled; without it,
the error names the extra to install (``pip install 'dbl-ps[wandb]'``).
"""

from __future__ import annotations

import glob
import json
import os
import platform
import struct
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from dbl_ps._optional import require
from dbl_ps.metrics import epoch_metrics, replan_metrics, shown_epoch  # noqa: F401  (every tracker's names)

MODES = ("auto", "online", "offline", "disabled")


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` if an API key is configured (env or netrc), else ``offline``."""
    if mode not in MODES:
        raise ValueError(f"tracking.wandb.mode={mode!r} is not allowed: use one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


def plan_rows(plan: Mapping[str, Any]) -> list[list[Any]]:
    """Rows (worker, role, resolution, batch, share, merge weight, predicted epoch s),
    one per worker and resolution, of a run's ``plan.json``."""
    rows = []
    for resolution, rp in plan["per_resolution"].items():
        for w in range(plan["workers"]):
            rows.append([w, "small" if w < plan["small"] else "large", int(resolution), rp["batches"][w],
                         rp["shares"][w], rp["merge_weights"][w], rp["predicted_epoch_seconds"][w]])
    return rows


def system_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if info["cuda_devices"]:
        info["cuda_names"] = [torch.cuda.get_device_name(i) for i in range(info["cuda_devices"])]
    try:
        import deepspeed  # noqa: F401

        info["deepspeed"] = deepspeed.__version__
    except Exception:
        pass
    return info


class WandbTracker:
    """A metrics sink (``log(step, record)``, ``close()``) that mirrors a run into W&B.

    Every W&B call is guarded: the first failure is reported once (``warn``) and the
    tracker turns itself off, so training goes on.
    """

    def __init__(self, *, run_dir: str | os.PathLike, config: Mapping[str, Any], project: str = "dbl-ps",
                 entity: str | None = None, mode: str = "auto", tags: list[str] | None = None,
                 group: str | None = None, name: str | None = None, resume_id: str | None = None,
                 warn=lambda message: print(message, file=sys.stderr, flush=True)):
        self.mode = resolve_mode(mode)
        self.warn = warn
        self.run = None
        self.failed = False
        wandb = require("wandb", feature="Weights & Biases tracking")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.best: float | None = None
        self.last: float | None = None
        self._call(lambda: setattr(self, "run", wandb.init(
            project=project, entity=entity, mode=self.mode, dir=str(run_dir), config=dict(config),
            tags=list(tags or []), group=group, name=name, id=resume_id, resume="allow" if resume_id else None,
            reinit="finish_previous",
        )))
        if self.run is not None:
            self._call(lambda: self.run.config.update({"system": system_info()}, allow_val_change=True))

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    @property
    def run_path(self) -> str | None:
        """Directory of the W&B run (what ``wandb sync`` takes for an offline run)."""
        run_files = getattr(self.run, "dir", None)
        return str(Path(run_files).parent) if run_files else None

    def _call(self, fn) -> None:
        if self.failed:
            return
        try:
            fn()
        except Exception as exc:  # tracking must never stop training
            self.failed = True
            self.warn(f"W&B tracking failed and is off for the rest of this run: {type(exc).__name__}: {exc}")

    def log_tables(self, *, plan: Mapping[str, Any] | None = None,
                   phases: list[Mapping[str, Any]] | None = None) -> None:
        """The plan (per worker and resolution) and the schedule's phases, as W&B tables."""
        wandb = require("wandb", feature="Weights & Biases tracking")

        def log():
            tables = {}
            if plan is not None:
                columns = ["worker", "role", "resolution", "batch", "share", "merge_weight", "predicted_epoch_s"]
                tables["plan"] = wandb.Table(columns=columns, data=plan_rows(plan))
            if phases:
                columns = list(phases[0])
                tables["schedule"] = wandb.Table(columns=columns, data=[[p[c] for c in columns] for p in phases])
            if tables and self.run is not None:
                self.run.log(tables, commit=False)
        self._call(log)

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        metrics = epoch_metrics(record)
        if "test/acc" in metrics:
            self.last = metrics["test/acc"]
            self.best = self.last if self.best is None else max(self.best, self.last)
        shown = shown_epoch(step)  # 1-based, as the console and the plots count
        self._call(lambda: self.run.log({"epoch": shown, **metrics}, step=shown) if self.run else None)

    def close(self) -> None:
        def summarize():
            if self.run is not None and self.last is not None:
                self.run.summary["final/test_acc"] = self.last
                self.run.summary["best/test_acc"] = self.best
        self._call(summarize)
        if self.run is not None:
            try:  # even after a failure, so no W&B process outlives the run
                self.run.finish()
            except Exception:
                pass
        if self.run is not None and self.mode == "offline" and not self.failed:
            # finish() can return before W&B's writer has flushed its last block to disk
            # (seen on a loaded machine): wait for the log's closing `exit` record, so the
            # directory we announce is complete.
            if not wait_for_offline_run(self.run_path, timeout=30.0):
                self.warn(f"W&B offline run {self.run_path} is still being written after 30 s")
            print(f"W&B offline run written to {self.run_path}; upload it with: wandb sync {self.run_path}",
                  flush=True)
        self.run = None


# --- reading an offline run back (no network, no W&B server) ------------------------

_BLOCK = 32 * 1024
_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte); records: crc32 (4), length (2), type (1)


def _records(path: str | os.PathLike) -> list[bytes]:
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B transaction log (no ':W&B' header)")
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if pos + _HEADER + length > len(data):  # the writer has not flushed this record yet
            break
        chunk, pos = data[pos + _HEADER:pos + _HEADER + length], pos + _HEADER + length
        if kind == 0:
            break
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    return records


def _transaction_log(run_path: str | os.PathLike) -> Path:
    logs = glob.glob(str(Path(run_path) / "run-*.wandb"))
    if len(logs) != 1:
        raise FileNotFoundError(f"{run_path} is not a W&B run directory: expected one run-*.wandb file, "
                                f"found {len(logs)}")
    return Path(logs[0])


def _kinds(log: Path) -> list[str]:
    from wandb.proto import wandb_internal_pb2 as pb

    kinds = []
    for raw in _records(log):
        record = pb.Record()  # type: ignore[attr-defined]  # generated protobuf module, no stub
        record.ParseFromString(raw)
        kinds.append(record.WhichOneof("record_type"))
    return kinds


def wait_for_offline_run(run_path: str | os.PathLike, timeout: float = 30.0) -> bool:
    """Wait until W&B has written the closing ``exit`` record of a finished run's
    transaction log; False if it is still incomplete after ``timeout`` seconds."""
    require("wandb", feature="reading W&B runs")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if "exit" in _kinds(_transaction_log(run_path)):
                return True
        except (OSError, ValueError):  # not created or header not flushed yet
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def read_offline_run(run_path: str | os.PathLike, wait_seconds: float = 30.0) -> dict[str, Any]:
    """History rows, summary and config of a W&B offline run directory (the one that
    ``wandb sync`` takes), decoded with wandb's own protobuf records.

    Waits up to ``wait_seconds`` for the run's closing ``exit`` record (W&B flushes the
    log asynchronously); ``complete`` in the result says whether it was there."""
    require("wandb", feature="reading W&B runs")
    from wandb.proto import wandb_internal_pb2 as pb

    complete = wait_for_offline_run(run_path, timeout=wait_seconds)
    log = _transaction_log(run_path)
    history, summary, config = [], {}, {}
    key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
    for raw in _records(log):
        record = pb.Record()  # type: ignore[attr-defined]  # generated protobuf module, no stub
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            config.update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            config.update({key(i): json.loads(i.value_json) for i in record.run.config.update})
    return {"history": history, "summary": summary, "config": config, "complete": complete}
