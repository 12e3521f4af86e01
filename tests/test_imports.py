"""`dbl_ps.imports.import_callable`: user code by import path, and one clear error per mistake; the
layering as it runs: the core layer never imports a higher one, and the registries import what
they name only on use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dbl_ps.imports import ImportPathError, import_callable
from dbl_ps.registry import ENGINES


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_pkg").mkdir()
    (tmp_path / "my_user_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_user_pkg" / "things.py").write_text(
        "def make(x=1):\n    return x * 2\n\nclass Box:\n    @staticmethod\n    def build():\n        return 'box'\n\n"
        "NUMBER = 3\n")
    (tmp_path / "my_user_pkg" / "broken.py").write_text("import a_module_that_is_not_there_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_pkg"
    for name in [n for n in sys.modules if n.startswith("my_user_pkg")]:
        del sys.modules[name]


def test_both_forms_and_nested_attributes(user_module):
    assert import_callable("my_user_pkg.things:make")(4) == 8
    assert import_callable("my_user_pkg.things.make")(5) == 10
    assert import_callable("my_user_pkg.things:Box.build")() == "box"
    assert import_callable("collections:OrderedDict") is __import__("collections").OrderedDict


@pytest.mark.parametrize("path", ["", "make", "my_user_pkg.things:", ":make", "a b:c", "pkg:1x", 3])
def test_malformed_paths(path):
    with pytest.raises(ImportPathError, match="package.module:callable"):
        import_callable(path)


def test_module_that_does_not_import_shows_the_import_error(user_module):
    with pytest.raises(ImportPathError, match="module 'my_user_pkg.nothere' does not import .*ModuleNotFoundError"):
        import_callable("my_user_pkg.nothere:make")
    with pytest.raises(ImportPathError, match="a_module_that_is_not_there_xyz"):
        import_callable("my_user_pkg.broken:make", "data.factory")


def test_missing_attribute_and_not_callable(user_module):
    with pytest.raises(ImportPathError, match=r"model.name='my_user_pkg.things:nope': .*no attribute 'nope' \(it has .*make"):
        import_callable("my_user_pkg.things:nope", "model.name")
    with pytest.raises(ImportPathError, match="is a int, not a callable"):
        import_callable("my_user_pkg.things:NUMBER")


# --- layering: the core layer never reaches up ------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[list[str]]:
    """The importlinter contract's layers in pyproject.toml, highest first, each a list of modules."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    assert contract["type"] == "layers"
    return [[m.strip() for m in re.split(r"[:|]", line)] for line in contract["layers"]]


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": path, **env}, cwd=ROOT)


LAYERING = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    core, higher = json.loads(sys.argv[1]), json.loads(sys.argv[2])

    def reached_up():
        return sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in higher))

    found, seen = {}, set()

    def note(where):  # the higher-layer modules that appeared since the last note, blamed on `where`
        new = [m for m in reached_up() if m not in seen]
        seen.update(new)
        if new:
            found[where] = new

    for name in core:  # each core module and, for a package, every submodule, one after the other
        module = importlib.import_module(name)
        subs = [s.name for s in pkgutil.walk_packages(module.__path__, name + ".")] if hasattr(module, "__path__") else []
        for sub in [name, *subs]:
            importlib.import_module(sub)
            note(sub)
    # at run time: what `dbl-ps train` does with the core alone before any worker exists
    from dbl_ps.config import load_config, resolve_sync, sync_line, sync_record
    from dbl_ps.data import ShareLoader, build_transform, load_dataset
    from dbl_ps.models import build_model
    cfg = resolve_sync(load_config(None, ["data.train_limit=200", "data.test_limit=50"]), launched=False)
    sync_record(cfg), sync_line(cfg)
    data = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))
    transform = build_transform(cfg.data, data)
    loader = ShareLoader(data.train, transform, worker=0, shares=[100, 100], batch_size=16, resolution=12, seed=0)
    images, labels = next(iter(loader))
    build_model(cfg.model.name, data.num_classes, data.in_channels, 0.1)(images)
    note("run time (config, digits, a share loader's batch, the model)")
    print(json.dumps(found))
