"""Reliability round 4 (issue 34): faults a hostile audit still found, each with real
processes and real files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbl_ps.run_ownership import LOCK_FILE, RunDirectoryBusy, RunLock, lock_owner, run_dir_problem


# --------------------------------------------------------------------------- the run lock


def _contend(run_dir: str, barrier, holders, rounds: int, doubles) -> None:
    for _ in range(rounds):
        barrier.wait()
        lock = None
        try:
            lock = RunLock(run_dir)
            with holders.get_lock():
                holders.value += 1
        except RunDirectoryBusy:
            pass
        barrier.wait()  # every contender has tried; nobody has released yet
        if lock is not None and holders.value != 1:
            with doubles.get_lock():
                doubles.value += 1
        barrier.wait()
        if lock is not None:
            lock.release()
        barrier.wait()
        with holders.get_lock():
            holders.value = 0
        barrier.wait()


_FORK = mp.get_context("fork")


def _three_at_a_barrier(target, run_dir: str, *args) -> None:
    """`target(run_dir, barrier, *args)` in three processes sharing one barrier; each must end cleanly."""
    barrier = _FORK.Barrier(3)
    procs = [_FORK.Process(target=target, args=(run_dir, barrier, *args)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)


def test_three_processes_taking_the_lock_at_a_barrier_never_both_hold_it(tmp_path):
    """A lock created but not yet written was taken for stale: 6 rounds in 400 had two owners."""
    holders, doubles = _FORK.Value("i", 0), _FORK.Value("i", 0)
    _three_at_a_barrier(_contend, str(tmp_path), holders, 600, doubles)
    assert doubles.value == 0, f"{doubles.value} holder-rounds saw two owners"
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_being_written_is_never_stale_and_one_nobody_holds_is(tmp_path):
    # a live process holding the lock before it wrote a word into it
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy, match="without having named itself yet"):
            RunLock(tmp_path)
        assert lock_owner(tmp_path) is not None
        assert (tmp_path / LOCK_FILE).read_text() == ""  # left as it was
    finally:
        holder.kill()
        holder.wait()
    # its holder is gone: empty or not, nobody holds it, so it is stale
    assert lock_owner(tmp_path) is None
    with RunLock(tmp_path):
        assert lock_owner(tmp_path).pid == os.getpid()


def _probe(run_dir: str, barrier, rounds: int, owners_seen) -> None:
    for _ in range(rounds):
        barrier.wait()
        if lock_owner(Path(run_dir)) is not None:
            with owners_seen.get_lock():
                owners_seen.value += 1


def test_ranks_probing_a_stale_lock_at_once_never_see_an_owner(tmp_path):
    """Every rank of a launch checks the run directory before the rendezvous (`--run-dir`,
    `--resume`): on a lock left by a killed run, one rank's probe (a brief flock) made another
    rank's probe report an owner, "in use by pid -1", and the launch failed."""
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 2 ** 22 + 7, "start_time": 1, "host": socket.gethostname(),
                                                  "command": "dbl-ps train (killed)"}))
    owners_seen = _FORK.Value("i", 0)
    _three_at_a_barrier(_probe, str(tmp_path), 300, owners_seen)
    assert owners_seen.value == 0, f"{owners_seen.value} probes of 900 saw an owner"


def test_a_lock_from_another_host_is_named_as_such_with_the_file_to_remove(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": 4242, "start_time": None, "host": "node-17.cluster",
                                "command": "dbl-ps train"}))
    assert socket.gethostname() != "node-17.cluster"
    with pytest.raises(RunDirectoryBusy) as exc:
        RunLock(tmp_path)
    line = str(exc.value)
    assert "another host, node-17.cluster" in line and f"remove {lock}" in line, line
    assert "another host, node-17.cluster" in run_dir_problem(tmp_path)
    assert json.loads(lock.read_text())["host"] == "node-17.cluster"  # untouched


# --------------------------------------------------------------------------- the planner


PLAN_4096 = ["plan", "--batch-large", "256", "--resolutions", "224", "--workers", "4096", "--tau", "1.05",
             "--dataset-size", "1281167", "--alpha", "0.05", "--beta", "0.001"]


