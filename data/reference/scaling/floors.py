"""The local path's observation floor on this sweep: declared (from the target b0) against measured per stage-1 model
(issue 18, item 4; docs/model.md §7, "Floors are measured"). Reads the committed logs only.

    OMP_NUM_THREADS=1 python data/reference/scaling/floors.py cells     # shares of step-0 cells below each floor
    OMP_NUM_THREADS=1 python data/reference/scaling/floors.py per-run   # per-run prediction's agreement, both floors

Measured 2026-12-07 (the commit that added this file):

    cells: 666 step-0 trained-env cells; below the declared 0.222: 312 (46.8%); below the measured stage-1 floors:
      87 (13.1%); expected from sampling noise alone (each cell's GRPO groups resampled from its stage-1 model's
      step-0 pool, 300 sets): 13.5% [11.1%, 15.8%]
    per-run (calibration refit as the experiment makes it, every sweep run predicted from its own measured step 0,
      100 draws, 90% bands): declared floors 67 of 120, median RMSE of the RS share 0.501 (the committed
      summary.json's agreement.per_run_prediction); measured floors 81 of 120, median RMSE 0.268
"""

import sys
from pathlib import Path

import numpy as np

from physrl import fitting

ROOT = Path(__file__).resolve().parent
DECLARED = 0.222222


def cells(n_sets: int = 300) -> None:
    runs = fitting.load_runs(sorted((ROOT / "runs").glob("sweep-*")))
    floors, _ = fitting.stage1_floors(runs, fitting.observations(runs))
    pool, rows = {}, []
    for r in runs:
        key = fitting.stage1_model(r)
        ro = r.rollouts
        ev = ro[(ro.phase == "eval") & (ro.step == ro[ro.phase == "eval"].step.min())]
        ev = ev[ev.env_id.isin([e.env_id for e in r.environments if e.w > 0]) & ~ev.rs.astype(bool)]
        g = ev.groupby(["env_id", "group_id"]).reward.agg(["sum", "count"]).reset_index()
        pool.setdefault(key, []).append(g[["sum", "count"]].to_numpy(float))
        rows += [(key, ge[["sum", "count"]].to_numpy(float)) for _, ge in g.groupby("env_id")]
    pool = {k: np.concatenate(v) for k, v in pool.items()}
    b_hat = np.array([g[:, 0].sum() / g[:, 1].sum() for _, g in rows])
    floor = np.array([floors[k].b_lo for k, _ in rows])
    rng = np.random.default_rng(0)
    sims = []
    for _ in range(n_sets):
        picks = [pool[k][rng.integers(len(pool[k]), size=len(g))] for k, g in rows]
        sims.append(np.mean([p[:, 0].sum() / p[:, 1].sum() < f for p, f in zip(picks, floor)]))
    print(f"{len(rows)} step-0 trained-env cells; below the declared {DECLARED:.3f}: {(b_hat < DECLARED).sum()} "
          f"({(b_hat < DECLARED).mean():.1%}); below the measured stage-1 floors: {(b_hat < floor).sum()} "
          f"({(b_hat < floor).mean():.1%}); expected from sampling noise alone: {np.mean(sims):.1%} "
          f"[{np.quantile(sims, 0.025):.1%}, {np.quantile(sims, 0.975):.1%}]")


def per_run() -> None:
    import json

    from physrl.experiment import analysis as _analysis

    config = json.loads((ROOT / "experiment.json").read_text())
    cal = fitting.load_runs(sorted((ROOT / "runs").glob("cal-*")))
    dirs = sorted((ROOT / "runs").glob("sweep-*"))
    sweep = fitting.load_runs(dirs)
    obs = fitting.observations(sweep)
    floors, _ = fitting.stage1_floors(cal + sweep, fitting.observations(cal + sweep))
    for mode in ("manifest", "stage1"):
        fit = fitting.fit(cal, transfer=config["transfer"], max_nfev=config.get("fit_max_nfev", 400), observation=mode)
        agree, rmse = 0, []
        for d, run in zip(dirs, sweep):
            _, final_p = _analysis.final_rs_share(obs, run)
            pred = fitting.predict(fit, run, n_star=False, n_samples=100, seed=int(d.name.rsplit("-s", 1)[1]),
                                   level=0.9, threshold=config["threshold"], start="measured",
                                   floors=floors if mode == "stage1" else None)
            agree += (final_p > config["threshold"]) == (pred.metrics.end_state.predicted_mean_p > config["threshold"])
            rmse.append(pred.metrics.rmse_p)
        name = "declared floors" if mode == "manifest" else "measured floors"
        print(f"{name}: per-run prediction's agreement {agree} of {len(dirs)}, median RMSE of the RS share "
              f"{np.median(rmse):.3f} (fit converged: {fit.converged})")


if __name__ == "__main__":
    {"cells": cells, "per-run": per_run}[sys.argv[1] if len(sys.argv) > 1 else "cells"]()
