"""Issue 18, item 4: the local path's observation floor b_lo belongs to the stage-1 model, measured at its step 0
(docs/model.md §7, "Floors are measured"), not computed from the producer's target b0.

On the committed scaling sweep (data/reference/scaling, 120 runs of 18 stage-1 models) the declared floor
b_lo = 0.222 (from the target b0 = 0.3) lies above 312 of the 666 step-0 trained-environment cells (46.8%);
the floors measured per stage-1 model lie above 87 (13.1%), which is what the cells' sampling noise alone
gives (13.5% [11.1%, 15.8%] with GRPO groups resampled within each stage-1 model, the commit that added
this file)."""

from pathlib import Path

import numpy as np
import pytest

from physrl import fitting
from fitting._problem import FitSpec, Problem
from fitting._step0 import declared_floor_rule, floor_from_b0, measure_step0

SCALING = Path(__file__).resolve().parents[1] / "data" / "reference" / "scaling" / "runs"
DECLARED = 0.222222  # (0.3 - 0.1) / 0.9, rounded as the organisms write it


@pytest.fixture(scope="module")
def sweep():
    runs = fitting.load_runs(sorted(SCALING.glob("sweep-*")))
    return runs, fitting.observations(runs)


def _step0_cells(runs, obs):
    """(stage-1 key, b̂ of one trained env at step 0) for every sweep run's step-0 eval cell."""
    key = {r.run_id: fitting.stage1_model(r) for r in runs}
    trained = {(r.run_id, e.env_id) for r in runs for e in r.environments if e.w > 0}
    ev = obs[(obs.phase == "eval") & (obs.step == 0) & (obs.b_n > 0)]
    ev = ev[[(r, e) in trained for r, e in zip(ev.run_id, ev.env_id)]]
    return ev.run_id.map(key).to_numpy(), ev.b_hat.to_numpy(float)


def test_measured_floors_sit_where_the_step0_cells_are(sweep):
    runs, obs = sweep
    keys, b_hat = _step0_cells(runs, obs)
    assert len(b_hat) == 666
    assert int((b_hat < DECLARED).sum()) == 312  # the 47%, below the floor computed from the target b0
    floors, notes = fitting.stage1_floors(runs, obs)
    assert notes == [] and len(floors) == 18
    for key, floor in floors.items():  # every run of the model shares it; the rule on the pooled b̂0
        members = [r for r in runs if fitting.stage1_model(r) == key]
        assert sorted(floor.runs) == sorted(r.run_id for r in members) and len(members) in (6, 7)
        assert floor.sigma_y0 == pytest.approx(0.1, abs=1e-5)
        assert floor.declared_b_lo == pytest.approx(DECLARED)
        assert floor.b_lo == pytest.approx(max(0.0, (floor.b0.value - 0.1) / 0.9), abs=1e-5)
        assert floor.b_lo_interval[0] <= floor.b_lo <= floor.b_lo_interval[1]
        assert floor.b_lo_interval[1] - floor.b_lo_interval[0] < 0.1  # ~1,000 local rollouts per model
        # GRPO groups as the units of b̂0's standard error: wider than counting rollouts as independent
        rows = obs[obs.run_id.isin(floor.runs) & (obs.step == 0) & (obs.phase == "eval")]
        assert floor.b0.scale >= measure_step0(rows, "b", "b0").scale
    measured = np.array([floors[k].b_lo for k in keys])
    assert 0.0 <= measured.min() and measured.max() < 0.23
    share = float((b_hat < measured).mean())
    assert share == pytest.approx(87 / 666, abs=1e-9)
    # the lowest stage-1 model measured below chance (b̂0 0.086 < σ(y0) = 0.1): its floor is 0, not negative
    assert min(f.b0.value for f in floors.values()) == pytest.approx(0.0861, abs=1e-3)
    assert min(f.b_lo for f in floors.values()) == 0.0


