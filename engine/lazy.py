"""A package's public names, imported when first used (a module ``__getattr__``, PEP 562).

A package ``__init__`` names its exports twice: as imports under ``if TYPE_CHECKING:`` (what
mypy and readers see) and, for the interpreter, as ``exports(__name__, homes)``: each module
with the names it gives. Importing the package, or any module inside it, then runs none of
those modules: the command line parses its arguments without the HTTP client, and
``from engine import Uploader`` loads what an upload needs and nothing else. The two lists are
kept equal by ``tests/unit/test_layout.py``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose names live in the modules of
    ``homes`` (a module -> its names, separated by spaces)."""
    where = {name: module for module, names in homes.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:  # a submodule (``from engine import cli``): the import system's
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # once: the next lookup finds a global
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
