"""Runtime overhead: training samples/s of `dbl-ps train` with W worker processes
against one plain torch process training the same model on the same data, batch size,
resolution and augmentation on the same cores (all threads in the one process).

    python benchmarks/runtime_overhead.py                       # Fashion-MNIST if present, else digits
    python benchmarks/runtime_overhead.py --workers 1,2,4 --data digits

Both sides skip their first epoch (start-up, allocator warm-up); the dbl-ps side is
timed from the metrics' wall times (epochs 1..E-1, so evaluation of the global model
and store traffic are included), and also reported end to end including process
start-up, and from the workers' own training-loop times (no evaluation, no waiting).
Printed as ratios to the plain process (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

FASHION = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-mnist"


def data_overrides(kind: str, limit: int) -> list[str]:
    if kind == "fashion":
        return ["data.source=fashion_mnist", f"data.path={FASHION.resolve()}", f"data.train_limit={limit}",
                "data.test_limit=2000"]
    return ["data.source=digits"]


def plain_samples_per_s(cfg, epochs: int, threads: int) -> float:
    """One process, `threads` torch threads, plain SGD loop over the whole training set."""
    import torch

    from dbl_ps.data import ShareLoader, build_transform, load_dataset
    from dbl_ps.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))
    transform = build_transform(cfg.data, data)
    res = cfg.schedule.resolutions[-1]
    batch = cfg.batch_large()[-1]
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=cfg.optim.weight_decay)
    loader = ShareLoader(data.train, transform, worker=0, shares=[len(data.train)], batch_size=batch,
                         resolution=res, seed=0)
    loss_fn = torch.nn.CrossEntropyLoss()
    start, samples = None, 0
    for epoch in range(epochs):
        if epoch == 1:
            start, samples = time.perf_counter(), 0
        loader.set_epoch(epoch)
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += y.shape[0]
    return samples / (time.perf_counter() - start)


def dblps_samples_per_s(cfg, out: Path) -> tuple[float, float, float]:
    """(steady samples/s from epoch 1 on, end-to-end samples/s incl. start-up, final test acc)."""
    from dbl_ps.metrics import read_metrics
    from dbl_ps.runtime import Trainer

    start = time.perf_counter()
    summary = Trainer(cfg, out, progress=False, log=lambda m: None).train()
    total = time.perf_counter() - start
    records = read_metrics(out)
    steady = sum(r["samples"] for r in records[1:]) / (records[-1]["wall_time"] - records[0]["wall_time"])
    # the workers' own training loops only (slowest worker per epoch): no evaluation, no waiting
    train_only = sum(r["samples"] for r in records[1:]) / sum(max(w["seconds"] for w in r["workers"]) for r in records[1:])
    return steady, train_only, sum(r["samples"] for r in records) / total, summary["final_test_acc"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["fashion", "digits"], default="fashion" if FASHION.is_dir() else "digits")
    p.add_argument("--workers", default="2,4", help="comma-separated W values")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--limit", type=int, default=6000, help="training images (fashion)")
    p.add_argument("--mode", default="asp", choices=["asp", "bsp"])
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()

    from dbl_ps.config import load_config
    from dbl_ps.training.cores import cpu_cores

    cores = cpu_cores()
    res = 28 if args.data == "fashion" else 16
    rule = "blend" if args.mode == "asp" else "average"
    common = [*data_overrides(args.data, args.limit), f"schedule.resolutions=[{res}]", "dbl.batch_large=[128]",
              "dbl.small=0", f"schedule.epochs={args.epochs}", "schedule.milestones=[]", "schedule.warmup_epochs=0",
              "model.dropout=[0.0]", f"store.mode={args.mode}", f"store.rule={rule}"]
    base_cfg = load_config(None, [*common, "dbl.workers=1"])
    plain = plain_samples_per_s(base_cfg, args.epochs, cores)
    print(f"plain torch, 1 process, {cores} threads: {plain:,.0f} samples/s  ({args.data}, {res} px, batch 128)")
    # Intra-op threads scale poorly for a small model: one single-threaded process per core
    # would be the ideal. Also measured, as a second reference: 1 thread x cores.
    plain1 = plain_samples_per_s(base_cfg, args.epochs, 1)
    print(f"plain torch, 1 process, 1 thread: {plain1:,.0f} samples/s; x {cores} cores = {plain1 * cores:,.0f}")
    results = {"data": args.data, "resolution": res, "batch": 128, "cores": cores, "plain_samples_per_s": plain,
               "plain_1thread_samples_per_s": plain1, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for w in [int(x) for x in args.workers.split(",")]:
            cfg = load_config(None, [*common, f"dbl.workers={w}"])
            steady, train_only, e2e, acc = dblps_samples_per_s(cfg, Path(tmp) / f"w{w}")
            threads = max(1, cores // w)
            print(f"dbl-ps train, W={w} ({threads} thread(s) each, {args.mode}): {steady:,.0f} samples/s steady "
                  f"(with per-epoch evaluation) = {steady / plain:.3f} x plain; training loops only "
                  f"{train_only:,.0f} samples/s = {train_only / plain:.3f} x plain; {e2e:,.0f} samples/s end to end "
                  f"incl. start-up = {e2e / plain:.3f} x plain (final test acc {acc:.4f}); "
                  f"training loops vs {cores} x the 1-thread process: {train_only / (plain1 * cores):.3f}")
            results["runs"].append({"workers": w, "threads_per_worker": threads, "samples_per_s": steady,
                                    "ratio": steady / plain, "train_only_samples_per_s": train_only,
                                    "train_only_ratio": train_only / plain, "end_to_end_samples_per_s": e2e,
                                    "train_only_vs_1thread_x_cores": train_only / (plain1 * cores),
                                    "end_to_end_ratio": e2e / plain, "final_test_acc": acc})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
