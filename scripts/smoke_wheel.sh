#!/usr/bin/env bash
# Install a built wheel into a fresh virtualenv with no Rust toolchain on PATH, then run
# `import dbl_ps`, `python -m dbl_ps.smoke`, `dbl-ps configs` (the shipped configs) and the default job
# (`dbl-ps train`) against it, from a directory outside the repository so the checkout
# cannot shadow the installed package.
#
#   scripts/smoke_wheel.sh dist/dbl_ps-*.whl [VENV_DIR]
#
# The venv sees the base interpreter's site-packages (torch is a few GB; we reuse it),
# but dbl_ps itself comes from the wheel: the script checks where it was imported from.
set -euo pipefail
wheel=$(realpath "$1")
venv=${2:-$(mktemp -d)/venv}
PYTHON=${PYTHON:-python3}

$PYTHON -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$wheel"

work=$(mktemp -d)
cd "$work"
# No cargo/rustc/maturin here: only the venv and the system's basic tools.
export PATH="$venv/bin:/usr/bin:/bin"
if command -v cargo >/dev/null 2>&1; then echo "cargo is still on PATH" >&2; exit 1; fi

"$venv/bin/python" - <<'PY'
import sys
import numpy as np
import dbl_ps
from dbl_ps import ParameterStore, StoreClient
assert dbl_ps.__file__.startswith(sys.prefix), f"dbl_ps imported from {dbl_ps.__file__}, not the venv's wheel"
with ParameterStore(8, 1, mode="asp", rule="blend") as store, StoreClient(store.name, 0) as client:
    client.push(np.full(8, 2.0, np.float32))
    out = np.empty(8, np.float32)
    client.pull(out)
    assert (out == 1.0).all(), out
print("import and store round trip OK:", dbl_ps.__file__)
PY

# The store across two spawned processes, from the package (no scripts/ in a wheel).
"$venv/bin/python" -m dbl_ps.smoke

# The configs ship in the package: listed, copied out and found by name with no checkout here.
dbl-ps configs
dbl-ps configs --copy cifar100_resnet18 .
"$venv/bin/python" - <<'PY'
import dbl_ps
from dbl_ps.config import load_config
assert load_config("cifar100_resnet18") == load_config("cifar100_resnet18.yaml")  # the copy in the cwd
assert load_config("imagenet_resnet18").schedule.resolutions == [160, 224, 288]
from dbl_ps.configs import find_deepspeed_config
assert find_deepspeed_config("gpu_bf16").is_file() and str(find_deepspeed_config("gpu_bf16")).startswith(dbl_ps.__path__[0])
print("configs by name OK")
PY

start=$(date +%s)
dbl-ps train
echo "dbl-ps train (default job) from the wheel: $(( $(date +%s) - start )) s"
