"""Data: sources (on tiny files written here), batch transforms, epoch shares and the share loader."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dbl_ps.config import DataConfig, SyntheticConfig
from dbl_ps.data import (
    BatchTransform,
    DataError,
    ShareLoader,
    Split,
    build_transform,
    epoch_shares,
    eval_batches,
    load_cifar,
    load_dataset,
    load_digits,
    load_idx_dataset,
    load_imagefolder,
    make_synthetic,
    normalize,
    random_crop,
    random_flip,
    read_idx,
    resize_batch,
)

FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


# --------------------------------------------------------------------------- helpers writing tiny files


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def write_idx_tree(root: Path, n_train=12, n_test=5, compress=True) -> tuple[np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y_tr = (np.arange(n_train) % 10).astype(np.uint8)
    x_te = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_te = (np.arange(n_test) % 10).astype(np.uint8)
    write_idx(root / "train-images-idx3-ubyte", x_tr, compress)
    write_idx(root / "train-labels-idx1-ubyte", y_tr, compress)
    write_idx(root / "t10k-images-idx3-ubyte", x_te, compress)
    write_idx(root / "t10k-labels-idx1-ubyte", y_te, compress)
    return x_tr, y_tr


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def write_cifar10(root: Path, per_batch=4) -> np.ndarray:
    """The official python-format tree: `cifar-10-batches-py/` with data_batch_1..5,
    test_batch and batches.meta. The official pickles were written by Python 2, whose
    str keys load as str under the latin1 encoding torchvision reads them with."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    first = None
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        if first is None:
            first = data
        write_pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": data,
                                                  "labels": [int(v) for v in rng.integers(0, 10, per_batch)]})
    write_pickle(folder / "test_batch", {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 1, 2]})
    write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch})
    return first


def write_cifar100(root: Path, train_labels=(0, 5, 99, 1, 2, 3), train_rows=3072) -> None:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    write_pickle(root / "train", {"data": rng.integers(0, 256, (len(train_labels), train_rows), dtype=np.uint8),
                                  "fine_labels": list(train_labels), "coarse_labels": [0] * len(train_labels)})
    write_pickle(root / "test", {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "fine_labels": [7, 8]})
    write_pickle(root / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})


