"""Plugin registries (dbl_ps.registry): engines, data sources and trackers by name or by
import path, their traits read by the config without importing torch, the built-in
trackers' files (TensorBoard, CSV) and a user's engine, source and tracker in one run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dbl_ps.config import ConfigError, DataConfig, RunConfig, load_config
from dbl_ps.data import DataError, load_dataset
from dbl_ps.imports import ImportPathError
from dbl_ps.metrics import CSV_FILE, CsvWriter
from dbl_ps.registry import DATA_SOURCES, ENGINES, SYNCHRONIZERS, TRACKERS, Registry, UnknownPluginError
from dbl_ps.runtime.engine_setup import build_engine, check_store_mode_engine
from dbl_ps.runtime.tracking import open_trackers
from dbl_ps.training.engine import TorchEngine
from dbl_ps.training.rundir import RunDirectory
from dbl_ps.training.topology import LaunchError, Topology

# A user's plugins, written into tmp_path and named by import path as a config would.
USER_PLUGINS = '''
import json
import os
from pathlib import Path

from dbl_ps.data import make_synthetic
from dbl_ps.training.engine import TorchEngine


class MarkedEngine(TorchEngine):
    """TorchEngine that leaves a file per worker process, to show it trained."""

    def __init__(self, module, cfg, device, topology):
        super().__init__(module, cfg, device, topology)
        Path(os.environ["DBLPS_MARKS"], f"engine-worker{topology.worker}").write_text("built")


def build_marked(module, cfg, device, topology, *, batch_size, options):
    engine = MarkedEngine(module, cfg, device, topology)
    engine.built_with = batch_size
    return engine


def not_an_engine(module, cfg, device, topology, *, batch_size, options):
    return "oops"


def load(data_cfg, image_size):
    return make_synthetic(num_train=96, num_test=32, num_classes=4, channels=3, size=16, seed=3)


class LinesSink:
    def __init__(self, path, header):
        self.path = path
        with open(self.path, "a") as fh:
            fh.write(json.dumps(header) + "\\n")

    def log(self, step, record):
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, "keys": sorted(record)}) + "\\n")

    def close(self):
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"closed": True}) + "\\n")


def open_lines(cfg, run_dir, *, resuming, tags, warn):
    return LinesSink(run_dir.path / "user_tracker.jsonl", {"resuming": resuming, "tags": tags, "name": cfg.name})
'''


@pytest.fixture
def user_plugins(tmp_path, monkeypatch):
    """The module `dblps_user_plugins` importable from tmp_path (as PYTHONPATH would make it)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "dblps_user_plugins.py").write_text(USER_PLUGINS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "dblps_user_plugins", raising=False)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("DBLPS_MARKS", str(marks))
    yield folder
    sys.modules.pop("dblps_user_plugins", None)


# --- the Registry class -----------------------------------------------------------------


def _widgets() -> Registry:
    return Registry("widget", key="widget", interface="a widget factory", traits={"fast": False})


def test_register_by_call_by_decorator_and_lazily_by_path():
    reg = _widgets()

    def plain():
        return "plain"

    reg.register("plain", plain, fast=True)

    @reg.register("decorated")
    def decorated():
        return "decorated"

    reg.register("lazy", "json:dumps")
    assert reg.names() == ["plain", "decorated", "lazy"] and "lazy" in reg and "nope" not in reg
    entry = reg.get("plain")
    assert (entry.name, entry.obj, dict(entry.traits)) == ("plain", plain, {"fast": True})
    assert reg.get("decorated").obj() == "decorated" and reg.traits("decorated") == {"fast": False}
    assert reg.get("lazy").obj is json.dumps
    assert reg.with_trait("fast") == ["plain"]


def test_an_import_path_names_user_code_with_the_default_traits():
    reg = _widgets()
    for path in ("json:loads", "json.loads"):
        entry = reg.get(path)
        assert (entry.name, entry.obj, dict(entry.traits)) == (path, json.loads, {"fast": False})
    # traits() reads the form only: a module that is not even installed is not imported
    assert reg.traits("no_such_module_anywhere:thing") == {"fast": False}
    with pytest.raises(ImportPathError, match=r"widget='no_such_module_anywhere:thing'.*does not import"):
        reg.get("no_such_module_anywhere:thing")


