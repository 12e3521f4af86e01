"""Reading shard sets: whole sets into memory, or sample by sample by byte offset,
and `ShardShareLoader`, the shard-backed twin of `dbl_ps.data.ShareLoader`.

Why index-addressable and not a plain streaming pipeline: DBSL needs each worker
to train on *exactly* its planned share (the time model assumes the counts), with
shares disjoint within an epoch and reshuffled from (seed, epoch). A streaming
webdataset pipeline with shard and buffer shuffles gives approximately equal,
order-dependent shares. So samples are addressed by id (`epoch_shares` decides
ids exactly as for in-memory sources) and come from one of two backends:

* ``memory`` -- the set of the current resolution is read once with a webdataset
  pipeline, one shard per DataLoader worker process (decoding happens there),
  into a uint8 tensor; batches are then plain indexing. Sets of resolutions
  already visited stay cached (within `memory_limit`), so the CPL cycle
  24 -> 32 -> 24 decodes each set once per run. All the CPU data sets here fit
  (Fashion-MNIST at 32 px: 61 MB).
* ``stream`` -- for sets larger than `memory_limit`: the tar headers of each shard
  are scanned once for every image member's byte offset, and a map-style
  dataset reads and decodes each sample with one `pread` (seek + read on Windows) in DataLoader worker
  processes, the batch sampler handing out exactly the share's batches.

``auto`` (the default) picks memory when the decoded set fits `memory_limit`.

The training augmentation runs after decoding: on sets stored at the
resolution it is the run's `BatchTransform` (pad + random crop, flip, normalise;
the resize is a no-op), drawing from the same `batch_seed` generator as
`ShareLoader`, so on lossless shards at the source's own size both loaders give
identical batches. Sets stored with a crop margin (ImageFolder training sets)
get a random crop of the resolution out of the margin instead of zero padding.

DataLoader worker processes cannot be started from a daemonic process (the
training runtime's workers are daemonic); there decoding falls back to a thread
pool (PIL releases the GIL while decoding) and is said once in the log.
"""

from __future__ import annotations

import multiprocessing
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, cast

import numpy as np
import torch

from dbl_ps.config import DataConfig
from dbl_ps.data.shares import DatasetShareLoader, ShareCursor, ShareLoader, batch_seed, check_count
from dbl_ps.data.sources import Dataset, Split
from dbl_ps.data.streamed import DatasetSplit
from dbl_ps._optional import require
from dbl_ps.data.transforms import BatchTransform, normalize, random_flip, to_float
from dbl_ps.shards.codec import EXTENSIONS, decode_image, read_at
from dbl_ps.shards.errors import ShardError
from dbl_ps.shards.index import ShardIndex, ShardInfo, ShardSetInfo, sample_key, written_by_dbl_ps
from dbl_ps.shards.webdataset_folder import load_index, load_webdataset_folder

__all__ = ["read_shard", "load_shard_set", "StreamSet", "ShardShareLoader", "load_shard_dataset", "crop_batch",
           "DEFAULT_MEMORY_LIMIT", "subset_ids", "share_loader_for", "prepare_shards", "load_source"]

DEFAULT_MEMORY_LIMIT = 2 << 30  # bytes of decoded images a loader keeps in memory


def _wds():
    return require("webdataset", feature="reading webdataset shards (data.source: shards)")


def index_encoding(ext: str) -> str:
    return next((fmt for fmt, e in EXTENSIONS.items() if e == ext), ext)


def _in_daemon() -> bool:
    return bool(multiprocessing.current_process().daemon)


def subset_ids(n: int, limit: int | None) -> np.ndarray:
    """Sample ids kept by `data.train_limit` (the same pick as `Split.subset(limit, seed=0)`)."""
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(0).permutation(n)[:limit]).astype(np.int64)


# --------------------------------------------------------------------------- one shard, sequentially


