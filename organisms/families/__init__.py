"""The built-in environment families, and how a config's ``env_family`` resolves to a family class.

Each built-in family implements the protocol of :mod:`physrl.organisms._family` exactly as a user's family does
(docs/environments.md): :mod:`.digit_map` is the one built in today. A new family is a module (or package) here,
registered by name in :func:`registered_families`; a user's own family needs no registration
(``env_family = "mypkg.envs:MyFamily"``).

Room: organisms; may import: contract, sim, fitting and its own room.
"""

from __future__ import annotations

import importlib
from typing import Any

from physrl.organisms._config import OrganismConfig
from physrl.organisms._family import (COLUMN_TYPES, DEFAULT_FAMILY, RESERVED, EnvironmentFamily,
                                      check_family_name)

from .digit_map import DigitMapFamily


def registered_families() -> dict[str, type]:
    """Families known by a short name (``env_family = "digit-map"``)."""
    return {DEFAULT_FAMILY: DigitMapFamily}


def family_class(value: str) -> type:
    """The family class config field ``env_family`` names (a registered name or ``module:Class``).

    Raises
    ------
    ValueError
        The module cannot be imported, has no such attribute, or it is not an
        :class:`EnvironmentFamily` subclass (naming the field and the reason).
    """
    check_family_name(value)
    known = registered_families()
    if value in known:
        return known[value]
    module_name, _, attr = value.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"config field 'env_family' = {value!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"config field 'env_family' = {value!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, EnvironmentFamily)):
        raise ValueError(f"config field 'env_family' = {value!r}: {obj!r} is not a subclass of "
                         "physrl.organisms.EnvironmentFamily")
    return obj


def make_family(config: OrganismConfig) -> EnvironmentFamily:
    """The environment family of ``config`` (field ``env_family``), checked against the protocol.

    Raises
    ------
    ValueError
        A bad ``env_family``, or a family that breaks the protocol (bad column
        types, reserved column names, wrong number of environments, no words).
    """
    family = family_class(config.env_family)(config)
    where = f"env_family {config.env_family!r}"
    if len(family.envs) != config.n_family:
        raise ValueError(f"{where}: {len(family.envs)} environments for n_envs + n_heldout = {config.n_family}")
    bad = {k: v for k, v in family.columns.items() if v not in COLUMN_TYPES}
    if bad:
        raise ValueError(f"{where}: column types {bad}; allowed {list(COLUMN_TYPES)}")
    clash = sorted(set(family.columns) & set(RESERVED))
    if clash:
        raise ValueError(f"{where}: column names {clash} are reserved")
    if not family.words():
        raise ValueError(f"{where}: words() is empty")
    return family
