"""The decisive experiment's design (physrl/experiment/decisive.py, decisive_run.py), without training.

- The bisection rule ``next_probe`` on hand-worked histories, and simulated against a deterministic threshold
  model (RS wins iff grid index >= t) for every t: the final ``bracket`` is the pair of grid neighbours around t
  and no stage-1 model takes more than ``max_probes(G)`` = ceil(log2(G + 1)) runs (a bound reached for some t,
  since G + 1 outcomes need that many yes/no answers).
- ``sqrt2_grid`` against the values round(2^(k/2)) written out by hand.
- ``DecisiveConfig`` refusals, each naming what is wrong; the shipped config and its planned organisms.
- ``DecisiveRun`` ids and organism configs; ``bisection_state`` + ``next_probe`` driven through ``sweep_arm`` and
  ``continuation_choice`` with a stand-in for ``EndStates`` (``.get(run_id) -> (share, step) or None``).
"""

import math
import re
from pathlib import Path

import pytest

from physrl.experiment import decisive_run
from physrl.experiment.decisive import (DecisiveConfig, DecisiveRun, bracket, calibration_runs, max_probes,
                                        next_probe, sqrt2_grid, stage1_models)

SHIPPED = Path(decisive_run.__file__).resolve().parents[1] / "configs" / "decisive.toml"
GRID8 = [1, 2, 3, 4, 6, 8, 11, 16]


def small_config(**changes) -> DecisiveConfig:
    """Two priors x three sweep seeds, one calibration seed, the default √2 grid to 16, K = 18."""
    base = dict(p0=[0.04, 0.16], seeds=[0, 1, 2], calibration_seeds=[100])
    base.update(changes)
    return DecisiveConfig.from_dict(base)


# ---- the bisection rule ------------------------------------------------------------------------------------
@pytest.mark.parametrize("history, expected", [
    ({}, 3),                            # (-1 + 8) // 2: start mid-grid (N = 4)
    ({3: False}, 5),                    # loss at 3: lo 3, hi 8 -> 5
    ({3: True}, 1),                     # win at 3: lo -1, hi 3 -> 1
    ({3: False, 5: True}, 4),           # lo 3, hi 5 -> 4
    ({3: True, 1: False}, 2),           # lo 1, hi 3 -> 2
    ({3: False, 5: False, 6: False}, 7),
    ({3: False, 4: True}, None),        # neighbours: N* between grid[3] and grid[4]
    ({3: True, 1: True, 0: True}, None),   # won at the grid's first point: N* below it
    ({3: False, 5: False, 6: False, 7: False}, None),  # lost at the last point: N* above the grid
])
def test_next_probe_hand_worked(history, expected):
    assert next_probe(history, 8) == expected


@pytest.mark.parametrize("history", [{2: True, 4: False}, {0: True, 7: False}, {3: True, 5: True, 4: False}])
def test_next_probe_refuses_a_win_below_a_loss(history):
    with pytest.raises(ValueError, match="win at or below a loss"):
        next_probe(history, 8)


def test_bracket_hand_worked():
    assert bracket({3: False, 4: True}, GRID8) == (4.0, 6.0)
    assert bracket({3: True, 1: True, 0: True}, GRID8) == (0.0, 1.0)
    assert bracket({3: False, 5: False, 6: False, 7: False}, GRID8) == (16.0, math.inf)
    assert bracket({}, GRID8) == (0.0, math.inf)


def _bisect(t: int, n_points: int) -> dict[int, bool]:
    """The bisection run to its end against the threshold model 'RS wins iff grid index >= t'."""
    history = {}
    while (i := next_probe(history, n_points)) is not None:
        assert i not in history and 0 <= i < n_points, (t, history, i)
        history[i] = i >= t
        assert len(history) <= n_points
    return history


