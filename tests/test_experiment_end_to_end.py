"""The main job end to end: organisms → fit → predicted vs observed N* → report.

Two paths: the analysis on ODE-sampled stand-in runs (fast, checks values),
and a reduced real experiment (tiny organisms, two N values, a few GRPO
steps) through the same command.
"""

import json
import math
from pathlib import Path

from conftest import NAN_OR_NONE, visible_text

from physrl import fitting
from physrl.experiment import runs as _runs
from physrl.organisms import OrganismConfig
from physrl.cli import main
from physrl.experiment import run_experiment
from physrl.experiment.config import ExperimentConfig

REPORT_SECTIONS = ["Verdict", "RS share over training", "Fitted parameters", "Predictions for the runs",
                   "N* curve over a wider range of p0", "Frozen predictions against outcomes"]
SUMMARY_KEYS = ["observed_n_star", "predicted_n_star", "runs", "parameters", "unidentified", "fit"]


def _check_outputs(out, cfg):
    html = (out / "report.html").read_text()
    for title in REPORT_SECTIONS:
        assert title in html, title
    assert html.count("data:image/png;base64,") >= 4  # every figure embedded, nothing linked
    summary = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert set(summary["observed_n_star"]) == {f"{p:g}" for p in cfg.p0}
    assert set(summary["predicted_n_star"]) == {f"{p:g}" for p in cfg.p0}
    for entry in summary["observed_n_star"].values():  # logistic 50% point (Firth) over the swept N
        assert entry["n_star"] is None or 0 < entry["n_star"] <= 2 * max(cfg.n_envs)
        assert len(entry["interval_95"]) == 2 and entry["budget"] == cfg.organism["max_steps"]
    for entry in summary["predicted_n_star"].values():  # frozen before the sweep was trained
        assert entry["n_star"] is None or 1 <= entry["n_star"] <= cfg.n_star_max
        assert len(entry["interval_95"]) == 2
    assert (out / "predictions.json").exists()
    assert summary["preregistration"]["sweep_logs_read_after"] is True
    assert len(summary["runs"]) == len(cfg.n_envs) * len(cfg.p0) * len(cfg.seeds)
    for run in summary["runs"]:
        assert 0 <= run["observed_final_p"] <= 1
        assert 0 <= run["predicted_final_p"] <= 1
        assert math.isfinite(run["rmse"]["p"]) and run["rmse"]["p"] >= 0
    for par in summary["parameters"]:
        assert math.isfinite(par["value"]), par["name"]
    return summary


def test_analysis_on_ode_sampled_runs_recovers_the_selection_effect(tmp_path, monkeypatch):
    """Stand-in runs sampled from the ODE with a known diversity effect: RS loses at N = 1
    and wins at N = 8; the observed and predicted N* must both say so."""
    cfg = ExperimentConfig(n_envs=[1, 8], p0=[0.1], organism={"max_steps": 150}, n_star_max=16)
    truth = {"a0": 0.6, "b0": 0.3, "time_scale": 1.0, "alpha_x": 1.0, "alpha_y": 1.0,
             "c_z": 0.9, "c_x": 0.9, "c_y": 0.05}
    cfg.executor.max_workers = 1  # the stand-in trainer runs in this process

    def train_one(organism, run_dir, resume):  # stand in for the planned organism: sample the ODE
        planned = OrganismConfig(**organism)
        # organisms name their runs organism-<time>-<hash>, not like the experiment's folder
        run_dir = fitting.synthesize(run_dir, n_envs=planned.n_envs, n_heldout=planned.n_heldout,
                                     seed=planned.n_envs, params={**truth, "p0": planned.p0}, steps=150,
                                     eval_every=10, rollouts_per_env=48, run_id=f"organism-{planned.n_envs}-"
                                     f"{planned.n_heldout}")
        manifest = json.loads((run_dir / "manifest.json").read_text())
        (run_dir / "manifest.json").write_text(json.dumps({**manifest, "organisms": {"config": planned.to_dict()}}))
        return str(run_dir)

    monkeypatch.setattr(_runs, "train_one", train_one)
    summary = run_experiment(cfg, tmp_path, progress=False)
    _check_outputs(tmp_path, cfg)
    by_n = {r["n_envs"]: r for r in summary["runs"]}
    assert by_n[1]["observed_final_p"] < 0.5 < by_n[8]["observed_final_p"]
    assert summary["observed_n_star"]["0.1"]["bracket"] == [1, 8]  # separated: N* in (1, 8]
    assert 1 < summary["observed_n_star"]["0.1"]["n_star"] < 8
    assert summary["observed_n_star"]["0.1"]["smallest_winning_n_per_seed"] == {"0": 8.0}
    predicted = summary["predicted_n_star"]["0.1"]["n_star"]
    assert predicted is not None and 2 <= predicted <= 8
    assert all(r["end_state_agrees"] for r in summary["runs"])
    _check_one_p0_words(tmp_path, summary)


