"""Data: sources (uint8 images in memory, or datasets read sample by sample), batch
transforms (torch ops) and per-worker shares. See the submodules' docstrings."""

from dbl_ps.data.load import load_dataset
from dbl_ps.data.shares import (
    DatasetShareLoader,
    ShareBatchSampler,
    ShareCursor,
    ShareLoader,
    batch_seed,
    epoch_shares,
    eval_batches,
)
from dbl_ps.data.sources import (
    FLIP_DEFAULT,
    DataError,
    Dataset,
    Split,
    channel_stats,
    load_cifar,
    load_digits,
    load_idx_dataset,
    make_synthetic,
    read_idx,
)
from dbl_ps.data.streamed import DatasetSplit, SamplePrep, load_factory, load_imagefolder
from dbl_ps.data.transforms import (
    BatchTransform,
    build_transform,
    normalize,
    randaugment_batch,
    random_crop,
    random_flip,
    resize_batch,
    to_float,
)

__all__ = [
    "BatchTransform",
    "DataError",
    "Dataset",
    "DatasetShareLoader",
    "DatasetSplit",
    "FLIP_DEFAULT",
    "SamplePrep",
    "ShareBatchSampler",
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
    "load_factory",
    "load_idx_dataset",
    "load_imagefolder",
    "make_synthetic",
    "normalize",
    "randaugment_batch",
    "random_crop",
    "random_flip",
    "read_idx",
    "resize_batch",
    "to_float",
]