def write_png_tree(root: Path, split: str, classes: dict[str, list[tuple[int, int]]]) -> None:
    from PIL import Image

    for name, sizes in classes.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for k, (w, h) in enumerate(sizes):
            img = np.zeros((h, w, 3), dtype=np.uint8)
            img[:, : w // 2] = (255, 0, 0)  # left half red
            img[:, w // 2:] = (0, 0, 255)  # right half blue
            Image.fromarray(img).save(root / split / name / f"{k}.png")


# --------------------------------------------------------------------------- digits


def test_digits_fixed_stratified_split():
    ds = load_digits()
    assert ds.train.images.shape == (1437, 1, 8, 8) and ds.test.images.shape == (360, 1, 8, 8)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert int(ds.train.images.max()) == 255 and int(ds.train.images.min()) == 0
    assert ds.num_classes == 10 and ds.in_channels == 1 and not ds.flip
    counts = torch.bincount(ds.test.labels, minlength=10)
    assert int(counts.min()) >= 35  # stratified: every class ~36 times
    again = load_digits()
    assert torch.equal(again.test.images, ds.test.images) and torch.equal(again.test.labels, ds.test.labels)
    assert 0.2 < ds.mean[0] < 0.4


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reads_gz_and_raw(tmp_path, compress):
    x_tr, y_tr = write_idx_tree(tmp_path, compress=compress)
    ds = load_idx_dataset(tmp_path, "fashion_mnist")
    assert ds.train.images.shape == (12, 1, 28, 28) and ds.test.images.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.train.images[:, 0].numpy(), x_tr)
    assert np.array_equal(ds.train.labels.numpy(), y_tr.astype(np.int64))
    assert ds.flip  # clothes keep their label under a flip
    assert not load_idx_dataset(tmp_path, "mnist").flip  # digits do not


def test_torchvision_mnist_layout_is_read_by_torchvision(tmp_path):
    x_tr, y_tr = write_idx_tree(tmp_path / "MNIST" / "raw", compress=False)
    flat = load_idx_dataset(tmp_path / "MNIST" / "raw", "mnist")  # the raw folder is also just the four files
    for path in (tmp_path, tmp_path / "MNIST"):
        ds = load_idx_dataset(path, "mnist")
        assert np.array_equal(ds.train.images[:, 0].numpy(), x_tr) and ds.train.labels.tolist() == y_tr.tolist()
        assert torch.equal(ds.test.images, flat.test.images)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_idx_dataset(tmp_path, "mnist")


def test_idx_missing_directory_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist.*train-images-idx3-ubyte"):
        load_idx_dataset(tmp_path / "nope", "mnist")
    write_idx_tree(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"test labels: neither .*t10k-labels-idx1-ubyte nor .*\.gz exists"):
        load_idx_dataset(tmp_path, "mnist")


def test_idx_corrupt_files(tmp_path):
    bad_magic = tmp_path / "a"
    bad_magic.write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 12)
    with pytest.raises(DataError, match=f"{bad_magic}.*bad magic number"):
        read_idx(bad_magic)
    truncated = write_idx(tmp_path / "b", np.zeros((3, 4, 4), np.uint8), compress=False)
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(DataError, match="holds 43 data bytes, expected 48"):
        read_idx(truncated)
    not_gzip = tmp_path / "c.gz"
    not_gzip.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match=f"{not_gzip}.*not a readable gzip"):
        read_idx(not_gzip)
    wrong_dims = write_idx(tmp_path / "d", np.zeros((3, 4), np.uint8), compress=False)
    with pytest.raises(DataError, match="2 dimensions, expected 3"):
        read_idx(wrong_dims, expected_ndim=3)


def test_idx_image_label_count_mismatch(tmp_path):
    write_idx_tree(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(7, np.uint8), compress=True)
    with pytest.raises(DataError, match="12 images but .* 7 labels"):
        load_idx_dataset(tmp_path, "fashion_mnist")


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_python_format(tmp_path):
    first = write_cifar10(tmp_path)
    ds = load_cifar(tmp_path, "cifar10")  # finds the cifar-10-batches-py subfolder
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (3, 3, 32, 32)
    # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    assert np.array_equal(ds.train.images[0, 1].numpy().ravel(), first[0, 1024:2048])
    assert ds.num_classes == 10 and ds.classes[3] == "c3"
    assert ds.test.labels.tolist() == [0, 1, 2]
    # The folder itself as data.path reads the same.
    again = load_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.train.labels, ds.train.labels)


def test_cifar10_official_archive_is_extracted_once_next_to_it_or_into_the_cache(tmp_path, monkeypatch):
    import os
    import tarfile

    first = write_cifar10(tmp_path / "made")
    archive_dir = tmp_path / "download"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "made" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    cfg = DataConfig(source="cifar10", path=str(archive_dir))
    ds = load_dataset(cfg)
    assert (archive_dir / "cifar-10-batches-py" / "data_batch_1").is_file()  # extracted next to the archive
    assert np.array_equal(ds.train.images[0, 1].numpy().ravel(), first[0, 1024:2048])
    mtime = (archive_dir / "cifar-10-batches-py").stat().st_mtime_ns
    load_dataset(cfg)
    assert (archive_dir / "cifar-10-batches-py").stat().st_mtime_ns == mtime  # not extracted again
    assert not [p for p in archive_dir.iterdir() if p.name.startswith(".extract-")]

    # A read-only folder: the archive is extracted into the cache folder instead.
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    os.link(archive_dir / "cifar-10-python.tar.gz", readonly / "cifar-10-python.tar.gz")
    readonly.chmod(0o555)
    monkeypatch.setenv("DBL_PS_CACHE", str(tmp_path / "cache"))
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root): a read-only folder cannot be made")
        cached = load_dataset(DataConfig(source="cifar10", path=str(readonly)))
    finally:
        readonly.chmod(0o755)
    assert torch.equal(cached.train.images, ds.train.images)
    assert list((tmp_path / "cache").glob("cifar-10-python.tar.gz-*/cifar-10-batches-py/batches.meta"))


