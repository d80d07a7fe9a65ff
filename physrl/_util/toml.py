"""TOML parsing on every supported Python: ``tomllib`` (3.11+) or its backport ``tomli`` (3.10)."""

from __future__ import annotations

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 installs tomli (pyproject.toml)
    import tomli as tomllib

loads = tomllib.loads
TOMLDecodeError = tomllib.TOMLDecodeError
