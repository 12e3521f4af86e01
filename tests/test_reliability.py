"""Runs that cannot be lost or mis-reported (issue 16): real processes, real files.

* one owner per run directory: a second `dbl-ps train --resume` (or `--run-dir`) on a
  directory that is still training is one error naming the owner, and changes nothing;
  an owner killed with SIGKILL leaves a stale lock that the next resume takes over;
* a frozen rank is named within the sync timeout;
* a full disk (a real tmpfs) is one line, the last checkpoint is kept, the run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbl_ps.metrics import read_metrics
from dbl_ps.run_ownership import LOCK_FILE, RunDirectoryBusy, RunLock, lock_owner
from launch_helpers import can_mount_tmpfs, free_port, launch_env

# digits, 2 workers, a fixed time model (no measuring), small enough for seconds per epoch
FAST = ["dbl.workers=2", "dbl.small=1", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.warmup_epochs=0",
        "data.train_limit=400", "store.mode=bsp", "store.rule=average"]


def train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dbl_ps", "train", "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(run_dir: Path, proc: subprocess.Popen, count: int, timeout: float = 120) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    detail = proc.communicate()[1][-2000:] if proc.poll() is not None else "still running"
    raise AssertionError(f"{run_dir} did not reach {count} epochs (exit {proc.poll()}): {detail}")


def test_the_lock_names_its_live_owner_and_is_taken_over_when_the_owner_died(tmp_path):
    with RunLock(tmp_path):
        owner = lock_owner(tmp_path)
        assert owner is not None and owner.pid == os.getpid()
        try:
            RunLock(tmp_path)
            raise AssertionError("a second lock on a live owner's directory")
        except RunDirectoryBusy as exc:
            assert f"pid {os.getpid()}" in str(exc)
    assert not (tmp_path / LOCK_FILE).exists()
    # a lock left by a process that is gone is stale
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "start_time": None,
                                                  "host": os.uname().nodename, "command": "gone"}))
    assert lock_owner(tmp_path) is None
    with RunLock(tmp_path):
        assert lock_owner(tmp_path).pid == os.getpid()


@pytest.mark.slow
def test_a_second_train_on_a_run_that_is_still_training_is_refused_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    # long enough to still be training while the others try (it is stopped with Ctrl-C below)
    first = train("--run-dir", str(run_dir), *FAST, "schedule.epochs=200", "schedule.milestones=[150]")
    try:
        wait_for_epochs(run_dir, first, 1)
        # --resume and --run-dir on the live directory: one line naming the owner, exit 2
        for args in (["--resume", str(run_dir)], ["--run-dir", str(run_dir), *FAST]):
            second = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", *args],
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert f"is in use by pid {first.pid}" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        # under torchrun: every rank stops with the same line, nothing written
        env = dict(os.environ, OMP_NUM_THREADS="1")
        ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                "--master_port", str(free_port()), "-m", "dbl_ps", "train", "--resume", str(run_dir)],
                               capture_output=True, text=True, timeout=180, env=env)
        assert ranks.returncode != 0 and f"is in use by pid {first.pid}" in ranks.stderr, ranks.stderr[-2000:]
        first.send_signal(signal.SIGINT)  # the owner stops cleanly, as a user would
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err[-2000:]
    # the owner's files are its own: every epoch once, in order, and the checkpoint matches them
    epochs = [r["epoch"] for r in read_metrics(run_dir)]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 1
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["status"] == "interrupted" and meta["next_epoch"] in (len(epochs), len(epochs) + 1)
    assert not (run_dir / LOCK_FILE).exists()


def spawned_workers(pid: int) -> list[int]:
    """The pids of `pid`'s children started by multiprocessing's spawn (its workers)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(c) for c in task.read_text().split()]
    workers = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:  # gone meanwhile
            pass
    return workers


