"""Mixed hardware on one CPU: 2 workers, one of them slowed by a fixed extra cost per step
(`DBL_PS_SLOW_WORKER`, a sleep after each of its steps), trained three ways with bsp:

* fixed        the plan from a fixed time model (`dbl.alpha`/`dbl.beta`), the same for
               both workers, never changed;
* measured     the time model measured on the spot by the launcher (`dbl.alpha`/`dbl.beta`
               unset). It times one model in the launcher's own process, so it sees this
               CPU but not the per-step sleep of the slowed worker: both workers are still
               planned equal;
* replan       the fixed run's plan with `dbl.replan=true`: after each epoch the launcher
               compares each worker's own training time with the plan and re-plans when
               they drifted apart (the slowed worker gets less data).

Printed per run, as ratios to the fixed run of the same invocation: the mean wait at the
sync barrier per epoch (`wait_seconds` of metrics.jsonl: the longest wait of any worker
for the bsp round, epoch 0 included), the training wall time (metrics' last `wall_time`:
worker start-up, every epoch and its evaluation) and the whole `Trainer.train()` call
(with the measurement of the `measured` run). Run it in a private /dev/shm where others
share the machine:

    python benchmarks/mixed_hardware.py                       # Fashion-MNIST subset if present, else digits
    python benchmarks/mixed_hardware.py --data digits --slow 1:0.02 --epochs 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

FASHION = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-mnist"

RUNS = {
    "fixed": ["dbl.alpha=[0.003]", "dbl.beta=[0.0002]"],
    "measured": [],
    "replan": ["dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "dbl.replan=true"],
}


def data_overrides(kind: str, limit: int) -> list[str]:
    if kind == "fashion":
        return ["data.source=fashion_mnist", f"data.path={FASHION.resolve()}", f"data.train_limit={limit}",
                "data.test_limit=1000", "schedule.resolutions=[14,21,28]", "dbl.batch_large={14: 128, 21: 96, 28: 64}"]
    return ["data.source=digits"]


def one_run(name: str, overrides: list[str], out: Path) -> dict:
    from dbl_ps.config import load_config
    from dbl_ps.metrics import read_metrics
    from dbl_ps.runtime import Trainer

    cfg = load_config(None, [*overrides, *RUNS[name]])
    start = time.perf_counter()
    summary = Trainer(cfg, out / name, progress=False, log=lambda m: None).train()
    total = time.perf_counter() - start
    records = read_metrics(out / name)
    epochs = [r for r in records if r.get("event") != "replan"]
    replans = [r for r in records if r.get("event") == "replan"]
    last_shares = [w["samples"] for w in epochs[-1]["workers"]]
    return {"wait": statistics.mean(r["wait_seconds"] for r in epochs), "wall": epochs[-1]["wall_time"],
            "total": total, "acc": summary["final_test_acc"], "replans": len(replans), "shares": last_shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["fashion", "digits"], default="fashion" if FASHION.is_dir() else "digits")
    ap.add_argument("--limit", type=int, default=6000, help="Fashion-MNIST training samples")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--slow", default="1:0.02", help="DBL_PS_SLOW_WORKER: WORKER:SECONDS slept after each step")
    ap.add_argument("--small", type=int, default=1, help="dbl.small: small-batch workers (1: hybrid DBSL)")
    args = ap.parse_args()
    os.environ["DBL_PS_SLOW_WORKER"] = args.slow  # the spawned workers read it
    overrides = ["dbl.workers=2", f"dbl.small={args.small}", "store.mode=bsp", "store.rule=average",
                 f"schedule.epochs={args.epochs}", "schedule.warmup_epochs=0", *data_overrides(args.data, args.limit)]
    print(f"2 workers on {os.cpu_count()} cores, worker {args.slow.split(':')[0]} sleeps {args.slow.split(':')[1]} s "
          f"after each step; data {args.data}; {' '.join(overrides)}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            results[name] = one_run(name, overrides, Path(tmp))
            r = results[name]
            print(f"  {name:9s} done: mean wait {r['wait']:.2f} s/epoch, wall {r['wall']:.1f} s, "
                  f"train() {r['total']:.1f} s, {r['replans']} re-plans, last shares {r['shares']}, "
                  f"test acc {r['acc']:.3f}", flush=True)
    base = results["fixed"]
    print("\nrun        wait/epoch  vs fixed   training wall  vs fixed   train() call  vs fixed   re-plans  test acc")
    for name, r in results.items():
        print(f"{name:9s}  {r['wait']:8.2f} s  {r['wait'] / base['wait']:7.2f}   {r['wall']:11.1f} s  "
              f"{r['wall'] / base['wall']:7.2f}   {r['total']:10.1f} s  {r['total'] / base['total']:7.2f}   "
              f"{r['replans']:8d}  {r['acc']:8.3f}")


if __name__ == "__main__":
    main()