def read_shard(shard: ShardInfo, *, ext: str, channels: int, side: int, labels: np.ndarray) -> np.ndarray:
    """Decode a whole shard through a webdataset pipeline -> uint8 (n, C, side, side).

    Checks every sample against the index: keys in order (`first` ..), the image
    member and label present, the image's shape, the label equal to the index's.
    Any difference, a truncated tar or an undecodable image is a ShardError
    naming the shard and the sample key."""
    wds = _wds()
    out = np.empty((shard.samples, channels, side, side), dtype=np.uint8)
    expected = iter(shard.ids)
    count = 0
    key = None
    try:
        pipeline = wds.WebDataset(str(shard.path), shardshuffle=False, nodesplitter=None, workersplitter=None,
                                  empty_check=False)
        for sample in pipeline:
            key = sample.get("__key__")
            sid = next(expected, None)
            if sid is None:
                raise ShardError(f"shard {shard.path} holds more samples than the {shard.samples} its index lists "
                                 f"(extra key {key!r}); the index does not match the shards, rebuild with `dbl-ps shard --overwrite`")
            if key != sample_key(sid):
                raise ShardError(f"shard {shard.path}: sample {count} has key {key!r}, the index expects {sample_key(sid)!r}; "
                                 "the index does not match the shards, rebuild with `dbl-ps shard --overwrite`")
            if ext not in sample or "cls" not in sample:
                raise ShardError(f"shard {shard.path}, sample {key}: members {sorted(k for k in sample if not k.startswith('__'))}, "
                                 f"expected 'cls' and {ext!r}: the shard is truncated or corrupt (or not {index_encoding(ext)} "
                                 "as the index says); rebuild it with `dbl-ps shard --overwrite`")
            try:
                image = decode_image(sample[ext], ext, channels)
            except (OSError, ValueError, SyntaxError) as exc:
                raise ShardError(f"shard {shard.path}, sample {key}: the .{ext} image cannot be decoded ({exc}); "
                                 "the shard is corrupt, rebuild it with `dbl-ps shard --overwrite`") from None
            if image.shape != (channels, side, side):
                raise ShardError(f"shard {shard.path}, sample {key}: image of shape {image.shape}, the index says "
                                 f"{(channels, side, side)}")
            try:
                label = int(sample["cls"])
            except ValueError:  # a damaged .cls member: name it here, not as "corrupt after sample"
                raise ShardError(f"shard {shard.path}, sample {key}: the .cls label {bytes(sample['cls'])[:20]!r} is "
                                 "not a number; the shard is corrupt, rebuild it with `dbl-ps shard --overwrite`") from None
            if label != int(labels[sid]):
                raise ShardError(f"shard {shard.path}, sample {key}: label {label}, the index says {int(labels[sid])}; "
                                 "the index does not match the shards")
            out[count] = image
            count += 1
    except ShardError:
        raise
    except Exception as exc:  # tarfile.ReadError, truncated streams, ... from inside webdataset
        where = f"after sample {key}" if key is not None else "at its start"
        raise ShardError(f"shard {shard.path} is corrupt or truncated {where} ({type(exc).__name__}: {exc}); "
                         "rebuild it with the same `dbl-ps shard` command and --overwrite") from None
    if count != shard.samples:
        last = f"last key {key!r}" if key is not None else "no sample"
        raise ShardError(f"shard {shard.path} holds {count} samples ({last}), the index lists {shard.samples}: "
                         "the shard is truncated or does not match the index; rebuild it with `dbl-ps shard --overwrite`")
    return out


class _ShardReader(torch.utils.data.IterableDataset):
    """Yields `(shard number, images or None, error or None)`, one item per shard; in a
    DataLoader each worker process reads (and decodes) every n-th shard. Errors travel
    as text so the main process raises one clear ShardError, not a wrapped traceback."""

    def __init__(self, info: ShardSetInfo, ext: str, channels: int, labels: np.ndarray):
        self.info, self.ext, self.channels, self.labels = info, ext, channels, labels

    def __iter__(self) -> Iterator[tuple[int, Any, Any]]:
        wi = torch.utils.data.get_worker_info()
        mine = range(len(self.info.shards))[wi.id::wi.num_workers] if wi is not None else range(len(self.info.shards))
        for j in mine:
            try:
                # As a tensor: DataLoader passes tensors through shared memory, not a pickle down a pipe.
                yield j, torch.from_numpy(read_shard(self.info.shards[j], ext=self.ext, channels=self.channels,
                                                     side=self.info.side, labels=self.labels)), None
            except ShardError as exc:
                yield j, None, str(exc)


