"""Public names of a package loaded on first use (PEP 562), for ``physrl.sim``, ``physrl.fitting`` and
``physrl.organisms``: ``import physrl.fitting`` (and every ``--help``) starts without torch, numba or lmfit.

A leaf module: it imports nothing of physrl, so any package may use it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` (PEP 562).

    Parameters
    ----------
    package : str
        The package's ``__name__``; it must be in ``sys.modules`` already (call
        this from its ``__init__``).
    exports : dict
        Public name -> the module that owns it: relative to ``package`` when it
        starts with ``_`` (a private module), else absolute.

    Returns
    -------
    (__getattr__, __dir__)
        ``__getattr__(name)`` imports the owner, caches the value in the
        package's namespace and returns it; it raises AttributeError for a name
        not in ``exports``. ``__dir__()`` lists the namespace and every export.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        private = module.startswith("_")  # a private module of the package, else an absolute name
        owner = importlib.import_module(f".{module}" if private else module, package if private else None)
        value = getattr(owner, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
