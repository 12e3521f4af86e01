"""User code named by import path: `package.module:attr` (or `package.module.attr`).

    make = import_callable("my_project.data:make_datasets")

The module is imported with `importlib.import_module` in whichever process asks
(the launcher, each spawned worker, each collective rank), so it must be
importable there: installed, or on PYTHONPATH. Every failure is one
`ImportPathError` that names the path and what went wrong.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable

__all__ = ["ImportPathError", "import_callable"]

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ImportPathError(ValueError):
    """An import path is malformed, its module does not import, or it names no callable."""


def _split(path: str) -> tuple[str, str]:
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr or not _DOTTED.match(module) or not _DOTTED.match(attr):
        raise ImportPathError(f"import path {path!r} is not of the form 'package.module:callable' "
                              "(or 'package.module.callable')")
    return module, attr


def import_callable(path: str, *, what: str = "object") -> Callable[..., Any]:
    """The callable `path` names. `what` words the errors ('data.factory', 'model')."""
    if not isinstance(path, str):
        raise ImportPathError(f"{what} import path must be a string 'package.module:callable', got {path!r}")
    module_name, attr = _split(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportPathError(f"{what} {path!r}: module {module_name!r} does not import "
                              f"({type(exc).__name__}: {exc}); is it installed or on PYTHONPATH?") from exc
    obj: Any = module
    for part in attr.split("."):  # 'module:Class.method' reaches nested attributes
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ImportPathError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r} "
                                  f"(it has {', '.join(public[:20]) or 'nothing public'})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportPathError(f"{what} {path!r} is a {type(obj).__name__}, not a callable")
    return obj
