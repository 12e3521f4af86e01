"""`write_shards`: pre-encode a source into webdataset tar shards, one set per
resolution and split, plus `index.json` (see `dbl_ps.shards.index`).

Each job writes shard `j` of one split at *every* resolution, so an image is
decoded once however many resolutions there are. Jobs run in a process pool
(`workers`); each shard is written to `*.tar.tmp` and renamed when complete, so
an interrupted run leaves only whole shards behind and re-running the same
command resumes: shards already there are kept (their checksums are read back),
the rest are written. A directory holding a finished set, or a partial run with
other parameters, is refused unless `overwrite=True`.

Resizing: tensor sources (digits, IDX, CIFAR, synthetic) are resized with the
training path's own `resize_batch` (bilinear, antialiased when shrinking), so a
shard image equals what on-the-fly resizing computes, rounded to uint8.
ImageFolder images are decoded with PIL (JPEG draft mode to the largest side
needed), the short side resized, then centre-cropped to a square. Evaluation
splits are stored at exactly the resolution; the training split keeps a margin
(`train_margin`, default 1/8 for ImageFolder, 0 for the small sources) so the
loader's random crop has real pixels to move over instead of zero padding:
a training image at resolution r is stored at ``r + 2*round(r*margin/2)`` px.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dbl_ps import __version__
from dbl_ps.data import sources as S
from dbl_ps.data.transforms import resize_batch, to_float
from dbl_ps.run_ownership import atomic_write
from dbl_ps.shards.codec import EXTENSIONS, FORMATS, encode_image
from dbl_ps.shards.errors import ShardError
from dbl_ps.shards.index import FORMAT, INDEX_FILE, PROGRESS_FILE, VERSION, ShardIndex, sample_key, sha256_file

__all__ = ["SOURCE_TYPES", "ShardJob", "write_shards", "train_side", "detect_source"]

SOURCE_TYPES = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
DEFAULT_SAMPLES_PER_SHARD = 10000


def train_side(resolution: int, margin: float) -> int:
    """Stored side of a training image at `resolution` with a crop margin (a fraction of it)."""
    return int(resolution) + 2 * int(round(resolution * margin / 2))


def detect_source(path: str | Path) -> str:
    """The source type of a path: IDX files (fashion_mnist when the path says so, else
    mnist), CIFAR pickles, or an ImageFolder tree with train/ and val/ (or test/)."""
    root = Path(path)
    if not root.is_dir():
        raise ShardError(f"source {root} is not a directory (or give a source name: {', '.join(SOURCE_TYPES)})")
    names = {p.name for p in root.iterdir()}
    if any(n.startswith("train-images-idx3-ubyte") for n in names):
        return "fashion_mnist" if "fashion" in str(root.resolve()).lower() else "mnist"
    if "cifar-10-batches-py" in names or "data_batch_1" in names:
        return "cifar10"
    if "cifar-100-python" in names or {"train", "test", "meta"} <= names and (root / "train").is_file():
        return "cifar100"
    if (root / "train").is_dir():
        return "imagefolder"
    raise ShardError(f"cannot tell what source {root} holds (IDX files, CIFAR pickles, or train/ and val/ class folders); "
                     f"name it with --source-type ({', '.join(SOURCE_TYPES)})")


@dataclass
class ShardJob:
    """Shard `shard` of `split`: samples `first .. first + n - 1` at every resolution."""

    out: str
    split: str
    shard: int
    first: int
    labels: np.ndarray
    sides: dict[int, int]  # resolution -> stored side
    fmt: str
    quality: int
    channels: int
    images: np.ndarray | None = None  # uint8 (n, C, H, W), tensor sources
    paths: list[str] | None = None  # image files, ImageFolder

    def file(self, resolution: int) -> str:
        return f"{self.split}/r{resolution}/{self.split}-{self.shard:06d}.tar"


def _resized_tensor(images: np.ndarray, side: int) -> np.ndarray:
    x = resize_batch(to_float(torch.from_numpy(images)), side)
    return x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _decode_file(path: str, sides: Sequence[int]) -> list[np.ndarray]:
    """One image file -> an RGB uint8 (3, s, s) centre crop per side (short side resized to s)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (max(sides), max(sides)))
            img = img.convert("RGB")
            out = []
            for s in sides:
                w, h = img.size
                scale = s / min(w, h)
                new_w, new_h = max(s, round(w * scale)), max(s, round(h * scale))
                r = img.resize((new_w, new_h), Image.BILINEAR)  # type: ignore[attr-defined]  # (Resampling: Pillow >= 9.1 only)
                left, top = (new_w - s) // 2, (new_h - s) // 2
                out.append(np.asarray(r.crop((left, top, left + s, top + s)), dtype=np.uint8).transpose(2, 0, 1))
            return out
    except (OSError, ValueError) as exc:
        raise ShardError(f"image {path} could not be decoded: {exc}") from None