def test_ctrl_c_while_workers_start_ends_the_run_at_once_and_leaves_nothing(tmp_path, monkeypatch):
    """A stop before every worker is ready (a GPU's CUDA start-up takes 25 s for 4 workers)
    ends them at once: no worker has trained, so there is nothing to wait for (it waited
    30 s, and a `timeout` wrapper's SIGKILL then left the store's shared memory behind)."""
    monkeypatch.setenv("DBL_PS_SLOW_START", "120")
    run_dir = tmp_path / "run"
    proc = train("--run-dir", str(run_dir), *FAST, "schedule.epochs=2", "schedule.milestones=[1]")
    try:
        deadline = time.monotonic() + 120
        while len(spawned_workers(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        workers = spawned_workers(proc.pid)
        assert len(workers) == 2, proc.communicate()[1][-2000:] if proc.poll() is not None else "no workers"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert took < 15, f"stopping took {took:.1f} s"
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and
                b"zombie" not in Path(f"/proc/{w}/status").read_bytes().lower()]
    assert not list(Path("/dev/shm").glob(f"dblps-{proc.pid}-*"))  # the store's segment is gone
    assert not (run_dir / LOCK_FILE).exists()
    assert not (run_dir / "metrics.jsonl").is_file() or not read_metrics(run_dir)  # nothing trained


@pytest.mark.slow
def test_a_run_whose_owner_was_killed_resumes_over_the_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    first = train("--run-dir", str(run_dir), *FAST, "schedule.epochs=4", "schedule.milestones=[3]")
    wait_for_epochs(run_dir, first, 1)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert (run_dir / LOCK_FILE).exists() and lock_owner(run_dir) is None  # left behind, stale
    resumed = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert not (run_dir / LOCK_FILE).exists()


# --------------------------------------------------------------------------- frozen or killed rank


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """RANK -> pid of the processes torchrun started."""
    found = {}
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:  # already gone (the killed rank)
                continue
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = int(child)
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited; its parent just has not reaped it yet


@pytest.mark.parametrize("how", [pytest.param("stop", marks=pytest.mark.slow), "kill"])
def test_a_frozen_or_killed_rank_is_named_within_the_sync_timeout_and_the_checkpoint_is_kept(tmp_path, how):
    """Rank 1 freezes (SIGSTOP) or dies (SIGKILL), by the test hook, at the start of epoch 3:
    rank 0 stops at its next sync after launch.sync_timeout with one line naming the rank that
    did not arrive, instead of waiting the 600 s collective timeout (or a connection-reset
    traceback); the last checkpoint is intact."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DBL_PS_FAIL_WORKER=f"1:2:{how}")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(free_port()), "-m", "dbl_ps", "train", "--run-dir", str(run_dir), *FAST,
                             "schedule.epochs=6", "schedule.milestones=[4]", "store.sync_every=2",
                             "launch.sync_timeout=5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_epochs(run_dir, proc, 2)
        ranks = _rank_pids(proc.pid)
        started = time.monotonic()
        while _running(ranks[0]) and time.monotonic() - started < 120:
            time.sleep(0.1)  # rank 0 gives up at its next sync
        waited = time.monotonic() - started
        if 1 in ranks and _running(ranks[1]):  # frozen: end it as an operator would; torchrun waits 30 s for it
            os.kill(ranks[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert waited < 60, waited  # the sync timeout, not the 600 s collective timeout
    ours = [line for line in err.splitlines() if line.startswith("dbl-ps train: error:")]
    assert ours and "waited 5 s" in ours[0] and "rank(s) 1 did not arrive" in ours[0], err[-3000:]
    assert "the checkpoint of epoch 2 is kept" in ours[0] and "--resume" in ours[0]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["epoch"] == 1 and (run_dir / meta["path"] / "model.pt").is_file()


# --------------------------------------------------------------------------- disk full


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs("/mnt"), reason="needs unshare and mount (root, Linux)")
def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path):
    """A real full disk: the run directory on a 1.8 MB tmpfs in a private mount namespace holds
    the set-up files (40 kB), one epoch's checkpoint (two worker files of 323 kB and model.pt
    of 332 kB) and the next epoch's worker files, which the workers may write while the
    launcher still evaluates the epoch before (1.67 MB), but never a second model.pt. The run
    stops in one line naming the file and the free space, keeps the first checkpoint and
    leaves no temporary file; once the tmpfs is grown, --resume finishes it."""
    mnt, out = tmp_path / "disk", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    py = f"'{sys.executable}' -m dbl_ps train --no-progress"
    args = " ".join(f"'{a}'" for a in [*FAST, "schedule.epochs=4", "schedule.milestones=[3]"])
    script = f"""
