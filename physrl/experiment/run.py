"""The pipeline: a diversity experiment end to end, organisms → fit → predicted
vs observed critical diversity (docs/model.md §3, §6).

``run_experiment(config, out_dir)``:

1. trains the calibration runs through the configured executor (skipping
   finished runs, resuming unfinished ones);
2. fits the ODE on the calibration runs only (``fitting.fit``);
3. freezes its predictions for every sweep cell, N*(p0) and the scaling
   slope in ``DIR/predictions.json`` (sha256 and write time recorded) before
   any sweep run is trained; a rerun verifies that file and never rewrites it
   (:mod:`physrl.experiment.freeze`);
4. trains the sweep runs, then predicts each of them (``fitting.predict``),
   measures P(RS wins | N, p0), the observed N*(p0) and the slope of log N*
   on log p0 with bootstrap intervals over stage-1 models at every step
   budget (:mod:`physrl.experiment.scaling`), the stage-1 models' share of
   the outcome variance (:mod:`physrl.experiment.replication`), and scores
   the frozen predictions against hindsight and prospective baselines
   (:mod:`physrl.experiment.analysis`); the frozen forecast's agreement and
   the per-run prediction's agreement are reported under distinct names;
5. writes ``DIR/report.html`` (self-contained) and ``DIR/summary.json``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from physrl import fitting
from physrl._util.progress import stage

from . import analysis as _analysis, figures as _figures, freeze as _freeze, replication as _replication
from . import scaling as _scaling
from . import headline as _headline, scaling_figures as _scaling_figures, words as _words
from .config import ExperimentConfig
from .report import write_report
from .runs import CALIBRATION, SWEEP, check_existing_runs, organism_configs, plan_runs, train_all


_LATENT = {"z": "RS propensity z", "x": "RS skill x", "y": "local skill y"}


def _parameter_note(est) -> str:
    """One clean sentence on what a fitted parameter is and how it was treated (no run ids:
    the run is a column of its own)."""
    info = est.info
    kind, latent = (info.kind, info.latent) if info else ("", None)
    what = {"p0": "prior p0 (RS share at step 0)",
            "a0": "latent σ(x0), RS skill at step 0 (observed a0: step-0 table)",
            "b0": "latent σ(y0), local skill at step 0 (observed b0: step-0 table)",
            "time_scale": "model time per optimizer step",
            "alpha": f"learnability of the {_LATENT.get(latent, latent)}",
            "c": f"transfer (coupling) of the {_LATENT.get(latent, latent)} between environments",
            "length_scale": f"kernel length scale of the {_LATENT.get(latent, latent)}'s transfer",
            "lam": "λ: the RS path's gain from local skill (footnote 4)",
            "bound": "a fitted observation bound (docs/model.md §7)"}.get(kind, "")
    if info and info.env is not None:
        what = f"{what}, env {info.env}" if what else f"env {info.env}"
    if not est.identified:
        how = f"not identified: {est.reason}" if est.reason else "not identified"
    elif not est.vary:
        how = ("held at its step-0 measurement" if kind in ("p0", "a0", "b0") else
               "fixed: the time unit (alpha_z and time_scale are degenerate in step units)" if kind == "alpha"
               else est.reason or "fixed")
    elif est.at_bound:
        how = "at its bound: the interval is one-sided"
    else:
        how = ""
    return "; ".join(x for x in (what, how) if x)


def _parameters(fit_result, folder_of: dict | None = None) -> list[dict]:
    """Every fitted parameter with its 95% interval; ``run`` is the run's folder name (``folder_of``
    maps the organisms' run_id to it) for per-run parameters, None for shared ones."""
    folder_of = folder_of or {}
    run_ids = fit_result.problem.run_ids
    rows = []
    for name, est in fit_result.estimates.items():
        lo, hi = est.interval(0.95)
        run_index = est.info.run if est.info is not None else None
        run_id = run_ids[run_index] if run_index is not None else None
        rows.append({"name": name, "value": est.value, "stderr": est.stderr, "lower_95": lo, "upper_95": hi,
                     "identified": bool(est.identified), "vary": bool(est.vary), "meaning": est.meaning,
                     "reason": est.reason, "run": folder_of.get(run_id, run_id), "run_id": run_id,
                     "note": _parameter_note(est)})
    return rows


