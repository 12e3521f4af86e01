"""The parameter store: a flat float32 model state in named shared memory that the
workers on one node pull from and push to, merged by a multi-threaded Rust server.

    from dbl_ps import ParameterStore, StoreClient

    with ParameterStore(num_params, num_workers=4, mode="bsp", rule="average") as store:
        ...                                    # start workers, give them store.name
        # in a worker process:
        client = StoreClient(store.name, worker_id)
        version = client.pull(out)             # out: float32 C-contiguous ndarray / CPU tensor
        version = client.push(update, weight=0.8)

Modes: ``bsp`` (a round completes when every worker pushed; pulls wait for the round),
``asp`` (each push applied on arrival), ``ssp`` (asp, but a worker more than
``staleness`` pushes ahead of the slowest waits on push). Rules: ``average`` (bsp:
``sum f_i w_i / sum f_i``), ``blend`` (asp/ssp: ``w <- (w + f w_i) / (1 + f)``, the
paper's asynchronous rule), ``sgd`` (payloads are gradients; server-side SGD with
momentum/Nesterov/weight decay, the weight scales the gradient; in bsp the round's
gradients are averaged with weights ``f_i`` first). Every pull and push returns the
store's version: rounds applied (bsp) or updates applied (asp/ssp).

Non-finite updates: with ``reject_non_finite=True`` the store never lets a NaN or an
infinity into its state. The check rides on the merge itself (the values it writes),
so it costs no extra pass. A push whose merge would write one (a NaN/inf in the
update, or a result that overflows float32) is consumed but not applied: the state
and the version stay as they were, the pushing worker's pull returns as usual, and the
refusal is counted (``client.rejected()``, ``worker_stats()[i]["rejected"]``,
``server_stats()["rejected"]``). In bsp only the round's non-finite updates are
refused: the round is merged from the others, with their weights renormalised (a
round with no finite update, or whose merge overflows anyway, is refused whole). A
worker compares ``client.rejected()`` before its push and after the pull that follows
to know whether that push was refused.

Zero-copy: ``np.asarray(client.snapshot())`` is a read-only view of the latest state,
pinned until ``release()``; ``np.asarray(client.reserve())`` is a writable view of the
next queue slot, published by ``client.commit(weight)``. ``torch.from_numpy`` wraps
either without a copy.

Shared memory is removed when the store closes, at interpreter exit, and, for owners
that died (e.g. SIGKILL), by the next store created on the machine or by
``dbl-ps cleanup``.
"""

from __future__ import annotations

import atexit
import operator
import weakref
from typing import Any

from dbl_ps import _rust_ps
from dbl_ps._rust_ps import (
    OwnerDiedError,
    SlotView,
    StateSnapshot,
    StoreClosedError,
    StoreError,
    StoreNotFoundError,
)

__all__ = [
    "ParameterStore",
    "StoreClient",
    "StateSnapshot",
    "SlotView",
    "StoreError",
    "StoreClosedError",
    "StoreNotFoundError",
    "OwnerDiedError",
    "cleanup_stale_segments",
    "list_segments",
    "gather_into",
    "scatter_from",
    "SEGMENT_PREFIX",
]

SEGMENT_PREFIX: str = _rust_ps.SEGMENT_PREFIX
MAX_WORKERS = 4096  # the store's limit on num_workers (rust_ps/src/options.rs)
SHM_DIR = "/dev/shm/"  # where `dbl-ps cleanup --list` shows the segments on Linux

# Everything still open at interpreter exit is closed then, so that no shared memory
# outlives a process that forgot to close (or was stopped by an exception).
_open_handles: "weakref.WeakSet[Any]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for handle in list(_open_handles):
        try:
            handle.close()
        except Exception:  # exit must not fail on a handle that is already broken
            pass


