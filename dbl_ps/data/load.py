"""`load_dataset`: the data set a config describes, from whichever source it names.

    ds = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))

In-memory sources (`dbl_ps.data.sources`) give `Split`s of uint8 tensors; ImageFolder
and `data.factory` (`dbl_ps.data.streamed`) give `DatasetSplit`s read sample by
sample; plugins add sources with `register_source` (`shards`). Either kind has
`len`, `channels`, `side`; the share loaders and `eval_batches` read both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dbl_ps.data.sources import DataError, Dataset, load_cifar, load_digits, load_idx_dataset, make_synthetic, plugin_source
from dbl_ps.data.streamed import load_factory, load_imagefolder

if TYPE_CHECKING:
    from dbl_ps.config import DataConfig

__all__ = ["load_dataset", "DIRECTORY_EXPECTED"]

# What `data.path` names for each source that reads files (all of them directories).
DIRECTORY_EXPECTED = {
    "mnist": "the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (optionally .gz), or "
             "torchvision's MNIST/raw/",
    "fashion_mnist": "the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (optionally .gz), or "
                     "torchvision's FashionMNIST/raw/",
    "cifar10": "the folder holding cifar-10-python.tar.gz or cifar-10-batches-py (or that folder itself)",
    "cifar100": "the folder holding cifar-100-python.tar.gz or cifar-100-python (or that folder itself)",
    "imagefolder": "the folder holding train/ and val/ (or test/), each with one folder per class",
    "shards": "the folder `dbl-ps shard --out` wrote, or a folder of webdataset train-*.tar and test-*.tar/val-*.tar",
}


def load_dataset(cfg: "DataConfig", *, image_size: int | None = None,
                 log: Callable[[str], None] | None = None) -> Dataset:
    """The data set `cfg` describes, with `train_limit`/`test_limit` applied.
    `image_size` is the stored side for imagefolder and factory images when
    `cfg.image_size` is unset (pass the largest resolution of the schedule). `log`
    receives notes such as estimated statistics (default: print)."""
    log = log or (lambda msg: print(msg, flush=True))
    source = cfg.source
    if source in DIRECTORY_EXPECTED and cfg.path is not None and Path(cfg.path).exists() and not Path(cfg.path).is_dir():
        raise DataError(f"data.path {cfg.path} is a file; source '{source}' reads a directory: {DIRECTORY_EXPECTED[source]}")
    if source == "digits":
        ds = load_digits()
    elif source in ("mnist", "fashion_mnist"):
        ds = load_idx_dataset(cfg.path, source)
    elif source in ("cifar10", "cifar100"):
        ds = load_cifar(cfg.path, source)
    elif source == "imagefolder":
        size = cfg.image_size or image_size
        if size is None:
            raise DataError("imagefolder needs a stored image size: set data.image_size or pass image_size")
        ds = load_imagefolder(cfg.path, size, cfg=cfg, log=log)
    elif source == "factory":
        ds = load_factory(cfg, image_size, log=log)
    elif source == "synthetic":
        s = cfg.synthetic
        ds = make_synthetic(s.num_train, s.num_test, s.num_classes, s.channels, s.size, s.seed)
    elif plugin_source(source) is not None:
        ds = plugin_source(source)(cfg, image_size)
    else:
        raise DataError(f"data source {source!r} is not one of digits, fashion_mnist, mnist, cifar10, cifar100, imagefolder, "
                        "synthetic, shards, factory")
    if cfg.mean is not None and ds.train.in_memory:
        if len(cfg.mean) != ds.in_channels:
            raise DataError(f"data.mean {cfg.mean} has {len(cfg.mean)} values, the images have {ds.in_channels} channels")
        ds.mean, ds.std = tuple(cfg.mean), tuple(cfg.std)
    if cfg.train_limit is not None:
        ds.train = ds.train.subset(cfg.train_limit, seed=0)
    if cfg.test_limit is not None:
        ds.test = ds.test.subset(cfg.test_limit, seed=1)
    return ds
