"""Mixed-batch data parallelism against stock DDP, on this CPU (gloo, 2 ranks).

Every run is `examples/mixed_batch_ddp.py` under torchrun (a user's DDP script; the lines
dbl-ps adds are marked there), with the same global batch, LR, epochs and seed:

* rank 1 at half speed (`--slow-rank 1`: it times its own bare steps first, then sleeps that
  long again in each step before its backward, so its time model sees it): stock DDP with equal batches (`--mode ddp`) against the planned
  batches (`--mode mixed`), 2 seeds each, alternating: the mean epoch time (epochs after the
  first) and the final test accuracy;
* equal ranks (no slowdown; the mixed mode given one time model for both, so the batches are
  stock DDP's): the step time of the mixed mode against stock DDP (the weighting hook against
  DDP's own all-reduce), and against dbl-ps's `ddp-like` model averaging after every step
  (`--mode average`), alternating over `--step-repeats` rounds.

It ends with one line:
`mixed-batch vs equal-batch DDP, rank 1 at half speed: time xR, accuracy +D points; equal ranks: step time xO`
(targets: R <= 0.75, the ideal for a half-speed rank being 0.67; D within the seeds' spread;
O <= 1.05).

    python benchmarks/mixed_batch.py                    # Fashion-MNIST subset if present, else digits
    python benchmarks/mixed_batch.py --seeds 0 --epochs 3 --train-limit 6000
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
EXAMPLE = ROOT / "examples" / "mixed_batch_ddp.py"
FASHION = ROOT / ".." / "shared" / "data" / "fashion-mnist"


def launch(mode: str, out: Path, args: argparse.Namespace, *, seed: int, slow: bool, epochs: int,
           extra: tuple[str, ...] = ()) -> dict:
    """One torchrun launch of the example; rank 0's record."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(EXAMPLE), "--mode", mode, "--epochs", str(epochs), "--seed", str(seed), "--lr", str(args.lr),
           "--global-batch", str(args.global_batch), "--out", str(out),
           *(["--data", str(FASHION.resolve()), "--train-limit", str(args.train_limit)] if args.data == "fashion"
             else []),
           *(["--slow-rank", "1"] if slow else []), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    record = json.loads((out / "rank0.json").read_text())
    epochs_after_first = record["epochs"][1:] or record["epochs"]
    return {"epoch_seconds": statistics.mean(e["seconds"] for e in epochs_after_first),
            "step_seconds": statistics.mean(e["seconds"] / e["steps"] for e in epochs_after_first),
            "test_acc": record["epochs"][-1]["test_acc"], "batches": record["batches"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["fashion", "digits"], default="fashion" if FASHION.is_dir() else "digits")
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--step-epochs", type=int, default=2, help="epochs of the equal-rank step-time runs")
    p.add_argument("--step-repeats", type=int, default=3, help="alternating rounds of the equal-rank runs")
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1])
    args = p.parse_args()

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="dblps-mixed-") as tmp:
        def run(name: str, mode: str, **kw) -> None:
            out = Path(tmp) / f"{name}-{len(results.get(name, []))}"
            result = launch(mode, out, args, **kw)
            results.setdefault(name, []).append(result)
            print(f"{name:<14} seed {kw.get('seed')}  batches {result['batches']}  epoch {result['epoch_seconds']:.2f} s  "
                  f"step {result['step_seconds'] * 1000:.1f} ms  test acc {result['test_acc']:.4f}", flush=True)

        for seed in args.seeds:  # alternating, so a machine getting busier weighs on both alike
            run("ddp-slow", "ddp", seed=seed, slow=True, epochs=args.epochs)
            run("mixed-slow", "mixed", seed=seed, slow=True, epochs=args.epochs)
        # Equal ranks: the mixed mode with a given, equal time model trains the same equal batches
        # as stock DDP, so the step times compare the weighting hook with DDP's own all-reduce.
        for _ in range(args.step_repeats):
            for name, mode in (("ddp-equal", "ddp"), ("mixed-equal", "mixed"), ("average-equal", "average")):
                run(name, mode, seed=args.seeds[0], slow=False, epochs=args.step_epochs,
                    extra=("--time-model", "0.001,0.0001"))

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in results[name])

    def spread(name: str, key: str) -> float:
        values = [r[key] for r in results[name]]
        return statistics.stdev(values) if len(values) > 1 else float("nan")

    time_ratio = mean("mixed-slow", "epoch_seconds") / mean("ddp-slow", "epoch_seconds")
    points = 100 * (mean("mixed-slow", "test_acc") - mean("ddp-slow", "test_acc"))
    step_ratio = mean("mixed-equal", "step_seconds") / mean("ddp-equal", "step_seconds")
    average_ratio = mean("mixed-equal", "step_seconds") / mean("average-equal", "step_seconds")
    print(f"\nrank 1 at half speed: ddp acc {mean('ddp-slow', 'test_acc'):.4f} +- {spread('ddp-slow', 'test_acc'):.4f}, "
          f"mixed acc {mean('mixed-slow', 'test_acc'):.4f} +- {spread('mixed-slow', 'test_acc'):.4f} over seeds "
          f"{args.seeds}")
    print(f"equal ranks: mixed step time x{average_ratio:.2f} of ddp-like model averaging after every step")
    print(f"mixed-batch vs equal-batch DDP, rank 1 at half speed: time x{time_ratio:.2f}, accuracy {points:+.2f} points; "
          f"equal ranks: step time x{step_ratio:.2f}")


if __name__ == "__main__":
    main()
