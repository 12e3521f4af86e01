"""The gradient noise scale of one model state at several batch sizes (issue 33's pilot).

    PYTHONPATH=. python benchmarks/noise_probe.py RUN_DIR [--repeats 16] [--batches 16,64,256,1024]

RUN_DIR holds a `config.yaml` and, if it has a `checkpoint.json`, the global model of that
checkpoint is probed; without one, the config's seeded initial model. The gradient of the
mean loss (training mode, the config's loss, dropout at the highest resolution's rate) at
each batch size, `--repeats` times, then `dbl_ps.noise_scale.estimate` over all of them and
over each neighbouring pair: where `E|g_b|^2 = |G|^2 + tr(Sigma)/b` holds, every pair gives
the same B_noise within its spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dbl_ps.config import load_config
from dbl_ps.data import build_transform, load_dataset
from dbl_ps.noise_scale import estimate
from dbl_ps.training.engine import loss_for
from dbl_ps.training.noise import NoiseProbe
from dbl_ps.training.run_model import build_run_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--batches", default="16,64,256,1024")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(b) for b in args.batches.split(",")]
    cfg = load_config(args.run_dir / "config.yaml")
    resolution, dropout = max(cfg.schedule.resolutions), cfg.dropouts()[-1]
    data = load_dataset(cfg.data, image_size=resolution)
    torch.manual_seed(cfg.seed)
    model = build_run_model(cfg, data.num_classes, data.in_channels, dropout=dropout)
    checkpoint = args.run_dir / "checkpoint.json"
    meta = json.loads(checkpoint.read_text()) if checkpoint.is_file() else None
    state = torch.load(args.run_dir / meta["path"] / "model.pt", weights_only=True) if meta else model.state_dict()
    probe = NoiseProbe(model, data.train, build_transform(cfg.data, data), loss_for(cfg), device=torch.device("cpu"),
                       repeats=1, seed=cfg.seed)
    observations = []
    for k in range(args.repeats):
        for b in sizes:
            observations.extend(probe(state, epoch=1000 * k + b, resolution=resolution, dropout=dropout,
                                      batches=(b,)))
    print(f"model: {'epoch ' + str(meta['epoch'] + 1) if meta else 'initial'}, {resolution} px, "
          f"{args.repeats} repeats per batch")
    for b in sizes:
        values = [v for size, v in observations if size == b]
        print(f"batch {b:5d}: mean |g|^2 {statistics.fmean(values):.4g} +- {statistics.stdev(values) / len(values) ** 0.5:.2g}")
    print("all batches:", estimate(observations))
    for small, large in zip(sizes, sizes[1:]):
        print(f"{small} and {large}:", estimate([o for o in observations if o[0] in (small, large)]))


if __name__ == "__main__":
    main()
