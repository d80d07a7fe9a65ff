"""The scaling experiment end to end on ODE-sampled stand-in runs (tests/conftest.py):
calibration → fit → frozen predictions → sweep → observed N*(p0), the log-log slope,
scores, report."""

import json
import os
from pathlib import Path

import pytest
from conftest import NAN_OR_NONE, STEPS, ode_trainer, scaling_config, visible_text

from physrl import fitting
from physrl.experiment import freeze as _preregistration, runs as _runs
from physrl.experiment import run_experiment


@pytest.fixture
def finished(synthetic_scaling):
    return synthetic_scaling


def test_order_calibration_then_frozen_predictions_then_sweep(finished):
    out, summary, calls = finished
    cal = [c for c in calls if c[0].startswith("cal-")]
    sweep = [c for c in calls if c[0].startswith("sweep-")]
    assert len(cal) == 2 and len(sweep) == 27
    assert calls[:2] == cal and not any(frozen for _, frozen in cal)
    assert all(frozen for _, frozen in sweep)  # every sweep run was trained after the freeze
    reg = summary["preregistration"]
    assert reg["sweep_logs_read_after"] is True and reg["late_runs"] == []
    assert reg["file"] == "predictions.json"
    assert reg["sha256"] == _preregistration._sha256(out / "predictions.json")


def test_fixed_family_design_and_varied_family_seed(finished):
    out, _, _ = finished
    manifests = {p.parent.name: json.loads(p.read_text())["organisms"]["config"] for p in (out / "runs").glob("*/manifest.json")}
    at = {k: v for k, v in manifests.items() if k.startswith("sweep-") and "-p0.05-" in k}
    assert {v["n_envs"] + v["n_heldout"] for v in at.values()} == {17}  # K = max N + 1 for every N
    fam = {(v["seed"], v["family_seed"]) for v in manifests.values()}
    assert {f - s for s, f in fam} == {1234}
    assert {s for s, _ in fam} == {0, 1, 2, 10}


def test_summary_has_the_issue_keys_as_numbers(finished):
    _, s, _ = finished
    for key in ("observed_slope", "predicted_slope"):
        entry = s["scaling"][key]
        assert isinstance(entry["value"], float)
        lo, hi = entry["interval_95"]
        assert isinstance(lo, float) and isinstance(hi, float) and lo <= hi
    assert s["scaling"]["p0"] == [0.05, 0.1, 0.2] and s["scaling"]["seeds"] == [0, 1, 2]
    for key in ("0.05", "0.1", "0.2"):
        entry = s["observed_n_star"][key]
        assert set(entry) >= {"n_star", "interval_95", "n_seeds", "budget"}
        assert entry["n_seeds"] == 3 and entry["budget"] == STEPS
    assert set(s["preregistration"]) >= {"file", "sha256", "written_at", "sweep_logs_read_after"}
    assert set(s["scores"]) >= {"brier", "brier_base_rate", "log_loss", "log_loss_base_rate"}
    assert set(s["scores"]["by_budget"]) == {"100", str(STEPS)}
    assert s["scaling"]["calibration_seeds_reused_in_sweep"] is False


def test_observed_and_predicted_law_recover_the_known_slope(finished):
    _, s, _ = finished
    # the generating ODE's protocol N* at 150 steps (continuous, interpolated on log N): slope -1.25
    truth_n_star = {"0.05": 7.44, "0.1": 3.15, "0.2": 1.32}
    for key, n_star in truth_n_star.items():
        obs = s["observed_n_star"][key]["n_star"]  # seeds perturb p0 by e^{0.3 z}
        assert obs is not None and n_star / 2 <= obs <= n_star * 2, (key, obs)
        pred = s["predicted_n_star"][key]["n_star"]
        assert pred is not None and n_star / 1.6 <= pred <= n_star * 1.6, (key, pred)
        lo, hi = s["predicted_n_star"][key]["interval_95"]
        assert lo <= pred and (hi is None or pred <= hi)
    assert s["scaling"]["observed_slope"]["value"] == pytest.approx(-1.25, abs=0.5)
    lo, hi = s["scaling"]["observed_slope"]["interval_95"]
    assert lo - 1e-9 <= s["scaling"]["observed_slope"]["value"] <= hi + 1e-9 and hi < 0
    assert s["scaling"]["predicted_slope"]["value"] == pytest.approx(-1.25, abs=0.3)


