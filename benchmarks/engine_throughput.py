"""Training throughput of one DBSL worker per engine and speed option, against plain fp32 torch.

One process, one device, the same model, batch and synthetic data for every engine;
each trains `--steps` timed steps after `--warmup` untimed ones (CUDA synchronised
before the clock is read), repeated `--repeats` times, engines taken round-robin so
drift in the machine's load spreads over all of them. Reported: median samples/s and
the ratio to the plain torch worker (fp32, what `engine: torch` trains with) measured
in the same run.

Engines (all from `dbl_ps.integrations`, as `dbl-ps train` builds them):

* torch:                  `TorchEngine` (fp32 module + SGD), `engine: torch` as it comes
* torch_bf16:             `precision: bf16` (autocast)
* torch_bf16_cl:          `precision: bf16`, `channels_last: true`
* torch_bf16_cl_compile:  the same with `compile: true` (warmed up before timing; compile seconds reported)
* torch_fp16:             `precision: fp16` (autocast + gradient scaler)
* ds_bf16:                `worker_engine` with `configs/deepspeed/gpu_bf16.json` (bf16 compute, fp32 masters)
* ds_fp32:                `worker_engine` with `configs/deepspeed/cpu_gloo.json` (DeepSpeed's own overhead)

    python benchmarks/engine_throughput.py          # GPU, ResNet-18 CIFAR stem at 32 px, batch 512, the torch options
    python benchmarks/engine_throughput.py --engines torch,torch_bf16,ds_bf16,ds_fp32 --batch 256
    python benchmarks/engine_throughput.py --device cpu --model small_resnet --batch 64 --engines torch,ds_fp32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from _common import timing_device

from dbl_ps.training.engine import TorchEngine
from dbl_ps.training.topology import Topology

# TorchEngine options per engine name, or the DeepSpeed JSON shipped in dbl_ps/configs/deepspeed.
TORCH_OPTIONS = {
    "torch": {},
    "torch_bf16": {"precision": "bf16"},
    "torch_bf16_cl": {"precision": "bf16", "channels_last": True},
    "torch_bf16_cl_compile": {"precision": "bf16", "channels_last": True, "compile": True},
    "torch_fp16": {"precision": "fp16"},
}
DEEPSPEED_CONFIGS = {"ds_bf16": "gpu_bf16", "ds_fp32": "cpu_gloo"}
ENGINES = [*TORCH_OPTIONS, *DEEPSPEED_CONFIGS]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18_cifar")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engines", default="torch,torch_bf16,torch_bf16_cl,torch_bf16_cl_compile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()

    from dbl_ps.config import RunConfig
    from dbl_ps.models import build_model

    device, sync = timing_device(args.device)
    on_gpu = device.type == "cuda"
    base_cfg = {"optim": {"momentum": 0.9, "weight_decay": 5e-4}}
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)

    engines = {}
    compile_seconds = {}
    for name in args.engines.split(","):
        if name not in ENGINES:
            raise SystemExit(f"--engines: unknown engine {name!r}; use some of {', '.join(ENGINES)}")
        torch.manual_seed(0)
        module = build_model(args.model, args.classes, in_channels=3)
        if name in TORCH_OPTIONS:
            cfg = RunConfig.from_dict({**base_cfg, **TORCH_OPTIONS[name]})
            engines[name] = TorchEngine(module, cfg, device, Topology.single(0, 1))
            seconds = engines[name].warm_up([(args.batch, args.resolution, 0.0)], 3)
            if seconds:
                compile_seconds[name] = seconds
        else:
            from dbl_ps.integrations.deepspeed import worker_engine

            engines[name] = worker_engine(module, RunConfig.from_dict(base_cfg), device, Topology.single(0, 1),
                                          batch_size=args.batch, ds_config=DEEPSPEED_CONFIGS[name])
        engines[name].module.train()
        for _ in range(args.warmup):
            engines[name].train_step(images, labels)
        sync()

    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                engine.train_step(images, labels)
            sync()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - start))
    base = statistics.median(rates["torch"]) if "torch" in rates else None
    result = {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "torch": torch.__version__,
        "deepspeed": _version("deepspeed"),
        "model": args.model, "resolution": args.resolution, "batch": args.batch, "steps": args.steps,
        "samples_per_s": {n: statistics.median(r) for n, r in rates.items()},
        "compile_seconds": compile_seconds,
    }
    if base:
        result["ratio_to_torch"] = {n: statistics.median(r) / base for n, r in rates.items()}
    print(f"{result['device']}, torch {result['torch']}, deepspeed {result['deepspeed']}: {args.model} at "
          f"{args.resolution} px, batch {args.batch}")
    for n in rates:
        ratio = f"{result['ratio_to_torch'][n]:.2f}x" if base else "-"
        compiled = f"   (compiled in {compile_seconds[n]:.0f} s)" if n in compile_seconds else ""
        print(f"  {n:<22} {result['samples_per_s'][n]:>10.0f} samples/s   vs torch: {ratio}{compiled}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    sys.stdout.flush()
    os._exit(0)  # DeepSpeed's process group and threads: nothing else to finish


if __name__ == "__main__":
    main()
