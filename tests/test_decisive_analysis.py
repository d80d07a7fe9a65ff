"""The decisive experiment's analysis (physrl/experiment/decisive_analysis.py) and its CLI path.

- Synthetic outcome tables, no training: 20 stage-1 models per prior at p0 = 0.02 … 0.32, each bisected on the
  √2 grid to 16 by ``decisive.next_probe`` against its own threshold N*_model = N0(p0) · exp(σ z) (RS wins iff
  N ≥ N*_model; z ~ N(0, 1), seeded; N0(p0) = 4 (p0 / 0.08)^slope). ``scaling.n_star_by_p0`` +
  ``slope_with_interval`` recover slope −1 and slope 0 (σ = 0.3); ``slope_replicates`` of two arms built from the
  same z, bootstrapped with one seed, give a paired difference whose interval holds +1 and is narrower than the
  same difference with the second arm bootstrapped with another seed (unpaired). ``sweep_outcomes`` and
  ``model_brackets`` read the same simulation through a stand-in for ``EndStates``: every model's bracket holds
  its N*_model.
- ``between_model_sigma`` on a hand-built brackets table: the pooled SD of the bracket midpoints worked out by
  hand; censored and unfinished models left out, censored ones counted.
- ``law_verdict`` / ``prediction_verdict`` / ``goals`` on hand-built entries of ``arm_result``'s structure.
- End to end through ``physrl experiment CONFIG --out DIR`` on a tiny config (2 priors × 2 seeds, grid [1, 2, 4],
  6 training steps): the summary's structure, the pre-registration (sha256 of predictions.json, every sweep run
  created after the freeze), the bisection replayed through ``next_probe`` on the runs' end states, a rerun that
  trains nothing, ``--analyse-finished``, and a changed predictions.json refused by name. Threshold 0.025 so that
  runs both win and lose; one torch thread; the ICC's cluster bootstrap cut to ``ICC_REFITS`` refits (its default
  of 200 is most of the analysis' CPU time). Measured: about 50 s of CPU for the four end-to-end tests.
- With no observed interval ``prediction_verdict`` says the pre-registered slope could not be checked.
"""

import functools
import hashlib
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from physrl.experiment import decisive_analysis as da
from physrl.experiment import decisive_run
from physrl.experiment.decisive import DecisiveConfig, DecisiveRun, next_probe, sqrt2_grid, stage1_models
from physrl.experiment.replication import random_intercept_logit
from physrl.experiment.scaling import n_star_by_p0, slope_replicates, slope_with_interval

GRID = [1, 2, 3, 4, 6, 8, 11, 16]
P0 = [0.02, 0.04, 0.08, 0.16, 0.32]
MODELS = 20
SIGMA = 0.3
BUDGET = 200
N_BOOT = 400
EDGES = [(1.0, 16.0)] * len(P0)


# ---- synthetic sweeps: the bisection against each stage-1 model's own N* ------------------------------------
class FakeEnds:
    """``EndStates``' interface (``.get(run_id) -> (end state, last eval step)`` or None when not finished)."""

    def __init__(self, shares: dict[str, float], step: int = BUDGET):
        self.shares = shares
        self.step = step

    def get(self, run_id, max_step=None):
        return (self.shares[run_id], self.step) if run_id in self.shares else None


def model_z(seed: int = 7) -> np.ndarray:
    """z per stage-1 model, shape (len(P0), MODELS): row j is p0 = P0[j], column s the seed."""
    return np.random.default_rng(seed).standard_normal((len(P0), MODELS))


def model_n_star(slope: float, z: np.ndarray) -> np.ndarray:
    """N*_model = N0(p0) exp(σ z) with N0(p0) = 4 (p0 / 0.08)^slope, same shape as ``z``."""
    n0 = 4.0 * (np.asarray(P0) / 0.08) ** slope
    return n0[:, None] * np.exp(SIGMA * z)


