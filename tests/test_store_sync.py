"""The store synchronizer's zero-copy sync (issue 26): the model is gathered straight into
a reserved queue slot and scattered straight from a pinned snapshot. It must give bitwise
the states of the copying path (push/pull through a private vector) for every rule, and
keep the divergence checks and the store's refusal of non-finite merges."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dbl_ps import ParameterStore
from dbl_ps.synchronizers.store import StoreSynchronizer
from dbl_ps.training.flat import FlatState


class FakeEngine:
    """What the synchronizer uses of an engine: the module and the after-sync hook."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.after_syncs = 0

    def after_sync(self) -> None:
        self.after_syncs += 1


def small_model(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)  # every call builds the same weights
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    model.train()
    return model


def local_steps(model: nn.Module, seed: int) -> None:
    """A few deterministic training steps (changes weights and BatchNorm statistics)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        x = torch.randn(16, 6, generator=gen).to(device)
        y = torch.randint(0, 3, (16,), generator=gen).to(device)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def model_state(model: nn.Module) -> torch.Tensor:
    return FlatState(model).gather().clone()


def store_for(model: nn.Module, mode: str, rule: str, **options) -> ParameterStore:
    flat = FlatState(model)
    return ParameterStore(flat.numel, 1, mode=mode, rule=rule, lr=1.0, momentum=0.0,
                          staleness=1 if mode == "ssp" else 0, initial=flat.gather(), **options)


def read_store(store: ParameterStore) -> torch.Tensor:
    out = torch.empty(store.num_params, dtype=torch.float32)
    store.read(out)
    return out


RULES = [("bsp", "average"), ("asp", "blend"), ("ssp", "blend"), ("asp", "sgd"), ("bsp", "sgd")]


@pytest.mark.parametrize("divergence", ["stop", "skip"])
@pytest.mark.parametrize(("mode", "rule"), RULES)
def test_zero_copy_sync_gives_bitwise_the_states_of_the_copy_path(mode, rule, divergence):
    results = {}
    for zero_copy in (False, True):
        model = small_model()
        engine = FakeEngine(model)
        with store_for(model, mode, rule) as store:
            sync = StoreSynchronizer(store.name, 0, mode=mode, rule=rule, sync_every=1,
                                     divergence=divergence, zero_copy=zero_copy)
            try:
                assert sync.start(engine, fresh=True) == 0
                versions = []
                for period in range(4):
                    local_steps(model, seed=period)
                    result = sync.sync(engine, 0.8, loss=torch.tensor(1.5))
                    assert result.merged and not result.diverged
                    versions.append(result.version)
                results[zero_copy] = (model_state(model), read_store(store), versions, engine.after_syncs)
            finally:
                sync.close()
    copied, zero = results[False], results[True]
    assert torch.equal(zero[0], copied[0]), "model after the syncs"
    assert torch.equal(zero[1], copied[1]), "the store's global state"
    assert zero[2] == copied[2] == [1, 2, 3, 4]
    assert zero[3] == copied[3] == 5  # start + 4 syncs
    assert torch.equal(zero[0], zero[1])  # one worker: the model continues from the merged state


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("rule", ["blend", "sgd"])
def test_a_non_finite_state_is_not_pushed_with_stop_and_the_next_sync_still_works(rule, zero_copy):
    model = small_model()
    engine = FakeEngine(model)
    with store_for(model, "asp", rule) as store:
        sync = StoreSynchronizer(store.name, 0, mode="asp", rule=rule, sync_every=1, zero_copy=zero_copy)
        try:
            sync.start(engine, fresh=True)
            before = read_store(store)
            with torch.no_grad():
                model[0].weight[0, 0] = math.nan
            result = sync.sync(engine, 1.0, loss=torch.tensor(2.0))
            assert not result.merged and result.diverged == {0: 2.0}
            assert store.version == 0 and torch.equal(read_store(store), before)  # nothing went in
            # A finite loss with a non-finite state, or the reverse: both are caught.
            with torch.no_grad():
                model[0].weight[0, 0] = 0.5
            result = sync.sync(engine, 1.0, loss=torch.tensor(math.inf))
            assert not result.merged and 0 in result.diverged
            # Once finite again the worker syncs as usual (the slot reserved above is reused).
            result = sync.sync(engine, 1.0, loss=torch.tensor(2.0))
            assert result.merged and result.version == 1
        finally:
            sync.close()


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize(("mode", "rule"), [("bsp", "average"), ("asp", "sgd")])
def test_skip_pushes_the_last_pulled_state_in_place_of_a_non_finite_one(mode, rule, zero_copy):
    model = small_model()
    engine = FakeEngine(model)
    with store_for(model, mode, rule) as store:
        sync = StoreSynchronizer(store.name, 0, mode=mode, rule=rule, sync_every=1, divergence="skip",
                                 zero_copy=zero_copy)
        try:
            sync.start(engine, fresh=True)
            local_steps(model, seed=1)
            sync.sync(engine, 1.0)
            merged = read_store(store)
            with torch.no_grad():
                model[3].bias.fill_(math.nan)
            result = sync.sync(engine, 0.5, loss=torch.tensor(3.0))
            assert result.merged and result.diverged == {0: 3.0} and result.version == 2
            # An unchanged contribution: the state stays the merged one, and so does the model.
            assert torch.equal(read_store(store), merged)
            assert torch.equal(model_state(model), merged)
        finally:
            sync.close()


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("divergence", ["stop", "skip"])
def test_a_push_the_store_refuses_as_non_finite_is_reported(divergence, zero_copy):
    """Rule sgd pushes a displacement: a finite state far from the last pulled one makes an
    infinite displacement. The zero-copy sync checks the displacement it writes and so
    catches it itself (nothing non-finite reaches the store); the copying path checks the
    state, lets it through, and the store (reject_non_finite) refuses it. Either way the
    divergence is reported and the global state keeps its values."""
    model = nn.Linear(1, 1)  # two values: their sum (the divergence check) stays finite below
    with torch.no_grad():
        model.weight.fill_(3e38)
        model.bias.fill_(3e38)
    engine = FakeEngine(model)
    with store_for(model, "asp", "sgd", reject_non_finite=True) as store:
        sync = StoreSynchronizer(store.name, 0, mode="asp", rule="sgd", sync_every=1, divergence=divergence,
                                 zero_copy=zero_copy)
        try:
            sync.start(engine, fresh=True)
            before = read_store(store)
            with torch.no_grad():
                model.weight.fill_(-3e38)  # finite, but 3e38 - (-3e38) overflows float32
            local = model_state(model)
            result = sync.sync(engine, 1.0, loss=torch.tensor(0.25))
            assert result.diverged == {0: 0.25}
            assert result.merged == (divergence == "skip")
            assert torch.equal(read_store(store), before)
            assert store.server_stats()["rejected"] == (0 if zero_copy else 1)
            if divergence == "skip":  # continues from the global state, which kept its old values
                assert torch.equal(model_state(model), before)
            else:  # stop: the model is left as it was; the loop raises
                assert torch.equal(model_state(model), local)
        finally:
            sync.close()


def test_on_the_cpu_pin_host_touches_no_cuda_api(monkeypatch):
    def no_cuda(*_a, **_k):
        raise AssertionError("a CPU run called a CUDA API")

    monkeypatch.setattr(torch.cuda, "cudart", no_cuda)
    monkeypatch.setattr(torch.cuda, "current_stream", no_cuda)
    model = small_model()
    engine = FakeEngine(model)
    with store_for(model, "asp", "blend") as store:
        sync = StoreSynchronizer(store.name, 0, mode="asp", rule="blend", sync_every=1)
        try:
            sync.start(engine, fresh=True)
            local_steps(model, seed=0)
            assert sync.sync(engine, 1.0).merged
            assert sync.flat is not None and not sync.flat.pin_host(torch.zeros(4)) and not sync.flat._registered
        finally:
            sync.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("mode", "rule"), [("bsp", "average"), ("asp", "blend"), ("asp", "sgd")])
def test_on_a_gpu_the_shared_memory_is_page_locked_and_the_states_equal_the_copy_path(mode, rule):
    results = {}
    for zero_copy in (False, True):
        model = small_model("cuda")
        engine = FakeEngine(model)
        with store_for(model, mode, rule) as store:
            sync = StoreSynchronizer(store.name, 0, mode=mode, rule=rule, sync_every=1, zero_copy=zero_copy)
            try:
                sync.start(engine, fresh=True)
                for period in range(3):
                    local_steps(model, seed=period)
                    assert sync.sync(engine, 0.8).merged
                assert sync.flat is not None
                if zero_copy:
                    # the reserved slots and both state copies seen so far, each registered once
                    assert 2 <= len(sync.flat._registered) <= 4
                    assert all(size == 4 * sync.flat.numel for size in sync.flat._registered.values())
                results[zero_copy] = (model_state(model).cpu(), read_store(store))
            finally:
                sync.close()
            assert not sync.flat._registered  # unregistered before the mapping can go
    assert torch.equal(results[True][0], results[False][0])
    assert torch.equal(results[True][1], results[False][1])


@pytest.mark.parametrize("layout", ["float32", "channels_last", "bfloat16"])
def test_gather_checked_and_scatter_keeping_equal_torchs_copies(layout):
    """The sync's one-pass copies (the store's kernels for contiguous float32 CPU tensors,
    torch's copies otherwise) write bitwise what `gather`/`scatter` write, the displacement
    `reference - state`, and the kept copy; they find a NaN anywhere, and bump the tensors'
    autograd versions as `copy_` would."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if layout == "bfloat16":
        model = model.to(torch.bfloat16)
    twin = copy.deepcopy(model)
    flat, twin_flat = FlatState(model), FlatState(twin)
    assert flat._kernels_apply() == (layout == "float32")
    state = flat.gather().clone()
    out = torch.full((flat.numel,), -1.0)
    assert flat.gather_checked(out) and torch.equal(out, state)
    reference = torch.randn(flat.numel)
    assert flat.gather_checked(out, reference=reference) and torch.equal(out, torch.sub(reference, state))

    new, keep = torch.randn(flat.numel), torch.empty(flat.numel)
    versions = [t._version for t in flat.tensors]
    flat.scatter_keeping(new, keep)
    twin_flat.scatter(new)
    assert torch.equal(flat.gather(), twin_flat.gather()) and torch.equal(keep, new)
    assert all(t._version > v for t, v in zip(flat.tensors, versions))
    flat.scatter_keeping(new * 2)  # nothing kept
    twin_flat.scatter(new * 2)
    assert torch.equal(flat.gather(), twin_flat.gather())

    for tensor in (model[0].weight, model[1].running_var, model[3].bias):
        with torch.no_grad():
            saved = tensor.detach().clone()
            tensor[(-1,) * tensor.dim()] = math.nan
        assert not flat.gather_checked(out), tensor.shape
        with torch.no_grad():
            tensor.copy_(saved)
    assert flat.gather_checked(out)


def test_the_copy_kernels_refuse_what_they_cannot_copy_in_one_line():
    from dbl_ps.parameter_store import gather_into, scatter_from

    a, b = torch.randn(5), torch.randn(7)
    with pytest.raises(ValueError, match="sources hold 12 values in all but out has 11"):
        gather_into([a, b], torch.empty(11))
    out = torch.empty(12)
    with pytest.raises(ValueError, match="out overlaps sources"):
        gather_into([out[:5], b], out)
    with pytest.raises(TypeError, match="float32"):
        gather_into([a.double(), b], out)
    with pytest.raises(ValueError, match="targets\\[0\\] overlaps targets\\[1\\]"):
        scatter_from(torch.randn(12), [out[:5], out[:7]])
    with pytest.raises(ValueError, match="copy hold 11 values"):
        scatter_from(torch.randn(12), [a, b], torch.empty(11))
