"""Multi-resolution webdataset shards: `dbl-ps shard` writes one shard set per
resolution and split (`writer`), `index.json` describes them (`index`), and
`ShardShareLoader` feeds a DBSL worker its exact share from the set of the
current CPL resolution (`loader`). A folder of webdataset tars written by other
tools is read sample by sample through an index of their members
(`webdataset_folder`). webdataset is imported only when shards are
read or written (the `shards` extra)."""

from dbl_ps.shards.errors import ShardError
from dbl_ps.shards.index import INDEX_FILE, ShardIndex, ShardInfo, ShardSetInfo, sample_key
from dbl_ps.shards.loader import (
    DEFAULT_MEMORY_LIMIT,
    ShardShareLoader,
    StreamSet,
    crop_batch,
    load_shard_dataset,
    load_shard_set,
    prepare_shards,
    read_shard,
    share_loader_for,
)
from dbl_ps.shards.webdataset_folder import WEBDATASET_INDEX, TarImages, load_webdataset_folder
from dbl_ps.shards.writer import SOURCE_TYPES, detect_source, train_side, write_shards

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "INDEX_FILE",
    "SOURCE_TYPES",
    "ShardError",
    "ShardIndex",
    "ShardInfo",
    "ShardSetInfo",
    "ShardShareLoader",
    "TarImages",
    "WEBDATASET_INDEX",
    "StreamSet",
    "crop_batch",
    "detect_source",
    "load_shard_dataset",
    "load_shard_set",
    "load_webdataset_folder",
    "prepare_shards",
    "read_shard",
    "sample_key",
    "share_loader_for",
    "train_side",
    "write_shards",
]
