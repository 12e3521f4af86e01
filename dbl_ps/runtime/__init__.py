"""Launchers: `Trainer` (one machine: the parameter store and one process per worker,
`dbl_ps.runtime.launcher`) and `CollectiveRunner` (every rank of a `torchrun` or
`deepspeed` launch, `dbl_ps.runtime.collective`). Both run the same worker loop."""

from dbl_ps.runtime.collective import CollectiveRunner, run_collective
from dbl_ps.runtime.launcher import StoreSetupError, Trainer, TrainingDiverged, TrainingInterrupted, WorkerError
from dbl_ps.training.rundir import new_run_dir

__all__ = ["CollectiveRunner", "run_collective", "StoreSetupError", "Trainer", "TrainingDiverged", "TrainingInterrupted",
           "WorkerError", "new_run_dir"]
