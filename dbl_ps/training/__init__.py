"""The training core: one worker loop (`loop.WorkerLoop`) over two small interfaces,
an `engine.Engine` (plain torch here; DeepSpeed and FSDP2 in `dbl_ps.integrations`) and a
`sync.Synchronizer` (`dbl_ps.synchronizers`: the parameter store, torch.distributed);
the epoch finisher (`finisher`), the run directory and checkpoint format (`rundir`),
a run's plan, solved once and saved in plan.json (`run_plan`), its time models
(`time_models`), its model (`run_model`), a worker's steps, syncs and seeds (`steps`), the
threads of each worker (`cores`), and the messages and events between them."""

from dbl_ps.training.engine import Engine, TorchEngine
from dbl_ps.training.events import Callback, Callbacks, StopTraining
from dbl_ps.training.finisher import EpochFinisher, Evaluator, epoch_record
from dbl_ps.training.loop import DivergedError, EpochState, WorkerLoop
from dbl_ps.training.messages import WORKER_KEYS, EpochReport, Progress
from dbl_ps.training.rundir import CheckpointError, RunDirectory, new_run_dir
from dbl_ps.training.sync import Synchronizer, SyncResult
from dbl_ps.training.topology import LaunchError, Topology

__all__ = ["Engine", "TorchEngine", "Callback", "Callbacks", "StopTraining", "EpochFinisher", "Evaluator",
           "epoch_record", "DivergedError", "EpochState", "WorkerLoop", "WORKER_KEYS", "EpochReport", "Progress", "CheckpointError",
           "RunDirectory", "new_run_dir", "Synchronizer", "SyncResult", "LaunchError", "Topology"]
