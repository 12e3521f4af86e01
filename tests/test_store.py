"""The parameter store through its public Python API, with real worker processes."""

from __future__ import annotations

import ast
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import store_workers
from dbl_ps import (
    OwnerDiedError,
    ParameterStore,
    StoreClient,
    StoreClosedError,
    StoreNotFoundError,
    cleanup_stale_segments,
)
from dbl_ps.parameter_store import SEGMENT_PREFIX, list_segments

SPAWN = mp.get_context("spawn")


def segment_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{SEGMENT_PREFIX}{name}")


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# --- merge rules and sync modes, real processes ------------------------------------


def test_bsp_weighted_mean_across_processes_is_exact_to_float32_rounding():
    rng = np.random.default_rng(0)
    num_params, workers, rounds = 5000, 3, 3
    weights = [1.0, 0.6, 0.25]  # the plan's f_i: large workers 1, small ones d_S/d_L
    updates = rng.standard_normal((workers, rounds, num_params)).astype(np.float32)
    results = SPAWN.Queue()
    with ParameterStore(num_params, workers, mode="bsp", rule="average") as store:
        procs = [
            SPAWN.Process(target=store_workers.push_pull, args=(store.name, w, list(updates[w]), weights[w], results))
            for w in range(workers)
        ]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in range(workers * rounds)]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        assert store.version == rounds
    f = np.array(weights)[:, None]
    for worker_id, version, _, out in got:
        r = version - 1  # each pull returns right after its own round
        expected = (f * updates[:, r].astype(np.float64)).sum(0) / f.sum()
        np.testing.assert_array_max_ulp(out, expected.astype(np.float32), maxulp=1)


def test_asp_blend_matches_the_closed_form_for_a_fixed_push_order():
    rng = np.random.default_rng(1)
    num_params = 2000
    initial = rng.standard_normal(num_params).astype(np.float32)
    order = [(0, 1.0), (1, 0.4), (2, 0.7), (1, 0.4), (0, 1.0)]  # (worker, weight)
    updates = rng.standard_normal((len(order), num_params)).astype(np.float32)
    with ParameterStore(num_params, 3, mode="asp", rule="blend", initial=initial) as store:
        expected = initial.astype(np.float64)
        for step, (worker, weight) in enumerate(order):
            go, done = SPAWN.Event(), SPAWN.Queue()
            proc = SPAWN.Process(target=store_workers.ordered_pusher, args=(store.name, worker, updates[step], weight, go, done))
            proc.start()
            go.set()
            done.get(timeout=60)
            wait_for(lambda: store.version == step + 1, what=f"push {step} applied")
            go.set()
            proc.join(timeout=30)
            expected = (expected + weight * updates[step]) / (1 + weight)
            out = np.empty(num_params, dtype=np.float32)
            assert store.read(out) == step + 1
            np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_ssp_never_lets_a_worker_run_more_than_staleness_ahead():
    staleness, steps = 1, 40
    with ParameterStore(256, 3, mode="ssp", rule="blend", staleness=staleness) as store:
        delays = [0.02, 0.0, 0.0]  # worker 0 is slow
        procs = [SPAWN.Process(target=store_workers.ssp_worker, args=(store.name, w, steps, delays[w])) for w in range(3)]
        for p in procs:
            p.start()
        widest = 0
        while any(p.is_alive() for p in procs):
            pushes = [s["pushes"] for s in store.worker_stats()]
            if min(pushes) < steps:  # while everyone is still expected to push
                widest = max(widest, max(pushes) - min(pushes))
            time.sleep(0.002)
        for p in procs:
            assert p.exitcode == 0
        assert store.version == 3 * steps
    # A push is accepted while the pusher is at most `staleness` ahead, so clocks can
    # differ by staleness + 1 right after it; more would break the bound.
    assert 1 <= widest <= staleness + 1, widest


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 5e-4, True), (0.5, 1e-2, False)])
def test_sgd_rule_matches_torch_optim_sgd(momentum, weight_decay, nesterov):
    torch.manual_seed(0)
    num_params, steps = 3000, 6
    start = torch.randn(num_params)
    grads = [torch.randn(num_params) for _ in range(steps)]
    param = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    with ParameterStore(num_params, 1, mode="asp", rule="sgd", lr=0.1, momentum=momentum,
                        weight_decay=weight_decay, nesterov=nesterov, initial=start) as store, \
            StoreClient(store.name, 0) as client:
        out = torch.empty(num_params)
        for step, grad in enumerate(grads):
            if step == 3:  # the learning rate can change at run time
                store.set_lr(0.05)
                optimizer.param_groups[0]["lr"] = 0.05
            param.grad = grad.clone()
            optimizer.step()
            assert client.push(grad) <= step + 1
            assert client.pull(out) == step + 1
            torch.testing.assert_close(out, param.detach(), rtol=0, atol=1e-6)


