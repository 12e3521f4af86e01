"""FSDP2 DBSL workers: a worker is a group of ranks sharding one model; groups merge per sync period.

A 2-D device mesh ``(replicate, shard)`` of shape ``(workers, ranks_per_worker)``:
rank ``r`` is member ``r % ranks_per_worker`` of worker group ``r // ranks_per_worker``.

* ``shard`` axis (inside a worker group): ``fully_shard`` (FSDP2) on that 1-D sub-mesh
  shards parameters, gradients and optimizer state and runs the group in lockstep;
  each member trains on its slice of the group's batch (the plan's ``b_i``), so the
  group is one data-parallel worker with batch ``b_i``.
* ``replicate`` axis (across groups): nothing on every step (that is what lets
  groups take different numbers of steps with different batch sizes); at each sync
  point every member replaces its local shard by the share-weighted mean of the same
  shard across groups, ``sum f_i w_i / sum f_i`` (``averaging.weighted_average_`` on
  the replicate process group). BatchNorm statistics (replicated, not sharded, and
  different on each member) are averaged over the whole world with the same weights,
  which is the weighted mean over groups of each group's member mean.

Groups ``0 .. n_S-1`` are the small-batch workers. The loop (schedule, shares,
sync points, rank-0 evaluation and metrics) is ``collective.CollectiveTrainer``.

Checkpoints use ``torch.distributed.checkpoint``: ``model/`` (the global model,
saved once: the groups' identical shards are de-duplicated) and ``optim_group<g>/``
(each group's momentum, written by that group's ranks). Loading reshards, so a run
resumes onto another ``ranks_per_worker`` or another number of groups (a group
without a saved counterpart takes the momentum of the last saved group).

    torchrun --nproc_per_node 4 -m dbl_ps.integrations.fsdp --config FILE --ranks-per-worker 2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dbl_ps.integrations.averaging import split_params_buffers, weighted_average_
from dbl_ps.integrations.collective import (
    CollectiveTrainer,
    LaunchError,
    Topology,
    WorkerEngine,
    plain_sgd,
    base_arg_parser,
    load_run_config,
    run_main,
)

__all__ = ["FSDPEngine", "build_mesh", "apply_fsdp", "main"]


def build_mesh(topo: Topology, device: torch.device) -> Any:
    """The ``(replicate, shard)`` mesh of shape ``(workers, ranks_per_worker)``."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (topo.workers, topo.group_size), mesh_dim_names=("replicate", "shard"))


def apply_fsdp(module: nn.Module, shard_mesh: Any, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """``fully_shard`` every residual block, then the root, on the 1-D ``shard`` mesh."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from dbl_ps.models import RESIDUAL_BLOCKS

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    for m in module.modules():
        if isinstance(m, RESIDUAL_BLOCKS):
            fully_shard(m, mesh=shard_mesh, mp_policy=mp)
    fully_shard(module, mesh=shard_mesh, mp_policy=mp)
    if param_dtype is not None:
        # FSDP2 casts parameters for compute, not buffers; BatchNorm needs its running
        # statistics in its weight's dtype (they are kept in param_dtype, merged in fp32).
        for m in module.modules():
            for name, b in m.named_buffers(recurse=False):
                if b.is_floating_point():
                    setattr(m, name, b.to(param_dtype))
    return module


class FSDPEngine(WorkerEngine):
    """One member of a worker group: an FSDP2-sharded module and SGD on its shards."""

    def __init__(self, module: nn.Module, cfg: Any, device: torch.device, topo: Topology, *,
                 param_dtype: torch.dtype | None = None):
        self.topo = topo
        self.device = device
        self.mesh = build_mesh(topo, device)
        self.replicate_group = self.mesh.get_group("replicate")
        self.shard_group = self.mesh.get_group("shard")
        self.module = apply_fsdp(module.to(device), self.mesh["shard"], param_dtype=param_dtype)
        self.optimizer = plain_sgd(self.module, cfg)
        self.loss_fn = nn.CrossEntropyLoss()

    # -- training

    def local_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gs, m = self.topo.group_size, self.topo.member
        if gs == 1:
            return images, labels
        if images.shape[0] < gs:  # a last partial batch smaller than the group: every member takes all of it
            return images, labels
        return images.tensor_split(gs)[m], labels.tensor_split(gs)[m]

    # -- the merge

    def sync_tensors(self) -> list[torch.Tensor]:
        params, _ = split_params_buffers(self.module)
        return params

    def sync_group(self) -> dist.ProcessGroup:
        return self.replicate_group

    def buffer_sync(self, weight: float) -> None:
        _, buffers = split_params_buffers(self.module)
        weighted_average_(buffers, weight, None)

    # -- state

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Rank 0 gets the whole model on the CPU (all-gathers inside every group)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.topo.is_main else None

    def full_state_dict_all(self) -> dict[str, torch.Tensor]:
        """Every rank gets its group's whole model (for checks)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().cpu().clone() for k, v in sd.items()}

    def _init_momentum(self) -> None:
        # SGD creates momentum lazily; DCP loads only into existing state.
        for group in self.optimizer.param_groups:
            if group["momentum"]:
                for p in group["params"]:
                    st = self.optimizer.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = torch.zeros_like(p)

    def save(self, folder: Path, topo: Topology) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        self._init_momentum()
        dcp.save({"model": get_model_state_dict(self.module)}, checkpoint_id=str(folder / "model"))
        dcp.save({"optim": get_optimizer_state_dict(self.module, self.optimizer)},
                 checkpoint_id=str(folder / f"optim_group{topo.worker}"), process_group=self.shard_group)

    def load(self, folder: Path, topo: Topology, meta: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                             set_model_state_dict, set_optimizer_state_dict)

        sd = {"model": get_model_state_dict(self.module)}
        dcp.load(sd, checkpoint_id=str(folder / "model"))
        set_model_state_dict(self.module, sd["model"])
        saved_groups = int(meta.get("workers", topo.workers))
        source = min(topo.worker, saved_groups - 1)
        self._init_momentum()
        osd = {"optim": get_optimizer_state_dict(self.module, self.optimizer)}
        dcp.load(osd, checkpoint_id=str(folder / f"optim_group{source}"), process_group=self.shard_group)
        set_optimizer_state_dict(self.module, self.optimizer, osd["optim"])


def main(argv: list[str] | None = None) -> int:
    p = base_arg_parser("python -m dbl_ps.integrations.fsdp",
                        "Collective DBSL/CPL training with FSDP2 worker groups (launch with torchrun).")
    p.add_argument("--ranks-per-worker", type=int, default=1,
                   help="ranks sharding one worker's model (the mesh's shard axis); WORLD_SIZE must be "
                        "dbl.workers x this (default 1)")
    p.add_argument("--param-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="FSDP2 compute dtype of parameters (bf16 on GPUs; shards and the merge stay fp32)")
    args = p.parse_args(argv)
    try:
        cfg = load_run_config(args)
    except ValueError as err:
        print(f"dbl-ps: error: {err}", file=sys.stderr, flush=True)
        return 2
    dtype = torch.bfloat16 if args.param_dtype == "bf16" else None

    def make_engine(module: nn.Module, cfg: Any, device: torch.device, topo: Topology) -> FSDPEngine:
        return FSDPEngine(module, cfg, device, topo, param_dtype=dtype)

    trainer = CollectiveTrainer(cfg, make_engine, run_dir=args.resume or args.run_dir, resume=bool(args.resume),
                                group_size=args.ranks_per_worker, timeout_s=args.timeout, engine_name="fsdp")
    return run_main(trainer)


if __name__ == "__main__":
    raise SystemExit(main())
