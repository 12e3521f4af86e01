"""A user's plugin module: a sync kind and an engine registered by name, each counting what it
does so a test can see that it ran. Named in `DBL_PS_PLUGINS=user_plugins.counting`, it is
imported by dbl-ps in every process (the launcher, each spawned worker, each torchrun rank)
the first time a name no registry holds is looked up (`sync: counting_store`,
`engine: counting_torch`), before that process checks its config.

`engine: counting_factory` is the same engine built by a factory, with its own run set-up
(`CountingSetup`, the registry's `setup` trait) and its own config keys (`counting.*`,
`CountingSettings` in counting_settings.py, the `settings` trait). The counts go to files under the folder `COUNTING_DIR` names, one per worker process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from dbl_ps.registry import ENGINES, SYNCHRONIZERS
from dbl_ps.synchronizers.store import worker_synchronizer
from dbl_ps.training.engine import EngineSetup, TorchEngine
from dbl_ps.training.sync import Synchronizer, SyncResult
from user_plugins.counting_settings import CountingSettings


def _write_count(what: str, worker: int, count: int) -> None:
    folder = os.environ.get("COUNTING_DIR")
    if folder:
        Path(folder, f"{what}-worker{worker}").write_text(str(count))


# --- a sync kind: the parameter store's synchronizer, counting its merges -----------------


class CountingSync(Synchronizer):
    """Wraps another synchronizer (the store's client) and counts its merges."""

    def __init__(self, inner: Synchronizer, worker: int):
        self.inner, self.worker, self.merges = inner, worker, 0

    @property
    def sync_every(self) -> int | str:  # type: ignore[override]  # read (and set by post-local SGD) on the inner one
        return self.inner.sync_every

    @sync_every.setter
    def sync_every(self, value: int | str) -> None:
        self.inner.sync_every = value

    def boundaries(self, steps: int, all_steps: Sequence[int]) -> list[int]:
        return self.inner.boundaries(steps, all_steps)

    def begin_epoch(self, engine: Any, weight: float) -> None:
        self.inner.begin_epoch(engine, weight)

    def start(self, engine: Any, *, fresh: bool) -> int:
        return self.inner.start(engine, fresh=fresh)

    def sync(self, engine: Any, weight: float, *, loss: Any = None) -> SyncResult:
        result = self.inner.sync(engine, weight, loss=loss)
        self.merges += 1
        _write_count("merges", self.worker, self.merges)
        return result

    def close(self) -> None:
        self.inner.close()


def counting_store(cfg: Any, worker: int, links: dict[str, Any]) -> CountingSync:
    """The synchronizer factory of a one-machine kind: called in each worker process as
    (cfg, worker, links), links being what the kind's coordinator handed the launcher."""
    return CountingSync(worker_synchronizer(cfg, worker, links), worker)


# Registered by name with its traits; the coordinator is the store's (it creates the store,
# serves the merges and hands each worker its links), named by import path.
SYNCHRONIZERS.register("counting_store", counting_store, launched=False,
                       modes=("asp", "bsp", "ssp"), rules=("blend", "average", "sgd"),
                       what="the parameter store, each worker counting its merges",
                       coordinator="dbl_ps.synchronizers.store:StoreCoordinator")


# --- an engine: TorchEngine, counting its training steps ----------------------------------


class CountingEngine(TorchEngine):
    """TorchEngine (built as cls(module, cfg, device, topology)) counting its optimizer steps."""

    def __init__(self, module: Any, cfg: Any, device: Any, topology: Any):
        super().__init__(module, cfg, device, topology)
        self.steps = 0

    def train_step(self, images: Any, labels: Any) -> Any:
        self.steps += 1
        return super().train_step(images, labels)

    def save_worker_state(self, folder: Path) -> None:  # after each epoch, in every mode
        super().save_worker_state(folder)
        _write_count("steps", self.topology.worker, self.steps)


ENGINES.register("counting_torch", CountingEngine)  # the default traits: runs in store-mode workers


# --- an engine with its own run set-up: the checks and options an engine owns -------------


class CountingSetup(EngineSetup):
    """Checked once per run before anything is measured; its options reach every worker's engine
    (here: where the step count starts, the engine's own key `counting.first_count`), through
    the same path DeepSpeed's JSON takes."""

    def check(self, cfg: Any, log: Any) -> None:
        log(f"counting engine: steps are counted from {cfg.settings(CountingSettings).first_count}")

    def options(self, cfg: Any, run_dir: Path, *, resuming: bool) -> dict[str, Any]:
        return {"first_count": cfg.settings(CountingSettings).first_count}


def counting_factory(module: Any, cfg: Any, device: Any, topology: Any, *, batch_size: Any,
                     options: dict[str, Any]) -> CountingEngine:
    """An engine factory (module, cfg, device, topology, *, batch_size, options) -> Engine."""
    engine = CountingEngine(module, cfg, device, topology)
    engine.steps = options["first_count"]
    return engine


ENGINES.register("counting_factory", counting_factory, setup="user_plugins.counting:CountingSetup",
                 settings="user_plugins.counting_settings:CountingSettings")
