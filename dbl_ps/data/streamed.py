"""Sources read sample by sample from a map-style torch Dataset: an ImageFolder tree
streamed from disk (`load_imagefolder`) and the user's own datasets
(`data.factory`, `load_factory`).

A `DatasetSplit` wraps the dataset with a `SamplePrep`: each item `(image, label)`
becomes a (C, S, S) tensor at the stored side S (short side resized + centre crop,
or `RandomResizedCrop` for training with `data.random_resized_crop`; then
`RandAugment` with `data.randaugment`) and an int label, checked as it goes. This
runs in DataLoader worker processes (`dbl_ps.data.shares.DatasetShareLoader`, and
`eval_batches`), so nothing is decoded whole into memory; `len(split)` reads no
image. The first item of each split is read once at load, so a dataset of the
wrong kind fails there, before any worker starts.

Per-sample random draws are seeded by the loader (a seed per sample from the
batch's `batch_seed`), so a resumed run draws the same crops.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from dbl_ps.config import DataConfig
from dbl_ps.data.sources import FLIP_DEFAULT, KNOWN_STATS, DataError, Dataset
from dbl_ps.imports import ImportPathError, import_callable

__all__ = ["SamplePrep", "DatasetSplit", "ImageFiles", "check_item", "load_imagefolder", "load_factory", "STATS_SAMPLE"]

STATS_SAMPLE = 512  # training images the mean/std of a dataset without known statistics are estimated on


def _label(value: Any, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        return int(value.item())
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise DataError(f"{where}: the label is {type(value).__name__} {value!r}, expected an int class number")


def _image(value: Any, where: str) -> Any:
    """A PIL image (mode L or RGB) or a (C, H, W) uint8/float tensor with C in (1, 3)."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value if value.mode in ("L", "RGB") else value.convert("RGB")
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{where}: the image is a {type(value).__name__}, expected a PIL image or a CHW/HW tensor")
    if value.dim() == 2:
        value = value.unsqueeze(0)
    if value.dim() != 3 or value.shape[0] not in (1, 3):
        raise DataError(f"{where}: image of shape {tuple(value.shape)}, expected (C, H, W) with C = 1 or 3, or (H, W) "
                        "grayscale (channels first: permute an (H, W, C) image)")
    if value.dtype != torch.uint8 and not value.is_floating_point():
        raise DataError(f"{where}: image of dtype {value.dtype}, expected uint8 (0..255) or float (0..1)")
    return value


def _channels(image: Any) -> int:
    return (1 if image.mode == "L" else 3) if not isinstance(image, torch.Tensor) else int(image.shape[0])


def _side(image: Any) -> tuple[int, int]:
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    return image.height, image.width