def test_frozen_forecasts_beat_the_baselines(finished):
    _, s, _ = finished
    sc = s["scores"]
    assert 0 <= sc["brier"] < sc["brier_base_rate"]
    assert sc["log_loss"] < sc["log_loss_base_rate"]
    assert sc["n_events"] == 27


def test_report_shows_the_law_and_the_frozen_table(finished):
    out, _, _ = finished
    html = (out / "report.html").read_text()
    for title in ("does N* fall with p0", "P(RS wins) against the diversity N", "The scaling law: N* against p0",
                  "Frozen predictions against outcomes"):
        assert title in html, title
    assert "src='http" not in html and html.count("data:image/png;base64,") >= 5
    text = visible_text(html)
    assert not NAN_OR_NONE.findall(text), NAN_OR_NONE.findall(text)
    assert "3 seeds per cell (sweep seeds 0, 1, 2; calibration seed 10)" in text
    # each N* names its estimator; three p0 give a law figure whose caption lists what it draws
    assert "p0 = 0.1: observed N* " in text and "logistic 50% point on log N (Firth), 3 seeds" in text
    assert "frozen prediction on continuous N" in text and "protocol N* on the integer grid 1..32:" in text
    assert "Red line: the frozen prediction on continuous N" in text and "grey dashed: the post's slope" in text
    # the per-run table names which predictive band each coverage column counts
    assert "coverage (per env, 90% predictive band)" in text and "pooled share in light band" in text


def test_summary_names_each_n_star_estimator_and_keeps_the_old_keys(finished):
    _, s, _ = finished
    for key in ("0.05", "0.1", "0.2"):
        obs, pred = s["observed_n_star"][key], s["predicted_n_star"][key]
        assert {"n_star", "interval_95", "bracket", "status", "smallest_winning_n_per_seed"} <= set(obs)
        assert obs["estimator"].startswith("logistic 50% point") and obs["headline"]
        assert {"n_star", "interval_95", "n_max", "protocol_grid"} <= set(pred)
        assert pred["estimator"].startswith("frozen before the sweep")
        assert pred["protocol_grid"]["estimator"].startswith("the fit's protocol N* on the integer grid")
        for entry in (obs, pred, pred["protocol_grid"]):
            assert not NAN_OR_NONE.search(entry["headline"]), entry["headline"]


def test_rerun_verifies_the_frozen_file_and_refuses_a_changed_one(finished, monkeypatch):
    out, summary, _ = finished
    before = (out / "predictions.json").read_bytes()
    calls = []
    monkeypatch.setattr(_runs, "train_one", ode_trainer(calls))
    again = run_experiment(scaling_config(), out, progress=False)
    assert calls == []  # nothing retrained
    assert (out / "predictions.json").read_bytes() == before
    assert again["preregistration"]["sha256"] == summary["preregistration"]["sha256"]
    assert again["scaling"]["observed_slope"] == summary["scaling"]["observed_slope"]
    assert summary["fit_matches_frozen"] == {"checked": True, "matches": True, "differing": {}}
    assert again["fit_matches_frozen"]["matches"] is True  # the same logs refit to the frozen fit
    # a sweep cell that was never predicted is refused, not silently predicted after the fact
    with pytest.raises(_preregistration.PreregistrationError, match="do not cover"):
        run_experiment(scaling_config(n_envs_by_p0={"0.05": [4, 8, 16, 24], "0.1": [2, 4, 8], "0.2": [1, 2, 4]},
                                      n_star_max=32), out, progress=False)
    tampered = json.loads(before)
    tampered["cells"][0]["p_win"] = 0.5
    (out / "predictions.json").write_text(json.dumps(tampered, indent=2))
    try:
        with pytest.raises(_preregistration.PreregistrationError, match="changed after it was frozen"):
            run_experiment(scaling_config(), out, progress=False)
    finally:
        (out / "predictions.json").write_bytes(before)