def load_shard_set(index: ShardIndex, split: str, resolution: int, *, num_workers: int = 0,
                   log: Callable[[str], None] | None = None, verify: bool = False) -> Split:
    """The whole set of `split` at `resolution` in memory: uint8 (N, C, side, side), int64 labels.

    Shards are decoded in `num_workers` DataLoader worker processes (a thread pool
    inside a daemonic process, 0 = in this thread). `verify`: check each shard's
    SHA-256 against the index first (`data.verify`)."""
    info = index.check_files(split, resolution, checksums=verify)
    labels = index.labels(split)
    ext = EXTENSIONS.get(index.encoding)
    if ext is None:
        raise ShardError(f"shard index {index.path}: unknown encoding {index.encoding!r}")
    reader = _ShardReader(info, ext, index.channels, labels)
    parts: dict[int, np.ndarray] = {}
    workers = min(num_workers, len(info.shards))
    if workers > 0 and _in_daemon():
        if log is not None:
            log("shards: decoding in threads (DataLoader worker processes cannot start inside a daemonic process)")
        with ThreadPoolExecutor(workers) as pool:
            def one(j: int) -> tuple[int, Any, Any]:
                try:
                    return j, read_shard(info.shards[j], ext=ext, channels=index.channels, side=info.side, labels=labels), None
                except ShardError as exc:
                    return j, None, str(exc)
            items: Iterator[tuple[int, Any, Any]] = iter(list(pool.map(one, range(len(info.shards)))))
    elif workers > 0:
        loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=workers)
        items = iter(loader)
    else:
        items = iter(reader)
    for j, images, error in items:
        if error is not None:
            raise ShardError(error)
        parts[j] = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    images = np.concatenate([parts[j] for j in range(len(info.shards))]) if parts else \
        np.empty((0, index.channels, info.side, info.side), dtype=np.uint8)
    return Split(torch.from_numpy(images), torch.from_numpy(labels.copy()))


# --------------------------------------------------------------------------- sample by sample, by offset