def _step0_rows(fit_result, folder_of: dict | None = None) -> list[dict]:
    """The measured initial state each p0 / a0 / b0 parameter was held at (or against), per run
    (shared parameters: pooled over the calibration runs), with the fitted value in observed units."""
    folder_of = folder_of or {}
    table = fit_result.initial_state()
    run_ids = fit_result.problem.run_ids
    rows = []
    for row in table.itertuples():
        info = fit_result.problem.info[row.param]
        run_id = run_ids[info.run] if info.run is not None else None
        rows.append({"param": row.param, "quantity": row.quantity, "step": int(row.step), "n": float(row.n),
                     "measured": row.measured, "measured_95": [row.measured_lower, row.measured_upper],
                     "fitted": row.fitted, "inside": bool(row.inside),
                     "run": folder_of.get(run_id, run_id) if run_id else None, "run_id": run_id,
                     "env": info.env})
    return rows


def run_experiment(config: ExperimentConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run (or resume) the whole experiment; returns the summary written to ``summary.json``.

    Parameters
    ----------
    config : ExperimentConfig
    out_dir : path
        Everything goes here: ``runs/<run_id>/`` (rollout logs, docs/rollouts.md),
        ``fit/`` (fit.json, fit_report.txt), ``figures/``, ``report.html``,
        ``summary.json``, ``experiment.json`` (the resolved config), ``logs/progress/<run_id>.json``
        (each organism run's GRPO step while it trains).
    progress : bool
        Progress bars on stderr: one per stage, its clock redrawn every second; while organisms train, a
        second bar with each running run's step.

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
    plan = {r.run_id: r for r in plan_runs(config)}
    cal_ids = [k for k, r in plan.items() if r.role == CALIBRATION]
    sweep_ids = [k for k, r in plan.items() if r.role != CALIBRATION]
    _freeze.check_order(out, [out / "runs" / k for k in sweep_ids])
    resolved = organism_configs(config)
    max_steps = int(resolved[sweep_ids[0]]["max_steps"])
    budgets = sorted({b for b in config.budgets if b < max_steps} | {max_steps})
    grid = config.sweep_grid()
    if _freeze.frozen(out):  # a rerun: refused now, before any run is trained or experiment.json
        _freeze.check_calibration(out, cal_ids)  # (the config reanalyse reads) is rewritten
        _freeze.check_coverage(_freeze.verify(out)[1], grid, budgets, config.threshold)
    out.mkdir(parents=True, exist_ok=True)
    fitting.write_json(out / "experiment.json", config.to_dict())

    # 1-2. calibration runs, then the fit on them alone
    dirs = train_all(config, out, progress=progress, role=CALIBRATION)
    with stage(f"reading the logs of {len(cal_ids)} calibration runs", 1, enabled=progress, unit="read") as bar:
        cal_runs = {k: r for k, r in zip(cal_ids, _load(dirs, cal_ids))}
        bar.update(1)
    t_cal = time.perf_counter() - t0
    fit_dir = out / "fit"
    fit_dir.mkdir(exist_ok=True)
    # the fit's own bar counts evaluations once its problem is built; this one keeps time from the start
    with stage(f"fitting the ODE on {len(cal_ids)} calibration runs", 1, enabled=progress, unit="fit") as bar:
        # step0="fixed": the protocol registered with the frozen predictions (data/reference/*/fit/fit.json);
        # fitting.fit's default moved to "free" (issue 18.7), which would refit another calibration
        fit_result = fitting.fit([cal_runs[k] for k in cal_ids], transfer=config.transfer, step0="fixed",
                                 max_nfev=config.fit_max_nfev, progress=progress)
        bar.update(1)
    fit_result.save(fit_dir / "fit.json")
    fitting.write_text(fit_dir / "fit_report.txt", fit_result.report())

    # 3. frozen predictions, before any sweep run exists
    if _freeze.frozen(out):
        registration, frozen = _freeze.verify(out)
        _freeze.check_coverage(frozen, grid, budgets, config.threshold)
        _say(progress, f"frozen predictions verified (sha256 {registration.sha256[:12]}…)")
        drift = _freeze.fit_drift(frozen, fit_result)
        if drift["matches"] is False:
            _say(progress, "warning: this calibration fit differs from the one that made the frozen predictions "
                           f"({', '.join(drift['differing'])}); the report says so")
    else:
        _say(progress, "freezing predictions for every sweep cell before the sweep is trained")
        sweep_cfg = resolved[sweep_ids[0]]
        with stage("freezing predictions (N* search and cells per budget and p0)", 2 * len(budgets) * len(grid),
                   enabled=progress, unit="call") as bar:
            payload = _freeze.predict_sweep(
                fit_result, grid, budgets, config.threshold,
                eval_rollouts_per_env=int(sweep_cfg["eval_prompts_per_env"]) * int(sweep_cfg["num_generations"]),
                n_star_max=config.n_star_max, n_draws=config.prediction_draws,
                seed=min(config.calibration_seed_list()), done=bar.update)
        payload["context"] = {"calibration_runs": cal_ids, "grid": {f"{p:g}": ns for p, ns in grid.items()},
                              "seeds": config.seeds, "budgets": budgets, "max_steps": max_steps,
                              "fit_parameters": {n: e.value for n, e in fit_result.estimates.items()}}
        registration = _freeze.freeze(out, payload)
        registration, frozen = _freeze.verify(out)
        drift = _freeze.fit_drift(frozen, fit_result)

    # 4. the sweep, trained and read only now
    dirs.update(train_all(config, out, progress=progress, role=SWEEP))
    registration = _freeze.check_read_after(registration, [dirs[k] for k in sweep_ids])
    t_train = time.perf_counter() - t0
    with stage(f"reading the logs of {len(sweep_ids)} sweep runs", 1, enabled=progress, unit="read") as bar:
        runs = {**cal_runs, **{k: r for k, r in zip(sweep_ids, _load(dirs, sweep_ids))}}
        runs = {k: runs[k] for k in plan}
        obs = fitting.observations(list(runs.values()))
        bar.update(1)

    points, predictions = [], {}
    # each stage-1 model's local floor b_lo, measured at step 0 over all of its runs (docs/model.md §7)
    floors, _ = fitting.stage1_floors(list(runs.values()), obs)
    with stage("predicting sweep runs", len(sweep_ids), enabled=progress, unit="run") as bar:
        for k in sweep_ids:
            points.append(_predict_one(config, fit_result, obs, plan[k], runs[k], k, predictions, floors))
            bar.update(1)

    observed = _analysis.observed_n_star(points, config.threshold)
    # rounded so that a grid point equal to a configured p0 up to float noise appears once
    p0_grid = np.unique(np.round(np.concatenate([np.geomspace(min(config.p0) / 2, min(0.9, max(config.p0) * 2), 9),
                                                 config.p0]), 10))
    predicted = pd.DataFrame(columns=["p0", "n_star", "lower", "upper", "share_above_n_max"])
    if not fit_result.converged:  # a fit stopped at its cap is not an answer: no N* is claimed
        n_star_note = f"fit did not converge ({fit_result.diagnostics.message}): no N* is claimed"
    else:
        try:
            with stage(f"the fit's protocol N* curve over {len(p0_grid)} priors", len(p0_grid), enabled=progress,
                       unit="p0") as bar:
                rows = []
                for p0 in p0_grid:  # one prior at a time (each independent, same seed): the same table
                    rows.append(_freeze.predicted_n_star(fit_result, [p0], max_steps, config.n_star_max,
                                                         config.threshold, seed=min(config.seeds)))
                    bar.update(1)
            predicted = pd.concat(rows, ignore_index=True)
            n_star_note = ""
        except ValueError as err:
            n_star_note = str(err)

    outcomes = _scaling.outcomes_table(obs, runs, plan, budgets, config.threshold)
    calibration = _scaling.outcomes_table(obs, runs, plan, budgets, config.threshold, role=CALIBRATION)
    with stage(f"observed N*: logistic fits and {config.bootstrap} bootstrap replicates over stage-1 models, "
               "per budget", len(budgets), enabled=progress, unit="budget") as bar:
        scaling = _scaling_analysis(config, outcomes, frozen, budgets, max_steps, grid, calibration,
                                    done=bar.update)

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    folder_of = {run.run_id: k for k, run in runs.items()}  # the organisms' run_id -> its folder under runs/
    summary = _summary(config, fit_result, points, observed, predicted, predictions, n_star_note,
                       max_steps, t_train, time.perf_counter() - t0, folder_of)
    summary["seconds"]["calibration"] = t_cal
    summary["classifier_accuracy"] = _analysis.pooled_accuracy(runs.values())
    protocol_grid = summary["predicted_n_star"]
    summary.update(_scaling_summary(config, scaling, frozen, registration, budgets, max_steps))
    summary["agreement"]["per_run_prediction"] = _per_run_agreement(points)
    summary["fit_matches_frozen"] = drift
    _add_smallest_winning_n(summary, outcomes, max_steps)
    for key, entry in summary["predicted_n_star"].items():
        entry["protocol_grid"] = protocol_grid.get(key)
    with stage("writing the report (figures and tables)", 4, enabled=progress, unit="part") as bar:
        lead = _headline.first_screen(summary, outcomes, figs)
        bar.update(1)
        sections = _scaling_figures.scaling_sections(config, summary, scaling, frozen, outcomes, figs)
        bar.update(1)
        sections += _figures.report_sections(config, obs, runs, plan, fit_result, points, observed, predicted,
                                             predictions, summary, figs)
        bar.update(1)
        sections += _figures.accuracy_section(summary["classifier_accuracy"])
        bar.update(1)
    write_report(out / "report.html", f"physrl diversity experiment: {config.name}", sections,
                 preamble=f"{len(plan)} organism runs ({len(cal_ids)} calibration, {len(sweep_ids)} sweep), "
                          f"transfer model '{config.transfer}', threshold {config.threshold}. "
                          f"Config: experiment.json; logs: runs/; fit: fit/; frozen predictions: "
                          f"{_freeze.PREDICTIONS_FILE}.",
                 lead=lead)
    summary["seconds"]["total"] = time.perf_counter() - t0
    fitting.write_json(out / "summary.json", summary)  # atomic: a kill mid-write keeps the previous summary whole
    return fitting.json_safe(summary)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[physrl] {message}", file=sys.stderr, flush=True)


def _predict_one(config, fit_result, obs, r, run, k: str, predictions: dict, floors: dict | None = None):
    """Predict one sweep run with the fitted ODE (stored in ``predictions[k]``); returns its SweepPoint.
    ``floors``: each stage-1 model's local floor measured over all its runs (:func:`fitting.stage1_floors`)."""
    last, final_p = _analysis.final_rs_share(obs, run)
    # the run's own stage-1 model starts where it was measured at step 0: p0, a0 and b0 with their
    # measurement noise (Jeffreys) drawn into every band and P(RS wins), never treated as exact, and its
    # local floor b_lo is the stage-1 model's, measured at step 0 over every run of that model
    pred = fitting.predict(fit_result, run, n_star=False, n_samples=100, seed=r.seed, level=0.9,
                           threshold=config.threshold, start="measured", floors=floors)
    predictions[k] = pred
    m = pred.metrics
    rmse = {lat: _mean_rmse(m.rmse, lat) for lat in ("p", "a", "b")}
    rmse["p_trained"] = m.rmse_p  # RS share over the trained envs' eval points
    predicted_p = m.end_state.predicted_mean_p
    agrees = None if predicted_p is None else (final_p > config.threshold) == (predicted_p > config.threshold)
    return _analysis.SweepPoint(k, r.n_envs, r.p0, r.seed, final_p, predicted_p, rmse, m.coverage.get("p"), agrees)


def _load(dirs: dict, ids: list[str]) -> list:
    """fitting.Run objects of ``ids`` in that order."""
    loaded = {r.run_id: r for r in fitting.load_runs([dirs[k] for k in ids])}
    return [loaded[_only(loaded, dirs[k])] for k in ids]


def _scaling_analysis(config, outcomes: pd.DataFrame, frozen: dict, budgets: list[int], max_steps: int,
                      grid: dict, calibration: pd.DataFrame | None = None, done=None) -> dict:
    """Per budget: win table, observed N*(p0), observed and predicted slopes, scores, the random-intercept
    model of the stage-1 models (``calibration``: the calibration runs' outcomes, for the prospective
    baseline); ``done(1)`` after each budget (e.g. a progress bar's ``update``)."""
    by_budget = {}
    for b in budgets:
        estimates, reps, p0s, seeds = _scaling.n_star_by_p0(outcomes, b, n_boot=config.bootstrap,
                                                            seed=min(config.seeds))
        at = outcomes[outcomes.budget == b]
        edges = [(float(at.n_envs[np.isclose(at.p0, p)].min()), float(at.n_envs[np.isclose(at.p0, p)].max()))
                 for p in p0s]
        observed_slope = _scaling.slope_with_interval(
            p0s, [e.n_star for e in estimates], reps,
            "percentile bootstrap over stage-1 models (resampled within each p0); every replicate enters, an N* "
            "beyond the swept grid censored at the grid's edge", edges=edges)
        try:
            mixed = _replication.random_intercept_logit(outcomes, b, seed=min(config.seeds))
        except ValueError as err:  # fewer than three stage-1 models: said, not fatal
            mixed = {"error": str(err)}
        by_budget[b] = {"estimates": estimates, "observed_slope": observed_slope,
                        "predicted_slope": frozen["slope"][str(b)],
                        "win_table": _scaling.win_table(outcomes, b),
                        "scores": _analysis.score(frozen, outcomes, b, grid, calibration=calibration),
                        "random_intercept": mixed,
                        "p0": p0s, "seeds": seeds}
        if done is not None:
            done(1)
    return {"by_budget": by_budget, "primary": max_steps}


def _scaling_summary(config, scaling: dict, frozen: dict, registration, budgets, max_steps) -> dict:
    primary = scaling["by_budget"][max_steps]

    def mixed_dict(m):
        return m.to_dict() if hasattr(m, "to_dict") else m

    def outcomes_clusters(sc, b):
        m = sc["by_budget"][b]["random_intercept"]
        return m.n_clusters if hasattr(m, "n_clusters") else sc["by_budget"][b]["scores"].bootstrap["units"]

    frozen_n_star = {(round(c["p0"], 12), c["budget"]): c for c in frozen["n_star"]}

    def slope_entry(b):
        part = scaling["by_budget"][b]
        return {"observed_slope": part["observed_slope"].to_dict(), "predicted_slope": part["predicted_slope"]}

    grid = config.sweep_grid()
    observed = {}
    for est in primary["estimates"]:
        entry = est.to_dict()
        entry["by_budget"] = {str(b): next(e.to_dict() for e in scaling["by_budget"][b]["estimates"]
                                           if e.p0 == est.p0) for b in budgets}
        ns = next((v for p, v in grid.items() if math.isclose(p, est.p0, rel_tol=1e-9)), None)
        # added keys (summary.json stays backward compatible): which estimator, and how to quote it
        entry["estimator"] = _words.OBSERVED_LOGISTIC
        entry["headline"] = _words.observed_headline(entry, (min(ns), max(ns)) if ns else None)
        entry["headline_basis"] = _words.observed_basis(entry)
        observed[f"{est.p0:g}"] = entry
    cells = []
    for b in budgets:
        table = scaling["by_budget"][b]["win_table"]
        forecast = {(round(c["p0"], 12), c["n_envs"]): c for c in frozen["cells"] if c["budget"] == b}
        for row in table.itertuples():
            f = forecast[(round(row.p0, 12), int(row.n_envs))]
            cells.append({"p0": row.p0, "n_envs": int(row.n_envs), "budget": b, "wins": int(row.wins),
                          "n": int(row.n), "p_win_observed": row.p_win, "interval_95": [row.lower, row.upper],
                          "p_win_predicted": f["p_win"], "final_p_predicted": f["final_p"],
                          "final_p_band_95": f["final_p_band_95"]})
    pred_by_p0 = {f"{p0:g}": {k: v for k, v in frozen_n_star[(round(p0, 12), max_steps)].items()
                              if k not in ("p0",)} for p0 in config.p0}
    for entry in pred_by_p0.values():
        entry["estimator"] = _words.PREDICTED_FROZEN
        entry["headline"] = _words.predicted_headline(entry["n_star"], entry["interval_95"],
                                                            n_max=entry["n_max"], level=95)
    return {
        "scaling": {"observed_slope": primary["observed_slope"].to_dict(),
                    "predicted_slope": primary["predicted_slope"],
                    "canonical_slope": _scaling.CANONICAL_SLOPE,
                    "p0": primary["p0"], "seeds": primary["seeds"],
                    "calibration_seeds": config.calibration_seed_list(),
                    "calibration_seeds_reused_in_sweep": bool(set(config.calibration_seed_list())
                                                              & set(config.seeds)),
                    "budget": max_steps, "budgets": budgets,
                    "by_budget": {str(b): slope_entry(b) for b in budgets},
                    "design": {"grid": {f"{p:g}": ns for p, ns in config.sweep_grid().items()},
                               "family_heldout": config.family_heldout,
                               "vary_family_seed": config.vary_family_seed}},
        "observed_n_star": observed,
        "predicted_n_star": pred_by_p0,
        "preregistration": registration.to_dict(),
        "scores": {**primary["scores"].to_dict(),
                   "by_budget": {str(b): scaling["by_budget"][b]["scores"].to_dict() for b in budgets},
                   "log_loss_floor": _analysis.LOG_LOSS_FLOOR},
        "agreement": {"frozen_forecast": _frozen_agreement(primary["scores"])},
        "replication": {"unit": _replication.CLUSTER, "source": _replication.CLUSTER_SOURCE,
                        "clusters": int(outcomes_clusters(scaling, max_steps)),
                        "random_intercept": mixed_dict(primary["random_intercept"]),
                        "by_budget": {str(b): mixed_dict(scaling["by_budget"][b]["random_intercept"])
                                      for b in budgets}},
        "cells": cells,
        "fit_converged_for_predictions": frozen["fit"]["converged"],
    }


def _frozen_agreement(scores) -> dict:
    """summary.json's ``agreement.frozen_forecast``: the frozen forecast's calls against the outcomes."""
    return {"name": _words.FROZEN_AGREEMENT, "basis": _words.FROZEN_AGREEMENT_BASIS,
            "agree": scores.frozen_agreement_count, "of": scores.n_events, "share": scores.frozen_agreement,
            "interval_95": scores.interval_95.get("frozen_agreement"), "unit": scores.bootstrap.get("unit"),
            "budget": scores.budget}


def _per_run_agreement(points) -> dict:
    """summary.json's ``agreement.per_run_prediction``: each sweep run's own after-the-fact prediction's end state
    against the outcome (``runs[].end_state_agrees``)."""
    judged = [p for p in points if p.end_state_agrees is not None]
    return {"name": _words.PER_RUN_AGREEMENT, "basis": _words.PER_RUN_AGREEMENT_BASIS,
            "agree": int(sum(bool(p.end_state_agrees) for p in judged)), "of": len(judged),
            "share": (sum(bool(p.end_state_agrees) for p in judged) / len(judged)) if judged else None}


def _only(runs: dict, path: Path) -> str:
    hits = [k for k, r in runs.items() if Path(r.source).resolve() == Path(path).resolve()]
    if len(hits) != 1:
        raise RuntimeError(f"expected one run in {path}, found {len(hits)}")
    return hits[0]


def _mean_rmse(rmse: dict, latent: str) -> float:
    vals = [v.get(latent) for v in rmse.values() if isinstance(v, dict) and v.get(latent) is not None]
    return float(np.mean(vals)) if vals else math.nan


def _summary(config, fit_result, points, observed, predicted, predictions, n_star_note, max_steps,
             t_train, t_total, folder_of: dict | None = None) -> dict:
    obs_by_p0 = {}
    for p0, group in observed.groupby("p0"):
        vals = group.n_star.to_numpy(float)
        obs_by_p0[f"{p0:g}"] = {"n_star": float(np.nanmedian(vals)) if np.isfinite(vals).any() else None,
                                "per_seed": {int(s): v for s, v in zip(group.seed, vals)},
                                "n_max": int(group.n_max.max()),
                                "meaning": "smallest swept N whose final RS share > threshold; "
                                           "null: no swept N passed"}
    pred_by_p0 = {f"{row.p0:g}": {"n_star": row.n_star, "interval_90": [row.lower, row.upper],
                                  "share_above_n_max": row.share_above_n_max, "n_max": config.n_star_max,
                                  "estimator": _words.PREDICTED_GRID,
                                  "headline": _words.predicted_headline(
                                      row.n_star, [row.lower, row.upper], n_max=config.n_star_max, level=90,
                                      digits=6)}
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
        "parameters": _parameters(fit_result, folder_of),
        "step0": _step0_rows(fit_result, folder_of),
        "unidentified": list(fit_result.unidentified),
        "fit": {"aic": fit_result.aic, "bic": fit_result.bic, "loglik": fit_result.loglik,
                "n_data": fit_result.n_data, "seconds": fit_result.seconds,
                "converged": bool(fit_result.converged), "status": fit_result.diagnostics.status,
                "nfev": int(fit_result.diagnostics.nfev), "dispersion": fit_result.dispersion,
                "component_dispersion": fit_result.diagnostics.component_dispersion,
                "initial_state": fit_result.to_dict()["initial_state"],
                "notes": list(fit_result.notes)},
        "seconds": {"training": t_train, "total": t_total},
    }


def reanalyse(out_dir: str | Path) -> dict:
    """Re-read a finished experiment folder without training or fitting anything.

    From the sweep runs' logs and the frozen ``predictions.json`` (its hash
    verified) alone: the outcomes at every budget, P(RS wins | N, p0), the
    observed N*(p0), the observed slope with its bootstrap interval, and the
    scores of the frozen forecasts — the parts of ``summary.json`` that do
    not depend on refitting the ODE (``scaling``, ``observed_n_star``,
    ``predicted_n_star`` as frozen, ``preregistration``, ``scores``,
    ``cells``). Deterministic: the bootstrap is seeded from the config.

    Parameters
    ----------
    out_dir : path
        An experiment folder with ``experiment.json``, ``predictions.json``,
        ``preregistration.json`` and ``runs/<run_id>/`` (manifest and
        Parquet rollouts suffice).

    Raises
    ------
    physrl.experiment.freeze.PreregistrationError
        Missing or altered frozen predictions.
    fitting.LogValidationError
        A bad log.
    """
    out = Path(out_dir)
    config = ExperimentConfig.from_file(out / "experiment.json")
    registration, frozen = _freeze.verify(out)
    plan = {r.run_id: r for r in plan_runs(config, SWEEP)}
    dirs = {k: out / "runs" / k for k in plan}
    registration = _freeze.check_read_after(registration, list(dirs.values()))
    runs = dict(zip(plan, _load(dirs, list(plan))))
    obs = fitting.observations(list(runs.values()))
    budgets = [int(b) for b in frozen["context"]["budgets"]]
    max_steps = int(frozen["context"]["max_steps"])
    outcomes = _scaling.outcomes_table(obs, runs, plan, budgets, config.threshold)
    # the calibration runs, where the folder has them, give the prospective calibration-logistic baseline
    cal_plan = {r.run_id: r for r in plan_runs(config, CALIBRATION)}
    calibration = None
    if cal_plan and all((out / "runs" / k / "manifest.json").exists() for k in cal_plan):
        cal_dirs = {k: out / "runs" / k for k in cal_plan}
        cal_runs = dict(zip(cal_plan, _load(cal_dirs, list(cal_plan))))
        calibration = _scaling.outcomes_table(fitting.observations(list(cal_runs.values())), cal_runs, cal_plan,
                                              budgets, config.threshold, role=CALIBRATION)
    scaling = _scaling_analysis(config, outcomes, frozen, budgets, max_steps, config.sweep_grid(), calibration)
    summary = _scaling_summary(config, scaling, frozen, registration, budgets, max_steps)
    _add_smallest_winning_n(summary, outcomes, max_steps)
    return fitting.json_safe(summary)


def _add_smallest_winning_n(summary: dict, outcomes: pd.DataFrame, max_steps: int) -> None:
    """Each ``observed_n_star[p0]`` gains ``smallest_winning_n_per_seed`` {seed: smallest swept N whose run
    ended RS at ``max_steps``, or None}: one computation for a run and for :func:`reanalyse`."""
    final = outcomes[outcomes.budget == max_steps]
    for key, entry in summary["observed_n_star"].items():
        at = final[np.isclose(final.p0, float(key))]
        entry["smallest_winning_n_per_seed"] = {
            int(seed): (float(g.n_envs[g.win == 1].min()) if (g.win == 1).any() else None)
            for seed, g in at.groupby("seed")}
