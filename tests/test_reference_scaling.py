"""The committed scaling-law reference run (data/reference/scaling): its logs, re-analysed
here without training or fitting, reproduce its committed summary, and its frozen
predictions still match the hash recorded when they were written."""

import json
import math
from pathlib import Path

import pytest

from physrl.experiment import freeze as _preregistration
from physrl.experiment import reanalyse

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "scaling"
#: observed_n_star keys added after the reference was committed (how to quote N* and from which estimator)
ADDED_OBSERVED_KEYS = ("estimator", "headline", "headline_basis")


def _close(a, b, where="summary", rel=1e-9):
    """Recursive equality with floats compared within ``rel`` (JSON round trips keep them exact)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", rel)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", rel)
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), \
            f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_committed_predictions_are_the_frozen_ones():
    registration, frozen = _preregistration.verify(REF)
    committed = json.loads((REF / "summary.json").read_text())
    assert committed["preregistration"]["sha256"] == registration.sha256
    assert committed["preregistration"]["sweep_logs_read_after"] is True
    assert frozen["context"]["calibration_runs"] and not set(committed["scaling"]["calibration_seeds"]) \
        & set(committed["scaling"]["seeds"])


def test_reanalysis_of_the_committed_logs_reproduces_the_committed_summary():
    committed = json.loads((REF / "summary.json").read_text())
    again = reanalyse(REF)
    for key in ("scaling", "scores", "cells", "preregistration"):
        _close(again[key], committed[key], key)
    for p0, entry in committed["observed_n_star"].items():
        now = dict(again["observed_n_star"][p0])
        # the words (estimator, headline) are checked for what they say, whether or not the committed
        # summary already has them (it is extended, never renamed); every other committed key must
        # come back with its value
        words = {k: now.pop(k) for k in ADDED_OBSERVED_KEYS if k in now}
        _close(json.loads(json.dumps(now)), {k: v for k, v in entry.items() if k not in ADDED_OBSERVED_KEYS},
               f"observed_n_star.{p0}")
        assert words["estimator"].startswith("logistic 50% point")
        assert words["headline"] and "nan" not in words["headline"] and "None" not in words["headline"]
    assert len(committed["scaling"]["p0"]) >= 3 and len(committed["scaling"]["seeds"]) >= 3
    assert all(e["n_seeds"] >= 3 for e in committed["observed_n_star"].values())
