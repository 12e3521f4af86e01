"""The training runtime: launcher (`Trainer`), worker processes, flat model state
and checkpoints. See `dbl_ps.runtime.launcher` for the data flow."""

from dbl_ps.runtime.launcher import StoreSetupError, Trainer, TrainingInterrupted, WorkerError, new_run_dir

__all__ = ["StoreSetupError", "Trainer", "TrainingInterrupted", "WorkerError", "new_run_dir"]
