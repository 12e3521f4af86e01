"""Mixed-batch data parallelism inside your own training script (re-exported by `dbl_ps.api`).

Different batch sizes per GPU in ordinary synchronous training: every rank trains its
planned share of one global batch per step, sized so the ranks' steps take the same time
on mixed hardware, and the gradient every rank applies is the gradient of the whole global
batch (`dbl_ps.training.gradient_weighting`). Three lines in an existing DDP script:

    import dbl_ps.api as dbl

    model = DDP(model)
    mine_model = dbl.measure_time_model(lambda b: train_step(*batch_of(b)), [32, 64, 128])  # first steps
    plan = dbl.plan_mixed_together(mine_model, global_batch=256, dataset_size=len(train_set))
    mixed = dbl.mixed_batch(model, plan)                 # DDP: a weighting communication hook
    mine = mixed.set_epoch(0)                            # this rank's batch, share, steps (same on every rank)
    sampler = dbl.ShareBatchSampler(len(train_set), mine.shares, mine.rank, mine.batch, seed=0)
    for images, labels in DataLoader(train_set, batch_sampler=sampler):
        loss = mixed.scale(loss_fn(model(images), labels))   # DDP: the loss as it is
        loss.backward(); optimizer.step(); optimizer.zero_grad()

The same `mixed_batch(target, plan)` takes a DeepSpeed engine (built with
`deepspeed_mixed_config`: one data-parallel group over every rank, this rank's micro-batch,
any ZeRO stage DeepSpeed runs) or an FSDP2 module (sharded over every rank); both average
gradients over the ranks themselves, so `scale(loss)` multiplies the loss by ``W b_i / B``.
Reference: docs/API.md, "Mixed-batch data parallelism".
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

from dbl_ps.integrations.deepspeed import check_rank_config, rank_batch_fields
from dbl_ps.planner import Plan, TimeModel, plan_mixed
from dbl_ps.rank_plan import APIError, RankPlan, rank_plan
from dbl_ps.training.gradient_weighting import GradientWeight, loss_scale_for, weighted_sum_hook
from dbl_ps.training.run_plan import plan_from_dict

__all__ = ["MixedBatch", "mixed_batch", "plan_mixed_ranks", "plan_mixed_together", "deepspeed_mixed_config"]


def plan_mixed_ranks(time_models: TimeModel | Sequence[TimeModel], *, global_batch: int | Sequence[int],
                     dataset_size: int, ranks: int | None = None, memory_caps: Sequence[int | None] | None = None,
                     resolutions: Sequence[int] = (0,)) -> Plan:
    """The mixed-batch plan: `global_batch` (one value, or one per resolution) split over the
    ranks so that their steps take the same time (`time_models`: one for all ranks or one per
    rank), every rank `dataset_size // global_batch` steps per epoch. `memory_caps`: each rank's
    largest batch per forward/backward (a larger share of the batch runs as micro-batches,
    priced into the split). `dbl_ps.planner.mixed` has the maths."""
    models = time_models if isinstance(time_models, TimeModel) else list(time_models)
    if ranks is None:
        ranks = len(models) if not isinstance(models, TimeModel) else \
            (dist.get_world_size() if dist.is_initialized() else None)
    if ranks is None:
        raise APIError("plan_mixed_ranks: give ranks= or call it after torch.distributed.init_process_group")
    batches = [global_batch] * len(resolutions) if isinstance(global_batch, int) else list(global_batch)
    if len(batches) != len(resolutions):
        raise APIError(f"global_batch={global_batch!r}: give one value or one per resolution {list(resolutions)}")
    return plan_mixed({r: models for r in resolutions}, dict(zip(resolutions, batches)), ranks, dataset_size,
                      memory_caps)


def plan_mixed_together(time_model: TimeModel, *, global_batch: int | Sequence[int], dataset_size: int,
                        memory_cap: int | None = None, resolutions: Sequence[int] = (0,),
                        group: Any = None) -> Plan:
    """`plan_mixed_ranks` from every rank's own measured time model and memory cap: one
    all-gather, then the same (deterministic) plan on every rank."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (time_model.alpha, time_model.beta, memory_cap), group=group)
    return plan_mixed_ranks([TimeModel(alpha=a, beta=b) for a, b, _ in gathered], global_batch=global_batch,
                            dataset_size=dataset_size, ranks=len(gathered),
                            memory_caps=[c for _, _, c in gathered], resolutions=resolutions)