@pytest.mark.parametrize("extra", [["--small", "1"], ["--small", "300"], ["--small", "300", "--json"]])
def test_the_plan_of_4096_workers_takes_under_a_second(extra):
    """4096 workers (the config's most) printed nothing for 300 s: the table planned every n_S."""
    script = ("import contextlib, io, sys, time; from dbl_ps.cli import build_parser, main; "
              "import dbl_ps.commands.plan, dbl_ps.planner; build_parser()\n"  # imports are not the planner's time
              "out, err = io.StringIO(), io.StringIO(); t = time.process_time()\n"
              "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
              "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
              "print('CPU', time.process_time() - t, len(out.getvalue().splitlines()))\n"
              "print(err.getvalue(), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", script, *PLAN_4096, *extra], capture_output=True, text=True,
                          timeout=60)
    _, seconds, lines = proc.stdout.strip().splitlines()[-1].split()
    assert float(seconds) < 1.0, proc.stdout[-2000:]
    if "--json" not in extra:
        assert int(lines) < 60
    assert "Traceback" not in proc.stderr


def test_plan_workers_beyond_the_configs_bound_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", *PLAN_4096[:6], "4097", *PLAN_4096[7:]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "dbl-ps plan: error: --workers=4097 must be in 1..4096 (as dbl.workers)", proc.stderr


# --------------------------------------------------------------------------- data sources

FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_bytes(array) -> bytes:
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.tobytes()


@pytest.mark.skipif(not FASHION.is_dir(), reason="the shared Fashion-MNIST copy is not on this machine")
def test_an_uncompressed_label_file_beside_a_different_gz_is_one_line_naming_both(tmp_path):
    """An all-zero uncompressed train-labels-idx1-ubyte beside the intact .gz was read without a
    word: rc 0, test accuracy 0.096, `finished`."""
    import numpy as np

    data = tmp_path / "fmnist"
    data.mkdir()
    for name in IDX_NAMES:
        (data / f"{name}.gz").symlink_to(FASHION / f"{name}.gz")
    (data / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(60000)))
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                           "data.source=fashion_mnist", f"data.path={data}", "dbl.workers=2", "dbl.alpha=[0.003]",
                           "dbl.beta=[0.0001]", "schedule.epochs=2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert line == (f"dbl-ps train: error: fashion_mnist train labels: {data / 'train-labels-idx1-ubyte'} and "
                    f"{data / 'train-labels-idx1-ubyte.gz'} are both there and differ (54,000 of 60,000 values); "
                    f"keep the right one and move the other away"), line
    assert not run_dir.exists() or not any(run_dir.iterdir())
    # the same all-zero file alone: one class, refused naming it
    (data / "train-labels-idx1-ubyte.gz").unlink()
    from dbl_ps.data import DataError, load_idx_dataset

    with pytest.raises(DataError, match=r"labels in .*train-labels-idx1-ubyte are all 0 \(one class among 60,000 "
                                        r"samples\): a classifier needs at least 2 classes"):
        load_idx_dataset(data, "fashion_mnist")


