"""JSON without NaN: what every file ``fitting`` (and the experiment) writes goes through here."""

from __future__ import annotations

import math

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
