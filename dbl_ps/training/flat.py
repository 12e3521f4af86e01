"""A model's state as one flat float32 vector, the unit the parameter store moves.

The vector holds every parameter and every floating-point buffer (BatchNorm running
mean and variance), in `named_parameters()` then `named_buffers()` order, so
BatchNorm statistics travel with the weights. Integer buffers (BatchNorm's
`num_batches_tracked`) are not averaged: they stay with each worker and are saved in
its checkpoint (`dbl_ps.training.engine.int_buffers`).

    flat = FlatState(model)
    vec = flat.new_vector()          # float32 CPU tensor of flat.numel values
    flat.gather(vec)                 # model -> vector
    flat.scatter(vec)                # vector -> model

On a GPU the state crosses the bus as one transfer: the model's tensors are packed
into one flat device buffer (device-speed copies), which moves to or from the
vector in a single copy, and `new_vector()` is pinned (page-locked) host memory, so
that copy is one DMA at full bus speed. Copying tensor by tensor into pageable
memory instead costs one synchronous, driver-staged transfer per tensor (over a
hundred for a ResNet-18); `benchmarks/ps_cuda.py` measures both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FlatState"]


class FlatState:
    """Copies between a model's floating state and a flat float32 CPU vector."""

    def __init__(self, model: nn.Module):
        self.model = model
        entries: list[tuple[str, torch.Tensor]] = []
        self.int_names: list[str] = []
        for name, p in model.named_parameters():
            entries.append((name, p))
        for name, b in model.named_buffers():
            if b.is_floating_point():
                entries.append((name, b))
            else:
                self.int_names.append(name)
        self.names = [n for n, _ in entries]
        self.tensors = [t for _, t in entries]
        self.sizes = [t.numel() for t in self.tensors]
        self.numel = sum(self.sizes)
        self.device = self.tensors[0].device if self.tensors else torch.device("cpu")
        if any(t.device != self.device for t in self.tensors):
            raise ValueError(f"the model's state is on several devices ({sorted({str(t.device) for t in self.tensors})}); "
                             "FlatState needs it on one")
        self.on_gpu = self.device.type == "cuda"
        # The device-side flat buffer for one-transfer copies (GPU only; see the module doc).
        self._staging = torch.empty(self.numel, dtype=torch.float32, device=self.device) if self.on_gpu else None

    def new_vector(self) -> torch.Tensor:
        """A float32 CPU vector of `numel` values: pinned host memory when the model is on a GPU."""
        return torch.empty(self.numel, dtype=torch.float32, pin_memory=self.on_gpu)

    @torch.no_grad()
    def gather(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The model's state written into `out` (a float32 CPU vector of `numel`)."""
        if out is None:
            out = self.new_vector()
        if out.numel() != self.numel:
            raise ValueError(f"flat vector has {out.numel()} values, the model's state has {self.numel}")
        if self._staging is not None:
            for view, t in zip(self._staging.split(self.sizes), self.tensors):
                view.copy_(t.detach().reshape(-1))
            out.copy_(self._staging)  # one device-to-host copy; returns once it is done
            return out
        offset = 0
        for t, n in zip(self.tensors, self.sizes):
            out[offset:offset + n].copy_(t.detach().reshape(-1))
            offset += n
        return out

    @torch.no_grad()
    def scatter(self, vec: Any) -> None:
        """Load the model's state from a flat float32 vector (tensor or ndarray)."""
        if not isinstance(vec, torch.Tensor):
            vec = torch.from_numpy(vec)
        if vec.numel() != self.numel:
            raise ValueError(f"flat vector has {vec.numel()} values, the model's state has {self.numel}")
        if self._staging is not None:
            self._staging.copy_(vec)  # one host-to-device copy
            for view, t in zip(self._staging.split(self.sizes), self.tensors):
                t.copy_(view.view_as(t))
            return
        offset = 0
        for t, n in zip(self.tensors, self.sizes):
            t.copy_(vec[offset:offset + n].view_as(t))
            offset += n
