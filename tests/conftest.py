"""Suite-wide checks: no parameter-store shared memory may outlive the test session."""

from __future__ import annotations

import os

import pytest

SHM_DIR = "/dev/shm"


def store_segments() -> set[str]:
    if not os.path.isdir(SHM_DIR):
        return set()
    return {name for name in os.listdir(SHM_DIR) if name.startswith("dblps-")}


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    before = store_segments()
    yield
    leaked = store_segments() - before
    assert not leaked, f"shared-memory segments left behind by the suite: {sorted(leaked)}"
