"""fitting._takeoff: early growth rate of logit p per run, and the selection exponent γ per arm (issue 19).

Synthetic eval counts with known rates and a known γ: exact recovery without noise, the standard error's coverage,
the takeoff window, agreement with statsmodels' binomial GLM, and γ recovered within its bootstrap interval.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from physrl import fitting
from physrl.fitting import selection_exponent, takeoff_rate, trained_eval_counts


def counts(steps, p, n, a=0.45, b=0.3, rng=None):
    """An eval-count table: RS share p (per step) drawn binomially from n (or k = p n exactly without rng)."""
    steps, p = np.asarray(steps), np.broadcast_to(np.asarray(p, float), np.shape(steps))
    k = rng.binomial(n, p) if rng is not None else p * n
    b = np.broadcast_to(np.asarray(b, float), np.shape(steps))
    return pd.DataFrame({"step": steps, "n": n, "n_rs": k, "a_n": k, "a_sum": a * k, "b_n": n - k,
                         "b_sum": b * (n - k)})


def test_exact_counts_give_the_rate_and_the_binomial_standard_error():
    """k chosen so the Jeffreys-smoothed share is exactly σ(z0 + r t): the slope is r, the dispersion 0, and the
    standard error is the weighted-least-squares one, 1 / sqrt(Σ w (t − t̄)²) with w = n p̃ (1 − p̃)."""
    t, n, z0, r = np.arange(0, 50, 10), 64, logit(0.05), 0.03
    p_tilde = expit(z0 + r * t)
    table = counts(t, (p_tilde * (n + 1) - 0.5) / n, n)
    got = takeoff_rate(table, run_id="x")
    w = n * p_tilde * (1 - p_tilde)
    tw = (w * t).sum() / w.sum()
    assert got.rate == pytest.approx(r, rel=1e-12)
    assert got.intercept == pytest.approx(z0, rel=1e-12)
    assert got.dispersion == pytest.approx(0.0, abs=1e-20)
    assert got.stderr == pytest.approx(1 / math.sqrt((w * (t - tw) ** 2).sum()), rel=1e-12)
    assert got.steps == (0, 10, 20, 30, 40) and got.stop == "end of run" and got.run_id == "x"


def test_window_ends_when_p_passes_one_half_or_the_local_path_wins():
    t = np.arange(0, 80, 10)
    rising = expit(logit(0.1) + 0.05 * t)  # 0.1 ... p passes 0.5 between steps 40 and 50
    got = takeoff_rate(counts(t, rising, 1000))
    assert got.steps == (0, 10, 20, 30, 40, 50) and got.stop == "p passed 0.5"
    b = np.where(t >= 30, 0.6, 0.3)  # local skill above the RS skill 0.45 from step 30
    got = takeoff_rate(counts(t, 0.1, 1000, b=b))
    assert got.steps == (0, 10, 20) and got.stop == "local path won"
    assert takeoff_rate(counts(t, 0.1, 1000), max_step=20).steps == (0, 10, 20)
    one = takeoff_rate(counts(t, 0.9, 1000))  # over 0.5 already at step 0: one point, no slope
    assert one.n_points == 1 and math.isnan(one.rate) and math.isnan(one.stderr)


def test_standard_error_covers_the_true_rate():
    """Binomial eval counts, 500 runs: |r̂ − r| < 1.96 SE in about 95% of them, and r̂ unbiased within 5%."""
    rng = np.random.default_rng(0)
    t, r = np.arange(0, 50, 10), 0.04
    hits, rates = 0, []
    for _ in range(500):
        got = takeoff_rate(counts(t, expit(logit(0.08) + r * t), 64, rng=rng))
        hits += abs(got.rate - r) < 1.96 * got.stderr
        rates.append(got.rate)
    assert 0.91 <= hits / 500 <= 0.99
    assert np.mean(rates) == pytest.approx(r, rel=0.05)


def test_slope_agrees_with_a_binomial_glm():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(3)
    t = np.arange(0, 50, 10)
    table = counts(t, expit(logit(0.15) + 0.035 * t), 128, rng=rng)
    got = takeoff_rate(table)
    k, n = table.n_rs.to_numpy(), table.n.to_numpy()
    glm = sm.GLM(np.column_stack([k, n - k]), sm.add_constant(t.astype(float)), family=sm.families.Binomial()).fit()
    assert abs(got.rate - glm.params[1]) < 0.25 * glm.bse[1]
    # the binomial part of the standard error, and the dispersion, are the GLM's (quasi-binomial: Pearson χ²/df)
    assert got.stderr / math.sqrt(max(1.0, got.dispersion)) == pytest.approx(glm.bse[1], rel=0.15)
    assert got.dispersion == pytest.approx(glm.pearson_chi2 / glm.df_resid, rel=0.3)


def test_a_logged_run_is_pooled_over_its_trained_environments(tmp_path):
    run_dir = fitting.synthesize(tmp_path / "r", n_envs=2, n_heldout=1, steps=40, eval_every=10,
                                 rollouts_per_env=32, seed=1)
    run = fitting.load_runs([run_dir])[0]
    table = trained_eval_counts(run)
    assert list(table.step) == [0, 10, 20, 30, 40] and (table.n == 64).all()  # 2 trained envs x 32, held out left
    trained = [e.env_id for e in run.environments if e.w > 0]
    assert len(trained) == 2
    rs = run.rollouts[(run.rollouts.phase == "eval") & run.rollouts.env_id.isin(trained)]
    assert table.n_rs.sum() == rs.rs.sum() and table.a_n.sum() + table.b_n.sum() == len(rs)
    got = takeoff_rate(run)
    assert got.run_id == run.run_id and got.steps[0] == 0 and np.isfinite(got.rate)


def design(gamma, rng, *, models=4, scale=0.15, spread=0.15, n=256, steps=np.arange(0, 160, 10)):
    """Five priors x ``models`` stage-1 models, one run each: rate = C x^γ e^u (u ~ N(0, spread), a model's own
    speed), C chosen so the p0 = 0.32 runs grow by ``scale`` logits per step at x = 1; binomial eval counts."""
    rows = []
    for p0 in (0.02, 0.04, 0.08, 0.16, 0.32):
        for m in range(models):
            rate = scale * (p0 * (1 - p0)) ** gamma * math.exp(spread * rng.standard_normal())
            got = takeoff_rate(counts(steps, expit(logit(p0) + rate * steps), n, rng=rng))
            rows.append({"p0": p0, "stage1": f"{p0}-{m}", "rate": got.rate, "stderr": got.stderr})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_gamma_recovered_within_its_bootstrap_interval(gamma):
    """One synthetic arm (5 priors x 4 stage-1 models): the interval holds γ (and excludes 1 at γ = 0.3). One draw
    of a 95% interval misses in 1 of 20 (seed 11 misses γ = 1: [0.64, 0.99]); the coverage test below counts."""
    rng = np.random.default_rng(12)
    rates = design(gamma, rng)
    got = selection_exponent(rates, n_boot=500, seed=2)
    lo, hi = got.interval
    assert lo < gamma < hi
    assert (got.n_p0, got.n_stage1_models, got.n_runs, got.n_boot) == (5, 20, 20, 500)
    if gamma == 0.3:
        assert hi < 1  # the post's γ = 1 is excluded
    assert got.to_dict()["gamma"] == {"value": got.gamma, "interval_95": [lo, hi]}
    again = selection_exponent(rates, n_boot=500, seed=2)
    assert again.interval == got.interval  # reproducible from the seed


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_gamma_interval_coverage(gamma):
    """30 synthetic arms: the widened 95% interval holds the truth in at least 25 of them (92.5% measured at
    both γ with 80 arms; the plain percentile interval held it in 85%), and γ̂ is unbiased within 0.05."""
    hits, est = 0, []
    for s in range(30):
        got = selection_exponent(design(gamma, np.random.default_rng(500 + s)), n_boot=150, seed=s)
        hits += got.interval[0] < gamma < got.interval[1]
        est.append(got.gamma)
    assert hits >= 25
    assert np.mean(est) == pytest.approx(gamma, abs=0.05)


def test_exact_power_law_rates_give_gamma_exactly():
    x = np.array([0.02, 0.04, 0.08, 0.16, 0.32])
    rates = pd.DataFrame({"p0": x, "stage1": range(5), "rate": 0.2 * (x * (1 - x)) ** 0.7, "stderr": 0.01})
    got = selection_exponent(rates, n_boot=100)
    assert got.gamma == pytest.approx(0.7, abs=1e-6) and got.scale == pytest.approx(0.2, rel=1e-5)
    assert np.isnan(got.interval).all()  # one stage-1 model per prior: nothing to resample, no interval


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="two or more priors"):
        selection_exponent(pd.DataFrame({"p0": [0.1, 0.1], "stage1": [0, 1], "rate": [0.1, 0.2],
                                         "stderr": [0.01, 0.01]}))
    with pytest.raises(ValueError, match="lack column"):
        selection_exponent(pd.DataFrame({"p0": [0.1]}))
    with pytest.raises(ValueError, match="lack column"):
        takeoff_rate(pd.DataFrame({"step": [0], "n": [1]}))
    with pytest.raises(ValueError, match="p_stop"):
        takeoff_rate(counts([0, 10], 0.1, 10), p_stop=1.5)


def test_pilot_reference_reproduces_the_documented_exponents():
    """data/reference/takeoff-pilot: the eval counts behind docs/organisms.md's pilot give its γ per arm."""
    from pathlib import Path

    df = pd.read_csv(Path(__file__).resolve().parents[1] / "data" / "reference" / "takeoff-pilot" /
                     "eval_counts.csv")
    rows = []
    for (opt, scale, p0, seed), g in df[df.design == "dense60"].groupby(["optimizer", "scale_rewards", "p0", "seed"]):
        r = takeoff_rate(g)
        rows.append({"arm": f"{opt} + {scale}", "p0": p0, "stage1": f"{p0}-{seed}", "rate": r.rate,
                     "stderr": r.stderr})
    rates = pd.DataFrame(rows)
    documented = {"adamw + group": (0.16, -0.33, 0.57, 12), "sgd + none": (1.31, 0.59, 2.51, 12),
                  "adamw + none": (0.24, -0.00, 0.48, 6), "sgd + group": (1.84, 1.07, 3.37, 6)}
    for arm, (gamma, lo, hi, models) in documented.items():
        got = selection_exponent(rates[rates.arm == arm], n_boot=2000, seed=0)
        assert round(got.gamma, 2) == gamma, arm
        assert got.n_stage1_models == models, arm
        # the interval is a bootstrap quantile: its second decimal may move with numpy's generator or BLAS
        assert got.interval == pytest.approx((lo, hi), abs=0.02), arm