def simulate(arm: str, slope: float, z: np.ndarray) -> tuple[pd.DataFrame, dict[str, float]]:
    """Every stage-1 model bisected by ``next_probe`` (RS wins iff N >= its N*_model).

    Returns the outcome table (``sweep_outcomes``' columns, one row per run) and run_id -> end state
    (0.9 for a win, 0.1 for a loss)."""
    stars = model_n_star(slope, z)
    rows, shares = [], {}
    for j, p0 in enumerate(P0):
        for s in range(MODELS):
            history = {}
            while (i := next_probe(history, len(GRID))) is not None:
                history[i] = GRID[i] >= stars[j, s]
            for i, won in sorted(history.items()):
                r = DecisiveRun(arm, "sweep", GRID[i], p0, s)
                shares[r.run_id] = 0.9 if won else 0.1
                rows.append({"arm": arm, "run_id": r.run_id, "p0": p0, "seed": s, "n_envs": GRID[i],
                             "budget": BUDGET, "step": BUDGET, "final_p": shares[r.run_id], "win": int(won),
                             "cluster": f"p{p0:g}-s{s}"})
    return pd.DataFrame(rows), shares


def observed_slope(rows: pd.DataFrame, boot_seed: int):
    """(SlopeEstimate, per-replicate slopes) as ``arm_result`` computes them."""
    estimates, reps, p0s, _ = n_star_by_p0(rows, BUDGET, n_boot=N_BOOT, seed=boot_seed)
    assert p0s == P0
    points = [e.n_star for e in estimates]
    estimate = slope_with_interval(p0s, points, reps, "bootstrap over stage-1 models", edges=EDGES)
    slopes, _ = slope_replicates(p0s, points, reps, EDGES)
    return estimate, slopes


def _width(values: np.ndarray) -> tuple[list, float]:
    v = values[np.isfinite(values)]
    lo, hi = np.quantile(v, [0.025, 0.975])
    return [float(lo), float(hi)], float(hi - lo)


@pytest.fixture(scope="module")
def paired_arms():
    """Two arms over the same 100 stage-1 models (same z): slope −1 ("steep") and slope 0 ("flat")."""
    z = model_z()
    steep, steep_shares = simulate("steep", -1.0, z)
    flat, flat_shares = simulate("flat", 0.0, z)
    return {"z": z, "steep": steep, "flat": flat, "shares": {**steep_shares, **flat_shares},
            "steep_fit": observed_slope(steep, 0), "flat_fit": observed_slope(flat, 0),
            "flat_fit_other_seed": observed_slope(flat, 1)}


def test_simulated_bisection_takes_at_most_four_runs_per_model(paired_arms):
    for arm in ("steep", "flat"):
        runs = paired_arms[arm].groupby("cluster").size()
        assert len(runs) == len(P0) * MODELS and runs.max() <= 4 and runs.min() >= 3  # ceil(log2(9)) = 4


def test_slope_minus_one_recovered(paired_arms):
    estimate, slopes = paired_arms["steep_fit"]
    lo, hi = estimate.interval_95
    assert lo <= -1.0 <= hi, estimate
    assert abs(estimate.value - (-1.0)) <= 0.25, estimate
    # N0(0.32) = 1 is the grid's first point: that p0's N* lies below the grid and drops out of the point slope
    assert estimate.p0_used == [0.02, 0.04, 0.08, 0.16]
    assert estimate.replicates == N_BOOT and np.isfinite(slopes).all()  # every replicate entered (edges given)


def test_slope_zero_recovered(paired_arms):
    estimate, slopes = paired_arms["flat_fit"]
    lo, hi = estimate.interval_95
    assert lo <= 0.0 <= hi, estimate
    assert abs(estimate.value) <= 0.25, estimate
    assert estimate.p0_used == P0 and estimate.share_censored == 0.0
    assert np.isfinite(slopes).all()


