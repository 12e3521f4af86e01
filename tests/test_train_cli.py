"""The train, compare and report commands: errors as one line with exit code 2, the
compare variants, and a tiny compare + report end to end."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from dbl_ps.cli import main
from dbl_ps.commands.compare import variant
from dbl_ps.config import load_config
from launch_helpers import can_mount_tmpfs

FAST = ["dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "schedule.epochs=2", "schedule.milestones=[]",
        "schedule.warmup_epochs=0", "data.train_limit=300", "data.test_limit=100"]


@pytest.mark.parametrize("argv, needle", [
    (["store.mode=bsp", "store.rule=blend"], "config key 'store.rule': got 'blend'"),
    (["sync=collective"], "config key 'sync': got 'collective', expected 'store' or 'auto' for a run on one machine"),
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


def test_compare_reference_variants():
    cfg = load_config(None, ["model.dropout=[0.0, 0.1]", "dbl.batch_large=[96, 64]"])
    plain, large, ddp = (variant(cfg, m, 0) for m in ("plain", "plain-large", "ddp-like"))
    for one in (plain, large):  # one plain SGD process: its bsp average of one worker is a copy
        assert (one.dbl.workers, one.dbl.small, one.schedule.resolutions) == (1, 0, [16])
        assert (one.store.mode, one.store.rule) == ("bsp", "average")
    assert plain.batch_large() == [128] and large.batch_large() == [4 * 64]  # the baseline's 4 workers x B_L
    assert (ddp.dbl.workers, ddp.dbl.small, ddp.schedule.resolutions, ddp.batch_large()) == (4, 0, [16], [64])
    assert (ddp.store.mode, ddp.store.rule, ddp.store.sync_every) == ("bsp", "average", 1)
    for v in (plain, large, ddp):  # nothing tuned per method
        assert (v.schedule.lr, v.optim.momentum, v.optim.weight_decay, v.schedule.epochs) == \
            (cfg.schedule.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.schedule.epochs)


def test_compare_refuses_an_unknown_method(capsys):
    assert main(["compare", "--methods", "baseline,sgd", *FAST]) == 2
    assert "ddp-like" in capsys.readouterr().err  # the error lists what is allowed


@pytest.mark.slow
def test_compare_and_report_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--no-progress", "--seeds", "0,1",
                 "--methods", "baseline,hybrid,plain,ddp-like", *FAST]) == 0
    text = capsys.readouterr().out
    for method in ("baseline", "hybrid", "plain", "ddp-like"):
        for seed in (0, 1):
            assert (out / f"{method}-s{seed}" / "metrics.jsonl").is_file()
        assert method in text
    assert json.loads((out / "plain-s0" / "plan.json").read_text())["workers"] == 1
    report = (out / "report" / "report.md").read_text()
    assert "time / baseline" in report and "| hybrid | 2 | 2 |" in report and "±" in report
    assert "One seed per row" not in report and "note: One seed" not in text  # two seeds: their spread is shown
    csv_rows = (out / "report" / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and csv_rows[0].startswith("label,runs,epochs,final_acc,final_acc_std")
    summary = json.loads((out / "hybrid-s0" / "summary.json").read_text())
    assert summary["startup_seconds"] > 0 and summary["time_model_seconds"] == 0.0  # time model given
    # the whole launch: start-up (data, plan, workers) + training + the end, what `time` would show
    assert summary["total_seconds"] >= summary["wall_time"] + summary["startup_seconds"]
    assert summary["cpu_cores"] >= 1 and summary["device"] == "cpu"
    for png in ("accuracy_vs_time.png", "loss_vs_time.png", "accuracy_vs_epoch.png", "loss_vs_epoch.png"):
        assert (out / "report" / png).stat().st_size > 0
    # the same report from the run directories
    runs = [str(out / f"{m}-s0") for m in ("baseline", "hybrid")]
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0
    assert "baseline" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "rep2")]) == 2


def test_report_out_naming_a_file_is_one_line_and_leaves_the_file(tmp_path, capsys):
    """`--out` naming a file (or a path under one) was a traceback from the plotting code."""
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    for out in (file, file / "report"):
        code = main(["report", str(tmp_path / "any-run"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"--out {out} " in err and "give a directory" in err
    assert file.read_text() == "mine"


def test_an_out_dir_that_cannot_hold_run_directories_is_one_line(tmp_path, capsys):
    """out_dir under a file (or read-only) was a traceback from mkdir, without --run-dir."""
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    code = main(["train", "--no-progress", f"out_dir={file / 'runs'}", *FAST])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert f"error: cannot create a run directory under {file / 'runs'} (Not a directory); choose another " \
           f"out_dir or --run-dir" in err
    assert file.read_text() == "mine"


@pytest.mark.slow
def test_compare_measures_the_time_model_once_and_a_resumed_compare_keeps_it(tmp_path, capsys):
    """The one-off measurement is reported apart from the runs (seconds and values in the
    report), and a comparison started again on the same --out plans with the same model
    instead of a new measurement (a different plan for the runs still to do)."""
    out = tmp_path / "cmp"
    unmeasured = [a for a in FAST if not a.startswith(("dbl.alpha", "dbl.beta"))]
    assert main(["compare", "--out", str(out), "--no-progress", "--methods", "baseline", *unmeasured]) == 0
    assert "measuring the time model" in capsys.readouterr().out
    saved = json.loads((out / "time_model.json").read_text())
    assert saved["seconds"] > 0 and saved["source"] == "measured on the spot"
    report = (out / "report" / "report.md").read_text()
    assert f"Time model measured once before the first run (measured on the spot, {saved['seconds']:.1f} s)" in report
    # started again with one more method: no new measurement, the saved model plans it
    assert main(["compare", "--out", str(out), "--no-progress", "--methods", "baseline,dbsl", *unmeasured]) == 0
    text = capsys.readouterr().out
    assert "measuring the time model" not in text and "time model: the comparison's own" in text
    assert "already done (finished), skipped" in text
    # one seed: a line and the report say differences below the seeds' spread are noise, and what to add
    assert "note: One seed per row: a difference smaller than the spread between seeds is noise" in text
    assert f"rerun with `--seeds 0,1,2 --out {out}` (the finished runs are kept)" in text
    assert "One seed per row" in (out / "report" / "report.md").read_text()
    for method in ("baseline", "dbsl"):
        dbl = yaml.safe_load((out / f"{method}-s0" / "config.yaml").read_text())["dbl"]
        assert {str(r): a for r, a in dbl["alpha"].items()} == saved["alpha"]
        assert {str(r): b for r, b in dbl["beta"].items()} == saved["beta"]
    assert json.loads((out / "time_model.json").read_text()) == saved
    # other resolutions than the saved model's: one line, before anything runs
    assert main(["compare", "--out", str(out), "--no-progress", "--methods", "cpl", *unmeasured,
                 "schedule.resolutions=[10]"]) == 2
    err = capsys.readouterr().err
    assert "time_model.json was measured at [12, 16] px, this comparison trains at [10] px" in err
    assert not (out / "cpl-s0").exists()


@pytest.mark.slow  # ~15 s; a resumed compare keeping its runs and time model: the test above
def test_compare_never_reuses_a_run_of_another_config_nor_tables_one_that_did_not_finish(tmp_path, capsys):
    """A second `compare` into the same --out with other overrides is one line (it printed
    "already done" and the first comparison's table); a sub-run that diverged is shown with
    its status and left out of the table (it was tabled as a result)."""
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--no-progress", "--methods", "baseline", *FAST]) == 0
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--no-progress", "--methods", "baseline", *FAST,
                 "schedule.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "baseline-s0 was trained with another config (schedule.lr (" in err and "0.05 now)" in err, err
    assert len(err.strip().splitlines()) == 1
    diverging = ["schedule.lr=1000000", "schedule.warmup_epochs=1", "schedule.warmup_start_factor=0"]
    assert main(["compare", "--out", str(tmp_path / "div"), "--no-progress", "--methods", "baseline", *FAST,
                 *diverging]) == 1
    captured = capsys.readouterr()
    assert "not finished, left out of the table: baseline-s0: diverged" in captured.out, captured.out
    assert "no run finished: nothing to compare" in captured.err
    assert not (tmp_path / "div" / "report").exists()


@pytest.mark.skipif(not can_mount_tmpfs("/dev/shm"), reason="needs unshare and mount (root, Linux)")
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


# --------------------------------------------------------------------------- issue 16: run directories, bad input


def _one_line_error(capsys, code):
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "measuring the time model" not in captured.out + captured.err  # refused before any measuring
    return captured.err


def test_a_bad_run_dir_is_refused_before_the_data_or_any_measuring(tmp_path, capsys):
    # No dbl.alpha/beta: a run that got as far as planning would measure the time model first.
    file = tmp_path / "a-file"
    file.write_text("x")
    assert "is a file" in _one_line_error(capsys, main(["train", "--run-dir", str(file)]))
    assert f"{file} is a file" in _one_line_error(capsys, main(["train", "--run-dir", str(file / "run")]))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert "is not empty" in _one_line_error(capsys, main(["train", "--run-dir", str(full)]))
    assert file.read_text() == "x" and (full / "keep.txt").read_text() == "x"


def test_a_resume_by_the_other_kind_of_launch_says_how_the_run_was_trained(tmp_path, capsys):
    """A store-mode run resumed under torchrun was refused with "config key 'sync': got
    'store'", a key the user never set, and so was one still in use, instead of naming its
    owner. Both kinds of directory are what a run writes first (its config.yaml)."""
    from dbl_ps.config import resolve_sync
    from launch_helpers import torchrun_train

    store_run, collective_run = tmp_path / "store", tmp_path / "collective"
    for run_dir, launched in ((store_run, False), (collective_run, True)):
        run_dir.mkdir()
        resolve_sync(load_config(None, ["dbl.workers=2"]), launched=launched).save(run_dir / "config.yaml")
    ranks = torchrun_train(1, "--no-progress", "--resume", str(store_run))
    assert ranks.returncode != 0
    assert (f"dbl-ps train: error: {store_run} was trained with sync 'store', on one machine without a launcher; "
            f"resume it the same way: dbl-ps train --resume {store_run}") in ranks.stderr.splitlines(), ranks.stderr
    assert _one_line_error(capsys, main(["train", "--no-progress", "--resume", str(collective_run)])).strip() == (
        f"dbl-ps train: error: {collective_run} was trained with sync 'collective', under a launcher; resume it the "
        f"same way, e.g. torchrun --nproc_per_node 2 -m dbl_ps train --resume {collective_run}")


def test_a_non_utf8_config_and_absurd_sizes_are_one_line_at_config_load(tmp_path, capsys):
    """A Latin-1 config was a UnicodeDecodeError traceback; a padding or resolution of 100000 px
    reached a worker (a 10 TB batch) or the launcher's model check (80 GB)."""
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("schedule:\n  epochs: 2  # caf\xe9\n".encode("latin-1"))
    err = _one_line_error(capsys, main(["train", "--config", str(latin), "--run-dir", str(tmp_path / "run")]))
    assert f"config file '{latin}' is not UTF-8 text" in err and "save it as UTF-8" in err
    err = _one_line_error(capsys, main(["train", "--run-dir", str(tmp_path / "run"), "data.crop_padding=100000"]))
    assert "'data.crop_padding': got 100000, expected at most the smallest resolution, 12 px" in err
    err = _one_line_error(capsys, main(["train", "--run-dir", str(tmp_path / "run"), "schedule.resolutions=[100000]"]))
    assert "'schedule.resolutions[0]': got 100000, expected an integer >= 4 and <= 4096" in err
    assert not (tmp_path / "run").exists()


def test_more_workers_than_samples_names_dbl_workers_before_measuring(tmp_path, capsys):
    err = _one_line_error(capsys, main(["train", "--run-dir", str(tmp_path / "run"), "dbl.workers=4096"]))
    assert "config key 'dbl.workers': got 4096, expected at most 1437" in err
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_writing_leaves_no_run_directory(tmp_path, capsys):
    # The launcher creates its run directory up front (so the name is unique); a failed start removes it.
    code = main(["train", f"out_dir={tmp_path}", "dbl.workers=4096"])
    _one_line_error(capsys, code)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_trains_started_together_get_their_own_run_directories(tmp_path):
    # Two real `dbl-ps train` processes with the same name, started at once: the run
    # directory is created atomically, so the one that loses the race takes `-1`.
    # `schedule.epochs=2` alone also shows the milestones following the epochs.
    args = [sys.executable, "-m", "dbl_ps.cli", "train", "--no-progress", f"out_dir={tmp_path}", "schedule.epochs=2",
            *[a for a in FAST if not a.startswith(("schedule.epochs", "schedule.milestones"))]]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted(tmp_path.iterdir())
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs)
    assert all("schedule.milestones [12, 20] -> [1]" in out for out in outs)
    assert load_config(runs[0] / "config.yaml").schedule.milestones == [1]


