"""User code by import path: `package.module:callable` (or `package.module.callable`).

What `model.name`, `data.factory` and `imports` in a config name. The current
directory is searched after everything already on `sys.path`, so a `my_models.py`
next to where `dbl-ps train` is started imports under the console script as it does
under `python -m dbl_ps` (whose first `sys.path` entry is the current directory).
Worker processes and launcher ranks resolve the same paths themselves: spawned
processes inherit `sys.path`, ranks started by torchrun or deepspeed start in the
same directory.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Iterable, cast

__all__ = ["ImportPathError", "import_callable", "import_modules", "is_import_path", "split_import_path"]


class ImportPathError(ValueError):
    """An import path that does not name something callable."""


def is_import_path(name: str) -> bool:
    """Whether `name` reads as an import path rather than a built-in name."""
    return ":" in name or "." in name


def split_import_path(path: str, key: str = "import path") -> tuple[str, str]:
    """(module, attribute) of an import path, checked for form only (nothing is imported)."""
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr or not all(part.isidentifier() for part in module.split(".") + attr.split(".")):
        raise ImportPathError(f"{key}={path!r} is not an import path: expected 'package.module:callable' "
                              f"(e.g. 'torchvision.models:resnet18')")
    return module, attr


def _search_current_directory() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _import_module(module: str, key: str, path: str) -> Any:
    _search_current_directory()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportPathError(f"{key}={path!r}: module {module!r} does not import ({type(exc).__name__}: {exc}); "
                              f"is it installed, on PYTHONPATH or in the current directory {os.getcwd()}?") from None


def import_callable(path: str, key: str = "import path") -> Callable[..., Any]:
    """The callable `path` names; one `ImportPathError` naming `key` and the path when the
    module does not import, the attribute is missing or is not callable."""
    if not isinstance(path, str):
        raise ImportPathError(f"{key}={path!r} must be a string 'package.module:callable'")
    module_name, attr = split_import_path(path, key)
    target: Any = _import_module(module_name, key, path)
    for part in attr.split("."):
        if not hasattr(target, part):
            public = sorted(n for n in dir(target) if not n.startswith("_"))[:12]
            raise ImportPathError(f"{key}={path!r}: module {module_name!r} has no attribute {attr!r} "
                                  f"(it has {', '.join(public) or 'nothing public'}{', ...' if len(public) == 12 else ''})")
        target = getattr(target, part)
    if not callable(target):
        raise ImportPathError(f"{key}={path!r} is a {type(target).__name__}, not a callable")
    return cast(Callable[..., Any], target)


def import_modules(modules: Iterable[str], key: str = "imports") -> None:
    """Import each module (the config's `imports`: modules that register models or data)."""
    for i, module in enumerate(modules):
        if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
            raise ImportPathError(f"{key}[{i}]={module!r} is not a module name (e.g. 'my_package.models')")
        _import_module(module, f"{key}[{i}]", module)
