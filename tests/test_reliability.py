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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbl_ps.metrics import read_metrics
from dbl_ps.run_ownership import LOCK_FILE, RunDirectoryBusy, RunLock, lock_owner
from launch_helpers import can_mount_tmpfs, free_port

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


@pytest.mark.parametrize("how", ["stop", "kill"])
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
