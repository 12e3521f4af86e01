"""Write Fashion-MNIST (IDX files) as an ImageFolder of PNGs: the layout `data.source:
imagefolder` reads, a class folder per label under `train/` and `val/`.

    python scripts/fashion_mnist_imagefolder.py ../shared/data/fashion-mnist fmnist-folder --train 3000 --val 1000

The README's "your own model and data" walk-through trains torchvision's ResNet-18 on the
folder this makes (3,000 training and 1,000 validation images, balanced over the 10
classes: the first N/10 of each class in the file's order). Needs only numpy and Pillow.
An existing non-empty OUT is refused (`--force` replaces its train/ and val/).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or not) as a numpy array of its shape."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(source: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (source / name).is_file():
            return source / name
    raise SystemExit(f"error: {source} has no {stem}(.gz); give the folder with the four Fashion-MNIST IDX files")


def balanced(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first count/10 images of each class (file order), interleaved by class."""
    per = count // len(CLASSES)
    if per * len(CLASSES) != count:
        raise SystemExit(f"error: {count} is not a multiple of {len(CLASSES)} (one equal share per class)")
    picks = [np.flatnonzero(labels == c)[:per] for c in range(len(CLASSES))]
    if min(len(p) for p in picks) < per:
        raise SystemExit(f"error: the file has fewer than {per} images of some class")
    return np.stack(picks, axis=1).reshape(-1)


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, picks: np.ndarray) -> None:
    for c, name in enumerate(CLASSES):
        (out / f"{c}-{name}").mkdir(parents=True, exist_ok=True)
    for i in picks:
        c = int(labels[i])
        Image.fromarray(images[i]).save(out / f"{c}-{CLASSES[c]}" / f"{i:05d}.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="folder with the Fashion-MNIST IDX files (.gz or not)")
    p.add_argument("out", type=Path, help="the ImageFolder to write (train/ and val/ inside)")
    p.add_argument("--train", type=int, default=3000, help="training images (default %(default)s)")
    p.add_argument("--val", type=int, default=1000, help="validation images, from the test file (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace train/ and val/ of an existing OUT")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        if not args.force:
            print(f"error: {args.out} exists and is not empty (add --force to replace its train/ and val/)",
                  file=sys.stderr)
            return 2
        for split in ("train", "val"):
            shutil.rmtree(args.out / split, ignore_errors=True)
    for split, stem, count in (("train", "train", args.train), ("val", "t10k", args.val)):
        images = read_idx(find(args.source, f"{stem}-images-idx3-ubyte"))
        labels = read_idx(find(args.source, f"{stem}-labels-idx1-ubyte"))
        write_split(args.out / split, images, labels, balanced(labels, count))
    print(f"wrote {args.train} training and {args.val} validation PNGs (28x28, grayscale) to {args.out}/train and "
          f"{args.out}/val")
    return 0


if __name__ == "__main__":
    sys.exit(main())
