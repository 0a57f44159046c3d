"""Package exports loaded on first use (PEP 562), so that importing one light submodule does
not load every heavy sibling: a corpus CPU stage imports its decode and encode modules, not
torch and the depth models."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module
    (relative to ``package``) that defines it; each is imported the first time it is asked for."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:  # not an export: a submodule (``from package import _kernel``) or a typo
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
