"""From finished organism runs to the experiment's verdict: fit on the
calibration runs, predict the sweep, and compare critical diversities.

Observed N*(p0): among the sweep's diversities, the smallest N whose final RS
share (eval phase, last step, mean over trained environments) exceeds the
threshold (docs/model.md §3, read off real runs). Predicted N*(p0): the smallest N
at which the fitted ODE, run under the *same protocol* as the organisms (N
trained environments sharing the batch, w = 1/N each, for the same number of
optimizer steps), ends with mean p above the threshold; its interval comes
from parameter draws from the fit's covariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from physrl import fitting
from physrl import sim
@dataclass
class SweepPoint:
    """One sweep run's outcome: what the organism did and what the ODE said."""

    run_id: str
    n_envs: int
    p0: float
    seed: int
    observed_final_p: float
    predicted_final_p: float | None
    rmse: dict
    coverage: float | None
    end_state_agrees: bool | None


def final_rs_share(obs: pd.DataFrame, run: "fitting.Run") -> tuple[int, float]:
    """(last eval step, RS share over the trained envs' eval rollouts there).

    Raises
    ------
    ValueError
        If the run has no eval rollouts on a trained environment.
    """
    trained = {e.env_id for e in run.environments if e.w > 0}
    rows = obs[(obs.run_id == run.run_id) & (obs.phase == "eval") & obs.env_id.isin(trained)]
    if rows.empty:
        raise ValueError(f"run {run.run_id} has no eval rollouts on a trained environment")
    last = int(rows.step.max())
    at = rows[rows.step == last]
    return last, float(at.n_rs.sum() / at.n.sum())


def observed_n_star(points: list[SweepPoint], threshold: float) -> pd.DataFrame:
    """Per (p0, seed): the smallest swept N whose final RS share > threshold (NaN: none did)."""
    rows = []
    for (p0, seed), group in pd.DataFrame([p.__dict__ for p in points]).groupby(["p0", "seed"]):
        won = group[group.observed_final_p > threshold].n_envs
        rows.append({"p0": p0, "seed": seed, "n_star": float(won.min()) if len(won) else math.nan,
                     "n_max": int(group.n_envs.max())})
    return pd.DataFrame(rows)


def protocol_final_p(fit_result, p0: float, n_values, max_steps: int, *, n_draws: int = 64,
                     seed: int = 0) -> np.ndarray:
    """Mean p after ``max_steps`` optimizer steps of N envs sharing the batch (w = 1/N).

    The fitted ODE under the organisms' protocol, its observation model
    included: :func:`physrl.fitting.protocol_final_p` (docs/model.md §3, §7).

    Returns
    -------
    ndarray, shape (n_draws + 1, len(n_values))
        Final mean p; row 0 uses the point estimate, the others parameter
        draws from the fit's covariance.

    Raises
    ------
    ValueError
        For a kernel fit or per-environment parameters (no single N-env
        protocol follows from them).
    """
    return fitting.protocol_final_p(fit_result, p0, n_values, max_steps, n_draws=n_draws, seed=seed)


def predicted_n_star(fit_result, p0_values, max_steps: int, n_max: int, threshold: float, *,
                     n_draws: int = 64, level: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """Predicted N*(p0) under the organisms' protocol, with an interval over parameter draws.

    The search is :func:`physrl.sim.find_critical_diversity` (method
    ``"scan"``: every N from 1 to ``n_max``, the first whose protocol final
    share passes the threshold; exact without assuming the share rises with N)
    on :func:`protocol_final_p`.

    Returns a table with columns ``p0, n_star, lower, upper, share_above_n_max,
    status``; ``n_star`` (and an interval end) is NaN when even ``n_max``
    environments do not pass the threshold, i.e. N* > n_max (``status``
    ``above_n_max``); ``share_above_n_max`` is the share of parameter draws
    for which that happens.
    """
    rows = []
    for p0 in p0_values:
        res = sim.find_critical_diversity(
            lambda n, p0=p0: protocol_final_p(fit_result, p0, n[0], max_steps, n_draws=n_draws, seed=seed),
            batch_shape=(n_draws + 1,), method="scan", n_max=n_max, threshold=threshold)
        draws = res.ranked()[1:]        # "never passed" ranks above every N searched (+inf)
        tail = (1 - level) / 2
        lo, hi = (np.quantile(draws, [tail, 1 - tail], method="nearest") if draws.size
                  else (math.nan, math.nan))
        rows.append({"p0": float(p0), "n_star": float(res.n_star[0]),
                     "lower": float(lo) if np.isfinite(lo) else math.nan,
                     "upper": float(hi) if np.isfinite(hi) else math.nan,
                     "share_above_n_max": float(np.mean(~np.isfinite(draws))) if draws.size else math.nan,
                     "status": res.status[0].value})
    return pd.DataFrame(rows)
