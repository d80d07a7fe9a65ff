"""The main job: a diversity experiment end to end, organisms → fit → predicted
vs observed critical diversity (docs/model.md §3, §6).

``run_experiment(config, out_dir)``:

1. trains every planned organism run through the configured executor
   (skipping finished runs, resuming unfinished ones);
2. fits the ODE on the calibration runs only (``fitting.fit``);
3. predicts every sweep run (``fitting.predict``) and the critical diversity
   N*(p0) under the organisms' protocol, and measures the observed N* from
   the sweep runs themselves;
4. writes ``DIR/report.html`` (self-contained) and ``DIR/summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from physrl import fitting
from physrl import _analysis, _figures
from physrl._runs import CALIBRATION, check_existing_runs, plan_runs, train_all
from physrl.experiment_config import ExperimentConfig
from physrl.report import write_report


def _parameters(fit_result) -> list[dict]:
    rows = []
    for name, est in fit_result.estimates.items():
        lo, hi = est.interval(0.95)
        rows.append({"name": name, "value": est.value, "stderr": est.stderr, "lower_95": lo, "upper_95": hi,
                     "identified": bool(est.identified), "vary": bool(est.vary), "meaning": est.meaning,
                     "reason": est.reason})
    return rows


def run_experiment(config: ExperimentConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run (or resume) the whole experiment; returns the summary written to ``summary.json``.

    Parameters
    ----------
    config : ExperimentConfig
    out_dir : path
        Everything goes here: ``runs/<run_id>/`` (rollout logs, docs/rollouts.md),
        ``fit/`` (fit.json, fit_report.txt), ``figures/``, ``report.html``,
        ``summary.json``, ``experiment.json`` (the resolved config).
    progress : bool
        Progress bars.

    Raises
    ------
    ValueError
        A bad organism config, or finished runs in ``out_dir`` trained with
        another config.
    RuntimeError
        If an organism run failed (rerunning resumes it).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    check_existing_runs(config, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(config.to_dict(), indent=2))
    dirs = train_all(config, out, progress=progress)
    t_train = time.perf_counter() - t0

    plan = {r.run_id: r for r in plan_runs(config)}
    runs = {r.run_id: r for r in fitting.load_runs([dirs[k] for k in plan])}
    runs = {plan_id: runs[_only(runs, dirs[plan_id])] for plan_id in plan}
    obs = fitting.observations(list(runs.values()))
    cal_ids = [k for k, r in plan.items() if r.role == CALIBRATION]
    sweep_ids = [k for k, r in plan.items() if r.role != CALIBRATION]

    fit_dir = out / "fit"
    fit_dir.mkdir(exist_ok=True)
    fit_result = fitting.fit([runs[k] for k in cal_ids], transfer=config.transfer, max_nfev=config.fit_max_nfev)
    fit_result.save(fit_dir / "fit.json")
    (fit_dir / "fit_report.txt").write_text(fit_result.report())

    max_steps = _max_steps(config, runs)
    points, predictions = [], {}
    for k in sweep_ids:
        r, run = plan[k], runs[k]
        last, final_p = _analysis.final_rs_share(obs, run)
        pred = fitting.predict(fit_result, run, p0=run.measured_prior(phases=("eval",)).pooled.value, n_star=False,
                               n_samples=100, seed=r.seed)
        predictions[k] = pred
        m = pred.metrics
        end = m.get("end_state", {})
        rmse = {lat: _mean_rmse(m.get("rmse", {}), lat) for lat in ("p", "a", "b")}
        predicted_p = end.get("predicted_mean_p")
        agrees = None if predicted_p is None else (final_p > config.threshold) == (predicted_p > config.threshold)
        points.append(_analysis.SweepPoint(k, r.n_envs, r.p0, r.seed, final_p, predicted_p,
                                           rmse, (m.get("coverage") or {}).get("all"), agrees))

    observed = _analysis.observed_n_star(points, config.threshold)
    # rounded so that a grid point equal to a configured p0 up to float noise appears once
    p0_grid = np.unique(np.round(np.concatenate([np.geomspace(min(config.p0) / 2, min(0.9, max(config.p0) * 2), 9),
                                                 config.p0]), 10))
    try:
        predicted = _analysis.predicted_n_star(fit_result, p0_grid, max_steps, config.n_star_max,
                                               config.threshold, seed=min(config.seeds))
        n_star_note = ""
    except ValueError as err:
        predicted = pd.DataFrame(columns=["p0", "n_star", "lower", "upper", "share_above_n_max"])
        n_star_note = str(err)

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    summary = _summary(config, fit_result, points, observed, predicted, predictions, n_star_note,
                       max_steps, t_train, time.perf_counter() - t0)
    sections = _figures.report_sections(config, obs, runs, plan, fit_result, points, observed, predicted,
                                        predictions, summary, figs)
    write_report(out / "report.html", f"physrl diversity experiment: {config.name}", sections,
                 preamble=f"{len(plan)} organism runs ({len(cal_ids)} calibration, {len(sweep_ids)} sweep), "
                          f"transfer model '{config.transfer}', threshold {config.threshold}. "
                          f"Config: experiment.json; logs: runs/; fit: fit/.")
    summary["seconds"]["total"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(fitting.json_safe(summary), indent=2))
    return fitting.json_safe(summary)


def _only(runs: dict, path: Path) -> str:
    hits = [k for k, r in runs.items() if Path(r.source).resolve() == Path(path).resolve()]
    if len(hits) != 1:
        raise RuntimeError(f"expected one run in {path}, found {len(hits)}")
    return hits[0]


def _max_steps(config: ExperimentConfig, runs: dict) -> int:
    steps = {int(r.manifest.steps or 0) for r in runs.values()}
    steps.discard(0)
    if len(steps) != 1:
        return int(max(int(r.rollouts.step.max()) for r in runs.values()))
    return steps.pop()


def _mean_rmse(rmse: dict, latent: str) -> float:
    vals = [v.get(latent) for v in rmse.values() if isinstance(v, dict) and v.get(latent) is not None]
    return float(np.mean(vals)) if vals else math.nan


def _summary(config, fit_result, points, observed, predicted, predictions, n_star_note, max_steps,
             t_train, t_total) -> dict:
    obs_by_p0 = {}
    for p0, group in observed.groupby("p0"):
        vals = group.n_star.to_numpy(float)
        obs_by_p0[f"{p0:g}"] = {"n_star": float(np.nanmedian(vals)) if np.isfinite(vals).any() else None,
                                "per_seed": {int(s): v for s, v in zip(group.seed, vals)},
                                "n_max": int(group.n_max.max()),
                                "meaning": "smallest swept N whose final RS share > threshold; "
                                           "null: no swept N passed"}
    pred_by_p0 = {f"{row.p0:g}": {"n_star": row.n_star, "interval_90": [row.lower, row.upper],
                                  "share_above_n_max": row.share_above_n_max, "n_max": config.n_star_max}
                  for row in predicted.itertuples() if any(np.isclose(row.p0, config.p0))}
    return {
        "name": config.name,
        "threshold": config.threshold,
        "transfer": config.transfer,
        "max_steps": max_steps,
        "observed_n_star": obs_by_p0,
        "predicted_n_star": pred_by_p0,
        "predicted_n_star_curve": predicted.to_dict(orient="records"),
        "predicted_n_star_note": n_star_note or
        "protocol N*: N envs sharing the batch (w = 1/N) for max_steps steps, homogeneous fit; "
        "90% interval over parameter draws; null: above n_max (no N up to n_max made RS win)",
        "runs": [{
            "run_id": p.run_id, "n_envs": p.n_envs, "p0": p.p0, "seed": p.seed,
            "observed_final_p": p.observed_final_p, "predicted_final_p": p.predicted_final_p,
            "rmse": p.rmse, "coverage": p.coverage, "end_state_agrees": p.end_state_agrees,
            "notes": predictions[p.run_id].notes,
        } for p in points],
        "parameters": _parameters(fit_result),
        "unidentified": list(fit_result.unidentified),
        "fit": {"aic": fit_result.aic, "bic": fit_result.bic, "loglik": fit_result.loglik,
                "n_data": fit_result.n_data, "seconds": fit_result.seconds,
                "converged": bool(fit_result.result.success), "nfev": int(fit_result.result.nfev),
                "notes": list(fit_result.notes)},
        "seconds": {"training": t_train, "total": t_total},
    }
