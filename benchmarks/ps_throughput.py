"""Parameter-store throughput against baselines measured in the same run.

State of ResNet-18 size (11.2 M floats by default); W worker processes push and pull
as fast as they can, in every sync mode. Reported as ratios against:
  (a) memcpy of the same bytes (numpy copy in one process: the physical limit),
      measured right before each store run so both see the same machine load,
  (b) the same merge maths done by torch in one process (torch._foreach_* on the
      ResNet-18 parameter tensors, or optim.SGD(foreach=True) for rule sgd),
  (c) torch.distributed.all_reduce (gloo) of the same size over W processes,
  (d) a torch.distributed.rpc parameter server like the paper's reference code
      (whole weights sent by RPC, merged under a lock with the blend rule, merged
      weights returned),
  (e) the machine's memory ceiling: one process per core copying a state-sized array
      at the same time (the most bytes per second all cores together move). A push
      and its pull move a known number of state-sized arrays through memory (the
      push's copy in, the merge's reads and writes, the pull's copy out: `state_moves`),
      so ceiling / (moves x state bytes) is the most pushes per second this design can
      reach here, whatever its code; "of bound" is the store's share of it, and the
      line above each table says what 10x the RPC server would need.

    python benchmarks/ps_throughput.py                # W = 2 and 4, ~3 minutes
    python benchmarks/ps_throughput.py --workers 2 --seconds 2 --params 1000000

With --reject-non-finite compare, only the store runs, each mode/rule with the store
option reject_non_finite off and on, alternately (--pairs times, medians), and the
table gives on / off ratios (the cost of checking every merge for NaN/inf).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np
from _common import free_port

SPAWN = mp.get_context("spawn")
MODES = [("bsp", "average"), ("asp", "blend"), ("ssp", "blend"), ("asp", "sgd")]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (page faults, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- (a) memcpy and (b) torch foreach, one process; (e) all cores copying -------------


def memcpy_gbps(n: int) -> float:
    src = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    dst = np.empty_like(src)
    seconds = median_seconds(lambda: np.copyto(dst, src), 10)
    return 8 * n / seconds / 1e9  # bytes read + written


def _copy_process(n: int, seconds: float, start, results) -> None:
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    start.wait()
    copies, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        np.copyto(dst, src)
        copies += 1
    results.put(8 * n * copies / (time.perf_counter() - began) / 1e9)


def memory_ceiling_gbps(n: int, seconds: float = 1.5) -> float:
    """Bytes read + written per second by one process per core, each copying a state-sized
    array at the same time: what the whole machine's memory moves (e)."""
    start, results = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_copy_process, args=(n, seconds, start, results))
             for _ in range(os.cpu_count() or 1)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every process allocated and faulted in its arrays
    start.set()
    total = sum(results.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total


def state_moves(rule: str, workers: int) -> float:
    """State-sized arrays one push and its pull move through memory (reads + writes):
    the push's copy into the slot (2), the pull's copy out (2), and the push's share of
    the merge: blend reads the state and the payload and writes the new copy (3); a bsp
    average reads the W payloads of a round and writes one copy, per push (W + 1) / W;
    sgd with momentum (as run here, momentum updated in place) reads payload, state and
    momentum and writes state and momentum (5)."""
    merge = {"blend": 3.0, "sgd": 5.0, "average": (workers + 1) / workers}[rule]
    return 4.0 + merge


def resnet18_like_tensors(n: int):
    """The ResNet-18 (CIFAR, 100 classes) parameter shapes, scaled to n floats in all."""
    import torch

    from dbl_ps.models import build_model

    shapes = [p.shape for p in build_model("resnet18_cifar", num_classes=100).parameters()]
    sizes = [int(np.prod(s)) for s in shapes]
    scale = n / sum(sizes)
    sizes = [max(1, int(s * scale)) for s in sizes]
    sizes[-1] += n - sum(sizes)
    return lambda: [torch.randn(s) for s in sizes]


def foreach_gbps(n: int, rule: str, workers: int) -> float:
    """Bytes moved per second by torch doing the same merge in one process: the better
    of one thread and all cores (with other load on the machine, OpenMP threads that
    wait at a barrier for a descheduled peer can make the multi-threaded run far slower)."""
    import torch

    best = 0.0
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        best = max(best, _foreach_gbps_once(n, rule, workers))
    return best


def _foreach_gbps_once(n: int, rule: str, workers: int) -> float:
    import torch

    make = resnet18_like_tensors(n)
    state = make()
    if rule == "average":  # one BSP round: weighted mean of `workers` payloads
        payloads = [make() for _ in range(workers)]
        coefficients = [1.0 / workers] * workers

        acc = make()  # preallocated: a fresh 45 MB per round would measure page faults

        def merge():
            torch._foreach_copy_(acc, payloads[0])
            torch._foreach_mul_(acc, coefficients[0])
            for payload, c in zip(payloads[1:], coefficients[1:]):
                torch._foreach_add_(acc, payload, alpha=c)
        floats = workers + 1
    elif rule == "blend":  # (w + f u) / (1 + f); mul_ + add_ is torch's fastest form on
        update = make()     # the CPU (_foreach_lerp_ measured ~60x slower here)

        def merge():
            torch._foreach_mul_(state, 1 / 1.5)
            torch._foreach_add_(state, update, alpha=0.5 / 1.5)
        floats = 3
    else:  # sgd with momentum, like the store's rule sgd
        params = [torch.nn.Parameter(t) for t in state]
        for p, g in zip(params, make()):
            p.grad = g
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)

        def merge():
            optimizer.step()
        floats = 5
    seconds = median_seconds(merge, 5)
    return floats * 4 * n / seconds / 1e9


