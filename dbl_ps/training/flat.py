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

The vector may also be memory the caller does not own, such as a parameter-store queue
slot or state snapshot in shared memory (`gather(out=slot)`, `scatter(snapshot)`), so a
sync moves the state without an intermediate vector. On a GPU `pin_host` page-locks such
memory for this process (`cudaHostRegister`), so the transfer is one DMA as with
`new_vector()`; on the CPU it does nothing and touches no CUDA API.

A sync uses `gather_checked` and `scatter_keeping`. On the CPU they copy through the
store's own kernels (`dbl_ps.parameter_store.gather_into` / `scatter_from`), which fold
the finiteness check, rule sgd's displacement and the copy of the pulled state into the
one pass over the state.
"""

from __future__ import annotations

import ctypes
import warnings
from typing import Any

import torch
from torch import nn

from dbl_ps.parameter_store import gather_into, scatter_from
from dbl_ps.training.averaging import all_finite

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
        # Host memory page-locked by `pin_host`: start address -> bytes (GPU only).
        self._registered: dict[int, int] = {}
        self._register_failed = False

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
    def scatter(self, vec: Any, *, non_blocking: bool = False) -> None:
        """Load the model's state from a flat float32 vector (tensor or ndarray).

        `non_blocking` (GPU, `vec` page-locked): the host-to-device copy is queued
        asynchronously so that launching the per-tensor copies overlaps it; this still
        returns only once the transfer is done, so the caller may reuse or release `vec`
        (a store snapshot) right away."""
        if not isinstance(vec, torch.Tensor):
            vec = torch.from_numpy(vec)
        if vec.numel() != self.numel:
            raise ValueError(f"flat vector has {vec.numel()} values, the model's state has {self.numel}")
        if self._staging is not None:
            self._staging.copy_(vec, non_blocking=non_blocking)  # one host-to-device copy
            for view, t in zip(self._staging.split(self.sizes), self.tensors):
                t.copy_(view.view_as(t))
            if non_blocking:
                # The copy from `vec` must be finished before it is returned to its owner.
                torch.cuda.current_stream(self.device).synchronize()
            return
        offset = 0
        for t, n in zip(self.tensors, self.sizes):
            t.copy_(vec[offset:offset + n].view_as(t))
            offset += n

    def _kernels_apply(self) -> bool:
        """Whether the store's copy kernels can read and write the tensors in place: every
        tensor a contiguous float32 CPU tensor (not so for a GPU model, a bf16 engine or a
        channels_last weight, which take torch's copies)."""
        return not self.on_gpu and all(t.dtype == torch.float32 and t.is_contiguous() for t in self.tensors)

    @torch.no_grad()
    def gather_checked(self, out: torch.Tensor, *, reference: torch.Tensor | None = None) -> bool:
        """Write the model's state into `out` (with `reference`: `reference - state`, rule
        sgd's displacement since the last pull) and return whether every value written is
        finite. On the CPU one pass of `gather_into`; otherwise `gather`, then the same
        check as `all_finite` and the subtraction."""
        if out.numel() != self.numel:
            raise ValueError(f"flat vector has {out.numel()} values, the model's state has {self.numel}")
        if self._kernels_apply():
            return gather_into([t.detach() for t in self.tensors], out, reference)
        self.gather(out)
        if reference is not None:
            torch.sub(reference, out, out=out)
        return bool(all_finite([out]))

    @torch.no_grad()
    def scatter_keeping(self, vec: torch.Tensor, keep: torch.Tensor | None = None, *,
                        non_blocking: bool = False) -> None:
        """`scatter(vec)`, and with `keep` also copy `vec` into it (the state of the last
        pull that rule sgd and divergence 'skip' keep). On the CPU one pass of
        `scatter_from`; otherwise `scatter`, then the copy."""
        if self._kernels_apply():
            if vec.numel() != self.numel:
                raise ValueError(f"flat vector has {vec.numel()} values, the model's state has {self.numel}")
            scatter_from(vec, [t.detach() for t in self.tensors], keep)
            for t in self.tensors:  # written behind autograd's back: count it as `copy_` would
                torch.autograd.graph.increment_version(t)
            return
        self.scatter(vec, non_blocking=non_blocking)
        if keep is not None:
            keep.copy_(vec)

    def pin_host(self, vec: torch.Tensor) -> bool:
        """Page-lock the host memory of the float32 CPU tensor `vec` (e.g. a view of a store
        slot or snapshot) for this process, so that copies between it and the model are one
        DMA each. Only when the model is on a GPU: on the CPU this does nothing and calls no
        CUDA API. Registering is done once per address (it costs milliseconds); returns
        whether `vec` is page-locked. A registration the driver refuses leaves `vec`
        pageable (slower, still correct) with one warning."""
        if not self.on_gpu or self._register_failed:
            return False
        address, size = vec.data_ptr(), vec.numel() * vec.element_size()
        known = self._registered.get(address)
        if known is not None and known >= size:
            return True
        # cudaHostRegisterPortable (1): page-locked for every CUDA context of the process,
        # as torch's own pin_memory helper does.
        code = int(torch.cuda.cudart().cudaHostRegister(address, size, 1))
        if code != 0:
            self._register_failed = True
            _clear_cuda_error()
            warnings.warn(f"could not page-lock the parameter store's shared memory (CUDA error {code}); "
                          "syncs copy through pageable memory (slower)", RuntimeWarning, stacklevel=2)
            return False
        self._registered[address] = size
        return True

    def unpin_host(self) -> None:
        """Undo every `pin_host` registration; call it before the memory is unmapped."""
        for address in list(self._registered):
            torch.cuda.cudart().cudaHostUnregister(address)  # best effort: the mapping goes next
            del self._registered[address]


def _clear_cuda_error() -> None:
    """Reset the CUDA runtime's last error after a refused `cudaHostRegister`: torch checks
    `cudaGetLastError` after its kernel launches and would otherwise report this handled
    error at an unrelated later kernel. torch has no binding for it, so it is looked up in
    the process's global symbols, where torch loads the CUDA runtime (best effort)."""
    try:
        ctypes.CDLL(None).cudaGetLastError()
    except (OSError, AttributeError):
        pass
