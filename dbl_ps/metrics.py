"""Metrics: a JSON-lines file per run plus a small logger fan-out.

`MetricsWriter` appends one JSON object per line to `RUN_DIR/metrics.jsonl`,
flushed per line so a crash loses at most the line being written. Resuming a run
reopens the same file, drops a torn last line, and can drop records newer than
the checkpoint it resumes from (`keep_through=epoch`), so the file never holds
an epoch twice; either drop is reported as one warning line. `read_metrics` reads
it back.

The files are strict JSON (RFC 8259): a NaN or infinite value (a diverged loss)
is written as `null`, never as the bare `NaN`/`Infinity` tokens that Python's json
module writes by default and other parsers reject. `strict_dumps` does the same for
any other JSON file of a run (`summary.json`).

`Logger` fans `log(step, metrics)` out to any number of sinks (anything with
`log(step, metrics)` and `close()`): the JSONL writer, the console, and later
W&B. Record schema the report reads (other keys are free-form):

    epoch       global epoch (int)            wall_time   seconds since the run started
    test_acc    top-1 of the global model     test_loss   mean cross-entropy on the test set
"""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, TextIO

from dbl_ps.run_ownership import atomic_write, write_failure

__all__ = [
    "METRICS_FILE",
    "EPOCH",
    "WALL_TIME",
    "TEST_ACC",
    "TEST_LOSS",
    "Sink",
    "MetricsWriter",
    "CsvWriter",
    "CSV_FILE",
    "ConsoleSink",
    "Logger",
    "read_metrics",
    "MetricsFileError",
    "finite_or_null",
    "strict_dumps",
    "Isolated",
    "IsolatedSink",
    "epoch_metrics",
    "replan_metrics",
    "shown_epoch",
]

METRICS_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"  # the `csv` tracker's (tracking.trackers: [csv])
EPOCH = "epoch"
WALL_TIME = "wall_time"
TEST_ACC = "test_acc"
TEST_LOSS = "test_loss"


class MetricsFileError(ValueError):
    """A metrics file is unreadable in the middle (a torn last line is tolerated)."""


class Sink(Protocol):
    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _to_json(value: Any) -> Any:
    """json.dumps fallback for numpy/torch scalars and arrays and paths."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"metric value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def finite_or_null(value: Any) -> Any:
    """`value` as plain JSON data: every NaN or infinite float (also inside lists, tuples
    and dicts, and numpy/torch scalars and arrays, which become numbers and lists) is
    replaced by None, so that it serialises as strict JSON."""
    if isinstance(value, float):  # also numpy.float64, a float subclass
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [finite_or_null(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return finite_or_null(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def strict_dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that writes strict JSON: non-finite floats become null instead of the
    bare NaN/Infinity tokens (allow_nan=False then guards against any that slip through)."""
    return json.dumps(finite_or_null(value), allow_nan=False, default=_to_json, **kwargs)


