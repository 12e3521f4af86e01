"""`load_dataset`: the data set a config describes, from whichever source it names.

    ds = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))

`data.source` is looked up in `dbl_ps.registry.DATA_SOURCES`: a built-in (registered
there by name, its loader one of the `*_source` functions below, or `shards`'), one a
plugin registered in `dbl_ps.registry.DATA_SOURCES`, or a user's loader by import path
(`data.source: my_pkg.data:load`). Every loader is `(data_cfg, image_size) -> Dataset`.
In-memory sources (`dbl_ps.data.sources`) give `Split`s of uint8 tensors; ImageFolder
and `data.factory` (`dbl_ps.data.streamed`) give `DatasetSplit`s read sample by
sample. Either kind has `len`, `channels`, `side`; the share loaders and
`eval_batches` read both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dbl_ps.data.sources import DataError, Dataset, load_cifar, load_digits, load_idx_dataset, make_synthetic
from dbl_ps.data.streamed import load_factory, load_imagefolder
from dbl_ps.imports import ImportPathError
from dbl_ps.registry import DATA_SOURCES, UnknownPluginError

if TYPE_CHECKING:
    from dbl_ps.config import DataConfig

__all__ = ["load_dataset"]


# --------------------------------------------------------------------------- built-in loaders
# One `(data_cfg, image_size) -> Dataset` per built-in source; dbl_ps.registry names them.

def digits_source(cfg: DataConfig, image_size: int | None) -> Dataset:
    return load_digits()


def mnist_source(cfg: DataConfig, image_size: int | None) -> Dataset:
    return load_idx_dataset(cfg.folder(), "mnist")


def fashion_mnist_source(cfg: DataConfig, image_size: int | None) -> Dataset:
    return load_idx_dataset(cfg.folder(), "fashion_mnist")


def cifar10_source(cfg: DataConfig, image_size: int | None) -> Dataset:
    return load_cifar(cfg.folder(), "cifar10")


def cifar100_source(cfg: DataConfig, image_size: int | None) -> Dataset:
    return load_cifar(cfg.folder(), "cifar100")


def imagefolder_source(cfg: DataConfig, image_size: int | None, *, log: Callable[[str], None] = print) -> Dataset:
    size = cfg.image_size or image_size
    if size is None:
        raise DataError("imagefolder needs a stored image size: set data.image_size or pass image_size")
    return load_imagefolder(cfg.folder(), size, cfg=cfg, log=log)


def factory_source(cfg: DataConfig, image_size: int | None, *, log: Callable[[str], None] = print) -> Dataset:
    return load_factory(cfg, image_size, log=log)


def synthetic_source(cfg: DataConfig, image_size: int | None) -> Dataset:
    s = cfg.synthetic
    return make_synthetic(s.num_train, s.num_test, s.num_classes, s.channels, s.size, s.seed)


# --------------------------------------------------------------------------- dispatch

def load_dataset(cfg: "DataConfig", *, image_size: int | None = None,
                 log: Callable[[str], None] | None = None) -> Dataset:
    """The data set `cfg` describes, with `train_limit`/`test_limit` applied.
    `image_size` is the stored side for imagefolder and factory images when
    `cfg.image_size` is unset (pass the largest resolution of the schedule). `log`
    receives notes such as estimated statistics (default: print)."""
    log = log or (lambda msg: print(msg, flush=True))
    source = cfg.source
    try:
        entry = DATA_SOURCES.get(source)
    except (UnknownPluginError, ImportPathError) as exc:  # a DataError like every other data problem
        raise DataError(str(exc)) from None
    where = entry.traits["path"]
    if where and cfg.path is not None and Path(cfg.path).exists() and not Path(cfg.path).is_dir():
        raise DataError(f"data.path {cfg.path} is a file; source '{source}' reads a directory: {where}")
    ds = entry.obj(cfg, image_size, log=log) if entry.traits["takes_log"] else entry.obj(cfg, image_size)
    if not isinstance(ds, Dataset):
        raise DataError(f"data.source {source!r} returned a {type(ds).__name__}, expected a dbl_ps.data.Dataset")
    given = cfg.stats()
    if given is not None and ds.train.in_memory:
        if len(given[0]) != ds.in_channels:
            raise DataError(f"data.mean {cfg.mean} has {len(given[0])} values, the images have {ds.in_channels} channels")
        ds.mean, ds.std = given
    if cfg.train_limit is not None:
        ds.train = ds.train.subset(cfg.train_limit, seed=0)
    if cfg.test_limit is not None:
        ds.test = ds.test.subset(cfg.test_limit, seed=1)
    return ds
