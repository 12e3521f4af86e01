"""Pull and push of a GPU model through the parameter store, against one training step.

A DBSL worker on a GPU syncs by copying its model's state (parameters and BatchNorm
buffers, one flat float32 vector) to the store and the merged state back. This
measures, for ResNet-18 in its CIFAR form (11.2 M floats at 100 classes):

* step:   one SGD training step (forward, backward, update) at the given batch and
          resolution: the unit the sync is paid against;
* pinned: the runtime's path (`dbl_ps.training.flat.FlatState`): tensors packed into one
          device buffer, one copy to/from pinned host memory, the store copying into /
          out of that pinned vector;
* pageable (baseline, measured in the same run): tensor-by-tensor copies between the
          GPU and pageable host memory, the store's side unchanged;
* bus:    the one device-to-host / host-to-device copy alone (pinned), the floor.

Each is the median of `--repeats` timed runs after warm-up (CUDA synchronised before
the clock is read). The store is one worker in asp mode with the blend rule, so a
push is applied on arrival and the next pull sees it. Reported: milliseconds, and
sync (push + pull) as a fraction of one step; a mini-epoch sync is paid once per
ceil(d_i / b_i) steps, so its share of the period is that fraction over the steps.

    python benchmarks/ps_cuda.py                       # needs a CUDA GPU
    python benchmarks/ps_cuda.py --device cpu --repeats 3   # smoke run of the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _common import timing_device


def timed(fn, repeats: int, sync) -> float:
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18_cifar")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batches", default="128,512", help="comma list of training batch sizes to time a step at")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()

    from dbl_ps import ParameterStore, StoreClient
    from dbl_ps.calibrate import synthetic_batch
    from dbl_ps.config import RunConfig
    from dbl_ps.models import build_model
    from dbl_ps.training.engine import engine_step_factory
    from dbl_ps.training.flat import FlatState

    device, sync = timing_device(args.device)
    on_gpu = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, in_channels=3).to(device).train()
    flat = FlatState(model)
    n = flat.numel

    # The step `dbl-ps calibrate` times: an `engine: torch` worker's (fp32, SGD).
    step = engine_step_factory(RunConfig())(model, device=str(device), precision="fp32", channels_last=False,
                                            compile=False)
    steps = {}
    for b in (int(x) for x in args.batches.split(",")):
        images, labels = synthetic_batch(b, args.resolution, device=str(device), num_classes=args.classes, in_channels=3)
        steps[b] = timed(lambda: step(images, labels), args.repeats, sync)

    pinned = flat.new_vector()
    pageable = torch.empty(n, dtype=torch.float32)

    def pageable_gather() -> None:  # the baseline: one synchronous transfer per tensor
        offset = 0
        for t, k in zip(flat.tensors, flat.sizes):
            pageable[offset:offset + k].copy_(t.detach().reshape(-1))
            offset += k

    def pageable_scatter() -> None:
        offset = 0
        with torch.no_grad():
            for t, k in zip(flat.tensors, flat.sizes):
                t.copy_(pageable[offset:offset + k].view_as(t))
                offset += k

    with ParameterStore(n, 1, mode="asp", rule="blend", initial=flat.gather(pinned).numpy()) as store:
        client = StoreClient(store.name, 0)
        r = args.repeats
        rows = {
            "push_pinned_ms": timed(lambda: (flat.gather(pinned), client.push(pinned, weight=1.0)), r, sync),
            "pull_pinned_ms": timed(lambda: (client.pull(pinned), flat.scatter(pinned)), r, sync),
            "push_pageable_ms": timed(lambda: (pageable_gather(), client.push(pageable, weight=1.0)), r, sync),
            "pull_pageable_ms": timed(lambda: (client.pull(pageable), pageable_scatter()), r, sync),
            "store_push_ms": timed(lambda: client.push(pinned, weight=1.0), r, sync),
            "store_pull_ms": timed(lambda: client.pull(pinned), r, sync),
        }
        if on_gpu:
            staging = torch.empty(n, dtype=torch.float32, device=device)
            rows["bus_d2h_ms"] = timed(lambda: pinned.copy_(staging), r, sync)
            rows["bus_h2d_ms"] = timed(lambda: staging.copy_(pinned), r, sync)
        client.close()
    rows = {k: 1000 * v for k, v in rows.items()}
    result = {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "torch": torch.__version__,
        "model": args.model, "classes": args.classes, "resolution": args.resolution, "floats": n,
        "step_ms": {b: 1000 * s for b, s in steps.items()},
        **rows,
    }
    sync_pinned = rows["push_pinned_ms"] + rows["pull_pinned_ms"]
    sync_pageable = rows["push_pageable_ms"] + rows["pull_pageable_ms"]
    result["sync_pinned_ms"], result["sync_pageable_ms"] = sync_pinned, sync_pageable
    print(f"{result['device']}, torch {torch.__version__}: {args.model}, {n:,} floats ({4 * n / 2**20:.1f} MiB)")
    for b, ms in result["step_ms"].items():
        print(f"  training step, batch {b} at {args.resolution} px: {ms:8.2f} ms")
    for k in ("push_pinned_ms", "pull_pinned_ms", "push_pageable_ms", "pull_pageable_ms", "store_push_ms",
              "store_pull_ms", "bus_d2h_ms", "bus_h2d_ms"):
        if k in rows:
            print(f"  {k[:-3]:<18} {rows[k]:8.2f} ms")
    print(f"  sync (push+pull): pinned {sync_pinned:.2f} ms, pageable {sync_pageable:.2f} ms "
          f"(pageable/pinned {sync_pageable / sync_pinned:.2f}x)")
    for b, ms in result["step_ms"].items():
        print(f"  sync / step at batch {b}: pinned {sync_pinned / ms:.3f}, pageable {sync_pageable / ms:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
