"""Planner accuracy: predicted vs measured epoch time of every worker.

1. Calibrate ``small_resnet`` on this machine at each resolution (``dbl_ps.calibrate``),
   right before that resolution's epochs are timed.
2. Plan W workers for each (n_S, tau) case (``dbl_ps.planner.make_plan``).
3. Train one real epoch per worker on its planned share of Fashion-MNIST (pre-resized to
   the resolution, as the shard sets are), with its planned batch size, and time it.
4. Report measured / predicted per worker, and the DBSL epoch time as a ratio of the
   all-large (n_S = 0) epoch time measured in the same script, next to the predicted
   ratio.

Workers run one after another in this process, each timed alone (``--epoch-repeats``
epochs; the epochs of all cases and workers of a resolution are taken round-robin so
that load from other jobs hits them alike), with one torch thread: the point is the time model's prediction for each worker's share and batch,
and a 2-core machine shared with other jobs cannot host 4 full-speed workers at once.
Each worker's first step at its batch size is an untimed warm-up (as in the
calibration; in a real run only the very first epoch pays it). Repeated step times
(calibration) and epoch times (measurement) are both reduced with ``--statistic``: the
minimum by default, because this machine is shared with other jobs whose load only
ever slows a step or an epoch down; ``--statistic median`` gives the typical times.

    python benchmarks/plan_accuracy.py [--data ../shared/data/fashion-mnist] [--dataset-size 12000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dbl_ps.calibrate import calibrate, format_calibration_table
from dbl_ps.config import RunConfig
from dbl_ps.models import build_model
from dbl_ps.planner import make_plan
from dbl_ps.training.engine import engine_step_factory

REPO = Path(__file__).resolve().parents[1]


def read_idx_images(path: Path) -> np.ndarray:
    """IDX3 unsigned-byte images (gzip) as an (n, rows, cols) uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def load_fashion(root: Path, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx_images(root / "train-images-idx3-ubyte.gz")[:limit]
    labels = read_idx_labels(root / "train-labels-idx1-ubyte.gz")[:limit]
    x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    return x, torch.from_numpy(labels)


def time_worker_epoch(model, x: torch.Tensor, y: torch.Tensor, share: np.ndarray, batch: int) -> float:
    """Seconds for one epoch over ``share`` (every sample, last batch partial) with SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    warm = torch.from_numpy(share[:batch])
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x[warm]), y[warm]).backward()
    opt.step()
    start = time.perf_counter()
    for i in range(0, len(share), batch):
        idx = torch.from_numpy(share[i : i + batch])
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fashion-mnist")
    parser.add_argument("--dataset-size", type=int, default=12000, help="N: Fashion-MNIST training images used")
    parser.add_argument("--resolutions", default="16,28")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--cases", default="0:1.0,1:1.1,2:1.1", help="n_S:tau pairs; the first must be n_S=0")
    parser.add_argument("--batch-sizes", default="2,4,8,16,24,32,48,64,96", help="calibration grid")
    parser.add_argument("--no-auto-cap", action="store_true", help="B_L = largest grid batch, not the best-throughput one")
    parser.add_argument("--epoch-repeats", type=int, default=3, help="epochs timed per worker; the median counts")
    parser.add_argument("--repeats", type=int, default=9, help="timed calibration steps per batch size")
    parser.add_argument(
        "--statistic",
        choices=("min", "median"),
        default="min",
        help="how repeated step times (calibration) and epoch times (measurement) are reduced",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path, help="also write all numbers as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    grid = [int(b) for b in args.batch_sizes.split(",")]
    cases = [(int(a), float(b)) for a, b in (c.split(":") for c in args.cases.split(","))]
    if cases[0][0] != 0:
        parser.error("the first case must have n_S=0 (the all-large baseline of the ratios)")

    x28, y = load_fashion(args.data, args.dataset_size)
    n = len(y)
    images = {r: F.interpolate(x28, size=r, mode="bilinear", align_corners=False) if r != 28 else x28 for r in resolutions}

    print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    rng = np.random.default_rng(args.seed)
    results = []
    calibrations = {}
    for r in resolutions:
        # calibrate each resolution right before its epochs are timed, so that the load
        # other jobs put on this shared machine changes as little as possible in between
        t0 = time.perf_counter()
        cal = calibrate(
            "small_resnet",
            [r],
            make_step=engine_step_factory(RunConfig()),
            num_classes=10,
            in_channels=1,
            batch_sizes=grid,
            batch_cap=max(grid),
            warmup=2,
            repeats=args.repeats,
            auto_cap=not args.no_auto_cap,
            statistic=args.statistic,
            threads=args.threads,
            progress=True,
        )
        torch.set_num_threads(args.threads)
        calibrations[r] = cal.resolutions[r]
        print(format_calibration_table(cal))
        print(f"calibration took {time.perf_counter() - t0:.1f} s\n")
        plans = {case: make_plan(cal.time_models(), cal.batch_large(), args.workers, *case, n) for case in cases}
        # every (case, worker) job of this resolution, timed round-robin: a burst of load from
        # other jobs on the machine then hits the baseline and the DBSL workers alike
        jobs = []
        for case in cases:
            p = plans[case][r]
            order = rng.permutation(n)
            bounds = np.cumsum((0,) + p.shares)
            for w in range(args.workers):
                torch.manual_seed(args.seed + w)
                model = build_model("small_resnet", 10, in_channels=1).train()
                jobs.append((case, w, model, order[bounds[w] : bounds[w + 1]], p.batches[w]))
        times: dict[tuple, list[float]] = {(case, w): [] for case, w, *_ in jobs}
        for rep in range(args.epoch_repeats):
            for case, w, model, share, batch in jobs:
                times[(case, w)].append(time_worker_epoch(model, images[r], y, share, batch))
            print(f"{r} px: round {rep + 1}/{args.epoch_repeats} done", file=sys.stderr)
        for small, tau in cases:
            p = plans[(small, tau)][r]
            reduce = min if args.statistic == "min" else statistics.median
            measured = [reduce(times[((small, tau), w)]) for w in range(args.workers)]
            results.append(
                {
                    "small": small,
                    "tau": tau,
                    "resolution": r,
                    "shares": list(p.shares),
                    "batches": list(p.batches),
                    "predicted": list(p.predicted_epoch_seconds),
                    "measured": measured,
                    "errors": [m / q - 1 for m, q in zip(measured, p.predicted_epoch_seconds)],
                    "predicted_epoch": p.epoch_seconds,
                    "measured_epoch": max(measured),
                }
            )

    base = {row["resolution"]: row for row in results if row["small"] == 0}
    print("| n_S | tau | res | worker | batch | share | predicted s | measured s | error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in results:
        for w in range(args.workers):
            print(
                f"| {row['small']} | {row['tau']:g} | {row['resolution']} | {w} | {row['batches'][w]} | {row['shares'][w]} "
                f"| {row['predicted'][w]:.3f} | {row['measured'][w]:.3f} | {100 * row['errors'][w]:+.1f} % |"
            )
    print()
    print("| n_S | tau | res | epoch / all-large epoch: predicted | measured | slowest / fastest worker: predicted | measured |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in results:
        b = base[row["resolution"]]
        print(
            f"| {row['small']} | {row['tau']:g} | {row['resolution']} "
            f"| {row['predicted_epoch'] / b['predicted_epoch']:.3f} | {row['measured_epoch'] / b['measured_epoch']:.3f} "
            f"| {max(row['predicted']) / min(row['predicted']):.3f} | {max(row['measured']) / min(row['measured']):.3f} |"
        )
    errors = [abs(e) for row in results for e in row["errors"]]
    ratio_errors = [
        abs((row["measured_epoch"] / base[row["resolution"]]["measured_epoch"])
            / (row["predicted_epoch"] / base[row["resolution"]]["predicted_epoch"]) - 1)
        for row in results if row["small"] > 0
    ]
    print(
        f"\nper-worker epoch time |measured / predicted - 1|: median {100 * statistics.median(errors):.1f} %, "
        f"max {100 * max(errors):.1f} %, {sum(e <= 0.10 for e in errors)}/{len(errors)} within 10 %"
    )
    if ratio_errors:
        print(
            f"DBSL epoch / all-large epoch, |measured / predicted - 1|: max {100 * max(ratio_errors):.1f} % "
            f"over {len(ratio_errors)} (n_S > 0, resolution) cases"
        )
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    if args.json_out:
        cal_dict = {str(r): c.to_dict() for r, c in calibrations.items()}
        args.json_out.write_text(json.dumps({"calibration": cal_dict, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
