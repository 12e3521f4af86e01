"""Datasets read sample by sample: data.factory (a user module written here), ImageFolder
streamed from disk, the share batch sampler over a map-style dataset, the checks made
at load, and per-sample / per-batch torchvision v2 augmentation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dbl_ps.config import ConfigError, DataConfig, RunConfig
from dbl_ps.data import (
    BatchTransform,
    DataError,
    DatasetShareLoader,
    DatasetSplit,
    ShareBatchSampler,
    ShareLoader,
    Split,
    build_transform,
    epoch_shares,
    eval_batches,
    load_dataset,
)
from dbl_ps.shards import share_loader_for

USER_MODULE = '''
import torch

class Squares(torch.utils.data.Dataset):
    """The user's own dataset: 12x12 uint8 images whose label is where a bright square is."""

    classes = ["left", "middle", "right"]

    def __init__(self, n, seed, kind="tensor"):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.noise = torch.randint(0, 60, (n, 3, 12, 12), generator=g, dtype=torch.uint8)
        self.kind = kind

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.noise[i].clone()
        c = int(self.labels[i]) * 4
        x[:, 4:8, c:c + 4] = 250
        if self.kind == "pil":
            from PIL import Image
            return Image.fromarray(x.permute(1, 2, 0).numpy()), int(self.labels[i])
        if self.kind == "gray":
            return x[0], int(self.labels[i])
        if self.kind == "float":
            return x.float() / 255, int(self.labels[i])
        return x, int(self.labels[i])


def make():
    return Squares(40, 0), Squares(10, 1)

def make_pil():
    return Squares(40, 0, "pil"), Squares(10, 1, "pil")

def make_gray():
    return Squares(40, 0, "gray"), Squares(10, 1, "gray")

def make_float():
    return Squares(40, 0, "float"), Squares(10, 1, "float")

class Bad(torch.utils.data.Dataset):
    def __init__(self, item, n=4):
        self.item, self.n = item, n
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return self.item

def not_a_pair():
    return Squares(4, 0)

def three():
    return Squares(4, 0), Squares(4, 1), Squares(4, 2)

def not_map_style():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 4, 4), 0
    return Stream(), Squares(4, 1)

def item_not_a_pair():
    return Bad(torch.zeros(3, 8, 8)), Squares(4, 1)

def label_not_int():
    return Bad((torch.zeros(3, 8, 8), "cat")), Squares(4, 1)

def label_out_of_range():
    return Bad((torch.zeros(3, 8, 8), 7)), Squares(4, 1)

def hwc_image():
    return Bad((torch.zeros(8, 8, 3), 0)), Squares(4, 1)

def four_channels():
    return Bad((torch.zeros(4, 8, 8), 0)), Squares(4, 1)

def channels_differ():
    return Squares(4, 0), Squares(4, 1, "gray")

def no_classes():
    return Bad((torch.zeros(3, 8, 8), 1)), Bad((torch.zeros(3, 8, 8), 0))

class Patched(torch.utils.data.Dataset):
    """`base` with item `at` replaced by `item` (no `targets`: labels are seen as items are read)."""
    classes = Squares.classes
    def __init__(self, base, at, item):
        self.base, self.at, self.item = base, at, item
    def __len__(self):
        return len(self.base)
    def __getitem__(self, i):
        return self.item if i == self.at else self.base[i]

def nan_image():
    nan = torch.full((3, 12, 12), float("nan"))
    return Patched(Squares(40, 0, "float"), 21, (nan, 1)), Squares(10, 1, "float")

def bad_training_label_later():
    return Patched(Squares(40, 0), 17, (torch.zeros(3, 12, 12, dtype=torch.uint8), 7)), Squares(10, 1)

def bad_test_label_later():
    return Squares(40, 0), Patched(Squares(10, 1), 6, (torch.zeros(3, 12, 12, dtype=torch.uint8), 7))

def one_class():
    train, test = Squares(8, 0), Squares(4, 1)
    train.classes = ["only"]
    return train, test

def targets_out_of_range():
    train = Squares(6, 0)
    train.targets = [0, 1, 2, 0, 5, 1]
    return train, Squares(4, 1)