class ParameterStore:
    """Owner of a parameter store; runs the server thread that applies updates.

    Args:
        num_params: length of the flat float32 state (parameters + BatchNorm buffers).
        num_workers: workers that will attach (ids ``0..num_workers-1``).
        mode: ``"bsp"``, ``"asp"`` or ``"ssp"``.
        rule: ``"average"`` (bsp), ``"blend"`` (asp/ssp) or ``"sgd"`` (any mode).
        staleness: SSP bound (pushes ahead of the slowest worker); 0 otherwise.
        apply_threads: threads merging disjoint slices of the state (default: cores, at
            most 8; small states use one).
        lr, momentum, weight_decay, nesterov: rule ``"sgd"`` only, as in torch.optim.SGD.
        name: shared-memory name (default: unique); clients attach with ``store.name``.
        initial: float32 array/tensor of ``num_params`` values to start from (default 0).
        slots: payload slots per worker queue (>= 2: fill one while one is applied).
        reject_non_finite: refuse updates whose merge would put a NaN or an infinity into
            the state (see the module docstring); ``initial`` must then be finite. With
            rule ``sgd`` and momentum the momentum buffer is kept twice (one more
            ``num_params`` floats of shared memory) so that a refused step leaves it as
            it was.
    """

    def __init__(
        self,
        num_params: int,
        num_workers: int,
        mode: str = "asp",
        rule: str = "blend",
        staleness: int = 0,
        apply_threads: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        name: str | None = None,
        initial: Any = None,
        slots: int = 2,
        reject_non_finite: bool = False,
    ) -> None:
        self._store = _rust_ps.ParameterStore(
            num_params, num_workers, mode=mode, rule=rule, staleness=staleness,
            apply_threads=apply_threads, lr=lr, momentum=momentum, weight_decay=weight_decay,
            nesterov=nesterov, name=name, initial=initial, slots=slots,
            reject_non_finite=reject_non_finite,
        )
        _open_handles.add(self)

    name = property(lambda self: self._store.name, doc="Name that clients attach with.")
    version = property(lambda self: self._store.version, doc="Rounds (bsp) or updates (asp/ssp) applied.")
    num_params = property(lambda self: self._store.num_params)
    num_workers = property(lambda self: self._store.num_workers)
    mode = property(lambda self: self._store.mode)
    rule = property(lambda self: self._store.rule)
    staleness = property(lambda self: self._store.staleness)
    apply_threads = property(lambda self: self._store.apply_threads)
    lr = property(lambda self: self._store.lr, doc="Learning rate of rule 'sgd'.")
    reject_non_finite = property(lambda self: self._store.reject_non_finite,
                                 doc="Whether updates that would make the state non-finite are refused.")
    closed = property(lambda self: self._store.closed)

    def set_lr(self, lr: float) -> None:
        """Change the learning rate of rule ``sgd`` from the next applied update on."""
        self._store.set_lr(lr)

    def read(self, out: Any) -> int:
        """Copy the latest state into ``out``; returns its version. Never blocks."""
        return self._store.read(out)

    def snapshot(self) -> StateSnapshot:
        """Pin the latest state for zero-copy reading: ``np.asarray(snap)``."""
        return self._store.snapshot()

    def server_stats(self) -> dict[str, float]:
        """Server totals: ``applies`` (merges published), ``apply_seconds``, ``wait_seconds``,
        ``bytes_moved``, ``rejected`` (updates refused as non-finite)."""
        return self._store.server_stats()

    def worker_stats(self) -> list[dict[str, Any]]:
        """Per worker: ``pushes``, ``applied``, ``rejected`` (refused as non-finite),
        ``attached_pid`` (0 = none), ``departed``."""
        return self._store.worker_stats()

    def close(self) -> None:
        """Stop the server, fail waiting clients, remove the shared memory. Idempotent."""
        self._store.close()
        _open_handles.discard(self)

    def __enter__(self) -> "ParameterStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._store)