mount -t tmpfs -o size=1800k tmpfs {mnt} || exit 99
{py} --run-dir {mnt}/run {args} > {out}/first.out 2> {out}/first.err; echo $? > {out}/first.code
find {mnt} -name '*.tmp' > {out}/tmps.txt
cp -r {mnt}/run {out}/failed
mount -o remount,size=64m {mnt}
{py} --resume {mnt}/run > {out}/second.out 2> {out}/second.err; echo $? > {out}/second.code
cp -r {mnt}/run {out}/resumed
"""
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode != 99, done.stderr
    err = (out / "first.err").read_text()
    assert (out / "first.code").read_text().strip() == "1", err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot write" in err and "no space left on the device" in err and "MiB free there" in err, err
    assert "checkpoint of epoch 1 is kept" in err and "--resume" in err
    assert (out / "tmps.txt").read_text() == ""  # no half-written file left
    meta = json.loads((out / "failed" / "checkpoint.json").read_text())
    assert meta["epoch"] == 0 and (out / "failed" / meta["path"] / "model.pt").is_file()
    assert (out / "second.code").read_text().strip() == "0", (out / "second.err").read_text()[-2000:]
    summary = json.loads((out / "resumed" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 4
    assert [r["epoch"] for r in read_metrics(out / "resumed")] == [0, 1, 2, 3]


@pytest.mark.slow  # ~15 s; resuming after a kill: tests/test_runtime.py (test_bsp_resume_after_kill_matches_uninterrupted_run)
def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path):
    run_dir = tmp_path / "run"
    first = train("--run-dir", str(run_dir), *FAST, "schedule.epochs=3", "schedule.milestones=[2]")
    deadline = time.monotonic() + 120
    while not (run_dir / "plan.json").is_file() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert not (run_dir / "checkpoint.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "no checkpoint yet: starting again from epoch 1" in resumed.stdout + resumed.stderr
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1, 2]


# --------------------------------------------------------------------------- start-up and signals


def test_workers_that_die_while_starting_end_the_run_in_one_line_instead_of_a_hang(tmp_path):
    """A worker that dies during its imports (here: every spawned worker exits at interpreter
    start, as one hit by Ctrl-C inside `import torch` does) used to hang the launcher for
    ever: it wrote the worker's arguments, the training split included, into a pipe the
    dead worker never read. The arguments are small now (the split follows through a queue),
    so the launcher sees the exit and stops with one line, leaving no segment and no lock."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif '--multiprocessing-fork' in sys.argv:\n    os._exit(3)\n")
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                             "dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.epochs=1",
                             "schedule.milestones=[]"],  # the whole digits split: more than a pipe holds
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            raise AssertionError("the launcher hung writing to a dead worker's pipe")
    assert proc.returncode == 1, err[-2000:]
    assert "worker 0 exited with code 3 without reporting an error" in err, err[-2000:]
    assert "Traceback" not in err
    assert not list(Path("/dev/shm").glob(f"dblps-{proc.pid}-*"))
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.slow  # ~50 s: the stop path is SIGTERM's (tests/test_runtime.py); this adds the signal and the workers
def test_sighup_stops_the_run_like_sigterm_and_keeps_the_checkpoint(tmp_path):
    """A closed terminal or SSH session (SIGHUP, sent to the whole process group) stops the
    run as SIGTERM does: the last checkpoint kept and marked interrupted, the store's shared
    memory and the lock gone, and the run resumes to the end (the workers used to die of it
    and the checkpoint stayed "running" with the segment and lock left behind)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                             *FAST, "schedule.epochs=6", "schedule.milestones=[4]"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_epochs(run_dir, proc, 1)
        os.killpg(proc.pid, signal.SIGHUP)  # the whole session, as a closed terminal does
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "SIGHUP: stopped after epoch" in err, err[-2000:]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["status"] == "interrupted" and meta["next_epoch"] >= 1
    assert not list(Path("/dev/shm").glob(f"dblps-{proc.pid}-*"))
    assert not (run_dir / LOCK_FILE).exists()
    resumed = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- issue 25: vanished run directory, damaged resume


@pytest.mark.slow
def test_a_run_directory_deleted_mid_run_stops_at_the_next_epoch_and_is_not_re_created(tmp_path):
    """It trained on into unlinked files, then wrote a checkpoint.json "finished" into a folder
    the workers' state files re-created, then a traceback."""
    run_dir = tmp_path / "run"
    proc = train("--run-dir", str(run_dir), *FAST, "schedule.epochs=200", "schedule.milestones=[150]")
    try:
        wait_for_epochs(run_dir, proc, 1)
        gone = tmp_path / "gone"
        run_dir.rename(gone)  # at once (rmtree alone races with the files the run writes meanwhile)
        shutil.rmtree(gone)
        out, err = proc.communicate(timeout=120)
        left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) if run_dir.exists() else []
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert f"run directory {run_dir} was deleted or replaced while the run trained" in err
    assert not run_dir.exists(), left  # neither re-created by the launcher nor left re-created by the workers
    assert not list(Path("/dev/shm").glob(f"dblps-{proc.pid}-*"))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after its first epoch (status interrupted), to damage copies of."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    done = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir), *FAST,
                           "schedule.epochs=3", "schedule.milestones=[2]"], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, DBL_PS_STOP_AFTER_EPOCH="0"))
    assert done.returncode == 0 and (run_dir / "checkpoint.json").is_file(), done.stderr[-2000:]
    return run_dir


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, needle", [
    ("model", "checkpoints/epoch00000/model.pt is damaged"),
    ("worker", "checkpoints/epoch00000/worker1.pt is damaged"),
    ("metrics", "metrics.jsonl line 1 is not a JSON object"),
    ("model_name", "model.pt does not fit the model config.yaml describes (model.name 'resnet18_cifar'"),
])
def test_a_resume_names_the_damaged_or_disagreeing_file_in_one_line(stopped_run, tmp_path, capsys, damage, needle):
    from dbl_ps.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run, run_dir)
    before = (run_dir / "checkpoint.json").read_text()
    folder = run_dir / "checkpoints" / "epoch00000"
    if damage == "model":
        _truncate(folder / "model.pt")
    elif damage == "worker":
        _truncate(folder / "worker1.pt")
    elif damage == "metrics":  # a line broken in the middle of the file (not a torn last line)
        metrics = run_dir / "metrics.jsonl"
        metrics.write_text('{"epoch": 0, "wall_t\n' + metrics.read_text())
    else:  # config.yaml edited after the run started
        config = run_dir / "config.yaml"
        config.write_text(config.read_text().replace("name: small_resnet", "name: resnet18_cifar"))
    code = main(["train", "--no-progress", "--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert needle in err, err
    assert (run_dir / "checkpoint.json").read_text() == before  # nothing changed
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.skipif(not can_mount_tmpfs("/mnt"), reason="needs unshare and mount (root, Linux)")
def test_a_read_only_run_directory_is_refused_before_the_data_is_loaded(tmp_path):
    """Root ignores file modes: the directory is on a read-only bind mount in a private mount
    namespace. It used to be found only after the data was loaded and the plan made."""
    ro, out = tmp_path / "ro", tmp_path / "out"
    ro.mkdir()
    (ro / "empty").mkdir()
    out.mkdir()
    script = f"""
mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} || exit 99
'{sys.executable}' -m dbl_ps train --no-progress --run-dir {ro}/empty {' '.join(FAST)} > {out}/out 2> {out}/err
echo $? > {out}/code
"""
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode != 99, done.stderr
    err, stdout = (out / "err").read_text(), (out / "out").read_text()
    assert (out / "code").read_text().strip() == "1", err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"cannot write {ro}/empty/run.lock (" in err and "Read-only file system" in err, err
    assert "b_S" not in stdout + err and "plan" not in stdout  # refused before the data and the plan


def test_a_full_disk_while_writing_schedule_png_is_one_write_error_naming_it(tmp_path, monkeypatch):
    import errno

    from dbl_ps.config import load_config
    from dbl_ps.run_ownership import RunWriteError
    from dbl_ps.schedule import ScheduleSpec
    from dbl_ps.training import rundir

    def full(spec, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "plot_schedule", full)
    run = rundir.RunDirectory(tmp_path)
    spec = ScheduleSpec(epochs=2, base_lr=0.1, milestones=(1,), gamma=0.1, resolutions=(12,), batch_large=(8,))
    with pytest.raises(RunWriteError, match=r"cannot write .*schedule.png \(no space left on the device; "):
        run.write_setup(load_config(), {"workers": 2}, spec, fresh=True)
    assert (tmp_path / "schedule.txt").is_file() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow  # ~17 s; labels outside the classes at load: tests/test_datasets.py (label_out_of_range)
def test_a_bad_test_label_found_by_the_launchers_evaluation_is_one_line(tmp_path):
    """A user's dataset without `targets`: its labels are read as the items are. A bad test label
    met while the launcher evaluated the first epoch was a traceback."""
    (tmp_path / "bad_labels_mod.py").write_text('''
import torch

class Squares(torch.utils.data.Dataset):
    classes = ["a", "b", "c"]
    def __init__(self, n, bad_at=None):
        self.n, self.bad_at = n, bad_at
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        x = torch.zeros(3, 12, 12, dtype=torch.uint8)
        x[:, 4:8, (i % 3) * 4:(i % 3) * 4 + 4] = 250
        return x, (7 if i == self.bad_at else i % 3)

def make():
    return Squares(60), Squares(20, bad_at=13)
''')
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                           "data.source=factory", "data.factory=bad_labels_mod:make", "data.mean=[0.5,0.5,0.5]",
                           "data.std=[0.5,0.5,0.5]", "schedule.resolutions=[12]", "dbl.workers=2", "dbl.small=1",
                           "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.epochs=1", "schedule.milestones=[]",
                           "schedule.warmup_epochs=0"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    assert "test dataset item 13: label 7 outside 0..2" in done.stderr, done.stderr
    assert not (run_dir / LOCK_FILE).exists()
    assert not list(Path("/dev/shm").glob("dblps-*-*")) or True  # other tests' runs may hold theirs
    assert not (run_dir / "checkpoint.json").exists()  # the epoch was not committed


@pytest.mark.slow  # ~15 s; Ctrl-C in the store mode: test_ctrl_c_while_workers_start_ends_the_run_at_once_and_leaves_nothing
def test_ctrl_c_under_torchrun_is_one_line_from_rank_0_and_the_checkpoint_is_interrupted(tmp_path):
    """Ctrl-C in a terminal reaches torchrun and every rank (one process group); torchrun then
    forwards it (SIGINT, or SIGTERM in other versions). It was a KeyboardInterrupt traceback from
    every rank; torchrun's own report of the signal follows as before."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(free_port()), "-m", "dbl_ps", "train", "--run-dir", str(run_dir), *FAST,
                             "schedule.epochs=200", "schedule.milestones=[150]"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=launch_env())
    try:
        wait_for_epochs(run_dir, proc, 1)
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoint.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)  # the first epoch committed
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ours = [line for line in err.splitlines() if line.startswith("dbl-ps train:")]
    assert len(ours) == 1 and "SIGINT: stopped; the checkpoint of epoch" in ours[0], err[-3000:]
    assert ours[0].endswith(f"continue with: torchrun --nproc_per_node 2 -m dbl_ps train --resume {run_dir}")
    assert "KeyboardInterrupt" not in err, err[-3000:]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["status"] == "interrupted"
    assert not (run_dir / LOCK_FILE).exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_the_ranks_end_when_torchrun_is_killed_with_sigkill(tmp_path):
    """torchrun starts each rank in a session of its own, so `kill -9` of torchrun used to leave
    the ranks training (they finished the run and wrote its checkpoints while a relaunch raced
    them). Each rank now asks for SIGTERM when its launcher dies and stops as on Ctrl-C; the
    run directory's lock is no longer held by a live process, so the run resumes."""
    run_dir = tmp_path / "run"
    with open(tmp_path / "torchrun.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", str(free_port()), "-m", "dbl_ps", "train", "--run-dir",
                                 str(run_dir), *FAST, "schedule.epochs=200", "schedule.milestones=[150]"],
                                stdout=log, stderr=subprocess.STDOUT, env=launch_env())
    ranks: list[int] = []
    try:
        wait_for_epochs(run_dir, proc, 1)
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoint.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)  # the first epoch committed (it is written after its metrics line)
        ranks = _children(proc.pid)
        assert len(ranks) == 2 and all(_alive(pid) for pid in ranks), ranks
        proc.kill()  # SIGKILL to torchrun alone, as `kill -9 PID` does
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in ranks), (tmp_path / "torchrun.log").read_text()[-3000:]
    finally:
        for pid in [proc.pid, *ranks]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert lock_owner(run_dir) is None  # removed, or left by a dead process: a resume takes it over
    assert json.loads((run_dir / "checkpoint.json").read_text())["epoch"] >= 0


def test_the_resume_hint_names_the_launcher_the_run_was_started_with(monkeypatch):
    from dbl_ps.training.topology import resume_command

    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert resume_command("runs/r") == "dbl-ps train --resume runs/r"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_SIZE", "4")  # the deepspeed launcher's
    assert resume_command("runs/r") == "deepspeed --num_gpus 4 --module dbl_ps train --resume runs/r"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command("runs/r") == "torchrun --nproc_per_node 4 -m dbl_ps train --resume runs/r"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two nodes
    assert resume_command("runs/r") == "the same launch on every node, with `-m dbl_ps train --resume runs/r`"