'''


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    (tmp_path / "user_data_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_data_mod"
    sys.modules.pop("user_data_mod", None)


def factory_cfg(name: str, **kw) -> DataConfig:
    return DataConfig(source="factory", factory=f"user_data_mod:{name}", **kw)


def collect(loader):
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(y)
    return images, labels


# --------------------------------------------------------------------------- data.factory


def test_factory_dataset_is_read_sample_by_sample_with_its_classes_and_estimated_stats(user_data, capsys):
    ds = load_dataset(factory_cfg("make"), image_size=12)
    assert isinstance(ds.train, DatasetSplit) and not ds.train.in_memory and not hasattr(ds.train, "images")
    assert len(ds.train) == 40 and len(ds.test) == 10 and ds.in_channels == 3 and ds.image_size == 12
    assert ds.num_classes == 3 and ds.classes == ["left", "middle", "right"]
    assert "estimated on 40 training images" in capsys.readouterr().out
    # The estimate is the mean/std of the training images.
    from user_data_mod import Squares

    x = torch.stack([Squares(40, 0)[i][0] for i in range(40)]).double() / 255
    assert np.allclose(ds.mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-3)
    assert np.allclose(ds.std, x.std(dim=(0, 2, 3)).tolist(), atol=2e-3)
    given = load_dataset(factory_cfg("make", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]), image_size=12)
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("kind,channels,dtype", [("make_pil", 3, torch.uint8), ("make_gray", 1, torch.uint8),
                                                 ("make_float", 3, torch.float32)])
def test_factory_items_may_be_pil_grayscale_or_float(user_data, kind, channels, dtype):
    ds = load_dataset(factory_cfg(kind, mean=[0.2] * channels, std=[0.3] * channels), image_size=8)
    assert ds.in_channels == channels
    images, labels = next(ds.test.batches(4))
    assert images.shape == (4, channels, 8, 8) and images.dtype == dtype and labels.dtype == torch.int64


def test_factory_worker_shares_are_exactly_the_planned_indices_and_resume_mid_epoch(user_data):
    ds = load_dataset(factory_cfg("make", num_workers=2), image_size=12)
    transform = build_transform(DataConfig(), ds)
    shares = [17, 23]
    raw_labels = ds.train.labels
    for worker in range(2):
        loader = share_loader_for(factory_cfg("make"), ds.train, transform, worker=worker, shares=shares, batch_size=5,
                                  resolution=12, seed=3, epoch=2)
        assert isinstance(loader, DatasetShareLoader)
        images, labels = collect(loader)
        planned = epoch_shares(40, shares, 2, 3)[worker]
        assert [len(y) for y in labels][:-1] == [5] * (len(labels) - 1) and sum(len(y) for y in labels) == shares[worker]
        assert torch.equal(torch.cat(labels), raw_labels[torch.from_numpy(planned)])

    # The same share and augmentation as the in-memory loader over the same images.
    memory = Split(torch.stack([ds.train.dataset[i][0] for i in range(40)]), raw_labels)
    mem_images, _ = collect(ShareLoader(memory, transform, worker=1, shares=shares, batch_size=5, resolution=8,
                                        seed=3, epoch=2))
    ds_images, _ = collect(DatasetShareLoader(ds.train, transform, worker=1, shares=shares, batch_size=5,
                                              resolution=8, seed=3, epoch=2))
    assert all(torch.equal(a, b) for a, b in zip(mem_images, ds_images))

    # Resume: stop after two batches, restore into a fresh loader, the rest is identical.
    loader = DatasetShareLoader(ds.train, transform, worker=1, shares=shares, batch_size=5, resolution=12, seed=3, epoch=2)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    resumed = DatasetShareLoader(ds.train, transform, worker=1, shares=[1, 1], batch_size=1, resolution=12, seed=3)
    resumed.load_state_dict(state)
    rest, _ = collect(resumed)
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(rest, ds_images_at(ds, transform, 12)[2:]))


def ds_images_at(ds, transform, resolution):
    return collect(DatasetShareLoader(ds.train, transform, worker=1, shares=[17, 23], batch_size=5,
                                      resolution=resolution, seed=3, epoch=2))[0]


def test_share_batch_sampler_over_any_map_style_dataset(user_data):
    from user_data_mod import Squares

    data = Squares(30, 0)
    sampler = ShareBatchSampler(30, [10, 14], rank=1, batch_size=4, seed=5)
    sampler.set_epoch(3)
    assert len(sampler) == 4
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=2)
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, data.labels[torch.from_numpy(epoch_shares(30, [10, 14], 3, 5)[1])])
    sampler.set_epoch(3, start=8)
    assert [len(b) for b in sampler] == [4, 2]
    with pytest.raises(ValueError, match="rank 2 has no share"):
        ShareBatchSampler(30, [10, 14], rank=2, batch_size=4, seed=5)


def test_eval_batches_read_a_dataset_split_in_order(user_data):
    ds = load_dataset(factory_cfg("make", mean=[0.5] * 3, std=[0.5] * 3), image_size=12)
    transform = build_transform(DataConfig(), ds)
    batches = list(eval_batches(ds.test, transform, 4, 12))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    expected = torch.stack([ds.test.dataset[i][0] for i in range(10)])
    assert torch.allclose(torch.cat([x for x, _ in batches]), transform(expected, 12, train=False))


def test_train_limit_keeps_the_same_subset_as_in_memory_splits(user_data):
    ds = load_dataset(factory_cfg("make", train_limit=9, test_limit=3, mean=[0.5] * 3, std=[0.5] * 3), image_size=12)
    full = load_dataset(factory_cfg("make", mean=[0.5] * 3, std=[0.5] * 3), image_size=12)
    memory = Split(torch.zeros(40, 1, 1, 1, dtype=torch.uint8), full.train.labels).subset(9, seed=0)
    assert len(ds.train) == 9 and len(ds.test) == 3 and torch.equal(ds.train.labels, memory.labels)


# --------------------------------------------------------------------------- checks at load


@pytest.mark.parametrize("name,message", [
    ("not_a_pair", r"returned a Squares, expected a pair \(train, test\)"),
    ("three", r"returned a 3-item tuple, expected a pair"),
    ("not_map_style", r"training dataset is a Stream, expected a map-style dataset"),
    ("item_not_a_pair", r"training dataset item 0 is a Tensor, expected \(image, int label\)"),
    ("label_not_int", r"item 0: the label is str 'cat', expected an int class number"),
    ("label_out_of_range", r"item 0: label 7 outside 0..2"),
    ("hwc_image", r"image of shape \(8, 8, 3\), expected \(C, H, W\) with C = 1 or 3"),
    ("four_channels", r"image of shape \(4, 8, 8\), expected \(C, H, W\) with C = 1 or 3"),
    ("channels_differ", r"training images have 3 channels, test images 1"),
    ("no_classes", r"has no .classes; set data.num_classes"),
    ("targets_out_of_range", r"training dataset item 4: label 5 outside 0..2"),
])
def test_bad_factories_are_one_clear_error_at_load(user_data, name, message):
    with pytest.raises(DataError, match=message):
        load_dataset(factory_cfg(name, num_classes=None if name == "no_classes" else 3), image_size=8)


def test_nan_images_and_a_later_bad_training_label_are_named_with_their_split_and_index(user_data):
    """Met while the statistics are estimated: a NaN image (it made the mean `[nan]` and the run
    went on) and a bad label of the training set (it was reported as the test set's)."""
    with pytest.raises(DataError, match=r"nan_image training dataset item 21: the image holds NaN or infinite"):
        load_dataset(factory_cfg("nan_image"), image_size=12)
    with pytest.raises(DataError, match=r"bad_training_label_later training dataset item 17: label 7 outside 0..2"):
        load_dataset(factory_cfg("bad_training_label_later"), image_size=12)


def test_a_one_class_dataset_is_refused(user_data):
    with pytest.raises(DataError, match=r"one_class: 1 class \(only\); a classifier needs at least 2 classes"):
        load_dataset(factory_cfg("one_class"), image_size=12)


def test_factory_import_errors_and_config_keys(user_data):
    with pytest.raises(DataError, match="has no attribute 'nothing'"):
        load_dataset(factory_cfg("nothing"), image_size=8)
    with pytest.raises(DataError, match="does not import"):
        load_dataset(DataConfig(source="factory", factory="no_such_user_module:make"), image_size=8)
    with pytest.raises(ConfigError, match="data.factory"):
        RunConfig.from_dict({"data": {"source": "factory"}})
    with pytest.raises(ConfigError, match="set data.source: factory"):
        RunConfig.from_dict({"data": {"factory": "user_data_mod:make"}})
    with pytest.raises(ConfigError, match="data.mean"):
        RunConfig.from_dict({"data": {"mean": [0.5]}})
    with pytest.raises(ConfigError, match="random_resized_crop"):
        RunConfig.from_dict({"data": {"random_resized_crop": True}})
    # A mismatching data.num_classes is named too.
    with pytest.raises(DataError, match="data.num_classes is 5, the training dataset's .classes lists 3"):
        load_dataset(factory_cfg("make", num_classes=5), image_size=8)


# --------------------------------------------------------------------------- ImageFolder, streamed


def write_tree(root: Path, per_class=6, side=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(["ant", "bee"]):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                img = rng.integers(0, 256, (side, side + 4 * k, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / name / f"{k}.jpg", quality=95)


def test_imagefolder_is_streamed_from_disk_not_decoded_into_memory(tmp_path):
    write_tree(tmp_path / "tree")
    cfg = DataConfig(source="imagefolder", path=str(tmp_path / "tree"), num_workers=2)
    ds = load_dataset(cfg, image_size=16)
    assert not hasattr(ds.train, "images") and not ds.train.in_memory
    assert len(ds.train) == 12 and ds.train.labels.tolist() == [0] * 6 + [1] * 6
    # The split holds file paths; decoding happens when a DataLoader (here in 2 processes) reads.
    assert all(isinstance(path, str) and path.endswith(".jpg") for path, _ in ds.train.dataset.samples)
    loader = share_loader_for(cfg, ds.train, build_transform(cfg, ds), worker=0, shares=[7, 5], batch_size=4,
                              resolution=12, seed=0)
    assert loader.split.data_loader([[0]]).num_workers == 2
    images, labels = collect(loader)
    assert [tuple(x.shape) for x in images] == [(4, 3, 12, 12), (3, 3, 12, 12)]
    (tmp_path / "tree" / "train" / "ant" / "0.jpg").unlink()  # proof the files are read now, not at load
    with pytest.raises(Exception, match="0.jpg"):
        list(eval_batches(ds.train, build_transform(cfg, ds), 12, 16))


@pytest.mark.slow
def test_random_resized_crop_and_randaugment_per_sample_are_seeded(tmp_path):
    write_tree(tmp_path / "tree")
    cfg = DataConfig(source="imagefolder", path=str(tmp_path / "tree"), random_resized_crop=True, randaugment=True)
    ds = load_dataset(cfg, image_size=16)
    transform = build_transform(cfg, ds)
    assert not transform.randaugment  # applied per sample as the dataset is read, not again on the batch

    def run(epoch):
        return collect(DatasetShareLoader(ds.train, transform, worker=0, shares=[12], batch_size=6, resolution=16,
                                          seed=1, epoch=epoch))[0]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    centre = collect(DatasetShareLoader(ds.train.with_prep(ds.test.prep), transform, worker=0, shares=[12],
                                        batch_size=6, resolution=16, seed=1))[0]
    assert not torch.equal(a[0], centre[0])  # not the plain centre crop


# --------------------------------------------------------------------------- batch-level v2 transforms


def test_randaugment_on_in_memory_batches_is_seeded_per_image():
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    t = BatchTransform((0.5,) * 3, (0.5,) * 3, augment=False, randaugment=True)
    a = t(images, 16, generator=torch.Generator().manual_seed(0))
    b = t(images, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, t(images, 16, train=False))
    state = torch.get_rng_state()
    t(images, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG (dropout's) is left as it was


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_cutmix_give_soft_labels_only_when_on(mixup, cutmix):
    data = Split(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 4)
    on = BatchTransform((0.5,) * 3, (0.5,) * 3, mixup_alpha=mixup, cutmix_alpha=cutmix, num_classes=4)
    off = BatchTransform((0.5,) * 3, (0.5,) * 3)
    for transform, soft in ((on, True), (off, False)):
        assert transform.soft_labels is soft
        batches = collect(ShareLoader(data, transform, worker=0, shares=[20], batch_size=8, resolution=8, seed=0))[1]
        if soft:
            assert all(y.dtype == torch.float32 and y.shape == (len(y), 4) for y in batches)
            assert all(torch.allclose(y.sum(dim=1), torch.ones(len(y))) for y in batches)
        else:
            assert all(y.dtype == torch.int64 and y.dim() == 1 for y in batches)
    again = collect(ShareLoader(data, on, worker=0, shares=[20], batch_size=8, resolution=8, seed=0))
    first = collect(ShareLoader(data, on, worker=0, shares=[20], batch_size=8, resolution=8, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(again[1], first[1]))
