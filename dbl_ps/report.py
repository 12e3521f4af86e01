"""Reports over finished (or running) runs.

From run directories (each with `config.yaml` or `config.json` and
`metrics.jsonl`) draw test accuracy and test loss against wall time and against
epoch (PNG, matplotlib Agg), each worker's seconds per mini-epoch against the plan's
prediction (does DBSL keep the workers together?), and tabulate final and best
accuracy, total time, time to a target accuracy and the ratios to a named baseline.
Runs that share a label (the config's `name`) and a config apart from the seed and
where they ran (`NOT_WHAT_A_RUN_IS`) are one row: the mean and the sample standard
deviation over its runs (seeds); in the plots one colour, each run a faint line and their
mean a bold one. Runs of one name with other configs are rows of their own, labelled with
the keys that tell them apart. The table is also
written as CSV (`summary.csv`, raw numbers) for other tools.

Times are training time (`wall_time` of the records: the clock starts once every worker
is ready); the start-up and the one-off time-model measurement are their own columns,
from each run's `summary.json`.

    write_report(["runs/baseline-s0", "runs/hybrid-s0"], "runs/report", baseline="baseline")
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from dbl_ps.metrics import EPOCH, TEST_ACC, TEST_LOSS, WALL_TIME, strict_dumps
from dbl_ps.run_data import ReportError, RunData, _mean, load_run, mean_curve, mean_std, unfinished

__all__ = ["ReportError", "RunData", "load_run", "unfinished", "summarize", "format_table", "write_csv", "plot_runs",
           "plot_worker_times", "plot_noise_scale", "worker_times", "replan_marks", "write_report", "PLOTS", "TARGET_FRACTION", "mean_std", "mean_curve",
           "comparison_notes", "shared_cores_note"]

# The target accuracy of "time to target": this fraction of the baseline's mean final accuracy.
TARGET_FRACTION = 0.9

# file name -> (y key, x key)
PLOTS = {
    "accuracy_vs_time.png": (TEST_ACC, WALL_TIME),
    "loss_vs_time.png": (TEST_LOSS, WALL_TIME),
    "accuracy_vs_epoch.png": (TEST_ACC, EPOCH),
    "loss_vs_epoch.png": (TEST_LOSS, EPOCH),
}
_AXIS_NAMES = {TEST_ACC: "test accuracy (top-1)", TEST_LOSS: "test loss", WALL_TIME: "wall time", EPOCH: "epoch"}


NOT_WHAT_A_RUN_IS = ("name", "description", "seed", "out_dir", "device", "threads_per_worker", "imports", "tracking",
                     "launch", "data.path", "data.num_workers", "data.verify", "eval.every")


def _identity(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config as dotted keys without `NOT_WHAT_A_RUN_IS`."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted in NOT_WHAT_A_RUN_IS:
            continue
        if isinstance(value, Mapping):
            flat.update(_identity(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:21] + "..."


def _group(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Runs grouped by what they are: one label, and one config apart from `NOT_WHAT_A_RUN_IS`.
    Runs that share a label but not a config (the same name with another learning rate, say)
    are separate groups, each labelled with the keys that tell them apart:
    `hybrid [schedule.lr=0.05]` and `hybrid [schedule.lr=0.1]`."""
    by_label: dict[str, list[RunData]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    groups: dict[str, list[RunData]] = {}
    for label, members in by_label.items():
        identities = [_identity(m.config) for m in members]
        distinct: list[dict[str, Any]] = []
        for identity in identities:
            if identity not in distinct:
                distinct.append(identity)
        if len(distinct) == 1:
            groups[label] = members
            continue
        keys = sorted({k for d in distinct for k in d if any(d.get(k) != o.get(k) for o in distinct)})
        for identity in distinct:
            name = f"{label} [{', '.join(f'{k}={_short(identity.get(k))}' for k in keys)}]"
            groups[name] = [m for m, i in zip(members, identities) if i == identity]
    return groups


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def summarize(runs: Sequence[RunData], baseline: str | None = None,
              target_fraction: float = TARGET_FRACTION) -> list[dict[str, Any]]:
    """One row per label: mean and standard deviation over its runs (seeds) of final and
    best accuracy and training time, the mean final test loss, training loss and training
    accuracy (the workers' batches of the last evaluated epoch), start-up and time-model seconds.
    With a baseline label also: the target accuracy (`target_fraction` x the baseline's
    mean final accuracy), each row's time to reach it (mean and deviation over its runs;
    None when a run never does, `target_reached` says how many did; interpolated between the
    evaluations at the epochs every run evaluated: `RunData.time_to_accuracy`), and the
    ratios to the baseline (training time, time to target) and the accuracy change."""
    groups = _group(runs)
    if baseline is not None and baseline not in groups:
        raise ReportError(f"baseline {baseline!r} is not one of the runs' labels: {', '.join(map(repr, groups))}")
    rows = []
    for label, members in groups.items():
        row: dict[str, Any] = {"label": label, "runs": len(members),
                               "epochs": max((m.epochs or 0) for m in members) or None}
        for key, values in (("final_acc", [m.final_acc for m in members]), ("best_acc", [m.best_acc for m in members]),
                            ("total_time", [m.total_time for m in members])):
            row[key], row[f"{key}_std"] = mean_std(values)
        row["final_loss"] = _mean([m.final_loss for m in members])
        row["final_train_loss"] = _mean([m.final_train_loss for m in members])
        row["final_train_acc"] = _mean([m.final_train_acc for m in members])
        row["b_noise"], row["b_noise_std"] = mean_std([m.final_b_noise for m in members])
        row["startup_seconds"] = _mean([m.startup_seconds for m in members])
        row["time_model_seconds"] = _mean([m.time_model_seconds for m in members])
        rows.append(row)
    if baseline is not None:
        base = next(r for r in rows if r["label"] == baseline)
        target = target_fraction * base["final_acc"] if base["final_acc"] is not None else None
        shared = set.intersection(*(m.eval_epochs for members in groups.values() for m in members))
        for row, members in zip(rows, groups.values()):
            reach = [m.time_to_accuracy(target, shared) for m in members] if target is not None else [None]
            row["target_acc"] = target
            row["time_to_target"], row["time_to_target_std"] = mean_std(reach)
            row["target_reached"] = sum(t is not None for t in reach)
        for row in rows:
            row["time_ratio"] = _ratio(row["total_time"], base["total_time"])
            row["acc_delta"] = (row["final_acc"] - base["final_acc"]
                                if row["final_acc"] is not None and base["final_acc"] is not None else None)
            row["time_to_target_ratio"] = _ratio(row["time_to_target"], base["time_to_target"])
    return rows


# The spread between seeds the README quotes (DBSL's test accuracy over 2 seeds, issue 22):
# what one seed cannot measure for itself.
SEED_SPREAD_POINTS = 1.3
OVERFIT_POINTS = 0.05  # train accuracy this far above test accuracy: the model overfits


def comparison_notes(runs: Sequence[RunData], rows: Sequence[dict[str, Any]], baseline: str | None = None,
                     seeds_hint: str = "") -> list[str]:
    """What the table cannot say for itself, one paragraph each: one seed per row (no spread:
    differences below the seeds' typical spread are noise; `seeds_hint` names what to add),
    time to target read from the evaluations every run shares (when runs evaluated at other
    epochs), and a baseline that does not overfit (DBSL, a regulariser, has nothing to
    regularise there)."""
    notes = []
    if rows and all(r.get("runs") == 1 for r in rows):
        notes.append(f"One seed per row: a difference smaller than the spread between seeds is noise, and one seed "
                     f"cannot measure that spread (the README's DBSL figure varies by {SEED_SPREAD_POINTS} points "
                     f"between seeds); {seeds_hint or 'run each with more seeds'} for mean ± spread.")
    epochs = [run.eval_epochs for run in runs]
    if baseline is not None and epochs and any(e != epochs[0] for e in epochs):
        shared = sorted(set.intersection(*epochs))
        shown = ", ".join(str(e + 1) for e in shared) or "none"
        notes.append(f"Time to target: the runs evaluated at different epochs, so it is read only from the epochs "
                     f"every run evaluated ({shown}), interpolated linearly between them: a run evaluated more "
                     f"often gets no head start from it (`eval.every`).")
    base = next((r for r in rows if r.get("label") == baseline), None)
    if base is not None and None not in (base.get("final_train_loss"), base.get("final_loss"),
                                         base.get("final_train_acc"), base.get("final_acc")):
        if base["final_train_loss"] >= base["final_loss"] and base["final_train_acc"] < base["final_acc"] + OVERFIT_POINTS:
            notes.append(f"The baseline does not overfit here: its final training loss {base['final_train_loss']:.3f} "
                         f"is not below its test loss {base['final_loss']:.3f}, and its training accuracy "
                         f"{100 * base['final_train_acc']:.1f} % is not {100 * OVERFIT_POINTS:.0f} points above its "
                         f"test accuracy {100 * base['final_acc']:.1f} %. DBSL acts as a regulariser, so it has "
                         f"nothing to regularise in this setting: expect no accuracy gain from it (more epochs or "
                         f"less data make a model overfit; `train_vs_test_accuracy.png` shows the gap).")
    return notes


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 120:
        return 1.0, "s"
    if seconds < 7200:
        return 60.0, "min"
    return 3600.0, "h"


def _cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "points":
        return f"{100 * value:+.2f}"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "time":
        scale, unit = _time_unit(value)
        return f"{value / scale:.1f} {unit}"
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "count":
        return f"{value:.0f}"
    return str(value)


def _cell_std(row: dict[str, Any], key: str, kind: str) -> str:
    """`mean ± std` (the mean alone for one run)."""
    text = _cell(row.get(key), kind)
    std = row.get(f"{key}_std")
    if text == "-" or std is None:
        return text
    return f"{text} ± {_cell(std, kind)}"


def _time_std_cell(row: dict[str, Any], key: str) -> str:
    value, std = row.get(key), row.get(f"{key}_std")
    if value is None:
        return "-"
    scale, unit = _time_unit(value)
    return f"{value / scale:.1f}" + (f" ± {std / scale:.1f}" if std is not None else "") + f" {unit}"


def format_table(rows: Sequence[dict[str, Any]], style: str = "markdown") -> str:
    """The summary as a markdown table (`style="markdown"`) or aligned plain text; mean ± sample
    standard deviation over a row's runs where it has more than one."""
    if style not in ("markdown", "plain"):
        raise ValueError(f"table style must be 'markdown' or 'plain', got {style!r}")
    columns: list[tuple[str, Any]] = [
        ("run", lambda r: _cell(r.get("label"), "str")), ("seeds", lambda r: _cell(r.get("runs"), "str")),
        ("epochs", lambda r: _cell(r.get("epochs"), "str")),
        ("final acc %", lambda r: _cell_std(r, "final_acc", "pct")), ("best acc %", lambda r: _cell_std(r, "best_acc", "pct")),
        ("final loss", lambda r: _cell(r.get("final_loss"), "loss")),
        ("train loss", lambda r: _cell(r.get("final_train_loss"), "loss")),
        ("train acc %", lambda r: _cell(r.get("final_train_acc"), "pct")),
        ("B_noise", lambda r: _cell_std(r, "b_noise", "count")),
        ("training time", lambda r: _time_std_cell(r, "total_time")),
        ("start-up", lambda r: _cell(r.get("startup_seconds"), "time")),
        ("time model", lambda r: _cell(r.get("time_model_seconds"), "time"))]
    if rows and "time_ratio" in rows[0]:
        target = rows[0].get("target_acc")
        columns += [
            (f"time to {_cell(target, 'pct')} %", lambda r: _time_std_cell(r, "time_to_target")
             + ("" if r.get("target_reached") == r.get("runs") else f" ({r.get('target_reached')}/{r.get('runs')} reached)")),
            ("time / baseline", lambda r: _cell(r.get("time_ratio"), "ratio")),
            ("acc vs baseline (points)", lambda r: _cell(r.get("acc_delta"), "points")),
            ("time to target / baseline's", lambda r: _cell(r.get("time_to_target_ratio"), "ratio"))]
    header = [c[0] for c in columns]
    body = [[cell(row) for _, cell in columns] for row in rows]
    if style == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("label", "runs", "epochs", "final_acc", "final_acc_std", "best_acc", "best_acc_std", "final_loss",
               "final_train_loss", "final_train_acc", "b_noise", "b_noise_std",
               "total_time", "total_time_std", "startup_seconds", "time_model_seconds", "target_acc", "time_to_target",
               "time_to_target_std", "target_reached", "time_ratio", "acc_delta", "time_to_target_ratio")


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The summary rows as CSV: raw numbers (accuracy 0..1, seconds), empty where unknown."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            values = [row.get(k) for k in CSV_COLUMNS]
            writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in values])
    return path


