"""Optional dependencies: imported only where used, with an error that names the extra.

    wandb = require("wandb", extra="wandb", feature="Weights & Biases tracking")
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> the extra of dbl-ps that installs it (the pyproject's optional-dependencies)
EXTRAS = {
    "deepspeed": "deepspeed",
    "wandb": "wandb",
    "webdataset": "shards",
    "tensorboard": "tensorboard",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def require(module: str, *, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = extra or EXTRAS.get(module)
        hint = f"pip install 'dbl-ps[{extra}]'" if extra else f"pip install {module}"
        raise MissingExtraError(f"{feature} needs the package {module!r}, which is not installed; "
                                f"install it with: {hint}") from error
