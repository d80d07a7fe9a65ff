"""Issue 18 item 7: parameters held at their step-0 measurement (step0="fixed") keep that measurement's
interval (never lower = upper = value), in the table, fit.json and emcee."""

import json

import numpy as np
import pytest
from scipy import stats

from physrl import fitting


@pytest.fixture(scope="module")
def held_fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("held")
    small = dict(n_envs=4, n_heldout=2, steps=120, eval_every=10, rollouts_per_env=64)
    runs = fitting.load_runs([fitting.synthesize(root / f"r{i}", seed=i, params={"p0": p0}, **small)
                              for i, p0 in enumerate((0.1, 0.4))])
    return fitting.fit(runs, step0="fixed", n_starts=1, emcee_steps=80, emcee_walkers=16)


def test_held_p0_reports_its_jeffreys_interval(held_fit):
    res = held_fit
    for name in ("p0_r0", "p0_r1"):
        est, s0 = res.estimates[name], res.problem.step0[name]
        assert not est.vary and est.identified
        k, n = s0.value * s0.n, s0.n
        jeffreys = stats.beta.ppf([0.025, 0.975], k + 0.5, n - k + 0.5)
        lo, hi = res.interval(name)
        assert (lo, hi) == pytest.approx(tuple(jeffreys), rel=1e-9) and lo < est.value < hi
        assert (s0.lower, s0.upper) == pytest.approx((lo, hi), rel=1e-9)  # the step-0 table's interval
        assert est.stderr == pytest.approx(stats.beta.std(k + 0.5, n - k + 0.5), rel=1e-9)


def test_held_skills_report_their_measurement_interval_in_both_units(held_fit):
    res = held_fit
    table = res.initial_state().set_index("param")
    for name in ("a0", "b0"):
        lo, hi = res.interval(name)
        assert lo < res.value(name) < hi
        row = table.loc[name]  # the interval mapped to observed units is the measured mean ± 1.96 se
        assert (row.lower, row.upper) == pytest.approx((row.measured_lower, row.measured_upper), abs=1e-5)  # 1.96 vs z
    doc = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    for name in ("p0_r0", "p0_r1", "a0", "b0"):
        entry = doc["params"][name]
        assert entry["interval95"][0] < entry["value"] < entry["interval95"][1], name
        assert entry["measurement"]["distribution"] in ("beta", "normal") and entry["stderr"] > 0
    assert "[" in next(line for line in res.summary_table().splitlines() if line.startswith("a0 "))


def test_emcee_draws_held_parameters_from_their_measurement(held_fit):
    res = held_fit
    params = res.emcee["params"]
    for name in ("p0_r0", "p0_r1", "a0", "b0"):
        assert name in params, sorted(params)
        lo, hi = params[name]["interval95"]
        m_lo, m_hi = res.interval(name)
        assert 0.7 < (hi - lo) / (m_hi - m_lo) < 1.3, (name, lo, hi, m_lo, m_hi)
        assert abs(params[name]["median"] - res.value(name)) < 0.25 * (m_hi - m_lo)
    assert "drawn from it" in res.emcee["note"]
    for name in res.var_names:  # the varying parameters' chains stay inside their bounds
        lo, hi = params[name]["interval95"]
        assert res.params[name].min <= lo <= hi <= res.params[name].max
    assert np.isfinite([v["median"] for v in params.values()]).all()


def _noisy_start_design(root):
    """Set 17 of benchmarks/fit_coverage.py's small design: four runs (p0 0.05, 0.1, 0.2, 0.4; 4, 4, 3, 3 trained
    envs + 2 held out), eval every 10 steps to 120, 64 eval rollouts per env. Run 2's step-0 share reads 0.157 for
    a true 0.2 (its Jeffreys interval [0.123, 0.195] misses it), the issue's case of a noisy measured start."""
    paths = [fitting.synthesize(root / f"r{i}", seed=17000 + i, n_envs=n, n_heldout=6 - n, steps=120, eval_every=10,
                                rollouts_per_env=64, params={"p0": p0})
             for i, (p0, n) in enumerate(zip((0.05, 0.1, 0.2, 0.4), (4, 4, 3, 3)))]
    truth = fitting.identifiable_truth(dict(fitting.DEFAULT_TRUTH), "homogeneous")
    truth.pop("p0")
    truth.update({f"p0_r{i}": p0 for i, p0 in enumerate((0.05, 0.1, 0.2, 0.4))})
    return fitting.load_runs(paths), truth


def test_default_step0_intervals_hold_the_truth_where_a_held_noisy_start_does_not(tmp_path):
    """Issue 18.7: the default --step0 is 'free' (every mode covers every parameter >= 0.88 over 60 sets in
    each of three designs; free is unbiased with intervals several times narrower, docs/fitting.md). Holding the initial state at a noisy step-0 share bends the dynamics, and Murphy-Topel's
    linearised variance, read at that bent optimum, is too narrow: here 'fixed' puts c_z's and c_x's 95%
    intervals below their truths (0.8 and 0.6). The default holds every truth."""
    runs, truth = _noisy_start_design(tmp_path)
    held = fitting.fit(runs, step0="fixed", seed=17)
    missed = [n for n in ("c_z", "c_x") if not held.interval(n)[0] <= truth[n] <= held.interval(n)[1]]
    assert missed, "the design no longer shows the fixed mode's miss"  # guards the test's premise
    default = fitting.fit(runs, seed=17)
    assert default.spec.step0 == fitting.FitSpec().step0 == "free"
    assert default.converged
    for name, true in truth.items():
        lo, hi = default.interval(name)
        assert lo <= true <= hi, (name, true, default.value(name), lo, hi)
    # the free fit's c_x sits within half its own half-width of the truth (the held fit's lies below its interval)
    lo, hi = default.interval("c_x")
    assert abs(default.value("c_x") - truth["c_x"]) < 0.5 * (hi - lo) / 2


def test_emcee_walkers_start_spread_over_the_posterior(held_fit, monkeypatch, tmp_path):
    """Issue 18.7: emcee's intervals of the fitted dynamics are as wide as the fit's covariance says (here 80 steps,
    16 walkers). lmfit's default start, a ball of relative width 1e-4 around the optimum, had not spread by then:
    95% widths 0.4-0.7 times the Wald widths, truth held in 5 of 7 synthetic sets (docs/fitting.md)."""
    res = held_fit
    dynamic = [n for n in res.var_names if res.estimates[n].identified]
    assert {"time_scale", "c_x"} <= set(dynamic)
    ratios = {}
    for name in dynamic:
        lo, hi = res.emcee["params"][name]["interval95"]
        w_lo, w_hi = res.interval(name)
        ratios[name] = (hi - lo) / (w_hi - w_lo)
    assert all(0.6 < r < 1.6 for r in ratios.values()), ratios
