"""Batch transforms with torch ops, on whatever device the batch lives on.

Pure functions (`to_float`, `resize_batch`, `random_crop`, `random_flip`,
`normalize`) plus `BatchTransform`, which applies them in order:

    uint8 (N, C, H, W) -> [train, data.randaugment: RandAugment per image, uint8]
      -> float 0..1 -> resize to the current resolution
      -> [train: random crop with zero padding, random horizontal flip] -> normalise

and, for training batches with `data.mixup_alpha`/`data.cutmix_alpha`, `mix`:
torchvision's v2.MixUp/v2.CutMix on the normalised batch (mixing commutes with the
per-channel normalisation), which turns the labels into soft (N, num_classes)
float32 targets.

Random draws come from a CPU `torch.Generator` (then move to the batch's
device), so a seeded run gives the same augmentation on CPU and GPU; the v2
transforms draw from the global RNG, which is forked and seeded from that
generator around them.

Why the pad-crop and flip stay vectorised over the batch rather than per-sample v2
transforms: on 1,000 images, 2 busy shared cores (benchmarks/loader_throughput.py,
"Datasets read sample by sample" in benchmarks/RESULTS.md), this batch path was 127x
faster at 8 px (digits) and 1.37x faster at 32 px (CIFAR) than v2.RandomCrop(padding)
+ v2.RandomHorizontalFlip per image, stacked and normalised (the same work).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

if TYPE_CHECKING:
    from dbl_ps.config import DataConfig
    from dbl_ps.data.sources import Dataset

__all__ = ["to_float", "resize_batch", "random_crop", "random_flip", "normalize", "randaugment_batch", "BatchTransform",
           "build_transform"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1 (float input is returned as float32 unchanged)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float (N, C, H, W) batch to (size, size); antialiased
    when shrinking (so low CPL resolutions do not alias), a no-op at equal size."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"resize_batch expects a float (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"resize_batch size must be >= 1, got {size}")
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    shrinking = size < h or size < w
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad each image with `padding` zero pixels per side and crop back to its
    size at an independent random offset per image."""
    if padding < 0:
        raise ValueError(f"random_crop padding must be >= 0, got {padding}")
    if padding == 0 or x.shape[0] == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # (N, H)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # (N, W)
    batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability `p`."""
    if x.shape[0] == 0:
        return x
    mask = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel."""
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"normalize: {x.shape[1]} channels but mean {tuple(mean)} and std {tuple(std)}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class BatchTransform:
    """uint8 batch -> normalised float batch at a given resolution.

    `crop_padding=None` pads by resolution // 8 (4 px at 32, as is usual for CIFAR).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, augment: bool = True, flip: bool = True,
                 crop_padding: int | None = None, randaugment: bool = False, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, num_classes: int | None = None):
        if len(mean) != len(std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} have different channel counts")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        if crop_padding is not None and crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0 or None, got {crop_padding}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.augment = augment
        self.flip = flip
        self.crop_padding = crop_padding
        self.randaugment = randaugment
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if (mixup_alpha or cutmix_alpha) and (num_classes is None or num_classes < 2):
            raise ValueError(f"MixUp/CutMix need num_classes >= 2, got {num_classes}")
        self.mixup_alpha, self.cutmix_alpha, self.num_classes = float(mixup_alpha), float(cutmix_alpha), num_classes

    @property
    def soft_labels(self) -> bool:
        """Whether training batches carry (N, num_classes) float32 targets (MixUp/CutMix on)."""
        return bool(self.mixup_alpha or self.cutmix_alpha)

    def padding_at(self, resolution: int) -> int:
        return resolution // 8 if self.crop_padding is None else self.crop_padding

    def __call__(self, images: torch.Tensor, resolution: int, *, train: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if train and self.randaugment:
            images = randaugment_batch(images, generator)
        x = resize_batch(to_float(images), resolution)
        if train and self.augment:
            x = random_crop(x, self.padding_at(resolution), generator)
            if self.flip:
                x = random_flip(x, generator)
        return normalize(x, self.mean, self.std)

    def mix(self, images: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch after MixUp/CutMix (one of the two per batch when both are on):
        labels become (N, num_classes) float32 soft targets. Unchanged when both are off."""
        if not self.soft_labels:
            return images, labels

        mixers = [m for m in (v2.MixUp(alpha=self.mixup_alpha, num_classes=self.num_classes) if self.mixup_alpha else None,
                              v2.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_classes) if self.cutmix_alpha else None)
                  if m is not None]
        mixer = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            if images.shape[0] < 2:  # v2.MixUp refuses a batch of one: nothing to mix with
                assert self.num_classes is not None  # checked in __init__ when mixing is on
                return images, torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float32)
            return mixer(images, labels)

    def __repr__(self) -> str:
        return (f"BatchTransform(mean={self.mean}, std={self.std}, augment={self.augment}, flip={self.flip}, "
                f"crop_padding={self.crop_padding}, randaugment={self.randaugment}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha})")


def randaugment_batch(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision's v2.RandAugment on each uint8 image of a batch separately (on the
    whole batch it would apply the same operations to every image), seeded from
    `generator` through a forked global RNG."""

    if images.dtype != torch.uint8:
        raise ValueError(f"randaugment_batch expects uint8 images, got {images.dtype}")
    augment = v2.RandAugment()
    seeds = torch.randint(0, 2**62, (images.shape[0],), generator=generator).tolist()
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        for k, seed in enumerate(seeds):
            torch.manual_seed(seed)
            out[k] = augment(images[k])
    return out


def build_transform(cfg: "DataConfig", dataset: "Dataset") -> BatchTransform:
    """The transform a run uses: the data set's statistics and flip default,
    unless the config says otherwise. RandAugment runs here only for in-memory
    splits; a split read sample by sample applies it per sample as it reads."""
    flip = dataset.flip if cfg.flip is None else cfg.flip
    return BatchTransform(dataset.mean, dataset.std, augment=cfg.augment, flip=flip, crop_padding=cfg.crop_padding,
                          randaugment=cfg.randaugment and dataset.train.in_memory, mixup_alpha=cfg.mixup_alpha,
                          cutmix_alpha=cfg.cutmix_alpha, num_classes=dataset.num_classes)