def test_two_identical_copies_of_an_idx_file_are_read_and_a_one_class_test_split_is_refused(tmp_path):
    import gzip

    import numpy as np

    from dbl_ps.data import DataError, load_idx_dataset

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10, rng.integers(0, 256, (10, 28, 28)),
              np.arange(10) % 10]
    for name, array in zip(IDX_NAMES, arrays):
        (tmp_path / name).write_bytes(_idx_bytes(array))
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    assert load_idx_dataset(tmp_path, "mnist").train.labels.tolist() == (np.arange(20) % 10).tolist()
    for name in IDX_NAMES[3:]:
        (tmp_path / f"{name}.gz").unlink()
        (tmp_path / name).write_bytes(_idx_bytes(np.full(10, 3)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte are all 3 .one class among 10 samples"):
        load_idx_dataset(tmp_path, "mnist")


# --------------------------------------------------------------------------- trackers

BAD_TRACKERS = '''
import sys, time

class Sink:
    def __init__(self, how):
        self.how = how
    def log(self, step, record):
        if self.how == "raise":
            raise RuntimeError("tracker log failed")
        if self.how == "hang" and step == 1:
            time.sleep(3600)
        if self.how == "exit":
            sys.exit(5)
    def close(self):
        pass

def raising(cfg, run_dir, **kw):
    return Sink("raise")

def hanging(cfg, run_dir, **kw):
    return Sink("hang")

def exiting(cfg, run_dir, **kw):
    return Sink("exit")

def failing_open(cfg, run_dir, **kw):
    raise ConnectionError("no tracking server at http://localhost:1")

def not_a_tracker(cfg, run_dir, **kw):
    return 42
'''

FT = ["dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0001]", "schedule.epochs=3", "schedule.milestones=[2]",
      "schedule.warmup_epochs=0", "data.train_limit=300", "store.mode=bsp", "store.rule=average"]


def test_trackers_that_raise_hang_exit_or_are_no_trackers_never_stop_training(tmp_path):
    """A tracker whose log() raised ended the run with a traceback; one raising when opened gave a
    30-line traceback; a hanging one hung the run; sys.exit(5) inside one exited with no line."""
    (tmp_path / "bad_trackers.py").write_text(BAD_TRACKERS)
    names = ["raising", "hanging", "exiting", "failing_open", "not_a_tracker"]
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir), *FT,
                           f"tracking.trackers=[{', '.join(f'bad_trackers:{n}' for n in names)}, csv]",
                           "tracking.timeout=3"], capture_output=True, text=True, timeout=300, env=env)
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    warnings = [line for line in out.splitlines() if line.startswith("warning: tracker")]
    assert len(warnings) == 5, warnings  # each named once
    for name, what in [("raising", "log() raised RuntimeError: tracker log failed"),
                       ("hanging", "log() did not return within 3 s"), ("exiting", "log() raised SystemExit: 5"),
                       ("failing_open", "failing_open() raised ConnectionError: no tracking server"),
                       ("not_a_tracker", "its factory returned int 42, not a sink")]:
        assert any(f"tracker 'bad_trackers:{name}'" in w and what in w for w in warnings), (name, warnings)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert json.loads((run_dir / "checkpoint.json").read_text())["next_epoch"] == 3
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 4  # the good tracker saw every epoch
    assert took < 120


# --------------------------------------------------------------------------- signals while a run starts


