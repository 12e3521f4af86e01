# `make test` is the project's one test command (the README's and CI's).
PYTHON ?= python3
RUST_SOURCES := $(shell find rust_ps -name '*.rs' -o -name Cargo.toml) Cargo.toml pyproject.toml

.PHONY: install test test-rust check-windows test-python test-slow bench clean

# Installs the package in editable mode (builds the Rust extension with maturin).
# The stamp file makes repeated `make test` runs skip the rebuild when nothing changed.
.installed: $(RUST_SOURCES)
	$(PYTHON) -m pip install --quiet -e ".[dev]"
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

test-python: .installed
	# the layers of docs/ARCHITECTURE.md: imports point one way (contracts in pyproject.toml)
	lint-imports
	$(PYTHON) -m pytest -q

test-slow: .installed
	$(PYTHON) -m pytest -q -m slow

clean:
	rm -rf target .installed
