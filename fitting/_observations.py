"""From rollouts to observations: p̂, â, b̂ per (run, phase, step, environment) (docs/model.md §6).

p̂ is the share of RS rollouts, â the mean reward of the RS rollouts, b̂ the
mean reward of the others. Each comes with its counts and a Jeffreys interval
(the Beta(k + 1/2, n − k + 1/2) quantiles; Brown, Cai & DasGupta 2001,
"Interval Estimation for a Binomial Proportion"). Rewards that are not 0/1
enter the interval as fractional successes (sum of rewards), an
approximation; the fit then uses a Gaussian with the observed standard error
for them. A cell with no RS rollouts has no â (NaN, ``a_n == 0``): that is
data, not an error; likewise b̂ when every rollout was RS.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from physrl.contract import Run, jeffreys_interval

KEYS = ["run_id", "phase", "step", "env_id"]


def observations(runs: list[Run] | Run, level: float = 0.95) -> pd.DataFrame:
    """Aggregate rollouts into one row per (run_id, phase, step, env_id).

    Parameters
    ----------
    runs : Run or list of Run
        As returned by :func:`fitting.load_runs`.
    level : float
        Coverage of the Jeffreys intervals.

    Returns
    -------
    pandas.DataFrame
        Columns: ``run_id, phase, step, env_id`` (keys; step in optimizer
        steps); ``n`` rollouts and ``n_rs`` RS rollouts; ``p_hat, p_lo, p_hi``;
        for the RS rollouts ``a_n, a_sum, a_hat, a_se, a_lo, a_hi`` and for the
        others ``b_n, b_sum, b_hat, b_se, b_lo, b_hi`` (``*_sum`` is the summed
        reward, ``*_se`` the standard error of the mean, NaN where ``*_n`` < 2;
        ``a_hat`` is NaN where ``a_n == 0``); ``binary``: the run's rewards
        are all 0 or 1. Sorted by the keys.
    """
    if isinstance(runs, Run):
        runs = [runs]
    frames = []
    for run in runs:
        df = run.rollouts
        binary = bool(np.isin(df["reward"].to_numpy(), (0.0, 1.0)).all())
        r = df["reward"].to_numpy(float)
        rs = df["rs"].to_numpy(bool)
        work = pd.DataFrame({
            "phase": df["phase"].to_numpy(object), "step": df["step"].to_numpy(np.int64),
            "env_id": df["env_id"].to_numpy(object), "one": 1, "rs": rs.astype(int),
            "a_sum": np.where(rs, r, 0.0), "a_sq": np.where(rs, r * r, 0.0),
            "b_sum": np.where(rs, 0.0, r), "b_sq": np.where(rs, 0.0, r * r),
        })
        g = work.groupby(["phase", "step", "env_id"], sort=True).sum(numeric_only=True).reset_index()
        g.insert(0, "run_id", run.run_id)
        g = g.rename(columns={"one": "n", "rs": "n_rs"})
        g["binary"] = binary
        frames.append(g)
    out = pd.concat(frames, ignore_index=True)
    out["a_n"] = out["n_rs"]
    out["b_n"] = out["n"] - out["n_rs"]
    out["p_hat"] = out["n_rs"] / out["n"]
    out["p_lo"], out["p_hi"] = jeffreys_interval(out["n_rs"], out["n"], level)
    for lat in ("a", "b"):
        n = out[f"{lat}_n"].to_numpy(float)
        s = out[f"{lat}_sum"].to_numpy(float)
        sq = out[f"{lat}_sq"].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, s / n, np.nan)
            var = np.where(n > 1, (sq - n * mean**2) / (n - 1), np.nan)
            se = np.sqrt(np.clip(var, 0, None) / n)
        out[f"{lat}_hat"] = mean
        out[f"{lat}_se"] = se
        out[f"{lat}_lo"], out[f"{lat}_hi"] = jeffreys_interval(s, n, level)
        out = out.drop(columns=[f"{lat}_sq"])
    order = ["run_id", "phase", "step", "env_id", "n", "n_rs", "p_hat", "p_lo", "p_hi",
             "a_n", "a_sum", "a_hat", "a_se", "a_lo", "a_hi",
             "b_n", "b_sum", "b_hat", "b_se", "b_lo", "b_hi", "binary"]
    return out[order].sort_values(KEYS, kind="stable").reset_index(drop=True)
