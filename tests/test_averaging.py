"""Share-weighted averaging over torch.distributed (gloo, spawned processes).

Each rank perturbs a model differently (parameters and BatchNorm statistics), saves
its pre-sync state, averages with its own weight, and saves the result; the test
computes sum f_i w_i / sum f_i independently from the saved pre-sync states.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dbl_ps.training.averaging import averaged_tensors, split_params_buffers, weighted_average_
from dbl_ps.models import build_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_model(rank: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_resnet", 10, in_channels=1)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(100 + rank)
        for t in averaged_tensors(model):
            t.add_(torch.randn(t.shape, generator=gen) * (rank + 1))
        for _, b in model.named_buffers():
            if not b.is_floating_point():
                b.fill_(7 * (rank + 1))  # num_batches_tracked: must stay per rank
    return model


def _worker(rank: int, world: int, port: int, out: str, weights: list[float], bucket: int, groups: list[list[int]] | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        group = None
        if groups is not None:
            made = [dist.new_group(g) for g in groups]
            group = next(pg for g, pg in zip(groups, made) if rank in g)
        model = _make_model(rank)
        torch.save(model.state_dict(), Path(out) / f"pre{rank}.pt")
        total = weighted_average_(averaged_tensors(model), weights[rank], group, bucket_numel=bucket)
        torch.save({"state": model.state_dict(), "total": total}, Path(out) / f"post{rank}.pt")
        # one bucket gives the same result
        again = _make_model(rank)
        weighted_average_(averaged_tensors(again), weights[rank], group)
        for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
        # bf16 tensors: accumulated in float32, rounded once
        t = torch.full((5,), float(rank + 1), dtype=torch.bfloat16)
        weighted_average_([t], weights[rank], group)
        torch.save(t, Path(out) / f"bf16_{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, weights: list[float], bucket: int = 1 << 26, groups: list[list[int]] | None = None) -> None:
    world = len(weights)
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path), weights, bucket, groups), nprocs=world,
                       start_method="spawn", join=True)


def _expected(pres: list[dict], weights: list[float], key: str) -> torch.Tensor:
    num = sum(w * p[key].double() for w, p in zip(weights, pres))
    return (num / sum(weights)).float()


def test_two_ranks_weighted_mean_of_params_and_bn_buffers(tmp_path: Path) -> None:
    weights = [0.8095238, 1.0]  # f_S = d_S / d_L (paper's CIFAR check values: 10625 / 13125), f_L = 1
    _run(tmp_path, weights, bucket=1000)  # many buckets, some tensors larger than one
    pres = [torch.load(tmp_path / f"pre{r}.pt") for r in range(2)]
    posts = [torch.load(tmp_path / f"post{r}.pt") for r in range(2)]
    assert posts[0]["total"] == pytest.approx(sum(weights))
    for key, value in pres[0].items():
        if value.is_floating_point():
            want = _expected(pres, weights, key)
            assert not torch.equal(pres[0][key], pres[1][key]), key
            for r in range(2):
                torch.testing.assert_close(posts[r]["state"][key], want, rtol=1e-6, atol=1e-6, msg=key)
            assert torch.equal(posts[0]["state"][key], posts[1]["state"][key]), f"{key}: ranks differ after the sync"
        else:  # integer buffers stay per rank
            for r in range(2):
                assert torch.equal(posts[r]["state"][key], pres[r][key]), key
    # bn running stats were part of it
    assert any("running_mean" in k for k in pres[0])
    bf = [torch.load(tmp_path / f"bf16_{r}.pt") for r in range(2)]
    want = (weights[0] * 1 + weights[1] * 2) / sum(weights)
    assert bf[0].dtype == torch.bfloat16
    torch.testing.assert_close(bf[0].float(), torch.full((5,), want), rtol=1e-2, atol=0)


@pytest.mark.slow  # the FSDP tests use subgroups (the replicate axis) in the default suite
def test_subgroups_average_only_inside_their_group(tmp_path: Path) -> None:
    # 4 ranks, replicate groups {0, 2} and {1, 3} (as FSDP's replicate axis with 2 shards per worker)
    weights = [0.5, 2.0, 1.0, 1.0]
    groups = [[0, 2], [1, 3]]
    _run(tmp_path, weights, groups=groups)
    pres = [torch.load(tmp_path / f"pre{r}.pt") for r in range(4)]
    posts = [torch.load(tmp_path / f"post{r}.pt") for r in range(4)]
    key = "fc.weight"
    for g in groups:
        want = _expected([pres[r] for r in g], [weights[r] for r in g], key)
        for r in g:
            torch.testing.assert_close(posts[r]["state"][key], want, rtol=1e-6, atol=1e-6)
            assert posts[r]["total"] == pytest.approx(sum(weights[i] for i in g))
    assert not torch.allclose(posts[0]["state"][key], posts[1]["state"][key])


def test_bad_inputs_without_a_process_group() -> None:
    t = [torch.zeros(3)]
    for bad in (0.0, -1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="merge weight"):
            weighted_average_(t, bad)  # type: ignore[arg-type]
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            weighted_average_(t, 1.0)


def test_single_rank_group_is_a_no_op(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = _make_model(0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert weighted_average_(averaged_tensors(model), 0.7) == pytest.approx(0.7)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])
        with pytest.raises(ValueError, match="dtype"):
            weighted_average_([torch.zeros(2), torch.zeros(2, dtype=torch.int64)], 1.0)
    finally:
        dist.destroy_process_group()


def test_split_params_buffers_order_matches_state_dict() -> None:
    model = build_model("small_resnet", 10, in_channels=1)
    params, buffers = split_params_buffers(model)
    assert len(params) == len(list(model.parameters()))
    assert len(buffers) == sum(1 for _, b in model.named_buffers() if b.is_floating_point())
    with torch.no_grad():
        params[0].fill_(3.0)  # views: writes reach the model
    assert float(next(model.parameters()).detach().flatten()[0]) == 3.0


def test_deepspeed_integration_imports_lazily_and_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dbl_ps._optional import MissingExtraError
    from dbl_ps.integrations import deepspeed as ds_integration, fsdp  # noqa: F401 - no deepspeed needed

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"dbl-ps\[deepspeed\]"):
        ds_integration._deepspeed()
