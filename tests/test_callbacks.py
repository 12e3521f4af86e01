"""Users' callbacks on the run's events (`callbacks:` / `Trainer(callbacks=)`): called on the
main process in every mode, in the run's order; one that raises is reported once and training
goes on; one that raises StopTraining stops the run after the epoch's checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from dbl_ps.metrics import read_metrics
from dbl_ps.training.events import RunCallback, StopTraining
from launch_helpers import launch_env, torchrun_train
from test_driver_inprocess import drive

SHORT = ["schedule.epochs=2", "schedule.milestones=[]"]


class Recorder(RunCallback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_run_start(self, run: dict) -> None:
        self.events.append(("on_run_start", run["start_epoch"], run["resumed"], run["plan"]["sync"]["kind"]))

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        self.events.append(("on_epoch_end", epoch, "test_acc" in record))

    def on_checkpoint(self, epoch: int, folder) -> None:
        self.events.append(("on_checkpoint", epoch, (Path(folder) / "model.pt").is_file()))

    def on_run_end(self, summary: dict) -> None:
        self.events.append(("on_run_end", summary["status"]))


class Broken(RunCallback):
    def __init__(self) -> None:
        self.calls = 0

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        self.calls += 1
        raise ValueError("my dashboard is down")


class StopAfterFirst(RunCallback):
    def on_epoch_end(self, epoch: int, record: dict) -> None:
        raise StopTraining("enough")


def test_callbacks_hear_the_runs_events_in_order(tmp_path):
    recorder = Recorder()
    lines: list[str] = []
    driver, _, summary = drive(tmp_path / "run", *SHORT, user_callbacks=[recorder], log=lines.append)
    assert recorder.events == [("on_run_start", 0, False, "store"),
                               ("on_epoch_end", 0, True), ("on_checkpoint", 0, True),
                               ("on_epoch_end", 1, True), ("on_checkpoint", 1, True),
                               ("on_run_end", "finished")]


def test_a_callback_that_raises_is_reported_once_and_training_goes_on(tmp_path):
    broken, recorder = Broken(), Recorder()
    lines: list[str] = []
    _, _, summary = drive(tmp_path / "run", *SHORT, user_callbacks=[broken, recorder], log=lines.append)
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert broken.calls == 1  # off after its first failure
    assert [e[0] for e in recorder.events].count("on_epoch_end") == 2  # the others are still called
    warned = [line for line in lines if "my dashboard is down" in line]
    assert len(warned) == 1 and "Broken" in warned[0] and "training goes on" in warned[0], lines


def test_stop_training_from_a_callback_stops_after_the_checkpoint_and_resumes(tmp_path):
    _, _, summary = drive(tmp_path / "run", *SHORT, user_callbacks=[StopAfterFirst()])
    assert summary["status"] == "interrupted"
    meta = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert (meta["next_epoch"], meta["status"]) == (1, "interrupted")  # epoch 0's checkpoint kept
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [0]


PLUGIN = textwrap.dedent("""
    import json, os
    from dbl_ps.training.events import RunCallback

    class Log(RunCallback):
        def __init__(self):
            self.path = os.environ["CALLBACK_LOG"]

        def _write(self, *event):
            with open(self.path, "a") as f:
                f.write(json.dumps([os.environ.get("RANK", "launcher"), *event]) + "\\n")

        def on_run_start(self, run):
            self._write("on_run_start", run["plan"]["sync"]["kind"])

        def on_epoch_end(self, epoch, record):
            self._write("on_epoch_end", epoch)

        def on_checkpoint(self, epoch, folder):
            self._write("on_checkpoint", epoch)

        def on_run_end(self, summary):
            self._write("on_run_end", summary["status"])
""")


def test_a_callback_by_import_path_runs_on_the_main_process_in_every_mode(tmp_path):
    """`callbacks=[my_callbacks:Log]` from the current directory, in `dbl-ps train` on one machine
    and under torchrun: the same events, once per run (the launcher, rank 0), not per worker."""
    (tmp_path / "my_callbacks.py").write_text(PLUGIN)
    run = ["dbl.workers=2", "dbl.small=0", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", *SHORT,
           "data.train_limit=400", "data.test_limit=100", "callbacks=[my_callbacks:Log]"]
    expected = {"store": [["on_run_start", "store"], ["on_epoch_end", 0], ["on_checkpoint", 0], ["on_epoch_end", 1],
                          ["on_checkpoint", 1], ["on_run_end", "finished"]]}
    expected["collective"] = [["on_run_start", "collective"], *expected["store"][1:]]
    for mode in ("store", "collective"):
        log = tmp_path / f"{mode}.jsonl"
        env = {"CALLBACK_LOG": str(log)}
        if mode == "store":
            proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir",
                                   str(tmp_path / mode), *run], capture_output=True, text=True, timeout=300,
                                  env=launch_env(**env), cwd=tmp_path)
        else:
            proc = torchrun_train(2, "--run-dir", str(tmp_path / mode), *run, cwd=tmp_path, **env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert {e[0] for e in events} == {"launcher" if mode == "store" else "0"}, events
        assert [e[1:] for e in events] == expected[mode]
