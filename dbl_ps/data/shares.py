"""Per-worker data shares.

`epoch_shares` is the pure function: for epoch `e`, one seeded permutation of
the training set cut into consecutive pieces of the planned sizes, so shares are
disjoint within an epoch and reshuffled every epoch, deterministically from
(seed, epoch). `ShareLoader` yields one worker's share of an in-memory split as
transformed batches, the last partial batch included, and can resume mid-epoch
from its state dict; `DatasetShareLoader` does the same for a split read sample by
sample (`DatasetSplit`) through a DataLoader. `ShareBatchSampler` is the share as a
plain batch sampler for any map-style dataset and DataLoader.

Training batches are `(images, labels)`: labels int64 (N,), or float32
(N, num_classes) soft targets when the transform mixes (`data.mixup_alpha`,
`data.cutmix_alpha`; `BatchTransform.soft_labels`).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence, cast

import numpy as np
import torch

from dbl_ps.data.sources import Split
from dbl_ps.data.streamed import DatasetSplit
from dbl_ps.data.transforms import BatchTransform

__all__ = ["epoch_shares", "ShareLoader", "ShareCursor", "DatasetShareLoader", "ShareBatchSampler", "eval_batches",
           "batch_seed", "check_count"]


def check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def epoch_shares(num_samples: int, shares: Sequence[int], epoch: int, seed: int) -> list[np.ndarray]:
    """Sample indices for each worker in `epoch`: worker i gets exactly
    `shares[i]` indices, disjoint from every other worker's. The shares may add
    up to less than `num_samples` (the rest sit this epoch out), never more."""
    num_samples = check_count("num_samples", num_samples, 0)
    epoch = check_count("epoch", epoch, 0)
    seed = check_count("seed", seed, 0)
    counts = [check_count(f"shares[{i}]", s, 0) for i, s in enumerate(shares)]
    if sum(counts) > num_samples:
        raise ValueError(f"shares {counts} add up to {sum(counts)}, more than the {num_samples} samples; "
                         f"disjoint shares must add up to at most {num_samples}")
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(num_samples)
    bounds = np.cumsum([0] + counts)
    return [order[bounds[i]:bounds[i + 1]].astype(np.int64) for i in range(len(counts))]


def batch_seed(seed: int, worker: int, epoch: int, position: int) -> int:
    """The augmentation seed of the batch that starts at `position` of a worker's
    share: a function of where the batch is, so a resumed run draws the same."""
    return int(np.random.SeedSequence([seed, worker, epoch, position]).generate_state(1)[0])


class ShareCursor:
    """Which samples worker `worker` reads in an epoch, and how far it got: the share
    bookkeeping every loader of planned shares needs (`ShareLoader` for in-memory
    splits, `dbl_ps.shards.ShardShareLoader` for shard sets). Subclasses say how many
    samples there are (`_num_samples`) and may act on a resolution change
    (`_use_resolution`)."""

    worker: int
    seed: int
    shares: list[int]
    batch_size: int
    resolution: int
    epoch: int
    position: int = 0
    _indices: np.ndarray | None = None

    def _num_samples(self) -> int:
        raise NotImplementedError

    def _use_resolution(self, resolution: int) -> None:
        self.resolution = resolution

    def set_epoch(self, epoch: int, *, shares: Sequence[int] | None = None, batch_size: int | None = None,
                  resolution: int | None = None) -> None:
        """Start `epoch` from its beginning, optionally with new shares, batch size or resolution."""
        if shares is not None:
            counts = [int(s) for s in shares]
            if self.worker >= len(counts):
                raise ValueError(f"worker {self.worker} has no share: shares {counts} cover workers 0..{len(counts) - 1}")
            self.shares = counts
        if batch_size is not None:
            self.batch_size = check_count("batch_size", batch_size, 1)
        if resolution is not None:
            self._use_resolution(check_count("resolution", resolution, 1))
        self.epoch = check_count("epoch", epoch, 0)
        self.position = 0
        self._indices = None

    @property
    def indices(self) -> np.ndarray:
        """This worker's sample indices for the current epoch."""
        if self._indices is None:
            self._indices = epoch_shares(self._num_samples(), self.shares, self.epoch, self.seed)[self.worker]
        return self._indices

    @property
    def share(self) -> int:
        return self.shares[self.worker]

    @property
    def remaining(self) -> int:
        """Samples of the current epoch's share not yet yielded."""
        return self.share - self.position

    def __len__(self) -> int:
        """Batches left in the current epoch."""
        return math.ceil(self.remaining / self.batch_size)

    # -- resume (mid-epoch: the position within the share)

    def state_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "shares": list(self.shares), "batch_size": self.batch_size, "resolution": self.resolution}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["worker"] != self.worker or state["seed"] != self.seed:
            raise ValueError(f"state is for worker {state['worker']} seed {state['seed']}, "
                             f"this loader is worker {self.worker} seed {self.seed}")
        self.set_epoch(state["epoch"], shares=state["shares"], batch_size=state["batch_size"], resolution=state["resolution"])
        position = check_count("position", state["position"], 0)
        if position > self.share:
            raise ValueError(f"state position {position} is past the end of the share ({self.share} samples)")
        self.position = position


