"""The FSDP2 engine's own config keys (`fsdp.*`), registered with the engine as its
`settings` (dbl_ps.builtin_plugins) and read as `cfg.settings(FSDPSettings)`. No torch here:
configs are loaded and checked before any engine is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from dbl_ps.config.engine_settings import EngineSettings
from dbl_ps.config.fields import _f


@dataclass(kw_only=True)
class FSDPSettings(EngineSettings):
    section: ClassVar[str | None] = "fsdp"
    group_size_key: ClassVar[str] = "fsdp.ranks_per_worker"

    ranks_per_worker: int = _f(1, ge=1, help="ranks sharding one worker's model under a launcher (engine fsdp): "
                                             "WORLD_SIZE = dbl.workers x this")
    param_dtype: Literal["fp32", "bf16"] = _f("fp32", help="FSDP2 compute dtype of parameters (bf16 on GPUs; "
                                                           "shards and the merge stay fp32)")
    wrap_classes: list[str] = _f([], help="class names of the submodules sharded one by one (e.g. [Block]); "
                                          "empty = residual blocks where the model has them, else by size")
    wrap_min_params: int = _f(1_000_000, ge=1, help="size policy: shard each submodule holding at least this many "
                                                    "parameters not already sharded below it")

    def group_size(self) -> int:
        return self.ranks_per_worker
