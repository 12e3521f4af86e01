"""Mixed hardware in a user's own loop: 2 ranks, one made slower, three plans.

Runs `examples/torch_ddp_train.py` under torchrun three times with the same data, epochs
and slowed rank (it sleeps `--slow-seconds` after every training step, as a slower device
or a busy neighbour would cost), and reads each rank's record:

* fixed:         both ranks assumed equal (`--time-model`), the plan never changes
* measured-once: each rank's time model measured in its first steps, never re-planned
* replan:        measured, then re-planned together whenever the speeds drift (>15 %)

`--slow-from-epoch -1` slows the rank from the start (its measurement sees it: a slower
GPU); `--slow-from-epoch 1` slows it after the measurement (a neighbour arriving), which
only re-planning can follow. Printed per run: the mean wait at the sync per epoch (the
slower rank's lead is the other's wait: the max over ranks), the total training seconds
(slowest rank, measurement and evaluation excluded) and the final test accuracy, each as a
ratio to the fixed plan measured in the same invocation.

    python benchmarks/mixed_hardware_ranks.py --epochs 6 --slow-seconds 0.01
    python benchmarks/mixed_hardware_ranks.py --data .gpu/fashion-mnist --backend gloo   # 2 ranks on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import free_port

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "fixed": ["--time-model", "0.002,0.0001"],
    "measured-once": [],
    "replan": ["--replan"],
}


def run(name: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "examples" / "torch_ddp_train.py"), "--small", "0", "--epochs", str(args.epochs),
           "--batch-large", str(args.batch_large), "--slow-rank", "1", "--slow-seconds", str(args.slow_seconds),
           "--slow-from-epoch", str(args.slow_from_epoch), "--out", str(out), *RUNS[name]]
    if args.data:
        cmd += ["--data", args.data]
    if args.backend:
        cmd += ["--backend", args.backend]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line and "elastic" not in line]
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n" + "\n".join(errors[:10]))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    epochs = len(ranks[0]["epochs"])
    waits = [max(r["epochs"][e]["wait_seconds"] for r in ranks) for e in range(epochs)]
    train = [max(r["epochs"][e]["train_seconds"] + r["epochs"][e]["wait_seconds"] for r in ranks) for e in range(epochs)]
    return {"wait_per_epoch": statistics.mean(waits), "train_seconds": sum(train),
            "test_acc": ranks[0]["epochs"][-1]["test_acc"], "replans": len(ranks[0]["replans"]),
            "replanned_after_epochs": [r["epoch"] + 1 for r in ranks[0]["replans"]],
            "shares_last": [r["epochs"][-1]["share"] for r in ranks]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-large", type=int, default=64)
    p.add_argument("--slow-seconds", type=float, default=0.01)
    p.add_argument("--slow-from-epoch", type=int, default=1)
    p.add_argument("--data", help="Fashion-MNIST IDX folder (default: scikit-learn digits)")
    p.add_argument("--backend", help="torch.distributed backend (gloo for two ranks on one GPU)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            results[name] = run(name, args, Path(tmp) / name)
    base = results["fixed"]
    print(f"2 ranks, rank 1 sleeps {args.slow_seconds * 1000:g} ms per step from epoch {args.slow_from_epoch} "
          f"({'all along' if args.slow_from_epoch < 0 else 'after the measurement'}), {args.epochs} epochs, "
          f"{args.data or 'digits'}")
    print(f"{'plan':<14} {'wait s/epoch':>12} {'vs fixed':>9} {'train s':>9} {'vs fixed':>9} {'test acc':>9} "
          f"{'replans':>8}  last shares")
    for name, r in results.items():
        print(f"{name:<14} {r['wait_per_epoch']:>12.3f} {r['wait_per_epoch'] / max(base['wait_per_epoch'], 1e-9):>8.2f}x "
              f"{r['train_seconds']:>9.2f} {r['train_seconds'] / base['train_seconds']:>8.2f}x {r['test_acc']:>9.4f} "
              f"{r['replans']:>8}  {r['shares_last']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
