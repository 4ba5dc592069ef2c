"""Lazy top-level exports (PEP 562) for the packages' public API: ``import curvtools`` or
``import harness`` loads no torch or sympy; a name is imported from its module on first use.

Example (in a package's ``__init__``)::

    __getattr__, __dir__ = lazy_exports("curvtools", {"resolve": ("curvtools.activations",
                                                                  "resolve")}, globals())
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, tuple[str, str]], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names map to ``(module,
    attribute)``; a name once loaded is stored in ``namespace`` (later lookups skip this)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = exports[name]
        value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
