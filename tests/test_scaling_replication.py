"""Issue 18, the experiment's statistics: the stage-1 model is the unit of replication (cluster bootstrap,
random-intercept ICC), the slope's interval uses every replicate (censored at the grid's edges), and the
frozen forecasts are scored against prospective baselines as well as the hindsight base rate."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from physrl.experiment import analysis as _analysis
from physrl.experiment import replication as _replication
from physrl.experiment.scaling import _replicate_n_star, firth_logit, n_star_by_p0, slope_with_interval


def _anticorrelated_design(n_seeds=20, n_values=(2, 4, 8, 16)):
    """Two p0; each (p0, seed) is one stage-1 model whose runs all win or all lose; seed s wins at p0 0.1 exactly
    when it loses at p0 0.2 (the seeds' outcomes do not carry across p0: here they are perfectly opposed)."""
    rows = []
    for s in range(n_seeds):
        y = s % 2
        for p0, win in ((0.1, y), (0.2, 1 - y)):
            for n in n_values:
                rows.append({"p0": p0, "n_envs": n, "seed": s, "budget": 100, "win": win,
                             "cluster": f"stage1-{p0:g}-{s}"})
    return pd.DataFrame(rows)


def _constant_forecast(q, n_values=(2, 4, 8, 16)):
    return {"cells": [{"p0": p0, "n_envs": n, "budget": 100, "p_win": q} for p0 in (0.1, 0.2) for n in n_values]}


def _width(iv):
    return iv[1] - iv[0]


def test_scores_resample_stage1_models_not_seeds_and_widen_by_the_expected_factor():
    """Clusters carry all the variance. Brier of the constant forecast 0.3 is the mean over p0 of each stratum's
    mean of (0.3 − y)² ∈ {0.09, 0.49} (SD 0.2 per stage-1 model): over 20 stage-1 models per p0 its bootstrap SD
    is 0.2/√40, a 95% width of 2·1.96·0.2/√40 = 0.124. Resampling seeds jointly over p0 (the old unit) saw none of
    it (each seed's two p0 cancel: width 0); resampling runs sees 1/√4 of it (4 runs per stage-1 model)."""
    outcomes = _anticorrelated_design()
    frozen = _constant_forecast(0.3)
    grid = {0.1: [2, 4, 8, 16], 0.2: [2, 4, 8, 16]}
    s = _analysis.score(frozen, outcomes, 100, grid)
    assert s.bootstrap["unit"] == "stage-1 model" and s.bootstrap["units"] == 40
    assert s.brier == pytest.approx(0.29)
    expected = 2 * 1.96 * 0.2 / math.sqrt(40)
    assert _width(s.interval_95["brier"]) == pytest.approx(expected, rel=0.2)
    naive = _analysis.score(frozen, outcomes, 100, grid, unit="run")
    assert naive.bootstrap == {"unit": "run", "units": 160, "replicates": _analysis.SCORE_BOOTSTRAP, "strata": "p0"}
    assert _width(s.interval_95["brier"]) / _width(naive.interval_95["brier"]) == pytest.approx(2.0, rel=0.2)


def test_n_star_bootstrap_resamples_each_p0s_stage1_models():
    """At p0 0.1 half the stage-1 models win at every N and half lose at every N: resampled by stage-1 model, the
    replicates' win shares vary, and N* falls below or above the grid in both directions (a replicate whose
    logistic is flat is censored by its win share); the old joint seed resampling paired the opposed p0 and gave
    the same."""
    outcomes = _anticorrelated_design(n_seeds=6)
    ests, reps, p0s, _ = n_star_by_p0(outcomes, 100, n_boot=400, seed=3)
    est = ests[0]
    assert est.bootstrap["unit"] == "stage-1 model" and est.bootstrap["clusters"] == 6
    # every replicate is flat in N (each stage-1 model wins or loses at all N): censored by its win share
    assert est.bootstrap["share_above_grid"] + est.bootstrap["share_below_grid"] == pytest.approx(1.0)
    # P(a resample of 6 stage-1 models with 3 winners has < half winners) = P(Bin(6, ½) < 3) = 22/64
    assert est.bootstrap["share_above_grid"] == pytest.approx(22 / 64, abs=0.06)


def test_a_flat_replicate_is_censored_at_the_edge_its_win_share_points_to():
    log_n = np.log([2.0, 4.0, 8.0, 2.0, 4.0, 8.0])
    assert _replicate_n_star(log_n, np.array([1.0, 0, 0, 0, 0, 0])) == (math.inf, True)
    assert _replicate_n_star(log_n, np.array([1.0, 1, 0, 1, 1, 1])) == (0.0, True)
    value, undefined = _replicate_n_star(log_n, np.array([0.0, 1, 1, 0, 0, 1]))
    assert not undefined and 2 < value < 8


def test_the_slope_interval_censors_replicates_beyond_the_grid_instead_of_dropping_them():
    """N* = 8, 4, 2 at p0 0.05, 0.1, 0.2 (slope −1) in 70 replicates; in 30 the N* at p0 0.05 is above the grid
    (2..16), censored at 16: slope (ln 2 − ln 16)/(2 ln 2) = −1.5. Dropped, the interval was [−1, −1] over 70%
    of the replicates; censored, it is [−1.5, −1] over all of them, with 30% censored."""
    p0s = [0.05, 0.1, 0.2]
    reps = np.array([[8.0, 4.0, 2.0]] * 70 + [[math.inf, 4.0, 2.0]] * 30)
    old = slope_with_interval(p0s, [8, 4, 2], reps, "test")
    assert old.share_undefined == pytest.approx(0.3) and old.interval_95 == pytest.approx([-1.0, -1.0])
    new = slope_with_interval(p0s, [8, 4, 2], reps, "test", edges=[(2, 16), (1, 12), (1, 8)])
    assert new.value == pytest.approx(-1.0)
    assert new.share_undefined == 0.0 and new.share_censored == pytest.approx(0.3)
    assert new.interval_95 == pytest.approx([-1.5, -1.0])


def _random_intercept_data(sd, n_clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p0, (a, b) in ((0.1, (-3.0, 2.0)), (0.2, (-4.0, 3.0))):
        for c in range(n_clusters):
            u = rng.normal(0, sd)
            for n in (1, 2, 3, 4, 6, 8, 12, 16):
                win = rng.random() < expit(a + b * math.log(n) + u)
                rows.append({"p0": p0, "n_envs": n, "seed": c, "budget": 400, "win": int(win),
                             "cluster": f"{p0}-{c}"})
    return pd.DataFrame(rows)


def test_random_intercept_logit_recovers_the_icc_of_simulated_stage1_models():
    """σ = 2 per stage-1 model: latent ICC 4/(4 + π²/3) = 0.549; 80 stage-1 models of 8 runs each, three
    simulated sets. Variational Bayes understates σ somewhat (measured here: 0.41, 0.51, 0.56, mean 0.49), so the
    mean over sets must come within 0.1 of the truth, and every cluster-bootstrap interval must exclude 0.15
    (the stage-1 models carry a clear share) and reach 0.45."""
    truth = 4 / (4 + math.pi ** 2 / 3)
    fits = [_replication.random_intercept_logit(_random_intercept_data(2.0, seed=k), 400, n_boot=20, seed=1)
            for k in range(3)]
    assert all(f.n_clusters == 80 and f.n_runs == 640 for f in fits)
    assert np.mean([f.icc for f in fits]) == pytest.approx(truth, abs=0.1)
    for f in fits:
        lo, hi = f.icc_interval_95
        assert 0.15 < lo <= f.icc <= hi and hi > 0.45
        assert f.fixed["p0=0.2: log N"]["value"] == pytest.approx(3.0, abs=1.0)
        assert f.gee["working_correlation"] > 0.1
        assert f.cluster.startswith("stage-1 model")


def test_random_intercept_logit_finds_little_icc_without_stage1_variance():
    fit = _replication.random_intercept_logit(_random_intercept_data(0.0, seed=2), 400, n_boot=0)
    assert fit.icc < 0.15
    assert abs(fit.gee["working_correlation"]) < 0.1


def test_no_icc_when_every_stage1_model_has_one_run():
    """The default demo: each N's family (no held-out envs) has its own stage-1 model, four models of one run
    each; a random intercept cannot be told from a run's own noise (the demo summary said 'latent ICC 0.22
    [0.19, 0.28] over 4 stage-1 models')."""
    rows = pd.DataFrame({"p0": 0.1, "n_envs": [1, 2, 4, 8], "seed": 0, "budget": 400, "win": [0, 0, 0, 1],
                         "cluster": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="every stage-1 model has one run"):
        _replication.random_intercept_logit(rows, 400, n_boot=0)


def test_scores_carry_prospective_baselines_and_label_the_base_rate_hindsight():
    """The constant 0.5 scores Brier 0.25 exactly; the calibration logistic is Firth's fit to the calibration
    runs alone, evaluated at each sweep run's N; only the base rate is not prospective."""
    wins = [(0, 1, 1), (0, 0, 1), (1, 1, 1), (0, 1, 1)] * 3  # 12 stage-1 models: enough for an interval
    outcomes = pd.DataFrame([{"p0": 0.1, "n_envs": n, "seed": s, "budget": 100, "win": w}
                             for s, ws in enumerate(wins) for n, w in zip((2, 4, 8), ws)])
    calibration = pd.DataFrame([{"p0": 0.1, "n_envs": n, "seed": 100 + i, "budget": 100, "win": w}
                                for i, (n, w) in enumerate(((1, 0), (1, 0), (2, 0), (2, 1)))])
    frozen = {"cells": [{"p0": 0.1, "n_envs": n, "budget": 100, "p_win": q} for n, q in ((2, 0.2), (4, 0.6), (8, 0.4))]}
    s = _analysis.score(frozen, outcomes, 100, {0.1: [2, 4, 8]}, calibration=calibration)
    y = outcomes.win.to_numpy(float)
    assert s.brier_half == pytest.approx(0.25) and s.log_loss_half == pytest.approx(math.log(2))
    beta = firth_logit(np.column_stack([np.ones(4), np.log([1.0, 1, 2, 2])]), np.array([0.0, 0, 0, 1])).beta
    q = expit(beta[0] + beta[1] * np.log(outcomes.n_envs.to_numpy(float)))
    assert s.brier_calibration == pytest.approx(np.mean((q - y) ** 2))
    assert s.calibration_logistic["slope"] == pytest.approx(beta[1]) and s.calibration_logistic["runs"] == 4
    assert {k: v["prospective"] for k, v in s.baselines.items()} == {
        "base_rate": False, "median_n": True, "half": True, "calibration": True}
    assert "hindsight" in s.baselines["base_rate"]["label"]
    for name in ("half", "calibration"):
        lo, hi = s.interval_95[f"brier_minus_{name}"]
        assert lo <= getattr(s, "brier") - getattr(s, f"brier_{name}") <= hi
    # the frozen forecast's agreement: it calls RS wins (P > ½) at N = 4 only; right at N = 2 in seeds 0, 1, 3,
    # at N = 4 in seeds 0, 2, 3, at N = 8 never (each pattern three times)
    calls = (outcomes.n_envs == 4).to_numpy()
    assert s.frozen_agreement_count == int((calls == (y > 0.5)).sum()) == 18
    assert s.frozen_agreement == pytest.approx(18 / 36)