def test_an_unknown_name_is_one_error_listing_the_names_and_the_import_path_form():
    reg = _widgets()
    reg.register("alpha", "json:dumps")
    reg.register("beta", "json:loads")
    for bad in ("gamma", "bad:path:", 3):
        with pytest.raises(UnknownPluginError) as info:
            reg.get(bad)
        message = str(info.value)
        assert repr(bad) in message and "'alpha', 'beta'" in message
        assert "import path 'package.module:callable' naming a widget factory" in message
    assert isinstance(info.value, ValueError)


def test_a_bad_registration_is_refused():
    reg = _widgets()
    with pytest.raises(ValueError, match="unknown trait.*slow.*has fast"):
        reg.register("x", "json:dumps", slow=True)
    with pytest.raises(ValueError, match="without ':' or '.'"):
        reg.register("my.widget", "json:dumps")
    with pytest.raises(ValueError, match="not callable"):
        reg.register("x", 42)
    with pytest.raises(ImportPathError):
        reg.register("x", "not a path")


def test_every_built_in_resolves():
    assert ENGINES.names() == ["torch", "deepspeed", "fsdp"]
    assert set(DATA_SOURCES.names()) == {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder",
                                         "synthetic", "shards", "factory"}
    assert TRACKERS.names() == ["wandb", "tensorboard", "csv"]
    assert SYNCHRONIZERS.names() == ["store", "collective", "mixed_batch"]
    for name in SYNCHRONIZERS.names():  # each with the coordinator the run driver holds in its mode
        from dbl_ps.imports import import_callable
        assert callable(import_callable(SYNCHRONIZERS.traits(name)["coordinator"]))
    for registry in (ENGINES, DATA_SOURCES, TRACKERS, SYNCHRONIZERS):
        for name in registry.names():
            assert callable(registry.get(name).obj), (registry.kind, name)
    assert ENGINES.get("torch").obj is TorchEngine


