"""Multi-resolution webdataset shards: writer, index, loader, `dbl-ps shard`, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("webdataset")

from dbl_ps.data import BatchTransform, ShareLoader, load_digits, resize_batch, to_float  # noqa: E402
from dbl_ps.shards import (  # noqa: E402
    ShardError,
    ShardIndex,
    ShardShareLoader,
    load_shard_dataset,
    load_shard_set,
    train_side,
    write_shards,
)

FMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def quiet(*_args) -> None:
    pass


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    """digits at 8 px (its own size) and 12 px, raw encoding, 4 train shards."""
    out = tmp_path_factory.mktemp("shards") / "raw"
    write_shards("digits", None, [8, 12], out, fmt="raw", samples_per_shard=400, progress=False, log=quiet)
    return out


def make_loader(root, digits_ds, **kw):
    tr = BatchTransform(digits_ds.mean, digits_ds.std, flip=False)
    args = dict(worker=1, shares=[500, 400, 300], batch_size=64, resolution=8, seed=3, epoch=2)
    args.update(kw)
    return ShardShareLoader(root, tr, **args)


def resized_uint8(images: torch.Tensor, side: int) -> torch.Tensor:
    return resize_batch(to_float(images), side).mul(255).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- layout and index


def test_layout_and_index(raw_dir, digits):
    index = ShardIndex.load(raw_dir)
    assert index.resolutions == [8, 12] and index.encoding == "raw" and index.channels == 1
    assert index.num_samples("train") == len(digits.train) and index.num_samples("test") == len(digits.test)
    assert np.array_equal(index.labels("train"), digits.train.labels.numpy())
    info = index.check_files("train", 12, checksums=True)
    assert [s.file for s in info.shards] == [f"train/r12/train-{j:06d}.tar" for j in range(4)]
    assert [s.samples for s in info.shards] == [400, 400, 400, 237]
    assert (raw_dir / "test" / "r8" / "test-000000.tar").is_file()
    assert not (raw_dir / ".progress.json").exists()


def test_shards_are_plain_webdataset(raw_dir):
    import webdataset as wds

    ds = wds.WebDataset(str(raw_dir / "train" / "r8" / "train-000000.tar"), shardshuffle=False).decode()
    first = next(iter(ds))
    assert first["__key__"] == "00000000" and first["npy"].shape == (1, 8, 8) and isinstance(first["cls"], int)


def test_import_does_not_need_webdataset():
    code = ("import sys, dbl_ps.shards, dbl_ps.data, dbl_ps.cli; "
            "assert 'webdataset' not in sys.modules, 'webdataset imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_raw_member_decoding_matches_numpy_and_refuses_truncation():
    import io

    from dbl_ps.shards.codec import decode_image, encode_image

    rng = np.random.default_rng(0)
    for shape in ((1, 8, 8), (3, 12, 12), (3, 12, 12), (1, 5, 5)):  # the repeat hits the header cache
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        data = encode_image(image, "raw")
        assert np.array_equal(decode_image(data, "npy", shape[0]), image)
        with pytest.raises(ValueError, match="truncated"):
            decode_image(data[:-3], "npy", shape[0])
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)))
    assert decode_image(fortran.getvalue(), "npy", 3).shape == (3, 4, 4)  # numpy's own reader


# --------------------------------------------------------------------------- round trip


def test_round_trip_raw_exact(raw_dir, digits):
    index = ShardIndex.load(raw_dir)
    at8 = load_shard_set(index, "train", 8)
    assert torch.equal(at8.images, digits.train.images) and torch.equal(at8.labels, digits.train.labels)
    at12 = load_shard_set(index, "test", 12)
    assert torch.equal(at12.images, resized_uint8(digits.test.images, 12))


def test_round_trip_png_exact_and_jpeg_close(tmp_path, digits):
    write_shards("digits", None, [8, 16], tmp_path / "png", fmt="png", samples_per_shard=1000, progress=False, log=quiet)
    write_shards("digits", None, [16], tmp_path / "jpg", fmt="jpeg", quality=95, samples_per_shard=1000,
                 progress=False, log=quiet)
    png = ShardIndex.load(tmp_path / "png")
    assert torch.equal(load_shard_set(png, "train", 8).images, digits.train.images)
    assert torch.equal(load_shard_set(png, "train", 16).images, resized_uint8(digits.train.images, 16))
    jpg = load_shard_set(ShardIndex.load(tmp_path / "jpg"), "train", 16, num_workers=2)
    diff = (jpg.images.float() - resized_uint8(digits.train.images, 16).float()).abs()
    assert torch.equal(jpg.labels, digits.train.labels)
    assert diff.mean() < 3.0, f"JPEG q95 mean error {diff.mean():.2f} of 255"


def test_imagefolder_margin_and_crop(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        for cls in ("cat", "dog"):
            d = tmp_path / "tree" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                w, h = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    index = write_shards("imagefolder", str(tmp_path / "tree"), [16, 32], tmp_path / "out", fmt="png",
                         samples_per_shard=5, workers=2, progress=False, log=quiet)
    assert index.data["classes"] == ["cat", "dog"] and index.num_samples("train") == 12
    assert index.shard_set("train", 32).side == train_side(32, 0.125) == 36
    assert index.shard_set("test", 32).side == 32
    tr = BatchTransform((0.5,) * 3, (0.25,) * 3)
    loader = ShardShareLoader(tmp_path / "out", tr, worker=0, shares=[7, 5], batch_size=4, resolution=32, seed=0)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 32, 32), (3, 3, 32, 32)]
    ds = load_shard_dataset(tmp_path / "out")
    assert ds.test.images.shape == (8, 3, 32, 32) and ds.num_classes == 2


# --------------------------------------------------------------------------- shares


def test_batches_equal_share_loader(raw_dir, digits):
    """On lossless shards at the source's size, the shard loader gives ShareLoader's exact batches."""
    tr = BatchTransform(digits.mean, digits.std, flip=True)
    ref = ShareLoader(digits.train, tr, worker=1, shares=[500, 400, 300], batch_size=64, resolution=8, seed=3, epoch=2)
    for mode in ("memory", "stream"):
        got = ShardShareLoader(raw_dir, tr, worker=1, shares=[500, 400, 300], batch_size=64, resolution=8, seed=3,
                               epoch=2, mode=mode)
        pairs = list(zip(ref, got))
        assert len(pairs) == 7
        for (x1, y1), (x2, y2) in pairs:
            assert torch.equal(y1, y2) and torch.equal(x1, x2)
        ref.set_epoch(2)


def test_stream_mode_without_pread_reads_the_same_batches(raw_dir, digits, monkeypatch):
    """Windows has no os.pread: the stream loader falls back to seek + read."""
    expected = [(x, y) for x, y in make_loader(raw_dir, digits, mode="stream")]
    monkeypatch.delattr(os, "pread")
    got = [(x, y) for x, y in make_loader(raw_dir, digits, mode="stream")]
    assert len(got) == len(expected) == 7
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(expected, got))


def test_share_sizes_disjoint_and_reshuffled(raw_dir, digits):
    shares = [600, 500, 337]
    ids = {}
    for w in range(3):
        loader = make_loader(raw_dir, digits, worker=w, shares=shares, batch_size=50, epoch=0)
        labels = torch.cat([y for _, y in loader])
        assert labels.shape[0] == shares[w] and loader.remaining == 0 and len(loader) == 0
        ids[w] = set(loader.indices.tolist())
    assert sum(len(v) for v in ids.values()) == len(set().union(*ids.values())) == 1437
    nxt = make_loader(raw_dir, digits, worker=0, shares=shares, epoch=1)
    assert set(nxt.indices.tolist()) != ids[0]


def test_deterministic_from_seed(raw_dir, digits):
    a = [x for x, _ in make_loader(raw_dir, digits, mode="stream", num_workers=2)]
    b = [x for x, _ in make_loader(raw_dir, digits)]
    c = [x for x, _ in make_loader(raw_dir, digits, seed=4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_limit_matches_split_subset(raw_dir, digits):
    sub = digits.train.subset(300, seed=0)
    tr = BatchTransform(digits.mean, digits.std)
    ref = ShareLoader(sub, tr, worker=0, shares=[150, 150], batch_size=32, resolution=8, seed=1)
    got = ShardShareLoader(raw_dir, tr, worker=0, shares=[150, 150], batch_size=32, resolution=8, seed=1, limit=300)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ref, got))


def test_resolution_switch_in_place_and_resume(raw_dir, digits):
    loader = make_loader(raw_dir, digits)
    assert next(iter(loader))[0].shape[-1] == 8
    loader.set_epoch(3, resolution=12, batch_size=100)
    it = iter(loader)
    first = next(it)
    assert first[0].shape == (100, 1, 12, 12)
    state = loader.state_dict()
    rest = [x for x, _ in it]
    resumed = make_loader(raw_dir, digits)
    resumed.load_state_dict(state)
    assert resumed.resolution == 12 and resumed.position == 100
    again = [x for x, _ in resumed]
    assert len(again) == len(rest) == 3 and all(torch.equal(x, y) for x, y in zip(rest, again))
    loader.set_epoch(4, resolution=8)
    assert sorted(loader._memory) == [8, 12]  # both sets cached for the next CPL cycle


# --------------------------------------------------------------------------- writer: resume and refusal


def test_refuses_overwrite_and_resumes(tmp_path):
    out = tmp_path / "d"
    write_shards("digits", None, [8], out, fmt="raw", samples_per_shard=500, progress=False, log=quiet)
    before = json.loads((out / "index.json").read_text())
    with pytest.raises(ShardError, match="already holds a finished shard set.*--overwrite"):
        write_shards("digits", None, [8], out, fmt="raw", samples_per_shard=500, progress=False, log=quiet)
    # Simulate an interrupted run: no index yet, one shard missing, a partial temp file.
    params = {"source": "digits", "path": None, "resolutions": [8], "encoding": "raw", "quality": None,
              "samples_per_shard": 500, "train_margin": 0.0, "limit": None}
    (out / "index.json").unlink()
    (out / ".progress.json").write_text(json.dumps(params))
    (out / "train" / "r8" / "train-000001.tar").unlink()
    (out / "train" / "r8" / "train-000002.tar.tmp").write_bytes(b"partial")
    with pytest.raises(ShardError, match="partial run with other parameters \\(encoding"):
        write_shards("digits", None, [8], out, fmt="png", samples_per_shard=500, progress=False, log=quiet)
    messages = []
    write_shards("digits", None, [8], out, fmt="raw", samples_per_shard=500, progress=False, log=messages.append)
    assert any("resuming: 3 of 4" in m for m in messages)
    after = json.loads((out / "index.json").read_text())
    assert after["splits"] == before["splits"]  # byte-identical shards (sha256 equal)
    write_shards("digits", None, [8, 12], out, fmt="raw", samples_per_shard=500, progress=False, overwrite=True, log=quiet)
    assert ShardIndex.load(out).resolutions == [8, 12]


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ShardError, match="not empty and holds no shard index"):
        write_shards("digits", None, [8], tmp_path, overwrite=True, progress=False, log=quiet)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- errors


@pytest.fixture
def copy_dir(raw_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(raw_dir, out)
    return out


def test_missing_resolution_names_available(raw_dir, digits):
    with pytest.raises(ShardError, match=r"no 16 px set for split 'train'; it holds train at 8, 12 px"):
        make_loader(raw_dir, digits, resolution=16)
    loader = make_loader(raw_dir, digits)
    with pytest.raises(ShardError, match="no 24 px set"):
        loader.set_epoch(1, resolution=24)
    with pytest.raises(ShardError, match="no 16 px set"):
        ShardIndex.load(raw_dir).check_resolutions([8, 16])


def test_truncated_shard(copy_dir, digits):
    shard = copy_dir / "train" / "r8" / "train-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"train-000002.tar has \d+ bytes, the index says \d+: the shard is truncated"):
        list(make_loader(copy_dir, digits))
    # Even when the index is edited to the new size, reading finds the truncation.
    index = json.loads((copy_dir / "index.json").read_text())
    index["splits"]["train"]["sets"]["8"]["shards"][2]["bytes"] = len(data) // 2
    (copy_dir / "index.json").write_text(json.dumps(index))
    for mode in ("memory", "stream"):
        with pytest.raises(ShardError, match=r"train-000002.tar.*(holds \d+ (samples|images).*index lists 400|truncated)"):
            list(make_loader(copy_dir, digits, mode=mode))


def test_corrupt_image_names_shard_and_key(copy_dir, digits):
    import tarfile

    shard = copy_dir / "train" / "r8" / "train-000001.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name == "00000410.npy")
    data = bytearray(shard.read_bytes())
    data[member.offset_data:member.offset_data + 6] = b"garbag"  # the .npy magic
    shard.write_bytes(bytes(data))
    for mode in ("memory", "stream"):
        with pytest.raises(ShardError, match=r"train-000001.tar, sample 00000410: the .npy image cannot be decoded"):
            list(make_loader(copy_dir, digits, mode=mode, shares=[1437], worker=0))


def test_image_of_the_wrong_shape_names_shard_and_key(copy_dir, digits):
    import tarfile

    shard = copy_dir / "train" / "r8" / "train-000001.tar"
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name == "00000410.npy")
    data = bytearray(shard.read_bytes())
    header = bytes(data[member.offset_data:member.offset_data + 128])
    at = member.offset_data + header.index(b"(1, 8, 8)")
    data[at:at + 9] = b"(1, 4,16)"  # same bytes, other shape: a valid .npy of the wrong size
    shard.write_bytes(bytes(data))
    for mode in ("memory", "stream"):
        with pytest.raises(ShardError, match=r"train-000001.tar, sample 00000410: image of shape \(1, 4, 16\)"):
            list(make_loader(copy_dir, digits, mode=mode, shares=[1437], worker=0))


def test_index_mismatch(copy_dir, digits):
    index = json.loads((copy_dir / "index.json").read_text())
    index["splits"]["train"]["labels"][5] = (index["splits"]["train"]["labels"][5] + 1) % 10
    (copy_dir / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=r"train-000000.tar, sample 00000005: label \d, the index says \d"):
        load_shard_set(ShardIndex.load(copy_dir), "train", 8)
    # Two shards swapped: keys no longer match the index.
    a, b = copy_dir / "test" / "r8" / "test-000000.tar", copy_dir / "train" / "r8" / "train-000000.tar"
    os.replace(a, b.with_name("swap")), os.replace(b, a), os.replace(b.with_name("swap"), b)
    index = json.loads((copy_dir / "index.json").read_text())
    sets = index["splits"]
    sets["train"]["sets"]["8"]["shards"][0]["bytes"], sets["test"]["sets"]["8"]["shards"][0]["bytes"] = (
        b.stat().st_size, a.stat().st_size)
    (copy_dir / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=r"test-000000.tar.*(holds more samples|has key|label \d, the index says).*index"):
        load_shard_set(ShardIndex.load(copy_dir), "test", 8)


def test_missing_directory_and_shard(tmp_path, copy_dir):
    with pytest.raises(ShardError, match="does not exist"):
        ShardIndex.load(tmp_path / "nope")
    (copy_dir / "train" / "r12" / "train-000003.tar").unlink()
    with pytest.raises(ShardError, match=r"train-000003.tar is missing.*holds train at 8, 12 px"):
        ShardIndex.load(copy_dir).check_resolutions([8, 12])


# --------------------------------------------------------------------------- CLI


def run_cli(capsys, *args):
    from dbl_ps.cli import main

    code = main(["shard", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_shard_verify_and_errors(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    argv = ["dbl-ps", "shard", "digits", "--resolutions", "8,12", "--out", str(out), "--format", "png", "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    code, stdout, err = run_cli(capsys, *argv[2:])
    assert code == 0, err
    assert "train r12" in stdout and "wrote" in stdout
    index = json.loads((out / "index.json").read_text())
    assert index["command"].startswith("dbl-ps shard digits --resolutions 8,12")
    code, stdout, err = run_cli(capsys, "--verify", str(out))
    assert code == 0 and "match index.json" in stdout, err
    code, _, err = run_cli(capsys, "digits", "--resolutions", "8", "--out", str(out), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    code, _, err = run_cli(capsys, str(tmp_path / "missing"), "--resolutions", "8", "--out", str(tmp_path / "x"))
    assert code == 2 and "is not a directory" in err


# --------------------------------------------------------------------------- real data (slow)


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not available")
def test_fashion_mnist_round_trip(tmp_path):
    from dbl_ps.data import load_idx_dataset

    ds = load_idx_dataset(FMNIST, "fashion_mnist")
    index = write_shards("fashion_mnist", str(FMNIST), [16, 28], tmp_path / "fm", fmt="png", workers=2,
                         progress=False, log=quiet)
    assert index.num_samples("train") == 60000
    at28 = load_shard_set(index, "train", 28, num_workers=2)
    assert torch.equal(at28.images, ds.train.images) and torch.equal(at28.labels, ds.train.labels)
    at16 = load_shard_set(index, "test", 16)
    assert torch.equal(at16.images, resized_uint8(ds.test.images, 16))
    tr = BatchTransform(ds.mean, ds.std)
    shares = [20000, 20000, 15000]
    seen = set()
    for w in range(3):
        loader = ShardShareLoader(tmp_path / "fm", tr, worker=w, shares=shares, batch_size=500, resolution=16, seed=0,
                                  mode="stream", num_workers=2)
        n = sum(y.shape[0] for _, y in loader)
        assert n == shares[w]
        seen |= set(loader.indices.tolist())
    assert len(seen) == sum(shares)


# --------------------------------------------------------------------------- run integration


def test_config_source_shards_and_share_loader_for(raw_dir, digits):
    from dbl_ps.config import load_config
    from dbl_ps.data import ShareLoader, load_dataset
    from dbl_ps.shards import share_loader_for

    cfg = load_config(None, ["data.source=shards", f"data.path={raw_dir}", "data.train_limit=1000",
                             "schedule.resolutions=[8,12]", "model.dropout=[0.0]", "dbl.batch_large=[64]"])
    ds = load_dataset(cfg.data, image_size=12)
    assert len(ds.train) == 1000 and ds.test.images.shape[-1] == 12 and ds.num_classes == 10
    tr = BatchTransform(ds.mean, ds.std)
    kw = dict(worker=0, shares=[600, 400], batch_size=100, resolution=8, seed=0)
    loader = share_loader_for(cfg.data, ds.train, tr, resolutions=[8, 12], **kw)
    assert isinstance(loader, ShardShareLoader) and sum(y.shape[0] for _, y in loader) == 600
    loader.set_epoch(1, resolution=12)
    assert next(iter(loader))[0].shape == (100, 1, 12, 12)
    with pytest.raises(ShardError, match="no 16 px set"):
        share_loader_for(cfg.data, ds.train, tr, resolutions=[8, 16], **kw)
    other = load_config(None, ["data.source=digits"])
    assert isinstance(share_loader_for(other.data, digits.train, tr, **kw), ShareLoader)
    with pytest.raises(Exception, match="data.path"):
        load_config(None, ["data.source=shards"])


def test_dbl_ps_train_on_shards_learns_without_decoding_the_training_split(raw_dir, tmp_path):
    """The launcher plans from the index's labels (the training split is never decoded
    there: ImageNet-sized sets would not fit) and workers read each resolution's set."""
    from dbl_ps.config import load_config
    from dbl_ps.data import load_dataset
    from dbl_ps.runtime.launcher import Trainer

    cfg = load_config(None, ["data.source=shards", f"data.path={raw_dir}", "schedule.resolutions=[8,12]",
                             "schedule.epochs=4", "schedule.milestones=[2]", "schedule.warmup_epochs=0",
                             "dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]", "model.dropout=[0.0]",
                             "dbl.batch_large=[64]",
                             "store.mode=bsp", "store.rule=average"])
    ds = load_dataset(cfg.data, image_size=12)
    assert ds.train.images.numel() == 0 and len(ds.train) == 1437 and ds.image_size == 12
    summary = Trainer(cfg, tmp_path / "run", progress=False, log=quiet).train()
    assert summary["status"] == "finished" and summary["final_test_acc"] >= 0.5, summary  # chance 0.1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["resolution"] for r in records] == [8, 12, 8, 12]  # up, down (new LR stage), up again
    assert [sum(w["samples"] for w in r["workers"]) for r in records] == [1437] * 4  # every planned sample, once


