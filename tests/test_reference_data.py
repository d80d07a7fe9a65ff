"""The committed reference logs (data/reference/demo): valid per docs/rollouts.md, and
`physrl fit` on them reproduces the fitted values stored beside them."""

import json
from pathlib import Path

import numpy as np
import pytest

from physrl import fitting
from physrl.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "demo"
RUNS = sorted(p for p in REFERENCE.iterdir() if (p / "manifest.json").exists())


def test_reference_runs_follow_the_contract():
    runs = fitting.load_runs(RUNS)
    assert len(runs) == 6
    obs = fitting.observations(runs)
    for run in runs:
        assert run.finished
        rows = obs[(obs.run_id == run.run_id) & (obs.phase == "eval")]
        assert set(rows[rows.step == 0].env_id) == set(run.env_ids)  # step 0 measured on every env
        assert int(run.rollouts.step.max()) == run.manifest.steps == 400


def test_fit_on_reference_reproduces_the_stored_values(tmp_path):
    """Identified parameters agree within optimizer noise; evaluation counts and unidentified values are
    never compared (they differ between machines without meaning anything)."""
    stored = json.loads((REFERENCE / "fit" / "fit.json").read_text())
    cal = [str(p) for p in RUNS if p.name.startswith("cal-")]
    code = main(["fit", *cal, "--out", str(tmp_path), "--no-figures", "--no-progress",  # as data/reference/README.md
                 "--transfer", stored["spec"]["transfer"], "--step0", stored["spec"].get("step0", "fixed"),
                 "--observation", stored["spec"].get("observation", "manifest")])
    assert code == 0
    fresh = json.loads((tmp_path / "fit.json").read_text())
    assert stored["converged"] and fresh["converged"]
    compared = 0
    for name, par in stored["params"].items():
        if not (par["identified"] and par["vary"]):
            continue
        new = fresh["params"][name]
        assert new["identified"], name
        spread = stored["diagnostics"]["spread"].get(name, [par["value"], par["value"]])
        tol = 0.25 * par["stderr"] + (spread[1] - spread[0]) + 1e-9
        assert abs(new["value"] - par["value"]) <= tol, (name, new["value"], par["value"], tol)
        compared += 1
    assert compared >= 4  # time_scale, alpha_y, c_z, c_y (p0, a0, b0 are held at their step-0 measurement)
    assert fresh["dispersion"] == pytest.approx(stored["dispersion"], rel=0.05)
    for row in fresh["initial_state"]:  # fitted p0, a0, b0 inside their step-0 measurement intervals
        assert row["inside"], row
