"""The prebuilt wheel works without a Rust toolchain (slow: builds the wheel, installs
it into a fresh virtualenv, runs the default job and `dbl-ps configs`; and builds once
more from the sdist)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# Every file of dbl_ps/configs: the pip user's run configs and DeepSpeed configs.
SHIPPED_CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "dbl_ps" / "configs").rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def dist():
    subprocess.run(["bash", "scripts/build_wheel.sh"], cwd=ROOT, check=True)
    return ROOT / "dist"


def test_wheel_is_abi3_manylinux_and_ships_the_whole_package(dist):
    (wheel,) = dist.glob("*.whl")
    assert "-cp310-abi3-" in wheel.name and "manylinux" in wheel.name, wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in ["dbl_ps/_rust_ps.abi3.so", "dbl_ps/_rust_ps.pyi", "dbl_ps/py.typed",
                   "dbl_ps/parameter_store.py", "dbl_ps/integrations/__init__.py", "dbl_ps/cli.py", "dbl_ps/smoke.py",
                   *SHIPPED_CONFIGS]:
        assert member in names, member
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True, check=True)
    assert "manylinux_2_17_x86_64" in show.stdout


def test_wheel_runs_the_default_job_in_a_fresh_venv_without_rust(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    result = subprocess.run(["bash", "scripts/smoke_wheel.sh", str(wheel), str(tmp_path / "venv")],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "import and store round trip OK" in result.stdout
    # The shipped configs, from the installed package, outside any checkout (smoke_wheel.sh).
    assert "cifar100_resnet18" in result.stdout and "deepspeed/gpu_bf16" in result.stdout
    assert "copied cifar100_resnet18 to" in result.stdout and "configs by name OK" in result.stdout


def test_sdist_builds_a_wheel_from_source(dist, tmp_path):
    (sdist,) = dist.glob("*.tar.gz")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(sdist)], check=True, capture_output=True, timeout=900)
    (wheel,) = tmp_path.glob("dbl_ps-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED_CONFIGS) <= names, sorted(set(SHIPPED_CONFIGS) - names)
