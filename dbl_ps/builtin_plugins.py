"""The built-in plugins: every engine, data source, tracker and sync kind dbl-ps ships,
registered by name with its traits and the `"module:attr"` of its object (imported on first
`get`, so names, traits and config checks import nothing heavy).

This module sits at the top of the layers (it names modules of every layer, by string) and
registers itself: `pyproject.toml` declares it as an entry point of the group
`dbl_ps.plugins`, which `dbl_ps.registry` loads on its first lookup. The core registry thus
names no higher layer; a user's installed package registers its own plugins the same way
(`[project.entry-points."dbl_ps.plugins"]`), or through `DBL_PS_PLUGINS`.
"""

from __future__ import annotations

from dbl_ps.registry import DATA_SOURCES, ENGINES, SYNCHRONIZERS, TRACKERS

__all__: list[str] = []

# Engines (traits: dbl_ps.registry.ENGINES)
ENGINES.register("torch", "dbl_ps.training.engine:TorchEngine")
ENGINES.register("deepspeed", "dbl_ps.integrations.deepspeed:build_engine",
                 settings="dbl_ps.integrations.deepspeed_settings:DeepSpeedSettings",
                 setup="dbl_ps.integrations.deepspeed:DeepSpeedSetup",
                 precision_from="the DeepSpeed JSON (deepspeed_config: gpu_bf16)",
                 micro_batch_from="gradient_accumulation_steps in the DeepSpeed JSON (deepspeed_config)",
                 calibration="dbl_ps.integrations.deepspeed:calibration_steps")
ENGINES.register("fsdp", "dbl_ps.integrations.fsdp:build_engine", store_mode=False, sharded=True,
                 settings="dbl_ps.integrations.fsdp_settings:FSDPSettings",
                 precision_from="fsdp.param_dtype",
                 micro_batch_from="more ranks per worker (fsdp.ranks_per_worker) to split a worker's batch",
                 calibration="dbl_ps.integrations.fsdp:calibration_steps")

# Data sources (traits: dbl_ps.registry.DATA_SOURCES)
_IDX = "the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (optionally .gz), or torchvision's "
DATA_SOURCES.register("digits", "dbl_ps.data.load:digits_source")
DATA_SOURCES.register("fashion_mnist", "dbl_ps.data.load:fashion_mnist_source", path=_IDX + "FashionMNIST/raw/")
DATA_SOURCES.register("mnist", "dbl_ps.data.load:mnist_source", path=_IDX + "MNIST/raw/")
DATA_SOURCES.register("cifar10", "dbl_ps.data.load:cifar10_source",
                      path="the folder holding cifar-10-python.tar.gz or cifar-10-batches-py (or that folder itself)")
DATA_SOURCES.register("cifar100", "dbl_ps.data.load:cifar100_source",
                      path="the folder holding cifar-100-python.tar.gz or cifar-100-python (or that folder itself)")
DATA_SOURCES.register("imagefolder", "dbl_ps.data.load:imagefolder_source", per_sample=True, takes_log=True,
                      path="the folder holding train/ and val/ (or test/), each with one folder per class")
DATA_SOURCES.register("synthetic", "dbl_ps.data.load:synthetic_source")
DATA_SOURCES.register("shards", "dbl_ps.shards.loader:load_source", shard_sets=True, path=(
    "the folder `dbl-ps shard --out` wrote, or a folder of webdataset train-*.tar and test-*.tar/val-*.tar"))
DATA_SOURCES.register("factory", "dbl_ps.data.load:factory_source", per_sample=True, factory=True, takes_log=True)

# Trackers
TRACKERS.register("wandb", "dbl_ps.runtime.tracking:open_wandb")
TRACKERS.register("tensorboard", "dbl_ps.runtime.tracking:open_tensorboard")
TRACKERS.register("csv", "dbl_ps.runtime.tracking:open_csv")

# Sync kinds (traits: dbl_ps.registry.SYNCHRONIZERS)
SYNCHRONIZERS.register("store", "dbl_ps.synchronizers.store:worker_synchronizer", launched=False,
                       modes=("asp", "bsp", "ssp"), rules=("blend", "average", "sgd"),
                       what="the parameter store on one machine merges each worker's push with store.rule",
                       coordinator="dbl_ps.synchronizers.store:StoreCoordinator")
SYNCHRONIZERS.register("collective", "dbl_ps.synchronizers.collective:rank_synchronizer", launched=True,
                       modes=("bsp",), rules=("average",),
                       what="every rank meets the others at each sync and takes the share-weighted mean of the "
                            "models (torch.distributed all_reduce): bulk-synchronous averaging",
                       coordinator="dbl_ps.synchronizers.collective:CollectiveCoordinator")
SYNCHRONIZERS.register("mixed_batch", "dbl_ps.synchronizers.mixed_batch:rank_synchronizer", launched=True,
                       modes=("bsp",), rules=("average",), sync_every=False, plan="mixed", per_step=True,
                       what="every step trains one global batch split over the ranks by their speed; gradients are "
                            "merged in every step, weighted by each rank's share of the batch",
                       coordinator="dbl_ps.synchronizers.collective:CollectiveCoordinator")
