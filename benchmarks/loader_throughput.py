"""Loader throughput: images/s from multi-resolution shards against decoding and
resizing the source on the fly, at each resolution, in one run (ratios only).

    python benchmarks/loader_throughput.py                      # both data sets, defaults below
    python benchmarks/loader_throughput.py --images 3000 --workers 2 --json out.json

1. ImageNet-like: an ImageFolder of JPEGs (q90, RGB) made from real Fashion-MNIST
   images upscaled to 256 px (`--images` train + a quarter as many val). Baseline:
   a DataLoader over the files, each worker decoding a 256 px JPEG, resizing its
   short side and centre-cropping (the ImageFolder path of `dbl_ps.data.sources`),
   then the training `BatchTransform`. Shards: `dbl-ps shard --format jpeg` at
   `--resolutions`, read by `ShardShareLoader` in stream mode (a pread + decode of
   a small JPEG per sample in the same number of DataLoader workers) and in
   memory mode (first epoch including decoding the set, and later epochs). At
   `--raw-resolutions` (default: the lowest) also `--format raw` shards (`.npy`
   members: no decoding, a memory copy per sample) in stream mode, the format to
   choose when the low resolutions must be read fastest and disk is cheap.
2. Fashion-MNIST itself (60000 x 28 px, in memory): baseline `ShareLoader` over
   the IDX images, resizing every batch to the resolution; shards (png) read by
   `ShardShareLoader` in memory mode (first and later epochs) and stream mode.
3. Datasets read sample by sample (`--skip datasets` to leave out; no files needed):
   the share loader over a map-style dataset (`DatasetShareLoader`: the user's
   dataset -> per-sample prep -> DataLoader batch sampler -> BatchTransform) against
   today's in-memory `ShareLoader` (baseline) on the same uint8 tensors, digits-size
   (1437 x 1 x 8 x 8) and CIFAR-size (`--dataset-images` x 3 x 32 x 32), with 0 and
   `--workers` DataLoader processes; a streamed ImageFolder of 64 px JPEGs read at
   32 px; and the vectorised pad-crop + flip of `BatchTransform` against per-sample
   v2.RandomCrop(padding) + v2.RandomHorizontalFlip on 1,000 images at 8 and 32 px.
4. Training consumption: images/s of one training step loop of the small CPU
   model (`small_resnet`, batch `--batch`) at each resolution, all threads, so the
   loader rate can be compared with what training eats.
Shard bytes per resolution are read from the index. Each rate is the best of
`--repeats` passes; the machine is shared, so compare ratios, not rates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FASHION = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-mnist").resolve()


def best_rate(fn, repeats: int) -> float:
    return max(fn() for _ in range(repeats))


def make_imagefolder(root: Path, images: int, side: int = 256) -> int:
    """JPEGs of real Fashion-MNIST images upscaled to `side` px; returns total bytes."""
    from PIL import Image

    from dbl_ps.data import load_idx_dataset

    ds = load_idx_dataset(FASHION, "fashion_mnist")
    total = 0
    for split, part, n in (("train", ds.train, images), ("val", ds.test, max(1, images // 4))):
        for i in range(n):
            label = int(part.labels[i])
            d = root / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(part.images[i, 0].numpy()).resize((side, side), Image.BICUBIC).convert("RGB")
            path = d / f"{i:06d}.jpg"
            img.save(path, quality=90)
            total += path.stat().st_size
    return total


class _Files(torch.utils.data.Dataset):
    def __init__(self, items, size):
        self.items, self.size = items, size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from dbl_ps.data.streamed import SamplePrep, _open_rgb

        path, label = self.items[i]
        prep = SamplePrep(size=self.size, channels=3, dtype=torch.uint8, num_classes=1 << 30)
        return prep((_open_rgb(path, self.size), label), i)


def onthefly_rate(items, resolution: int, transform, workers: int, batch: int) -> float:
    """Files decoded, resized and cropped in DataLoader workers, then the train transform."""
    loader = torch.utils.data.DataLoader(_Files(items, resolution), batch_size=batch, shuffle=True,
                                         num_workers=workers, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    n = 0
    for images, labels in loader:
        x = transform(images, resolution, train=False)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def loader_rate(loader, epochs: int = 1) -> float:
    start = time.perf_counter()
    n = 0
    for e in range(epochs):
        loader.set_epoch(e + 1)
        for x, y in loader:
            n += y.shape[0]
    return n / (time.perf_counter() - start)


def augment_rate(transform, channels: int, resolution: int, batch: int, repeats: int = 4) -> float:
    """The training BatchTransform alone on uint8 batches (the same work after either loader)."""
    x = torch.randint(0, 256, (batch, channels, resolution, resolution), dtype=torch.uint8)
    start = time.perf_counter()
    for i in range(repeats):
        transform(x, resolution, train=True, generator=torch.Generator().manual_seed(i))
    return repeats * batch / (time.perf_counter() - start)


def train_rate(in_channels: int, resolution: int, batch: int, steps: int = 3) -> float:
    from dbl_ps.models import build_model

    model = build_model("small_resnet", 10, in_channels=in_channels)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, in_channels, resolution, resolution)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= 1:
            times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


class _UserTensors(torch.utils.data.Dataset):
    """A user's map-style dataset over in-memory tensors: (uint8 CHW image, int label)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _dataset_split(images, labels, workers: int):
    from dbl_ps.data import DatasetSplit, SamplePrep

    prep = SamplePrep(size=images.shape[-1], channels=images.shape[1], dtype=torch.uint8, num_classes=1 << 30, train=True)
    return DatasetSplit(_UserTensors(images, labels), prep, num_workers=workers, labels=labels.tolist())


