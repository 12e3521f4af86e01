"""dbl-ps: dual batch size learning (DBSL) and cyclic progressive learning (CPL) on a
shared-memory parameter server (arXiv 2509.26092).

``from dbl_ps import ParameterStore, StoreClient`` gives the parameter store (see
``dbl_ps.parameter_store``). Names are resolved on first use, so ``import dbl_ps.planner`` loads
neither the native extension nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "ParameterStore": "dbl_ps.parameter_store",
    "StoreClient": "dbl_ps.parameter_store",
    "StoreError": "dbl_ps.parameter_store",
    "StoreClosedError": "dbl_ps.parameter_store",
    "StoreNotFoundError": "dbl_ps.parameter_store",
    "OwnerDiedError": "dbl_ps.parameter_store",
    "cleanup_stale_segments": "dbl_ps.parameter_store",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dbl_ps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
