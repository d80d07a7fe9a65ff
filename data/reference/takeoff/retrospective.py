"""RETROSPECTIVE re-analysis of data/reference/scaling under the power selection law (issue 19, item 5).

NOT a pre-registered test: the sweep's outcomes were known when this was written and when the law was chosen
(on the takeoff data). It refits the scaling experiment's calibration runs with ``fitting.fit(...,
selection="power")``:

- ``cal``: the 4 calibration runs alone;
- ``cal+takeoff``: the 4 calibration runs and the adamw + group takeoff runs (the organisms' default algorithm,
  the one the scaling sweep was trained with);
- ``cal+takeoff, replicator (control)``: the same runs under the post's replicator law (γ = 1), a control for
  "more data" against "another law";

predicts the 120 sweep runs with the experiment's own protocol (``freeze.predict_sweep``, the same call, draws
and seed as the frozen forecasts) and scores them with the statistics the scaling reference now uses
(``analysis.score`` called as ``physrl.experiment.run`` calls it, issue 18): Brier and log loss against the
prospective baselines (the constant 0.5, the median-N rule, a Firth logistic in log N fitted to the calibration
runs alone) and the base rate (hindsight: the sweep's own win share), 95% percentile bootstrap over stage-1
models (every run of one stage-1 model together, resampled within each p0), at the budgets 200 and 400; and the
predicted slope of log N* on log p0 against the observed one (data/reference/scaling/summary.json). The frozen
forecasts are rescored the same way beside them. Each fit's per-cell P(RS wins) (``cells``: p0, n_envs, budget,
p_win) is stored, so the forecasts can be rescored without refitting.

    python data/reference/takeoff/retrospective.py TAKEOFF_RUNS_DIR [OUT_JSON [ONLY_THIS_FIT]]

TAKEOFF_RUNS_DIR is the takeoff experiment's ``runs/`` folder (full logs; the committed eval_counts.csv keeps
only the trained environment's eval counts, which the ODE fit does not read). ONLY_THIS_FIT is one of the
three names above (e.g. ``cal``), to time or rerun one fit. Cost: about 3.5 CPU minutes for all three fits.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from physrl import fitting
from physrl.experiment import analysis, freeze, scaling
from physrl.experiment.config import ExperimentConfig
from physrl.experiment.runs import CALIBRATION, SWEEP, plan_runs

HERE = Path(__file__).resolve().parent
SCALING = HERE.parent / "scaling"


def sweep_outcomes(config: ExperimentConfig, budgets: list[int], role: str = SWEEP):
    """The outcomes table (run_id, p0, n_envs, seed, budget, win, cluster = stage-1 model) of the runs of
    ``role`` (SWEEP or CALIBRATION), as the experiment's reanalyse reads it."""
    plan = {r.run_id: r for r in plan_runs(config, role)}
    loaded = fitting.load_runs([SCALING / "runs" / k for k in plan])
    runs = dict(zip(plan, loaded))
    obs = fitting.observations(list(runs.values()))
    return scaling.outcomes_table(obs, runs, plan, budgets, config.threshold, role=role)


def main(takeoff_runs: str, out_json: str | None = None, only: str | None = None) -> dict:
    config = ExperimentConfig.from_file(SCALING / "experiment.json")
    frozen = json.loads((SCALING / "predictions.json").read_text())
    budgets = [int(b) for b in frozen["context"]["budgets"]]
    grid = config.sweep_grid()
    cal_dirs = [SCALING / "runs" / k for k in frozen["context"]["calibration_runs"]]
    takeoff_dirs = sorted(p for p in Path(takeoff_runs).glob("adamw-group-*") if (p / "manifest.json").exists())
    sweep_cfg = {**json.loads((SCALING / "experiment.json").read_text())["organism"]}
    from physrl.organisms import OrganismConfig

    sweep_organism = OrganismConfig(**sweep_cfg)
    eval_rollouts = sweep_organism.eval_prompts_per_env * sweep_organism.num_generations
    outcomes = sweep_outcomes(config, budgets)
    calibration = sweep_outcomes(config, budgets, CALIBRATION)  # the prospective calibration-logistic baseline
    observed_slope = json.loads((SCALING / "summary.json").read_text())["scaling"]["by_budget"]
    result = {"label": "RETROSPECTIVE (the sweep outcomes were known; not a pre-registered test)",
              "law": "power: dz/dt = alpha_z sum_j C_ij w_j [p_j(1-p_j)]^gamma (a_j - b_j), skills as the post's",
              "scoring": "analysis.score as the scaling reference (issue 18): bootstrap over stage-1 models within p0; "
                         "prospective baselines 0.5, median-N rule, calibration logistic; base rate = hindsight",
              "frozen": {str(b): analysis.score(frozen, outcomes, b, grid, calibration=calibration).to_dict()
                         for b in budgets},
              "frozen_predicted_slope": frozen["slope"], "fits": {}}
    for name, dirs, selection in (("cal", cal_dirs, "power"), ("cal+takeoff", cal_dirs + takeoff_dirs, "power"),
                                  ("cal+takeoff, replicator (control)", cal_dirs + takeoff_dirs, "replicator")):
        if only and name != only:
            continue
        t0 = time.process_time()
        fit = fitting.fit(fitting.load_runs(dirs), transfer=config.transfer, max_nfev=config.fit_max_nfev,
                          selection=selection)
        t_fit = time.process_time() - t0
        est = fit.estimates.get("gamma")
        lo, hi = est.interval(0.95) if est is not None else (1.0, 1.0)
        payload = freeze.predict_sweep(fit, grid, budgets, config.threshold, eval_rollouts_per_env=eval_rollouts,
                                       n_star_max=config.n_star_max, n_draws=config.prediction_draws,
                                       seed=min(config.calibration_seed_list()))
        scores = {str(b): analysis.score(payload, outcomes, b, grid, calibration=calibration).to_dict()
                  for b in budgets}
        result["fits"][name] = {
            "runs": [p.name for p in dirs], "converged": bool(fit.converged),
            "selection": selection,
            "gamma": ({"value": est.value, "stderr": est.stderr, "interval95": [lo, hi],
                       "identified": bool(est.identified)} if est is not None else
                      {"value": 1.0, "stderr": None, "interval95": [1.0, 1.0], "identified": None,
                       "note": "held at the post's 1 (replicator law)"}),
            "parameters": {k: v.value for k, v in fit.estimates.items() if not k.startswith("p0_r")},
            "cpu_seconds_fit": t_fit, "cpu_seconds_total": time.process_time() - t0,
            "scores": scores, "predicted_slope": payload["slope"],
            "observed_slope": {b: observed_slope[b]["observed_slope"] for b in observed_slope},
            "n_star": payload["n_star"],
            "cells": [{k: c[k] for k in ("p0", "n_envs", "budget", "p_win")} for c in payload["cells"]]}
        print(name, json.dumps(fitting.json_safe(result["fits"][name]["gamma"])), flush=True)
    result = fitting.json_safe(result)
    if out_json:
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