def test_the_fit_reads_the_stage1_floor_by_default_and_the_declared_one_on_request(sweep):
    runs, obs = sweep
    some = [r for r in runs if Path(r.source).name.startswith(("sweep-N2-p0.1", "sweep-N1-p0.1"))]
    assert len(some) == 12  # six stage-1 models, two runs each
    some = some[::2] + some[1:2]
    sub = obs[obs.run_id.isin([r.run_id for r in some])]
    floors, _ = fitting.stage1_floors(runs, obs)
    measured = Problem.build(some, sub, FitSpec(), floors)
    assert FitSpec().observation == "stage1"
    for i, run in enumerate(some):
        n = len(run.environments)
        assert measured.bounds["b_lo"][i, :n] == pytest.approx(floors[fitting.stage1_model(run)].b_lo)
        assert measured.bounds["a_lo"][i, :n] == pytest.approx(0.05)  # chance copying, not a target: unchanged
    assert any("measured per stage-1 model" in n for n in measured.notes)
    declared = Problem.build(some, sub, FitSpec(observation="manifest"))
    assert np.allclose(declared.bounds["b_lo"], DECLARED)
    assert declared.floors == {}
    # measured on these runs alone, the floor of a model is the pooled b̂0 of the runs given
    alone = Problem.build(some[:1], sub[sub.run_id == some[0].run_id], FitSpec())
    own = measure_step0(sub[(sub.run_id == some[0].run_id) & (sub.step == 0) & (sub.phase == "eval")], "b", "b0")
    assert alone.bounds["b_lo"][0, 0] == pytest.approx(floor_from_b0(own.value, 0.1, 1.0), abs=1e-5)


def test_a_start_below_the_declared_floor_is_no_longer_clipped(sweep):
    """A run whose stage-1 model measured b̂0 = 0.15 at step 0: under the declared floor 0.222 its measured
    start was clipped up to the floor; under its model's floor the prediction starts at its measurement."""
    runs, obs = sweep
    cal = fitting.load_runs(sorted(SCALING.glob("cal-*")))
    run = next(r for r in runs if Path(r.source).name.startswith("sweep-N2-p0.1")
               and fitting.stage1_model(r).startswith("dccfcd01"))
    own = measure_step0(obs[(obs.run_id == run.run_id) & (obs.step == 0) & (obs.phase == "eval")], "b", "b0")
    assert own.value < DECLARED - 0.03
    floors, _ = fitting.stage1_floors(runs, obs)
    for observation, start_at_measurement in (("stage1", True), ("manifest", False)):
        fit = fitting.fit(cal, transfer="homogeneous", phases=("eval",), observation=observation, n_starts=1)
        pred = fitting.predict(fit, run, n_star=False, n_samples=8, seed=0, level=0.9, start="measured",
                               floors=floors)
        b_start = float(np.mean(pred.mean["b"][0]))
        if start_at_measurement:
            assert b_start == pytest.approx(own.value, abs=1e-6)
        else:
            assert b_start > DECLARED > own.value + 0.03


def test_logs_without_a_target_keep_their_manifest_floor(tmp_path):
    bounds = {"a_lo": 0.05, "a_hi": 0.5, "b_lo": 0.2, "b_hi": 1.0}
    fitting.synthesize(tmp_path / "s", n_envs=2, n_heldout=0, seed=3, observation=bounds)
    run = fitting.load_runs([tmp_path / "s"])[0]
    assert declared_floor_rule(run) is None
    floors, notes = fitting.stage1_floors([run], fitting.observations([run]))
    assert floors == {} and "kept from the manifest" in notes[0]
    problem = Problem.build([run], fitting.observations([run]), FitSpec())
    assert np.allclose(problem.bounds["b_lo"], 0.2)


def test_the_rule_is_the_families_own_and_refuses_a_bad_latent():
    assert floor_from_b0(0.3, 0.1, 1.0) == pytest.approx(DECLARED, abs=1e-6)  # the target b0 gives the declared
    assert floor_from_b0(0.05, 0.1, 1.0) == 0.0
    with pytest.raises(ValueError, match="sigma_y0"):
        floor_from_b0(0.3, 1.0, 1.0)