def _figure(height: float = 4.4) -> tuple[Any, Any, Any]:
    """A figure drawn with the Agg backend (Figure + FigureCanvasAgg, without touching pyplot's
    global backend, so it works headless and inside notebooks alike), its one axes, and the
    label colours."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(), matplotlib.colormaps["tab10"]


def plot_runs(runs: Sequence[RunData], out_dir: str | Path) -> list[Path]:
    """Write the four PNGs of `PLOTS` into `out_dir`; one colour per label, each run a
    faint line and, for labels with several runs (seeds), their mean a bold one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _group(runs)
    max_time = max((r.total_time or 0.0 for r in runs), default=0.0)
    scale, unit = _time_unit(max_time)
    written = []
    for filename, (y_key, x_key) in PLOTS.items():
        fig, ax, colours = _figure()
        x_scale = scale if x_key == WALL_TIME else 1.0
        shift = 1 if x_key == EPOCH else 0  # epochs as users count them: 1 = the end of the first
        for g, (label, members) in enumerate(groups.items()):
            several = len(members) > 1
            for k, run in enumerate(members):
                pts = [(r[x_key] + shift, r[y_key]) for r in run.evals
                       if isinstance(r.get(x_key), (int, float)) and isinstance(r.get(y_key), (int, float))]
                if not pts:
                    continue
                ax.plot([p[0] / x_scale for p in pts], [p[1] for p in pts], color=colours(g % 10),
                        alpha=0.3 if several else 1.0, linewidth=0.8 if several else 1.5,
                        label=None if several or k else label, marker="." if len(pts) < 40 and not several else None)
            if several:
                xs, ys = mean_curve(members, y_key, x_key)
                ax.plot([x / x_scale + shift for x in xs], ys, color=colours(g % 10), linewidth=2.2,
                        label=f"{label} (mean of {len(members)})", marker="." if len(xs) < 40 else None)
        if x_key == EPOCH:
            _integer_ticks(ax)
        ax.set_xlabel(f"{_AXIS_NAMES[x_key]} ({unit})" if x_key == WALL_TIME else _AXIS_NAMES[x_key])
        ax.set_ylabel(_AXIS_NAMES[y_key])
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path)
        written.append(path)
    return written


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_generalisation_gap(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """Training accuracy (dashed: the workers' batches of each epoch, dropout on) and test
    accuracy (solid) against the epoch, the mean over each label's runs: where the dashed line
    runs far above the solid one the model overfits, the regime where DBSL can act as a
    regulariser. None (nothing drawn) when no run records a training accuracy."""
    groups = {label: members for label, members in _group(runs).items()
              if all(any(isinstance(r.get("train_acc"), (int, float)) for r in m.evals) for m in members)}
    if not groups:
        return None
    fig, ax, colours = _figure()
    for g, (label, members) in enumerate(groups.items()):
        for key, style, name in (("train_acc", "--", "train"), (TEST_ACC, "-", "test")):
            xs, ys = mean_curve(members, key, EPOCH)
            ax.plot([x + 1 for x in xs], ys, style, color=colours(g % 10), linewidth=1.5, label=f"{label} {name}")
    _integer_ticks(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (top-1)")
    ax.set_title("training (dashed) vs test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_noise_scale(runs: Sequence[RunData], path: str | Path) -> Path | None:
    """The measured gradient noise scale against the epoch, the geometric mean over each label's
    runs that resolved it (log scale), with each label's largest batch dashed in its colour: where the dashed line
    runs above the solid one, the run trains in the large-batch regime. None (nothing drawn)
    when no run measured one."""
    groups = {label: members for label, members in _group(runs).items()
              if all(any(isinstance(r.get("b_noise"), (int, float)) for r in m.records) for m in members)}
    if not groups:
        return None
    fig, ax, colours = _figure()
    for g, (label, members) in enumerate(groups.items()):
        per_epoch: dict[float, list[float]] = {}
        for run in members:
            for r in run.records:
                if isinstance(r.get("b_noise"), (int, float)) and r["b_noise"] > 0:
                    per_epoch.setdefault(float(r[EPOCH]) + 1, []).append(float(r["b_noise"]))
        xs = sorted(per_epoch)  # the geometric mean of the runs that resolved it (a ratio spans decades)
        ax.plot(xs, [math.exp(sum(map(math.log, per_epoch[x])) / len(per_epoch[x])) for x in xs],
                color=colours(g % 10), marker=".", label=label)
        batches = [w["batch"] for r in members[0].records for w in r.get("workers") or [] if "batch" in w]
        if batches:
            ax.axhline(max(batches), color=colours(g % 10), linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("B_noise (samples)")
    ax.set_title("gradient noise scale (dashed: each run's largest batch)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def worker_times(run: RunData) -> dict[int, dict[str, list[Any]]]:
    """Per worker, over the epochs it recorded: `epoch`, `resolution`, `training` (seconds
    computing: the mini-epoch less the waiting and merging at syncs), `waiting` (for the other
    workers at syncs) and `merging` (the sync's own work). Runs from before waiting was
    recorded count none. {} for runs without per-worker records."""
    def number(worker: Mapping[str, Any], key: str) -> float:
        value = worker.get(key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    times: dict[int, dict[str, list[Any]]] = {}
    for record in run.records:
        if not isinstance(record.get(EPOCH), (int, float)):
            continue
        for w in record.get("workers") or []:
            if not (isinstance(w, dict) and isinstance(w.get("seconds"), (int, float))):
                continue
            series = times.setdefault(int(w["worker"]), {k: [] for k in ("epoch", "resolution", "training", "waiting",
                                                                         "merging")})
            series["epoch"].append(record[EPOCH] + 1)  # 1-based, as every plot and the console count
            series["resolution"].append(w.get("resolution"))
            series["training"].append(w["seconds"] - number(w, "wait_seconds") - number(w, "sync_seconds"))
            series["waiting"].append(number(w, "wait_seconds"))
            series["merging"].append(number(w, "sync_seconds"))
    return dict(sorted(times.items()))


def replan_marks(plan: Mapping[str, Any]) -> list[tuple[float, str]]:
    """Where `plan.json`'s re-plans fall on the epoch axis: between the epoch after which the
    workers were re-planned and the next one; before the epoch a resume re-planned at."""
    marks = []
    for record in plan.get("replans", []) if isinstance(plan.get("replans"), list) else []:
        if isinstance(record.get("after_epoch"), (int, float)):  # 0-based indices, drawn at 1-based epochs
            marks.append((record["after_epoch"] + 1.5, "re-plan"))
        elif isinstance(record.get("at_resume"), (int, float)):
            marks.append((record["at_resume"] + 0.5, f"resumed on {record.get('workers', '?')} workers"))
    return marks


def shared_cores_note(run: RunData, plan: Mapping[str, Any]) -> str | None:
    """Why a CPU run's measured worker times sit above the plan: more workers than cores
    (summary.json's `cpu_cores`), while the time model was measured one process at a time."""
    cores, workers = run.summary.get("cpu_cores"), plan.get("workers", 0) if plan else 0
    if not isinstance(cores, int) or run.summary.get("device", "cpu") != "cpu" or workers <= cores:
        return None
    return (f"{workers} workers share {cores} cores: the measured times sit above the plan (its time model is "
            f"measured one process at a time)")


def _plan_title(label: str, plan: Mapping[str, Any]) -> str:
    if not plan:
        return f"{label}: worker times"
    small, workers = plan.get("small", 0), plan.get("workers", "?")
    what = f"{workers} workers, {small} small" if small else f"{workers} workers, one batch size"
    return f"{label}: worker times ({what})"


def plot_worker_times(run: RunData, path: str | Path, label: str | None = None) -> Path | None:
    """Each worker's seconds per mini-epoch against the epoch, computing and waiting apart.

    Top: the seconds each worker trained (its epoch less the waiting and merging at syncs;
    solid) against the plan's prediction for its share and batch at that resolution (dashed,
    from `plan.json` when the run has one). DBSL plans the shares so that these lines meet;
    in BSP the whole epochs are equal by construction, which is why the waiting is taken out.
    Bottom: the seconds each worker waited for the others at syncs (solid) and spent merging
    (dotted). Grey vertical lines mark re-plans. None (nothing drawn) for runs without
    per-worker records."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = worker_times(run)
    if not times:
        return None
    plan: dict[str, Any] = {}
    if (run.run_dir / "plan.json").is_file():
        plan = json.loads((run.run_dir / "plan.json").read_text())
    per_resolution = plan.get("per_resolution", {})
    fig = Figure(figsize=(6.4, 6.4), dpi=100)
    FigureCanvasAgg(fig)
    compute_ax, wait_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for worker, series in times.items():
        epochs = series["epoch"]
        role = "" if not plan else (" (small)" if worker < plan.get("small", 0) else " (large)")
        marker = "." if len(epochs) < 40 else None
        (line,) = compute_ax.plot(epochs, series["training"], label=f"worker {worker}{role}", marker=marker)
        predicted = [(e, per_resolution[str(r)]["predicted_epoch_seconds"][worker])
                     for e, r in zip(epochs, series["resolution"]) if str(r) in per_resolution]
        if predicted:
            compute_ax.plot([e for e, _ in predicted], [t for _, t in predicted], linestyle="--",
                            color=line.get_color(), drawstyle="steps-post")
        wait_ax.plot(epochs, series["waiting"], color=line.get_color(), marker=marker)
        wait_ax.plot(epochs, series["merging"], color=line.get_color(), linestyle=":")
    for ax in (compute_ax, wait_ax):
        for x, _ in replan_marks(plan):
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(True, alpha=0.3)
    for x, text in replan_marks(plan):
        compute_ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize="x-small",
                            color="grey", ha="right", va="top")
    note = shared_cores_note(run, plan)
    if note:
        compute_ax.annotate(note, (0.01, 0.02), xycoords="axes fraction", fontsize="x-small", color="dimgrey")
    _integer_ticks(wait_ax)
    compute_ax.set_ylabel("training s / mini-epoch\n(dashed: plan)")
    wait_ax.set_ylabel("s at syncs\n(solid: waiting, dotted: merge)")
    wait_ax.set_xlabel("epoch")
    compute_ax.set_title(_plan_title(label or run.label, plan))
    compute_ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _file_names(labels: Sequence[str], prefix: str) -> dict[str, str]:
    """One PNG name per label, made safe for a file system and never shared: labels that
    read the same once made safe (`a/b`, `a_b`) get `-2`, `-3`."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for label in labels:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        name, k = f"{prefix}{safe}.png", 2
        while name in taken:
            name, k = f"{prefix}{safe}-{k}.png", k + 1
        taken.add(name)
        names[label] = name
    return names


def write_report(runs: Sequence[str | Path | RunData], out_dir: str | Path, *, baseline: str | None = None,
                 title: str = "dbl-ps report", notes: Sequence[str] = (), seeds_hint: str = "") -> Path:
    """Plots, `summary.json` and `report.md` (table + plots) in `out_dir`; returns the report's path.
    `notes`: paragraphs printed under the table's explanation (e.g. how the time model was had),
    after `comparison_notes` (one seed, time to target, a baseline that does not overfit)."""
    loaded = [r if isinstance(r, RunData) else load_run(r) for r in runs]
    if not loaded:
        raise ReportError("no runs to report on")
    out_dir = Path(out_dir)
    rows = summarize(loaded, baseline)
    plots = plot_runs(loaded, out_dir)
    gap = plot_generalisation_gap(loaded, out_dir / "train_vs_test_accuracy.png")
    if gap is not None:
        plots.append(gap)
    noise = plot_noise_scale(loaded, out_dir / "noise_scale_vs_epoch.png")
    if noise is not None:
        plots.append(noise)
    groups = _group(loaded)
    names = _file_names(list(groups), "workers_")
    for label, members in groups.items():  # one worker-time plot per group (its first run)
        drawn = plot_worker_times(members[0], out_dir / names[label], label)
        if drawn is not None:
            plots.append(drawn)
    (out_dir / "summary.json").write_text(strict_dumps(rows, indent=2) + "\n")  # a NaN loss as null
    write_csv(rows, out_dir / "summary.csv")
    lines = [f"# {title}", ""]
    if baseline is not None:
        lines += [f"Baseline: `{baseline}`. Ratios below are against its mean training time and final accuracy; the "
                  f"target accuracy is {TARGET_FRACTION:g} x its mean final accuracy.", ""]
    lines += ["Mean ± sample standard deviation over each row's runs (seeds). Training time excludes the start-up "
              "and the time-model measurement (their own columns). Table as CSV: `summary.csv`.", ""]
    for note in [*comparison_notes(loaded, rows, baseline, seeds_hint), *notes]:
        lines += [note, ""]
    lines += [format_table(rows, "markdown"), "Runs:", ""]
    lines += [f"- `{label}`: {r.run_dir}" for label, members in groups.items() for r in members]
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