def _share_rate(loader, repeats: int) -> float:
    def once() -> float:
        loader.set_epoch(loader.epoch + 1)
        start = time.perf_counter()
        n = sum(y.shape[0] for _, y in loader)
        return n / (time.perf_counter() - start)
    once()  # warm-up: starts persistent DataLoader workers
    return best_rate(once, repeats)


def per_sample_augment_rate(images, padding: int, repeats: int) -> float:
    from torchvision.transforms import v2

    from dbl_ps.data import normalize, to_float

    t = v2.Compose([v2.RandomCrop(images.shape[-1], padding=padding), v2.RandomHorizontalFlip()])
    c = images.shape[1]

    def once() -> float:  # the same work as the batch path: crop, flip, to float, normalise
        start = time.perf_counter()
        normalize(to_float(torch.stack([t(img) for img in images])), (0.5,) * c, (0.5,) * c)
        return len(images) / (time.perf_counter() - start)
    return best_rate(once, repeats)


def bench_datasets(args, work: Path, log) -> dict:
    from PIL import Image

    from dbl_ps.config import DataConfig
    from dbl_ps.data import BatchTransform, DatasetShareLoader, ShareLoader, Split, load_dataset, load_digits

    out: dict = {"rows": [], "augment": []}
    digits = load_digits().train
    g = torch.Generator().manual_seed(0)
    cifar = Split(torch.randint(0, 256, (args.dataset_images, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (args.dataset_images,), generator=g))
    for name, split in (("digits 8 px", digits), ("CIFAR-size 32 px", cifar)):
        side, c = split.images.shape[-1], split.images.shape[1]
        transform = BatchTransform((0.5,) * c, (0.5,) * c)
        common = dict(worker=0, shares=[len(split)], batch_size=args.batch, resolution=side, seed=0)
        base = _share_rate(ShareLoader(split, transform, **common), args.repeats)
        row = {"data": name, "in_memory": base}
        for workers in sorted({0, args.workers}):
            rate = _share_rate(DatasetShareLoader(_dataset_split(split.images, split.labels, workers), transform, **common),
                               args.repeats)
            row[f"dataset_w{workers}"] = rate
        out["rows"].append(row)
        log(f"  {name}: in-memory ShareLoader {base:,.0f} img/s (baseline); DatasetShareLoader " + ", ".join(
            f"{k[9:]} workers {v:,.0f} img/s ({v / base:.3f}x)" for k, v in row.items() if k.startswith("dataset_")))

    # A streamed ImageFolder: JPEGs decoded, resized and centre-cropped per sample in DataLoader workers.
    tree = work / "stream_tree"
    n = max(2, args.dataset_images // 5)
    for i in range(n):
        d = tree / ("train" if i < n - n // 5 else "val") / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        img = cifar.images[i].permute(1, 2, 0).numpy()
        Image.fromarray(img).resize((64, 64), Image.BICUBIC).save(d / f"{i}.jpg", quality=90)
    ds = load_dataset(DataConfig(source="imagefolder", path=str(tree), num_workers=args.workers), image_size=32,
                      log=lambda m: None)
    transform = BatchTransform(ds.mean, ds.std)
    rate = _share_rate(DatasetShareLoader(ds.train, transform, worker=0, shares=[len(ds.train)], batch_size=args.batch,
                                          resolution=32, seed=0), args.repeats)
    base = out["rows"][1]["in_memory"]
    out["imagefolder_streamed"] = rate
    log(f"  streamed ImageFolder, {len(ds.train)} 64 px JPEGs read at 32 px, {args.workers} workers: {rate:,.0f} img/s "
        f"({rate / base:.3f}x the in-memory CIFAR-size baseline)")

    # Augmentation: the vectorised batch path against per-sample v2 transforms, 1,000 images.
    for name, split in (("digits 8 px", digits), ("CIFAR-size 32 px", cifar)):
        images = split.images[:1000]
        side, c = images.shape[-1], images.shape[1]
        transform = BatchTransform((0.5,) * c, (0.5,) * c, flip=True)
        batch_rate = best_rate(lambda: _timed_batch(transform, images), args.repeats)
        sample_rate = per_sample_augment_rate(images, side // 8, args.repeats)
        out["augment"].append({"data": name, "batch": batch_rate, "per_sample_v2": sample_rate})
        log(f"  pad-crop + flip of 1,000 {name} images: BatchTransform {batch_rate:,.0f} img/s; "
            f"per-sample v2 + stack + normalise {sample_rate:,.0f} img/s; batch path {batch_rate / sample_rate:.2f}x")
    return out


def _timed_batch(transform, images) -> float:
    start = time.perf_counter()
    transform(images, images.shape[-1], train=True, generator=torch.Generator().manual_seed(0))
    return len(images) / (time.perf_counter() - start)


def shard_bytes(index, resolution: int) -> dict[str, int]:
    return {split: index.shard_set(split, resolution).bytes for split in index.splits}


def bench_imagefolder(args, work: Path, log) -> dict:
    from dbl_ps.data import BatchTransform
    from dbl_ps.data.sources import _list_tree
    from dbl_ps.shards import ShardShareLoader, write_shards

    tree = work / "tree"
    t = time.perf_counter()
    jpeg_bytes = make_imagefolder(tree, args.images)
    log(f"imagefolder: {args.images} train JPEGs at 256 px ({jpeg_bytes / 1e6:.1f} MB with val) in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    index = write_shards("imagefolder", str(tree), args.resolutions, work / "shards", fmt="jpeg", quality=90,
                         samples_per_shard=1000, workers=args.workers, progress=False, log=log)
    encode_s = time.perf_counter() - t
    log(f"shards written in {encode_s:.1f} s")
    wanted = args.raw_resolutions if args.raw_resolutions is not None else [min(args.resolutions)]
    raw_res = [r for r in args.resolutions if r in wanted]
    raw_index = None
    if raw_res:
        raw_index = write_shards("imagefolder", str(tree), raw_res, work / "shards_raw", fmt="raw",
                                 samples_per_shard=1000, workers=args.workers, progress=False, log=log)
    _, items = _list_tree(tree / "train", None)
    transform = BatchTransform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    plain = BatchTransform(transform.mean, transform.std, augment=False)  # loaders timed without augmentation
    n = len(items)
    rows = []
    for r in args.resolutions:
        base = best_rate(lambda: onthefly_rate(items, r, plain, args.workers, args.batch), args.repeats)
        stream = ShardShareLoader(work / "shards", plain, worker=0, shares=[n], batch_size=args.batch, resolution=r,
                                  seed=0, mode="stream", num_workers=args.workers)
        s_rate = best_rate(lambda: loader_rate(stream), args.repeats)
        stream.close()
        mem = ShardShareLoader(work / "shards", plain, worker=0, shares=[n], batch_size=args.batch, resolution=r,
                               seed=0, mode="memory", num_workers=args.workers)
        first = loader_rate(mem)
        later = best_rate(lambda: loader_rate(mem), args.repeats)
        mem.close()
        raw_note = ""
        raw = None
        if r in raw_res:
            raw_loader = ShardShareLoader(work / "shards_raw", plain, worker=0, shares=[n], batch_size=args.batch,
                                          resolution=r, seed=0, mode="stream", num_workers=args.workers)
            raw = best_rate(lambda: loader_rate(raw_loader), args.repeats)
            raw_loader.close()
            raw_note = f"  raw stream {raw:8.0f}/s ({raw / base:5.2f}x, {shard_bytes(raw_index, r)['train'] / 1e6:.1f} MB)"
        consume = train_rate(3, r, args.train_batch)
        aug = augment_rate(transform, 3, r, args.batch)
        row = {"resolution": r, "onthefly": base, "stream": s_rate, "memory_first": first, "memory_later": later,
               "augment": aug, "train": consume, "bytes": shard_bytes(index, r), "side_train": index.shard_set("train", r).side}
        if raw is not None:
            row.update(raw_stream=raw, raw_bytes=shard_bytes(raw_index, r))
        rows.append(row)
        log(f"  {r:>4} px: on-the-fly {base:8.0f}/s  stream {s_rate:8.0f}/s ({s_rate / base:5.2f}x)  "
            f"memory 1st {first:8.0f}/s ({first / base:5.2f}x) later {later:9.0f}/s  augment {aug:6.0f}/s  train {consume:6.0f}/s"
            f"{raw_note}")
    return {"images": n, "val": index.num_samples("test"), "jpeg_bytes": jpeg_bytes, "encode_seconds": encode_s,
            "rows": rows}


def bench_fashion(args, work: Path, log) -> dict:
    from dbl_ps.data import BatchTransform, ShareLoader, build_transform, load_idx_dataset
    from dbl_ps.config import DataConfig
    from dbl_ps.shards import ShardShareLoader, write_shards

    ds = load_idx_dataset(FASHION, "fashion_mnist")
    transform = build_transform(DataConfig(source="fashion_mnist", path=str(FASHION)), ds)
    plain = BatchTransform(transform.mean, transform.std, augment=False)
    res = [r for r in args.fashion_resolutions]
    t = time.perf_counter()
    index = write_shards("fashion_mnist", str(FASHION), res, work / "fm", fmt="png", workers=args.workers,
                         progress=False, log=log)
    encode_s = time.perf_counter() - t
    n = len(ds.train)
    idx_bytes = sum(p.stat().st_size for p in FASHION.glob("*-ubyte.gz"))
    rows = []
    for r in res:
        base_loader = ShareLoader(ds.train, plain, worker=0, shares=[n], batch_size=args.batch, resolution=r, seed=0)
        base = best_rate(lambda: loader_rate(base_loader), args.repeats)
        mem = ShardShareLoader(work / "fm", plain, worker=0, shares=[n], batch_size=args.batch, resolution=r, seed=0,
                               mode="memory", num_workers=args.workers)
        first = loader_rate(mem)
        later = best_rate(lambda: loader_rate(mem), args.repeats)
        stream = ShardShareLoader(work / "fm", plain, worker=0, shares=[n], batch_size=args.batch, resolution=r,
                                  seed=0, mode="stream", num_workers=args.workers)
        s_rate = loader_rate(stream)
        stream.close()
        consume = train_rate(1, r, args.batch)
        aug = augment_rate(transform, 1, r, args.batch)
        row = {"resolution": r, "onthefly": base, "memory_first": first, "memory_later": later, "stream": s_rate,
               "augment": aug, "train": consume, "bytes": shard_bytes(index, r)}
        rows.append(row)
        log(f"  {r:>4} px: in-memory+resize {base:8.0f}/s  shards memory 1st {first:8.0f}/s ({first / base:5.2f}x) "
            f"later {later:8.0f}/s ({later / base:5.2f}x)  stream {s_rate:7.0f}/s ({s_rate / base:5.2f}x)  augment {aug:6.0f}/s  train {consume:6.0f}/s")
    return {"images": n, "idx_gz_bytes": idx_bytes, "encode_seconds": encode_s, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3000, help="ImageFolder training JPEGs (default %(default)s)")
    p.add_argument("--resolutions", type=lambda s: [int(x) for x in s.split(",")], default=[96, 160, 224],
                   help="ImageFolder shard resolutions (default 96,160,224)")
    p.add_argument("--fashion-resolutions", type=lambda s: [int(x) for x in s.split(",")], default=[16, 24, 28],
                   help="Fashion-MNIST shard resolutions (default 16,24,28)")
    p.add_argument("--raw-resolutions", type=lambda s: [int(x) for x in s.split(",") if x], default=None,
                   help="ImageFolder resolutions also read from raw (.npy) shards (default: the lowest; '' for none)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader / encoding processes (default %(default)s)")
    p.add_argument("--batch", type=int, default=128, help="loader batch (default %(default)s)")
    p.add_argument("--train-batch", type=int, default=32,
                   help="batch of the ImageFolder training-rate measurement (small_resnet at 224 px is slow on a CPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dataset-images", type=int, default=5000,
                   help="CIFAR-size tensors of the dataset-path comparison (default %(default)s)")
    p.add_argument("--skip", choices=("imagefolder", "fashion", "datasets"), action="append", default=[])
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if not FASHION.is_dir():
        print(f"Fashion-MNIST not found at {FASHION}", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    log = lambda m: print(m, flush=True)  # noqa: E731
    results: dict = {"argv": sys.argv, "workers": args.workers, "batch": args.batch, "cpus": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="loader_bench_"))
    try:
        if "imagefolder" not in args.skip:
            log("ImageFolder of 256 px JPEGs (real Fashion-MNIST images upscaled):")
            results["imagefolder"] = bench_imagefolder(args, work, log)
        if "fashion" not in args.skip:
            log("Fashion-MNIST (60000 x 28 px):")
            results["fashion_mnist"] = bench_fashion(args, work, log)
        if "datasets" not in args.skip:
            log("Datasets read sample by sample (DataLoader batch sampler) against in-memory tensors:")
            results["datasets"] = bench_datasets(args, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, res in (("imagefolder", results.get("imagefolder")), ("fashion_mnist", results.get("fashion_mnist"))):
        if res:
            log(f"{name} shard bytes per resolution (train / test): " + ", ".join(
                f"{row['resolution']} px {row['bytes']['train'] / 1e6:.1f} / {row['bytes']['test'] / 1e6:.1f} MB"
                for row in res["rows"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
