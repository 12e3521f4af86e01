"""What the three example scripts share and is not about dbl-ps: a small CNN, the data
(scikit-learn's digits at 16 px, or Fashion-MNIST from the IDX files with --data), the
device, evaluation and the per-rank record the tests read. A user has their own versions
of all of this; the dbl-ps lines live in the scripts themselves."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def datasets(data: str | None = None) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) as float tensors (N, 1, 16, 16), normalised."""
    if data:  # Fashion-MNIST IDX files (benchmarks); dbl-ps's reader is just a convenient one
        from dbl_ps.data import load_idx_dataset

        ds = load_idx_dataset(data, "fashion_mnist")
        x_tr, y_tr, x_te, y_te = ds.train.images, ds.train.labels, ds.test.images, ds.test.labels
    else:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255 / 16)
        y = torch.tensor(bunch.target)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    prep = lambda x: (F.interpolate(x.float() / 255, size=16, mode="bilinear", align_corners=False) - 0.3) / 0.35  # noqa: E731
    return TensorDataset(prep(x_tr), y_tr), TensorDataset(prep(x_te), y_te)


def init(backend_hint: str | None = None) -> tuple[int, int, torch.device]:
    """Process group from the launcher's environment: NCCL on GPUs, gloo on CPUs."""
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend_hint or ("nccl" if cuda else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()  # ranks may share a GPU
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    return rank, world, torch.device("cpu")


@torch.no_grad()
def accuracy(model: nn.Module, test: TensorDataset, device: torch.device) -> float:
    model.eval()
    x, y = test.tensors
    correct = sum(int((model(x[i:i + 512].to(device)).argmax(1).cpu() == y[i:i + 512]).sum())
                  for i in range(0, len(y), 512))
    model.train()
    return correct / len(y)


def fingerprint(model: nn.Module) -> float:
    """A number that differs when any parameter or BatchNorm statistic differs (local shards)."""
    from dbl_ps.training.averaging import averaged_tensors

    return float(sum(t.double().sum() * (i + 1) for i, t in enumerate(averaged_tensors(model))))


class Record:
    """Per-rank facts for the tests and the benchmark: batches, fingerprints after syncs, times."""

    def __init__(self, out: str | None, rank: int):
        self.path = Path(out) / f"rank{rank}.json" if out else None
        self.data: dict = {"rank": rank, "epochs": [], "syncs": [], "replans": []}
        self.started = time.perf_counter()

    def save(self) -> None:
        if self.path is not None:
            self.data["total_seconds"] = time.perf_counter() - self.started
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1))
