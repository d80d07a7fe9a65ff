"""JSON without NaN: what every file ``fitting`` (and the experiment) writes goes through here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_safe(x):
    """A copy of ``x`` that ``json.dumps`` writes as strict JSON.

    Dicts and lists are walked (dict keys become str), numpy scalars become
    Python numbers, and NaN / ±inf become ``None`` (null), so no NaN leaves a
    file silently as a bare ``NaN`` token.
    """
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename: ``contract.atomic_write_bytes``).

    A kill mid-write leaves the previous file whole (a rerun into the same folder never loses a result
    to a half-written one).
    """
    from physrl.contract import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, doc) -> None:
    """``json_safe(doc)`` as indented strict JSON, written atomically (:func:`write_text`)."""
    write_text(path, json.dumps(json_safe(doc), indent=2))
