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
    # issue 18 changed the statistics deliberately (summary.json re-analysed then): intervals resample stage-1
    # models, the slope censors replicates beyond the grid, scores carry prospective baselines; "replication"
    # (the unit and the random-intercept ICC) and the frozen forecast's agreement were added
    for key in ("scaling", "scores", "cells", "preregistration"):
        _close(again[key], committed[key], key)
    # the mixed model is a variational fit (an optimizer): its refit agrees to ~1e-6, not to the last bit
    _close(again["replication"], committed["replication"], "replication", rel=1e-4)
    _close(again["agreement"]["frozen_forecast"], committed["agreement"]["frozen_forecast"], "agreement")
    assert committed["replication"]["unit"] == "stage-1 model" and committed["replication"]["clusters"] == 18
    assert committed["scores"]["bootstrap"]["unit"] == "stage-1 model"
    assert committed["scaling"]["observed_slope"]["share_undefined"] == 0.0
    assert committed["agreement"]["per_run_prediction"]["name"] == "per-run prediction's agreement"
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


POPULATION = REF.parent / "scaling-population"


def test_the_population_trainers_scaling_run_reanalyses_to_its_summary_and_pairs_with_the_trl_one():
    """data/reference/scaling-population (the same experiment, trainer = "population"): its logs re-analysed
    reproduce its summary's N*, cells and slope, and paired with the TRL reference by run (same stage-1 model)
    its end states agree: win/loss in >= 118 of 120 sweep runs at 400 steps, cells within 1 run."""
    import pandas as pd

    from physrl import fitting
    from physrl.experiment.config import ExperimentConfig
    from physrl.experiment.runs import SWEEP, plan_runs
    from physrl.experiment.scaling import outcomes_table

    committed = json.loads((POPULATION / "summary.json").read_text())
    again = reanalyse(POPULATION)
    for key in ("scaling", "cells", "preregistration"):
        _close(again[key], committed[key], key)
    cfg = ExperimentConfig.from_file(POPULATION / "experiment.json")
    plan = {r.run_id: r for r in plan_runs(cfg, SWEEP)}

    def outcomes(folder):
        loaded = {r.source.name: r for r in fitting.load_runs([folder / "runs" / k for k in plan])}
        runs = {k: loaded[k] for k in plan}
        table = outcomes_table(fitting.observations(list(runs.values())), runs, plan, [400], cfg.threshold)
        return table.set_index("run_id").loc[list(plan)], runs

    mine, mruns = outcomes(POPULATION)
    theirs, truns = outcomes(REF)
    assert all(mruns[k].manifest.organisms["stage1"]["key"] == truns[k].manifest.organisms["stage1"]["key"]
               for k in plan)
    assert all(mruns[k].manifest.organisms["trainer"]["name"] == "population" for k in plan)
    assert int((mine.win == theirs.win).sum()) >= 118
    cells = pd.DataFrame({"a": mine.win, "b": theirs.win, "p0": mine.p0, "n": mine.n_envs}).groupby(["p0", "n"]).sum()
    assert (cells.a - cells.b).abs().max() <= 1
