"""The config keys of the user's `counting_factory` engine (tests/user_plugins/counting.py):
one section, `counting.*`, registered with the engine as its `settings` trait. Kept apart from
the engine's module because a config is loaded before any engine is built: this module
imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dbl_ps.config import EngineSettings
from dbl_ps.config.fields import _f


@dataclass(kw_only=True)
class CountingSettings(EngineSettings):
    section: ClassVar[str | None] = "counting"

    first_count: int = _f(1000, ge=0, help="where each worker's step count starts")
