"""The train, compare and report commands: errors as one line with exit code 2, the
compare variants, and a tiny compare + report end to end."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys

import pytest

from dbl_ps.cli import main
from dbl_ps.commands.compare import variant
from dbl_ps.config import load_config

FAST = ["dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.epochs=2", "schedule.milestones=[]",
        "schedule.warmup_epochs=0", "data.train_limit=300", "data.test_limit=100"]


@pytest.mark.parametrize("argv, needle", [
    (["store.mode=bsp"], "config key 'store.rule': got 'blend'"),
    (["dbl.taux=1.1"], "unknown config key 'dbl.taux'; did you mean 'dbl.tau'?"),
    (["dbl.workers=0"], "config key 'dbl.workers': got 0"),
    (["schedule.resolutions=[16,12]"], "strictly increasing"),
    (["--config", "no/such/file.yaml"], "does not exist"),
    (["data.source=mnist", "data.path=/no/such/dir", *FAST], "/no/such/dir"),
    (["dbl.tau=2.5", *FAST], "tau=2.5 leaves no data for small workers"),
    (["--resume", "/no/such/run"], "not a run directory"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, needle):
    code = main(["train", "--run-dir", str(tmp_path / "run"), *argv] if "--resume" not in argv else ["train", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not multiprocessing.active_children()
    assert not (tmp_path / "run").exists()  # nothing written


def test_compare_variants():
    cfg = load_config(None, ["model.dropout=[0.0, 0.1]", "dbl.batch_large=[96, 64]"])
    base, dbsl, cpl, hybrid = (variant(cfg, m, 3) for m in ("baseline", "dbsl", "cpl", "hybrid"))
    assert base.schedule.resolutions == [16] and base.dbl.small == 0
    assert base.dropouts() == [0.1] and base.batch_large() == [64]
    assert dbsl.schedule.resolutions == [16] and dbsl.dbl.small == cfg.dbl.small
    assert cpl.schedule.resolutions == [12, 16] and cpl.dbl.small == 0
    assert hybrid.schedule.resolutions == [12, 16] and hybrid.dbl.small == cfg.dbl.small
    assert [c.name for c in (base, dbsl, cpl, hybrid)] == ["baseline", "dbsl", "cpl", "hybrid"]
    assert all(c.seed == 3 for c in (base, dbsl, cpl, hybrid))


def test_compare_and_report_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--no-progress", *FAST]) == 0
    text = capsys.readouterr().out
    for method in ("baseline", "dbsl", "cpl", "hybrid"):
        assert (out / f"{method}-s0" / "metrics.jsonl").is_file()
        assert method in text
    report = (out / "report" / "report.md").read_text()
    assert "time / baseline" in report
    for png in ("accuracy_vs_time.png", "loss_vs_time.png", "accuracy_vs_epoch.png", "loss_vs_epoch.png"):
        assert (out / "report" / png).stat().st_size > 0
    # the same report from the run directories
    runs = [str(out / f"{m}-s0") for m in ("baseline", "hybrid")]
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0
    assert "baseline" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "rep2")]) == 2


def _can_mount_a_private_dev_shm() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_a_private_dev_shm(), reason="needs unshare and mount (root, Linux)")
def test_a_too_small_dev_shm_fails_up_front_with_the_sizes_and_the_fix(tmp_path):
    """Docker's 64 MB /dev/shm, made real: a 1 MB tmpfs over /dev/shm in a private mount
    namespace. The run stops before any worker starts, in one line, exit code 1."""
    train = [sys.executable, "-m", "dbl_ps.cli", "train", "--no-progress", "--run-dir", str(tmp_path / "run"), *FAST]
    script = "mount -t tmpfs -o size=1m tmpfs /dev/shm && exec " + " ".join(f"'{a}'" for a in train)
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "cannot create the parameter store: the parameter store needs" in done.stderr
    assert "/dev/shm has only 1 MB free" in done.stderr and "--shm-size" in done.stderr
    assert "Traceback" not in done.stderr
