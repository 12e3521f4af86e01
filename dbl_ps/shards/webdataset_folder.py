"""Webdataset shards written by other tools: `data.source: shards` on a folder without
`index.json`.

The folder follows webdataset's conventions: tar files whose members are grouped by
key (`<key>.<extension>`, the key being the name up to its first dot), the image as
`<key>.jpg|.jpeg|.png|.webp|.ppm|.pgm` and the class number as text in `<key>.cls`;
other members (`.json`, ...) are ignored. The training set is `train-*.tar` or
`train/*.tar`, the test set `test-*.tar` or `test/*.tar`, else `val-*.tar` or
`val/*.tar`, each read in the order of the file names.

The first use scans the tar headers once (`tarfile` gives each member's data offset
and size; nothing is decoded) and writes `webdataset-index.json` next to the tars, or,
where the folder is read-only, under `$DBL_PS_CACHE` or `~/.cache/dbl-ps` keyed by the
folder's absolute path. The index records each tar's size and mtime: a tar added,
removed or changed since makes the next use scan again. Later uses, every worker
process included, read the index.

Why an index rather than webdataset's streaming pipeline: DBSL trains each worker on
exactly its planned share (`epoch_shares`), so samples are addressed by number.
`TarImages` is the map-style dataset over the index (one `pread` at the member's
offset, then a PIL decode), and the rest is what `dbl_ps.data.streamed` does for any
dataset read sample by sample (`build_dataset`: short-side resize + centre crop to
`data.image_size`, statistics, checks; `DatasetShareLoader` for the shares).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from dbl_ps.config import DataConfig
from dbl_ps.data.sources import Dataset, cache_dir
from dbl_ps.data.streamed import build_dataset
from dbl_ps.shards.codec import read_at
from dbl_ps.shards.errors import ShardError

__all__ = ["WEBDATASET_INDEX", "IMAGE_EXTENSIONS", "find_tars", "load_index", "TarImages", "load_webdataset_folder"]

WEBDATASET_INDEX = "webdataset-index.json"
FORMAT = "dbl-ps-webdataset-index"
VERSION = 1

# Image members by extension, and the PIL format each one is (opening with the format
# named skips PIL's probing of every other plugin).
PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "ppm": "PPM", "pgm": "PPM"}
IMAGE_EXTENSIONS = tuple(PIL_FORMATS)
_IMAGES = ", ".join("." + e for e in IMAGE_EXTENSIONS)

# Where each split is looked for, in order: `<name>-*.tar` and `<name>/*.tar`.
SPLIT_NAMES = {"train": ("train",), "test": ("test", "val")}

# webdataset's `base_plus_ext`: the key is everything up to the first dot of the file name.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

# Modes PIL gives grayscale images in (1 channel).
_GRAY_MODES = ("1", "L", "LA", "I", "F")
_MODE_SAMPLE = 16  # training images whose mode decides grayscale or colour


# --------------------------------------------------------------------------- finding the tars


def _tars_named(root: Path, name: str) -> list[str]:
    found = [p for p in root.glob(f"{name}-*.tar") if p.is_file()]
    found += [p for p in (root / name).glob("*.tar") if p.is_file()]
    return sorted(p.relative_to(root).as_posix() for p in found)


def find_tars(root: str | Path) -> dict[str, list[str]]:
    """The tar files of each split ('train', 'test'), relative to `root`, sorted by name."""
    root = Path(root)
    tars: dict[str, list[str]] = {}
    for split, names in SPLIT_NAMES.items():
        tars[split] = next((found for found in (_tars_named(root, n) for n in names) if found), [])
    if all(tars.values()):
        return tars
    present = sorted(p.relative_to(root).as_posix() for pattern in ("*.tar", "*/*.tar") for p in root.glob(pattern))
    if not present:
        raise ShardError(f"shard directory {root} has neither index.json (written by `dbl-ps shard`) nor webdataset "
                         "tar files (train-*.tar or train/*.tar, and test-*.tar, test/*.tar, val-*.tar or val/*.tar)")
    looked = " or ".join(f"{n}-*.tar, {n}/*.tar" for n in SPLIT_NAMES["train" if not tars["train"] else "test"])
    what = "training" if not tars["train"] else "test"
    shown = ", ".join(present[:6]) + (f" ... ({len(present)} tar files)" if len(present) > 6 else "")
    raise ShardError(f"webdataset folder {root} has no {what} set: looked for {looked}; it holds {shown}")


def _file_stats(root: Path, tars: dict[str, list[str]]) -> dict[str, list[int]]:
    """{tar: [bytes, mtime_ns]}: what the index must match to be current."""
    stats = {}
    for rel in sorted(rel for files in tars.values() for rel in files):
        try:
            st = (root / rel).stat()
        except OSError as exc:
            raise ShardError(f"webdataset tar {root / rel} cannot be read: {exc}") from None
        stats[rel] = [st.st_size, st.st_mtime_ns]
    return stats


# --------------------------------------------------------------------------- scanning


def _label(raw: bytes, path: Path, key: str) -> int:
    try:
        return int(raw.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise ShardError(f"webdataset tar {path}, sample {key!r}: the .cls member holds {raw[:20]!r}, expected an "
                         "integer class number as text") from None


def _scan_tar(path: Path, tar_no: int, columns: dict[str, list[Any]]) -> None:
    """Append each sample of one tar (image member offset, size, extension; label; key) to `columns`."""
    members: dict[str, dict[str, tarfile.TarInfo]] = {}  # key -> extension -> member, in tar order
    labels: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                match = _MEMBER_NAME.match(member.name) if member.isfile() else None
                if match is None:
                    continue  # directories, names without an extension (webdataset skips them too)
                key, ext = match.group(1), match.group(2).lower()
                members.setdefault(key, {})[ext] = member
                if ext == "cls":
                    extracted = tar.extractfile(member)  # a regular file (isfile above): never None
                    assert extracted is not None
                    labels[key] = extracted.read()  # a few bytes
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"webdataset tar {path} cannot be read ({type(exc).__name__}: {exc}); it must be an "
                         "uncompressed tar file") from None
    for key, by_ext in members.items():
        images = [ext for ext in by_ext if ext in PIL_FORMATS]
        if not images and key not in labels:
            continue  # neither image nor label: not a training sample (metadata, say)
        if not images:
            raise ShardError(f"webdataset tar {path}, sample {key!r}: a .cls label but no image member ({_IMAGES}); "
                             f"its members: {', '.join('.' + e for e in by_ext)}")
        if len(images) > 1:
            raise ShardError(f"webdataset tar {path}, sample {key!r}: several images ({', '.join('.' + e for e in images)}); "
                             "one image member per sample is expected")
        if key not in labels:
            raise ShardError(f"webdataset tar {path}, sample {key!r}: an image (.{images[0]}) but no .cls member "
                             f"(webdataset's convention: {key}.cls holding the class number as text)")
        member = by_ext[images[0]]
        columns["tar"].append(tar_no)
        columns["offset"].append(member.offset_data)
        columns["size"].append(member.size)
        columns["ext"].append(images[0])
        columns["label"].append(_label(labels[key], path, key))
        columns["key"].append(key)


def _scan(root: Path, tars: dict[str, list[str]], files: dict[str, list[int]], progress: bool | None) -> dict[str, Any]:

    splits = {}
    # progress None: a bar only where stderr is a terminal (tqdm's disable=None).
    with tqdm(total=len(files), desc=f"indexing webdataset tars in {root}", unit="tar",
              disable=None if progress is None else not progress) as bar:
        for split, names in tars.items():
            columns: dict[str, list[Any]] = {c: [] for c in ("tar", "offset", "size", "ext", "label", "key")}
            for tar_no, rel in enumerate(names):
                _scan_tar(root / rel, tar_no, columns)
                bar.update(1)
            if not columns["key"]:
                raise ShardError(f"webdataset folder {root}: the {split} tars ({', '.join(names[:3])}"
                                 f"{' ...' if len(names) > 3 else ''}) hold no sample (an image member with a .cls label)")
            splits[split] = {"tars": names, **columns}
    return {"format": FORMAT, "version": VERSION, "root": str(root.resolve()), "files": files, "splits": splits}


# --------------------------------------------------------------------------- the index file


def index_paths(root: str | Path) -> list[Path]:
    """Where the index of `root` is kept: next to the tars, else (read-only folder) in the cache."""
    root = Path(root)
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / WEBDATASET_INDEX, cache_dir() / "webdataset-index" / f"{root.resolve().name}-{key}.json"]


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing, or damaged (an interrupted writer never leaves one: it renames): scan again
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        return None
    return index


def _write_index(paths: list[Path], index: dict[str, Any]) -> Path | None:
    """Write `index` at the first writable path (atomically: another process may read it); None if none is."""
    text = json.dumps(index, separators=(",", ":"))
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}-", delete=False) as fh:
                fh.write(text)
            os.replace(fh.name, path)
            return path
        except OSError:
            continue  # read-only: try the cache
    return None


def load_index(root: str | Path, *, progress: bool | None = None,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The index of the webdataset folder `root`, read where an earlier use wrote it if it is
    current (the same tars, sizes and mtimes), else built now by scanning every tar once.
    `progress`: a bar while scanning (None: where stderr is a terminal)."""
    root = Path(root)
    tars = find_tars(root)
    files = _file_stats(root, tars)
    paths = index_paths(root)
    for path in paths:
        index = _read_index(path)
        if index is not None and index["files"] == files and \
                {s: e["tars"] for s, e in index["splits"].items()} == tars:
            return index
    index = _scan(root, tars, files, progress)
    where = _write_index(paths, index)
    if log is not None:
        counts = ", ".join(f"{len(e['key'])} {s}" for s, e in index["splits"].items())
        log(f"data: indexed {counts} samples in {len(files)} webdataset tars of {root} "
            + (f"(index {where})" if where else f"(no writable place for the index: {paths[0]} nor {paths[1]}; "
                                                 "every use scans again)"))
    return index