def _metrics_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def _parse_lines(path: Path, text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The records of `text`, and its last line if that was torn (not valid JSON), else None."""
    records: list[dict[str, Any]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(lines):  # torn final line from a crash mid-write: ignore it
                return records, line
            raise MetricsFileError(f"{path} line {number} is not a JSON object ({exc}): {line[:80]!r}") from None
        records.append(record)
    return records, None


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics file (or of `RUN_DIR/metrics.jsonl`), in order."""
    path = _metrics_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist (a run directory holds {METRICS_FILE})")
    return _parse_lines(path, path.read_text())[0]


class MetricsWriter:
    """Append-only JSON-lines sink. `log(step, metrics)` writes `{step_key: step, **metrics}`.

    `resume=False` refuses a file that already holds records (nothing is
    overwritten by accident); `resume=True` continues it, first dropping a torn
    last line and, with `keep_through`, the records whose `step_key` is larger.
    Each drop is reported through `warn` (default: one `warning:` line on stderr),
    so a resumed run never loses a record without saying so.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, resume: bool = False, keep_through: int | None = None,
                 step_key: str = EPOCH, fsync: bool = False, warn: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.step_key = step_key
        self.fsync = fsync
        self._warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise FileExistsError(f"{self.path} already holds metrics; resume the run or choose a new run directory")
            self._repair(keep_through)
        self._fh: TextIO | None = open(self.path, "a", encoding="utf-8")

    def _repair(self, keep_through: int | None) -> None:
        text = self.path.read_text(encoding="utf-8")
        records, torn = _parse_lines(self.path, text)
        if keep_through is not None:
            kept = [r for r in records if not (isinstance(r.get(self.step_key), (int, float)) and r[self.step_key] > keep_through)]
        else:
            kept = records
        if torn is not None:
            self._warn(f"{self.path}: dropped its torn last line (a crash while it was written): {torn[:80]!r}")
        if len(kept) < len(records):
            self._warn(f"{self.path}: dropped {len(records) - len(kept)} record(s) after {self.step_key} {keep_through} "
                       f"(newer than the checkpoint the run resumes from)")
        if len(kept) == len(records) and torn is None and text.endswith("\n"):
            return  # nothing to fix
        body = "".join(strict_dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda tmp: tmp.write_text(body, encoding="utf-8"))

    def write(self, record: Mapping[str, Any]) -> None:
        if self._fh is None:
            raise ValueError(f"MetricsWriter for {self.path} is closed")
        line = strict_dumps(dict(record))
        try:
            self._fh.write(line + "\n")
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:  # a full disk: at most a torn last line, which a resume drops
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:  # the buffered rest cannot be written either
                pass
            raise write_failure(self.path, exc) from None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.write({self.step_key: step, **metrics})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CsvWriter:
    """`RUN_DIR/metrics.csv` (the `csv` tracker): one row per epoch record, for a spreadsheet.

    Columns: `step_key` first (the epoch as users read it, 1-based: `shown_epoch`), then the
    names every tracker logs (`epoch_metrics`: `test/acc`, `train/worker0/loss`, ... the
    per-worker values included), the union in order of first appearance. Records with an
    `event` (re-plan records are not epochs) stay in metrics.jsonl. A new key changes the
    header, so each record rewrites the whole file (small: one row per epoch) to a temporary
    file renamed over the old one: a crash leaves the previous file or the new one, never a
    torn one.

    `resume=False` refuses a file that already holds rows; `resume=True` continues it and, at
    the first record, drops its rows of that epoch or later (epochs after the checkpoint the
    run resumes from, trained again)."""

    def __init__(self, run_dir: str | os.PathLike[str], *, resume: bool = False, step_key: str = EPOCH):
        self.path = Path(run_dir) / CSV_FILE
        self.step_key = step_key
        self.columns: list[str] = [step_key]
        self.rows: list[dict[str, Any]] = []
        self._trim = resume
        if self.path.is_file() and self.path.stat().st_size > 0:
            if not resume:
                raise FileExistsError(f"{self.path} already holds metrics; resume the run or choose a new run directory")
            with open(self.path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.rows = list(reader)  # values as read (strings): written back unchanged
                self.columns = list(reader.fieldnames or [step_key])

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if "event" in metrics:
            return
        shown = shown_epoch(step)
        if self._trim:  # the first record of a resumed run: drop the rows it trains again
            self._trim = False
            self.rows = [r for r in self.rows if not _is_int(r.get(self.step_key)) or int(r[self.step_key]) < shown]
        row: dict[str, Any] = {self.step_key: shown, **epoch_metrics(metrics)}
        self.columns += [k for k in row if k not in self.columns]
        self.rows.append(row)
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.path, write)

    def close(self) -> None:
        pass


def _is_int(text: Any) -> bool:
    """Whether a CSV cell read back holds an integer step."""
    try:
        int(text)
        return True
    except (TypeError, ValueError):
        return False


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and (value == 0 or 1e-3 <= abs(value) < 1e5):
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


class ConsoleSink:
    """One line per log call with the scalar metrics (`keys` picks and orders them)."""

    def __init__(self, stream: TextIO | None = None, keys: Iterable[str] | None = None, prefix: str = "epoch"):
        self.stream = stream if stream is not None else sys.stdout
        self.keys = list(keys) if keys is not None else None
        self.prefix = prefix

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        keys = self.keys if self.keys is not None else list(metrics)
        parts = [f"{k}={_fmt(metrics[k])}" for k in keys if k in metrics and isinstance(metrics[k], (int, float, str))]
        print(f"{self.prefix} {step}: " + " ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class Logger:
    """Fans each `log(step, metrics)` out to every sink, in order."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks: list[Sink] = list(sinks)

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # close every sink even if one fails
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Isolated:
    """User code that must never stop, kill or hang training (a tracker, a callback), called
    through one guard: `guard(fn, *args)` runs `fn` on the guard's own thread and waits at
    most `timeout` seconds. An exception (`SystemExit` and `KeyboardInterrupt` raised by the
    code itself included) or a call past the deadline is reported once through `warn`, and
    the guard is off from then on: later calls return None at once and the caller goes on.
    Returns what `fn` returned. One thread per guard, made at the first call: a call costs a
    hand-over, not a thread start; a hung call's thread is left behind (a daemon)."""

    def __init__(self, name: str, *, timeout: float, warn: Callable[[str], None],
                 passthrough: tuple[type[BaseException], ...] = ()):
        self.name, self.timeout, self._warn = name, float(timeout), warn
        # Exceptions the code raises on purpose to reach the caller (a callback's StopTraining):
        # raised again in the caller's thread, the guard stays on.
        self.passthrough = passthrough
        self.off = False
        self._calls: queue.SimpleQueue[Any] | None = None

    def _serve(self) -> None:
        calls = self._calls
        assert calls is not None  # set before the thread starts
        while True:
            fn, args, kwargs, box, done = calls.get()
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 (user code: whatever it raises stays here)
                box["error"] = exc
            done.set()

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.off:
            return None
        if self._calls is None:
            self._calls = queue.SimpleQueue()
            threading.Thread(target=self._serve, name=f"dbl-ps {self.name}", daemon=True).start()
        box: dict[str, Any] = {}
        done = threading.Event()
        self._calls.put((fn, args, kwargs, box, done))
        what = getattr(fn, "__name__", "call")
        if not done.wait(self.timeout):
            self._disable(f"{self.name}: {what}() did not return within {self.timeout:g} s")
            return None
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, self.passthrough):
                raise exc
            text = " ".join(str(exc).split())[:200]
            self._disable(f"{self.name}: {what}() raised {type(exc).__name__}{f': {text}' if text else ''}")
            return None
        return box.get("value")

    def _disable(self, why: str) -> None:
        self.off = True
        self._warn(f"warning: {why}; it is off for the rest of this run, training goes on")