def check_item(item: Any, where: str, num_classes: int | None = None) -> tuple[Any, int]:
    """`item` as (image, label), or a DataError saying what is wrong with it."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
        raise DataError(f"{where} is {kind}, expected (image, int label)")
    image, label = _image(item[0], where), _label(item[1], where)
    if num_classes is not None and not 0 <= label < num_classes:
        raise DataError(f"{where}: label {label} outside 0..{num_classes - 1} (num_classes {num_classes})")
    return image, label


class SamplePrep:
    """One item -> ((C, size, size) tensor of `dtype`, int label). Picklable (it runs in
    DataLoader worker processes). `train` enables the random per-sample transforms."""

    def __init__(self, *, size: int, channels: int, dtype: torch.dtype, num_classes: int, train: bool = False,
                 random_resized_crop: bool = False, randaugment: bool = False, name: str = "dataset"):
        self.size, self.channels, self.dtype, self.num_classes = size, channels, dtype, num_classes
        self.random_resized_crop = train and random_resized_crop
        self.randaugment = train and randaugment
        self.name = name

    @property
    def random(self) -> bool:
        return self.random_resized_crop or self.randaugment

    def __call__(self, item: Any, index: int, seed: int | None = None) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.v2 import functional as TF

        where = f"{self.name} item {index}"
        image, label = check_item(item, where, self.num_classes)
        if _channels(image) != self.channels:
            raise DataError(f"{where}: {_channels(image)} channels, the split's first image has {self.channels}")
        if self.random:
            # Seeded per sample (the loader's `seed`) so a resumed epoch draws the same; in the
            # training process itself the global RNG is restored afterwards (dropout draws from it).
            inside_worker = torch.utils.data.get_worker_info() is not None
            with torch.random.fork_rng(devices=[], enabled=not inside_worker):
                torch.manual_seed(0 if seed is None else seed)
                image = self._geometry(image, v2, TF)
                if self.randaugment:
                    image = v2.RandAugment()(image)
        else:
            image = self._geometry(image, v2, TF)
        if not isinstance(image, torch.Tensor):
            image = TF.pil_to_tensor(image)
        if image.dtype != self.dtype:
            image = image.float().div_(255.0) if self.dtype != torch.uint8 else \
                image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return image, label

    def _geometry(self, image: Any, v2: Any, TF: Any) -> Any:
        if self.random_resized_crop:
            return v2.RandomResizedCrop(self.size, antialias=True)(image)
        if _side(image) != (self.size, self.size):
            image = TF.center_crop(TF.resize(image, self.size, antialias=True), [self.size, self.size])
        return image


def _identity(batch: Any) -> Any:
    return batch  # `DatasetSplit.__getitems__` already made the batch tensors


class DatasetSplit(torch.utils.data.Dataset):
    """A split read sample by sample: `dataset[i]` through `prep`. Keys are an index, or
    `(index, seed)` where the loader seeds the random per-sample transforms.

    `in_memory` is False: the launcher does not ship it to its workers (each loads it),
    and `share_loader_for` reads it through a DataLoader (`DatasetShareLoader`)."""

    in_memory = False

    def __init__(self, dataset: Any, prep: SamplePrep, *, num_workers: int = 0, labels: Sequence[int] | None = None):
        self.dataset, self.prep, self.num_workers = dataset, prep, int(num_workers)
        self._labels = labels

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def channels(self) -> int:
        return self.prep.channels

    @property
    def side(self) -> int:
        return self.prep.size

    @property
    def labels(self) -> torch.Tensor:
        """All labels: from the dataset's `targets` where it keeps them, else read item by item (decoding)."""
        if self._labels is None:
            self._labels = [int(self.dataset[i][1]) for i in range(len(self))]
        return torch.as_tensor(self._labels, dtype=torch.int64)

    def __getitem__(self, key: int | tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self.prep(self.dataset[int(index)], int(index), seed)

    def __getitems__(self, keys: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch (the DataLoader calls this instead of `__getitem__` per key): one
        tensor per batch crosses from a DataLoader worker, not a list of samples."""
        items = [self[key] for key in keys]
        if not items:
            return torch.empty((0, self.channels, self.side, self.side), dtype=self.prep.dtype), torch.empty(0, dtype=torch.int64)
        return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)

    def subset(self, count: int, seed: int = 0) -> "DatasetSplit":
        """A fixed random subset of `count` samples (the same pick as `Split.subset`)."""
        if count >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:count]).tolist()
        labels = [self._labels[i] for i in idx] if self._labels is not None else None
        return DatasetSplit(torch.utils.data.Subset(self.dataset, idx), self.prep, num_workers=self.num_workers, labels=labels)

    def with_prep(self, prep: SamplePrep) -> "DatasetSplit":
        return DatasetSplit(self.dataset, prep, num_workers=self.num_workers, labels=self._labels)

    def data_loader(self, batch_sampler: Any, *, persistent: bool = False) -> torch.utils.data.DataLoader:
        """A DataLoader yielding `(uint8/float (N, C, S, S), int64 labels)` for each batch of keys.
        DataLoader worker processes cannot start inside a daemonic process (store-mode workers
        are not daemonic, so they can; a caller's own daemonic process cannot): there samples
        are read in this process."""

        workers = 0 if multiprocessing.current_process().daemon else self.num_workers
        return torch.utils.data.DataLoader(self, batch_sampler=batch_sampler, num_workers=workers, collate_fn=_identity,
                                           persistent_workers=persistent and workers > 0)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, `batch_size` samples at a time (evaluation)."""
        keys = list(range(len(self)))
        yield from self.data_loader([keys[s:s + batch_size] for s in range(0, len(keys), batch_size)])


# --------------------------------------------------------------------------- building one


def _check_map_style(dataset: Any, what: str) -> None:
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__") \
            or not hasattr(dataset, "__len__"):
        raise DataError(f"{what} is a {type(dataset).__name__}, expected a map-style dataset "
                        "(with __len__ and __getitem__)")


def _first_item(dataset: Any, what: str, num_classes: int | None) -> tuple[Any, int]:
    _check_map_style(dataset, what)
    if len(dataset) == 0:
        raise DataError(f"{what} is empty")
    try:
        item = dataset[0]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{what}: reading item 0 failed ({type(exc).__name__}: {exc})") from exc
    return check_item(item, f"{what} item 0", num_classes)


def _targets(dataset: Any, what: str, num_classes: int) -> list[int] | None:
    """The dataset's labels where it keeps them (`targets`, as torchvision datasets do): all checked, cheaply."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    labels = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(labels) != len(dataset):
        return None
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(f"{what} item {int(bad[0])}: label {int(labels[bad[0]])} outside 0..{num_classes - 1} "
                        f"(num_classes {num_classes}; {len(bad)} such labels)")
    return labels.tolist()


def _estimate_stats(split: DatasetSplit, log: Callable[[str], None]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    n = min(len(split), STATS_SAMPLE)
    idx = np.sort(np.random.default_rng(0).permutation(len(split))[:n]).tolist()
    total = torch.zeros(split.channels, dtype=torch.float64)
    squares = torch.zeros(split.channels, dtype=torch.float64)
    pixels = 0
    batches = [idx[s:s + 64] for s in range(0, n, 64)]
    for keys, (images, _) in zip(batches, split.data_loader(batches)):
        x = images.to(torch.float64)
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        if not bool(finite.all()):  # one NaN pixel makes the mean NaN, and every normalised batch with it
            bad = keys[int((~finite).nonzero()[0])]
            raise DataError(f"{split.prep.name} item {bad}: the image holds NaN or infinite pixel values; "
                            "fix or leave out that sample (float images are 0..1)")
        if images.dtype == torch.uint8:
            x /= 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        pixels += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / pixels
    std = (squares / pixels - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):  # e.g. huge float pixel values
        raise DataError(f"{split.prep.name}: the estimated mean {mean.tolist()} / std {std.tolist()} is not finite; "
                        "check the images' values (float images are 0..1) or set data.mean and data.std")
    m, s = tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
    log(f"data: mean {list(m)} and std {list(s)} estimated on {n} training images (a fixed sample; "
        "set data.mean and data.std to give them)")
    return m, s


def build_dataset(name: str, train: Any, test: Any, *, cfg: DataConfig, image_size: int | None, num_classes: int,
                  classes: list[str], stats: tuple[Sequence[float], Sequence[float]] | None, flip: bool,
                  log: Callable[[str], None]) -> Dataset:
    """A `Dataset` of two `DatasetSplit`s over map-style datasets, their first items checked."""
    if num_classes < 2:  # one class: nothing to tell apart, the loss is 0 from the first step
        raise DataError(f"{name}: {num_classes} class{'' if num_classes == 1 else 'es'} ({', '.join(classes)}); "
                        "a classifier needs at least 2 classes")
    first_train, _ = _first_item(train, f"{name} training dataset", num_classes)
    first_test, _ = _first_item(test, f"{name} test dataset", num_classes)
    channels = _channels(first_train)
    if _channels(first_test) != channels:
        raise DataError(f"{name}: training images have {channels} channels, test images {_channels(first_test)}; "
                        "both splits need the same")
    size = cfg.image_size or image_size
    if size is None:
        h, w = _side(first_train)
        if h != w:
            raise DataError(f"{name}: images of {h}x{w} px and no stored size: set data.image_size")
        size = h
    floats = [isinstance(x, torch.Tensor) and x.is_floating_point() for x in (first_train, first_test)]
    dtype = torch.float32 if any(floats) else torch.uint8
    common: dict[str, Any] = dict(size=int(size), channels=channels, dtype=dtype, num_classes=num_classes)
    train_prep = SamplePrep(**common, train=True, random_resized_crop=cfg.random_resized_crop,
                            randaugment=cfg.randaugment, name=f"{name} training dataset")
    test_prep = SamplePrep(**common, name=f"{name} test dataset")
    train_split = DatasetSplit(train, train_prep, num_workers=cfg.num_workers,
                               labels=_targets(train, f"{name} training dataset", num_classes))
    test_split = DatasetSplit(test, test_prep, num_workers=cfg.num_workers,
                              labels=_targets(test, f"{name} test dataset", num_classes))
    given = cfg.stats()
    if given is not None:
        if len(given[0]) != channels:
            raise DataError(f"data.mean {cfg.mean} has {len(given[0])} values, the images have {channels} channels")
        stats = given
    elif stats is None or len(stats[0]) != channels:
        # The training images without the random transforms, under the training split's name
        # (a bad label met while estimating was reported as one of the test set's).
        stats = _estimate_stats(train_split.with_prep(SamplePrep(**common, name=f"{name} training dataset")), log)
    return Dataset(name, train_split, test_split, num_classes, tuple(stats[0]), tuple(stats[1]), flip, classes)


# --------------------------------------------------------------------------- ImageFolder, streamed


def _open_rgb(path: str, size: int | None = None) -> Any:
    """PIL decode of one file as RGB; JPEGs decoded at a reduced scale still >= `size` (draft mode)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if size is not None:
                img.draft("RGB", (size, size))
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"image {path} could not be decoded: {exc}") from None
    except Image.DecompressionBombError as exc:  # a 51-line traceback that never named the file
        raise DataError(f"image {path} is too large to decode safely ({exc}); remove or shrink it (or raise "
                        f"PIL.Image.MAX_IMAGE_PIXELS in data.factory code if such images are real)") from None


class _DraftLoader:
    """Picklable `loader` for ImageFolder: `_open_rgb` at a draft size (None: full size)."""

    def __init__(self, size: int | None):
        self.size = size

    def __call__(self, path: str) -> Any:
        return _open_rgb(path, self.size)


class ImageFiles(torch.utils.data.Dataset):
    """`(PIL image, label)` per file: what `torchvision.datasets.ImageFolder` is, listed
    with its own `make_dataset`, but picklable for spawned DataLoader workers and
    without importing torchvision with dbl_ps.data."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], loader: Callable[[str], Any]):
        self.samples, self.classes, self.loader = samples, classes, loader
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.loader(path), label


def _image_folder(root: Path, classes: list[str] | None, loader: Callable[[str], Any]) -> ImageFiles:

    try:
        found, _ = find_classes(str(root))
    except FileNotFoundError:
        raise DataError(f"image folder {root} has no class subfolders (expected {root}/<class>/<image files>)") from None
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"image folder {root} has classes {unknown} that the training split lacks")
    index = {c: i for i, c in enumerate(classes) if c in found}
    samples = make_dataset(str(root), index, extensions=_extensions(), allow_empty=True)
    counts = np.bincount(np.asarray([label for _, label in samples], dtype=np.int64), minlength=len(classes))
    for name in found:
        if counts[index[name]] == 0:
            # Left alone it would be a class with no samples: trained never, predicted never.
            raise DataError(f"class folder {root / name} holds no images (extensions {', '.join(_extensions())}); "
                            "add its images or remove the folder")
    return ImageFiles(samples, list(classes), loader)


def _extensions() -> tuple[str, ...]:

    return tuple(IMG_EXTENSIONS)


def load_imagefolder(path: str | Path, image_size: int, num_workers: int = 0, *, cfg: DataConfig | None = None,
                     log: Callable[[str], None] = print) -> Dataset:
    """A class-per-subfolder tree with `train/` and `val/` (or `test/`), streamed:
    `torchvision.datasets.ImageFolder` lists the files, and each sample is decoded,
    short-side resized and centre-cropped to `image_size` when a loader reads it."""
    cfg = cfg if cfg is not None else DataConfig(source="imagefolder", path=str(path), image_size=image_size,
                                                 num_workers=num_workers)
    root = Path(path)
    train_dir = root / "train"
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"image folder {root} must contain train/ and val/ (or test/) subfolders, each with one folder per class")
    # Draft decoding would blur a RandomResizedCrop of a small region: full size then.
    train_loader = _DraftLoader(None if cfg.random_resized_crop else image_size)
    train = _image_folder(train_dir, None, train_loader)
    if len(train.classes) < 2:
        raise DataError(f"image folder {train_dir} has {len(train.classes)} class folder ({', '.join(train.classes)}); "
                        "a classifier needs at least 2 classes: add one folder per class")
    test = _image_folder(test_dir, list(train.classes), _DraftLoader(image_size))
    return build_dataset("imagefolder", train, test, cfg=cfg, image_size=image_size, num_classes=len(train.classes),
                         classes=list(train.classes), stats=KNOWN_STATS["imagefolder"], flip=FLIP_DEFAULT["imagefolder"],
                         log=log)


# --------------------------------------------------------------------------- data.factory


def load_factory(cfg: DataConfig, image_size: int | None, *, log: Callable[[str], None] = print) -> Dataset:
    """`data.factory`: the user's callable, called with no arguments, returns (train, test)
    map-style datasets of `(image, int label)`. Classes: the training dataset's `.classes`,
    else `data.num_classes`. Statistics: `data.mean`/`data.std`, else estimated."""
    factory = cfg.factory
    if not factory:  # DataConfig.check refuses source factory without it
        raise DataError("data.factory is not set: 'package.module:callable' returning (train, test) datasets")
    try:
        make = import_callable(factory, "data.factory")
    except ImportPathError as exc:
        raise DataError(str(exc)) from exc
    try:
        result = make()
    except SystemExit as exc:  # it would end the run with that status and nothing trained
        raise DataError(f"data.factory {cfg.factory!r} called sys.exit({exc.code!r}) instead of returning (train, "
                        f"test) datasets") from None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        kind = f"a {len(result)}-item {type(result).__name__}" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise DataError(f"data.factory {cfg.factory!r} returned {kind}, expected a pair (train, test) of map-style datasets")
    train, test = result
    name = factory.replace(":", ".").rsplit(".", 1)[-1]
    _check_map_style(train, f"{name} training dataset")
    _check_map_style(test, f"{name} test dataset")
    classes = getattr(train, "classes", None)
    if classes is not None:
        classes = [str(c) for c in classes]
        num_classes = len(classes)
        if cfg.num_classes is not None and cfg.num_classes != num_classes:
            raise DataError(f"data.num_classes is {cfg.num_classes}, the training dataset's .classes lists {num_classes}")
    elif cfg.num_classes is not None:
        num_classes = cfg.num_classes
        classes = [str(i) for i in range(num_classes)]
    else:
        raise DataError(f"data.factory {cfg.factory!r}: the training dataset has no .classes; set data.num_classes")
    flip = True if cfg.flip is None else cfg.flip
    return build_dataset(name, train, test, cfg=cfg, image_size=image_size, num_classes=num_classes, classes=classes,
                         stats=None, flip=flip, log=log)