def test_paired_difference_holds_one_and_is_narrower_than_unpaired(paired_arms):
    _, steep = paired_arms["steep_fit"]
    _, flat = paired_arms["flat_fit"]
    _, flat_other = paired_arms["flat_fit_other_seed"]
    paired, paired_width = _width(flat - steep)  # same bootstrap seed: the same stage-1 models per replicate
    unpaired, unpaired_width = _width(flat_other - steep)
    assert paired[0] <= 1.0 <= paired[1], paired
    assert unpaired[0] <= 1.0 <= unpaired[1], unpaired
    assert paired_width < unpaired_width, (paired, unpaired)


def _config(**changes) -> DecisiveConfig:
    base = dict(p0=P0, seeds=list(range(MODELS)), calibration_seeds=[100, 101],
                arms=[{"name": "steep", "optimizer": "adamw", "scale_rewards": "group", "learning_rate": 2e-4},
                      {"name": "flat", "optimizer": "sgd", "scale_rewards": "none", "learning_rate": 0.1}],
                organism={"max_steps": BUDGET})
    base.update(changes)
    return DecisiveConfig.from_dict(base)


def test_sweep_outcomes_reads_the_simulated_runs(paired_arms):
    config = _config()
    assert config.n_grid == GRID == sqrt2_grid(16)
    got = da.sweep_outcomes(config, FakeEnds(paired_arms["shares"]))
    want = pd.concat([paired_arms["steep"], paired_arms["flat"]], ignore_index=True)
    assert list(got.columns) == list(want.columns)
    key = ["arm", "run_id"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  want.sort_values(key).reset_index(drop=True), check_dtype=False)
    # the threshold is strict: an end state equal to it is a loss
    one = {DecisiveRun("flat", "sweep", 4, 0.08, 3).run_id: config.threshold}
    assert da.sweep_outcomes(config, FakeEnds(one)).win.tolist() == [0]


def test_model_brackets_hold_each_models_n_star(paired_arms):
    config = _config()
    ends = FakeEnds(paired_arms["shares"])
    for arm, slope in (("steep", -1.0), ("flat", 0.0)):
        stars = model_n_star(slope, paired_arms["z"])
        br = da.model_brackets(config, arm, ends)
        assert len(br) == len(P0) * MODELS and br.finished.all()
        for row in br.itertuples():
            star = stars[P0.index(row.p0), row.seed]
            assert row.lost_at < star <= row.won_at, row  # wins iff N >= N*: lost below it, won at or above
            if row.lost_at == 0:
                assert row.censored == "below" and star <= 1 and math.isnan(row.log_n_star)
            elif math.isinf(row.won_at):
                assert row.censored == "above" and star > 16 and math.isnan(row.log_n_star)
            else:
                assert row.censored == "" and row.log_n_star == pytest.approx(math.log(math.sqrt(row.lost_at
                                                                                               * row.won_at)))
        sigma = da.between_model_sigma(br)
        n_below, n_above = int((stars <= 1).sum()), int((stars > 16).sum())
        assert (sigma["censored_below"], sigma["censored_above"]) == (n_below, n_above)
        assert sigma["models_used"] == len(P0) * MODELS - n_below - n_above
    # nothing trained for an arm: no finished model, nothing used
    empty = da.between_model_sigma(da.model_brackets(config, "steep", FakeEnds({})))
    assert empty["value"] is None and empty["models_used"] == 0 and empty["censored_above"] == 0


# ---- between_model_sigma on a hand-built table ---------------------------------------------------------------
def _bracket_row(p0, seed, lost_at, won_at, finished=True):
    mid = math.log(math.sqrt(lost_at * won_at)) if lost_at > 0 and math.isfinite(won_at) else math.nan
    censored = "below" if lost_at == 0 else "above" if math.isinf(won_at) else ""
    return {"arm": "a", "p0": p0, "seed": seed, "runs": 3, "finished": finished, "lost_at": float(lost_at),
            "won_at": float(won_at), "log_n_star": mid, "censored": censored}


