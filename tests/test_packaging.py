"""Packaging promises: importing dbl_ps needs no extra, a missing extra is named, the
release workflow builds every platform and the scripts it runs work."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dbl_ps._optional import EXTRAS, MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]


def test_every_dbl_ps_module_imports_without_any_extra(tmp_path):
    # Block the optional packages as if uninstalled, then import every module.
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "dbl_ps").rglob("*.py")
        if p.name != "__main__.py"
    )
    blocked = ", ".join(f"{m!r}: None" for m in EXTRAS)
    script = f"import sys; sys.modules.update({{{blocked}}})\n" + "".join(
        f"import {m.removesuffix('.__init__')}\n" for m in modules
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_a_missing_extra_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'dbl-ps\[wandb\]'") as info:
        require("wandb", feature="Weights & Biases tracking")
    assert "Weights & Biases tracking needs the package 'wandb'" in str(info.value)


def test_extras_in_pyproject_match_the_import_helper():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert extra in extras, f"{module} maps to extra {extra!r}, missing from pyproject"
        assert any(req.startswith(module) for req in extras[extra]), (module, extras[extra])
    assert {"deepspeed", "wandb", "shards", "dev"} <= set(extras)
    # the test command installs [dev]: it must bring every extra, or integration tests skip unseen
    assert "dbl-ps[all]" in extras["dev"]
    (everything,) = extras["all"]  # "dbl-ps[deepspeed,wandb,...]"
    assert set(EXTRAS.values()) <= set(everything.split("[", 1)[1].rstrip("]").split(","))


def test_release_workflow_builds_every_platform_and_its_scripts_exist():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    jobs = workflow["jobs"]
    builders = {name: job for name, job in jobs.items()
                if any("maturin-action" in step.get("uses", "") for step in job["steps"])}
    assert {"linux", "macos", "windows", "sdist"} <= set(builders)
    assert set(jobs["publish"]["needs"]) >= set(builders) | {"test-linux-wheel"}
    # every script a step runs is in the repository
    runs = " ".join(step.get("run", "") for job in jobs.values() for step in job["steps"])
    for script in re.findall(r"scripts/[\w.]+", runs):
        assert (ROOT / script).is_file(), script
    assert "python -m dbl_ps.smoke" in runs  # in the package: a wheel user runs it too


def test_store_smoke_test_passes_against_the_installed_package(tmp_path):
    # What the release workflow runs on each platform's wheel (spawned processes), from the
    # package (a wheel has no scripts/), and from a checkout's scripts/smoke_store.py.
    for command in (["-m", "dbl_ps.smoke"], [str(ROOT / "scripts" / "smoke_store.py")]):
        done = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "smoke_store: OK" in done.stdout
