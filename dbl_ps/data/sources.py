"""Image sources: each returns a `Dataset` of uint8 (N, C, H, W) images and
int64 labels for a train and a test split, held in memory.

    ds = load_dataset(cfg.data, image_size=max(cfg.schedule.resolutions))

Sources: scikit-learn digits (bundled, the embedded default), Fashion-MNIST and
MNIST IDX files (.gz or raw), CIFAR-10/100 python pickles, ImageFolder trees
(decoded with PIL, short side resized and centre-cropped to a stored size) and
`synthetic` seeded images with learnable class structure. Every missing or
malformed file is one `DataError` naming the path and what was expected.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from dbl_ps.config import DataConfig

__all__ = [
    "DataError",
    "Split",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_idx_dataset",
    "read_idx",
    "load_cifar",
    "load_imagefolder",
    "make_synthetic",
    "channel_stats",
    "FLIP_DEFAULT",
    "IMAGE_EXTENSIONS",
]


class DataError(ValueError):
    """A data source is missing, malformed or inconsistent."""


# Horizontal flip keeps the label for natural images and clothes, not for digits
# (a flipped 2 or 7 is not a digit) nor for the synthetic class prototypes.
FLIP_DEFAULT = {
    "digits": False,
    "mnist": False,
    "fashion_mnist": True,
    "cifar10": True,
    "cifar100": True,
    "imagefolder": True,
    "synthetic": False,
}

# Published per-channel statistics on the 0..1 scale (computed from the training sets).
KNOWN_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class Split:
    """One split: `images` uint8 (N, C, H, W), `labels` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, count: int, seed: int = 0) -> "Split":
        """A fixed random subset of `count` samples (the whole split if it is smaller)."""
        if count >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:count])
        idx_t = torch.from_numpy(idx).to(self.labels.device)
        return Split(self.images[idx_t], self.labels[idx_t])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, 0..1 scale
    std: tuple[float, ...]
    flip: bool  # whether horizontal flip is a label-preserving augmentation here
    classes: list[str] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        # A shard dataset's training split is labels only (zero-size images): use the test split.
        images = self.train.images if self.train.images.numel() else self.test.images
        return int(images.shape[-1])


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a uint8 (N, C, H, W) tensor, on the 0..1 scale."""
    x = images.to(torch.float64).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# --------------------------------------------------------------------------- digits


def load_digits(test_size: int = 360, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (values 0..16 scaled to 0..255), with a
    fixed stratified train/test split (1437/360 by default)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_size, random_state=split_seed, stratify=labels)
    train = Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
    test = Split(torch.from_numpy(x_te), torch.from_numpy(y_te))
    mean, std = channel_stats(train.images)
    return Dataset("digits", train, test, 10, mean, std, FLIP_DEFAULT["digits"], [str(i) for i in range(10)])


# --------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(root: Path, name: str, what: str) -> Path:
    for candidate in (root / name, root / (name + ".gz")):
        if candidate.is_file():
            return candidate
    raise DataError(f"{what}: neither {root / name} nor {root / (name + '.gz')} exists")


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed when its name ends in .gz)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"IDX file {path} is not a readable gzip file: {exc}") from None
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, expected at least a 4-byte header")
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"IDX file {path} has a bad magic number {raw[:4].hex()}: expected 0000 then a type code "
                        f"({', '.join(hex(c) for c in _IDX_DTYPES)}) and a dimension count")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"IDX file {path} has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(raw)} bytes, header needs {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes, expected {expected} for shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _idx_split(root: Path, split: str, source: str) -> Split:
    image_name, label_name = IDX_FILES[split]
    image_path = _find_file(root, image_name, f"{source} {split} images")
    label_path = _find_file(root, label_name, f"{source} {split} labels")
    images = read_idx(image_path, expected_ndim=3)
    labels = read_idx(label_path, expected_ndim=1)
    if images.dtype != np.uint8:
        raise DataError(f"IDX file {image_path} holds {images.dtype}, expected unsigned bytes (images)")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"IDX labels in {label_path} range {labels.min()}..{labels.max()}, expected 0..9")
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_idx_dataset(path: str | Path, source: str = "fashion_mnist") -> Dataset:
    """MNIST or Fashion-MNIST from a directory of the four standard IDX files."""
    if source not in ("mnist", "fashion_mnist"):
        raise DataError(f"IDX source {source!r} is not one of 'mnist', 'fashion_mnist'")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{source} directory {root} does not exist (expected the IDX files {', '.join(sum(IDX_FILES.values(), ()))}, optionally .gz)")
    train = _idx_split(root, "train", source)
    test = _idx_split(root, "test", source)
    mean, std = KNOWN_STATS[source]
    return Dataset(source, train, test, 10, mean, std, FLIP_DEFAULT[source], [str(i) for i in range(10)])


# --------------------------------------------------------------------------- CIFAR python format

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def _unpickle(path: Path) -> dict:
    # The CIFAR python format is a pickle; only load files you trust.
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"CIFAR file {path} is not a readable python pickle: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict with 'data' and labels")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_split(root: Path, names: list[str], label_key: str, num_classes: int) -> Split:
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataError(f"CIFAR file {path} does not exist (expected {', '.join(names)} in {root})")
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"CIFAR file {path} has keys {sorted(batch)}, expected 'data' and {label_key!r}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != lab.shape[0]:
            raise DataError(f"CIFAR file {path}: data {data.shape} and {lab.shape[0]} labels, expected (N, 3072) and N labels")
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(f"CIFAR file {path}: labels range {lab.min()}..{lab.max()}, expected 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def load_cifar(path: str | Path, source: str = "cifar10") -> Dataset:
    """CIFAR-10/100 from the python-format pickles (`data_batch_1..5`/`test_batch`
    or `train`/`test`), in `path` or its `cifar-10-batches-py`/`cifar-100-python` subfolder."""
    if source not in CIFAR_LAYOUT:
        raise DataError(f"CIFAR source {source!r} is not one of {', '.join(map(repr, CIFAR_LAYOUT))}")
    folder, train_names, test_names, label_key, num_classes = CIFAR_LAYOUT[source]
    root = Path(path)
    if (root / folder).is_dir():
        root = root / folder
    if not root.is_dir():
        raise DataError(f"{source} directory {root} does not exist (expected {', '.join(train_names + test_names)})")
    train = _cifar_split(root, train_names, label_key, num_classes)
    test = _cifar_split(root, test_names, label_key, num_classes)
    mean, std = KNOWN_STATS[source]
    classes = [str(i) for i in range(num_classes)]
    meta = root / ("batches.meta" if source == "cifar10" else "meta")
    if meta.is_file():
        names = _unpickle(meta).get("label_names" if source == "cifar10" else "fine_label_names")
        if names is not None and len(names) == num_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return Dataset(source, train, test, num_classes, mean, std, FLIP_DEFAULT[source], classes)


# --------------------------------------------------------------------------- ImageFolder


def _decode_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError) as exc:
        raise DataError(f"image {path} could not be decoded: {exc}") from None


def _list_tree(root: Path, classes: Sequence[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = found
        if not classes:
            raise DataError(f"image folder {root} has no class subfolders (expected {root}/<class>/<image files>)")
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"image folder {root} has classes {unknown} that the training split lacks")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for name in found:
        images = [file for file in sorted((root / name).iterdir()) if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            # Left alone it would be a class with no samples: trained never, predicted never.
            raise DataError(f"class folder {root / name} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                            f"add its images or remove the folder")
        items.extend((file, index[name]) for file in images)
    if not items:
        raise DataError(f"image folder {root} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return list(classes), items


def _decode_split(items: list[tuple[Path, int]], size: int, num_workers: int) -> Split:
    paths = [p for p, _ in items]
    if num_workers > 0:
        with ThreadPoolExecutor(num_workers) as pool:
            arrays = list(pool.map(lambda p: _decode_image(p, size), paths))
    else:
        arrays = [_decode_image(p, size) for p in paths]
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return Split(images, labels)


def load_imagefolder(path: str | Path, image_size: int, num_workers: int = 0) -> Dataset:
    """A class-per-subfolder tree with `train/` and `val/` (or `test/`) splits,
    decoded once into memory at `image_size` (short side resized, centre crop)."""
    root = Path(path)
    train_dir = root / "train"
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"image folder {root} must contain train/ and val/ (or test/) subfolders, each with one folder per class")
    classes, train_items = _list_tree(train_dir, None)
    _, test_items = _list_tree(test_dir, classes)
    train = _decode_split(train_items, image_size, num_workers)
    test = _decode_split(test_items, image_size, num_workers)
    mean, std = KNOWN_STATS["imagefolder"]
    return Dataset("imagefolder", train, test, len(classes), mean, std, FLIP_DEFAULT["imagefolder"], classes)


# --------------------------------------------------------------------------- synthetic


def make_synthetic(num_train: int = 1024, num_test: int = 256, num_classes: int = 10, channels: int = 3,
                   size: int = 16, seed: int = 0) -> Dataset:
    """Seeded images with learnable structure: each class is a smooth random
    prototype; a sample is its class prototype, randomly shifted by up to 1/8 of
    the side, plus pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, channels, 4, 4, generator=gen)
    protos = F.interpolate(protos, size=(size, size), mode="bicubic", align_corners=False)
    protos = protos / protos.flatten(1).std(dim=1).view(-1, 1, 1, 1)

    def draw(n: int) -> Split:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        x = protos[labels]
        shift = max(1, size // 8)
        dx = torch.randint(-shift, shift + 1, (n,), generator=gen)
        dy = torch.randint(-shift, shift + 1, (n,), generator=gen)
        x = torch.stack([torch.roll(img, (int(a), int(b)), dims=(1, 2)) for img, a, b in zip(x, dy, dx)]) if n else x
        x = x + 0.5 * torch.randn(x.shape, generator=gen)
        images = (128 + 45 * x).round().clamp(0, 255).to(torch.uint8)
        return Split(images, labels.to(torch.int64))

    train, test = draw(num_train), draw(num_test)
    mean, std = channel_stats(train.images)
    return Dataset("synthetic", train, test, num_classes, mean, std, FLIP_DEFAULT["synthetic"],
                   [f"class{i}" for i in range(num_classes)])


# --------------------------------------------------------------------------- dispatch

# Sources that plugins add (`dbl_ps.shards` registers "shards" when it is imported):
# name -> loader(cfg, image_size) -> Dataset. Plugins depend on this module, never the reverse.
_PLUGIN_SOURCES: dict[str, Callable[[Any, int | None], Dataset]] = {}


def register_source(name: str, loader: Callable[[Any, int | None], Dataset]) -> None:
    """Make `data.source: <name>` load through `loader(data_cfg, image_size)`."""
    _PLUGIN_SOURCES[name] = loader

# What `data.path` names for each source that reads files (all of them directories).
DIRECTORY_EXPECTED = {
    "mnist": "the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (optionally .gz)",
    "fashion_mnist": "the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-* (optionally .gz)",
    "cifar10": "cifar-10-batches-py (or the folder holding it)",
    "cifar100": "cifar-100-python (or the folder holding it)",
    "imagefolder": "the folder holding train/ and val/ (or test/), each with one folder per class",
    "shards": "the folder `dbl-ps shard --out` wrote",
}


def load_dataset(cfg: "DataConfig", *, image_size: int | None = None) -> Dataset:
    """The data set `cfg` describes, with `train_limit`/`test_limit` applied.
    `image_size` is the stored side for imagefolder when `cfg.image_size` is unset
    (pass the largest resolution of the schedule)."""
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
        ds = load_imagefolder(cfg.path, size, cfg.num_workers)
    elif source == "synthetic":
        s = cfg.synthetic
        ds = make_synthetic(s.num_train, s.num_test, s.num_classes, s.channels, s.size, s.seed)
    elif source in _PLUGIN_SOURCES:
        ds = _PLUGIN_SOURCES[source](cfg, image_size)
    else:
        raise DataError(f"data source {source!r} is not one of digits, fashion_mnist, mnist, cifar10, cifar100, imagefolder, "
                        "synthetic, shards")
    if cfg.train_limit is not None:
        ds.train = ds.train.subset(cfg.train_limit, seed=0)
    if cfg.test_limit is not None:
        ds.test = ds.test.subset(cfg.test_limit, seed=1)
    return ds