def test_names_traits_and_config_validation_import_no_torch():
    code = textwrap.dedent("""
        import sys
        from dbl_ps.config import load_config
        from dbl_ps.registry import DATA_SOURCES, ENGINES, TRACKERS
        load_config(None, ["engine=deepspeed", "data.source=synthetic", "tracking.trackers=[tensorboard, csv]"])
        load_config(None, ["engine=my_pkg.engines:Mine", "data.source=my_pkg.data:load",
                           "tracking.trackers=[my_pkg.trackers:open]"])
        for registry in (ENGINES, DATA_SOURCES, TRACKERS):
            registry.names(), [registry.traits(n) for n in registry.names()]
        heavy = [m for m in ("torch", "numpy", "tensorboard", "wandb", "deepspeed", "my_pkg") if m in sys.modules]
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_config_error_from_the_command_line_comes_before_torch_is_imported():
    """`dbl-ps train` (and lr-find, compare) with a bad key: the one line came after 5 s of
    importing torch (every command's arguments were built through dbl_ps.shards, and train
    imported its launcher first); now the process exits without torch ever imported."""
    code = textwrap.dedent("""
        import sys
        from dbl_ps.cli import main
        for command in ("train", "lr-find", "compare"):
            assert main([command, "dbl.tau=abc"]) == 2
        heavy = [m for m in ("torch", "numpy", "dbl_ps.training", "dbl_ps.shards") if m in sys.modules]
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("config key 'dbl.tau': got 'abc'") == 3


def test_the_shard_commands_choices_are_the_writers():
    from dbl_ps.commands import shard
    from dbl_ps.shards import writer

    assert (shard.SOURCE_TYPES, shard.DEFAULT_SAMPLES_PER_SHARD) == (writer.SOURCE_TYPES, writer.DEFAULT_SAMPLES_PER_SHARD)


# --- the config -------------------------------------------------------------------------


@pytest.mark.parametrize("override, key, names", [
    ("engine=tpu_engine", "engine", "'torch', 'deepspeed', 'fsdp'"),
    ("data.source=svhn", "data.source", "'digits', 'fashion_mnist', 'mnist', 'cifar10'"),
    ("tracking.trackers=[csv, tb]", "tracking.trackers[1]", "'wandb', 'tensorboard', 'csv'"),
])
def test_config_refuses_an_unknown_plugin_naming_the_value_and_the_registered_ones(override, key, names):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert info.value.key == key and f"config key '{key}'" in message
    assert repr(override.split("=")[1].strip("[]").split(", ")[-1]) in message
    assert names in message and "or an import path 'package.module:callable'" in message


def test_engine_traits_drive_the_config_rules():
    with pytest.raises(ConfigError, match=r"'deepspeed_config'.*null unless engine is 'deepspeed'"):
        load_config(None, ["deepspeed_config=gpu_bf16"])
    with pytest.raises(ConfigError, match=r"engine 'fsdp' takes its precision from fsdp.param_dtype"):
        load_config(None, ["engine=fsdp", "precision=bf16"])
    with pytest.raises(ConfigError, match=r"'fsdp.ranks_per_worker'.*1 unless engine is 'fsdp'"):
        load_config(None, ["fsdp.ranks_per_worker=2"])
    with pytest.raises(ConfigError, match=r"'tracking.trackers\[1\]'.*each tracker once"):
        load_config(None, ["tracking.trackers=[csv, csv]"])
    # a user's engine gets the default traits: a store-mode worker, precision applies
    load_config(None, ["engine=my_pkg.engines:Mine", "precision=bf16"])
    check_store_mode_engine(RunConfig(engine="my_pkg.engines:Mine"))
    with pytest.raises(LaunchError, match=r"engine 'fsdp' shards a worker over several ranks: run it under a launcher"):
        check_store_mode_engine(RunConfig(engine="fsdp"))


def test_source_traits_drive_the_data_rules():
    with pytest.raises(ConfigError, match=r"'data.path'.*source 'cifar10' reads files"):
        load_config(None, ["data.source=cifar10"])
    with pytest.raises(ConfigError, match=r"'data.random_resized_crop'.*false for source 'digits'"):
        load_config(None, ["data.random_resized_crop=true"])
    load_config(None, ["data.source=factory", "data.factory=my_pkg.data:make", "data.random_resized_crop=true"])
    load_config(None, ["data.source=my_pkg.data:load"])  # a user's source needs no data.path


# --- engines ----------------------------------------------------------------------------


def test_a_users_engine_by_import_path_builds_in_both_modes(user_plugins):
    module, device, topology = torch.nn.Linear(4, 2), torch.device("cpu"), Topology.single(0, 1)
    cfg = RunConfig(engine="dblps_user_plugins:MarkedEngine")
    engine = build_engine(cfg, module, device, topology, batch_size=8, options={})
    assert type(engine).__name__ == "MarkedEngine" and isinstance(engine, TorchEngine)
    factory = RunConfig(engine="dblps_user_plugins.build_marked")
    assert build_engine(factory, module, device, topology, batch_size=8, options={}).built_with == 8  # a store worker
    assert build_engine(factory, module, device, topology, batch_size=None, options={}).built_with is None  # a rank
    with pytest.raises(LaunchError, match=r"engine='dblps_user_plugins:not_an_engine' built a str"):
        build_engine(RunConfig(engine="dblps_user_plugins:not_an_engine"), module, device, topology,
                            batch_size=8, options={})
    with pytest.raises(LaunchError, match=r"engine='dblps_user_plugins:NoSuchEngine'.*has no attribute"):
        build_engine(RunConfig(engine="dblps_user_plugins:NoSuchEngine"), module, device, topology,
                            batch_size=8, options={})


# --- data sources -----------------------------------------------------------------------


def test_a_users_data_source_by_import_path(user_plugins):
    ds = load_dataset(DataConfig(source="dblps_user_plugins:load", train_limit=40), image_size=16)
    assert (len(ds.train), len(ds.test), ds.num_classes) == (40, 32, 4)
    with pytest.raises(DataError, match=r"data.source='dblps_user_plugins:nope'.*has no attribute"):
        load_dataset(DataConfig(source="dblps_user_plugins:nope"))
    with pytest.raises(DataError, match=r"data.source='svhn' is not a registered data source.*'digits'"):
        load_dataset(DataConfig(source="svhn"))


def test_registering_a_source_adds_a_name_with_its_traits(tmp_path):
    from dbl_ps.data import make_synthetic

    def loader(data_cfg, image_size):
        return make_synthetic(num_train=20, num_test=10, num_classes=2, size=8)

    DATA_SOURCES.register("test_reg_source", loader, path="a folder of test files")
    try:
        assert DATA_SOURCES.get("test_reg_source").obj is loader and "nope" not in DATA_SOURCES
        assert len(load_dataset(DataConfig(source="test_reg_source")).train) == 20
        file = tmp_path / "a_file"
        file.write_text("x")
        with pytest.raises(DataError, match="is a file; source 'test_reg_source' reads a directory: a folder of test"):
            load_dataset(DataConfig(source="test_reg_source", path=str(file)))
    finally:
        DATA_SOURCES._entries.pop("test_reg_source")


# --- trackers ---------------------------------------------------------------------------

RECORDS = [{"train_loss": 2.0, "test_acc": 0.25, "resolution": 12, "workers": [{"loss": 2.0}], "note": "a"},
           {"train_loss": 1.5, "test_acc": 0.5, "resolution": 16, "workers": [{"loss": 1.5}], "diverged": False},
           {"train_loss": 1.0, "test_acc": 0.75, "resolution": 16, "workers": [{"loss": 1.0}]}]


def _log_run(cfg, run_dir, records, *, resuming, first=0):
    sinks = open_trackers(cfg, run_dir, resuming=resuming, tags=["torch"], warn=print)
    for i, record in enumerate(records):
        for sink in sinks:
            sink.log(first + i, record)
    for sink in sinks:
        sink.close()
    return sinks


def test_a_users_tracker_by_import_path(user_plugins, tmp_path):
    cfg = load_config(None, ["tracking.trackers=[dblps_user_plugins:open_lines]", "name=tracked"])
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.path.mkdir()
    _log_run(cfg, run_dir, RECORDS[:2], resuming=False)
    lines = [json.loads(line) for line in (run_dir.path / "user_tracker.jsonl").read_text().splitlines()]
    assert lines[0] == {"resuming": False, "tags": ["torch"], "name": "tracked"}
    assert [line["step"] for line in lines[1:3]] == [0, 1] and "test_acc" in lines[1]["keys"]
    assert lines[-1] == {"closed": True}
    assert open_trackers(load_config(None, []), run_dir, resuming=False) == []
    bad = load_config(None, ["tracking.trackers=[dblps_user_plugins:missing]"])
    with pytest.raises(LaunchError, match=r"tracking.trackers='dblps_user_plugins:missing'.*has no attribute"):
        open_trackers(bad, run_dir, resuming=False)


def test_csv_tracker_writes_one_row_per_epoch_and_trims_on_resume(tmp_path):
    cfg = load_config(None, ["tracking.trackers=[csv]"])
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.path.mkdir()
    (sink,) = _log_run(cfg, run_dir, RECORDS, resuming=False)
    assert isinstance(sink.sink, CsvWriter)  # behind its guard (IsolatedSink)
    sink.log(3, {"event": "replan", "factors": [1.0]})  # not an epoch: left out
    text = (run_dir.path / CSV_FILE).read_text().splitlines()
    # W&B's names, each worker's included; the epoch 1-based, as the console counts
    assert text[0] == "epoch,test/acc,train/loss,schedule/resolution,train/worker0/loss"
    assert text[1:] == ["1,0.25,2.0,12,2.0", "2,0.5,1.5,16,1.5", "3,0.75,1.0,16,1.0"]
    with pytest.raises(FileExistsError):
        CsvWriter(run_dir.path)
    # resumed from the checkpoint of epoch 1: epochs 2 and 3 are trained again
    _log_run(cfg, run_dir, [{"train_loss": 1.4, "test_acc": 0.6, "lr": 0.1}], resuming=True, first=1)
    text = (run_dir.path / CSV_FILE).read_text().splitlines()
    assert text[0] == "epoch,test/acc,train/loss,schedule/resolution,train/worker0/loss,schedule/lr"
    assert text[1:] == ["1,0.25,2.0,12,2.0,", "2,0.6,1.4,,,0.1"]
    assert not list(run_dir.path.glob("*.tmp"))


def test_tensorboard_tracker_writes_what_wandb_logs_and_appends_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dbl_ps.metrics import epoch_metrics

    cfg = load_config(None, ["tracking.trackers=[tensorboard]"])
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.path.mkdir()
    _log_run(cfg, run_dir, RECORDS, resuming=False)
    replan = {"event": "replan", "measured_resolution": 16, "factors": [1.5, 1.0],
              "new": {"16": {"shares": [400, 600], "batches": [24, 64]}}}
    _log_run(cfg, run_dir, [{"test_acc": 0.9}, replan], resuming=True, first=2)

    events = EventAccumulator(str(run_dir.path / "tensorboard"))
    events.Reload()
    tags = {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert len(list((run_dir.path / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one folder, appended
    assert set(tags) == set(epoch_metrics(RECORDS[0])) | set(epoch_metrics(replan))  # W&B's names
    assert {"train/worker0/loss", "replan/worker0/factor", "replan/worker1/share"} <= set(tags)
    # epochs 1-based; the resumed run's epoch 3 replaces the interrupted run's (purge_step)
    assert tags["test/acc"] == [(1, 0.25), (2, 0.5), (3, pytest.approx(0.9))]
    assert tags["train/worker0/loss"] == [(1, 2.0), (2, 1.5)]


def test_several_trackers_at_once_in_a_real_run_log_the_same_per_worker_values(tmp_path):
    """W&B (offline), TensorBoard and CSV together on one run: each has every worker's curve,
    at the same 1-based epochs, with the values metrics.jsonl holds."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dbl_ps.commands.train import train_run
    from dbl_ps.integrations.wandb import read_offline_run
    from dbl_ps.metrics import read_metrics

    run = tmp_path / "run"
    cfg = load_config(None, ["dbl.workers=2", "schedule.epochs=2", "schedule.milestones=[1]", "data.train_limit=300",
                             "schedule.warmup_epochs=0", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]",
                             "tracking.trackers=[tensorboard, csv]", "tracking.wandb.enabled=true",
                             "tracking.wandb.mode=offline"])
    assert train_run(cfg, run_dir=str(run), progress=False) == 0
    records = read_metrics(run)
    want = {(e + 1, w): r["workers"][w]["loss"] for e, r in enumerate(records) for w in (0, 1)}
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tensorboard = {(s.step, w): s.value for w in (0, 1) for s in events.Scalars(f"train/worker{w}/loss")}
    rows = list(csv.DictReader((run / CSV_FILE).open()))
    from_csv = {(int(r["epoch"]), w): float(r[f"train/worker{w}/loss"]) for r in rows for w in (0, 1)}
    (offline,) = (run / "wandb").glob("offline-run-*")
    history = [h for h in read_offline_run(offline)["history"] if "train/worker0/loss" in h]
    from_wandb = {(int(h["epoch"]), w): h[f"train/worker{w}/loss"] for h in history for w in (0, 1)}
    for got in (tensorboard, from_csv, from_wandb):
        assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)


# --- end to end -------------------------------------------------------------------------


def test_dbl_ps_train_runs_a_users_engine_source_and_tracker(user_plugins, tmp_path):
    """One store-mode run, everything named by import path from a module on PYTHONPATH
    (the spawned workers import it too)."""
    run = tmp_path / "run"
    overrides = ["dbl.workers=2", "schedule.epochs=1", "schedule.milestones=[]", "schedule.warmup_epochs=0",
                 "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "eval.every=1",
                 "engine=dblps_user_plugins:MarkedEngine", "data.source=dblps_user_plugins:load",
                 "tracking.trackers=[dblps_user_plugins:open_lines, csv]"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(user_plugins), str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run), *overrides],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    marks = Path(os.environ["DBLPS_MARKS"])
    assert sorted(p.name for p in marks.iterdir()) == ["engine-worker0", "engine-worker1"]
    lines = [json.loads(line) for line in (run / "user_tracker.jsonl").read_text().splitlines()]
    assert lines[0]["resuming"] is False and lines[-1] == {"closed": True}
    assert any(line.get("step") == 0 and "test_acc" in line["keys"] for line in lines)
    rows = (run / CSV_FILE).read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 2
