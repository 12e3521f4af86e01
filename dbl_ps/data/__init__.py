"""Data: sources (uint8 images in memory), batch transforms (torch ops) and
per-worker shares. See the submodules' docstrings."""

from dbl_ps.data.shares import ShareCursor, ShareLoader, batch_seed, epoch_shares, eval_batches
from dbl_ps.data.sources import (
    FLIP_DEFAULT,
    DataError,
    Dataset,
    Split,
    channel_stats,
    load_cifar,
    load_dataset,
    load_digits,
    load_idx_dataset,
    load_imagefolder,
    make_synthetic,
    read_idx,
)
from dbl_ps.data.transforms import (
    BatchTransform,
    build_transform,
    normalize,
    random_crop,
    random_flip,
    resize_batch,
    to_float,
)

__all__ = [
    "BatchTransform",
    "DataError",
    "Dataset",
    "FLIP_DEFAULT",
    "ShareCursor",
    "ShareLoader",
    "Split",
    "batch_seed",
    "build_transform",
    "channel_stats",
    "epoch_shares",
    "eval_batches",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_idx_dataset",
    "load_imagefolder",
    "make_synthetic",
    "normalize",
    "random_crop",
    "random_flip",
    "read_idx",
    "resize_batch",
    "to_float",
]
