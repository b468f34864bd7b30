"""Names a package exports but imports only on first use (PEP 562), so importing the package
(the CLI does, for ``hybrid-hpo --help``) loads no heavy library."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` in ``exports`` comes from the module
    ``exports[name]``, imported when the name is first used; any other name is an AttributeError."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