# --------------------------------------------------------------------------- corrupt content found mid-run (issue 16)


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory):
    """digits at 8 and 12 px as PNG (a flipped byte breaks its zlib check), 4 train shards."""
    out = tmp_path_factory.mktemp("shards") / "png"
    write_shards("digits", None, [8, 12], out, fmt="png", samples_per_shard=400, progress=False, log=quiet)
    return out


def _flip(shard: Path, member: str, at: str, mask: int) -> None:
    """XOR one byte of `member` (its first or middle byte) inside the tar, in place."""
    import tarfile

    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
    data = bytearray(shard.read_bytes())
    data[info.offset_data + (0 if at == "first" else info.size // 2)] ^= mask
    shard.write_bytes(bytes(data))


# bsp: a worker starts epoch 2 (the first 12 px epoch) only once epoch 1 is committed.
SHARD_RUN = ["data.source=shards", "schedule.resolutions=[8,12]", "schedule.epochs=2", "schedule.milestones=[]",
             "schedule.warmup_epochs=0", "dbl.workers=2", "dbl.alpha=[0.003]", "dbl.beta=[0.0002]",
             "model.dropout=[0.0]", "dbl.batch_large=[64]", "store.mode=bsp", "store.rule=average"]


@pytest.mark.parametrize("case, needle, kept", [
    # two of the four run in the default suite (a decoder error and the index check); all with -m slow
    pytest.param("image", r"train/r12/train-000001\.tar, sample 00000410: the \.png image cannot be decoded", True,
                 marks=pytest.mark.slow),
    pytest.param("cls", r"train/r12/train-000001\.tar, sample 00000410: the \.cls label b'p' is not a number", True,
                 marks=pytest.mark.slow),
    # index.json's labels hold for every resolution: the 8 px set of epoch 1 finds it
    ("index-label", r"train/r8/train-000001\.tar, sample 00000410: label \d, the index says \d", False),
    pytest.param("verify", r"train/r12/train-000001\.tar does not match its SHA-256 in the index", True,
                 marks=pytest.mark.slow),
])
def test_corrupt_shard_content_stops_the_run_in_one_line_naming_shard_and_key(png_dir, tmp_path, case, needle, kept):
    """A worker's loader finds corrupt content during the run: one line naming the shard,
    the sample key and `dbl-ps shard --verify`, exit status 1, the committed checkpoint
    untouched. `data.verify=true` finds a flipped byte the decoder cannot (any byte) by the
    shard's SHA-256, when the run first opens the set."""
    root = tmp_path / "shards"
    shutil.copytree(png_dir, root)
    shard = root / "train" / "r12" / "train-000001.tar"
    if case in ("image", "verify"):
        _flip(shard, "00000410.png", "middle", 0xFF)
    elif case == "cls":
        _flip(shard, "00000410.cls", "first", 0x40)  # '0'..'9' -> 'p'..'y'
    else:
        index = json.loads((root / "index.json").read_text())
        labels = index["splits"]["train"]["labels"]
        labels[410] = (labels[410] + 1) % 10
        (root / "index.json").write_text(json.dumps(index))
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "dbl_ps", "train", "--no-progress", "--run-dir", str(run_dir),
                           *SHARD_RUN, f"data.path={root}", *(["data.verify=true"] if case == "verify" else [])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in done.stderr, done.stderr
    assert err[0].startswith("dbl-ps train: error: worker ") and re.search(needle, err[0]), err[0]
    assert f"`dbl-ps shard --verify {root}`" in err[0]
    if kept:
        assert f"the checkpoint of epoch 1 is kept: once that is fixed, `dbl-ps train --resume {run_dir}`" in err[0]
        assert json.loads((run_dir / "checkpoint.json").read_text())["epoch"] == 0
    else:
        assert "no epoch had finished" in err[0] and not (run_dir / "checkpoint.json").exists()