# --------------------------------------------------------------------------- the dataset


class TarImages(torch.utils.data.Dataset):
    """`(PIL image, int label)` for sample `i` of one split of the index: the image member
    read with one `pread` at its offset and decoded, in `mode` ('RGB' or 'L'); JPEGs at a
    reduced scale still >= `draft` px (PIL's draft mode) when given. `targets` are the
    labels, from the index. File descriptors are opened lazily per process."""

    def __init__(self, root: str | Path, entry: dict[str, Any], *, mode: str = "RGB", draft: int | None = None):
        self.root = Path(root)
        self.tars = [self.root / rel for rel in entry["tars"]]
        self.tar = np.asarray(entry["tar"], dtype=np.int32)
        self.offset = np.asarray(entry["offset"], dtype=np.int64)
        self.size = np.asarray(entry["size"], dtype=np.int64)
        self.ext = list(entry["ext"])
        self.keys = list(entry["key"])
        self.targets = np.asarray(entry["label"], dtype=np.int64)
        self.mode, self.draft = mode, draft
        self._files: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def where(self, i: int) -> str:
        return f"webdataset tar {self.tars[int(self.tar[i])]}, sample {self.keys[i]!r}"

    def read(self, i: int) -> bytes:
        """The bytes of sample `i`'s image member."""
        if self._pid != os.getpid():  # a forked process: descriptors of the parent are not ours to share
            self._files, self._pid = {}, os.getpid()
        j = int(self.tar[i])
        fd = self._files.get(j)
        try:
            if fd is None:
                # O_BINARY: Windows would otherwise open the tar in text mode (CRLF translation)
                fd = self._files[j] = os.open(self.tars[j], os.O_RDONLY | getattr(os, "O_BINARY", 0))
            return read_at(fd, int(self.size[i]), int(self.offset[i]))
        except OSError as exc:
            raise ShardError(f"{self.where(i)}: the tar cannot be read ({exc})") from None

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        i = int(i)
        ext = self.ext[i]
        try:
            with Image.open(io.BytesIO(self.read(i)), formats=(PIL_FORMATS[ext],)) as img:
                if self.draft is not None:
                    img.draft(self.mode, (self.draft, self.draft))
                image = img.convert(self.mode)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ShardError(f"{self.where(i)}: the .{ext} image cannot be decoded ({exc}); the tar is corrupt or "
                             "changed while it was read") from None
        return image, int(self.targets[i])

    def gray(self) -> bool:
        """Whether the split is grayscale: all of up to 16 images spread over it are (read by
        their headers only). One colour image makes it RGB: grayscale JPEGs are common among
        colour ones (ImageNet), and converting them loses nothing."""
        from PIL import Image

        for i in np.linspace(0, len(self) - 1, min(len(self), _MODE_SAMPLE)).astype(int).tolist():
            try:
                with Image.open(io.BytesIO(self.read(i)), formats=(PIL_FORMATS[self.ext[i]],)) as img:
                    mode = img.mode
            except (OSError, ValueError, SyntaxError) as exc:
                raise ShardError(f"{self.where(i)}: the .{self.ext[i]} image cannot be decoded ({exc})") from None
            if mode not in _GRAY_MODES and not mode.startswith("I;"):
                return False
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}  # file descriptors are per process (spawned DataLoader workers open their own)
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) != os.getpid():
            return  # inherited descriptors belong to the parent
        for fd in getattr(self, "_files", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


# --------------------------------------------------------------------------- the data source


def _check_labels(images: TarImages, num_classes: int, why: str) -> None:
    bad = np.flatnonzero((images.targets < 0) | (images.targets >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise ShardError(f"{images.where(i)}: label {int(images.targets[i])} outside 0..{num_classes - 1} ({why}; "
                         f"{len(bad)} such labels in the split)")


def load_webdataset_folder(cfg: DataConfig, image_size: int | None, *, progress: bool | None = None,
                           log: Callable[[str], None] | None = None) -> Dataset:
    """The `Dataset` of a webdataset folder (`cfg` is the run's DataConfig; `image_size` the
    stored side when `data.image_size` is unset). Classes: `data.num_classes`, else the largest
    training label + 1; statistics: `data.mean`/`data.std`, else estimated."""
    log = log or (lambda msg: print(msg, flush=True))
    root = Path(cfg.folder())
    index = load_index(root, progress=progress, log=log)
    size = cfg.image_size or image_size
    train = TarImages(root, index["splits"]["train"], draft=None if cfg.random_resized_crop else size)
    test = TarImages(root, index["splits"]["test"], draft=size)
    if cfg.num_classes is not None:
        num_classes, why = int(cfg.num_classes), f"data.num_classes {cfg.num_classes}"
    else:
        num_classes = int(train.targets.max()) + 1
        why = f"{num_classes} classes: the largest training label + 1; set data.num_classes if there are more"
        if num_classes < 2:
            raise ShardError(f"webdataset folder {root}: the largest training label is {num_classes - 1}; a classifier "
                             "needs labels 0..num_classes-1 with at least 2 classes")
    _check_labels(train, num_classes, why)
    _check_labels(test, num_classes, why)
    if train.gray():
        train.mode = test.mode = "L"
    return build_dataset("webdataset", train, test, cfg=cfg, image_size=image_size, num_classes=num_classes,
                         classes=[str(c) for c in range(num_classes)], stats=None,
                         flip=True if cfg.flip is None else cfg.flip, log=log)
