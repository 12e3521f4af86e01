"""Extending dbl-ps from a user's own module (docs/ARCHITECTURE.md, "Extending dbl-ps"): each
test is one recipe. The plugins live outside dbl_ps, in `tests/user_plugins/counting.py` (a
package on sys.path, as a user's project on PYTHONPATH), registered by name and found through
`DBL_PS_PLUGINS` in every process that looks the name up.

The third recipe, a callback, is done exactly by
`tests/test_callbacks.py::test_a_callback_by_import_path_runs_on_the_main_process_in_every_mode`
(by import path, in `dbl-ps train` on one machine and under torchrun) and the in-process tests
beside it (objects handed to the driver, as `Trainer(callbacks=)` does); not repeated here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dbl_ps.commands.train import train_run
from dbl_ps.config import load_config
from dbl_ps.metrics import read_metrics
from dbl_ps.registry import ENGINES, PLUGINS_ENV, SYNCHRONIZERS
from test_driver_inprocess import drive

# A short run: 1 epoch, 2 workers (1 small, 1 large), a given time model (nothing measured), a
# few hundred digits at one resolution, a tiny model (tests/tiny_net.py).
SHORT = ["schedule.epochs=1", "schedule.milestones=[]", "schedule.warmup_epochs=0", "dbl.workers=2", "dbl.small=1",
         "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "threads_per_worker=1", "data.train_limit=400",
         "data.test_limit=100", "data.eval_batch_size=1024", "schedule.resolutions=[12]", "dbl.batch_large=[32]",
         "model.dropout=[0.0]", "eval.bn_samples=64", "model.name=tiny_net:build"]


@pytest.fixture
def user_plugins(tmp_path, monkeypatch):
    """`DBL_PS_PLUGINS=user_plugins.counting` and the folder its counts go to; afterwards the
    names it registered are taken out again (the registries are global)."""
    monkeypatch.setenv(PLUGINS_ENV, "user_plugins.counting")
    counts = tmp_path / "counts"
    counts.mkdir()
    monkeypatch.setenv("COUNTING_DIR", str(counts))
    yield counts
    for registry, name in ((SYNCHRONIZERS, "counting_store"), (ENGINES, "counting_torch"),
                           (ENGINES, "counting_factory")):
        registry._entries.pop(name, None)
    sys.modules.pop("user_plugins.counting", None)


def _counts(folder: Path, what: str) -> dict[int, int]:
    return {int(p.name.rpartition("worker")[2]): int(p.read_text()) for p in folder.glob(f"{what}-worker*")}


def test_a_users_sync_kind_registered_by_name_runs_and_is_recorded(user_plugins, tmp_path):
    """Recipe "add a sync kind": `sync=counting_store`, a synchronizer factory wrapping the store's
    client and registered with its traits and the store's coordinator from the user's module.
    A real store-mode `dbl-ps train` (train_run: the launcher in this process, two spawned
    worker processes, each registering the name from DBL_PS_PLUGINS when its config is checked).
    Every worker's merges are counted, one per sync the run reports; plan.json and summary.json
    name the kind, with the mode and rule its traits made the defaults."""
    assert "counting_store" not in SYNCHRONIZERS  # nothing registered until a lookup misses
    cfg = load_config(None, [*SHORT, "sync=counting_store"])  # the miss imports DBL_PS_PLUGINS here
    assert "user_plugins.counting" in sys.modules and SYNCHRONIZERS.traits("counting_store")["coordinator"]
    run = tmp_path / "run"
    assert train_run(cfg, run_dir=str(run), progress=False) == 0
    (record,) = [r for r in read_metrics(run) if "workers" in r]
    syncs = {w["worker"]: w["syncs"] for w in record["workers"]}
    assert _counts(user_plugins, "merges") == syncs and all(n > 0 for n in syncs.values())
    want = {"kind": "counting_store", "mode": "asp", "rule": "blend", "period": "mini_epoch", "staleness": 0}
    assert json.loads((run / "plan.json").read_text())["sync"] == want
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sync"] == want and summary["status"] == "finished"


def test_a_users_engine_registered_by_name_trains_every_step(user_plugins, tmp_path):
    """Recipe "add an engine": `engine=counting_torch`, a TorchEngine subclass registered in
    ENGINES from the user's module, is the engine every worker's loop trains with, for every step
    the run reports. In one process (tests/test_driver_inprocess.py: the run driver, the workers'
    real loops in turn), so it takes seconds; the engine is built by the same `build_worker_loop`
    as in a spawned worker or a torchrun rank. (By import path, `engine=pkg.mod:MyEngine`, in a
    store-mode run: tests/test_registry.py::test_dbl_ps_train_runs_a_users_engine_source_and_tracker.)"""
    _, coordinator, summary = drive(tmp_path / "run", "schedule.epochs=2", "schedule.milestones=[]", "engine=counting_torch")
    assert summary["status"] == "finished" and summary["epochs"] == 2
    engines = [loop.engine for loop in coordinator.loops]
    assert [type(e).__name__ for e in engines] == ["CountingEngine", "CountingEngine"]
    records = [r for r in read_metrics(tmp_path / "run") if "workers" in r]
    steps = {w: sum(r["workers"][w]["steps"] for r in records) for w in (0, 1)}
    assert {w: e.steps for w, e in enumerate(engines)} == steps and all(n > 0 for n in steps.values())
    assert _counts(user_plugins, "steps") == steps  # save_worker_state after each epoch wrote them


def test_an_engine_owns_its_run_setup_through_its_registration(user_plugins, tmp_path):
    """Recipe "add an engine", its settings: the `setup` trait names the user's EngineSetup, whose
    check runs before the time model is measured (its line is in the run's log) and whose
    options reach every worker's engine factory, as DeepSpeed's JSON does."""
    lines: list[str] = []
    _, coordinator, summary = drive(tmp_path / "run", "schedule.epochs=1", "schedule.milestones=[]",
                                    "engine=counting_factory", log=lines.append)
    assert summary["status"] == "finished"
    assert "counting engine: steps are counted from 1000" in lines
    records = [r for r in read_metrics(tmp_path / "run") if "workers" in r]
    assert [loop.engine.steps for loop in coordinator.loops] == [1000 + r["steps"] for r in records[0]["workers"]]


def test_an_engine_owns_its_config_keys_through_its_registration(user_plugins, tmp_path):
    """Recipe "add an engine", its keys: the `settings` trait names the user's EngineSettings
    (`counting.first_count`). The section is taken in once the engine's name is looked up: set,
    checked against its limits, listed by `dbl-ps configs --keys`, saved in config.yaml and read
    back, refused unless the run's engine reads it, and what the engine's set-up and every
    worker's engine get. The built-in engines' keys (`fsdp.*`, `deepspeed_config`) are theirs the
    same way: no engine is named in the central schema."""
    from dbl_ps.config import ConfigError, RunConfig, config_keys
    from dbl_ps.config.sections import LaunchConfig
    from user_plugins.counting_settings import CountingSettings

    cfg = load_config(None, ["engine=counting_factory", "counting.first_count=7"])
    assert cfg.settings(CountingSettings).first_count == 7 and cfg.to_dict()["counting"] == {"first_count": 7}
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    (key,) = [k for k in config_keys() if k.key == "counting.first_count"]
    assert (key.default, key.help) == (1000, "where each worker's step count starts") and ">= 0" in key.kind
    with pytest.raises(ConfigError, match=r"'counting.first_count': got -1, expected an integer >= 0"):
        load_config(None, ["engine=counting_factory", "counting.first_count=-1"])
    with pytest.raises(ConfigError, match=r"'counting.first_count': got 7, expected 1000 unless engine is "
                                          r"'counting_factory' \(set engine: counting_factory\)"):
        load_config(None, ["counting.first_count=7"])
    with pytest.raises(ConfigError, match=r"unknown config key 'counting.first'; did you mean 'counting.first_count'"):
        load_config(None, ["engine=counting_factory", "counting.first=7"])
    central = {f for cls in (RunConfig, LaunchConfig) for f in cls.__dataclass_fields__}
    assert not central & {"fsdp", "deepspeed_config", "counting"}

    lines: list[str] = []
    _, coordinator, summary = drive(tmp_path / "run", "schedule.epochs=1", "schedule.milestones=[]",
                                    "engine=counting_factory", "counting.first_count=7", log=lines.append)
    assert summary["status"] == "finished" and "counting engine: steps are counted from 7" in lines
    records = [r for r in read_metrics(tmp_path / "run") if "workers" in r]
    assert [loop.engine.steps for loop in coordinator.loops] == [7 + r["steps"] for r in records[0]["workers"]]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["counting"] == {"first_count": 7} and "fsdp" not in saved  # the run's engine's keys only


def test_a_plugin_module_that_does_not_import_is_named_in_the_config_error(monkeypatch):
    """`DBL_PS_PLUGINS` naming a module that is not there: the name it was to register is one
    config error saying so, not a traceback; a registered name never tries it."""
    from dbl_ps.config import ConfigError

    monkeypatch.setenv(PLUGINS_ENV, "no_such_plugin_module_xyz")
    with pytest.raises(ConfigError, match=r"config key 'sync': got 'counting_store'.*DBL_PS_PLUGINS\[0\]="
                                          r"'no_such_plugin_module_xyz': module 'no_such_plugin_module_xyz' does not "
                                          r"import"):
        load_config(None, ["sync=counting_store"])
    assert load_config(None, ["sync=store"]).sync == "store"


def test_a_sync_kind_by_import_path_is_refused_naming_the_registration_it_needs() -> None:
    """A sync kind needs its coordinator, which only a registration carries: an import path is
    one config error pointing at the recipe, before any work."""
    from dbl_ps.config import ConfigError, resolve_sync

    cfg = load_config(None, ["sync=user_plugins.counting:counting_store"])
    with pytest.raises(ConfigError, match=r"config key 'sync': got 'user_plugins.counting:counting_store', expected "
                                          r"a registered name .*DBL_PS_PLUGINS"):
        resolve_sync(cfg, launched=False)


def test_a_registered_engine_is_timed_as_itself_for_the_time_model(user_plugins):
    """Recipe "add an engine", calibration: a run measuring its time model builds the user's
    Engine subclass (`engine=counting_torch`) and times its step, not TorchEngine's, without
    the "timed as the torch step" line that engines with no step of their own get."""
    import torch
    from dbl_ps.training.time_models import run_engine_steps

    cfg = load_config(None, [*SHORT, "engine=counting_torch"])
    with run_engine_steps(cfg, "cpu", log=pytest.fail) as make_step:
        step = make_step(torch.nn.Linear(4, 2), device="cpu", precision="fp32", channels_last=False, compile=False)
    step(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    assert type(step.__self__).__name__ == "CountingEngine" and step.__self__.steps == 1


INSTALLED_PLUGIN_CHECK = textwrap.dedent("""
    import json, sys
    from dbl_ps.config import load_config
    from dbl_ps.registry import ENGINES, TRACKERS
    cfg = load_config(None, ["engine=installed_torch"])  # found with no DBL_PS_PLUGINS: the entry point
    print(json.dumps({"engines": ENGINES.names(), "traits": ENGINES.traits("installed_torch")["precision_from"],
                      "loaded": "my_installed_plugin" in sys.modules, "torch": "torch" in sys.modules,
                      "allowed": TRACKERS.allowed()}))
""")


def test_an_installed_package_registers_its_plugins_through_the_entry_point_group(tmp_path):
    """Recipe "ship plugins in a package": a distribution whose metadata declares an entry point
    in the group `dbl_ps.plugins` (here installed into a folder on sys.path: a real dist-info,
    as pip writes it) has its module imported on the first registry lookup of a process, with
    no DBL_PS_PLUGINS: its engine is a name a config may use, after the built-ins (which
    register the same way), with its traits, and no torch is imported to learn that. A
    package whose plugin module raises is named in the errors' list of allowed values."""
    site = tmp_path / "site"
    (site / "my_installed_plugin").mkdir(parents=True)
    (site / "my_installed_plugin" / "__init__.py").write_text(
        "from dbl_ps.registry import ENGINES\n"
        "ENGINES.register('installed_torch', 'dbl_ps.training.engine:TorchEngine', precision_from='mine')\n")
    (site / "broken_plugin.py").write_text("raise RuntimeError('no GPU here')\n")
    for name, module in (("my_installed_plugin", "my_installed_plugin"), ("broken_plugin", "broken_plugin")):
        info = site / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[dbl_ps.plugins]\n{name} = {module}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop(PLUGINS_ENV, None)
    done = subprocess.run([sys.executable, "-c", INSTALLED_PLUGIN_CHECK], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["engines"] == ["torch", "deepspeed", "fsdp", "installed_torch"]
    assert got["traits"] == "mine" and got["loaded"] and not got["torch"]
    assert "entry point 'broken_plugin' = 'broken_plugin' (group 'dbl_ps.plugins') raised RuntimeError: no GPU here" \
        in got["allowed"]