def test_cifar100_python_format(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python")
    ds = load_cifar(tmp_path, "cifar100")
    assert ds.num_classes == 100 and len(ds.train) == 6 and ds.train.labels.tolist()[2] == 99
    assert ds.classes[:2] == ["f0", "f1"]


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar(tmp_path / "none", "cifar100")
    with pytest.raises(DataError, match="lacks train, test, meta"):
        load_cifar(tmp_path, "cifar100")
    write_cifar100(tmp_path)
    write_pickle(tmp_path / "train", {"data": np.zeros((2, 3072), np.uint8), "coarse_labels": [0, 1]})
    with pytest.raises(DataError, match="lacks the key 'fine_labels'; expected 'data' and 'fine_labels'"):
        load_cifar(tmp_path, "cifar100")
    write_cifar100(tmp_path, train_labels=(0, 100))
    with pytest.raises(DataError, match="labels range 0..100, expected 0..99"):
        load_cifar(tmp_path, "cifar100")
    write_cifar100(tmp_path, train_labels=(0, 1), train_rows=1000)
    with pytest.raises(DataError, match=r"expected 'data' \(N, 3072\)"):
        load_cifar(tmp_path, "cifar100")
    (tmp_path / "train").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not the python-format pickles"):
        load_cifar(tmp_path, "cifar100")


# --------------------------------------------------------------------------- ImageFolder


def test_imagefolder_resizes_short_side_and_centre_crops(tmp_path):
    write_png_tree(tmp_path, "train", {"cat": [(20, 10), (10, 10)], "dog": [(12, 30)]})
    write_png_tree(tmp_path, "val", {"cat": [(16, 16)], "dog": [(16, 16)]})
    ds = load_imagefolder(tmp_path, image_size=8)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert len(ds.train) == 3 and len(ds.test) == 2 and ds.in_channels == 3 and ds.image_size == 8
    assert ds.train.labels.tolist() == [0, 0, 1]
    images, labels = next(eval_batches_raw(ds.train))
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8 and labels.tolist() == [0, 0, 1]
    # 20x10 -> 16x8, centre crop keeps columns 4..11: left half red, right half blue.
    wide = images[0]
    assert int(wide[0, :, 0].min()) > 200 and int(wide[2, :, 0].max()) < 50
    assert int(wide[2, :, -1].min()) > 200 and int(wide[0, :, -1].max()) < 50


def eval_batches_raw(split, batch_size=64):
    """The split's stored uint8 batches, as the DataLoader reads them (no transform)."""
    return split.batches(batch_size)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="train/ and val/"):
        load_imagefolder(tmp_path, 8)
    write_png_tree(tmp_path, "train", {"cat": [(8, 8)], "dog": [(8, 8)]})
    write_png_tree(tmp_path, "test", {"cow": [(8, 8)]})
    with pytest.raises(DataError, match=r"classes \['cow'\] that the training split lacks"):
        load_imagefolder(tmp_path, 8)
    write_png_tree(tmp_path, "test", {"cat": [(8, 8)]})
    import shutil

    shutil.rmtree(tmp_path / "test" / "cow")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    ds = load_imagefolder(tmp_path, 8, num_workers=2)  # files are decoded when read, not at load
    with pytest.raises(DataError, match="broken.png could not be decoded"):
        list(eval_batches_raw(ds.train))