class StoreClient:
    """A worker's connection to a store, from any process on the node.

    Args:
        name: the store's ``name`` (or its segment as ``dbl-ps cleanup --list`` shows it,
            ``/dev/shm/dblps-NAME``).
        worker_id: this worker's id, ``0 <= worker_id < num_workers``; one client per id.
    """

    def __init__(self, name: str, worker_id: int) -> None:
        if isinstance(worker_id, bool):
            raise TypeError(f"worker_id must be an integer, got {worker_id!r}")
        try:
            worker_id = operator.index(worker_id)  # ints and numpy integers
        except TypeError:
            raise TypeError(f"worker_id must be an integer, got {type(worker_id).__name__} {worker_id!r}") from None
        # Checked here: a huge id would otherwise fail converting to a C integer (OverflowError)
        # without saying which argument; the store checks it against its own worker count.
        if not 0 <= worker_id < MAX_WORKERS:
            raise ValueError(f"worker_id={worker_id} is out of range: ids are 0..num_workers-1 "
                             f"and a store has at most {MAX_WORKERS} workers")
        # `dbl-ps cleanup --list` shows the shared-memory segment, /dev/shm/dblps-NAME; that
        # works too. A store name has no "/", so that path is unambiguous; the bare prefix is
        # tried second, so that a store whose own name starts with it is still found.
        if name.startswith(SHM_DIR):
            name = name[len(SHM_DIR):]
        try:
            self._client = _rust_ps.StoreClient(name, worker_id)
        except StoreNotFoundError:
            if not name.startswith(SEGMENT_PREFIX):
                raise
            self._client = _rust_ps.StoreClient(name[len(SEGMENT_PREFIX):], worker_id)
        _open_handles.add(self)

    name = property(lambda self: self._client.name)
    worker_id = property(lambda self: self._client.worker_id)
    num_params = property(lambda self: self._client.num_params)
    version = property(lambda self: self._client.version)
    pushes = property(lambda self: self._client.pushes, doc="Pushes this worker queued so far.")

    def rejected(self) -> int:
        """This worker's pushes that the store refused as non-finite so far (store option
        ``reject_non_finite``). Once a ``pull`` returns, every push it waited for is
        counted: a rise since the count taken before a push means that push was refused."""
        return self._client.rejected()

    def pull(self, out: Any) -> int:
        """Copy the latest state into ``out`` once this worker's own pushes are applied
        (bsp: once their round is complete). Returns the version."""
        return self._client.pull(out)

    def push(self, update: Any, weight: float = 1.0) -> int:
        """Queue ``update`` (weights, or a gradient for rule ``sgd``) with merge weight
        ``weight`` (the plan's ``f_i``). Blocks only while the queue is full or, in
        ssp, while this worker is too far ahead. Returns the version."""
        return self._client.push(update, weight)

    def snapshot(self) -> StateSnapshot:
        """Zero-copy ``pull``: a pinned read-only snapshot (``np.asarray(snap)``)."""
        return self._client.snapshot()

    def reserve(self) -> SlotView:
        """Zero-copy push, part one: a writable view of the next free queue slot."""
        return self._client.reserve()

    def commit(self, weight: float = 1.0) -> int:
        """Zero-copy push, part two: publish the reserved slot."""
        return self._client.commit(weight)

    def close(self) -> None:
        """Leave the store; bsp rounds and ssp bounds stop waiting for this worker."""
        self._client.close()
        _open_handles.discard(self)

    def __enter__(self) -> "StoreClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._client)


def list_segments() -> list[dict[str, Any]]:
    """Every store segment on the machine: ``name``, ``owner_pid``, ``owner_alive``,
    ``stale`` (what ``cleanup_stale_segments`` would remove)."""
    return _rust_ps.list_segments()


def gather_into(sources: list[Any], out: Any, reference: Any = None) -> bool:
    """Write the float32 CPU tensors (or arrays) `sources`, in order, into the flat vector
    `out` (e.g. a reserved queue slot); with `reference`, write `reference - state`
    instead. Returns whether every value written is finite.

    One pass with the finiteness check folded in, and streaming stores into `out`: about
    half the time of per-tensor `copy_` followed by a sum on a CPU (issue 26). Lengths
    must add up and `out` must not overlap the inputs (one ValueError each)."""
    return _rust_ps.gather_into(sources, out, reference)


def scatter_from(state: Any, targets: list[Any], copy: Any = None) -> None:
    """Split the flat float32 vector `state` (e.g. a pinned snapshot) over the float32 CPU
    tensors (or arrays) `targets`, in order; with `copy`, also write the whole state into
    it in the same pass. Lengths must add up and the written buffers must not overlap
    each other or `state`."""
    _rust_ps.scatter_from(state, targets, copy)


def cleanup_stale_segments() -> list[str]:
    """Remove shared memory left by stores whose owner process died; returns the names."""
    return _rust_ps.cleanup_stale()
