"""Launchers around one run driver (`dbl_ps.runtime.driver.RunDriver`): `Trainer` (one
machine: the parameter store and one process per worker, `dbl_ps.runtime.launcher`) and
`run_collective` (every rank of a `torchrun` or `deepspeed` launch,
`dbl_ps.runtime.collective`). Both run the same driver and the same worker loop."""

from dbl_ps.runtime.collective import run_collective
from dbl_ps.runtime.driver import RunDriver, TrainingDiverged, TrainingInterrupted, WorkerError
from dbl_ps.runtime.launcher import StoreSetupError, Trainer
from dbl_ps.training.rundir import new_run_dir

__all__ = ["RunDriver", "run_collective", "StoreSetupError", "Trainer", "TrainingDiverged", "TrainingInterrupted",
           "WorkerError", "new_run_dir"]
