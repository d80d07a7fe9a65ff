"""Issue 18, item 4: a sweep run's per-run prediction starts from its own stage-1 model's step-0 measurement,
p0, a0 and b0, with that measurement's noise (Jeffreys) drawn into every band and P(RS wins)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from physrl import fitting
from fitting._problem import Problem

DEMO = Path(__file__).resolve().parents[1] / "data" / "reference" / "demo"


@pytest.fixture(scope="module")
def demo_fit_and_run():
    cal = fitting.load_runs([DEMO / "cal-N1-p0.1-h2-s0", DEMO / "cal-N2-p0.3-h2-s0"])
    config = json.loads((DEMO / "experiment.json").read_text())
    fit = fitting.fit(cal, transfer=config.get("transfer", "homogeneous"), step0="fixed")  # the experiment's mode
    run = fitting.load_runs([DEMO / "sweep-N8-p0.1-h0-s0"])[0]
    return fit, run


def test_the_measured_start_and_its_noise_enter_every_band(demo_fit_and_run):
    """At step 0 the point prediction is the run's own measurement and the 90% band over draws is its Jeffreys
    interval: p0 27/256 (Beta(27.5, 229.5)); b0 the mean reward over 229 rollouts (Beta with the measured mean and
    standard error). With the fit's a0, b0 and an exact p0 the step-0 band had zero width."""
    fit, run = demo_fit_and_run
    pred = fitting.predict(fit, run, n_star=False, n_samples=400, seed=0, level=0.9, start="measured")
    target = Problem.build([run], fitting.observations([run]), fit.spec)
    b0 = target.step0["b0"]
    assert pred.mean["b"][0][0] == pytest.approx(b0.value, abs=1e-9)
    assert pred.mean["a"][0][0] == pytest.approx(target.step0["a0"].value, abs=1e-9)
    n_eff = b0.value * (1 - b0.value) / b0.scale ** 2
    lo, hi = stats.beta.ppf([0.05, 0.95], b0.value * n_eff + 0.5, (1 - b0.value) * n_eff + 0.5)
    assert pred.lower["b"][0][0] == pytest.approx(lo, abs=0.006)
    assert pred.upper["b"][0][0] == pytest.approx(hi, abs=0.006)
    lo_p, hi_p = stats.beta.ppf([0.05, 0.95], 27.5, 229.5)
    assert pred.lower["p"][0][0] == pytest.approx(lo_p, abs=0.006)
    assert pred.upper["p"][0][0] == pytest.approx(hi_p, abs=0.006)
    assert any("own step-0 measurement" in n for n in pred.notes)

    exact = fitting.predict(fit, run, p0=run.measured_prior(phases=("eval",)).pooled.value, n_star=False,
                            n_samples=400, seed=0, level=0.9)
    assert exact.upper["p"][0][0] - exact.lower["p"][0][0] == pytest.approx(0.0, abs=1e-12)
    assert exact.upper["b"][0][0] - exact.lower["b"][0][0] == pytest.approx(0.0, abs=1e-12)
    # the fit's start lands on this stage-1 model's measurement: its floor b_lo is measured at this model's
    # step 0 (observation "stage1", docs/model.md §7) and the fit's latent σ(y0) is the family's (0.1), so the
    # observed start is the run's own b̂0; under the manifest's floor (from the target b0) it moved
    assert exact.mean["b"][0][0] == pytest.approx(b0.value, abs=1e-6)
    declared = fitting.fit([fitting.load_runs([DEMO / n])[0] for n in ("cal-N1-p0.1-h2-s0", "cal-N2-p0.3-h2-s0")],
                           transfer=fit.spec.transfer, observation="manifest", step0="fixed")
    moved = fitting.predict(declared, run, p0=run.measured_prior(phases=("eval",)).pooled.value, n_star=False,
                            n_samples=4, seed=0, level=0.9)
    assert abs(moved.mean["b"][0][0] - b0.value) > 0.03


def test_start_must_be_named(demo_fit_and_run):
    fit, run = demo_fit_and_run
    with pytest.raises(ValueError, match="start must be"):
        fitting.predict(fit, run, n_star=False, n_samples=4, start="target")