@pytest.mark.parametrize("grid", [GRID8, sqrt2_grid(256), [1], [1, 2], [2, 3, 5], list(range(1, 22))])
def test_bisection_finds_every_threshold_within_max_probes(grid):
    n_points = len(grid)
    probes = []
    for t in range(n_points + 1):
        history = _bisect(t, n_points)
        want = (float(grid[t - 1]) if t > 0 else 0.0, float(grid[t]) if t < n_points else math.inf)
        assert bracket(history, grid) == want, (t, history)
        assert len(history) <= max_probes(n_points), (t, history)
        probes.append(len(history))
    assert max(probes) == max_probes(n_points)  # the bound is reached: it is the worst case, not a loose one


def test_max_probes_values():
    assert [max_probes(g) for g in (1, 2, 3, 4, 7, 8, 15, 16)] == [1, 2, 2, 3, 3, 4, 4, 5]


# ---- the grid ----------------------------------------------------------------------------------------------
def test_sqrt2_grid():
    assert sqrt2_grid(16) == [1, 2, 3, 4, 6, 8, 11, 16]
    grid = sqrt2_grid(256)
    # round(2^(k/2)) for k = 0..16: 1, 1.41, 2, 2.83, 4, 5.66, 8, 11.3, 16, 22.6, 32, 45.3, 64, 90.5, 128, 181.0, 256
    assert grid == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256]
    assert grid[-1] == 256 and all(b > a for a, b in zip(grid, grid[1:]))
    assert sqrt2_grid(15) == [1, 2, 3, 4, 6, 8, 11]
    assert sqrt2_grid(1) == [1]


# ---- DecisiveConfig ----------------------------------------------------------------------------------------
def test_small_config_defaults():
    c = small_config(p0=[0.16, 0.04, 0.16], seeds=[2, 0, 1, 0])
    assert c.p0 == [0.04, 0.16] and c.seeds == [0, 1, 2]
    assert c.n_grid == GRID8 and c.family_size == 18 and [a.name for a in c.arms] == ["adamw-group", "sgd-none"]
    assert stage1_models(c) == [(0.04, 0), (0.16, 0), (0.04, 1), (0.16, 1), (0.04, 2), (0.16, 2)]


@pytest.mark.parametrize("changes, message", [
    (dict(seeds=[0, 1, 100], calibration_seeds=[100, 101]), r"calibration_seeds \[100\] are sweep seeds too"),
    (dict(family_size=16), r"family_size must be an integer above the largest N of n_grid \(16\), got 16"),
    (dict(family_size=4, n_grid=[1, 2, 4]), r"family_size .*\(4\), got 4"),
    (dict(organism={"p0": 0.1}), r"\[organism\] may not set \['p0'\]"),
    (dict(organism={"family_size": 30, "max_steps": 10}), r"\[organism\] may not set \['family_size'\]"),
    (dict(bogus=1), r"unknown decisive config key\(s\) \['bogus'\]"),
    (dict(measured_gamma={"adamw-group": 0.1, "adam": 1.0}), r"measured_gamma names arms that are not in arms: "
                                                             r"\['adam'\]"),
])
def test_config_refusals_name_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        small_config(**changes)


def test_config_accepts_the_edges_of_those_rules():
    """The refusals above are not over-broad: K = max(n_grid) + 1, gamma for a real arm, other [organism] keys."""
    c = small_config(family_size=17, measured_gamma={"sgd-none": 1.3}, organism={"max_steps": 10})
    assert (c.family_size, c.measured_gamma, c.organism) == (17, {"sgd-none": 1.3}, {"max_steps": 10})


