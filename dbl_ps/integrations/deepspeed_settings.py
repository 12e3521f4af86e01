"""The DeepSpeed engine's own config key (`deepspeed_config`, at the top level), registered
with the engine as its `settings` (dbl_ps.builtin_plugins) and read as
`cfg.settings(DeepSpeedSettings)`; and the one value that follows from the user's DeepSpeed
JSON at load (its optimizer's LR becomes `schedule.lr`). No torch here: configs are loaded and
checked before any engine is built."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbl_ps.config.engine_settings import EngineSettings
from dbl_ps.config.fields import _f
from dbl_ps.config.follow import _get, _set_dotted
from dbl_ps.configs import find_deepspeed_config


@dataclass(kw_only=True)
class DeepSpeedSettings(EngineSettings):
    deepspeed_config: str | None = _f(None, help="DeepSpeed JSON for engine 'deepspeed': a path, or the name of one shipped "
                                                 "in dbl_ps/configs/deepspeed (cpu_gloo, gpu_bf16, gpu_fp16_zero1; "
                                                 "`dbl-ps configs` lists them); null = fp32, no ZeRO. Its optimizer "
                                                 "block, if any, is the one that runs (else optim.name), at "
                                                 "schedule.lr; a scheduler block gives way to schedule.*")

    @classmethod
    def follow(cls, data: dict[str, Any], set_anywhere: set[str], notes: list[str]) -> None:
        """The LR in the user's DeepSpeed JSON is the run's `schedule.lr` unless the user set
        `schedule.lr` (then the engine's check says which won): a value the user chose is never
        replaced by the embedded job's default."""
        if "schedule.lr" in set_anywhere or "deepspeed_config" not in set_anywhere:
            return
        found = json_optimizer(_get(data, "deepspeed_config"))
        if found is None or found[1] == _get(data, "schedule.lr"):
            return
        kind, lr = found
        _set_dotted(data, "schedule.lr", lr)
        notes.append(f"schedule.lr {lr:g}: the lr of optimizer {kind} in the DeepSpeed config "
                     f"{_get(data, 'deepspeed_config')} (set schedule.lr to train at another)")


def json_optimizer(value: Any) -> tuple[str, float] | None:
    """(type, lr) of the `optimizer` block in the DeepSpeed JSON `deepspeed_config` names (a
    path, or a config shipped in the package), None when it has no LR or cannot be read (the
    engine's check reports a file that is missing or broken, with the rest of its problems)."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    if not path.is_file():
        shipped = find_deepspeed_config(value) if not path.suffix or path.name == value else None
        if shipped is None:
            return None
        path = shipped
    try:
        optimizer = json.loads(path.read_text()).get("optimizer")
        lr = optimizer["params"]["lr"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        return None
    return str(optimizer.get("type", "?")), float(lr)
