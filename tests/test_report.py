"""Metrics (JSONL writer, reader, logger fan-out) and reports over run directories."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dbl_ps.config import RunConfig
from dbl_ps.metrics import ConsoleSink, Logger, MetricsFileError, MetricsWriter, read_metrics
from dbl_ps.report import (
    PLOTS,
    ReportError,
    comparison_notes,
    format_table,
    load_run,
    mean_curve,
    mean_std,
    plot_runs,
    replan_marks,
    shared_cores_note,
    summarize,
    worker_times,
    write_csv,
    write_report,
)

# --------------------------------------------------------------------------- metrics


def test_writer_appends_flushed_lines(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.log(0, {"test_acc": 0.5, "wall_time": 1.0})
    # Flushed per line: readable before close (a crash after this loses nothing).
    assert read_metrics(tmp_path) == [{"epoch": 0, "test_acc": 0.5, "wall_time": 1.0}]
    writer.write({"event": "end"})
    writer.close()
    assert read_metrics(tmp_path / "metrics.jsonl")[-1] == {"event": "end"}
    with pytest.raises(ValueError, match="closed"):
        writer.log(1, {})


def test_writer_serialises_numpy_and_torch(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.log(np.int64(2), {"a": np.float32(0.25), "b": torch.tensor(3.0), "c": np.arange(3),
                                 "workers": [{"batch": np.int32(64)}], "path": tmp_path})
    record = read_metrics(tmp_path)[0]
    assert record == {"epoch": 2, "a": 0.25, "b": 3.0, "c": [0, 1, 2], "workers": [{"batch": 64}], "path": str(tmp_path)}
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        MetricsWriter(tmp_path / "x").log(0, {"bad": object()})


def test_writer_refuses_to_clobber_and_resume_continues(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.log(0, {"test_acc": 0.1})
    with pytest.raises(FileExistsError, match="already holds metrics"):
        MetricsWriter(tmp_path)
    with MetricsWriter(tmp_path, resume=True) as writer:
        writer.log(1, {"test_acc": 0.2})
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1]


def test_resume_drops_torn_line_and_records_after_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "test_acc": e / 10}) for e in range(5)]
    path.write_text("\n".join(lines) + "\n" + '{"epoch": 5, "test_a')  # crash mid-write
    assert [r["epoch"] for r in read_metrics(path)] == [0, 1, 2, 3, 4]  # reader tolerates the torn tail
    with MetricsWriter(tmp_path, resume=True, keep_through=2) as writer:  # checkpoint was epoch 2
        writer.log(3, {"test_acc": 0.33})
    records = read_metrics(path)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3] and records[-1]["test_acc"] == 0.33
    assert path.read_text().endswith("\n")


def strict_loads(text):
    """json.loads that rejects the NaN/Infinity tokens (as strict JSON parsers do)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_are_written_as_null_strict_json(tmp_path):
    nan, inf = float("nan"), float("inf")
    with MetricsWriter(tmp_path) as writer:
        writer.log(0, {"test_loss": nan, "train_loss": np.float32("nan"), "grad": torch.tensor(-inf),
                       "workers": [{"loss": inf, "acc": 0.5}], "per_px": {24: np.float64("nan")}, "ok": 1.5})
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert strict_loads(line) == {"epoch": 0, "test_loss": None, "train_loss": None, "grad": None,
                                  "workers": [{"loss": None, "acc": 0.5}], "per_px": {"24": None}, "ok": 1.5}
    # A file from before (bare NaN tokens) still reads, and a resume rewrites it strictly.
    path = tmp_path / "old" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"epoch": 0, "test_loss": NaN}\n{"epoch": 1, "test_loss": Infinity}\n')
    assert len(read_metrics(path)) == 2
    with MetricsWriter(path.parent, resume=True, keep_through=0, warn=lambda m: None):
        pass
    assert [strict_loads(l) for l in path.read_text().splitlines()] == [{"epoch": 0, "test_loss": None}]


def test_strict_dumps_refuses_nothing_it_can_convert():
    from dbl_ps.metrics import strict_dumps

    text = strict_dumps({"a": [float("nan"), 1.0], "b": (np.inf, 2), "c": Path("x/y")}, indent=2)
    assert strict_loads(text) == {"a": [None, 1.0], "b": [None, 2], "c": "x/y"}
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        strict_dumps({"bad": object()})