def test_shipped_config_and_its_planned_organisms():
    c = DecisiveConfig.from_file(SHIPPED)
    assert c.kind == "decisive" and c.n_grid == sqrt2_grid(16) and c.family_size == 18
    assert c.p0 == [0.02, 0.04, 0.08, 0.16, 0.32] and c.seeds == list(range(20))
    assert c.calibration_seeds == [100, 101] and len(c.calibration) == 4
    arms = {a.name: a for a in c.arms}
    assert list(arms) == ["adamw-group", "sgd-none"]
    assert c.measured_gamma == {"adamw-group": 0.11, "sgd-none": 1.30}

    planned = decisive_run.planned_organisms(c)
    calibration = {(a, r.run_id): r for a in arms for r in calibration_runs(c, a)}
    sweep = {(a, DecisiveRun(a, "sweep", n, p0, s).run_id): (p0, s, n)
             for a in arms for p0 in c.p0 for s in c.seeds for n in c.n_grid}
    assert len(calibration) == 2 * 2 * 4 and len(sweep) == 2 * 5 * 20 * 8
    assert set(planned) == {rid for _, rid in calibration} | {rid for _, rid in sweep}
    assert len(planned) == len(calibration) + len(sweep) == 1616

    for (arm, rid), run in calibration.items():
        o = planned[rid]
        assert o["eval_heldout"] == -1 and o["family_size"] == 18 and o["n_heldout"] == 18 - run.n_envs
        assert (o["n_envs"], o["p0"], o["seed"]) == (run.n_envs, run.p0, run.seed)
        assert o["seed"] in (100, 101) and o["family_seed"] == 1234 + run.seed
        assert (o["optimizer"], o["learning_rate"]) == (arms[arm].optimizer, arms[arm].learning_rate)
    for (arm, rid), (p0, s, n) in sweep.items():
        o = planned[rid]
        assert o["eval_heldout"] == 2 and o["family_size"] == 18 and o["n_heldout"] == 18 - n
        assert (o["n_envs"], o["p0"], o["seed"], o["family_seed"]) == (n, p0, s, 1234 + s)
        assert (o["optimizer"], o["scale_rewards"]) == (arms[arm].optimizer, arms[arm].scale_rewards)
        assert (o["max_steps"], o["trainer"]) == (200, "population")


# ---- DecisiveRun -------------------------------------------------------------------------------------------
def test_run_ids_and_stage1():
    cal = DecisiveRun("adamw-group", "calibration", 1, 0.04, 100)
    sweep = DecisiveRun("adamw-group", "sweep", 11, 0.02, 7)
    long = DecisiveRun("sgd-none", "continued", 11, 0.02, 7)
    assert cal.run_id == "adamw-group-cal-N1-p0.04-s100"
    assert sweep.run_id == "adamw-group-N11-p0.02-s7"
    assert long.run_id == "sgd-none-long-N11-p0.02-s7"
    assert sweep.stage1 == long.stage1 == DecisiveRun("sgd-none", "sweep", 2, 0.02, 7).stage1 == "p0.02-s7"


def test_run_organism():
    c = small_config(organism={"eval_heldout": 2, "max_steps": 200})
    cal = DecisiveRun("sgd-none", "calibration", 4, 0.16, 100).organism(c)
    assert cal == {"eval_heldout": -1, "max_steps": 200, "optimizer": "sgd", "scale_rewards": "none",
                   "learning_rate": 0.1, "momentum": 0.0, "n_envs": 4, "p0": 0.16, "seed": 100,
                   "family_size": 18, "family_seed": 1334}
    sweep = DecisiveRun("adamw-group", "sweep", 6, 0.04, 2).organism(c)
    assert sweep == {"eval_heldout": 2, "max_steps": 200, "optimizer": "adamw", "scale_rewards": "group",
                     "learning_rate": 2e-4, "momentum": 0.0, "n_envs": 6, "p0": 0.04, "seed": 2,
                     "family_size": 18, "family_seed": 1236}
    long = DecisiveRun("adamw-group", "continued", 6, 0.04, 2).organism(c, max_steps=1600)
    assert long == {**sweep, "max_steps": 1600}


# ---- bisection through sweep_arm, with a stand-in for the trained runs --------------------------------------
class FakeEnds:
    """``EndStates``' interface: run_id -> (end state, last eval step), None for a run not finished."""

    def __init__(self, shares: dict[str, float] | None = None, step: int = 200):
        self.shares = dict(shares or {})
        self.step = step

    def get(self, run_id):
        return (self.shares[run_id], self.step) if run_id in self.shares else None


#: a made-up threshold grid index t per stage-1 model (RS wins iff index >= t), both edges included
THRESHOLDS = {(0.04, 0): 0, (0.16, 0): 8, (0.04, 1): 3, (0.16, 1): 4, (0.04, 2): 1, (0.16, 2): 6}


