"""One run directory read for reports: its config, metrics, summary and plan (`RunData`,
`load_run`), whether it finished, and means over the runs of one row (`mean_std`,
`mean_curve`). `dbl_ps.report` tabulates and plots these."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from dbl_ps.metrics import EPOCH, METRICS_FILE, TEST_ACC, TEST_LOSS, WALL_TIME, read_metrics

__all__ = ["ReportError", "RunData", "load_run", "unfinished", "mean_std", "mean_curve"]


class ReportError(ValueError):
    """A run directory cannot be reported on."""


@dataclass
class RunData:
    run_dir: Path
    label: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)  # the run's summary.json ({} when it has none)
    evals: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.evals = [r for r in self.records if isinstance(r.get(TEST_ACC), (int, float))]

    @property
    def final_acc(self) -> float | None:
        return float(self.evals[-1][TEST_ACC]) if self.evals else None

    @property
    def best_acc(self) -> float | None:
        return max(float(r[TEST_ACC]) for r in self.evals) if self.evals else None

    @property
    def final_loss(self) -> float | None:
        value = self.evals[-1].get(TEST_LOSS) if self.evals else None
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def final_train_loss(self) -> float | None:
        """Mean training loss of the last evaluated epoch (the workers' batches, dropout on)."""
        value = self.evals[-1].get("train_loss") if self.evals else None
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def final_train_acc(self) -> float | None:
        value = self.evals[-1].get("train_acc") if self.evals else None
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def final_b_noise(self) -> float | None:
        """The gradient noise scale of the last epoch that resolved one (None: none did)."""
        measured = [r for r in self.records if isinstance(r.get("b_noise"), (int, float)) and r["b_noise"] > 0]
        return float(measured[-1]["b_noise"]) if measured else None

    @property
    def total_time(self) -> float | None:
        times = [float(r[WALL_TIME]) for r in self.records if isinstance(r.get(WALL_TIME), (int, float))]
        return max(times) if times else None

    @property
    def startup_seconds(self) -> float | None:
        """Process start-up before training (spawn until every worker was ready)."""
        value = self.summary.get("startup_seconds")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def time_model_seconds(self) -> float | None:
        """The one-off time-model measurement before the run (0 when the model was given)."""
        value = self.summary.get("time_model_seconds")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def epochs(self) -> int | None:
        epochs = [r[EPOCH] for r in self.evals if isinstance(r.get(EPOCH), (int, float))]
        return int(max(epochs)) + 1 if epochs else None

    def time_to_accuracy(self, target: float, epochs: set[int] | None = None) -> float | None:
        """Wall time at which the test accuracy reached `target` (None if never): linearly
        interpolated between the evaluation before and the first at or above it, from the
        evaluations at `epochs` only (None: all), so a method evaluated more often than
        another gets no head start from it (`summarize` passes the epochs every run shares)."""
        prev: tuple[float, float] | None = None
        for r in self.evals:
            if not isinstance(r.get(WALL_TIME), (int, float)) or (epochs is not None and r.get(EPOCH) not in epochs):
                continue
            t, acc = float(r[WALL_TIME]), float(r[TEST_ACC])
            if acc >= target:
                if prev is None or acc <= prev[1]:
                    return t
                return prev[0] + (target - prev[1]) / (acc - prev[1]) * (t - prev[0])
            prev = (t, acc)
        return None

    @property
    def eval_epochs(self) -> set[int]:
        return {int(r[EPOCH]) for r in self.evals if isinstance(r.get(EPOCH), (int, float))}


def _read_config(run_dir: Path) -> dict[str, Any]:
    for name in ("config.yaml", "config.yml", "config.json"):
        path = run_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
            except (ValueError, yaml.YAMLError) as exc:
                raise ReportError(f"{path} is not readable {path.suffix[1:].upper()}: {exc}") from None
            if not isinstance(data, dict):
                raise ReportError(f"{path} holds a {type(data).__name__}, expected a mapping")
            return data
    return {}


def load_run(run_dir: str | Path, label: str | None = None) -> RunData:
    """A run directory's config (empty if it has none) and metrics records.
    The label defaults to the config's `name`, else the directory name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist")
    if not (run_dir / METRICS_FILE).is_file():
        raise ReportError(f"run directory {run_dir} has no {METRICS_FILE} (expected one JSON record per line)")
    config = _read_config(run_dir)
    records = read_metrics(run_dir / METRICS_FILE)
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        try:
            loaded = json.loads((run_dir / "summary.json").read_text())
        except ValueError as exc:
            raise ReportError(f"{run_dir / 'summary.json'} is not readable JSON: {exc}") from None
        summary = loaded if isinstance(loaded, dict) else {}
    if label is None:
        name = config.get("name")
        label = name if isinstance(name, str) and name else run_dir.name
    return RunData(run_dir, label, config, records, summary)


def unfinished(run: RunData) -> str | None:
    """Why a run is no result, or None: summary.json's status when it is not `finished`
    (diverged, interrupted), or the checkpoint's when a run has one and no summary (killed, or
    still training). A folder with neither (metrics written by other tools) counts as a result."""
    status = run.summary.get("status")
    if status is not None:
        return None if status == "finished" else str(status)
    try:
        meta = json.loads((run.run_dir / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return None
    status = meta.get("status") if isinstance(meta, dict) else None
    return "still training, or stopped without a word" if status in (None, "running") else str(status)


def _mean(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values; both None when any is
    None (a seed that never got there), the deviation None for a single value."""
    mean = _mean(values)
    if mean is None:
        return None, None
    known = [v for v in values if v is not None]  # all of them: the mean is not None
    return mean, statistics.stdev(known) if len(known) > 1 else None


def mean_curve(runs: Sequence[RunData], y_key: str, x_key: str) -> tuple[list[float], list[float]]:
    """The mean curve of runs of one label: at each evaluation index that every run has,
    the mean of their x and of their y (seeds evaluate at the same epochs, a little apart
    in time)."""
    curves = [[(float(r[x_key]), float(r[y_key])) for r in run.evals
               if isinstance(r.get(x_key), (int, float)) and isinstance(r.get(y_key), (int, float))] for run in runs]
    length = min((len(c) for c in curves), default=0)
    xs = [sum(c[i][0] for c in curves) / len(curves) for i in range(length)]
    ys = [sum(c[i][1] for c in curves) / len(curves) for i in range(length)]
    return xs, ys


# Config keys that differ between the seeds of one experiment or say where and how it ran,
# not what it is: runs that differ only here are one row (their mean and deviation).