def test_bsp_sgd_steps_with_the_weighted_mean_gradient():
    num_params = 100
    g0, g1 = torch.randn(num_params), torch.randn(num_params)
    with ParameterStore(num_params, 2, mode="bsp", rule="sgd", lr=0.5) as store:
        a, b = StoreClient(store.name, 0), StoreClient(store.name, 1)
        a.push(g0, weight=1.0)
        b.push(g1, weight=0.5)
        out = torch.empty(num_params)
        assert a.pull(out) == 1
        torch.testing.assert_close(out, -0.5 * (g0 + 0.5 * g1) / 1.5, rtol=0, atol=1e-6)
        a.close()
        b.close()


# --- non-finite updates (reject_non_finite), real processes --------------------------


def _run_pushers(store, updates_per_worker, weights):
    """One spawned process per worker pushing its updates (pull after each); returns
    results[worker] = [(version, rejected, state), ...] as each worker saw them."""
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=store_workers.push_pull, args=(store.name, w, updates, weights[w], results))
             for w, updates in enumerate(updates_per_worker)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(sum(len(u) for u in updates_per_worker))]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    by_worker = {w: [] for w in range(len(updates_per_worker))}
    for worker, version, rejected, out in got:
        by_worker[worker].append((version, rejected, out))
    return by_worker


def _with(values, bad, at):
    poisoned = values.copy()
    poisoned[at] = bad
    return poisoned


@pytest.mark.parametrize("mode,rule", [("asp", "blend"), ("ssp", "blend"), ("asp", "sgd")])
def test_reject_non_finite_refuses_a_workers_nan_and_inf_pushes(mode, rule):
    rng = np.random.default_rng(2)
    num_params, weight = 3000, 0.5
    initial = rng.standard_normal(num_params).astype(np.float32)
    good = rng.standard_normal((3, num_params)).astype(np.float32)
    updates = [good[0], _with(good[1], np.nan, 7), good[1], _with(good[2], -np.inf, num_params - 1), good[2]]
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True) if rule == "sgd" else {}
    with ParameterStore(num_params, 1, mode=mode, rule=rule, initial=initial, reject_non_finite=True,
                        **sgd) as store:
        assert store.reject_non_finite
        seen = _run_pushers(store, [updates], [weight])[0]
        assert [(v, r) for v, r, _ in seen] == [(1, 0), (1, 1), (2, 1), (2, 2), (3, 2)]
        # the state (momentum included) is what the finite pushes alone give
        if rule == "blend":
            keep, take = np.float32(1 / (1 + weight)), np.float32(weight / (1 + weight))
            expected, states = initial, []
            for u in good:
                expected = keep * expected + take * u
                states.append(expected)
        else:
            param = torch.nn.Parameter(torch.from_numpy(initial.copy()))
            optimizer = torch.optim.SGD([param], **sgd)
            states = []
            for g in good:
                param.grad = torch.from_numpy(weight * g)
                optimizer.step()
                states.append(param.detach().numpy().copy())
        for (_, _, out), expected in zip(seen, [states[0], states[0], states[1], states[1], states[2]]):
            assert np.isfinite(out).all()
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
        stats = store.worker_stats()[0]
        assert (stats["pushes"], stats["applied"], stats["rejected"]) == (5, 3, 2)
        assert store.server_stats()["rejected"] == 2 and store.version == 3


