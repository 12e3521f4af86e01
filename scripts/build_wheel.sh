#!/usr/bin/env bash
# Build the Linux wheel (abi3, manylinux2014 via zig) and the sdist into dist/, and check
# the wheel's platform tag with auditwheel: the local mirror of the `linux` and `sdist`
# jobs of .github/workflows/release.yml.
#
#   scripts/build_wheel.sh            # dist/dbl_ps-*-cp310-abi3-manylinux*.whl + dist/dbl_ps-*.tar.gz
#   scripts/build_wheel.sh --smoke    # then install it into a fresh venv and run the default job
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Build tools come from PyPI: maturin, zig (for manylinux-compatible linking), auditwheel.
$PYTHON -m pip install --quiet "maturin>=1.9.4,<2" ziglang auditwheel

rm -rf dist
start=$(date +%s)
$PYTHON -m maturin build --release --zig --compatibility manylinux2014 --out dist
$PYTHON -m maturin sdist --out dist
echo "build time: $(( $(date +%s) - start )) s"

wheel=$(ls dist/*.whl)
$PYTHON -m auditwheel show "$wheel"
ls -l dist

if [[ "${1:-}" == "--smoke" ]]; then
  scripts/smoke_wheel.sh "$wheel"
fi