# --- the store, W processes -------------------------------------------------------


def store_worker(name, worker, seconds, start, results):
    from dbl_ps import StoreClient

    with StoreClient(name, worker) as client:
        buffer = np.ones(client.num_params, dtype=np.float32)
        start.wait()
        pushes, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            client.push(buffer, weight=1.0)
            client.pull(buffer)
            pushes += 1
        results.put((pushes, time.perf_counter() - began))


def run_store(n: int, workers: int, mode: str, rule: str, seconds: float, reject_non_finite: bool = False) -> dict:
    from dbl_ps import ParameterStore

    staleness = 1 if mode == "ssp" else 0
    with ParameterStore(n, workers, mode=mode, rule=rule, staleness=staleness, lr=0.0,
                        momentum=0.9 if rule == "sgd" else 0.0, reject_non_finite=reject_non_finite) as store:
        start, results = SPAWN.Event(), SPAWN.Queue()
        procs = [SPAWN.Process(target=store_worker, args=(store.name, w, seconds, start, results)) for w in range(workers)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # let every worker attach and fault in its buffers
        version0 = store.version
        stats0 = store.server_stats()
        start.set()
        got = [results.get(timeout=seconds + 120) for _ in procs]
        for p in procs:
            p.join()
        stats = store.server_stats()
        elapsed = max(t for _, t in got)
        pushes = sum(c for c, _ in got)
        apply_seconds = stats["apply_seconds"] - stats0["apply_seconds"]
        return {
            "mode": mode, "rule": rule, "workers": workers,
            "pushes_per_s": pushes / elapsed,
            "versions_per_s": (store.version - version0) / elapsed,
            # a push and a pull each move num_params floats between worker and store
            "effective_gbps": pushes * 2 * 4 * n / elapsed / 1e9,
            "apply_gbps": (stats["bytes_moved"] - stats0["bytes_moved"]) / max(apply_seconds, 1e-12) / 1e9,
            "server_busy": apply_seconds / elapsed,
        }


# --- (c) gloo all_reduce ----------------------------------------------------------


def allreduce_worker(rank, workers, port, n, seconds, results):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=workers)
    tensor = torch.ones(n)
    dist.all_reduce(tensor)  # warm-up
    dist.barrier()
    rounds, began = 0, time.perf_counter()
    while True:
        dist.all_reduce(tensor)
        rounds += 1
        # every rank must agree on when to stop, or the last all_reduce hangs
        done = torch.tensor([float(time.perf_counter() - began >= seconds)])
        dist.all_reduce(done, op=dist.ReduceOp.MAX)
        if done.item():
            break
    if rank == 0:
        results.put(rounds / (time.perf_counter() - began))
    dist.destroy_process_group()