def test_reject_non_finite_bsp_round_merges_the_finite_pushes_of_three_processes():
    rng = np.random.default_rng(3)
    num_params, weights = 5000, [1.0, 0.6, 0.25]
    good = rng.standard_normal((3, 4, num_params)).astype(np.float32)  # worker, round, values
    bad = {(1, 1): np.nan, (0, 2): np.inf, (1, 2): -np.inf, (2, 2): np.nan}  # round 2: all refused
    updates = [[_with(good[w, r], bad[w, r], 11 * r) if (w, r) in bad else good[w, r] for r in range(4)]
               for w in range(3)]
    with ParameterStore(num_params, 3, mode="bsp", rule="average", reject_non_finite=True) as store:
        seen = _run_pushers(store, updates, weights)
        expected, versions, version = None, [], 0
        for r in range(4):
            finite = [w for w in range(3) if (w, r) not in bad]
            if finite:
                f = np.array([weights[w] for w in finite])[:, None]
                expected = ((f * good[finite, r].astype(np.float64)).sum(0) / f.sum()).astype(np.float32)
                version += 1
            versions.append((version, expected))
        rejected = {0: [0, 0, 1, 1], 1: [0, 1, 2, 2], 2: [0, 0, 1, 1]}
        for w in range(3):
            assert [v for v, _, _ in seen[w]] == [1, 2, 2, 3], w
            assert [r for _, r, _ in seen[w]] == rejected[w], w
            for (_, _, out), (_, want) in zip(seen[w], versions):
                np.testing.assert_array_max_ulp(out, want, maxulp=1)
        assert [s["rejected"] for s in store.worker_stats()] == [1, 2, 1]
        assert [s["applied"] for s in store.worker_stats()] == [3, 2, 3]
        assert store.server_stats()["rejected"] == 4 and store.version == 3


def test_without_reject_non_finite_a_nan_push_goes_in_and_a_nan_initial_is_refused_with_it():
    with ParameterStore(8, 1, mode="asp", rule="blend") as store, StoreClient(store.name, 0) as client:
        assert not store.reject_non_finite
        client.push(_with(np.ones(8, np.float32), np.nan, 3))
        out = np.empty(8, np.float32)
        assert client.pull(out) == 1 and np.isnan(out[3]) and client.rejected() == 0
        assert store.server_stats()["rejected"] == 0
    with pytest.raises(ValueError, match=r"initial\[2\]=inf is not finite"):
        ParameterStore(4, 1, initial=np.array([0, 1, np.inf, 2], np.float32), reject_non_finite=True)


# --- zero-copy views, threads, interrupts ------------------------------------------


def test_zero_copy_views_of_slots_and_state():
    with ParameterStore(8, 1, mode="asp", rule="blend") as store, StoreClient(store.name, 0) as client:
        slot = torch.from_numpy(np.asarray(client.reserve()))
        slot.fill_(2.0)  # written straight into shared memory
        assert client.commit(weight=1.0) in (0, 1)  # the version when queued; the server may be done already
        with client.snapshot() as snap:  # waits for this worker's own push
            view = np.asarray(snap)
            assert snap.version == 1 and not view.flags.writeable
            np.testing.assert_array_equal(view, np.full(8, 1.0, np.float32))  # (0 + 2) / 2
        with pytest.raises(StoreClosedError, match="released"):
            np.asarray(snap)