def test_sweep_runs_without_frozen_predictions_are_refused(tmp_path):
    (tmp_path / "runs" / "sweep-N4-p0.05-h13-s0").mkdir(parents=True)
    (tmp_path / "runs" / "sweep-N4-p0.05-h13-s0" / "manifest.json").write_text("{}")
    with pytest.raises(_preregistration.PreregistrationError, match="no predictions.json"):
        run_experiment(scaling_config(), tmp_path, progress=False)


def test_reanalysis_of_the_logs_reproduces_the_summary_without_fitting(finished, monkeypatch):
    from physrl import experiment

    out, summary, _ = finished
    monkeypatch.setattr(experiment.fitting, "fit", lambda *a, **k: pytest.fail("reanalyse must not fit"))
    again = experiment.reanalyse(out)
    for key in ("scaling", "scores", "cells"):
        assert again[key] == summary[key], key
    for p0, entry in summary["observed_n_star"].items():  # the smallest winning N per seed too, as JSON reads it
        assert json.loads(json.dumps(again["observed_n_star"][p0])) == json.loads(json.dumps(fitting.json_safe(entry)))
    assert again["preregistration"]["sha256"] == summary["preregistration"]["sha256"]
    assert {k: v["n_star"] for k, v in again["predicted_n_star"].items()} == \
        {k: v["n_star"] for k, v in summary["predicted_n_star"].items()}


def test_slope_words_give_the_interval_or_why_there_is_no_slope():
    from physrl.experiment.cli import slope_words

    assert slope_words({"value": -0.381, "interval_95": [-1.0057, 0.4766]}) == "-0.381, 95% [-1.01, 0.477]"
    assert slope_words({"value": -1.2, "interval_95": [-2.0, None]}) == "-1.2, 95% [-2, unbounded]"
    words = slope_words({"value": None, "interval_95": [None, None], "p0_used": [0.2], "share_undefined": 1.0})
    assert words.startswith("not defined (N* finite at 1 p0 only") and "100% of replicates" in words
    assert not NAN_OR_NONE.search(words)


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after the interrupted file operation runs (no except, no finally)."""


def _arm_file_operations(monkeypatch, kill_at: int) -> list[int]:
    """Count writes and renames; the ``kill_at``-th (1-based) raises _Killed instead of running."""
    count = [0]

    def arm(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                raise _Killed
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)

    for owner, name in ((Path, "write_text"), (Path, "write_bytes"), (Path, "replace"), (os, "replace")):
        arm(owner, name)
    return count


def test_a_kill_at_any_file_operation_of_the_freeze_leaves_a_folder_a_rerun_can_use(tmp_path, monkeypatch):
    """Before: predictions.json was renamed into place and only then its hash record written, so a kill
    between the two (seen with a real SIGKILL in `physrl experiment`) left a frozen file without a record, and
    every rerun refused the folder ('use a new --out folder'), calibration runs and all."""
    payload = {"cells": [{"p0": 0.1, "n_envs": 2, "budget": 10, "p_win": 0.3}], "threshold": 0.5}
    operations = None
    for kill_at in range(1, 20):
        out = tmp_path / f"kill{kill_at}"
        out.mkdir()
        with monkeypatch.context() as m:
            count = _arm_file_operations(m, kill_at)
            try:
                _preregistration.freeze(out, payload)
                operations = count[0]  # no operation left to kill at
            except _Killed:
                pass
        if not _preregistration.frozen(out):  # what the rerun does: freeze afresh, or verify what is there
            _preregistration.freeze(out, payload)
        _, frozen = _preregistration.verify(out)
        assert frozen["cells"] == payload["cells"], kill_at
        if operations is not None:
            break
    assert operations is not None and operations >= 3


def test_a_rerun_with_other_calibration_runs_is_refused_before_training_them(finished, monkeypatch):
    """Before: the rerun trained the new calibration run (after the sweep), reported its fit and protocol N*, and
    scored the old fit's frozen forecasts beside them, one report from two fits."""
    out, _, _ = finished
    calls = []
    monkeypatch.setattr(_runs, "train_one", ode_trainer(calls))
    changed = scaling_config(calibration=[{"n_envs": 2, "p0": 0.1, "n_held_out": 2},
                                          {"n_envs": 4, "p0": 0.2, "n_held_out": 2}])
    with pytest.raises(_preregistration.PreregistrationError,
                       match=r"came from the calibration runs \['cal-N1-p0.1-h2-s10', 'cal-N4-p0.2-h2-s10'\], this "
                             r"config calibrates on \['cal-N2-p0.1-h2-s10', 'cal-N4-p0.2-h2-s10'\]"):
        run_experiment(changed, out, progress=False)
    assert calls == [] and not (out / "runs" / "cal-N2-p0.1-h2-s10").exists()