class ShareLoader(ShareCursor):
    """Batches of `(images, labels)` from worker `worker`'s share of an epoch.

    Reconfigure at schedule boundaries with `set_epoch(epoch, shares=...,
    batch_size=..., resolution=...)`; iterating yields the rest of the current
    epoch's share (ceil(share / batch_size) batches from a fresh epoch) and
    records the position, which `state_dict` saves for resuming mid-epoch.
    """

    def __init__(self, split: Split, transform: BatchTransform, *, worker: int, shares: Sequence[int], batch_size: int,
                 resolution: int, seed: int, epoch: int = 0, device: torch.device | str | None = None):
        self.split = split
        self.transform = transform
        self.device = torch.device(device) if device is not None else split.images.device
        self.worker = check_count("worker", worker, 0)
        self.seed = check_count("seed", seed, 0)
        self._indices: np.ndarray | None = None
        self.position = 0
        self.set_epoch(epoch, shares=shares, batch_size=batch_size, resolution=resolution)

    def _num_samples(self) -> int:
        return len(self.split)

    # -- iteration

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self.indices
        while self.position < self.share:
            start = self.position
            stop = min(start + self.batch_size, self.share)
            idx = torch.from_numpy(indices[start:stop]).to(self.split.images.device)
            gen = torch.Generator().manual_seed(batch_seed(self.seed, self.worker, self.epoch, start))
            images = self.split.images[idx].to(self.device, non_blocking=True)
            labels = self.split.labels[idx].to(self.device, non_blocking=True)
            # Count the batch as consumed before handing it out: a checkpoint taken
            # after training on it resumes with the next batch.
            self.position = stop
            yield self.transform.mix(self.transform(images, self.resolution, train=True, generator=gen), labels, gen)


class ShareBatchSampler(torch.utils.data.Sampler):
    """Worker `rank`'s planned share of an epoch as batches of dataset indices, for a
    `torch.utils.data.DataLoader(dataset, batch_sampler=...)` over any map-style dataset:
    exactly `shares[rank]` indices (`epoch_shares`), the last batch partial. Call
    `set_epoch(epoch)` before each epoch (as with DistributedSampler); `start` skips the
    first samples of the share (to resume an epoch part-way).

    Resume: `state_dict()` holds the epoch, the shares, the batch size and `position`, the
    samples of the share handed out so far (counted when a batch is handed out, as
    `ShareLoader` does); after `load_state_dict`, `set_epoch` of the saved epoch continues
    at that position. With DataLoader worker processes the DataLoader asks for batches
    ahead of training, so a position saved mid-epoch is ahead of the steps taken: save at
    epoch ends there (the next epoch then starts from its beginning)."""

    def __init__(self, num_samples: int, shares: Sequence[int], rank: int, batch_size: int, seed: int, *,
                 epoch: int = 0, start: int = 0):
        self.num_samples = check_count("num_samples", num_samples, 0)
        self.shares = [check_count(f"shares[{i}]", s, 0) for i, s in enumerate(shares)]
        self.rank = check_count("rank", rank, 0)
        if self.rank >= len(self.shares):
            raise ValueError(f"rank {rank} has no share: shares {self.shares} cover ranks 0..{len(self.shares) - 1}")
        self.batch_size = check_count("batch_size", batch_size, 1)
        self.seed = check_count("seed", seed, 0)
        self._resume_epoch: int | None = None  # set by load_state_dict: that epoch continues
        self.position: int = 0  # the next sample of the share (set_epoch sets it)
        self.set_epoch(epoch, start=start)

    def set_epoch(self, epoch: int, *, start: int | None = None, shares: Sequence[int] | None = None,
                  batch_size: int | None = None) -> None:
        """Start `epoch` (from sample `start` of the share, default its beginning), with new
        `shares` and `batch_size` where the plan changed (a resolution switch, a re-plan).
        After `load_state_dict`, the saved epoch continues at the saved position."""
        continuing = self._resume_epoch is not None and self._resume_epoch == epoch and start is None
        self._resume_epoch = None
        if shares is not None:
            counts = [check_count(f"shares[{i}]", s, 0) for i, s in enumerate(shares)]
            if self.rank >= len(counts):
                raise ValueError(f"rank {self.rank} has no share: shares {counts} cover ranks 0..{len(counts) - 1}")
            if continuing and counts != self.shares:
                raise ValueError(f"set_epoch({epoch}) continues the loaded epoch at sample {self.position} of shares "
                                 f"{self.shares}, but got shares {counts}: continue it with the plan it was saved with")
            self.shares = counts
        if sum(self.shares) > self.num_samples:
            raise ValueError(f"the planned shares {self.shares} add up to {sum(self.shares)} samples, but the dataset "
                             f"has {self.num_samples}: plan with dataset_size={self.num_samples}")
        if batch_size is not None:
            if continuing and batch_size != self.batch_size:
                raise ValueError(f"set_epoch({epoch}) continues the loaded epoch with batch {self.batch_size}, but got "
                                 f"batch_size={batch_size}: continue it with the plan it was saved with")
            self.batch_size = check_count("batch_size", batch_size, 1)
        self.epoch = check_count("epoch", epoch, 0)
        self.start = self.position if continuing else check_count("start", 0 if start is None else start, 0)
        self.position = self.start

    def __iter__(self) -> Iterator[list[int]]:
        indices = epoch_shares(self.num_samples, self.shares, self.epoch, self.seed)[self.rank]
        for start in range(self.start, len(indices), self.batch_size):
            batch = indices[start:start + self.batch_size]
            # Counted before handing it out: a checkpoint taken after training on it resumes with the next batch.
            self.position = start + len(batch)
            yield batch.tolist()

    def __len__(self) -> int:
        return math.ceil(max(0, self.shares[self.rank] - self.start) / self.batch_size)

    # -- resume

    def state_dict(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "rank": self.rank, "seed": self.seed, "epoch": self.epoch,
                "position": self.position, "shares": list(self.shares), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.num_samples, self.rank, self.seed)
        saved = (state["num_samples"], state["rank"], state["seed"])
        if saved != mine:
            raise ValueError(f"the state is of a sampler over {saved[0]} samples for rank {saved[1]} with seed "
                             f"{saved[2]}; this one is over {mine[0]} for rank {mine[1]} with seed {mine[2]}: load "
                             f"this rank's own state, with the same dataset and seed")
        self.set_epoch(state["epoch"], shares=state["shares"], batch_size=state["batch_size"])
        position = check_count("position", state["position"], 0)
        if position > self.shares[self.rank]:
            raise ValueError(f"state position {position} is past the end of the share ({self.shares[self.rank]} "
                             f"samples)")
        self.start = self.position = position
        self._resume_epoch = self.epoch