def run_job(job: ShardJob) -> list[dict[str, Any]]:
    """Write one shard at every resolution; returns the index entries (resolution-tagged)."""
    import webdataset as wds

    torch.set_num_threads(1)
    resolutions = sorted(job.sides)
    n = len(job.labels)
    if job.images is not None:
        per_res = {r: _resized_tensor(job.images, job.sides[r]) for r in resolutions}
        images_at = lambda r, k: per_res[r][k]  # noqa: E731
    else:
        assert job.paths is not None
        sides = [job.sides[r] for r in resolutions]
        decoded = [_decode_file(p, sides) for p in job.paths]
        images_at = lambda r, k: decoded[k][resolutions.index(r)]  # noqa: E731
    ext = EXTENSIONS[job.fmt]
    entries = []
    for r in resolutions:
        final = Path(job.out) / job.file(r)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as fh:
            writer = wds.TarWriter(fh, encoder=False, mtime=0)  # int: a float mtime adds a PAX header per member
            for k in range(n):
                image = images_at(r, k)
                if image.shape[0] != job.channels:
                    image = np.repeat(image, job.channels, axis=0) if image.shape[0] == 1 else image[: job.channels]
                writer.write({"__key__": sample_key(job.first + k), "cls": str(int(job.labels[k])).encode(),
                              ext: encode_image(image, job.fmt, job.quality)})
            writer.close()
        os.replace(tmp, final)
        entries.append({"resolution": r, "file": job.file(r), "first": job.first, "samples": n,
                        "bytes": final.stat().st_size, "sha256": sha256_file(final)})
    return entries


def _existing_entries(job: ShardJob) -> list[dict[str, Any]] | None:
    """Index entries of a shard a previous run finished at every resolution, else None."""
    entries = []
    for r in sorted(job.sides):
        final = Path(job.out) / job.file(r)
        if not final.is_file():
            return None
        entries.append({"resolution": r, "file": job.file(r), "first": job.first, "samples": len(job.labels),
                        "bytes": final.stat().st_size, "sha256": sha256_file(final)})
    return entries


@dataclass
class _Source:
    name: str
    channels: int
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    # split -> (labels, images or None, paths or None)
    splits: dict[str, tuple[np.ndarray, np.ndarray | None, list[str] | None]] = field(default_factory=dict)


def _subset_ids(n: int, limit: int | None, seed: int) -> np.ndarray:
    # Same selection as `Split.subset`, so --limit and data.train_limit pick alike.
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _load_source(source: str, path: str | None, limit: int | None) -> _Source:
    if source == "imagefolder":
        root = Path(path or "")
        train_dir = root / "train"
        test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if not train_dir.is_dir() or test_dir is None:
            raise ShardError(f"image folder {root} must contain train/ and val/ (or test/) subfolders, one folder per class")
        classes, train_items = S._list_tree(train_dir, None)
        _, test_items = S._list_tree(test_dir, classes)
        mean, std = S.KNOWN_STATS["imagefolder"]
        src = _Source("imagefolder", 3, len(classes), classes, mean, std, S.FLIP_DEFAULT["imagefolder"])
        for split, items, seed in (("train", train_items, 0), ("test", test_items, 1)):
            ids = _subset_ids(len(items), limit, seed)
            src.splits[split] = (np.array([items[i][1] for i in ids], dtype=np.int64), None, [str(items[i][0]) for i in ids])
        return src
    if source == "digits":
        ds = S.load_digits()
    elif source in ("mnist", "fashion_mnist"):
        ds = S.load_idx_dataset(path or "", source)
    elif source in ("cifar10", "cifar100"):
        ds = S.load_cifar(path or "", source)
    elif source == "synthetic":
        ds = S.make_synthetic()
    else:
        raise ShardError(f"source type {source!r} is not one of {', '.join(SOURCE_TYPES)}")
    src = _Source(ds.name, ds.in_channels, ds.num_classes, list(ds.classes), ds.mean, ds.std, ds.flip)
    for split, seed in (("train", 0), ("test", 1)):
        part = getattr(ds, split)
        ids = _subset_ids(len(part), limit, seed)
        src.splits[split] = (part.labels.numpy()[ids], part.images.numpy()[ids], None)
    return src


def _prepare_out(out: Path, params: dict[str, Any], overwrite: bool) -> None:
    index, progress = out / INDEX_FILE, out / PROGRESS_FILE
    if out.exists() and not out.is_dir():
        raise ShardError(f"--out {out} is a file, not a directory")
    ours = index.is_file() or progress.is_file()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise ShardError(f"--out {out} is not empty and holds no shard index; choose an empty or new directory")
    if overwrite and ours:
        for split_dir in out.iterdir():
            if split_dir.is_dir() and any(p.name.startswith("r") and p.is_dir() for p in split_dir.iterdir()):
                shutil.rmtree(split_dir)
        index.unlink(missing_ok=True)
        progress.unlink(missing_ok=True)
    elif index.is_file():
        raise ShardError(f"{out} already holds a finished shard set ({ShardIndex.load(out).available()}); "
                         "pass --overwrite to replace it, or choose another --out")
    elif progress.is_file():
        previous = json.loads(progress.read_text())
        if previous != params:
            changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
            raise ShardError(f"{out} holds a partial run with other parameters ({', '.join(changed)} differ); "
                             "re-run with the same ones to resume, or pass --overwrite to start again")
    out.mkdir(parents=True, exist_ok=True)
    progress.write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")