def test_sweep_arm_bisects_every_stage1_model(monkeypatch, tmp_path):
    c = small_config()
    arm, grid, n_points = "sgd-none", c.n_grid, len(c.n_grid)
    ends = FakeEnds({DecisiveRun("adamw-group", "sweep", 4, 0.04, 0).run_id: 0.9})  # another arm: ignored
    trained = []

    def fake_train_planned(executor, out, jobs, progress=True, desc=""):
        assert out == tmp_path
        for run_id, organism in jobs:
            t = THRESHOLDS[(organism["p0"], organism["seed"])]
            i = grid.index(organism["n_envs"])
            assert run_id == DecisiveRun(arm, "sweep", organism["n_envs"], organism["p0"], organism["seed"]).run_id
            ends.shares[run_id] = 0.8 if i >= t else 0.2
            trained.append((organism["p0"], organism["seed"], i))
        return {}

    monkeypatch.setattr(decisive_run, "train_planned", fake_train_planned)
    rounds = decisive_run.sweep_arm(c, tmp_path, arm, ends, progress=False)

    state = decisive_run.bisection_state(c, arm, ends)
    assert set(state) == set(stage1_models(c))
    for (p0, s), history in state.items():
        t = THRESHOLDS[(p0, s)]
        assert history == _bisect(t, n_points)  # the same probes as the rule alone, no more
        assert next_probe(history, n_points) is None
        assert bracket(history, grid) == (float(grid[t - 1]) if t else 0.0, float(grid[t]) if t < n_points
                                          else math.inf)
    assert len(trained) == len(set(trained)) == sum(len(h) for h in state.values())
    assert rounds == max(len(h) for h in state.values())
    assert decisive_run.sweep_arm(c, tmp_path, arm, ends, progress=False) == 0  # a rerun trains nothing


def test_bisection_state_reads_the_threshold_strictly():
    c = small_config(threshold=0.5)
    ends = FakeEnds({DecisiveRun("sgd-none", "sweep", 4, 0.04, 1).run_id: 0.5,
                     DecisiveRun("sgd-none", "sweep", 8, 0.04, 1).run_id: 0.51,
                     DecisiveRun("sgd-none", "sweep", 6, 0.16, 2).run_id: 0.2})
    state = decisive_run.bisection_state(c, "sgd-none", ends)
    assert state[(0.04, 1)] == {3: False, 5: True}  # 0.5 does not exceed the threshold: a loss
    assert state[(0.16, 2)] == {4: False}
    assert state[(0.04, 0)] == {} and decisive_run.bisection_state(c, "adamw-group", ends)[(0.04, 1)] == {}
    assert next_probe(state[(0.04, 1)], len(c.n_grid)) == 4


# ---- continuation_choice -----------------------------------------------------------------------------------
def _sweep_id(arm, n, p0, s):
    return DecisiveRun(arm, "sweep", n, p0, s).run_id


def _finished(arm: str, shares: dict[tuple, float], n_far: int) -> dict[str, float]:
    """The given (n, p0, seed) -> share, plus ``n_far`` more finished runs far from the threshold (share 0.0)."""
    out = {_sweep_id(arm, *k): v for k, v in shares.items()}
    far = [(n, p0, s) for s in (0, 1, 2) for p0 in (0.04, 0.16) for n in GRID8 if (n, p0, s) not in shares]
    out.update({_sweep_id(arm, *k): 0.0 for k in far[:n_far]})
    return out


NEAR = {(4, 0.04, 0): 0.52, (6, 0.04, 0): 0.47, (3, 0.16, 1): 0.60, (8, 0.16, 2): 0.355, (2, 0.04, 2): 0.64,
        (11, 0.16, 0): 0.80, (16, 0.04, 1): 0.20}  # distances .02 .03 .10 .145 .14; .30 .30 outside the band