class IsolatedSink:
    """A sink (a tracker) whose `log` and `close` go through an `Isolated` guard."""

    def __init__(self, sink: Sink, guard: Isolated):
        self.sink, self.guard = sink, guard

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.guard(self.sink.log, step, dict(metrics))

    def close(self) -> None:
        self.guard(self.sink.close)
# --------------------------------------------------------------------------- trackers' names


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# record key -> tracker name (W&B, TensorBoard, CSV: every tracker logs the same names)
RECORD_NAMES = {
    "test_loss": "test/loss", "test_acc": "test/acc", "test_acc5": "test/acc5", "eval_seconds": "test/eval_seconds",
    "train_loss": "train/loss", "train_acc": "train/acc", "samples": "train/samples",
    "samples_per_s": "train/samples_per_s", "sync_seconds": "train/sync_seconds", "wait_seconds": "train/wait_seconds",
    "lr": "schedule/lr", "resolution": "schedule/resolution", "dropout": "schedule/dropout",
    "store_version": "store/version", "wall_time": "time/wall_seconds",
    "b_noise": "noise/b_noise", "b_noise_std": "noise/b_noise_std", "noise_grad_sq": "noise/grad_sq",
    "noise_trace": "noise/trace", "swa_models": "swa/models",
}
WORKER_NAMES = ("loss", "acc", "samples_per_s", "batch", "resolution", "samples", "steps", "syncs", "skipped_syncs",
                "seconds", "wait_seconds", "sync_seconds", "weight", "grad_sq")


def shown_epoch(epoch: int) -> int:
    """The epoch a user reads (console, plots, trackers' steps, metrics.csv): 1-based, the
    number of epochs completed. metrics.jsonl's `epoch` field stays 0-based, the index a
    resume continues from (`checkpoint.json`'s `epoch` too): changing it would break the
    resumes of existing runs."""
    return int(epoch) + 1


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The namespaced scalars every tracker logs for one global-epoch record of metrics.jsonl
    (pure): `test/`, `train/`, `train/worker{i}/` (each worker's own), `schedule/`, `store/`
    (staleness: updates the store applied after a worker's last pull), `time/`, `noise/`
    (the gradient noise scale), `swa/`. A re-plan
    record (`"event": "replan"`) gives `replan/worker{i}/...` instead."""
    if "event" in record:  # not an epoch
        return replan_metrics(record) if record["event"] == "replan" else {}
    out: dict[str, float] = {name: record[key] for key, name in RECORD_NAMES.items() if _scalar(record.get(key))}
    workers = record.get("workers") or []
    batches = [w["batch"] for w in workers if _scalar(w.get("batch"))]
    if batches:
        out["schedule/batch_large"] = max(batches)
        out["schedule/batch_small"] = min(batches)
    staleness = []
    for i, w in enumerate(workers):
        prefix = f"train/worker{w.get('worker', i)}/"
        out.update({prefix + key: w[key] for key in WORKER_NAMES if _scalar(w.get(key))})
        if _scalar(w.get("version")) and _scalar(record.get("store_version")):
            staleness.append(record["store_version"] - w["version"])
    if staleness:
        out["store/staleness_max"] = max(staleness)
        out["store/staleness_mean"] = sum(staleness) / len(staleness)
    return out


def replan_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """Each worker's speed factor (measured / planned seconds) and its new share and batch at
    the measured resolution, of a re-plan record (`dbl_ps.training.replanning`)."""
    new = record["new"][str(record["measured_resolution"])]
    out: dict[str, float] = {}
    for w, factor in enumerate(record["factors"]):
        out[f"replan/worker{w}/factor"] = factor
        out[f"replan/worker{w}/share"] = new["shares"][w]
        out[f"replan/worker{w}/batch"] = new["batches"][w]
    return out