def _kind(target: Any) -> str:
    if isinstance(target, torch.nn.parallel.DistributedDataParallel):
        return "ddp"
    if type(target).__name__ in ("DeepSpeedEngine", "PipelineEngine") or \
            (hasattr(target, "module") and hasattr(target, "optimizer") and hasattr(target, "backward")):
        return "deepspeed"
    fsdp_module = getattr(getattr(torch.distributed, "fsdp", None), "FSDPModule", None)
    if fsdp_module is not None and isinstance(target, fsdp_module):
        return "fsdp"
    raise APIError(f"mixed_batch takes a DistributedDataParallel model, a DeepSpeed engine or an FSDP2 "
                          f"(fully_shard) module, not a {type(target).__name__}: wrap your model in DDP first")


class MixedBatch:
    """One rank's part of mixed-batch training (see the module doc); `mixed_batch()` makes it."""

    def __init__(self, target: Any, plan: Plan, *, rank: int | None = None, group: Any = None):
        if not dist.is_initialized():
            raise APIError("mixed_batch needs torch.distributed.init_process_group first")
        if not all(rp.global_batch for rp in plan.resolutions.values()):
            raise APIError("mixed_batch needs a mixed-batch plan (plan_mixed_ranks / plan_mixed_together), "
                                  "not a DBSL plan (plan_ranks)")
        world = dist.get_world_size(group)
        if plan.workers != world:
            raise APIError(f"the plan is for {plan.workers} ranks, but the process group has {world}")
        self.kind = _kind(target)
        self.plan = plan
        self.rank = dist.get_rank(group) if rank is None else rank
        self.world = world
        self.resolution = next(iter(plan.resolutions))
        self.gradient_weight = GradientWeight(self._weight(), group=group)
        if self.kind == "ddp":
            target.register_comm_hook(self.gradient_weight, weighted_sum_hook)

    def _weight(self) -> float:
        return self.plan[self.resolution].merge_weights[self.rank]

    @property
    def weight(self) -> float:
        """This rank's share of the global batch, ``b_i / B``."""
        return self.gradient_weight.weight

    def set_epoch(self, epoch: int, resolution: int | None = None, plan: Plan | None = None) -> RankPlan:
        """Start an epoch (at `resolution` under CPL; with `plan` after a re-plan) and return this
        rank's `RankPlan` (batch, shares, steps: the same steps on every rank)."""
        if plan is not None:
            if plan.workers != self.world or not all(rp.global_batch for rp in plan.resolutions.values()):
                raise APIError("set_epoch(plan=...): give a mixed-batch plan for the same ranks")
            self.plan = plan
        self.resolution = next(iter(self.plan.resolutions)) if resolution is None else resolution
        mine = rank_plan(self.plan, self.rank, self.resolution)
        self.gradient_weight.weight = self._weight()
        self.epoch = epoch
        return mine

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """This rank's loss (the mean over its samples) as the step must see it: unchanged under
        DDP (the hook weights the gradients), times ``W b_i / B`` for DeepSpeed and FSDP2, which
        average gradients over the ranks themselves."""
        if self.kind == "ddp":
            return loss
        return loss * loss_scale_for(self.weight, self.world)

    def take_wait_seconds(self) -> float:
        """DDP: seconds this rank waited for the others inside its steps since the last call
        (take it off the epoch's time before `replan_together`)."""
        return self.gradient_weight.take_wait()

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "resolution": self.resolution}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan = plan_from_dict(state["plan"])
        self.resolution = int(state["resolution"])
        self.gradient_weight.weight = self._weight()


def mixed_batch(target: Any, plan: Plan, *, rank: int | None = None, group: Any = None) -> MixedBatch:
    """Make `target` (a `DistributedDataParallel` model, a DeepSpeed engine, an FSDP2 module)
    train mixed batches from `plan`: for DDP a communication hook that weights each gradient
    bucket by ``b_i / B`` and sums (overlapped with backward); for DeepSpeed and FSDP2 the
    loss scale `MixedBatch.scale` applies. Call it on every rank before the first step."""
    return MixedBatch(target, plan, rank=rank, group=group)


def deepspeed_mixed_config(user_config: dict[str, Any], plan: Plan, rank: int, *,
                           resolution: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """A user's DeepSpeed config for one rank of mixed-batch training: one data-parallel group
    over every rank (DeepSpeed's default; no `mpu`), this rank's micro-batch from the plan and
    your `gradient_accumulation_steps` a on every rank (DeepSpeed's ZeRO stages reduce in every
    micro-step, so the ranks must take as many), `train_batch_size` = micro x a x ranks as
    DeepSpeed asserts. Returns `(config, notes)`; conflicts are one `DeepSpeedConfigError`."""
    r = next(iter(plan.resolutions)) if resolution is None else resolution
    batch = plan[r].batches[rank]
    config, notes = check_rank_config(user_config, batch, mixed=True)
    fields = rank_batch_fields(batch, int(config["gradient_accumulation_steps"]))
    config["train_batch_size"] = fields["train_micro_batch_size_per_gpu"] * fields["gradient_accumulation_steps"] * \
        plan.workers
    return config, notes