def test_between_model_sigma_hand_worked():
    rows = [
        # p0 = 0.04: midpoints ½log 6, ½log 12, ½log 24, spaced by ½log 2: squared deviations 2 × (½log 2)²
        _bracket_row(0.04, 0, 2, 3), _bracket_row(0.04, 1, 3, 4), _bracket_row(0.04, 2, 4, 6),
        # p0 = 0.16: midpoints ½log 2, ½log 6, ½log 3 apart: squared deviations 2 × (¼log 3)²
        _bracket_row(0.16, 0, 1, 2), _bracket_row(0.16, 1, 2, 3),
        # censored: left out, counted
        _bracket_row(0.16, 2, 16, math.inf), _bracket_row(0.04, 3, 16, math.inf), _bracket_row(0.04, 4, 0, 1),
        # unfinished: neither used nor counted, even when its bracket so far looks censored
        _bracket_row(0.16, 3, 6, 8, finished=False), _bracket_row(0.16, 4, 16, math.inf, finished=False),
        # p0 = 0.32 with one usable model: used, but no degree of freedom
        _bracket_row(0.32, 0, 1, 2),
    ]
    got = da.between_model_sigma(pd.DataFrame(rows))
    dev = 2 * (0.5 * math.log(2)) ** 2 + 2 * (0.25 * math.log(3)) ** 2
    assert got["value"] == pytest.approx(math.sqrt(dev / 3), rel=1e-12)  # dof = (3 - 1) + (2 - 1)
    assert (got["models_used"], got["censored_below"], got["censored_above"]) == (6, 1, 2)


def test_between_model_sigma_without_a_degree_of_freedom():
    got = da.between_model_sigma(pd.DataFrame([_bracket_row(0.04, 0, 2, 3), _bracket_row(0.16, 0, 4, 6),
                                               _bracket_row(0.16, 1, 0, 1)]))
    assert got["value"] is None and got["models_used"] == 2 and got["censored_below"] == 1


# ---- verdicts and goals on hand-built entries ------------------------------------------------------------------
def entry(interval, value=None, predicted=-0.95, brier_interval=(-0.05, -0.01), best="calibration"):
    """An ``arm_result`` entry with only the fields the verdicts and goals read."""
    lo, hi = interval
    value = value if value is not None else (None if lo is None else (lo + hi) / 2)
    diffs = {"median_n": {"value": -0.4, "interval_95": [-0.5, -0.3]},
             "half": {"value": -0.1, "interval_95": [-0.2, 0.0]},
             best: {"value": sum(brier_interval) / 2 if brier_interval[0] is not None else -0.02,
                    "interval_95": list(brier_interval)}}
    return {"name": "arm", "observed_slope": {"value": value, "interval_95": [lo, hi]},
            "predicted_slope": {"value": predicted, "interval_95": [-1.4, -0.5]},
            "scores": {"best_prospective_baseline": best, "brier_minus_prospective": diffs}}


POST = "the post's law (slope −1)"
FLAT = "a flat N* (slope 0)"


def _law_parts(text: str) -> tuple[str, str]:
    """(the laws followed, the laws excluded) of a 'The organisms follow A: … excludes B.' verdict."""
    assert text.startswith("The organisms follow ") and " excludes " in text, text
    followed = text[len("The organisms follow "):].split(": observed slope")[0]
    excluded = text.rsplit(" excludes ", 1)[1]
    return followed, excluded


def test_law_verdict_follows_the_post_and_excludes_flat():
    for gamma in (None, 0.11):
        text = da.law_verdict(entry([-1.3, -0.7], value=-1.0), gamma)
        followed, excluded = _law_parts(text)
        assert followed == POST, text
        assert FLAT in excluded and POST not in excluded, text
        assert "observed slope -1.00, 95% [-1.30, -0.70]" in text
        if gamma is not None:
            assert "measured-takeoff law (slope −γ = -0.11)" in excluded