def test_a_refused_rerun_leaves_the_folders_config_alone(finished, monkeypatch):
    """Before: a rerun refused for a sweep cell without a frozen prediction had already rewritten
    experiment.json with its own config (the refusal came after the fit), so reanalyse() read the refused
    config and failed on sweep runs that never existed."""
    out, _, _ = finished
    before = (out / "experiment.json").read_bytes()
    calls = []
    monkeypatch.setattr(_runs, "train_one", ode_trainer(calls))
    monkeypatch.setattr(fitting, "fit", lambda *a, **k: pytest.fail("a refused rerun must not fit"))
    with pytest.raises(_preregistration.PreregistrationError, match="do not cover"):
        run_experiment(scaling_config(n_envs_by_p0={"0.05": [4, 8, 16, 24], "0.1": [2, 4, 8], "0.2": [1, 2, 4]},
                                      n_star_max=32), out, progress=False)
    assert (out / "experiment.json").read_bytes() == before and calls == []


def test_a_rerun_whose_refit_moved_says_so_beside_the_frozen_forecasts(finished, tmp_path, monkeypatch):
    import shutil

    from physrl import experiment

    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    monkeypatch.setattr(_runs, "train_one", ode_trainer([]))
    real_fit = experiment.fitting.fit

    def moved_fit(*args, **kwargs):  # as if the fitting code had changed since the freeze
        result = real_fit(*args, **kwargs)
        result.estimates["time_scale"].value *= 1.5
        return result

    monkeypatch.setattr(experiment.fitting, "fit", moved_fit)
    again = run_experiment(scaling_config(), out, progress=False)
    drift = again["fit_matches_frozen"]
    assert drift["checked"] is True and drift["matches"] is False and list(drift["differing"]) == ["time_scale"]
    frozen, now = drift["differing"]["time_scale"]
    assert now == pytest.approx(1.5 * frozen)
    assert "differs from the fit that made the frozen predictions (time_scale)" in visible_text((out / "report.html").read_text())
    assert again["scores"] == finished[1]["scores"]  # the frozen forecasts are what is scored, still


def test_fit_drift_tolerates_optimizer_noise_and_reports_old_frozen_files():
    from types import SimpleNamespace as NS

    fit = NS(estimates={"c_z": NS(value=0.5), "c_x": NS(value=0.0)})
    assert _preregistration.fit_drift({"context": {"fit_parameters": {"c_z": 0.5 * (1 + 1e-5), "c_x": 1e-9}}},
                                      fit)["matches"] is True
    assert _preregistration.fit_drift({"context": {"fit_parameters": {"c_z": 0.51, "c_x": 0.0}}},
                                      fit)["differing"] == {"c_z": [0.51, 0.5]}
    assert _preregistration.fit_drift({"context": {}}, fit) == {"checked": False, "matches": None, "differing": {}}
