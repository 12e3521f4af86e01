"""Sample-weighted gradients inside every step: mixed-batch data parallelism.

Rank ``i`` trains ``b_i`` samples of one global batch ``B = sum_i b_i`` per step, with its loss
the mean over its own samples. The gradient every rank applies is

    g = sum_i b_i g_i / B

which is exactly the gradient of the union of the ranks' batches (mean-reduced loss): with no
BatchNorm, one process training on the concatenated batch takes the same step. Stock DDP
averages instead (``sum_i g_i / W``), which weighs a rank with a quarter of the batch like one
with three quarters.

For DDP this is a communication hook (`weighted_sum_hook`, registered with
`DistributedDataParallel.register_comm_hook`): each gradient bucket is multiplied by this
rank's weight ``b_i / B`` and all-reduced with SUM, bucket by bucket while backward runs,
as DDP's own `allreduce_hook` does with ``1 / W``; no second pass after backward.
Engines that average by ``W`` themselves (DeepSpeed, FSDP2's reduce-scatter) get the same
result by scaling each rank's loss with ``W b_i / B`` (`loss_scale_for`).

The hook also times the step's last bucket from the moment this rank hands it over until its
all-reduce completes, which it cannot before the slowest rank got there: time spent waiting
for the other ranks (`GradientWeight.take_wait`), which re-planning must not count as this
rank's own slowness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["GradientWeight", "weighted_sum_hook", "loss_scale_for"]


@dataclass
class GradientWeight:
    """The hook's state: this rank's weight ``b_i / B`` (set at every epoch start: the batch
    changes with the resolution and with a re-plan) and the process group (None: the world)."""

    weight: float
    group: Any = None
    waited: float = field(default=0.0)  # seconds waited for the other ranks since `take_wait`

    def take_wait(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited


def weighted_sum_hook(state, bucket):
    """DDP communication hook `(GradientWeight, dist.GradBucket) -> Future[Tensor]`: ``bucket *=
    weight``, then ``all_reduce(SUM)`` (asynchronous, so DDP overlaps it with the rest of
    backward). The step's last bucket cannot finish reducing before the slowest rank has
    computed its gradients: the time from handing it over to its completion counts as waiting
    for the others. Unannotated on purpose: DDP checks the annotations' objects, and this
    module's postponed (string) annotations would fail that check."""
    buffer = bucket.buffer()
    buffer.mul_(state.weight)
    future = dist.all_reduce(buffer, group=state.group, async_op=True).get_future()
    if not bucket.is_last():
        return future.then(lambda fut: fut.value()[0])
    handed = time.perf_counter()

    def done(fut: torch.futures.Future) -> torch.Tensor:
        state.waited += time.perf_counter() - handed
        return fut.value()[0]

    return future.then(done)


def loss_scale_for(weight: float, world: int) -> float:
    """The factor on a rank's mean loss that makes an engine which averages gradients over
    `world` ranks (DeepSpeed, FSDP2) apply ``sum_i b_i g_i / B``: ``world * b_i / B``."""
    return world * weight