def test_a_one_class_image_folder_is_refused(tmp_path):
    """One class folder trains a model that cannot be wrong (the loss is 0 from the start)."""
    write_png_tree(tmp_path, "train", {"cat": [(8, 8), (8, 8)]})
    write_png_tree(tmp_path, "val", {"cat": [(8, 8)]})
    with pytest.raises(DataError, match=r"train has 1 class folder \(cat\); a classifier needs at least 2 classes"):
        load_imagefolder(tmp_path, 8)


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    write_png_tree(tmp_path, "train", {"cat": [(8, 8)], "dog": [(8, 8)]})
    write_png_tree(tmp_path, "val", {"cat": [(8, 8)], "dog": [(8, 8)]})
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder .*train/emu holds no images"):
        load_imagefolder(tmp_path, 8)
    (tmp_path / "train" / "emu" / "notes.txt").unlink()
    (tmp_path / "train" / "emu").rmdir()
    (tmp_path / "val" / "dog" / "0.png").unlink()  # an emptied class folder in the test split too
    with pytest.raises(DataError, match=r"class folder .*val/dog holds no images"):
        load_imagefolder(tmp_path, 8)


# --------------------------------------------------------------------------- synthetic and dispatch


def test_synthetic_is_seeded_and_learnable():
    a = make_synthetic(num_train=400, num_test=200, num_classes=4, channels=3, size=12, seed=3)
    b = make_synthetic(num_train=400, num_test=200, num_classes=4, channels=3, size=12, seed=3)
    c = make_synthetic(num_train=400, num_test=200, num_classes=4, channels=3, size=12, seed=4)
    assert torch.equal(a.train.images, b.train.images) and not torch.equal(a.train.images, c.train.images)
    assert torch.bincount(a.train.labels).tolist() == [100] * 4
    # Class structure is learnable: nearest class mean already beats chance (0.25) by far.
    x_tr, x_te = a.train.images.float().flatten(1), a.test.images.float().flatten(1)
    means = torch.stack([x_tr[a.train.labels == k].mean(0) for k in range(4)])
    pred = torch.cdist(x_te, means).argmin(1)
    assert (pred == a.test.labels).float().mean() > 0.8


def test_load_dataset_dispatch_and_limits(tmp_path):
    cfg = DataConfig(source="synthetic", synthetic=SyntheticConfig(num_train=50, num_test=20, size=8), train_limit=30, test_limit=10)
    ds = load_dataset(cfg)
    assert len(ds.train) == 30 and len(ds.test) == 10 and ds.image_size == 8
    write_idx_tree(tmp_path)
    assert len(load_dataset(DataConfig(source="mnist", path=str(tmp_path))).train) == 12
    with pytest.raises(DataError, match="data.image_size"):
        load_dataset(DataConfig(source="imagefolder", path=str(tmp_path)))


@pytest.mark.parametrize("source", ["mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "shards"])
def test_data_path_naming_a_file_says_a_directory_is_needed(tmp_path, source):
    file = tmp_path / "train-images-idx3-ubyte"
    file.write_bytes(b"\0" * 16)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(source=source, path=str(file), image_size=8), image_size=8)
    message = str(info.value)
    assert f"data.path {file} is a file" in message and "directory" in message and "does not exist" not in message


def test_split_rejects_wrong_dtypes():
    with pytest.raises(DataError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="int64"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# --------------------------------------------------------------------------- transforms


def test_resize_is_noop_at_same_size_and_antialiases_when_shrinking():
    x = torch.rand(2, 3, 8, 8)
    assert resize_batch(x, 8) is x
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float().expand(1, 1, 32, 32)
    small = resize_batch(checker, 8)
    assert small.shape == (1, 1, 8, 8)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)  # no aliasing into stripes
    assert resize_batch(torch.rand(2, 1, 8, 8), 16).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="float"):
        resize_batch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)


def test_random_crop_matches_a_per_image_reference():
    x = torch.rand(6, 2, 5, 7)
    out = random_crop(x, 2, torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    oy = torch.randint(0, 5, (6,), generator=gen)
    ox = torch.randint(0, 5, (6,), generator=gen)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, oy[i]:oy[i] + 5, ox[i]:ox[i] + 7])
    assert torch.equal(random_crop(x, 0), x)