def _train(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dbl_ps", "train", "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else f"no {path}"


# the time model is measured (no dbl.alpha/beta): seconds of start-up before any worker
MEASURED = ["dbl.workers=2", "schedule.epochs=2", "schedule.milestones=[1]", "data.train_limit=300"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_sigterm_or_sighup_while_a_run_starts_is_one_line_and_leaves_a_directory_that_starts_again(tmp_path, sig):
    """`timeout`, `docker stop`, a pre-emption or a closed SSH session during the data loading
    or the time-model measurement killed the launcher without a word and left only run.lock;
    then --resume said "not a run directory" and --run-dir "not empty; resume it"."""
    run_dir = tmp_path / "run"
    proc = _train("--run-dir", str(run_dir), *MEASURED)
    try:
        _wait_for(run_dir / LOCK_FILE, proc)
        time.sleep(0.5)  # loading the data or measuring the time model
        assert not (run_dir / "plan.json").exists()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip() == f"dbl-ps train: {sig.name} before training started; nothing to resume", err[-2000:]
    assert not run_dir.exists()  # the run made it and removed it again: nothing left, no lock
    # a start killed outright (SIGKILL) leaves its lock: --run-dir starts there again, --resume says so
    run_dir.mkdir()
    stale = subprocess.run([sys.executable, "-c", "import sys; from dbl_ps.run_ownership import RunLock; "
                            "RunLock(sys.argv[1]); import os; os._exit(0)", str(run_dir)], timeout=60)
    assert stale.returncode == 0 and (run_dir / LOCK_FILE).exists()
    resumed = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 2 and f"start it again with --run-dir {run_dir}" in resumed.stderr, resumed.stderr
    assert run_dir_problem(run_dir) is None


def test_a_stop_signal_that_code_turned_into_another_error_still_stops_the_start():
    """CI: SIGTERM arrived while sklearn imported scipy's pybind11 extension, which turned the
    handler's KeyboardInterrupt into ImportError("initialization failed"): the launcher then
    failed with that traceback (rc 1) instead of stopping in one line (rc 130)."""
    from dbl_ps.runtime.signals import interrupt_on_signals, received

    def import_a_c_extension():  # what pybind11 does with any error raised during a module's init
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("initialization failed")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as stopped:
        with interrupt_on_signals():
            import_a_c_extension()
    assert isinstance(stopped.value.__cause__, ImportError) and received() == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers before are back
    with pytest.raises(ImportError):  # no signal: an error stays that error
        with interrupt_on_signals():
            raise ImportError("initialization failed")



SIGNAL_IN_AN_IMPORT = """
def data():  # what importing scipy did when the signal came: the handler's KeyboardInterrupt
    try:     # left a string exec() (array_api_compat's clone_module) inside a C extension's
        exec("import os, signal, time; os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)", {})
    except KeyboardInterrupt:  # init, which made it an ImportError (pybind11)
        raise ImportError("initialization failed")
"""


@pytest.mark.parametrize("launcher", ["python -m dbl_ps", "torchrun"])
def test_sigterm_that_an_import_turned_into_an_import_error_stops_the_run_in_one_line(tmp_path, launcher):
    """The same stop in a real run, while the data loads: one line and status 130, no traceback
    (the launcher's start, and a rank under torchrun). A KeyboardInterrupt that once left a
    string exec() made `python -m dbl_ps` die of SIGINT at exit (CPython's mark of an
    unhandled Ctrl-C), whatever status it returned."""
    from launch_helpers import launch_env, torchrun_train

    (tmp_path / "signal_in_an_import.py").write_text(SIGNAL_IN_AN_IMPORT)
    args = ["--no-progress", *FT, "data.factory=signal_in_an_import:data", "data.num_classes=10"]
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if launcher == "torchrun":
        proc = torchrun_train(2, *args, cwd=tmp_path, **env)
        line = "dbl-ps train: SIGTERM: stopped; no epoch had completed: nothing to resume"
        ours = [x for x in proc.stderr.splitlines() if x.startswith("dbl-ps train:")]
        assert ours == [line] and "Traceback" not in proc.stderr.split("torch.distributed")[0], proc.stderr[-3000:]
        assert "exitcode  : 130" in proc.stderr, proc.stderr[-3000:]  # torchrun's report of the rank
    else:
        proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env=launch_env(**env))
        assert proc.returncode == 130, proc.stderr[-3000:]
        assert proc.stderr.strip() == "dbl-ps train: SIGTERM before training started; nothing to resume", proc.stderr


@pytest.mark.slow
def test_a_compare_stopped_while_its_first_sub_run_starts_continues_when_run_again(tmp_path):
    """Ctrl-C while the first sub-run started: every later `dbl-ps compare` stopped with `run
    directory .../baseline-s0 is not empty; resume it with --resume` (config.yaml and plan.json,
    no checkpoint.json); only deleting it by hand helped."""
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "dbl_ps", "compare", "--no-progress", "--methods", "baseline", "--out", str(out),
           "dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0001]", "schedule.epochs=2", "schedule.milestones=[1]",
           "data.train_limit=300", "schedule.warmup_epochs=0"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "baseline-s0" / "plan.json", first)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-2000:]
    assert "Traceback" not in err and not (out / "baseline-s0" / "checkpoint.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert json.loads((out / "baseline-s0" / "summary.json").read_text())["status"] == "finished"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


@pytest.mark.parametrize("launcher", ["store", "torchrun"])
def test_ctrl_c_while_workers_or_ranks_import_torch_is_one_line_without_tracebacks(tmp_path, launcher):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while the spawned
    workers, or torchrun's ranks, import torch printed a KeyboardInterrupt traceback per process."""
    from launch_helpers import free_port, launch_env

    run = ["--run-dir", str(tmp_path / "run"), "dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0001]",
           "schedule.epochs=2", "schedule.milestones=[1]", "data.train_limit=300"]
    if launcher == "store":
        cmd = [sys.executable, "-m", "dbl_ps", "train", "--no-progress", *run]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "dbl_ps", "train", *run]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=launch_env())
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(_children(proc.pid)) >= 2, proc.communicate()[1][-2000:] if proc.poll() is not None else "none"
        time.sleep(0.3)  # each child is importing torch now (seconds)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "KeyboardInterrupt" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("dbl-ps")]
    assert len(ours) == 1, err[-3000:]  # one line per run (torchrun adds its own report)
    if launcher == "store":
        assert proc.returncode == 130 and err.strip() == ours[0], err[-3000:]