def test_continuation_picks_the_closest_within_the_band():
    c = small_config(continuation_share=0.1, continuation_band=0.15, continuation_max_runs=10)
    ends = FakeEnds(_finished("sgd-none", NEAR, n_far=30 - len(NEAR)))  # 30 finished: ceil(0.1 x 30) = 3
    chosen = decisive_run.continuation_choice(c, "sgd-none", ends)
    assert [(r.n_envs, r.p0, r.seed) for r in chosen] == [(4, 0.04, 0), (6, 0.04, 0), (3, 0.16, 1)]
    assert all(r.role == "continued" and r.arm == "sgd-none" for r in chosen)
    assert chosen[0].run_id == "sgd-none-long-N4-p0.04-s0"


def test_continuation_cap_rounds_up_and_the_band_limits():
    c = small_config(continuation_share=0.1, continuation_band=0.15, continuation_max_runs=10)
    ends = FakeEnds(_finished("sgd-none", NEAR, n_far=31 - len(NEAR)))  # 31 finished: ceil(3.1) = 4
    got = [(r.n_envs, r.p0, r.seed) for r in decisive_run.continuation_choice(c, "sgd-none", ends)]
    assert got == [(4, 0.04, 0), (6, 0.04, 0), (3, 0.16, 1), (2, 0.04, 2)]
    # every run may be continued: only the 5 within the band are, closest first
    wide = small_config(continuation_share=1.0, continuation_band=0.15, continuation_max_runs=10)
    got = [(r.n_envs, r.p0, r.seed) for r in decisive_run.continuation_choice(wide, "sgd-none", ends)]
    assert got == [(4, 0.04, 0), (6, 0.04, 0), (3, 0.16, 1), (2, 0.04, 2), (8, 0.16, 2)]
    capped = small_config(continuation_share=1.0, continuation_band=0.15, continuation_max_runs=2)
    assert len(decisive_run.continuation_choice(capped, "sgd-none", ends)) == 2
    none = small_config(continuation_share=0.0, continuation_band=0.15)
    assert decisive_run.continuation_choice(none, "sgd-none", ends) == []


def test_continuation_counts_only_this_arms_finished_runs():
    """Runs of the other arm neither count toward ceil(share x runs) nor get chosen; unfinished runs don't count."""
    c = small_config(continuation_share=0.1, continuation_band=0.15, continuation_max_runs=10)
    shares = _finished("sgd-none", NEAR, n_far=0)  # 7 finished: ceil(0.7) = 1
    shares.update(_finished("adamw-group", {(1, 0.04, 0): 0.5}, n_far=40))
    chosen = decisive_run.continuation_choice(c, "sgd-none", FakeEnds(shares))
    assert [r.run_id for r in chosen] == ["sgd-none-long-N4-p0.04-s0"]
    other = decisive_run.continuation_choice(c, "adamw-group", FakeEnds(shares))  # 41 finished: ceil(4.1) = 5
    assert [r.run_id for r in other] == ["adamw-group-long-N1-p0.04-s0"]


def test_continuation_ties_go_by_run_id():
    c = small_config(continuation_share=1.0, continuation_band=0.15, continuation_max_runs=1)
    # 0.4 and 0.6 lie equally far from 0.5 (|0.4 - 0.5| == |0.6 - 0.5| in floating point too)
    assert abs(0.4 - 0.5) == abs(0.6 - 0.5)
    ends = FakeEnds({_sweep_id("sgd-none", 8, 0.16, 0): 0.4, _sweep_id("sgd-none", 3, 0.04, 1): 0.6})
    chosen = decisive_run.continuation_choice(c, "sgd-none", ends)
    assert [r.run_id for r in chosen] == ["sgd-none-long-N3-p0.04-s1"]  # "sgd-none-N3-..." < "sgd-none-N8-..."


# ---- refusals added after a tester's trials (a design changed after the freeze; --arm) -------------------------
def _frozen_for(config, budget=200):
    from physrl.experiment.decisive import calibration_runs

    return {"arms": {a.name: {} for a in config.arms},
            "context": {"p0": list(config.p0), "grid": list(config.n_grid), "threshold": config.threshold,
                        "last_evals": config.last_evals, "budget": budget,
                        "calibration_runs": {a.name: [r.run_id for r in calibration_runs(config, a.name)]
                                             for a in config.arms}}}


