"""Worker-process bodies for tests/test_store.py (spawned processes import this module)."""

from __future__ import annotations

import time

import numpy as np


def ordered_pusher(name, worker_id, update, weight, go, done):
    from dbl_ps import StoreClient

    with StoreClient(name, worker_id) as client:
        go.wait()
        done.put(client.push(update, weight=weight))
        # keep the client attached until the parent has seen the update applied
        go.clear()
        go.wait()


def ssp_worker(name, worker_id, steps, delay):
    from dbl_ps import StoreClient

    with StoreClient(name, worker_id) as client:
        update = np.ones(client.num_params, dtype=np.float32)
        for _ in range(steps):
            time.sleep(delay)
            client.push(update)


def push_then_block_forever(name, worker_id, ready):
    """Attach, pin nothing, push once, then wait to be killed."""
    from dbl_ps import StoreClient

    client = StoreClient(name, worker_id)
    client.push(np.ones(client.num_params, dtype=np.float32))
    ready.set()
    time.sleep(600)


def pin_then_block_forever(name, worker_id, ready):
    """Hold a pinned snapshot (the server may not overwrite it) until killed."""
    from dbl_ps import StoreClient

    client = StoreClient(name, worker_id)
    snapshot = client.snapshot()
    ready.set()
    time.sleep(600)
    snapshot.release()


def own_store_then_block_forever(ready, names):
    from dbl_ps import ParameterStore

    store = ParameterStore(1000, 2, mode="bsp", rule="average")
    names.put(store.name)
    ready.set()
    time.sleep(600)


def push_pull(name, worker_id, updates, weight, results):
    """Push each update, pull after it; report (worker_id, version, rejected pushes so far, state)."""
    from dbl_ps import StoreClient

    with StoreClient(name, worker_id) as client:
        out = np.empty(updates[0].shape[0], dtype=np.float32)
        for update in updates:
            client.push(update, weight=weight)
            version = client.pull(out)
            results.put((worker_id, version, client.rejected(), out.copy()))