def test_resume_says_when_it_drops_a_torn_line_or_newer_records(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2, "test_a')
    warnings = []
    MetricsWriter(tmp_path, resume=True, keep_through=0, warn=warnings.append).close()
    assert len(warnings) == 2
    assert "dropped its torn last line" in warnings[0] and '{"epoch": 2, "test_a' in warnings[0]
    assert "dropped 1 record(s) after epoch 0" in warnings[1]
    # The default is one warning line on stderr.
    path.write_text('{"epoch": 0}\n{"epoch": 1, "te')
    MetricsWriter(tmp_path, resume=True).close()
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "torn last line" in err and len(err.strip().splitlines()) == 1
    # Nothing to drop: nothing said.
    MetricsWriter(tmp_path, resume=True).close()
    assert capsys.readouterr().err == ""


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
    with pytest.raises(MetricsFileError, match="line 2 is not a JSON object"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_metrics(tmp_path / "nothing")


class ListSink:
    def __init__(self):
        self.calls, self.closed = [], False

    def log(self, step, metrics):
        self.calls.append((step, dict(metrics)))

    def close(self):
        self.closed = True


def test_logger_fans_out_to_every_sink(tmp_path):
    a, b, out = ListSink(), ListSink(), io.StringIO()
    with Logger([a, MetricsWriter(tmp_path), ConsoleSink(out, keys=["test_acc", "lr"])]) as logger:
        logger.add(b)
        logger.log(3, {"test_acc": 0.91234, "lr": 0.1, "workers": [1, 2]})
    assert a.calls == b.calls == [(3, {"test_acc": 0.91234, "lr": 0.1, "workers": [1, 2]})]
    assert a.closed and b.closed
    assert read_metrics(tmp_path) == [{"epoch": 3, "test_acc": 0.91234, "lr": 0.1, "workers": [1, 2]}]
    assert out.getvalue() == "epoch 3: test_acc=0.9123 lr=0.1\n"


# --------------------------------------------------------------------------- report


def make_run(root: Path, name: str, accs: list[float], seconds_per_epoch: float, seed: int = 0) -> Path:
    """A run directory as the runtime writes it: config.yaml + metrics.jsonl."""
    run_dir = root / f"{name}-s{seed}"
    run_dir.mkdir(parents=True)
    RunConfig(name=name, seed=seed).save(run_dir / "config.yaml")
    with MetricsWriter(run_dir) as writer:
        for epoch, acc in enumerate(accs):
            writer.log(epoch, {"wall_time": (epoch + 1) * seconds_per_epoch, "test_acc": acc, "test_loss": 2.0 * (1 - acc),
                               "train_acc": min(1.0, acc + 0.1), "train_loss": 1.5 * (1 - acc),
                               "lr": 0.1, "workers": [{"worker": 0, "train_loss": 1.0}]})
            writer.write({"event": "checkpoint", "epoch": epoch, "wall_time": (epoch + 1) * seconds_per_epoch + 0.5})
    return run_dir


@pytest.fixture
def runs(tmp_path):
    return [
        make_run(tmp_path, "baseline", [0.5, 0.7, 0.8], 10.0),
        make_run(tmp_path, "hybrid", [0.6, 0.85, 0.84], 8.0),
        make_run(tmp_path, "hybrid", [0.6, 0.75, 0.86], 9.0, seed=1),
    ]


def test_load_run_reads_config_and_evaluations(runs):
    run = load_run(runs[0])
    assert run.label == "baseline" and run.config["seed"] == 0
    assert len(run.records) == 6 and len(run.evals) == 3
    assert (run.final_acc, run.best_acc, run.epochs) == (0.8, 0.8, 3)
    assert run.total_time == 30.5  # the last record of any kind
    assert run.time_to_accuracy(0.7) == 20.0 and run.time_to_accuracy(0.9) is None
    assert run.time_to_accuracy(0.75) == pytest.approx(25.0)  # between 0.7 at 20 s and 0.8 at 30 s
    assert run.time_to_accuracy(0.4) == 10.0  # reached at the first evaluation: its time
    assert load_run(runs[0], label="other").label == "other"


def test_load_run_errors_and_json_config(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    with pytest.raises(ReportError, match="no metrics.jsonl"):
        load_run(tmp_path / "r")
    (tmp_path / "r" / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 0.5, "wall_time": 1}\n')
    assert load_run(tmp_path / "r").label == "r"  # no config: the directory's name
    (tmp_path / "r" / "config.json").write_text(json.dumps({"name": "from-json"}))
    assert load_run(tmp_path / "r").label == "from-json"


def test_summary_groups_seeds_and_compares_to_baseline(runs):
    rows = summarize([load_run(r) for r in runs], baseline="baseline")
    base, hybrid = rows
    assert (base["label"], base["runs"], hybrid["runs"]) == ("baseline", 1, 2)
    assert base["time_ratio"] == 1.0 and base["acc_delta"] == 0.0
    assert base["final_acc_std"] is None  # one run: no spread
    assert hybrid["final_acc"] == pytest.approx(0.85)
    assert hybrid["final_acc_std"] == pytest.approx(0.01 * 2 ** 0.5)  # 0.84, 0.86: sample std
    assert hybrid["best_acc"] == pytest.approx((0.85 + 0.86) / 2)
    assert hybrid["best_acc_std"] == pytest.approx(0.005 * 2 ** 0.5)
    assert hybrid["total_time"] == pytest.approx((24.5 + 27.5) / 2)
    assert hybrid["total_time_std"] == pytest.approx(1.5 * 2 ** 0.5)
    assert hybrid["time_ratio"] == pytest.approx(26.0 / 30.5)
    assert hybrid["acc_delta"] == pytest.approx(0.05)
    # Target: 90 % of the baseline's final 0.8 = 0.72, interpolated between the evaluations
    # around it: the baseline between 0.7 (20 s) and 0.8 (30 s): 22 s; hybrid seed 0 between
    # 0.6 (8 s) and 0.85 (16 s): 11.84 s, seed 1 between 0.6 (9 s) and 0.75 (18 s): 16.2 s.
    assert hybrid["target_acc"] == base["target_acc"] == pytest.approx(0.72)
    assert base["time_to_target"] == pytest.approx(22.0) and base["time_to_target_ratio"] == 1.0
    assert hybrid["time_to_target"] == pytest.approx((11.84 + 16.2) / 2)
    assert hybrid["time_to_target_std"] == pytest.approx(abs(16.2 - 11.84) / 2 ** 0.5)
    assert hybrid["target_reached"] == 2
    assert hybrid["time_to_target_ratio"] == pytest.approx(14.02 / 22.0)
    with pytest.raises(ReportError, match="baseline 'conventional' is not one of the runs' labels: 'baseline', 'hybrid'"):
        summarize([load_run(r) for r in runs], baseline="conventional")


def test_mean_std_and_mean_curve_known_values(runs):
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, None)
    assert mean_std([1.0, None]) == (None, None)  # a seed that never reached the target
    xs, ys = mean_curve([load_run(runs[1]), load_run(runs[2])], "test_acc", "wall_time")
    assert xs == pytest.approx([8.5, 17.0, 25.5]) and ys == pytest.approx([0.6, 0.8, 0.85])


def test_a_seed_that_misses_the_target_is_counted(tmp_path):
    base = make_run(tmp_path, "baseline", [0.5, 0.9], 10.0)
    slow = [make_run(tmp_path, "cpl", [0.5, 0.85], 5.0), make_run(tmp_path, "cpl", [0.5, 0.7], 5.0, seed=1)]
    rows = summarize([load_run(r) for r in [base, *slow]], baseline="baseline")
    cpl = rows[1]
    assert cpl["target_acc"] == pytest.approx(0.81) and cpl["target_reached"] == 1
    assert cpl["time_to_target"] is None and cpl["time_to_target_ratio"] is None
    assert "(1/2 reached)" in format_table(rows, "markdown")


def make_evals(root: Path, name: str, evals: dict[int, tuple[float, float, float, float]], seconds: float,
               epochs: int, seed: int = 0) -> Path:
    """A run evaluated at some epochs only: {epoch: (test acc, test loss, train acc, train loss)}."""
    run_dir = root / f"{name}-s{seed}"
    run_dir.mkdir(parents=True)
    RunConfig(name=name, seed=seed).save(run_dir / "config.yaml")
    with MetricsWriter(run_dir) as writer:
        for epoch in range(epochs):
            record: dict = {"wall_time": (epoch + 1) * seconds, "lr": 0.1}
            if epoch in evals:
                acc, loss, train_acc, train_loss = evals[epoch]
                record.update(test_acc=acc, test_loss=loss, train_acc=train_acc, train_loss=train_loss)
            writer.log(epoch, record)
    return run_dir


def test_time_to_target_uses_only_the_epochs_every_method_evaluated(tmp_path):
    """DBSL evaluated every epoch, the baseline every third (eval.every): DBSL's denser
    evaluations used to give it the target 2 epochs early (a ratio of 0.4 from sampling alone).
    Both curves are the same here, so the honest ratio is the time ratio."""
    curve = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.75, 4: 0.78, 5: 0.8}
    base = make_evals(tmp_path, "baseline", {e: (curve[e], 0.6, curve[e] - 0.02, 0.7) for e in (2, 5)}, 10.0, 6)
    dbsl = make_evals(tmp_path, "dbsl", {e: (a, 0.6, a - 0.02, 0.7) for e, a in curve.items()}, 10.0, 6)
    loaded = [load_run(base), load_run(dbsl)]
    rows = summarize(loaded, baseline="baseline")
    assert rows[0]["target_acc"] == pytest.approx(0.72)
    # read at epochs 3 and 6 only (0-based 2 and 5) for both: 0.7 at 30 s, 0.8 at 60 s -> 36 s
    assert rows[0]["time_to_target"] == pytest.approx(36.0) and rows[1]["time_to_target"] == pytest.approx(36.0)
    assert rows[1]["time_to_target_ratio"] == pytest.approx(1.0)
    assert loaded[1].time_to_accuracy(0.72) == pytest.approx(34.0)  # its own denser evaluations would say 34 s
    notes = comparison_notes(loaded, rows, "baseline", "rerun with `--seeds 0,1,2`")
    assert any(n.startswith("One seed per row:") and "rerun with `--seeds 0,1,2`" in n for n in notes)
    assert any(n.startswith("Time to target: the runs evaluated at different epochs, so it is read only from the "
                            "epochs every run evaluated (3, 6)") for n in notes)
    # ... and the baseline does not overfit (train loss 0.7 >= test loss 0.6, train acc below test)
    assert any(n.startswith("The baseline does not overfit here") and "nothing to regularise" in n for n in notes)


def test_no_notes_for_seeds_and_a_baseline_that_overfits(tmp_path):
    runs = [make_evals(tmp_path, "baseline", {0: (0.7, 0.9, 0.8, 0.5), 1: (0.8, 0.9, 0.95, 0.2)}, 10.0, 2, seed=s)
            for s in (0, 1)]
    runs += [make_evals(tmp_path, "dbsl", {0: (0.7, 0.9, 0.8, 0.5), 1: (0.8, 0.9, 0.9, 0.3)}, 10.0, 2, seed=s)
             for s in (0, 1)]
    loaded = [load_run(r) for r in runs]
    assert comparison_notes(loaded, summarize(loaded, baseline="baseline"), "baseline") == []


def test_startup_and_time_model_seconds_come_from_the_summary(runs):
    (runs[1] / "summary.json").write_text(json.dumps({"startup_seconds": 3.0, "time_model_seconds": 4.0}))
    (runs[2] / "summary.json").write_text(json.dumps({"startup_seconds": 5.0, "time_model_seconds": 0.0}))
    hybrid = summarize([load_run(r) for r in runs])[1]
    assert hybrid["startup_seconds"] == 4.0 and hybrid["time_model_seconds"] == 2.0
    assert summarize([load_run(runs[0])])[0]["startup_seconds"] is None  # no summary.json


def test_tables(runs):
    rows = summarize([load_run(r) for r in runs], baseline="baseline")
    md = format_table(rows, "markdown").splitlines()
    assert md[0].startswith("| run | seeds |") and "time / baseline" in md[0] and "time to 72.00 %" in md[0]
    assert md[3].startswith("| hybrid | 2 | 3 | 85.00 ± 1.41 | 85.50 ± 0.71 |"), md[3]
    assert "| 26.0 ± 2.1 s |" in md[3] and "| 14.0 ± 3.1 s |" in md[3] and "| 0.852 |" in md[3] and "+5.00" in md[3]
    plain = format_table(summarize([load_run(runs[0])]), "plain").splitlines()
    assert plain[0].split()[:2] == ["run", "seeds"] and "time / baseline" not in plain[0]
    assert plain[1].split()[0] == "baseline" and "30.5 s" in plain[1]
    with pytest.raises(ValueError, match="'markdown' or 'plain'"):
        format_table(rows, "html")


def test_csv_has_raw_numbers(runs, tmp_path):
    import csv

    rows = summarize([load_run(r) for r in runs], baseline="baseline")
    path = write_csv(rows, tmp_path / "summary.csv")
    table = list(csv.DictReader(path.open()))
    assert [r["label"] for r in table] == ["baseline", "hybrid"]
    assert float(table[1]["final_acc"]) == pytest.approx(0.85) and float(table[1]["time_to_target"]) == pytest.approx(14.02)
    assert table[0]["final_acc_std"] == "" and table[1]["target_reached"] == "2"


def test_plots_are_pngs(runs, tmp_path):
    paths = plot_runs([load_run(r) for r in runs], tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(PLOTS)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_write_report(runs, tmp_path):
    path = write_report(runs, tmp_path / "report", baseline="baseline", title="digits compare")
    text = path.read_text()
    assert text.startswith("# digits compare") and "| hybrid | 2 |" in text
    for name in (*PLOTS, "train_vs_test_accuracy.png"):
        assert f"({name})" in text and (path.parent / name).read_bytes()[:4] == b"\x89PNG"
    assert "| train loss | train acc % |" in text  # the regime: final training loss and accuracy
    summary = json.loads((path.parent / "summary.json").read_text())
    assert [r["label"] for r in summary] == ["baseline", "hybrid"]
    assert (path.parent / "summary.csv").read_text().startswith("label,runs,epochs,final_acc,final_acc_std")
    with pytest.raises(ReportError, match="no runs"):
        write_report([], tmp_path / "empty")


def test_report_summary_is_strict_json_for_a_diverged_run(tmp_path):
    run_dir = tmp_path / "nan"
    run_dir.mkdir()
    # A metrics file as runs before strict JSON wrote it: bare NaN tokens.
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0, "test_acc": 0.1, "test_loss": NaN, "wall_time": 1.0}\n')
    path = write_report([run_dir], tmp_path / "report")
    (row,) = strict_loads((path.parent / "summary.json").read_text())
    assert row["final_acc"] == 0.1 and row["final_loss"] is None


def test_worker_times_are_drawn_against_the_plan(tmp_path, runs):
    run_dir = tmp_path / "dbsl"
    run_dir.mkdir()
    RunConfig(name="dbsl run").save(run_dir / "config.yaml")
    plan = {"small": 1, "per_resolution": {"12": {"predicted_epoch_seconds": [0.5, 0.5]}}}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    with MetricsWriter(run_dir) as writer:
        for epoch in range(3):
            writer.log(epoch, {"wall_time": epoch + 1.0, "test_acc": 0.5, "workers": [
                {"worker": 0, "seconds": 0.6, "resolution": 12}, {"worker": 1, "seconds": 0.55, "resolution": 12}]})
    path = write_report([run_dir, runs[0]], tmp_path / "report")
    drawn = path.parent / "workers_dbsl_run.png"  # the label, made safe for a file name
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(workers_dbsl_run.png)" in path.read_text()
    # the fixture's runs have no per-worker seconds: nothing to draw for them
    assert sorted(p.name for p in path.parent.glob("workers_*.png")) == ["workers_dbsl_run.png"]


def test_runs_of_one_name_with_other_configs_are_rows_of_their_own(tmp_path):
    # two seeds of one config are one row; the same name with another LR is another row,
    # labelled with the key that tells them apart (not merged as if it were a seed)
    dirs = [make_run(tmp_path, "hybrid", [0.6, 0.8], 8.0), make_run(tmp_path, "hybrid", [0.6, 0.82], 8.0, seed=1)]
    other = make_run(tmp_path / "lr", "hybrid", [0.5, 0.7], 8.0)
    RunConfig.from_dict({"name": "hybrid", "schedule": {"lr": 0.05}}).save(other / "config.yaml")
    rows = summarize([load_run(d) for d in [*dirs, other]])
    assert [(r["label"], r["runs"]) for r in rows] == [("hybrid [schedule.lr=0.1]", 2), ("hybrid [schedule.lr=0.05]", 1)]
    path = write_report([*dirs, other], tmp_path / "report")
    assert "`hybrid [schedule.lr=0.05]`: " + str(other) in path.read_text()


def test_worker_plots_of_labels_alike_once_made_safe_do_not_overwrite_each_other(tmp_path):
    made = []
    for name in ("a/b", "a_b"):  # "a/b": a config no longer accepted (name is one file name), but older runs have it
        run_dir = tmp_path / name.replace("/", "-")
        run_dir.mkdir()
        RunConfig(name="placeholder").save(run_dir / "config.yaml")
        text = (run_dir / "config.yaml").read_text()
        (run_dir / "config.yaml").write_text(text.replace("name: placeholder", f"name: {name}", 1))
        with MetricsWriter(run_dir) as writer:
            writer.log(0, {"wall_time": 1.0, "test_acc": 0.5, "workers": [{"worker": 0, "seconds": 0.6}]})
        made.append(run_dir)
    path = write_report(made, tmp_path / "report")
    assert sorted(p.name for p in path.parent.glob("workers_*.png")) == ["workers_a_b-2.png", "workers_a_b.png"]


def test_worker_times_take_the_waiting_at_syncs_out_of_training_and_mark_replans(tmp_path):
    run_dir = tmp_path / "bsp"
    run_dir.mkdir()
    RunConfig(name="bsp").save(run_dir / "config.yaml")
    # BSP: both mini-epochs take 2.0 s; worker 1 computed 1.0 s and waited 0.8 s for worker 0
    plan = {"workers": 2, "small": 1, "replans": [{"after_epoch": 0, "factors": [1.0, 1.1]},
                                                 {"at_resume": 2, "workers": 3}]}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    with MetricsWriter(run_dir) as writer:
        writer.log(0, {"wall_time": 2.0, "test_acc": 0.5, "workers": [
            {"worker": 0, "seconds": 2.0, "wait_seconds": 0.0, "sync_seconds": 0.2, "resolution": 12},
            {"worker": 1, "seconds": 2.0, "wait_seconds": 0.8, "sync_seconds": 0.2, "resolution": 12}]})
    times = worker_times(load_run(run_dir))
    assert times[0]["training"] == [pytest.approx(1.8)] and times[1]["training"] == [pytest.approx(1.0)]
    assert times[1]["waiting"] == [0.8] and times[1]["merging"] == [0.2] and times[1]["epoch"] == [1]  # 1-based
    # a re-plan after the first epoch falls between epochs 1 and 2; a resume at the third before it
    assert replan_marks(plan) == [(1.5, "re-plan"), (2.5, "resumed on 3 workers")]
    path = write_report([run_dir], tmp_path / "report")
    assert (path.parent / "workers_bsp.png").read_bytes()[:4] == b"\x89PNG"
    # 4 workers on 2 CPU cores: the plot says why the measured times sit above the plan
    (run_dir / "summary.json").write_text(json.dumps({"cpu_cores": 2, "device": "cpu"}))
    assert shared_cores_note(load_run(run_dir), {**plan, "workers": 4}).startswith("4 workers share 2 cores")
    assert shared_cores_note(load_run(run_dir), plan) is None  # 2 workers, 2 cores
    (run_dir / "summary.json").write_text(json.dumps({"cpu_cores": 2, "device": "cuda"}))
    assert shared_cores_note(load_run(run_dir), {**plan, "workers": 4}) is None


def test_the_noise_scale_column_and_plot_show_the_last_measured_b_noise(tmp_path):
    measured = []
    for seed, last in ((0, 40.0), (1, 60.0)):
        run_dir = make_run(tmp_path, "dbsl", [0.5, 0.7, 0.8], 10.0, seed=seed)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for record, b_noise in zip([r for r in lines if "test_acc" in r], [20.0, last, None]):
            record["workers"] = [{"worker": 0, "batch": 256}, {"worker": 1, "batch": 24}]
            if b_noise is not None:  # the last epoch measured none: the one before counts
                record.update(b_noise=b_noise, noise_source="workers")
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        measured.append(run_dir)
    plain = make_run(tmp_path, "baseline", [0.5, 0.7, 0.8], 10.0)
    rows = summarize([load_run(r) for r in [plain, *measured]])
    assert (rows[0]["b_noise"], rows[1]["b_noise"]) == (None, 50.0)
    assert rows[1]["b_noise_std"] == pytest.approx(14.142, rel=1e-3)
    table = format_table(rows)
    assert "| B_noise |" in table and "| 50 ± 14 |" in table
    path = write_report([plain, *measured], tmp_path / "report")
    assert "(noise_scale_vs_epoch.png)" in path.read_text()
    assert (path.parent / "noise_scale_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert "b_noise,b_noise_std" in (path.parent / "summary.csv").read_text().splitlines()[0]
    assert not (write_report([plain], tmp_path / "none").parent / "noise_scale_vs_epoch.png").exists()
