"""The synchronizers a worker loop can hold (`dbl_ps.training.sync.Synchronizer`):

* `StoreSynchronizer`: the shared-memory parameter store of `dbl-ps train` on one
  machine (push, the store merges with the configured rule, pull);
* `CollectiveSynchronizer`: every rank of a multi-rank job, share-weighted averaging
  with `torch.distributed` collectives (NCCL on GPUs, gloo on CPUs).
"""

from dbl_ps.synchronizers.collective import CollectiveSynchronizer, init_distributed
from dbl_ps.synchronizers.store import StoreSynchronizer

__all__ = ["StoreSynchronizer", "CollectiveSynchronizer", "init_distributed"]