class _KeyBatches(torch.utils.data.Sampler):
    """The batches of `(index, seed)` keys of the current pass; replaced every pass
    (persistent DataLoader workers call `iter` on it again for each one)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int | None]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


class DatasetShareLoader(ShareCursor):
    """`ShareLoader` for a split read sample by sample (`DatasetSplit`): the same shares
    (`epoch_shares`), the same `batch_seed` per batch, the same resume; samples are read
    (decoded, resized or randomly cropped to the stored side) in `split.num_workers`
    DataLoader processes, kept across epochs, and each batch then goes through the
    `BatchTransform` on the device. Random per-sample transforms get a seed per sample
    drawn from the batch's seed, so they too are a function of where the batch is."""

    def __init__(self, split: DatasetSplit, transform: BatchTransform, *, worker: int, shares: Sequence[int],
                 batch_size: int, resolution: int, seed: int, epoch: int = 0, device: torch.device | str | None = None):
        self.split = split
        self.transform = transform
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.worker = check_count("worker", worker, 0)
        self.seed = check_count("seed", seed, 0)
        self._indices: np.ndarray | None = None
        self.position = 0
        self._sampler = _KeyBatches()
        self._loader: torch.utils.data.DataLoader | None = None
        self.set_epoch(epoch, shares=shares, batch_size=batch_size, resolution=resolution)

    def _num_samples(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self.indices
        bounds = [(s, min(s + self.batch_size, self.share)) for s in range(self.position, self.share, self.batch_size)]
        seeds = [batch_seed(self.seed, self.worker, self.epoch, start) for start, _ in bounds]
        random = self.split.prep.random
        self._sampler.batches = [
            list(zip(indices[start:stop].tolist(),
                     np.random.default_rng(s).integers(0, 2**62, stop - start).tolist() if random else [None] * (stop - start)))
            for (start, stop), s in zip(bounds, seeds)]
        if self._loader is None:
            self._loader = self.split.data_loader(self._sampler, persistent=True)
        for (start, stop), s, (images, labels) in zip(bounds, seeds, self._loader):
            gen = torch.Generator().manual_seed(s)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            self.position = stop  # counted before handing out, as ShareLoader does
            yield self.transform.mix(self.transform(images, self.resolution, train=True, generator=gen), labels, gen)

    def close(self) -> None:
        """Stop the DataLoader's worker processes."""
        self._loader = None



def eval_batches(split: Split | DatasetSplit, transform: BatchTransform, batch_size: int, resolution: int,
                 device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole split in order, without augmentation, for evaluation (in memory, or
    read sample by sample through a DataLoader)."""
    batch_size = check_count("batch_size", batch_size, 1)
    if not split.in_memory:  # read sample by sample (a DatasetSplit)
        device = torch.device(device) if device is not None else torch.device("cpu")
        for images, labels in cast(DatasetSplit, split).batches(batch_size):
            yield transform(images.to(device, non_blocking=True), resolution, train=False), labels.to(device)
        return
    held = cast(Split, split)  # in memory
    device = torch.device(device) if device is not None else held.images.device
    for start in range(0, len(held), batch_size):
        images = held.images[start:start + batch_size].to(device, non_blocking=True)
        labels = held.labels[start:start + batch_size].to(device, non_blocking=True)
        yield transform(images, resolution, train=False), labels
