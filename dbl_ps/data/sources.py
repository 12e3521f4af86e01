"""In-memory image sources: each returns a `Dataset` of uint8 (N, C, H, W) images
and int64 labels for a train and a test split (`Split`), held in memory.

Sources: scikit-learn digits (bundled, the embedded default), MNIST/Fashion-MNIST
(torchvision's `<root>/<ClassName>/raw/` layout through `torchvision.datasets`, or a
flat folder of IDX files, .gz or raw), CIFAR-10/100 through `torchvision.datasets`
(the official archive, extracted once, or its folder) and `synthetic` seeded images
with learnable class structure. Sources read sample by sample (ImageFolder,
`data.factory`) are in `dbl_ps.data.streamed`; `dbl_ps.data.load.load_dataset`
picks one. Every missing or malformed file is one `DataError` naming the path and
what was expected.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.datasets.utils import extract_archive


__all__ = [
    "DataError",
    "Split",
    "Dataset",
    "load_digits",
    "load_idx_dataset",
    "read_idx",
    "load_cifar",
    "make_synthetic",
    "channel_stats",
    "FLIP_DEFAULT",
    "IMAGE_EXTENSIONS",
    "KNOWN_STATS",
    "cache_dir",
    "extract_once",
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

    # An in-memory split: batches are plain indexing (`ShareLoader`), and the launcher may
    # hand it to its workers (`DatasetSplit` is the per-sample kind).
    in_memory = True

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def side(self) -> int:
        return int(self.images.shape[-1])

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
    train: Any  # Split (in memory) or dbl_ps.data.streamed.DatasetSplit (read sample by sample)
    test: Any
    num_classes: int
    mean: tuple[float, ...]  # per channel, 0..1 scale
    std: tuple[float, ...]
    flip: bool  # whether horizontal flip is a label-preserving augmentation here
    classes: list[str] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return self.train.channels

    @property
    def image_size(self) -> int:
        # A shard dataset's training split is labels only (zero-size images): use the test split.
        return self.train.side or self.test.side


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
    from sklearn.datasets import load_digits as sk_load_digits  # scikit-learn is heavy: imported where used
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

_IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx_file(root: Path, name: str, what: str, ndim: int) -> tuple[Path, np.ndarray]:
    """The IDX file `name` in `root`, raw or .gz. Where both are there they must hold the same
    array: one of two different copies (a label file written over, say) is never picked silently."""
    found = [c for c in (root / name, root / (name + ".gz")) if c.is_file()]
    if not found:
        raise DataError(f"{what}: neither {root / name} nor {root / (name + '.gz')} exists")
    arrays = [read_idx(path, expected_ndim=ndim) for path in found]
    if len(arrays) == 2 and not (arrays[0].shape == arrays[1].shape and np.array_equal(arrays[0], arrays[1])):
        raise DataError(f"{what}: {found[0]} and {found[1]} are both there and differ ({_differs(*arrays)}); keep "
                        f"the right one and move the other away")
    return found[0], arrays[0]


def _differs(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shapes {a.shape} and {b.shape}"
    return f"{int(np.count_nonzero(a != b)):,} of {a.size:,} values"


def check_classes(labels: np.ndarray | torch.Tensor, where: str | Path) -> None:
    """A training or test split whose labels hold one class: a damaged or wrong label file
    (all zeros, say) from which a classifier learns nothing, while the run would say finished."""
    values = np.unique(np.asarray(labels))
    if len(labels) > 1 and len(values) < 2:
        raise DataError(f"the labels in {where} are all {values[0]} (one class among {len(labels):,} samples): a "
                        f"classifier needs at least 2 classes; the file is damaged or not this split's labels: "
                        f"restore it")


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
    image_path, images = _read_idx_file(root, image_name, f"{source} {split} images", 3)
    label_path, labels = _read_idx_file(root, label_name, f"{source} {split} labels", 1)
    if images.dtype != np.uint8:
        raise DataError(f"IDX file {image_path} holds {images.dtype}, expected unsigned bytes (images)")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"IDX labels in {label_path} range {labels.min()}..{labels.max()}, expected 0..9")
    check_classes(labels, label_path)
    return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


TORCHVISION_IDX = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _torchvision_raw(root: Path, source: str) -> Path | None:
    """The root torchvision's MNIST/FashionMNIST reads (`root/<ClassName>/raw/`), if `root`
    is such a root, the `<ClassName>` folder or its `raw/` folder."""
    name = TORCHVISION_IDX[source]
    for candidate in (root, root.parent, root.parent.parent):
        if (candidate / name / "raw").is_dir() and root in (candidate, candidate / name, candidate / name / "raw"):
            return candidate
    return None


def _load_torchvision_idx(root: Path, source: str) -> Dataset:

    cls = getattr(datasets, TORCHVISION_IDX[source])
    raw = root / cls.__name__ / "raw"
    missing = [n for n in sum(IDX_FILES.values(), ()) if not (raw / n).is_file()]
    if missing:
        raise DataError(f"{source}: {raw} lacks {', '.join(missing)} (torchvision's layout holds the four IDX files "
                        "uncompressed there; a folder of .gz files is read as data.path directly)")
    splits = []
    for train in (True, False):
        try:
            tv = cls(str(root), train=train, download=False)
        except (RuntimeError, OSError, ValueError, AssertionError) as exc:
            raise DataError(f"{source}: torchvision.datasets.{cls.__name__} cannot read {raw} "
                            f"({type(exc).__name__}: {exc})") from None
        labels = tv.targets.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
            raise DataError(f"{source}: labels in {raw} range {int(labels.min())}..{int(labels.max())}, expected 0..9")
        check_classes(labels, raw / IDX_FILES["train" if train else "test"][1])
        splits.append(Split(tv.data.to(torch.uint8).unsqueeze(1).contiguous(), labels))
    mean, std = KNOWN_STATS[source]
    return Dataset(source, splits[0], splits[1], 10, mean, std, FLIP_DEFAULT[source], [str(i) for i in range(10)])


def load_idx_dataset(path: str | Path, source: str = "fashion_mnist") -> Dataset:
    """MNIST or Fashion-MNIST: torchvision's layout (`<root>/MNIST/raw/`,
    `<root>/FashionMNIST/raw/`, read by `torchvision.datasets.MNIST/FashionMNIST`), or
    a flat folder of the four IDX files, gzipped or not.

    The flat folder keeps dbl-ps's own reader (`read_idx`): torchvision reads only the
    uncompressed files under `<root>/<ClassName>/raw/` (its download step gunzips
    them), so it cannot read the .gz files as distributed, and its errors do not name
    the file; `tests/test_data.py::test_real_fashion_mnist_through_torchvision` shows
    both readers give identical tensors."""
    if source not in TORCHVISION_IDX:
        raise DataError(f"IDX source {source!r} is not one of 'mnist', 'fashion_mnist'")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{source} directory {root} does not exist (expected the IDX files {', '.join(sum(IDX_FILES.values(), ()))}, "
                        f"optionally .gz, or torchvision's {TORCHVISION_IDX[source]}/raw/ folder)")
    tv_root = _torchvision_raw(root, source)
    if tv_root is not None:
        return _load_torchvision_idx(tv_root, source)
    train = _idx_split(root, "train", source)
    test = _idx_split(root, "test", source)
    mean, std = KNOWN_STATS[source]
    return Dataset(source, train, test, 10, mean, std, FLIP_DEFAULT[source], [str(i) for i in range(10)])


# --------------------------------------------------------------------------- CIFAR (torchvision)

# source -> (torchvision class, folder inside the archive, archive name, label key in the pickles)
CIFAR_LAYOUT = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz", "labels", 10),
    "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz", "fine_labels", 100),
}


def _cifar_class(source: str) -> Any:
    """torchvision's CIFAR class without its MD5 checks: they pin the official files
    (a re-packed or test copy fails with "not found or corrupted"), and hashing
    170 MB at every load buys nothing that the shape and label checks here miss."""

    base = getattr(datasets, CIFAR_LAYOUT[source][0])
    return type(f"_{base.__name__}NoMD5", (base,), {
        "train_list": [[name, None] for name, _ in base.train_list],
        "test_list": [[name, None] for name, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def cache_dir() -> Path:
    """Where dbl-ps extracts archives it may not write next to: $DBL_PS_CACHE, else ~/.cache/dbl-ps."""

    return Path(os.environ.get("DBL_PS_CACHE") or Path.home() / ".cache" / "dbl-ps")


def extract_once(archive: Path, folder: str) -> Path:
    """The directory holding `folder` extracted from `archive`: next to the archive, or
    (read-only there) in `cache_dir()`. Extracted into a temporary directory and renamed,
    so an interrupted extraction is never taken for a finished one."""


    key = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:16]
    for parent in (archive.parent, cache_dir() / f"{archive.name}-{key}"):
        if (parent / folder).is_dir():
            return parent
    for parent in (archive.parent, cache_dir() / f"{archive.name}-{key}"):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=parent))
        except OSError:
            continue  # read-only: try the cache
        try:
            extract_archive(str(archive), str(tmp))
            if not (tmp / folder).is_dir():
                raise DataError(f"archive {archive} does not hold the folder {folder}/ (is it the official archive?)")
            try:
                os.replace(tmp / folder, parent / folder)
            except OSError:
                if not (parent / folder).is_dir():  # another process finished first: use its copy
                    raise
            return parent
        except (OSError, EOFError, ValueError) as exc:
            raise DataError(f"archive {archive} could not be extracted: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise DataError(f"cannot extract {archive}: neither {archive.parent} nor {cache_dir()} is writable "
                    "(set DBL_PS_CACHE to a writable folder)")


def load_cifar(path: str | Path, source: str = "cifar10") -> Dataset:
    """CIFAR-10/100 read by `torchvision.datasets.CIFAR10/100` (download=False) from the
    official archive `cifar-10-python.tar.gz`/`cifar-100-python.tar.gz` in `path`
    (extracted once: `extract_once`), or the extracted `cifar-10-batches-py`/
    `cifar-100-python` folder (`path` itself or inside it)."""
    if source not in CIFAR_LAYOUT:
        raise DataError(f"CIFAR source {source!r} is not one of {', '.join(map(repr, CIFAR_LAYOUT))}")
    _, folder, archive, label_key, num_classes = CIFAR_LAYOUT[source]
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{source} directory {root} does not exist (expected {archive} or its folder {folder}/)")
    if (root / folder).is_dir():
        parent, base = root, folder
    elif (root / archive).is_file():
        parent, base = extract_once(root / archive, folder), folder
    else:
        parent, base = root, ""  # the extracted folder itself, whatever its name
    cls = _cifar_class(source)
    where = parent / base
    names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [n for n in names if not (where / n).is_file()]
    if missing:
        raise DataError(f"{source} folder {where} lacks {', '.join(missing)} (expected {archive}, or the extracted "
                        f"{folder}/ holding {', '.join(names)})")
    splits = []
    for train in (True, False):
        try:
            tv = _in_folder(cls, where, train)
        except KeyError as exc:
            raise DataError(f"{source} files in {where}: a pickle lacks the key {exc}; expected 'data' and {label_key!r} "
                            f"(and {cls.meta['key']!r} in {cls.meta['filename']})") from None
        except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
            raise DataError(f"{source} files in {where} are not the python-format pickles torchvision reads "
                            f"({type(exc).__name__}: {exc}); expected 'data' (N, 3072) uint8 and {label_key!r}") from None
        labels = np.asarray(tv.targets, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{source} files in {where}: labels range {labels.min()}..{labels.max()}, "
                            f"expected 0..{num_classes - 1}")
        # torchvision keeps (N, 32, 32, 3); the batch transform wants (N, 3, 32, 32).
        images = torch.from_numpy(np.ascontiguousarray(tv.data.transpose(0, 3, 1, 2)))
        splits.append(Split(images, torch.from_numpy(labels)))
        classes = [str(c) for c in tv.classes]
    mean, std = KNOWN_STATS[source]
    return Dataset(source, splits[0], splits[1], num_classes, mean, std, FLIP_DEFAULT[source], classes)


def _in_folder(cls: type, where: Path, train: bool) -> Any:
    """torchvision's CIFAR reading `where` (it looks for its `base_folder` inside a root)."""
    return type(cls.__name__, (cls,), {"base_folder": where.name})(str(where.parent), train=train, download=False)


# --------------------------------------------------------------------------- ImageFolder


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
    items: list[tuple[Path, int]] = []
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