def test_random_flip_mirrors_about_half():
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).sum().item()
    assert 400 < flipped < 600
    assert all(torch.equal(o, x[0]) or torch.equal(o, x[0].flip(-1)) for o in out[:20])


def test_normalize_per_channel():
    x = torch.ones(2, 2, 3, 3)
    out = normalize(x, (0.5, 1.0), (0.5, 2.0))
    assert torch.allclose(out[:, 0], torch.ones(2, 3, 3)) and torch.allclose(out[:, 1], torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="2 channels"):
        normalize(x, (0.5,), (0.5,))


def test_batch_transform_is_seeded_and_eval_is_deterministic():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    tr = BatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=True, flip=True)
    a = tr(images, 16, generator=torch.Generator().manual_seed(1))
    b = tr(images, 16, generator=torch.Generator().manual_seed(1))
    c = tr(images, 16, generator=torch.Generator().manual_seed(2))
    assert a.shape == (16, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = tr(images, 8, train=False)
    assert torch.allclose(plain, (images.float() / 255 - 0.5) / 0.25)


def test_build_transform_uses_source_default_flip_unless_configured():
    ds = make_synthetic(num_train=8, num_test=4, size=8)
    assert build_transform(DataConfig(source="synthetic"), ds).flip is False
    assert build_transform(DataConfig(source="synthetic", flip=True), ds).flip is True
    assert build_transform(DataConfig(source="synthetic", augment=False), ds).augment is False


# --------------------------------------------------------------------------- shares


def test_epoch_shares_exact_disjoint_and_reshuffled():
    shares = [13, 13, 13, 10]
    a = epoch_shares(49, shares, epoch=0, seed=7)
    assert [len(s) for s in a] == shares
    assert len(np.unique(np.concatenate(a))) == 49
    assert all(s.dtype == np.int64 for s in a)
    again = epoch_shares(49, shares, epoch=0, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, again))
    next_epoch = epoch_shares(49, shares, epoch=1, seed=7)
    assert not np.array_equal(a[0], next_epoch[0])
    other_seed = epoch_shares(49, shares, epoch=0, seed=8)
    assert not np.array_equal(a[0], other_seed[0])


def test_epoch_shares_errors():
    with pytest.raises(ValueError, match="add up to 11, more than the 10 samples"):
        epoch_shares(10, [6, 5], 0, 0)
    with pytest.raises(ValueError, match=r"shares\[1\] must be an integer >= 0, got -1"):
        epoch_shares(10, [6, -1], 0, 0)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        epoch_shares(10, [5], -1, 0)
    with pytest.raises(ValueError, match="shares\\[0\\]"):
        epoch_shares(10, [2.5], 0, 0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), data=st.data(), epoch=st.integers(0, 10_000), seed=st.integers(0, 2**32))
def test_epoch_shares_property(n, data, epoch, seed):
    shares = data.draw(st.lists(st.integers(0, 100), min_size=1, max_size=6).filter(lambda s: sum(s) <= n))
    parts = epoch_shares(n, shares, epoch, seed)
    assert [len(p) for p in parts] == shares
    flat = np.concatenate(parts) if parts else np.array([], np.int64)
    assert len(np.unique(flat)) == len(flat) and (flat < max(n, 1)).all() and (flat >= 0).all()


