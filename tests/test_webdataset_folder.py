"""`data.source: shards` on a folder of webdataset tars written by other tools (no
index.json): the index built on first use and reused, the pixels and labels of each
sample, each worker's exact share, the read-only folder's cache, one error per bad
input, and one `dbl-ps train` on such a folder."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from dbl_ps.config import DataConfig
from dbl_ps.data import DatasetShareLoader, build_transform, epoch_shares, load_dataset
from dbl_ps.metrics import read_metrics
from dbl_ps.shards import WEBDATASET_INDEX, ShardError, share_loader_for
from dbl_ps.shards.webdataset_folder import load_index

SIDE = 12
NUM_CLASSES = 3


def image_bytes(rng: np.random.Generator, label: int, fmt: str) -> bytes:
    """A 12x12 RGB image whose label is where a bright square is, as PNG or JPEG bytes."""
    x = rng.integers(0, 60, (SIDE, SIDE, 3), dtype=np.uint8)
    x[4:8, 4 * label:4 * label + 4] = 250
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_tar(path: Path, samples: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def make_samples(n: int, seed: int, fmt: str, prefix: str) -> list[dict]:
    rng = np.random.default_rng(seed)
    ext = "png" if fmt == "PNG" else "jpg"
    samples = []
    for i in range(n):
        label = int(rng.integers(0, NUM_CLASSES))
        # The .json member is what other tools often add: it is ignored.
        samples.append({"__key__": f"{prefix}{i:04d}", ext: image_bytes(rng, label, fmt), "cls": str(label).encode(),
                        "json": json.dumps({"source": "test"}).encode()})
    return samples


def write_folder(root: Path, layout: str = "flat") -> dict[str, list[dict]]:
    """3 classes, 40 training images in two tars (PNG, JPEG) and 12 test images in one (PNG).
    `layout`: 'flat' (train-*.tar, test-*.tar) or 'folders' (train/*.tar, val/*.tar)."""
    train = [make_samples(24, 0, "PNG", "a"), make_samples(16, 1, "JPEG", "b")]
    test = make_samples(12, 2, "PNG", "t")
    if layout == "flat":
        write_tar(root / "train-000000.tar", train[0])
        write_tar(root / "train-000001.tar", train[1])
        write_tar(root / "test-000000.tar", test)
    else:
        write_tar(root / "train" / "part-0.tar", train[0])
        write_tar(root / "train" / "part-1.tar", train[1])
        write_tar(root / "val" / "part-0.tar", test)
    return {"train": train[0] + train[1], "test": test}


def decoded(sample: dict) -> np.ndarray:
    """The sample's image decoded directly from the bytes written, (C, H, W)."""
    data = sample.get("png", sample.get("jpg"))
    return np.array(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)


def cfg(root: Path, **kw) -> DataConfig:
    kw.setdefault("mean", [0.5] * 3)
    kw.setdefault("std", [0.25] * 3)
    return DataConfig(source="shards", path=str(root), **kw)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DBL_PS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("layout", ["flat", "folders"])
def test_index_built_once_then_reused_and_samples_are_the_files_pixels(tmp_path: Path, cache: Path, layout: str):
    root = tmp_path / "wds"
    written = write_folder(root, layout)
    ds = load_dataset(cfg(root), image_size=SIDE)
    index = root / WEBDATASET_INDEX
    assert index.is_file() and not cache.exists()
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.in_channels, ds.image_size) == (40, 12, 3, 3, SIDE)
    for split, samples in (("train", ds.train), ("test", ds.test)):
        labels = [int(s["cls"]) for s in written[split]]
        assert samples.labels.tolist() == labels  # from the index, no decoding
        for i, sample in enumerate(written[split]):
            image, label = samples[i]
            assert label == labels[i]
            assert image.dtype == torch.uint8 and np.array_equal(image.numpy(), decoded(sample))

    # A second load (as every worker process does) reads the index: the file is not rewritten.
    before = index.stat()
    again = load_dataset(cfg(root), image_size=SIDE)
    after = index.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert torch.equal(again.train.labels, ds.train.labels)


def test_a_changed_tar_rebuilds_the_index(tmp_path: Path, cache: Path):
    root = tmp_path / "wds"
    written = write_folder(root)
    load_dataset(cfg(root), image_size=SIDE)
    # Rewrite the second training tar with every label moved on by one class.
    shifted = [dict(s, cls=str((int(s["cls"]) + 1) % NUM_CLASSES).encode()) for s in written["train"][24:]]
    tar = root / "train-000001.tar"
    old = tar.stat().st_mtime_ns
    write_tar(tar, shifted)
    if tar.stat().st_mtime_ns == old:  # a file system with coarse timestamps
        os.utime(tar, ns=(old, old + 1_000_000_000))
    ds = load_dataset(cfg(root), image_size=SIDE)
    assert ds.train.labels[24:].tolist() == [int(s["cls"]) for s in shifted]
    assert ds.train.labels[:24].tolist() == [int(s["cls"]) for s in written["train"][:24]]


def test_grayscale_images_give_one_channel(tmp_path: Path, cache: Path):
    def gray(i: int, label: int) -> dict:
        buf = io.BytesIO()
        Image.fromarray(np.full((SIDE, SIDE), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
        return sample(f"g{i}", png=buf.getvalue(), cls=str(label).encode())

    write_tar(tmp_path / "train-0.tar", [gray(i, i % 2) for i in range(6)])
    write_tar(tmp_path / "test-0.tar", [gray(i, i % 2) for i in range(2)])
    ds = load_dataset(cfg(tmp_path, mean=[0.5], std=[0.25]), image_size=SIDE)
    image, label = ds.train[3]
    assert ds.in_channels == 1 and ds.num_classes == 2 and label == 1
    assert image.shape == (1, SIDE, SIDE) and bool((image == 120).all())


def test_scanning_shows_a_progress_bar_unless_asked_not_to(tmp_path: Path, cache: Path, capsys):
    root = tmp_path / "wds"
    write_folder(root)
    load_index(root, progress=False)
    assert "indexing webdataset tars" not in capsys.readouterr().err
    (root / WEBDATASET_INDEX).unlink()
    load_index(root, progress=True)
    assert f"indexing webdataset tars in {root}: 100%" in capsys.readouterr().err


def test_images_are_resized_to_data_image_size(tmp_path: Path, cache: Path):
    from torchvision.transforms.v2 import functional as TF

    root = tmp_path / "wds"
    written = write_folder(root)
    ds = load_dataset(cfg(root, image_size=8), image_size=SIDE)
    image, _ = ds.test[3]
    expected = TF.center_crop(TF.resize(torch.from_numpy(decoded(written["test"][3])), 8, antialias=True), [8, 8])
    assert image.shape == (3, 8, 8) and torch.equal(image, expected)
    # random_resized_crop (a per-sample crop, seeded by the loader) gives training images of that size too.
    rrc = load_dataset(cfg(root, image_size=8, random_resized_crop=True), image_size=SIDE)
    assert rrc.train[(5, 123)][0].shape == (3, 8, 8) and torch.equal(rrc.train[(5, 123)][0], rrc.train[(5, 123)][0])


def test_each_worker_reads_exactly_its_planned_share(tmp_path: Path, cache: Path):
    root = tmp_path / "wds"
    written = write_folder(root)
    data_cfg = cfg(root, num_workers=1, augment=False)
    ds = load_dataset(data_cfg, image_size=SIDE)
    transform = build_transform(data_cfg, ds)
    pixels = torch.from_numpy(np.stack([decoded(s) for s in written["train"]]))
    labels = torch.tensor([int(s["cls"]) for s in written["train"]])
    shares = [17, 23]
    for worker in range(2):
        loader = share_loader_for(data_cfg, ds.train, transform, resolutions=[SIDE], worker=worker, shares=shares,
                                  batch_size=5, resolution=SIDE, seed=3, epoch=2)
        assert isinstance(loader, DatasetShareLoader)
        batches = list(loader)
        planned = torch.from_numpy(epoch_shares(40, shares, 2, 3)[worker])
        assert [len(y) for _, y in batches] == [5] * (shares[worker] // 5) + ([shares[worker] % 5] if shares[worker] % 5 else [])
        assert torch.equal(torch.cat([y for _, y in batches]), labels[planned])
        assert torch.allclose(torch.cat([x for x, _ in batches]), transform(pixels[planned], SIDE, train=False))
        loader.close()


def test_a_read_only_folder_keeps_its_index_in_the_cache(tmp_path: Path, cache: Path):
    root = tmp_path / "wds"
    write_folder(root)
    root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root): a read-only folder cannot be made")
        ds = load_dataset(cfg(root), image_size=SIDE)
        again = load_dataset(cfg(root), image_size=SIDE)
    finally:
        root.chmod(0o755)
    assert not (root / WEBDATASET_INDEX).exists()
    cached = list((cache / "webdataset-index").glob("wds-*.json"))
    assert len(cached) == 1 and len(ds.train) == len(again.train) == 40


# --------------------------------------------------------------------------- errors, one each, at load


def sample(key: str, **members: bytes) -> dict:
    return {"__key__": key, **members}


PNG = image_bytes(np.random.default_rng(0), 1, "PNG")


@pytest.mark.parametrize("train,match", [
    ([sample("k0", png=PNG, cls=b"1"), sample("k1", png=PNG)], r"train-000000\.tar, sample 'k1': an image \(\.png\) but no \.cls"),
    ([sample("k0", png=PNG, cls=b"one")], r"train-000000\.tar, sample 'k0': the \.cls member holds b'one', expected an integer"),
    ([sample("k0", png=PNG, jpg=PNG, cls=b"0")], r"train-000000\.tar, sample 'k0': several images \(\.jpg, \.png\)"),
    ([sample("k0", cls=b"0", txt=b"x")], r"train-000000\.tar, sample 'k0': a \.cls label but no image member"),
    ([sample("k0", png=b"not a png", cls=b"1")], r"train-000000\.tar, sample 'k0': the \.png image cannot be decoded"),
], ids=["no-cls", "cls-not-an-integer", "several-images", "no-image", "not-an-image"])
def test_a_bad_sample_is_one_error_naming_the_tar_and_key(tmp_path: Path, cache: Path, train, match):
    write_tar(tmp_path / "train-000000.tar", train)
    write_tar(tmp_path / "test-000000.tar", [sample("t0", png=PNG, cls=b"1")])
    with pytest.raises(ShardError, match=match):
        load_dataset(cfg(tmp_path), image_size=SIDE)


def test_a_label_outside_num_classes_is_an_error(tmp_path: Path, cache: Path):
    root = tmp_path / "wds"
    write_folder(root)
    with pytest.raises(ShardError, match=r"train-00000[01]\.tar, sample '[ab]\d{4}': label 2 outside 0\.\.1 "
                                         r"\(data\.num_classes 2;"):
        load_dataset(cfg(root, num_classes=2), image_size=SIDE)
    write_tar(root / "test-000000.tar", [sample("t0", png=PNG, cls=b"-1")])
    with pytest.raises(ShardError, match=r"test-000000\.tar, sample 't0': label -1 outside 0\.\.2"):
        load_dataset(cfg(root), image_size=SIDE)


def test_missing_or_unreadable_tars_are_one_error_each(tmp_path: Path, cache: Path):
    with pytest.raises(ShardError, match=r"has neither index\.json .* nor webdataset tar files"):
        load_dataset(cfg(tmp_path), image_size=SIDE)
    write_tar(tmp_path / "train-000000.tar", [sample("k0", png=PNG, cls=b"1")])
    with pytest.raises(ShardError, match=r"no test set: looked for test-\*\.tar, test/\*\.tar or val-\*\.tar, "
                                         r"val/\*\.tar; it holds train-000000\.tar"):
        load_dataset(cfg(tmp_path), image_size=SIDE)
    (tmp_path / "train-000000.tar").rename(tmp_path / "val-000000.tar")
    with pytest.raises(ShardError, match=r"no training set: looked for train-\*\.tar, train/\*\.tar"):
        load_dataset(cfg(tmp_path), image_size=SIDE)
    (tmp_path / "train-000000.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(ShardError, match=r"webdataset tar .*train-000000\.tar cannot be read"):
        load_dataset(cfg(tmp_path), image_size=SIDE)


# --------------------------------------------------------------------------- a run


@pytest.mark.slow
def test_train_on_a_webdataset_folder(tmp_path: Path, cache: Path):
    root = tmp_path / "wds"
    write_folder(root)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir), "data.source=shards",
         f"data.path={root}", "data.num_workers=1", "schedule.epochs=2", "schedule.milestones=[]",
         "schedule.warmup_epochs=0", "schedule.resolutions=[12]", "dbl.workers=2", "dbl.small=1",
         "dbl.batch_large=[8]", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [0, 1] and all(r["samples"] == 40 for r in records)
    assert f"indexed 40 train, 12 test samples in 3 webdataset tars of {root}" in proc.stdout