def test_law_verdict_cannot_tell_flat_from_the_measured_law():
    text = da.law_verdict(entry([-0.2, 0.3], value=0.05), 0.11)
    followed, excluded = _law_parts(text)
    assert FLAT in followed and "the measured-takeoff law (slope −γ = -0.11)" in followed, text
    assert excluded == POST + ".", text


def test_law_verdict_all_none_and_no_slope():
    assert da.law_verdict(entry([-1.2, 0.1]), 0.11).startswith("The laws cannot be told apart: observed slope "
                                                              "-0.55, 95% [-1.20, 0.10] holds all of them")
    text = da.law_verdict(entry([0.4, 0.9]), 0.11)
    assert text.startswith("The organisms follow none of the candidate laws") and POST in text and FLAT in text
    assert da.law_verdict(entry([None, None]), 0.11) == "No slope was measured."
    # the interval's ends count as inside
    assert _law_parts(da.law_verdict(entry([-1.0, -0.5]), None))[0] == POST


@pytest.mark.parametrize("brier_interval, words", [
    ((-0.05, -0.01), "the frozen forecasts beat the best prospective baseline (calibration): Brier -0.030 "
                     "[-0.050, -0.010]"),
    ((0.01, 0.04), "the frozen forecasts lost to the best prospective baseline (calibration): Brier +0.025 "
                   "[+0.010, +0.040]"),
    ((-0.02, 0.03), "the frozen forecasts did not differ measurably from the best prospective baseline "
                    "(calibration): Brier +0.005 [-0.020, +0.030]"),
    ((None, None), "no interval for the Brier difference to the best prospective baseline (calibration)"),
])
def test_prediction_verdict_forecasts(brier_interval, words):
    text = da.prediction_verdict(entry([-1.3, -0.7], predicted=-0.95, brier_interval=brier_interval))
    assert text == f"The pre-registered slope -0.95 held (inside the observed interval); {words}."


def test_prediction_verdict_slope():
    assert da.prediction_verdict(entry([-0.2, 0.3], predicted=-0.95)).startswith(
        "The pre-registered slope -0.95 failed (outside the observed interval)")
    assert da.prediction_verdict(entry([-0.2, 0.3], predicted=None)).startswith(
        "The frozen fit predicted no finite slope; ")


def test_prediction_verdict_without_an_observed_interval_does_not_say_failed():
    text = da.prediction_verdict(entry([None, None], predicted=-0.95))
    assert "failed" not in text and "held" not in text, text
    assert text.startswith("The pre-registered slope -0.95 could not be checked (no observed interval)"), text


def test_goals_half_width_and_forecasts():
    g = da.goals(entry([-1.3, -0.7], brier_interval=(-0.05, -0.01)))
    hw = g["slope_half_width"]
    assert hw["value"] == pytest.approx(0.3) and hw["goal"] == 0.2 and hw["met"] is False
    assert hw["missed_by"] == pytest.approx(0.1, abs=1e-12)
    assert g["beats_best_prospective"] == {"baseline": "calibration", "upper_95": -0.01, "met": True,
                                           "missed_by": None}

    g = da.goals(entry([-0.1, 0.3], brier_interval=(-0.02, 0.04), best="half"))
    assert g["slope_half_width"]["value"] == pytest.approx(0.2)
    assert g["slope_half_width"]["met"] is True and g["slope_half_width"]["missed_by"] is None
    assert g["beats_best_prospective"] == {"baseline": "half", "upper_95": 0.04, "met": False, "missed_by": 0.04}

    g = da.goals(entry([None, None], brier_interval=(None, None)))
    assert g["slope_half_width"] == {"value": None, "goal": 0.2, "met": None, "missed_by": None}
    assert g["beats_best_prospective"]["met"] is None and g["beats_best_prospective"]["missed_by"] is None


