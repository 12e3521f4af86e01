"""Issue 33's table: both regimes of `benchmarks/compare_large_batch.sh` in one markdown table.

    python benchmarks/issue33_table.py runs/issue33/large-batch runs/issue33/overfit

Each argument is a `dbl-ps compare --out` folder; every finished run in it (summary.json
status "finished") is one seed of its method (the config's `name`). Per method: mean +-
sample standard deviation over the seeds of the final and best test top-1, the training
time, the final training and test loss and the gradient noise scale (the first epoch's that
resolved one, and the median over the epochs that did), and the
final accuracy and time against the regime's baseline.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from dbl_ps.report import load_run, mean_std

COLUMNS = ("final acc %", "best acc %", "vs baseline (points)", "training time (s)", "time / baseline",
           "train loss", "test loss", "B_noise first", "B_noise median", "B_L")


def _cell(values: list, scale: float = 1.0, digits: int = 2) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def resolved_b_noise(run) -> list[float]:
    """The gradient noise scale of every epoch that resolved one, in order."""
    return [float(r["b_noise"]) for r in run.records if isinstance(r.get("b_noise"), (int, float)) and r["b_noise"] > 0]


def first_b_noise(run) -> float | None:
    values = resolved_b_noise(run)
    return values[0] if values else None


def median_b_noise(run) -> float | None:
    values = resolved_b_noise(run)
    return statistics.median(values) if values else None


def rows(folder: Path) -> list[list[str]]:
    runs = {}
    for run_dir in sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file()):
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        if summary.get("status") == "finished":
            run = load_run(run_dir)
            runs.setdefault(run.label, []).append(run)
    base = runs.get("baseline", [])
    base_acc, _ = mean_std([r.final_acc for r in base]) if base else (None, None)
    base_time, _ = mean_std([r.total_time for r in base]) if base else (None, None)
    out = []
    for label, members in runs.items():
        acc, _ = mean_std([r.final_acc for r in members])
        time, _ = mean_std([r.total_time for r in members])
        batches = {w["batch"] for r in members for rec in r.records for w in rec.get("workers") or []}
        out.append([folder.name, label, str(len(members)),
                    _cell([r.final_acc for r in members], 100), _cell([r.best_acc for r in members], 100),
                    f"{100 * (acc - base_acc):+.2f}" if acc is not None and base_acc is not None else "-",
                    _cell([r.total_time for r in members], digits=0),
                    f"{time / base_time:.2f}" if time is not None and base_time else "-",
                    _cell([r.final_train_loss for r in members], digits=3),
                    _cell([r.final_loss for r in members], digits=3),
                    _cell([first_b_noise(r) for r in members], digits=0),
                    _cell([median_b_noise(r) for r in members], digits=0),
                    str(max(batches)) if batches else "-"])
    return out


def main(folders: list[str]) -> None:
    header = ["regime", "method", "seeds", *COLUMNS]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for folder in folders:
        for row in rows(Path(folder)):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