@pytest.mark.slow
def test_a_second_ctrl_c_while_stopping_marks_the_checkpoint_interrupted(tmp_path):
    """A frozen worker keeps the launcher waiting while it stops; a second Ctrl-C then ends the
    wait. checkpoint.json still said `running` afterwards."""
    run_dir = tmp_path / "run"
    proc = _train("--run-dir", str(run_dir), *FT, "schedule.epochs=4", env=dict(os.environ, DBL_PS_FAIL_WORKER="1:1:stop"))
    try:
        _wait_for(run_dir / "checkpoint.json", proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)  # the launcher waits for the frozen worker to stop
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert json.loads((run_dir / "checkpoint.json").read_text())["status"] == "interrupted"
    assert err.strip().splitlines()[-1] == (f"dbl-ps train: SIGINT while stopping; the checkpoint of epoch 1 is kept; "
                                            f"continue with: dbl-ps train --resume {run_dir}"), err
    assert not (run_dir / LOCK_FILE).exists()


# --------------------------------------------------------------------------- a frozen store-mode worker


@pytest.mark.parametrize("mode", ["bsp", pytest.param("asp", marks=pytest.mark.slow)])
def test_a_frozen_store_mode_worker_is_named_within_the_worker_timeout_and_the_checkpoint_is_kept(tmp_path, mode):
    """`kill -STOP` of one worker after two epochs: 150 s later nothing had been said (under a
    launcher `launch.sync_timeout` names the rank; the store mode had no equivalent)."""
    run_dir = tmp_path / "run"
    store = ["store.mode=bsp", "store.rule=average"] if mode == "bsp" else ["store.mode=asp", "store.rule=blend"]
    proc = _train("--run-dir", str(run_dir), *FT[:-2], *store, "schedule.epochs=6", "schedule.milestones=[4]",
                  "store.worker_timeout=4", env=dict(os.environ, DBL_PS_FAIL_WORKER="1:2:stop"))
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    line = err.strip().splitlines()[-1]
    # it froze as epoch 3 began; its last messages (the report of epoch 2, even progress before it)
    # may still have been in its queue's feeder thread, frozen with it
    heard = re.search(r"\(last heard at (the end of epoch [12]|epoch [12], step \d+ of \d+)\)", line)
    assert line.startswith("dbl-ps train: error: worker 1 made no progress for ") and heard and \
        "store.worker_timeout, 4 s" in line, err[-2000:]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["next_epoch"] in (1, 2) and meta["status"] == "interrupted"
    assert line.endswith(f"the checkpoint of epoch {meta['next_epoch']} is kept: once that is fixed, `dbl-ps train "
                         f"--resume {run_dir}` continues from it"), line
    assert not (run_dir / LOCK_FILE).exists() and "Traceback" not in err


# --------------------------------------------------------------------------- a resume checks what it relies on


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A 4-epoch store-mode run stopped cleanly after epoch 2 (checkpoint of epoch 2, 2 workers)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir), *FT,
                           "schedule.epochs=4"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DBL_PS_STOP_AFTER_EPOCH="1"))
    assert proc.returncode in (0, 130), proc.stderr[-2000:]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["next_epoch"] == 2 and set(meta["files"]) == {"model.pt", "worker0.pt", "worker1.pt"}
    return run_dir


def _resume(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--resume", str(run_dir)],
                          capture_output=True, text=True, timeout=300)


def _damaged(stopped_run: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run, run_dir)
    folder = run_dir / "checkpoints" / "epoch00001"
    damage(run_dir, folder)
    return run_dir, folder


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


