"""Cross-process smoke test of an installed dbl-ps wheel's parameter store, for every
platform the release workflow builds (Linux, macOS, Windows); needs only numpy. It ships
in the package, so a wheel user runs it without a checkout:

    python -m dbl_ps.smoke                 # or, from a checkout: python scripts/smoke_store.py

Two worker processes (started with `spawn`, the only start method Windows has) attach
to a BSP store by name, push different updates with different weights, and must pull
the weighted mean; then an ASP store applies the paper's blend rule; then a closed
store can no longer be attached. Exits non-zero with a message on any mismatch.
"""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np

NUM_PARAMS = 1 << 16  # 256 KiB of float32 per copy: small, but spans many pages


def bsp_worker(name: str, worker_id: int, value: float, weight: float, results) -> None:
    from dbl_ps import StoreClient

    with StoreClient(name, worker_id) as client:
        client.push(np.full(NUM_PARAMS, value, np.float32), weight=weight)
        out = np.empty(NUM_PARAMS, np.float32)
        version = client.pull(out)
        results.put((worker_id, version, float(out.min()), float(out.max())))


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"smoke_store: FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    import dbl_ps
    from dbl_ps import ParameterStore, StoreClient, StoreNotFoundError

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    # BSP, weighted average over two processes: (1*2 + 3*6) / (1 + 3) = 5
    with ParameterStore(NUM_PARAMS, 2, mode="bsp", rule="average") as bsp:
        workers = [ctx.Process(target=bsp_worker, args=(bsp.name, w, v, f, results))
                   for w, (v, f) in enumerate([(2.0, 1.0), (6.0, 3.0)])]
        for p in workers:
            p.start()
        seen = [results.get(timeout=120) for _ in workers]
        for p in workers:
            p.join(timeout=60)
            check(p.exitcode == 0, f"worker exited with {p.exitcode}")
        for worker_id, version, low, high in seen:
            check(version == 1, f"worker {worker_id} saw version {version}, expected 1 round")
            check(low == high == 5.0, f"worker {worker_id} pulled [{low}, {high}], expected the weighted mean 5.0")
        name = bsp.name
    # Closed and dropped, the name is gone: POSIX unlinks it on close, Windows frees the
    # mapping with its last handle (the workers have exited, and this is the last reference).
    del bsp

    # ASP blend: w <- (w + f*w_i) / (1 + f) = (0 + 1*4) / 2 = 2
    with ParameterStore(NUM_PARAMS, 1, mode="asp", rule="blend") as store, StoreClient(store.name, 0) as client:
        client.push(np.full(NUM_PARAMS, 4.0, np.float32))
        out = np.empty(NUM_PARAMS, np.float32)
        client.pull(out)
        check(bool((out == 2.0).all()), f"blend gave [{out.min()}, {out.max()}], expected 2.0")

    try:
        StoreClient(name, 0)
    except StoreNotFoundError:
        pass
    else:
        check(False, f"store {name!r} could still be attached after it was closed")
    print(f"smoke_store: OK ({sys.platform}, dbl_ps from {dbl_ps.__file__})")


if __name__ == "__main__":  # `python -m dbl_ps.smoke`; the spawned workers import this module by name
    main()