@pytest.mark.parametrize("change, words", [
    (dict(threshold=0.6), "threshold 0.6 (frozen 0.5)"),
    (dict(last_evals=2), "last_evals 2 (frozen 3)"),
    (dict(n_grid=[1, 2, 4, 5]), "n_grid [1, 2, 4, 5]"),
    (dict(p0=[0.04, 0.16, 0.5]), "p0 [0.04, 0.16, 0.5]"),
    (dict(calibration=[{"n_envs": 1, "p0": 0.04}, {"n_envs": 2, "p0": 0.2}]), "calibration runs of adamw-group"),
    (dict(arms=[{"name": "adamw-group", "optimizer": "adamw", "scale_rewards": "group", "learning_rate": 2e-4},
                {"name": "sgd-batch", "optimizer": "sgd", "scale_rewards": "batch", "learning_rate": 0.1}]),
     "arms ['sgd-batch'] have no frozen predictions"),
])
def test_a_design_changed_after_the_freeze_is_refused(change, words):
    from physrl.experiment.decisive_run import check_frozen_design
    from physrl.experiment.freeze import PreregistrationError

    base = dict(p0=[0.04, 0.16], seeds=[0, 1], calibration_seeds=[100],
                calibration=[{"n_envs": 1, "p0": 0.04}, {"n_envs": 2, "p0": 0.16}], n_grid=[1, 2, 4], family_size=6)
    frozen = _frozen_for(DecisiveConfig.from_dict(base))
    check_frozen_design(DecisiveConfig.from_dict({**base, "seeds": [0, 1, 2, 3]}), frozen, 200)  # seeds may change
    with pytest.raises(PreregistrationError, match=re.escape(words)):
        check_frozen_design(DecisiveConfig.from_dict({**base, **change}), frozen, 200)
    with pytest.raises(PreregistrationError, match=re.escape("budget 400 (frozen 200)")):
        check_frozen_design(DecisiveConfig.from_dict(base), frozen, 400)


@pytest.mark.parametrize("change, words", [
    (dict(arms=[{"name": "x", "optimizer": "adamw", "scale_rewards": "group", "learning_rate": 2e-4},
                {"name": "x-long", "optimizer": "sgd", "scale_rewards": "none", "learning_rate": 0.1}]),
     "may not end in '-long' or '-cal'"),
    (dict(p0=[0.1, 0.1000001]), "shortest form"),
    (dict(fit_max_nfev=5), "fit_max_nfev must be an integer >= 10"),
    (dict(calibration_seeds=[100], calibration=[{"n_envs": 1, "p0": 0.04}]), "two or more runs"),
    (dict(continuation_share="0.1"), "continuation_share must be a number"),
    (dict(measured_gamma={"sgd-none": True}), "measured_gamma must be a table"),
])
def test_configs_whose_run_ids_or_values_cannot_work_are_refused(change, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        DecisiveConfig.from_dict({"seeds": [0], **change})


def test_last_evals_reaching_step_0_and_a_short_continuation_are_refused():
    from physrl.experiment.decisive_run import planned_organisms

    with pytest.raises(ValueError, match="would read the step-0 eval pass"):
        planned_organisms(DecisiveConfig.from_dict({"seeds": [0], "organism": {"max_steps": 40, "eval_every": 20}}))
    with pytest.raises(ValueError, match="must exceed the sweep's max_steps"):
        planned_organisms(DecisiveConfig.from_dict({"seeds": [0], "continuation_steps": 200}))


def test_arm_flag_is_checked_before_anything_runs(tmp_path, capsys):
    from physrl.experiment.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["takeoff", "--out", str(tmp_path / "t"), "--arm", "adamw-group"])
    assert exc.value.code == 2 and "--arm applies to a decisive config only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["decisive", "--out", str(tmp_path / "d"), "--arm", "bogus"])
    assert exc.value.code == 2 and "'bogus' is not an arm of this config" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()
