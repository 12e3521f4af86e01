"""The sync kinds (`sync:` in the config, `dbl_ps.registry.SYNCHRONIZERS`), each a
synchronizer a worker loop holds (`dbl_ps.training.sync.Synchronizer`) beside its coordinator
(`dbl_ps.training.coordinator.Coordinator`, what the run driver holds):

* `store`: the shared-memory parameter store of `dbl-ps train` on one machine
  (`StoreSynchronizer`: push, the store merges with the configured rule, pull;
  `StoreCoordinator`: the store's server half around the launcher's worker processes);
* `collective`: every rank of a multi-rank job, share-weighted averaging with
  `torch.distributed` collectives, NCCL on GPUs, gloo on CPUs (`CollectiveSynchronizer`,
  `CollectiveCoordinator`).
"""

from dbl_ps.synchronizers.collective import CollectiveCoordinator, CollectiveSynchronizer, init_distributed
from dbl_ps.synchronizers.store import StoreCoordinator, StoreSynchronizer

__all__ = ["StoreSynchronizer", "StoreCoordinator", "CollectiveSynchronizer", "CollectiveCoordinator",
           "init_distributed"]