def run_allreduce(n: int, workers: int, seconds: float) -> float:
    port, results = free_port(), SPAWN.Queue()
    procs = [SPAWN.Process(target=allreduce_worker, args=(r, workers, port, n, seconds, results)) for r in range(workers)]
    for p in procs:
        p.start()
    rate = results.get(timeout=seconds + 300)
    for p in procs:
        p.join()
    return rate


# --- (d) torch.distributed.rpc parameter server ------------------------------------

_rpc_state = {}


def rpc_push_pull(update, weight):
    """Server side, like the paper's reference PS: merge under a lock, return weights."""
    with _rpc_state["lock"]:
        w = _rpc_state["weights"]
        w.mul_(1.0 / (1.0 + weight)).add_(update, alpha=weight / (1.0 + weight))
        return w.clone()


def rpc_process(rank, workers, port, n, seconds, results):
    import threading

    import torch
    import torch.distributed.rpc as rpc

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    options = rpc.TensorPipeRpcBackendOptions(num_worker_threads=max(4, workers), rpc_timeout=600,
                                              init_method=f"tcp://127.0.0.1:{port}")
    name = "server" if rank == 0 else f"worker{rank}"
    if rank == 0:
        _rpc_state.update(lock=threading.Lock(), weights=torch.zeros(n))
    rpc.init_rpc(name, rank=rank, world_size=workers + 1, rpc_backend_options=options)
    if rank > 0:
        update = torch.ones(n)
        rpc.rpc_sync("server", rpc_push_pull, args=(update, 1.0))  # warm-up
        pushes, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            update = rpc.rpc_sync("server", rpc_push_pull, args=(update, 1.0))
            pushes += 1
        results.put(pushes / (time.perf_counter() - began))
    rpc.shutdown()


def run_rpc(n: int, workers: int, seconds: float) -> float:
    port, results = free_port(), SPAWN.Queue()
    procs = [SPAWN.Process(target=rpc_process, args=(r, workers, port, n, seconds, results)) for r in range(workers + 1)]
    for p in procs:
        p.start()
    rate = sum(results.get(timeout=seconds + 300) for _ in range(workers))
    for p in procs:
        p.join()
    return rate


