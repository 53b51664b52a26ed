"""Lazy package exports (PEP 562), as transformers' and TRL's ``_LazyModule``: ``import rmplugins`` (and its
command line's ``--help``) costs milliseconds, and a name's module (torch, transformers, FastAPI) is imported
when the name is first used."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, table: dict[str, str], extra: tuple[str, tuple[str, ...]] | None = None,
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in module ``table[name]`` (relative
    names start with a dot). ``extra``: (pip extra, its packages): a missing one says which extra to install."""

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            module = importlib.import_module(table[name], package)
        except ModuleNotFoundError as err:
            if extra is None or (err.name or "").split(".")[0] not in extra[1]:
                raise
            raise ModuleNotFoundError(f"{package}.{name} needs rmplugins' {extra[0]!r} extra: pip install "
                                      f"'rmplugins[{extra[0]}]' ({err})", name=err.name) from err
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)  # found directly next time
        return value

    def __dir__() -> list[str]:
        return sorted(set(table) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