def test_new_run_dir_is_unique_across_threads_and_processes(tmp_path):
    import threading

    from dbl_ps.run_ownership import create_unique_dir
    from dbl_ps.runtime import new_run_dir

    cfg = load_config(None, [f"out_dir={tmp_path / 'threads'}"])
    made, start = [], threading.Barrier(8)

    def make():
        start.wait()
        made.append(new_run_dir(cfg))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() and not any(p.iterdir()) for p in made)
    # The same stem from several processes at once: each gets its own directory.
    script = ("import sys; from pathlib import Path; from dbl_ps.run_ownership import create_unique_dir; "
              "print(create_unique_dir(Path(sys.argv[1]), 'run-20260101-000000'))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "procs")], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    names = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [Path(n).name for n in names] == ["run-20260101-000000", "run-20260101-000000-1", "run-20260101-000000-2",
                                              "run-20260101-000000-3"]
    assert create_unique_dir(tmp_path / "procs", "run-20260101-000000").name == "run-20260101-000000-4"


# --------------------------------------------------------------------------- issue 16: divergence


def _strict(path: Path) -> list:
    """Every JSON line of `path`, refusing the bare NaN/Infinity tokens other parsers reject."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbl_ps.cli", "train", "--no-progress", "--run-dir", str(run_dir),
                           *FAST, *overrides], capture_output=True, text=True, timeout=300)


def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_finite_checkpoint(tmp_path):
    # lr 1e6 after a warm-up epoch at lr 0: epoch 1 is finite and committed, epoch 2 diverges at its first sync.
    run_dir = tmp_path / "run"
    done = _train(run_dir, "schedule.epochs=3", "schedule.lr=1000000", "schedule.warmup_epochs=1",
                  "schedule.warmup_start_factor=0", "store.mode=bsp", "store.rule=average")
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.fullmatch(r"dbl-ps train: error: worker \d diverged at epoch 2 step \d+ \(loss (nan|-?inf|[-+.e\d]+, but its model state is not finite)\); the last "
                        r"finite checkpoint \(epoch 1\) is kept; lower schedule.lr .*divergence=skip.*", err[0]), err[0]
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["epoch"] == 0 and meta["status"] == "running"  # untouched: the diverged epoch is never committed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs"] == 1 and summary["skipped_syncs"] == 0
    records = _strict(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0] and records[0]["test_loss"] > 0


@pytest.mark.slow
def test_a_run_diverging_in_its_first_epoch_has_no_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    done = _train(run_dir, "schedule.lr=1000000")  # asp, blend: the default store mode
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    # asp: the other worker may already be in epoch 2 (it runs up to one epoch ahead) when it diverges
    assert re.search(r"worker \d diverged at epoch [12] step \d+ \(loss (nan|-?inf|[-+.e\d]+, but its model state is not finite)\)", done.stderr), done.stderr
    assert "no epoch had finished, so there is no checkpoint" in done.stderr
    assert not (run_dir / "checkpoint.json").exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_divergence_skip_leaves_non_finite_updates_out_and_counts_them(tmp_path):
    """lr 1e38 makes every sync's state non-finite: with `divergence: skip` each worker
    contributes its state of the last pull instead, so the run finishes with the initial
    model, bit for bit, and every sync counted as skipped; metrics stay strict JSON."""
    from dbl_ps.models import build_model
    from dbl_ps.training.rundir import RunDirectory

    run_dir = tmp_path / "run"
    done = _train(run_dir, "schedule.lr=1e38", "divergence=skip", "store.mode=bsp", "store.rule=average")
    # every epoch ran, but nothing was learnt: said, status diverged (it said `finished`, exit 0)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip() == ("dbl-ps train: error: every sync of the run was skipped as non-finite (2 epoch(s), "
                                   "divergence=skip): the global model never changed; lower schedule.lr (or lengthen "
                                   "schedule.warmup_epochs) and start a new run"), done.stderr
    assert "skipped" in done.stdout and "non-finite syncs" in done.stdout
    records = _strict(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        for w in r["workers"]:
            assert w["skipped_syncs"] == w["syncs"] > 0 and w["loss"] is None  # no merged period, no loss
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["skipped_syncs"] == sum(
        w["skipped_syncs"] for r in records for w in r["workers"])
    run = RunDirectory(run_dir)
    final = run.load_model(run.load_checkpoint())
    torch.manual_seed(0)  # the launcher's initial model
    initial = build_model("small_resnet", 10, in_channels=1).state_dict()
    assert all(torch.equal(final[k], initial[k]) for k in initial)


RACING_LINES = """
import os, sys, time
from dbl_ps._process import write_whole_lines
write_whole_lines()  # what `dbl-ps` does first
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # both start printing at once
for i in range(2000):
    print(f"dbl-ps train: error: pid {os.getpid()} line {i} " + "x" * 200, file=sys.stderr, flush=True)
"""


def test_ranks_printing_at_once_under_pythonunbuffered_keep_their_lines_whole():
    """Two processes with PYTHONUNBUFFERED=1 (as containers, schedulers and torchrun jobs often
    run) print error lines into one pipe at once, as two ranks do at a config error: no line
    holds two messages. Without `write_whole_lines` (dbl-ps's CLI calls it first) `print` writes
    the text and its newline apart and about a sixth of such lines came out merged."""
    both = (f"import subprocess, sys, time; start = str(time.time() + 2); "
            f"p = [subprocess.Popen([sys.executable, '-c', {RACING_LINES!r}, start]) for _ in (0, 1)]; "
            "[x.wait() for x in p]")
    done = subprocess.run([sys.executable, "-c", both], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = done.stderr.splitlines()
    assert len(lines) == 4000 and [line for line in lines if line.count("dbl-ps train:") != 1] == []
