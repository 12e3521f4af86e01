# `make test` is the project's one test command (the README's and CI's).
PYTHON ?= python3
RUST_SOURCES := $(shell find rust_ps -name '*.rs' -o -name Cargo.toml) Cargo.toml pyproject.toml

.PHONY: install test test-quick test-rust check-windows typecheck test-python test-slow bench clean

# Installs the package in editable mode (builds the Rust extension with maturin).
# The stamp file makes repeated `make test` runs skip the rebuild when nothing changed; and
# right after the README's `pip install -e ".[dev]"` (no stamp yet) an extension newer than
# every Rust source, with the test tools importable, is taken as built: only the stamp is made.
.installed: $(RUST_SOURCES)
	@if $(PYTHON) -c "import dbl_ps._rust_ps, pytest, pytest_timeout, hypothesis, mypy" 2>/dev/null && [ -f dbl_ps/_rust_ps.abi3.so ] \
	    && [ -z "$$(find $(RUST_SOURCES) -newer dbl_ps/_rust_ps.abi3.so)" ]; then \
	  echo "dbl_ps/_rust_ps.abi3.so is newer than every Rust source: installed, nothing to build"; \
	else \
	  $(PYTHON) -m pip install --quiet -e ".[dev]"; \
	fi
	touch .installed

install: .installed

test: test-rust test-python

test-rust: check-windows
	cargo test --release -p rust_ps
	# loom: every interleaving of the publish/consume and double-buffer protocols
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p rust_ps --test loom_protocol

# Type-checks the Windows shared-memory backend (rust_ps/src/shm/windows.rs) and the
# Python module on this host: windows-sys declares its functions on every OS, so only
# linking needs Windows. The release workflow builds and smoke-tests it on Windows.
check-windows:
	RUSTFLAGS="--cfg dblps_check_windows -D warnings" CARGO_TARGET_DIR=target/wincheck cargo check -p rust_ps --features python

# Type check of the whole package ([tool.mypy] in pyproject.toml): strict on the torch-free core
# (config, planner, schedule, noise scale, registries, ...), relaxed flags on the torch-using
# layers, the CLI and the API (every call checked, unannotated helpers allowed).
typecheck: .installed
	$(PYTHON) -m mypy

test-python: .installed typecheck
	# the layers of docs/ARCHITECTURE.md: imports point one way (contracts in pyproject.toml)
	lint-imports
	$(PYTHON) -m pytest -q

test-slow: .installed
	$(PYTHON) -m pytest -q -m slow

# Day-to-day: the layer check and the unit-level tests of the config, schedule, planner,
# report, API, store and LR finder (one real lr-find training included), no launchers and no
# multi-process runs: about 2 minutes on a busy 2-core machine (README, "Set up").
QUICK_TESTS := tests/test_config.py tests/test_configs_command.py tests/test_schedule.py tests/test_planner.py \
	tests/test_report.py tests/test_imports.py tests/test_api.py tests/test_store.py tests/test_lr_find.py
test-quick: typecheck
	lint-imports
	$(PYTHON) -m pytest -q $(QUICK_TESTS)

clean:
	rm -rf target .installed .mypy_cache