@pytest.mark.parametrize("case", ["worker_missing", "workers_swapped", "next_epoch_ahead"])
def test_a_resume_refuses_missing_swapped_or_disagreeing_checkpoint_files_in_one_line(stopped_run, tmp_path, case):
    """`rm checkpoints/epoch00002/worker1.pt` (or two workers' files swapped) then --resume: rc 0,
    no line, 47 tensors differed from the uninterrupted run; next_epoch edited far ahead:
    summary `finished` after 3 of 6 epochs."""
    def damage(run_dir: Path, folder: Path) -> None:
        if case == "worker_missing":
            (folder / "worker1.pt").unlink()
        elif case == "workers_swapped":
            _swap(folder / "worker0.pt", folder / "worker1.pt")
        else:
            meta = json.loads((run_dir / "checkpoint.json").read_text())
            (run_dir / "checkpoint.json").write_text(json.dumps({**meta, "next_epoch": 4}))

    run_dir, folder = _damaged(stopped_run, tmp_path, damage)
    before = {f: f.read_bytes() for f in run_dir.rglob("*") if f.is_file()}
    proc = _resume(run_dir)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = {"worker_missing": f"dbl-ps train: error: {folder / 'worker1.pt'} is missing (the checkpoint in "
                                  f"{run_dir / 'checkpoint.json'} was written with it); restore it, or start a new run",
                "workers_swapped": f"dbl-ps train: error: {folder / 'worker0.pt'} holds what the checkpoint wrote as "
                                   f"worker1.pt (were the two swapped?); restore the checkpoint's own file, or start "
                                   f"a new run",
                "next_epoch_ahead": f"dbl-ps train: error: {run_dir / 'checkpoint.json'} disagrees with itself: epoch "
                                    f"1, next_epoch 4, path 'checkpoints/epoch00001' (a checkpoint of epoch e "
                                    f"continues at e + 1 from checkpoints/epoch<e>); was it edited? restore it"}[case]
    assert proc.stderr.strip() == expected, proc.stderr
    assert {f: f.read_bytes() for f in run_dir.rglob("*") if f.is_file()} == before  # nothing changed


@pytest.mark.slow
@pytest.mark.parametrize("case", ["cut", "deleted"])
def test_a_resume_with_a_cut_or_missing_metrics_file_says_so_and_counts_the_epochs_trained(stopped_run, tmp_path,
                                                                                           case):
    """metrics.jsonl cut to its first line: no warning, `"epochs": 4` for a 6-epoch run; without
    metrics.jsonl a resume said nothing."""
    def damage(run_dir: Path, folder: Path) -> None:
        metrics = run_dir / "metrics.jsonl"
        if case == "cut":
            metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
        else:
            metrics.unlink()

    run_dir, _ = _damaged(stopped_run, tmp_path, damage)
    proc = _resume(run_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warning = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("warning:")]
    expected = ("lacks the records of epoch(s) 2 of the 2 the checkpoint holds" if case == "cut"
                else "is missing: the records of the 2 epoch(s) the checkpoint holds are gone")
    assert len(warning) == 1 and expected in warning[0], proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 4