def labelled_split(n: int) -> Split:
    """Labels equal to the sample index, so batches reveal which samples they hold."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return Split(images, torch.arange(n, dtype=torch.int64))


def make_loader(split, worker=1, batch_size=4, **kw) -> ShareLoader:
    tr = BatchTransform((0.5,), (0.5,), augment=True, flip=True)
    return ShareLoader(split, tr, worker=worker, shares=[10, 11, 9], batch_size=batch_size, resolution=4, seed=5, **kw)


def test_share_loader_yields_the_exact_share_with_partial_last_batch():
    split = labelled_split(40)
    loader = make_loader(split)
    assert len(loader) == math.ceil(11 / 4) == 3
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 3]
    seen = torch.cat([y for _, y in batches]).numpy()
    assert np.array_equal(seen, epoch_shares(40, [10, 11, 9], 0, 5)[1])
    assert len(loader) == 0 and list(loader) == []  # the epoch's share is used up
    assert batches[0][0].shape == (4, 1, 4, 4)


def test_share_loader_new_epoch_batch_size_and_resolution():
    split = labelled_split(40)
    loader = make_loader(split)
    first = torch.cat([y for _, y in loader])
    loader.set_epoch(1, batch_size=5, resolution=8)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 1] and batches[0][0].shape[-1] == 8
    second = torch.cat([y for _, y in batches])
    assert not torch.equal(first, second)
    assert np.array_equal(second.numpy(), epoch_shares(40, [10, 11, 9], 1, 5)[1])
    with pytest.raises(ValueError, match="worker 1 has no share"):
        loader.set_epoch(2, shares=[40])


def test_share_loader_resumes_mid_epoch_identically():
    split = labelled_split(40)
    full = list(make_loader(split, epoch=3))
    partial = make_loader(split, epoch=3)
    it = iter(partial)
    next(it)
    state = partial.state_dict()
    assert state["position"] == 4 and state["epoch"] == 3
    resumed = make_loader(split)  # a fresh process: epoch 0 until the state loads
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 1
    for (xa, ya), (xb, yb) in zip(full[1:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)  # same samples, same augmentation


def test_share_loader_state_checks():
    split = labelled_split(40)
    loader = make_loader(split)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="worker 1 seed 5, this loader is worker 0"):
        make_loader(split, worker=0).load_state_dict(state)
    with pytest.raises(ValueError, match="past the end"):
        loader.load_state_dict({**state, "position": 12})
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        make_loader(split, batch_size=0)


def test_eval_batches_cover_the_split_in_order_without_augmentation():
    split = labelled_split(10)
    tr = BatchTransform((0.5,), (0.5,), augment=True, flip=True)
    batches = list(eval_batches(split, tr, batch_size=4, resolution=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    assert torch.allclose(batches[0][0], (split.images[:4].float() / 255 - 0.5) / 0.5)


# --------------------------------------------------------------------------- real data (slow)


@pytest.mark.slow
def test_real_fashion_mnist():
    if not FASHION.is_dir():
        pytest.skip(f"no Fashion-MNIST at {FASHION}")
    ds = load_idx_dataset(FASHION, "fashion_mnist")
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
    from dbl_ps.data import channel_stats

    mean, std = channel_stats(ds.train.images)
    assert mean[0] == pytest.approx(ds.mean[0], abs=1e-3) and std[0] == pytest.approx(ds.std[0], abs=1e-3)
    parts = epoch_shares(len(ds.train), [16500, 16500, 16500, 10500], 0, 0)
    assert sum(len(p) for p in parts) == 60000


@pytest.mark.slow
def test_real_fashion_mnist_through_torchvision(tmp_path):
    """The real files arranged in torchvision's `FashionMNIST/raw/` layout (gunzipped, as
    torchvision's download leaves them) read by torchvision.datasets.FashionMNIST give the
    same tensors as dbl-ps's reader of the flat folder of .gz files."""
    if not FASHION.is_dir():
        pytest.skip(f"no Fashion-MNIST at {FASHION}")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in FASHION.glob("*-ubyte.gz"):
        (raw / gz.name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
    flat = load_idx_dataset(FASHION, "fashion_mnist")
    for path in (tmp_path, tmp_path / "FashionMNIST", raw):
        tv = load_dataset(DataConfig(source="fashion_mnist", path=str(path)))
        for a, b in ((tv.train, flat.train), (tv.test, flat.test)):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
