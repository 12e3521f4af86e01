"""Where a process sits in a job: which worker it is, and which rank inside that worker.

`dbl-ps train` on one machine runs one process per worker (`Topology.single`).
Under `torchrun` or the `deepspeed` launcher every rank is a worker, or a group of
`group_size` consecutive ranks is one (FSDP): rank `r` is member `r % group_size`
of worker `r // group_size`. `read_topology` reads the launcher's environment and
checks it against the plan before any collective runs, so a launch that contradicts
the plan is one clear error on every rank rather than a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["LaunchError", "Topology", "read_topology", "launched_by_a_launcher"]


class LaunchError(RuntimeError):
    """The launch (world size, ranks per worker, environment) contradicts the plan."""


@dataclass(frozen=True)
class Topology:
    """`workers` groups of `group_size` consecutive ranks; `rank` is this process."""

    rank: int
    world: int
    local_rank: int
    group_size: int

    @classmethod
    def single(cls, worker: int, workers: int) -> "Topology":
        """A worker process of `dbl-ps train`: one rank per worker, no process group."""
        return cls(rank=worker, world=workers, local_rank=worker, group_size=1)

    @property
    def workers(self) -> int:
        return self.world // self.group_size

    @property
    def worker(self) -> int:
        return self.rank // self.group_size

    @property
    def member(self) -> int:
        return self.rank % self.group_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_a_launcher() -> bool:
    """True under torchrun or the deepspeed launcher (both set RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resume_command(run_dir: object) -> str:
    """What continues the run in `run_dir`, launched as this process was: plain `dbl-ps train
    --resume DIR`, or under torchrun / the deepspeed launcher the launcher's own command (one
    node; several: the same launch on every node)."""
    if not launched_by_a_launcher():
        return f"dbl-ps train --resume {run_dir}"
    world = os.environ["WORLD_SIZE"]
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or world
    if local != world:
        return f"the same launch on every node, with `-m dbl_ps train --resume {run_dir}`"
    if "LOCAL_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ:  # the deepspeed launcher's
        return f"deepspeed --num_gpus {local} --module dbl_ps train --resume {run_dir}"
    return f"torchrun --nproc_per_node {local} -m dbl_ps train --resume {run_dir}"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def read_topology(workers: int, group_size: int = 1) -> Topology:
    """The topology from the launcher's environment, checked against a plan for `workers`
    workers of `group_size` ranks each. Raises `LaunchError` (no collective has run)."""
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None or world is None:
        raise LaunchError("RANK and WORLD_SIZE are not set: start this with torchrun or the deepspeed launcher, "
                          "e.g. `torchrun --nproc_per_node 2 -m dbl_ps train --config FILE`")
    if group_size < 1:
        raise LaunchError(f"ranks per worker (group size, fsdp.ranks_per_worker) {group_size} must be >= 1")
    if world % group_size:
        raise LaunchError(f"WORLD_SIZE={world} is not divisible by the ranks per worker ({group_size}): the mesh "
                          f"(replicate x shard) needs WORLD_SIZE = workers x ranks per worker")
    if world // group_size != workers:
        raise LaunchError(
            f"the plan is for dbl.workers={workers} worker(s) of {group_size} rank(s) = {workers * group_size} "
            f"rank(s), but the launcher started WORLD_SIZE={world}; launch {workers * group_size} processes "
            f"(e.g. --nproc_per_node / --num_gpus) or set dbl.workers={world // group_size}")
    if not 0 <= rank < world:
        raise LaunchError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return Topology(rank=rank, world=world, local_rank=local_rank if local_rank is not None else rank,
                    group_size=group_size)


def launch_world_size() -> int | None:
    """WORLD_SIZE of the launch, None outside a launcher."""
    return _env_int("WORLD_SIZE")


def local_world_size(default: int) -> int:
    """Processes on this machine (torchrun sets LOCAL_WORLD_SIZE), for sharing its cores."""
    return _env_int("LOCAL_WORLD_SIZE") or default