def write_shards(source: str, path: str | None, resolutions: Sequence[int], out: str | Path, *, fmt: str = "png",
                 quality: int = 90, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, workers: int = 1,
                 train_margin: float | None = None, limit: int | None = None, overwrite: bool = False,
                 progress: bool = True, command: str | None = None,
                 log: Callable[[str], None] = print) -> ShardIndex:
    """Encode `source` (a name from SOURCE_TYPES, reading `path`) at `resolutions` into `out`."""
    resolutions = sorted({int(r) for r in resolutions})
    if not resolutions or resolutions[0] < 1:
        raise ShardError(f"--resolutions {list(resolutions)}: give at least one resolution >= 1, e.g. 16,24,32")
    if fmt not in FORMATS:
        raise ShardError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not 1 <= quality <= 100:
        raise ShardError(f"--quality {quality} is outside 1..100")
    if samples_per_shard < 1 or workers < 1:
        raise ShardError(f"--samples-per-shard ({samples_per_shard}) and --workers ({workers}) must be >= 1")
    if train_margin is None:
        train_margin = 0.125 if source == "imagefolder" else 0.0
    if not 0.0 <= train_margin <= 1.0:
        raise ShardError(f"--train-margin {train_margin} is outside 0..1")
    out = Path(out)
    params = {"source": source, "path": str(Path(path).resolve()) if path else None, "resolutions": resolutions,
              "encoding": fmt, "quality": quality if fmt == "jpeg" else None, "samples_per_shard": samples_per_shard,
              "train_margin": train_margin, "limit": limit}
    _prepare_out(out, params, overwrite)
    src = _load_source(source, path, limit)

    jobs: list[ShardJob] = []
    for split, (labels, images, paths) in src.splits.items():
        sides = {r: train_side(r, train_margin) if split == "train" else r for r in resolutions}
        for j, first in enumerate(range(0, len(labels), samples_per_shard)):
            stop = min(first + samples_per_shard, len(labels))
            jobs.append(ShardJob(out=str(out), split=split, shard=j, first=first, labels=labels[first:stop], sides=sides,
                                 fmt=fmt, quality=quality, channels=src.channels,
                                 images=images[first:stop] if images is not None else None,
                                 paths=paths[first:stop] if paths is not None else None))
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    todo = []
    for job in jobs:
        done = _existing_entries(job)
        if done is not None:
            results[(job.split, job.shard)] = done
        else:
            todo.append(job)
    if results:
        log(f"resuming: {len(results)} of {len(jobs)} shards (x{len(resolutions)} resolutions) are already written")
    bar = None
    if progress:

        bar = tqdm(total=len(jobs), initial=len(results), desc="dbl-ps shard", unit="shard")
    started = time.perf_counter()
    try:
        if workers == 1 or len(todo) <= 1:
            for job in todo:
                results[(job.split, job.shard)] = run_job(job)
                if bar is not None:
                    bar.update(1)
        else:

            # spawn: a forked child inheriting torch's OpenMP pool can hang in interpolate.
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(run_job, job): job for job in todo}

                for fut in as_completed(futures):
                    job = futures[fut]
                    results[(job.split, job.shard)] = fut.result()
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    splits: dict[str, Any] = {}
    for split, (labels, _, _) in src.splits.items():
        sets: dict[str, Any] = {}
        for r in resolutions:
            entries = [e for job in jobs if job.split == split for e in results[(job.split, job.shard)] if e["resolution"] == r]
            entries.sort(key=lambda e: e["first"])
            side = train_side(r, train_margin) if split == "train" else r
            sets[str(r)] = {"side": side, "bytes": sum(e["bytes"] for e in entries),
                            "shards": [{k: e[k] for k in ("file", "first", "samples", "bytes", "sha256")} for e in entries]}
        splits[split] = {"samples": int(len(labels)), "labels": [int(v) for v in labels], "sets": sets}

    index = {"format": FORMAT, "version": VERSION, "source": src.name, "source_path": params["path"],
             "num_classes": src.num_classes, "classes": src.classes, "channels": src.channels,
             "mean": list(src.mean), "std": list(src.std), "flip": src.flip, "encoding": fmt,
             "quality": params["quality"], "samples_per_shard": samples_per_shard, "train_margin": train_margin,
             "limit": limit, "resolutions": resolutions, "splits": splits, "command": command,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "encode_seconds": round(time.perf_counter() - started, 3),
             "dbl_ps_version": __version__}
    atomic_write(out / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(index, indent=1) + "\n"))
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return ShardIndex.load(out)