# --------------------------------------------------------------------------- DeepSpeed's shared memory


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="POSIX shared memory under /dev/shm (Linux)")
def test_cleanup_lists_and_removes_stale_deepspeed_buffers_and_keeps_mapped_ones(tmp_path):
    from dbl_ps import deepspeed_shm

    uid = os.getuid()
    stale = Path(f"/dev/shm/deepspeed_allreduce_buffer_{uid}_127.0.0.1_1_0")
    used = Path(f"/dev/shm/deepspeed_allreduce_buffer_{uid}_127.0.0.1_1_1")
    for path in (stale, used):
        path.write_bytes(b"\0" * 4096)
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # an hour old: past the grace minute
    holder = subprocess.Popen([sys.executable, "-c", "import mmap, sys, time; f = open(sys.argv[1], 'r+b'); "
                               "m = mmap.mmap(f.fileno(), 0); print('mapped', flush=True); time.sleep(60)", str(used)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        listed = subprocess.run([sys.executable, "-m", "dbl_ps", "cleanup", "--list"], capture_output=True, text=True,
                                timeout=60)
        assert f"{stale}  0 MiB  DeepSpeed all-reduce buffer, stale: `dbl-ps cleanup` removes it" in listed.stdout
        assert f"{used}  0 MiB  DeepSpeed all-reduce buffer, in use" in listed.stdout, listed.stdout
        assert stale.exists()
        cleaned = subprocess.run([sys.executable, "-m", "dbl_ps", "cleanup"], capture_output=True, text=True,
                                 timeout=60)
        assert f"removed {stale}" in cleaned.stdout, cleaned.stdout
        assert not stale.exists() and used.exists()  # a live process maps it: kept
    finally:
        holder.kill()
        holder.wait()
        stale.unlink(missing_ok=True)
        used.unlink(missing_ok=True)
    assert deepspeed_shm.unlink_own_buffer(0) is False  # nothing of this process's to remove


# --------------------------------------------------------------------------- the next cases


def test_report_leaves_diverged_and_interrupted_runs_out_of_its_table(stopped_run, tmp_path):
    """`dbl-ps report` tabled diverged and interrupted runs as results."""
    import shutil

    import yaml

    runs = {}
    for name, status in (("finished", "finished"), ("diverged", "diverged"), ("interrupted", None)):
        run = tmp_path / name
        shutil.copytree(stopped_run, run)
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "name": name}))
        summary = json.loads((run / "summary.json").read_text())
        if status is not None:
            (run / "summary.json").write_text(json.dumps({**summary, "status": status}))
        runs[name] = run
    assert json.loads((runs["interrupted"] / "summary.json").read_text())["status"] == "interrupted"
    report = subprocess.run([sys.executable, "-m", "dbl_ps", "report", *map(str, runs.values()), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert (f"not finished, left out (--all keeps them): {runs['diverged']} (diverged); {runs['interrupted']} "
            f"(interrupted)") in report.stdout
    rows = [line.split()[0] for line in report.stdout.splitlines()[2:] if not line.startswith("report:")]
    assert rows == ["finished"], report.stdout
    kept = subprocess.run([sys.executable, "-m", "dbl_ps", "report", *map(str, runs.values()), "--all", "--out",
                           str(tmp_path / "all")], capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0 and "diverged (diverged)" in kept.stdout and \
        "interrupted (interrupted)" in kept.stdout, kept.stdout


@pytest.mark.slow
def test_a_diverged_store_mode_worker_stops_within_a_quarter_second_not_at_its_sync(tmp_path):
    """A diverged run took about a minute to exit: the loss was looked at only at the sync, so a
    worker trained its whole mini-epoch on NaN first."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                           "dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0001]", "schedule.epochs=2",
                           "schedule.lr=1e6", "data.source=synthetic", "data.synthetic.num_train=12000"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    found = re.search(r"worker (\d) diverged at epoch 1 step (\d+) \(loss (nan|inf)\)", proc.stderr)
    assert found, proc.stderr[-2000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    fewest = min(min(rp["steps"]) for rp in plan["per_resolution"].values())
    assert int(found.group(2)) < fewest / 2, (found.group(0), fewest)  # not at the end of its mini-epoch
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_a_model_or_data_factory_calling_sys_exit_is_one_error_not_a_clean_exit(tmp_path):
    """A model factory calling sys.exit(0) ended `dbl-ps train` with status 0, nothing trained."""
    (tmp_path / "exiting_factories.py").write_text(
        "import sys\n\ndef model(num_classes, **kw):\n    sys.exit(0)\n\ndef data():\n    sys.exit(3)\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    for override, line in [("model.name=exiting_factories:model",
                            "dbl-ps train: error: model.name='exiting_factories:model' called sys.exit(0) instead of "
                            "returning a model"),
                           ("data.factory=exiting_factories:data",
                            "dbl-ps train: error: data.factory 'exiting_factories:data' called sys.exit(3) instead "
                            "of returning (train, test) datasets")]:
        run_dir = tmp_path / override.split("=")[0]
        proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                               *FT, override, "data.num_classes=10"], capture_output=True, text=True, timeout=300,
                              env=env)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(line), proc.stderr[-2000:]
        assert not run_dir.exists()


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A valid PNG header claiming side x side pixels (PIL refuses it at open: a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.slow
def test_a_decompression_bomb_png_in_an_image_folder_is_one_line_naming_the_file(tmp_path):
    """A 51-line traceback that never named the file."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "images" / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(folder / f"{i}.png")
    bomb = tmp_path / "images" / "train" / "cat" / "huge.png"
    _bomb_png(bomb)
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir",
                           str(tmp_path / "run"), "data.source=imagefolder", f"data.path={tmp_path / 'images'}",
                           "dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0001]", "schedule.epochs=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (1, 2), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert f"image {bomb} is too large to decode safely" in line, proc.stderr[-2000:]


def _can_chattr(tmp_path: Path) -> bool:
    probe = tmp_path / "chattr-probe"
    probe.mkdir()
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0 if \
        __import__("shutil").which("chattr") else False
    if ok:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return ok


@pytest.mark.slow
def test_a_checkpoint_folder_made_immutable_mid_run_is_one_line_and_the_checkpoint_interrupted(tmp_path):
    """`chattr +i` on the checkpoint folder gave two tracebacks and left status `running`.
    Without chattr (no CAP_LINUX_IMMUTABLE) the folder is made read-only by a bind mount in a
    private mount namespace instead (root ignores file modes)."""
    from launch_helpers import can_mount_tmpfs

    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    cmd = [sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir), *FT,
           "schedule.epochs=30", "schedule.milestones=[20]"]
    env = dict(os.environ, DBL_PS_SLOW_WORKER="0:0.2")  # epochs of about a second: time to set the attribute
    if _can_chattr(tmp_path):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            _wait_for(run_dir / "checkpoint.json", proc)
            subprocess.run(["chattr", "+i", str(ckpts)], check=True)
            _, err = proc.communicate(timeout=300)
        finally:
            subprocess.run(["chattr", "-i", str(ckpts)], capture_output=True)
            if proc.poll() is None:
                proc.kill()
        code = proc.returncode
    elif can_mount_tmpfs("/mnt"):
        import shlex

        script = (f"{shlex.join(cmd)} 2>{tmp_path / 'err'} & pid=$!; while [ ! -e {run_dir / 'checkpoint.json'} ]; "
                  f"do sleep 0.02; done; mount --bind {ckpts} {ckpts} && mount -o remount,ro,bind {ckpts}; "
                  f"wait $pid; echo $? > {tmp_path / 'rc'}")
        subprocess.run(["unshare", "-m", "sh", "-c", script], timeout=300, env=env)
        err, code = (tmp_path / "err").read_text(), int((tmp_path / "rc").read_text())
    else:
        pytest.skip("neither chattr nor a private mount namespace here")
    assert code == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("dbl-ps train: error: worker ") and str(ckpts) in line and \
        "the checkpoint of epoch 1 is kept" in line, err[-3000:]
    assert json.loads((run_dir / "checkpoint.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("key", ["seed", "data.synthetic.seed"])
def test_a_huge_seed_is_one_config_error_naming_the_key(key):
    """`seed=10**23` failed with "Overflow when unpacking long long", naming no key."""
    from dbl_ps.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': got 100000000000000000000000, expected "
                                          r"an integer >= 0 and <= 9223372036854775807"):
        load_config(None, [f"{key}={10**23}"])
    assert load_config(None, [f"{key}={2**63 - 1}"]) is not None


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", "x" * 101])
def test_a_run_name_that_would_leave_out_dir_is_one_config_error(tmp_path, name):
    """The run directory is OUT_DIR/NAME-TIMESTAMP: `name=../escaped` wrote beside out_dir."""
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", f"out_dir={out}",
                           f"name={name}", *FT], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"dbl-ps train: error: config key 'name': got {name!r}, expected a file name of "
                                  f"1-100 characters without '/'"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, inside out_dir or beside it


def test_the_worker_watch_names_the_worker_behind_and_waits_longer_while_workers_warm_up_after_a_replan(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence past the timeout names the worker furthest behind; one worker still sending is
    enough to wait on; after a re-plan the silence may last REPLAN_WARMUP_TIMEOUT (compiling the
    new shapes), until every worker has trained again."""
    from dbl_ps.runtime import watch as watch_module
    from dbl_ps.training.messages import Progress

    now = [1000.0]
    monkeypatch.setattr(watch_module.time, "monotonic", lambda: now[0])
    watch = watch_module.ProgressWatch(workers=2, timeout=60.0)
    watch.start()
    watch.heard(Progress(worker=0, epoch=0, step=5, steps=10, batch=8, resolution=8, samples_per_s=1.0))
    watch.heard(Progress(worker=1, epoch=0, step=2, steps=10, batch=8, resolution=8, samples_per_s=1.0))
    now[0] += 59
    assert watch.stuck(done=set()) is None
    now[0] += 2
    assert watch.stuck(done=set()) == 1 and "last heard at epoch 1, step 2 of 10" in watch.line(1)
    watch.after_replan()
    assert watch.stuck(done=set()) is None  # warming up for the new shapes
    watch.heard(Progress(worker=0, epoch=1, step=1, steps=10, batch=8, resolution=8, samples_per_s=1.0))
    now[0] += watch_module.REPLAN_WARMUP_TIMEOUT - 1
    assert watch.stuck(done=set()) is None  # worker 1 still compiling
    now[0] += 2
    assert watch.stuck(done=set()) == 1  # hung while warming up: named, only later
    watch.heard(Progress(worker=1, epoch=1, step=1, steps=10, batch=8, resolution=8, samples_per_s=1.0))
    now[0] += 61
    assert watch.stuck(done=set()) == 0  # both trained again: the ordinary timeout (a tie names the first)