def test_many_python_threads_push_and_pull_concurrently_and_every_push_counts():
    threads, pushes, num_params = 8, 200, 64 * 8
    with ParameterStore(num_params, threads, mode="asp", rule="sgd", lr=1.0) as store:
        def body(worker):
            with StoreClient(store.name, worker) as client:
                grad = np.zeros(num_params, np.float32)
                grad[worker * 64:(worker + 1) * 64] = -1.0
                out = np.empty(num_params, np.float32)
                for _ in range(pushes):
                    client.push(grad)
                    client.pull(out)
        pool = [threading.Thread(target=body, args=(w,)) for w in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        out = np.empty(num_params, np.float32)
        assert store.read(out) == threads * pushes
        np.testing.assert_array_equal(out, np.full(num_params, pushes, np.float32))


def test_a_blocked_pull_releases_the_gil_and_completes_when_the_round_does():
    with ParameterStore(16, 2, mode="bsp", rule="average") as store:
        a, b = StoreClient(store.name, 0), StoreClient(store.name, 1)
        a.push(np.ones(16, np.float32))
        result = {}
        waiter = threading.Thread(target=lambda: result.setdefault("v", a.pull(np.empty(16, np.float32))))
        waiter.start()
        ticks = 0
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # Python keeps running while the pull blocks
            ticks += 1
        assert waiter.is_alive() and ticks > 1000
        b.push(np.full(16, 3.0, np.float32))
        waiter.join(timeout=10)
        assert result["v"] == 1
        a.close()
        b.close()


def test_ctrl_c_interrupts_a_blocked_pull():
    # The child sets Python's usual SIGINT handler itself: a parent that ignores SIGINT
    # (a background job of a non-interactive shell, as CI may be) would pass that on.
    script = textwrap.dedent("""
        import numpy as np, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from dbl_ps import ParameterStore, StoreClient
        store = ParameterStore(4, 2, mode="bsp", rule="average")
        client = StoreClient(store.name, 0)
        client.push(np.ones(4, np.float32))
        print("blocked", flush=True)
        try:
            client.pull(np.empty(4, np.float32))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        store.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "blocked"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert "interrupted" in out and proc.returncode == 0
    finally:
        if proc.poll() is None:  # never leave a blocked child (and its store) behind
            proc.kill()
            proc.wait()


# --- bad input: one clear error each -----------------------------------------------


def test_bad_inputs_get_clear_errors():
    with ParameterStore(10, 2, mode="asp", rule="blend") as store:
        client = StoreClient(store.name, 0)
        cases = [
            (lambda: client.push(np.ones(10)), TypeError, "update must be float32, got float64"),
            (lambda: client.push(torch.ones(10, dtype=torch.float16)), TypeError, "got torch.float16"),
            (lambda: client.pull(np.ones(9, np.float32)), ValueError, "out has 9 values but the store holds num_params=10"),
            (lambda: client.pull(np.ones((10, 2), np.float32)[:, 0]), ValueError, "C-contiguous"),
            (lambda: client.pull(torch.ones(20)[::2]), ValueError, "contiguous"),
            (lambda: client.pull(np.ones(10, np.float32).view().setflags(write=False) or None), TypeError, "NoneType"),
            (lambda: client.push([1.0] * 10), TypeError, "float32 NumPy array or CPU torch tensor, got list"),
            (lambda: client.push(np.ones(10, np.float32), weight=0.0), ValueError, "weight=0"),
            (lambda: client.commit(), ValueError, "commit() without a reserved slot"),
            (lambda: StoreClient(store.name, 2), ValueError, "worker_id=2 is out of range"),
            (lambda: StoreClient(store.name, -1), ValueError, "worker_id=-1"),
            (lambda: StoreClient(store.name, 0), ValueError, "already attached"),
            (lambda: StoreClient("no-such-store", 0), StoreNotFoundError, 'no parameter store named "no-such-store"'),
            (lambda: ParameterStore(10, 2, mode="sync"), ValueError, "unknown mode \"sync\""),
            (lambda: ParameterStore(10, 2, rule="mean"), ValueError, "unknown rule \"mean\""),
            (lambda: ParameterStore(10, 2, mode="bsp", rule="blend"), ValueError, "rule='blend'"),
            (lambda: ParameterStore(10, 2, mode="asp", staleness=3), ValueError, "staleness=3 only applies to mode='ssp'"),
            (lambda: ParameterStore(0, 2), ValueError, "num_params=0"),
            (lambda: ParameterStore(10, 2, initial=np.ones(3, np.float32)), ValueError, "initial has 3 values"),
            (lambda: ParameterStore(10, 2, name=store.name), ValueError, "already exists"),
            (lambda: ParameterStore(10, 2, name="bad/name"), ValueError, "not allowed"),
            (lambda: store.set_lr(float("nan")), ValueError, "lr=NaN"),
        ]
        for call, error, message in cases:
            with pytest.raises(error, match=None) as info:
                call()
            assert message in str(info.value), (message, str(info.value))
        readonly = np.ones(10, np.float32)
        readonly.setflags(write=False)
        with pytest.raises(ValueError, match="out is read-only"):
            client.pull(readonly)
        client.close()
        with pytest.raises(StoreClosedError, match="client .* is closed"):
            client.push(np.ones(10, np.float32))
    with pytest.raises(StoreClosedError, match="is closed"):
        store.read(np.empty(10, np.float32))
    with pytest.raises(StoreNotFoundError):
        StoreClient(store.name, 1)


def test_closing_the_store_wakes_a_blocked_client_with_an_error():
    store = ParameterStore(4, 2, mode="bsp", rule="average")
    client = StoreClient(store.name, 0)
    client.push(np.ones(4, np.float32))
    threading.Timer(0.2, store.close).start()
    with pytest.raises(StoreClosedError, match="closed by its owner"):
        client.pull(np.empty(4, np.float32))
    client.close()
    assert not segment_exists(store.name)


# --- crashes: nothing left behind ---------------------------------------------------


def test_a_worker_killed_with_sigkill_does_not_stall_the_store():
    with ParameterStore(1000, 2, mode="bsp", rule="average") as store:
        ready = SPAWN.Event()
        victim = SPAWN.Process(target=store_workers.pin_then_block_forever, args=(store.name, 1, ready))
        victim.start()
        assert ready.wait(60)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        with StoreClient(store.name, 0) as survivor:
            # The dead worker held a pin and will never push: the server notices the
            # death, drops its pin and stops waiting for it.
            for round_ in range(1, 4):
                survivor.push(np.full(1000, float(round_), np.float32))
                out = np.empty(1000, np.float32)
                assert survivor.pull(out) == round_
                assert out[0] == round_
        assert store.worker_stats()[1]["departed"]
        # Its id can be taken over by a new process (e.g. a restarted worker).
        StoreClient(store.name, 1).close()


def _spawn_store_owner():
    """A process that creates a store and blocks forever; returns it and the store's name."""
    ready, names = SPAWN.Event(), SPAWN.Queue()
    owner = SPAWN.Process(target=store_workers.own_store_then_block_forever, args=(ready, names))
    owner.start()
    assert ready.wait(60)
    return owner, names.get(timeout=10)


def test_an_owner_killed_with_sigkill_leaves_nothing_after_cleanup():
    owner, name = _spawn_store_owner()
    client = StoreClient(name, 0)
    client.push(np.ones(1000, np.float32))
    os.kill(owner.pid, signal.SIGKILL)
    owner.join()
    assert segment_exists(name)  # nobody could unlink it...
    with pytest.raises(OwnerDiedError, match="died"):
        client.pull(np.empty(1000, np.float32))  # ...a waiting client is told, not hung
    client.close()
    assert name in cleanup_stale_segments()  # ...and cleanup removes it
    assert not segment_exists(name)


def test_a_new_store_removes_segments_of_dead_owners_and_the_cli_reports_them():
    owner, name = _spawn_store_owner()
    os.kill(owner.pid, signal.SIGKILL)
    owner.join()
    with ParameterStore(4, 1):
        assert not segment_exists(name)
    out = subprocess.run([sys.executable, "-m", "dbl_ps.cli", "cleanup"], capture_output=True, text=True, check=True)
    assert "stale segment(s) removed" in out.stdout


def test_cleanup_list_shows_a_live_store_with_its_owner_and_removes_nothing():
    with ParameterStore(4, 1) as store:
        out = subprocess.run([sys.executable, "-m", "dbl_ps.cli", "cleanup", "--list"], capture_output=True,
                             text=True, check=True).stdout
        line = next(l for l in out.splitlines() if store.name in l)
        assert str(os.getpid()) in line and line.endswith("live")
        assert segment_exists(store.name)


def test_owner_exit_without_close_removes_the_segment():
    script = "from dbl_ps import ParameterStore; s = ParameterStore(64, 1); print(s.name)"
    name = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert name and not segment_exists(name)


# --- the typed stub matches the native module --------------------------------------


def test_stub_matches_the_native_module():
    from dbl_ps import _rust_ps

    stub = ast.parse(Path(_rust_ps.__file__).with_name("_rust_ps.pyi").read_text())
    for node in stub.body:
        if isinstance(node, ast.ClassDef):
            native = getattr(_rust_ps, node.name)
            if issubclass(native, BaseException):
                continue  # exception classes: only their names and bases matter
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name not in ("__new__",):
                    assert hasattr(native, item.name), f"{node.name}.{item.name} is in the stub but not the module"
            stubbed = {i.name for i in node.body if isinstance(i, ast.FunctionDef)}
            public = {n for n in dir(native) if not n.startswith("_")}
            assert public <= stubbed, f"{node.name}: not in the stub: {public - stubbed}"
        elif isinstance(node, ast.FunctionDef):
            assert callable(getattr(_rust_ps, node.name))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/shm is Linux's")
def test_a_store_larger_than_the_free_shared_memory_is_refused_up_front():
    # tmpfs sizes lazily: unchecked, such a store would be created and the first write past
    # the free space would kill the process with SIGBUS (Docker's /dev/shm is 64 MB).
    import shutil

    free = shutil.disk_usage("/dev/shm").free
    if free > 100 << 30:
        pytest.skip("more than 100 GB of /dev/shm free: no store within num_params' range is sure to exceed it")
    num_params = free // 8 + (1 << 20)  # the two state copies alone exceed what is free
    before = {s["name"] for s in list_segments()}
    with pytest.raises(OSError, match=r"needs \d+ MB of shared memory and /dev/shm has only \d+ MB free.*--shm-size"):
        ParameterStore(num_params, 1)
    assert {s["name"] for s in list_segments()} == before  # nothing left behind


def test_a_client_takes_the_segment_name_cleanup_lists_and_refuses_a_huge_worker_id():
    with ParameterStore(4, 2) as store:
        listed = subprocess.run([sys.executable, "-m", "dbl_ps.cli", "cleanup", "--list"], capture_output=True,
                                text=True, check=True).stdout
        shown = next(line for line in listed.splitlines() if store.name in line).split()[0]
        assert shown.endswith(SEGMENT_PREFIX + store.name)  # what a user copies from the listing
        with StoreClient(shown, 0) as a, StoreClient(SEGMENT_PREFIX + store.name, 1) as b:
            assert a.name == b.name == store.name
        for worker_id, error in ((10**20, ValueError), (-5, ValueError), (4096, ValueError), (True, TypeError),
                                 (1.0, TypeError)):
            with pytest.raises(error, match="worker_id") as info:
                StoreClient(store.name, worker_id)
            assert not isinstance(info.value, OverflowError)
        with pytest.raises(StoreNotFoundError):
            StoreClient(SEGMENT_PREFIX + "no-such-store", 0)
    # A store whose own name starts with the prefix is still found by that name.
    with ParameterStore(4, 1, name=SEGMENT_PREFIX + "own") as store, StoreClient(SEGMENT_PREFIX + "own", 0) as client:
        assert client.name == store.name == SEGMENT_PREFIX + "own"