def compare_reject_non_finite(n: int, worker_counts: list[int], seconds: float, pairs: int) -> list[dict]:
    """Each mode/rule with reject_non_finite off and on, alternately; on/off ratios."""
    rows = []
    for workers in worker_counts:
        print(f"\nW={workers}, reject_non_finite on / off, medians of {pairs} alternating runs each")
        print("| mode/rule | pushes/s off | pushes/s on | on / off | apply GB/s off | apply GB/s on | on / off |")
        print("|---|---|---|---|---|---|---|")
        for mode, rule in MODES:
            runs = {False: [], True: []}
            for _ in range(pairs):
                for reject in (False, True):
                    runs[reject].append(run_store(n, workers, mode, rule, seconds, reject_non_finite=reject))
            med = {reject: {key: statistics.median(r[key] for r in rs) for key in ("pushes_per_s", "apply_gbps")}
                   for reject, rs in runs.items()}
            off, on = med[False], med[True]
            rows.append({"mode": mode, "rule": rule, "workers": workers, "off": off, "on": on})
            print(f"| {mode}/{rule} | {off['pushes_per_s']:.1f} | {on['pushes_per_s']:.1f} "
                  f"| {on['pushes_per_s'] / off['pushes_per_s']:.3f} | {off['apply_gbps']:.2f} "
                  f"| {on['apply_gbps']:.2f} | {on['apply_gbps'] / off['apply_gbps']:.3f} |", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=11_200_000)
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", help="also write the raw numbers here")
    parser.add_argument("--reject-non-finite", choices=["off", "on", "compare"], default="off",
                        help="the store option reject_non_finite: off, on, or compare both (store runs only)")
    parser.add_argument("--pairs", type=int, default=3, help="off/on runs per mode with --reject-non-finite compare")
    args = parser.parse_args()
    n = args.params
    worker_counts = [int(w) for w in args.workers.split(",")]
    if args.reject_non_finite == "compare":
        print(f"state: {n:,} floats ({4 * n / 1e6:.1f} MB); {os.cpu_count()} cores", flush=True)
        rows = compare_reject_non_finite(n, worker_counts, args.seconds, args.pairs)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"params": n, "cpus": os.cpu_count(), "reject_non_finite": rows}, f, indent=2)
        return 0
    reject = args.reject_non_finite == "on"

    memcpy = memcpy_gbps(n)
    print(f"state: {n:,} floats ({4 * n / 1e6:.1f} MB); {os.cpu_count()} cores; memcpy {memcpy:.2f} GB/s", flush=True)
    report = {"params": n, "cpus": os.cpu_count(), "memcpy_gbps": memcpy, "runs": []}
    for workers in worker_counts:
        allreduce = run_allreduce(n, workers, args.seconds)
        rpc_rate = run_rpc(n, workers, args.seconds)
        ceiling = memory_ceiling_gbps(n)
        report["runs"].append({"workers": workers, "gloo_allreduce_per_s": allreduce, "rpc_pushes_per_s": rpc_rate,
                               "memory_ceiling_gbps": ceiling})
        print(f"\nW={workers}: gloo all_reduce {allreduce:.2f} rounds/s; rpc server {rpc_rate:.2f} pushes/s; "
              f"memory ceiling {ceiling:.1f} GB/s ({os.cpu_count()} processes copying)", flush=True)
        state_gb = 4 * n / 1e9
        needs = ", ".join(f"{rule} {10 * rpc_rate * state_moves(rule, workers) * state_gb:.1f}"
                          for mode, rule in MODES if mode != "ssp")
        bsp_bound_rounds = ceiling / (state_moves("average", workers) * state_gb) / workers
        print(f"10x the rpc server would move (GB/s): {needs}, against the ceiling {ceiling:.1f}; "
              f"the ceiling allows bsp at most {bsp_bound_rounds:.1f} rounds/s = "
              f"{bsp_bound_rounds / allreduce:.2f}x gloo all_reduce")
        print("| mode/rule | pushes/s | effective GB/s | apply GB/s | apply / memcpy | apply / torch foreach "
              "| rounds/s vs gloo all_reduce | pushes/s vs rpc server | bound pushes/s | of bound | server busy |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for mode, rule in MODES:
            memcpy = memcpy_gbps(n)
            r = run_store(n, workers, mode, rule, args.seconds, reject_non_finite=reject)
            r["memcpy_gbps"] = memcpy
            r["foreach_gbps"] = foreach_gbps(n, rule, workers)
            r["bound_pushes_per_s"] = ceiling / (state_moves(rule, workers) * state_gb)
            report["runs"].append(r)
            rounds = f"{r['versions_per_s'] / allreduce:.2f}x" if mode == "bsp" else "-"
            print(f"| {mode}/{rule} | {r['pushes_per_s']:.1f} | {r['effective_gbps']:.2f} | {r['apply_gbps']:.2f} "
                  f"| {r['apply_gbps'] / memcpy:.2f} | {r['apply_gbps'] / r['foreach_gbps']:.2f} | {rounds} "
                  f"| {r['pushes_per_s'] / rpc_rate:.1f}x | {r['bound_pushes_per_s']:.0f} "
                  f"| {r['pushes_per_s'] / r['bound_pushes_per_s']:.0%} | {r['server_busy']:.0%} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