""")


def test_no_core_module_imports_a_higher_layer_in_a_fresh_interpreter():
    """Each module of the core layer (the last line of the importlinter contract) imported in a
    fresh interpreter, one after the other, then the core used as a run uses it before any
    worker exists (config, digits, a share loader's batch, the model): no module of a higher
    layer (training, synchronizers, integrations, shards, runtime, api, commands, cli) is in
    sys.modules. lint-imports checks the import statements; this checks what actually runs,
    function-level imports and imports by string included.

    What the core reaches only through a registry, on use, is the plugin's own business and not
    counted here: the registrations themselves (`dbl_ps.builtin_plugins`, which the registry's first
    lookup imports through its entry point, as it would a user package's; the core names it
    nowhere), the engines' own config keys (`fsdp_settings`, `deepspeed_settings`: a config takes
    in every registered engine's keys through its `settings` trait), and `data.source: shards`, which imports `dbl_ps.shards.loader` when
    `load_dataset` looks the source up (`DATA_SOURCES.get`), as a user's source is imported.
    Issue 31 noted `data/load.py` pulling `shards` at run time: that is this lookup, and a run
    on any other source never imports `dbl_ps.shards`."""
    from importlib.metadata import entry_points

    layers = _layers()
    core, higher = layers[-1], [m for layer in layers[:-1] for m in layer]
    assert "dbl_ps.registry" in core and "dbl_ps.training" in higher and "dbl_ps.shards" in higher
    assert "dbl_ps.builtin_plugins" in higher  # the top layer: it names every layer's modules, by string
    assert "dbl_ps.builtin_plugins" in [ep.value for ep in entry_points(group="dbl_ps.plugins")]
    done = _run(LAYERING, json.dumps(core), json.dumps([m for m in higher if m != "dbl_ps.builtin_plugins"]))
    assert done.returncode == 0, done.stderr[-3000:]
    # The engines' own config keys: a config takes them in through the `settings` trait (torch-free
    # modules: test_registry_import_paths_resolve_only_on_use checks no torch arrives with them).
    settings = {ENGINES.traits(n)["settings"].partition(":")[0] for n in ENGINES.names() if ENGINES.traits(n)["settings"]}
    assert settings == {"dbl_ps.integrations.fsdp_settings", "dbl_ps.integrations.deepspeed_settings"}
    through_registry = settings | {m.rpartition(".")[0] for m in settings}
    found = {where: [m for m in modules if m not in through_registry]
             for where, modules in json.loads(done.stdout.splitlines()[-1]).items()}
    assert {where: modules for where, modules in found.items() if modules} == {}
    # and no module of the core names it in code (a string or an import; the registry's
    # docstring says where the built-ins live): it arrives through the entry point alone
    names_it = re.compile(r"""["']dbl_ps\.builtin_plugins|import builtin_plugins|import dbl_ps\.builtin_plugins""")
    files = [f for name in core for f in (
        [ROOT / (name.replace(".", "/") + ".py")] if (ROOT / (name.replace(".", "/") + ".py")).is_file()
        else sorted((ROOT / name.replace(".", "/")).rglob("*.py")))]
    assert ROOT / "dbl_ps" / "registry.py" in files and ROOT / "dbl_ps" / "config" / "loading.py" in files
    named = [f.relative_to(ROOT).as_posix() for f in files if names_it.search(f.read_text())]
    assert named == [], named


REGISTRY_LAZY = textwrap.dedent("""
    import json, sys
    from dbl_ps.config import load_config, resolve_sync, sync_record
    from dbl_ps.registry import DATA_SOURCES, ENGINES, SYNCHRONIZERS, TRACKERS

    registries = (ENGINES, DATA_SOURCES, TRACKERS, SYNCHRONIZERS)
    targets = {slot[0].partition(":")[0] for r in registries for slot in r._entries.values() if isinstance(slot[0], str)}
    targets |= {r.traits(n)["coordinator"].partition(":")[0] for r in (SYNCHRONIZERS,) for n in r.names()}
    # every config-time lookup: names, traits, the rules that read them, errors, import paths' defaults
    for r in registries:
        r.names(), [r.traits(n) for n in r.names()], r.allowed(), r.check("my_pkg.mod:thing")
        [r.with_trait(t) for t in r.defaults]
    for overrides in (["engine=deepspeed", "data.source=synthetic", "tracking.trackers=[tensorboard, csv]"],
                      ["engine=fsdp", "sync=collective"], ["sync=mixed_batch", "dbl.small=0"],
                      ["sync=store", "store.mode=bsp", "data.source=shards", "data.path=/nonexistent"],
                      ["engine=my_pkg.engines:Mine", "callbacks=[my_pkg.cb:Log]"]):
        cfg = load_config(None, overrides)
        sync_record(resolve_sync(cfg, launched=SYNCHRONIZERS.traits(cfg.sync if cfg.sync != "auto" else "store")["launched"]))
    print(json.dumps({"targets": sorted(targets), "imported": sorted(t for t in targets if t in sys.modules),
                      "plugins": sorted(m for m in ("torch", "my_pkg", "user_plugins", "user_plugins.counting")
                                        if m in sys.modules)}))
""")


def test_registry_import_paths_resolve_only_on_use():
    """Importing dbl_ps.registry and every config-time lookup (names, traits, the config's
    checks of engine / data.source / trackers / sync, resolve_sync, the errors' lists, an
    import path's default traits) imports none of the modules the registries name by string
    (the built-ins' `module:attr`, the sync kinds' coordinators), no torch, no user code;
    and with DBL_PS_PLUGINS set, a registered name does not import the plugin modules (only a
    name no registry holds does: tests/test_extending.py)."""
    done = _run(REGISTRY_LAZY, DBL_PS_PLUGINS="user_plugins.counting")
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert "dbl_ps.training.engine" in got["targets"] and "dbl_ps.synchronizers.store" in got["targets"]
    assert got["imported"] == [] and got["plugins"] == []
