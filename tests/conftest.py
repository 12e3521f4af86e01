"""Suite-wide check: no parameter-store shared memory may outlive the test session.

A segment counts as left behind by this suite when it is new since the session began
and its owner is this test process (a store never closed) or is dead (an owner that
died without cleanup that no test removed). Live stores of other processes on the
machine (another engineer's run, say) are not this suite's doing and are ignored.
"""

from __future__ import annotations

import os

import pytest


def _segments() -> list[dict]:
    from dbl_ps.parameter_store import list_segments

    return list_segments()


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    before = {s["name"] for s in _segments()}
    yield
    leaked = [s for s in _segments() if s["name"] not in before
              and (s["owner_pid"] == os.getpid() or not s["owner_alive"])]
    assert not leaked, f"shared-memory segments left behind by the suite: {leaked}"