# ---- end to end through the CLI ---------------------------------------------------------------------------------
TINY = """
kind = "decisive"
threshold = 0.025
last_evals = 2
p0 = [0.1, 0.3]
seeds = [0, 1]
calibration_seeds = [5]
calibration = [{ n_envs = 1, p0 = 0.1 }, { n_envs = 2, p0 = 0.3 }]
n_grid = [1, 2, 4]
family_size = 6
continuation_max_runs = 1
continuation_steps = 9
continuation_band = 0.5
n_draws = 10
bootstrap = 100
measured_gamma = { "adamw-group" = 0.11, "sgd-none" = 1.30 }
[organism]
note_reveal = 1.0
a0 = 0.5
pretrain_steps = 20
max_steps = 6
eval_every = 3
eval_prompts_per_env = 2
eval_heldout = 2
trainer = "population"
[executor]
engine = "local"
max_workers = 1
population_size = 4
"""

# threshold 0.025: after 6 steps the RS shares lie near p0 / 10 (0.005-0.04), so with this threshold some runs win
# and some lose and the bisection goes both ways (down after a win, up after a loss); at 0.5 every run loses.

ARM_KEYS = {"name", "optimizer", "scale_rewards", "p0", "n_stage1_models", "n_runs", "observed_slope",
            "predicted_slope", "icc", "scores"}


#: ICC bootstrap refits in the end-to-end runs: ``arm_result`` calls ``random_intercept_logit`` with its default
#: of 200 (not ``config.bootstrap``), ~45 s of CPU per arm and analysis on 8 runs; 20 keep the path and its output
ICC_REFITS = 20


@pytest.fixture(scope="module", autouse=True)
def _one_thread_few_icc_refits():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(da, "random_intercept_logit", functools.partial(random_intercept_logit, n_boot=ICC_REFITS))
        yield
    torch.set_num_threads(before)


def _cli(argv):
    from physrl.experiment.cli import main

    return main(argv)