class StreamSet(torch.utils.data.Dataset):
    """Map-style access to a shard set by sample id: `self[i]` reads sample `ids[i]`'s
    image member with one `pread` at its byte offset (found by scanning the tar
    headers once) and decodes it. Picklable, so DataLoader workers decode."""

    def __init__(self, index: ShardIndex, split: str, resolution: int, *, verify: bool = False):
        self.info = index.check_files(split, resolution, checksums=verify)
        self.ext = EXTENSIONS[index.encoding]
        self.channels = index.channels
        self.labels = index.labels(split)
        n = self.info.samples
        self.shard_of = np.empty(n, dtype=np.int32)
        self.offsets = np.empty(n, dtype=np.int64)
        self.sizes = np.empty(n, dtype=np.int64)
        for j, shard in enumerate(self.info.shards):
            self._scan(j, shard)
        self._files: dict[int, int] = {}

    def _scan(self, j: int, shard: ShardInfo) -> None:
        seen = 0
        name = None
        suffix = "." + self.ext
        try:
            with tarfile.open(shard.path, "r:") as tar:
                for member in tar:
                    name = member.name
                    if not name.endswith(suffix):
                        continue
                    key = name[: -len(suffix)]
                    sid = shard.first + seen
                    if key != sample_key(sid):
                        raise ShardError(f"shard {shard.path}: image member {name!r} where the index expects key "
                                         f"{sample_key(sid)!r}; the index does not match the shards")
                    self.shard_of[sid], self.offsets[sid], self.sizes[sid] = j, member.offset_data, member.size
                    seen += 1
        except ShardError:
            raise
        except (tarfile.TarError, OSError, IndexError) as exc:
            raise ShardError(f"shard {shard.path} is corrupt or truncated after member {name!r} ({exc}); "
                             "rebuild it with `dbl-ps shard --overwrite`") from None
        if seen != shard.samples:
            raise ShardError(f"shard {shard.path} holds {seen} images, the index lists {shard.samples}: truncated "
                             "or not matching the index; rebuild it with `dbl-ps shard --overwrite`")

    def __len__(self) -> int:
        return len(self.shard_of)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}  # file descriptors are per process
        return state

    def __getitem__(self, sid: int) -> tuple[np.ndarray, int]:
        j = int(self.shard_of[sid])
        fd = self._files.get(j)
        if fd is None:
            # O_BINARY: Windows would otherwise open the tar in text mode (CRLF translation)
            fd = self._files[j] = os.open(self.info.shards[j].path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        data = read_at(fd, int(self.sizes[sid]), int(self.offsets[sid]))
        try:
            image = decode_image(data, self.ext, self.channels)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ShardError(f"shard {self.info.shards[j].path}, sample {sample_key(sid)}: the .{self.ext} image cannot "
                             f"be decoded ({exc}); rebuild it with `dbl-ps shard --overwrite`") from None
        return image, int(self.labels[sid])

    def __getitems__(self, sids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch (the DataLoader calls this instead of `__getitem__` per sample):
        decoded straight into one array, so a DataLoader worker sends one tensor per
        batch instead of a list of per-sample arrays."""
        side = self.info.side
        images = np.empty((len(sids), self.channels, side, side), dtype=np.uint8)
        labels = np.empty(len(sids), dtype=np.int64)
        for k, sid in enumerate(sids):
            image, labels[k] = self[sid]
            if image.shape != images.shape[1:]:
                shard = self.info.shards[int(self.shard_of[sid])].path
                raise ShardError(f"shard {shard}, sample {sample_key(sid)}: image of shape {image.shape}, the index "
                                 f"says {images.shape[1:]}; rebuild it with `dbl-ps shard --overwrite`")
            images[k] = image
        return torch.from_numpy(images), torch.from_numpy(labels)

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


def _collate(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # `StreamSet.__getitems__` already made the batch tensors (images, labels)


class _Batches(torch.utils.data.Sampler):
    """The batches of sample ids to read; replaced every epoch (persistent DataLoader
    workers call `iter` on it again for each pass)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


# --------------------------------------------------------------------------- the share loader


def crop_batch(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop (N, C, S, S) to (N, C, size, size): at a random offset per image when a
    generator is given, else the centre."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    if h < size or w < size:
        raise ValueError(f"crop_batch: images of {h}x{w} are smaller than {size}")
    if generator is None or n == 0:
        top, left = (h - size) // 2, (w - size) // 2
        return x[:, :, top:top + size, left:left + size]
    oy = torch.randint(0, h - size + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, w - size + 1, (n,), generator=generator).to(x.device)
    rows = oy[:, None] + torch.arange(size, device=x.device)[None, :]
    cols = ox[:, None] + torch.arange(size, device=x.device)[None, :]
    b = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return x[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


class ShardShareLoader(ShareCursor):
    """Batches of `(images, labels)` from worker `worker`'s share of an epoch, read
    from the shard set of the current resolution. Same interface and the same
    share/augmentation draws as `ShareLoader`: `set_epoch(epoch, shares=...,
    batch_size=..., resolution=...)` (a new resolution switches shard sets in
    place), iterate for the rest of the epoch's share, `state_dict` to resume.

    `limit` keeps the fixed subset `data.train_limit` keeps; `mode` is
    'auto' | 'memory' | 'stream' (module docstring); `num_workers` decoding
    processes (threads in a daemonic process); `verify`: check the SHA-256 of each
    set's shards the first time the loader opens the set (`data.verify`)."""

    def __init__(self, shards: str | os.PathLike | ShardIndex, transform: BatchTransform, *, worker: int,
                 shares: Sequence[int], batch_size: int, resolution: int, seed: int, epoch: int = 0,
                 device: torch.device | str | None = None, split: str = "train", limit: int | None = None,
                 mode: str = "auto", num_workers: int = 0, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 log: Callable[[str], None] | None = None, verify: bool = False):
        if mode not in ("auto", "memory", "stream"):
            raise ValueError(f"mode must be 'auto', 'memory' or 'stream', got {mode!r}")
        self.index = shards if isinstance(shards, ShardIndex) else ShardIndex.load(shards)
        self.split_name = split
        self.transform = transform
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.worker = check_count("worker", worker, 0)
        self.seed = check_count("seed", seed, 0)
        self.mode = mode
        self.num_workers = check_count("num_workers", num_workers, 0)
        self.memory_limit = int(memory_limit)
        self.log = log
        self.verify = verify
        self._verified: set[int] = set()  # resolutions whose shards were checked (an evicted set is not re-hashed)
        self.ids = subset_ids(self.index.num_samples(split), limit)
        self._dense = len(self.ids) == self.index.num_samples(split)
        self._memory: dict[int, Split] = {}  # resolution -> set, most recently used last
        self._streams: dict[int, tuple[StreamSet, _Batches, torch.utils.data.DataLoader]] = {}
        self._indices: np.ndarray | None = None
        self.position = 0
        self.set_epoch(epoch, shares=shares, batch_size=batch_size, resolution=resolution)

    # -- the share bookkeeping is ShareCursor's; what differs for shard sets:

    def _num_samples(self) -> int:
        return len(self.ids)

    def _use_resolution(self, resolution: int) -> None:
        self.info = self.index.shard_set(self.split_name, resolution)  # a missing set fails here, by name
        self.resolution = resolution

    # -- backends

    def backend(self, resolution: int | None = None) -> str:
        """'memory' or 'stream' for the set at `resolution` (default: the current one)."""
        info = self.info if resolution is None else self.index.shard_set(self.split_name, resolution)
        if self.mode != "auto":
            return self.mode
        decoded = len(self.ids) * self.index.channels * info.side * info.side
        return "memory" if decoded <= self.memory_limit else "stream"

    def _memory_set(self) -> Split:
        r = self.resolution
        if r in self._memory:
            self._memory[r] = self._memory.pop(r)  # most recently used
            return self._memory[r]
        full = load_shard_set(self.index, self.split_name, r, num_workers=self.num_workers, log=self.log,
                              verify=self._first_open(r))
        if not self._dense:
            sel = torch.from_numpy(self.ids)
            full = Split(full.images[sel], full.labels[sel])
        used = full.images.numel() + sum(s.images.numel() for s in self._memory.values())
        while self._memory and used > self.memory_limit:
            used -= self._memory.pop(next(iter(self._memory))).images.numel()
        self._memory[r] = full
        return full

    def _stream(self) -> tuple[_Batches, torch.utils.data.DataLoader]:
        r = self.resolution
        if r not in self._streams:
            dataset = StreamSet(self.index, self.split_name, r, verify=self._first_open(r))
            sampler = _Batches()
            workers = 0 if _in_daemon() else self.num_workers
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                                 collate_fn=_collate, persistent_workers=workers > 0)
            self._streams[r] = (dataset, sampler, loader)
        _, sampler, loader = self._streams[r]
        return sampler, loader

    def _first_open(self, resolution: int) -> bool:
        """Whether to verify the set at `resolution` now: on its first opening, with `verify`."""
        first = self.verify and resolution not in self._verified
        self._verified.add(resolution)
        return first

    # -- iteration

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if images.shape[-1] == self.resolution:
            return self.transform(images, self.resolution, train=True, generator=generator)
        # Stored with a crop margin: crop the resolution out of real pixels (random when augmenting).
        t = self.transform
        x = crop_batch(to_float(images), self.resolution, generator if t.augment else None)
        if t.augment and t.flip:
            x = random_flip(x, generator)
        return normalize(x, t.mean, t.std)

    def _batches(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(start, stop, uint8 images, labels) for the rest of the share."""
        indices = self.indices
        starts = list(range(self.position, self.share, self.batch_size))
        bounds = [(s, min(s + self.batch_size, self.share)) for s in starts]
        if self.backend() == "memory":
            data = self._memory_set()
            for start, stop in bounds:
                idx = torch.from_numpy(indices[start:stop])
                yield start, stop, data.images[idx], data.labels[idx]
        else:
            sampler, loader = self._stream()
            sampler.batches = [self.ids[indices[start:stop]].tolist() for start, stop in bounds]
            for (start, stop), (images, labels) in zip(bounds, loader):
                yield start, stop, images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start, stop, images, labels in self._batches():
            gen = torch.Generator().manual_seed(batch_seed(self.seed, self.worker, self.epoch, start))
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            self.position = stop  # counted before handing out, as ShareLoader does
            yield self.transform.mix(self._augment(images, gen), labels, gen)

    def close(self) -> None:
        """Stop persistent DataLoader workers and drop cached sets."""
        self._streams.clear()
        self._memory.clear()


# --------------------------------------------------------------------------- a Dataset for the launcher


def load_shard_dataset(root: str | os.PathLike, resolution: int | None = None, *, num_workers: int = 0,
                       load_train: bool = False, log: Callable[[str], None] | None = None,
                       verify: bool = False) -> Dataset:
    """A `Dataset` from a shard directory: the test split decoded at `resolution`
    (default: the largest stored) for evaluation; the training split as labels
    with zero-size images unless `load_train` (workers read it with
    `ShardShareLoader`, set by set), so planning needs no decoding. `verify`: check
    the SHA-256 of the shards it decodes."""
    index = ShardIndex.load(root)
    r = max(index.resolutions) if resolution is None else int(resolution)
    test_split = "test" if "test" in index.splits else index.splits[-1]
    test = load_shard_set(index, test_split, r, num_workers=num_workers, log=log, verify=verify)
    if test.images.shape[-1] != r:
        test = Split(crop_batch(test.images, r), test.labels)
    if load_train:
        train = load_shard_set(index, "train", r, num_workers=num_workers, log=log, verify=verify)
        if train.images.shape[-1] != r:
            train = Split(crop_batch(train.images, r).contiguous(), train.labels)
    else:
        labels = torch.from_numpy(index.labels("train"))
        train = Split(torch.empty((len(labels), index.channels, 0, 0), dtype=torch.uint8), labels)
    d = index.data
    return Dataset(str(d.get("source", "shards")), train, test, index.num_classes, tuple(d["mean"]), tuple(d["std"]),
                   bool(d["flip"]), list(d["classes"]))


def load_source(cfg: DataConfig, image_size: int | None) -> Dataset:
    """`data.source: shards` (named in dbl_ps.registry.DATA_SOURCES, imported on first use).
    A directory `dbl-ps shard` wrote: the training split as labels only (no decoding,
    whatever its size); workers read the set of each resolution through `share_loader_for`.
    Any other folder: webdataset tars written by other tools, read sample by sample
    (`webdataset_folder`)."""
    if not written_by_dbl_ps(cfg.folder()):
        return load_webdataset_folder(cfg, image_size)
    return load_shard_dataset(cfg.folder(), image_size, num_workers=cfg.num_workers, load_train=False,
                              verify=getattr(cfg, "verify", False))


def prepare_shards(data_cfg: DataConfig, resolutions: Sequence[int], *, progress: bool | None = None) -> None:
    """What a launcher does for `data.source: shards` before it loads the data: a `dbl-ps shard`
    directory must hold a complete set for every resolution of the schedule; a webdataset folder
    gets its index built (each tar scanned once, with a progress bar unless `progress` is False;
    None: where stderr is a terminal) or found current."""
    if written_by_dbl_ps(data_cfg.folder()):
        ShardIndex.load(data_cfg.folder()).check_resolutions(list(resolutions))
    else:
        load_index(data_cfg.folder(), progress=progress, log=lambda msg: print(msg, flush=True))


def share_loader_for(data_cfg: DataConfig, split: Split | DatasetSplit, transform: BatchTransform, *,
                     resolutions: Sequence[int] | None = None, **kwargs: Any) -> Any:
    """The share loader a worker of a run uses: `ShardShareLoader` on the shard set of
    each resolution when `data.path` is a `dbl-ps shard` directory, else `ShareLoader` over
    an in-memory `split`, or `DatasetShareLoader` over a split read sample by sample
    (imagefolder, data.factory, a webdataset folder). `resolutions` (the schedule's) are
    checked up front, so a missing set fails before the first step; `kwargs` are
    ShareLoader's (worker, shares, batch_size, resolution, seed, epoch, device)."""
    if data_cfg.source != "shards" or not written_by_dbl_ps(data_cfg.folder()):
        if split.in_memory:
            return ShareLoader(cast(Split, split), transform, **kwargs)
        return DatasetShareLoader(cast(DatasetSplit, split), transform, **kwargs)
    index = ShardIndex.load(data_cfg.folder())
    if resolutions:
        index.check_resolutions(list(resolutions))
    return ShardShareLoader(index, transform, limit=data_cfg.train_limit, num_workers=data_cfg.num_workers,
                            verify=getattr(data_cfg, "verify", False), **kwargs)