def _check_one_p0_words(out, summary):
    """One p0 and one seed by design (the demo): the report names each N* estimator, quotes the
    separated seed's bracket, says neutrally that no slope is measured, and shows no nan/None."""
    from physrl.experiment.cli import n_star_lines

    obs, pred = summary["observed_n_star"]["0.1"], summary["predicted_n_star"]["0.1"]
    assert obs["headline"] == "in (1, 8]" and obs["estimator"].startswith("logistic 50% point")
    assert pred["estimator"].startswith("frozen before the sweep")
    assert pred["protocol_grid"]["estimator"].startswith("the fit's protocol N* on the integer grid")
    text = visible_text((out / "report.html").read_text())
    assert "observed N* in (1, 8] (one seed, perfectly separated: every N ≤ 1 lost, every N ≥ 8 won" in text
    assert "One prior, p0 = 0.1, by design" in text and "measures no slope of log N* on log p0" in text
    assert "give no scaling law" not in text and "not finite at two or more p0" not in text
    assert "1 seed per cell (sweep seed 0;" in text and "1 seeds" not in text
    assert "there is no line of N* against p0 to draw, so no figure" in text
    assert not (out / "figures" / "n_star_law.png").exists()
    assert "smallest swept N whose run ended RS: 8 (seed 0); the fit's protocol N* on the integer grid 1..16:" in text
    assert not NAN_OR_NONE.findall(text), NAN_OR_NONE.findall(text)
    # fitted parameters by run folder (the organism's run_id beside it only in the fit figures' captions)
    params = {p["name"]: p for p in summary["parameters"]}
    folder = params["p0_r0"]["run"]
    assert folder.startswith("cal-N1-") and (out / "runs" / folder).is_dir()
    assert params["p0_r0"]["run_id"] == "organism-1-2" and f"<td>{folder}</td>" in (out / "report.html").read_text()
    assert "organism-1-2" not in params["p0_r0"]["note"] and "at bound; " not in text
    assert "fixed (" not in text and "held at its step-0 measurement" in text
    assert "step-0 table: the initial state measured" in text
    # the parameter table quotes a0, b0 on both scales and says why p0 is not k/n (docs/model.md §7)
    step0 = {r["param"]: r for r in summary["step0"]}
    a0 = step0["a0"]
    assert (f"latent σ(x0) = {params['a0']['value']:.4f}, RS skill at step 0; in observed reward units "
            f"a0 = {a0['fitted']:.3f}") in text
    p0 = step0["p0_r0"]
    n = int(round(p0["n"]))
    k = int(round(p0["measured"] * n))
    assert f"held at the Jeffreys mean (k + ½)/(n + 1) = ({k} + ½)/({n} + 1) of its step-0 count {k}/{n}" in text
    assert math.isclose(params["p0_r0"]["value"], (k + 0.5) / (n + 1), rel_tol=1e-9)
    # per-run notes say where p0 came from; the figures say which band coverage counts
    for r in summary["runs"]:
        assert r["notes"][0].startswith("p0 = ") and "the run's measured eval RS share at step 0" in r["notes"][0]
        assert "from argument" not in " ".join(r["notes"])
    assert "light band: the 90% predictive band" in text and "pooled share in light band" in text
    assert "inside their own 90% predictive band" in text
    assert {r["param"] for r in summary["step0"]} >= {"p0_r0", "p0_r1"}
    for row in summary["step0"]:
        lo, hi = row["measured_95"]
        assert 0 <= lo <= row["measured"] <= hi <= 1
    lines = n_star_lines(summary)
    assert lines[0] == "N* at p0 = 0.1:"
    assert lines[1].startswith("  observed, from win/loss against N: in (1, 8] (one seed, perfectly separated")
    assert lines[2] == "  observed, smallest swept N that ended RS: 8 (seed 0)"
    assert lines[3].startswith("  predicted, frozen before the sweep (continuous N, 95% over parameter draws): ")
    assert lines[4].startswith("  predicted, the fit's protocol on the integer grid (90% over parameter draws): ")
    assert not any(NAN_OR_NONE.search(line) for line in lines)


def test_reduced_real_experiment_through_the_command_line(tmp_path):
    """Tiny organisms, two N values, a few GRPO steps: the whole command, report and summary."""
    config = tmp_path / "exp.toml"
    config.write_text("""
name = "reduced"
n_envs = [1, 2]
p0 = [0.2]
n_star_max = 8
calibration = [{n_envs = 1, p0 = 0.2, n_held_out = 1}]
[organism]
max_steps = 4
eval_every = 2
pretrain_steps = 60
groups_per_step = 2
num_generations = 4
eval_prompts_per_env = 1
checkpoint_every = 2
[executor]
engine = "local"
max_workers = 2
""")
    out = tmp_path / "out"
    assert main(["experiment", str(config), "--out", str(out), "--no-progress"]) == 0
    cfg = ExperimentConfig.from_file(config)
    _check_outputs(out, cfg)
    # a rerun skips every finished run and rewrites the same summary keys
    before = {p.parent.name: p.stat().st_mtime for p in (out / "runs").glob("*/manifest.json")}
    assert main(["experiment", str(config), "--out", str(out), "--no-progress"]) == 0
    after = {p.parent.name: p.stat().st_mtime for p in (out / "runs").glob("*/manifest.json")}
    assert before == after
    # ... and a rerun with another organism config refuses to mix it with the finished runs
    assert main(["experiment", str(config), "--out", str(out), "--no-progress",
                 "--set", "organism.max_steps=6"]) == 2
    assert json.loads((out / "experiment.json").read_text())["organism"]["max_steps"] == 4


def test_bad_experiment_config_exits_2_naming_the_field(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("n_envs = [1, 2]\np0 = [1.5]\n")
    assert main(["experiment", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "p0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_organism_value_stops_before_any_run(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("n_envs = [1]\np0 = [0.2]\n[organism]\nmax_steps = -4\n")
    assert main(["experiment", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "max_steps" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
