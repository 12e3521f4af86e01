"""Share-weighted model averaging across workers over a ``torch.distributed`` group.

The one implementation of the DBSL merge for multi-process engines (DeepSpeed
collective mode, FSDP groups): every rank contributes its tensors with its merge
weight ``f_i`` (``d_i / d_L`` from the plan) and receives

    w  <-  sum_i f_i w_i / sum_i f_i

for every parameter and every floating-point buffer (BatchNorm running mean and
variance travel with the weights, as on the parameter server). Integer buffers
(``num_batches_tracked``) stay with each rank.

How: each rank scales its tensors by ``f_i`` into one flat float32 (or float64)
buffer per bucket, appends ``f_i`` itself as the last element, and runs one
``all_reduce(SUM)`` per bucket; dividing by the reduced last element gives the
weighted mean and ``sum f_i`` in the same collective. Low-precision tensors
(bf16/fp16) are accumulated in float32 and rounded once on the way back.

Every rank of ``group`` must call ``weighted_average_`` the same number of times
with tensors of the same shapes in the same order (the usual collective rule);
the callers sync once per sync period, never per step, so ranks may take
different numbers of steps in between.

    from dbl_ps.training.averaging import averaged_tensors, weighted_average_
    total = weighted_average_(averaged_tensors(model), weight=f_i, group=pg)

For FSDP2 parameters (``DTensor``), ``averaged_tensors`` returns the local shard,
so the mean is taken shard by shard across groups over the ``replicate`` axis.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["weighted_average_", "averaged_tensors", "split_params_buffers", "all_finite", "DEFAULT_BUCKET_NUMEL"]

# Values per all_reduce: bounds the extra memory of the flat buffer (64 Mi floats = 256 MiB
# in float32) while keeping the number of collectives per sync small.
DEFAULT_BUCKET_NUMEL = 1 << 26


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own values: a DTensor's local shard, a plain tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def split_params_buffers(module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(parameters, floating buffers)`` of ``module`` in ``named_parameters()`` /
    ``named_buffers()`` order, as local tensors (DTensor -> its local shard)."""
    # detach(): a view sharing the parameter's storage, so in-place copies update the model.
    params = [_local(p.detach()) for _, p in module.named_parameters()]
    buffers = [_local(b.detach()) for _, b in module.named_buffers() if b.is_floating_point()]
    return params, buffers


def averaged_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every tensor the merge averages: parameters then floating buffers (local shards)."""
    params, buffers = split_params_buffers(module)
    return params + buffers


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the tensors' device: True when every value is finite.

    One float32 sum per tensor instead of an elementwise `isfinite` (which writes a mask
    the size of the model: 20x slower on a CPU): a NaN or an infinity makes the sum
    non-finite, and a sum of finite values only overflows past 3.4e38, which a state
    reaches only when it has diverged anyway."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum())


def _check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"merge weight {weight!r} must be a finite number > 0 (f_i = d_i / d_L from the plan)")
    return float(weight)


@torch.no_grad()
def weighted_average_(tensors: Sequence[torch.Tensor] | Iterable[torch.Tensor], weight: float,
                      group: dist.ProcessGroup | None = None, *, bucket_numel: int = DEFAULT_BUCKET_NUMEL,
                      dtype: torch.dtype = torch.float32) -> float:
    """Replace each tensor in place by ``sum_i f_i t_i / sum_i f_i`` over the ranks of
    ``group`` (None = the default group); returns ``sum_i f_i``.

    ``weight`` is this rank's ``f_i`` (> 0). ``dtype`` is the accumulation type
    (float32; float64 for exact checks). All tensors must be floating point and on one
    device (CPU for gloo, the rank's GPU for NCCL). A group of one rank returns at once.
    """
    weight = _check_weight(weight)
    tensors = [t for t in tensors]
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("weighted_average_ needs torch.distributed initialised (init_process_group) first")
    for i, t in enumerate(tensors):
        if not t.is_floating_point():
            raise ValueError(f"tensor {i} has dtype {t.dtype}; only floating-point tensors can be averaged")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"tensors to average live on several devices {sorted(map(str, devices))}; move them to one")
    device = next(iter(devices)) if devices else torch.device("cpu")
    if bucket_numel < 1:
        raise ValueError(f"bucket_numel={bucket_numel} must be >= 1")
    if dist.get_world_size(group) == 1:
        return weight

    # Buckets of consecutive tensors; a tensor larger than a bucket gets a bucket of its own.
    buckets: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if buckets[-1] and size + t.numel() > bucket_numel:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += t.numel()

    total = weight
    for bucket in buckets:
        numel = sum(t.numel() for t in bucket)
        flat = torch.empty(numel + 1, dtype=dtype, device=device)
        offset = 0
        for t in bucket:
            n = t.numel()
            flat[offset:offset + n].copy_(t.reshape(-1)).mul_(weight)
            offset += n
        flat[numel] = weight
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        total = float(flat[numel])
        flat[:numel].div_(flat[numel])
        offset = 0
        for t in bucket:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n
    return total
