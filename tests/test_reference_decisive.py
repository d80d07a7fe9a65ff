"""The committed decisive-experiment reference (data/reference/decisive): re-analysed from its committed eval
counts (no training, no fit), it reproduces its committed summary; its frozen predictions match the hash
recorded before the sweep; and every stage-1 model's runs are the ones the pre-registered bisection rule
chooses given their outcomes."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from physrl.experiment import freeze as _freeze
from physrl.experiment.decisive import DecisiveConfig, next_probe
from physrl.experiment.decisive_analysis import analyse_decisive

REF = Path(__file__).resolve().parents[1] / "data" / "reference" / "decisive"
#: the random-intercept ICC is a variational fit (an optimizer): its refits agree to ~1e-6, not to the last bit
ICC_REL = 1e-4


def _close(a, b, where="summary", rel=1e-9):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}", ICC_REL if k == "icc" else rel)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", rel)
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), \
            f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _config() -> DecisiveConfig:
    return DecisiveConfig.from_dict(json.loads((REF / "experiment.json").read_text()))


def test_committed_predictions_were_frozen_before_the_sweep():
    registration, frozen = _freeze.verify(REF)
    committed = json.loads((REF / "summary.json").read_text())
    pre = committed["preregistration"]
    assert pre["sha256"] == registration.sha256 == hashlib.sha256((REF / "predictions.json").read_bytes()).hexdigest()
    assert pre["sweep_logs_read_after"] is True and pre["late_runs"] == []
    config = _config()
    assert not set(config.seeds) & set(config.calibration_seeds)
    for arm in committed["arms"]:  # every cell the bisection could visit has a frozen forecast
        cells = {(c["p0"], c["n_envs"]) for c in frozen["arms"][arm["name"]]["cells"]}
        assert cells == {(p, n) for p in config.p0 for n in config.n_grid}


def test_every_stage1_model_followed_the_bisection_rule():
    config = _config()
    outcomes = pd.read_csv(REF / "outcomes.csv")
    index = {n: i for i, n in enumerate(config.n_grid)}
    for (arm, p0, seed), g in outcomes.groupby(["arm", "p0", "seed"]):
        won = {index[int(r.n_envs)]: bool(r.win) for r in g.itertuples()}
        replay, hist = [], {}
        while (i := next_probe(hist, len(config.n_grid))) is not None:
            assert i in won, f"{arm} p0={p0} seed={seed}: the rule asks for N = {config.n_grid[i]}, never trained"
            replay.append(i)
            hist[i] = won[i]
        assert sorted(replay) == sorted(won), f"{arm} p0={p0} seed={seed}: runs {sorted(won)} != rule {replay}"


@pytest.mark.slow  # ~3-8 min of CPU (the ICC's 200 variational refits per arm); the tiny end-to-end run in
# tests/test_decisive_analysis.py covers the same analysis path, counts-only re-analysis included
def test_reanalysis_of_the_committed_counts_reproduces_the_summary(tmp_path):
    for p in REF.iterdir():
        if p.is_file() and p.suffix in (".json", ".csv"):
            shutil.copy2(p, tmp_path / p.name)
    shutil.copytree(REF / "fit", tmp_path / "fit")
    committed = json.loads((REF / "summary.json").read_text())
    again = analyse_decisive(_config(), tmp_path, progress=False)
    for key in ("arms", "arm_difference", "preregistration", "step0", "continuation", "verdicts", "complete"):
        _close(json.loads(json.dumps(again[key])), committed[key], key)
