"""`dbl-ps shard SOURCE --resolutions 16,24,32 --out DIR`: pre-encode a data source

into webdataset tar shards, one set per resolution and split, plus index.json.

SOURCE is a directory (IDX files, CIFAR pickles or an ImageFolder tree with
train/ and val/) or the name `digits` / `synthetic`; --source-type names the
kind when the path does not tell (e.g. `mnist` vs `fashion_mnist`).
`--verify DIR` re-reads a finished directory and checks every shard against the
index (sizes, SHA-256, keys, labels, image shapes).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from functools import partial

from dbl_ps.commands._arguments import command_error, int_list

NAMED_SOURCES = ("digits", "synthetic")
# dbl_ps.shards.writer's (a test checks they agree): importing it here would import torch for
# every `dbl-ps` command, since every command's arguments are built at start (4 s on 2 busy cores)
SOURCE_TYPES = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
DEFAULT_SAMPLES_PER_SHARD = 10000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", metavar="SOURCE",
                        help="source directory, or 'digits' / 'synthetic' (the built-in sources)")
    parser.add_argument("--resolutions", type=int_list, help="pixels, comma list, e.g. 16,24,32 (one shard set each)")
    parser.add_argument("--out", metavar="DIR", help="output directory (DIR/train/r24/train-000000.tar, ..., DIR/index.json)")
    parser.add_argument("--format", choices=("jpeg", "png", "raw"), default="png",
                        help="image encoding: jpeg (smallest, lossy), png (lossless), raw (.npy, no decoding) (default %(default)s)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default %(default)s)")
    parser.add_argument("--samples-per-shard", type=int, default=DEFAULT_SAMPLES_PER_SHARD,
                        help="samples per tar file (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes (default %(default)s)")
    parser.add_argument("--source-type", choices=("auto",) + SOURCE_TYPES, default="auto",
                        help="what SOURCE holds (default: guessed from the directory)")
    parser.add_argument("--train-margin", type=float, default=None,
                        help="training images keep this fraction of extra side for random crops "
                             "(default 0.125 for imagefolder, 0 otherwise)")
    parser.add_argument("--limit", type=int, default=None, help="keep a fixed random subset of this many samples per split")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished or differently made shard set in DIR")
    parser.add_argument("--verify", metavar="DIR", help="check a finished shard directory against its index and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


error = partial(command_error, "shard")


def _verify(root: str) -> int:
    from dbl_ps.shards import ShardIndex, load_shard_set

    index = ShardIndex.load(root)
    total = 0
    for split in index.splits:
        for r in index.resolutions:
            info = index.check_files(split, r, checksums=True)
            load_shard_set(index, split, r)
            total += len(info.shards)
            print(f"{split:>5} r{r:<4} side {info.side:>4}  {info.samples:>8} samples  {len(info.shards):>4} shards  "
                  f"{info.bytes / 1e6:9.2f} MB  ok")
    print(f"{root}: {total} shards match index.json")
    return 0


def run(args: argparse.Namespace) -> int:
    from dbl_ps._optional import MissingExtraError
    from dbl_ps.data.sources import DataError

    try:
        if args.verify:
            return _verify(args.verify)
        if not args.source or not args.resolutions or not args.out:
            return error("give SOURCE, --resolutions and --out (e.g. dbl-ps shard digits --resolutions 8,12 --out shards/digits)")
        from dbl_ps._optional import require

        require("webdataset", feature="dbl-ps shard")
        from dbl_ps.shards.writer import detect_source, write_shards

        if args.source in NAMED_SOURCES:
            source, path = args.source, None
        else:
            path = args.source
            source = detect_source(path) if args.source_type == "auto" else args.source_type
        command = "dbl-ps shard " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None
        index = write_shards(source, path, args.resolutions, args.out, fmt=args.format, quality=args.quality,
                             samples_per_shard=args.samples_per_shard, workers=args.workers,
                             train_margin=args.train_margin, limit=args.limit, overwrite=args.overwrite,
                             progress=not args.no_progress, command=command)
    except (DataError, MissingExtraError) as exc:
        return error(str(exc))
    for split in index.splits:
        for r in index.resolutions:
            info = index.shard_set(split, r)
            print(f"{split:>5} r{r:<4} side {info.side:>4}  {info.samples:>8} samples  {len(info.shards):>4} shards  "
                  f"{info.bytes / 1e6:9.2f} MB")
    print(f"wrote {index.path} ({source}, {index.encoding})")
    return 0
