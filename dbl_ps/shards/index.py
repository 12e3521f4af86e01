"""The index of a shard directory (`DIR/index.json`) and the checks made against it.

Layout written by `dbl-ps shard`::

    DIR/index.json
    DIR/train/r16/train-000000.tar  DIR/train/r16/train-000001.tar ...
    DIR/train/r24/...   DIR/test/r16/test-000000.tar ...

Sample `i` of a split (its position in the source's order) has the key
``f"{i:08d}"`` and lives in shard ``i // samples_per_shard`` of every set; each
shard entry records its first sample, sample count, byte size and SHA-256. The
split's labels are in the index too, so the loader can check that shards and
index agree sample by sample, and the launcher can plan without reading a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dbl_ps.shards.errors import ShardError

__all__ = ["INDEX_FILE", "PROGRESS_FILE", "FORMAT", "VERSION", "ShardInfo", "ShardSetInfo", "ShardIndex", "sample_key",
           "sha256_file", "written_by_dbl_ps"]

INDEX_FILE = "index.json"
PROGRESS_FILE = ".progress.json"  # a `dbl-ps shard` run that has not finished yet
FORMAT = "dbl-ps-shards"
VERSION = 1


def sample_key(sample_id: int) -> str:
    return f"{int(sample_id):08d}"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def written_by_dbl_ps(root: str | Path) -> bool:
    """Whether `root` is (or should be) a directory `dbl-ps shard` wrote: it holds index.json or
    an unfinished run's progress file, or does not exist (ShardIndex.load says how to make one).
    Any other folder is read as webdataset tars written by other tools (`webdataset_folder`)."""
    root = Path(root)
    return not root.is_dir() or (root / INDEX_FILE).is_file() or (root / PROGRESS_FILE).is_file()


@dataclass(frozen=True)
class ShardInfo:
    path: Path  # absolute
    file: str  # relative to the shard directory, as the index holds it
    first: int  # sample id of its first sample
    samples: int
    bytes: int
    sha256: str

    @property
    def ids(self) -> range:
        return range(self.first, self.first + self.samples)


@dataclass(frozen=True)
class ShardSetInfo:
    """One split at one resolution: images stored at `side` x `side` px
    (`side` > resolution when the training set keeps a crop margin)."""

    split: str
    resolution: int
    side: int
    shards: tuple[ShardInfo, ...]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)


class ShardIndex:
    """`index.json` of a shard directory, validated on load."""

    def __init__(self, root: Path, data: dict[str, Any]):
        self.root = root
        self.data = data

    # -- loading

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> "ShardIndex":
        root = Path(root)
        path = root / INDEX_FILE
        if not root.is_dir():
            raise ShardError(f"shard directory {root} does not exist (make one with `dbl-ps shard SOURCE --out {root}`)")
        if not path.is_file():
            partial = " (it holds a partial run: re-run the same `dbl-ps shard` command to finish it)" \
                if (root / PROGRESS_FILE).is_file() else ""
            raise ShardError(f"shard directory {root} has no {INDEX_FILE}{partial}; "
                             f"make one with `dbl-ps shard SOURCE --out {root}`")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ShardError(f"shard index {path} is not readable JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ShardError(f"{path} is not a dbl-ps shard index (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise ShardError(f"shard index {path} has version {data.get('version')!r}; this dbl-ps reads version {VERSION} "
                             "(re-run `dbl-ps shard` to rebuild it)")
        for key in ("num_classes", "classes", "channels", "mean", "std", "flip", "encoding", "resolutions", "splits"):
            if key not in data:
                raise ShardError(f"shard index {path} lacks the key {key!r}; rebuild it with `dbl-ps shard`")
        return cls(root, data)

    # -- metadata

    @property
    def path(self) -> Path:
        return self.root / INDEX_FILE

    @property
    def resolutions(self) -> list[int]:
        return [int(r) for r in self.data["resolutions"]]

    @property
    def splits(self) -> list[str]:
        return list(self.data["splits"])

    @property
    def channels(self) -> int:
        return int(self.data["channels"])

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])

    @property
    def encoding(self) -> str:
        return str(self.data["encoding"])

    def num_samples(self, split: str) -> int:
        return int(self._split(split)["samples"])

    def labels(self, split: str) -> np.ndarray:
        labels = np.asarray(self._split(split)["labels"], dtype=np.int64)
        if labels.shape != (self.num_samples(split),):
            raise ShardError(f"shard index {self.path}: split {split!r} lists {labels.shape[0]} labels for "
                             f"{self.num_samples(split)} samples")
        return labels

    def available(self, split: str | None = None) -> str:
        """'train at 16, 24, 32 px; test at 16, 24, 32 px' (what the directory holds)."""
        parts = []
        for name, entry in self.data["splits"].items():
            if split is None or name == split:
                parts.append(f"{name} at {', '.join(sorted(entry['sets'], key=int))} px")
        return "; ".join(parts) or "nothing"

    def _split(self, split: str) -> dict[str, Any]:
        splits = self.data["splits"]
        if split not in splits:
            raise ShardError(f"shard directory {self.root} has no {split!r} split; it holds {self.available()}")
        return splits[split]

    # -- shard sets

    def shard_set(self, split: str, resolution: int) -> ShardSetInfo:
        """The set of `split` at `resolution`; a missing one is a ShardError naming what is there."""
        entry = self._split(split)
        sets = entry["sets"]
        key = str(int(resolution))
        if key not in sets:
            raise ShardError(f"shard directory {self.root} has no {resolution} px set for split {split!r}; "
                             f"it holds {self.available(split)} (re-run `dbl-ps shard` with --resolutions including "
                             f"{resolution} into a new directory, or change schedule.resolutions)")
        s = sets[key]
        shards = tuple(ShardInfo(self.root / sh["file"], sh["file"], int(sh["first"]), int(sh["samples"]),
                                 int(sh["bytes"]), str(sh["sha256"])) for sh in s["shards"])
        expected = 0
        for sh in shards:
            if sh.first != expected:
                raise ShardError(f"shard index {self.path}: {sh.file} starts at sample {sh.first}, expected {expected} "
                                 "(the index is damaged; rebuild it with `dbl-ps shard --overwrite`)")
            expected += sh.samples
        if expected != self.num_samples(split):
            raise ShardError(f"shard index {self.path}: the {resolution} px {split} shards hold {expected} samples, "
                             f"the split has {self.num_samples(split)}")
        return ShardSetInfo(split, int(resolution), int(s["side"]), shards)

    def check_files(self, split: str, resolution: int, *, checksums: bool = False) -> ShardSetInfo:
        """Every shard of the set exists with the size (and, if asked, the SHA-256) the index records."""
        info = self.shard_set(split, resolution)
        for sh in info.shards:
            if not sh.path.is_file():
                raise ShardError(f"shard {sh.path} is missing (the index lists it with {sh.samples} samples); "
                                 f"the directory holds {self.available()}")
            size = sh.path.stat().st_size
            if size != sh.bytes:
                raise ShardError(f"shard {sh.path} has {size} bytes, the index says {sh.bytes}: the shard is truncated "
                                 "or was replaced; rebuild it with the same `dbl-ps shard` command and --overwrite")
            if checksums and sha256_file(sh.path) != sh.sha256:
                raise ShardError(f"shard {sh.path} does not match its SHA-256 in the index: the shard is corrupt; "
                                 "rebuild it with the same `dbl-ps shard` command and --overwrite")
        return info

    def check_resolutions(self, resolutions: list[int] | tuple[int, ...], split: str = "train") -> None:
        """Fail before training starts if any resolution of the schedule has no (complete) set."""
        for r in resolutions:
            self.check_files(split, r)