def _sweep_dirs(out: Path) -> set[str]:
    return {d.name for d in (out / "runs").iterdir() if d.is_dir() and not d.name.startswith(".")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One ``physrl experiment tiny.toml --out DIR`` (one torch thread); what it wrote, read right after."""
    base = tmp_path_factory.mktemp("decisive")
    config_path = base / "tiny.toml"
    config_path.write_text(TINY)
    out = base / "out"
    code = _cli([str(config_path), "--out", str(out), "--no-progress"])
    return {"config_path": config_path, "out": out, "code": code,
            "config": DecisiveConfig.from_file(config_path),
            "summary": json.loads((out / "summary.json").read_text()),
            "lock": json.loads((out / "preregistration.json").read_text()),
            "predictions_sha256": hashlib.sha256((out / "predictions.json").read_bytes()).hexdigest(),
            "runs": _sweep_dirs(out)}


def test_cli_run_reanalysed_from_its_counts_alone(tiny_run, tmp_path):
    """A folder without runs/ (what data/reference/decisive/subset.py commits) re-analyses from eval_counts.csv to
    the same summary (the ICC, a variational fit, within 1e-4)."""
    import shutil

    out = tiny_run["out"]
    for p in out.iterdir():
        if p.is_file() and p.suffix in (".json", ".csv"):
            shutil.copy2(p, tmp_path / p.name)
    shutil.copytree(out / "fit", tmp_path / "fit")
    committed = json.loads((out / "summary.json").read_text())
    again = json.loads(json.dumps(da.analyse_decisive(tiny_run["config"], tmp_path, progress=False)))
    for key in ("arm_difference", "preregistration", "step0", "continuation", "verdicts", "complete"):
        assert again[key] == committed[key], key
    for a, b in zip(again["arms"], committed["arms"]):
        icc_a, icc_b = a.pop("icc"), b.pop("icc")
        assert a == b
        assert icc_a["value"] == pytest.approx(icc_b["value"], rel=1e-4, abs=1e-9)


def test_cli_run_summary_structure(tiny_run):
    assert tiny_run["code"] == 0
    s = tiny_run["summary"]
    assert s["kind"] == "decisive" and s["budget"] == 6 and s["n_grid"] == [1, 2, 4] and s["threshold"] == 0.025
    assert [a["name"] for a in s["arms"]] == ["adamw-group", "sgd-none"]
    for a in s["arms"]:
        assert ARM_KEYS <= set(a), ARM_KEYS - set(a)
        assert a["p0"] == [0.1, 0.3] and a["n_stage1_models"] == 4
        for k in ("observed_slope", "predicted_slope", "icc"):
            assert {"value", "interval_95"} <= set(a[k]) and len(a[k]["interval_95"]) == 2, (k, a[k])
        assert {"brier", "brier_prospective_baselines", "log_loss"} <= set(a["scores"])
        assert 0 <= a["scores"]["brier"] <= 1 and a["scores"]["log_loss"] >= 0
        # every finished sweep run of the arm, and those alone, are counted
        sweep = {r for r in tiny_run["runs"] if r.startswith(a["name"] + "-N")}
        assert a["n_runs"] == len(sweep) and 4 * 2 <= a["n_runs"] <= 4 * 3  # 2 or 3 probes on a grid of 3
    d = s["arm_difference"]
    assert d["arms"] == ["sgd-none", "adamw-group"] and d["paired"] is True and len(d["interval_95"]) == 2


def test_cli_run_preregistration(tiny_run):
    out, lock, pre = tiny_run["out"], tiny_run["lock"], tiny_run["summary"]["preregistration"]
    assert set(pre) >= {"file", "sha256", "frozen_at", "sweep_logs_read_after"}
    assert pre["file"] == "predictions.json"
    assert pre["sha256"] == tiny_run["predictions_sha256"] == lock["sha256"]
    assert pre["frozen_at"] == lock["written_at"]
    assert pre["sweep_logs_read_after"] is True
    frozen_at = datetime.fromisoformat(lock["written_at"]).replace(microsecond=0)  # manifests store seconds
    sweep = [r for r in tiny_run["runs"] if "-cal-" not in r]
    assert len(sweep) >= 2 * 8
    for run_id in sweep:
        created = datetime.fromisoformat(json.loads((out / "runs" / run_id / "manifest.json").read_text())["created"])
        assert created >= frozen_at, (run_id, created, frozen_at)
    for run_id in [r for r in tiny_run["runs"] if "-cal-" in r]:  # the calibration runs came first
        created = datetime.fromisoformat(json.loads((out / "runs" / run_id / "manifest.json").read_text())["created"])
        assert created <= frozen_at, (run_id, created, frozen_at)


def test_cli_run_follows_the_bisection(tiny_run):
    config, out = tiny_run["config"], tiny_run["out"]
    ends = decisive_run.EndStates(out, config.last_evals)
    grid = config.n_grid
    outcomes = set()
    for arm in ("adamw-group", "sgd-none"):
        for p0, s in stage1_models(config):
            trained = {i for i, n in enumerate(grid) if DecisiveRun(arm, "sweep", n, p0, s).run_id in tiny_run["runs"]}
            created = {}
            history = {}
            while (i := next_probe(history, len(grid))) is not None:
                run_id = DecisiveRun(arm, "sweep", grid[i], p0, s).run_id
                assert run_id in tiny_run["runs"], (arm, p0, s, history, i)
                share, step = ends.get(run_id)
                assert step == 6
                history[i] = share > config.threshold
                outcomes.add(history[i])
                created[i] = json.loads((out / "runs" / run_id / "manifest.json").read_text())["created"]
            assert trained == set(history), (arm, p0, s, trained, history)  # the rule's probes, no more
            order = list(history)  # the order the rule asked for them
            assert [created[i] for i in order] == sorted(created[i] for i in order)
    assert outcomes == {True, False}  # both branches of the rule were taken (else this test checks little)


def test_cli_rerun_trains_nothing_analyse_finished_and_a_changed_freeze_is_refused(tiny_run, capsys):
    out, config_path = tiny_run["out"], str(tiny_run["config_path"])
    mtimes = {r: (out / "runs" / r / "manifest.json").stat().st_mtime_ns for r in tiny_run["runs"]}
    fits = {p: p.stat().st_mtime_ns for p in (out / "fit").glob("*/fit.json")}
    lock = (out / "preregistration.json").read_bytes()
    assert len(fits) == 2
    capsys.readouterr()
    assert _cli([config_path, "--out", str(out), "--no-progress"]) == 0
    printed = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines()[:2])
    assert set(printed) == {"summary", "report"}
    assert all(Path(v.strip()).is_file() for v in printed.values()), printed  # the paths it names exist
    assert _sweep_dirs(out) == tiny_run["runs"]
    assert {r: (out / "runs" / r / "manifest.json").stat().st_mtime_ns for r in tiny_run["runs"]} == mtimes
    assert {p: p.stat().st_mtime_ns for p in (out / "fit").glob("*/fit.json")} == fits  # no refit
    assert (out / "preregistration.json").read_bytes() == lock
    again = json.loads((out / "summary.json").read_text())
    assert again["preregistration"]["sha256"] == tiny_run["predictions_sha256"]
    assert again["arms"][0]["n_runs"] == tiny_run["summary"]["arms"][0]["n_runs"]

    (out / "summary.json").unlink()
    assert _cli([config_path, "--out", str(out), "--no-progress", "--analyse-finished"]) == 0
    analysed = json.loads((out / "summary.json").read_text())
    assert analysed["preregistration"]["sha256"] == tiny_run["predictions_sha256"]
    assert [a["n_runs"] for a in analysed["arms"]] == [a["n_runs"] for a in tiny_run["summary"]["arms"]]
    assert _sweep_dirs(out) == tiny_run["runs"]
    capsys.readouterr()

    predictions = out / "predictions.json"
    original = predictions.read_bytes()
    changed = bytearray(original)
    at = original.index(b"0.", len(original) // 2)  # a digit inside a number, halfway down
    changed[at] = ord("1")
    try:
        predictions.write_bytes(bytes(changed))
        for argv in ([config_path, "--out", str(out), "--no-progress"],
                     [config_path, "--out", str(out), "--no-progress", "--analyse-finished"]):
            code = _cli(argv)
            err = capsys.readouterr().err
            assert code == 2, argv  # bad input, nothing trained
            assert "predictions.json" in err and "changed after it was frozen" in err, err
        assert _sweep_dirs(out) == tiny_run["runs"]
    finally:
        predictions.write_bytes(original)



def test_paired_difference_uses_the_priors_both_arms_measured():
    """An arm without a finite N* at one prior: the difference is fitted over the other priors in both arms,
    exactly (identical replicates give a zero-width interval at the point difference)."""
    config = DecisiveConfig(seeds=[0], calibration_seeds=[100])
    p0s = [0.02, 0.04, 0.08, 0.16, 0.32]
    flat = [4.0, 4.0, 4.0, 4.0, 4.0]
    post = [16.0, 8.0, 4.0, 2.0, None]  # slope -1 where finite; no N* at 0.32
    reps_flat = np.tile(flat, (50, 1))
    reps_post = np.tile([16.0, 8.0, 4.0, 2.0, 1.0], (50, 1))
    d = da.paired_difference(config, (p0s, post, reps_post), (p0s, flat, reps_flat))
    assert d["p0_used"] == [0.02, 0.04, 0.08, 0.16]
    assert d["value"] == pytest.approx(1.0, abs=1e-12)
    assert d["interval_95"] == pytest.approx([1.0, 1.0], abs=1e-12)
    with pytest.raises(ValueError, match="different priors"):
        da.paired_difference(config, (p0s[:4], post[:4], reps_post[:, :4]), (p0s, flat, reps_flat))
