"""Stage 4 of the experiment, analyse: what the finished sweep runs did, and how the frozen forecasts scored.

- per sweep run, its final RS share and the fit's prediction of it (:class:`SweepPoint`);
- observed N*(p0): among the sweep's diversities, the smallest N whose final RS
share (eval phase, last step, mean over trained environments) exceeds the
threshold (docs/model.md §3, read off real runs). Predicted N*(p0): the smallest N
at which the fitted ODE, run under the *same protocol* as the organisms (N
trained environments sharing the batch, w = 1/N each, for the same number of
optimizer steps), ends with mean p above the threshold; its interval comes
from parameter draws from the fit's covariance (:func:`physrl.experiment.freeze.predicted_n_star`);
- :func:`score`: the frozen forecasts' proper scores (Brier 1950; log loss), every sweep run one forecast
  event, against two baselines: the base rate (the sweep's overall win share at that budget, which has
  seen the outcomes) and the rule "RS wins iff N ≥ the median N of that p0's grid". Log loss clips every
  forecast, the model's and the baselines', into [``LOG_LOSS_FLOOR``, 1 − ``LOG_LOSS_FLOOR``];
- :func:`pooled_accuracy`: the RS classifiers' confusion counts against the environments' ground truth,
  pooled over the experiment's runs (each run records them in its manifest's
  ``organisms.classifier_accuracy``; docs/environments.md, "ground truth").

The scaling law's own statistics (Firth N*, slope, win table) are :mod:`physrl.experiment.scaling`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from physrl import fitting

from .scaling import at_budget
from .words import brier_verdict

#: forecasts are clipped into [floor, 1 - floor] for the log loss (all of them, model and baselines)
LOG_LOSS_FLOOR = 0.01
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


# ---- the frozen forecasts scored against the outcomes ----------------------------------------------------------
@dataclass
class Scores:
    """Proper scores of the frozen P(RS wins) forecasts at one budget (lower is better).

    Attributes
    ----------
    brier, log_loss : float
        The frozen predictions.
    brier_base_rate, log_loss_base_rate : float
        Forecasting every run with the sweep's overall win share.
    brier_median_n, log_loss_median_n : float
        "RS wins iff N ≥ the median N of the p0's grid" (forecast 1 or 0).
    n_events : int
        Sweep runs scored.
    budget : int
    base_rate : float
    interval_95 : dict
        Percentile bootstrap 95% intervals, name -> [lower, upper], of every
        score above and of the differences ``brier_minus_base_rate``,
        ``brier_minus_median_n``, ``log_loss_minus_base_rate`` and
        ``log_loss_minus_median_n`` (negative: the frozen forecasts did
        better). Resampled by seed (all runs of a seed share its environment
        family, so they go together) when there are three seeds or more,
        else by run; the base rate is recomputed in every replicate.
    bootstrap : dict
        ``{"unit": "seed" | "run", "units": int, "replicates": int}``.
    """

    brier: float
    brier_base_rate: float
    log_loss: float
    log_loss_base_rate: float
    brier_median_n: float
    log_loss_median_n: float
    n_events: int
    budget: int
    base_rate: float
    interval_95: dict = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)

    def verdict(self, baseline: str) -> str:
        """:func:`brier_verdict` of these scores against ``baseline`` ("base_rate" or "median_n")."""
        return brier_verdict(self.to_dict(), baseline)

    def to_dict(self) -> dict:
        return asdict(self)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(p, LOG_LOSS_FLOOR, 1 - LOG_LOSS_FLOOR)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def score(predictions: dict, outcomes: pd.DataFrame, budget: int, grid: dict[float, list[int]]) -> Scores:
    """Brier score and log loss of the frozen forecasts against the runs' outcomes at ``budget``.

    Parameters
    ----------
    predictions : dict
        The frozen payload (``cells`` with p0, n_envs, budget, p_win).
    outcomes : DataFrame
        One row per sweep run and budget: ``p0, n_envs, seed, budget, win``.
    budget : int
    grid : dict
        p0 -> N values (for the median-N baseline).

    Raises
    ------
    ValueError
        If no outcome has this budget.
    """
    rows = at_budget(outcomes, budget)
    forecast = {(round(c["p0"], 12), c["n_envs"]): c["p_win"] for c in predictions["cells"]
                if c["budget"] == budget}
    p = np.array([forecast[(round(r.p0, 12), r.n_envs)] for r in rows.itertuples()], float)
    y = rows.win.to_numpy(float)
    base = float(y.mean())
    medians = {round(p0, 12): float(np.median(ns)) for p0, ns in grid.items()}
    rule = np.array([1.0 if r.n_envs >= medians[round(r.p0, 12)] else 0.0 for r in rows.itertuples()])
    seeds = rows.seed.to_numpy() if "seed" in rows else np.arange(len(y))
    unit = "seed" if len(np.unique(seeds)) >= 3 else "run"
    groups = seeds if unit == "seed" else np.arange(len(y))
    intervals, replicates = _score_intervals(p, y, rule, groups, n_boot=SCORE_BOOTSTRAP)
    point = {k: v for k, v in _all_scores(p, y, rule).items() if "_minus_" not in k}
    return Scores(**point, n_events=int(len(y)), budget=int(budget), base_rate=float(y.mean()),
                  interval_95=intervals,
                  bootstrap={"unit": unit, "units": int(len(np.unique(groups))), "replicates": replicates})


SCORE_BOOTSTRAP = 2000  # replicates behind the scores' intervals


def _all_scores(p: np.ndarray, y: np.ndarray, rule: np.ndarray) -> dict[str, float]:
    base = float(y.mean())
    out = {"brier": float(np.mean((p - y) ** 2)), "brier_base_rate": float(np.mean((base - y) ** 2)),
           "brier_median_n": float(np.mean((rule - y) ** 2)), "log_loss": _log_loss(p, y),
           "log_loss_base_rate": _log_loss(np.full_like(y, base), y), "log_loss_median_n": _log_loss(rule, y)}
    for kind in ("brier", "log_loss"):
        out[f"{kind}_minus_base_rate"] = out[kind] - out[f"{kind}_base_rate"]
        out[f"{kind}_minus_median_n"] = out[kind] - out[f"{kind}_median_n"]
    return out


def _score_intervals(p, y, rule, groups, n_boot: int, seed: int = 0) -> tuple[dict, int]:
    """Percentile bootstrap 95% intervals of every score and difference, resampling whole ``groups``."""
    labels = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in labels]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(len(labels), size=len(labels))])
        draws.append(_all_scores(p[idx], y[idx], rule[idx]))
    table = pd.DataFrame(draws)
    return ({k: [float(np.quantile(table[k], 0.025)), float(np.quantile(table[k], 0.975))] for k in table},
            int(n_boot))


# ---- the RS classifiers against the environments' ground truth ------------------------------------------------
_COUNTS = ("tp", "fp", "fn", "tn", "unknown")


def pooled_accuracy(runs) -> dict[str, dict]:
    """Per classifier, the confusion counts summed over ``runs`` (all phases), with rates.

    Parameters
    ----------
    runs : iterable of physrl.contract.Run
        Runs whose manifests may carry ``organisms.classifier_accuracy``
        (runs without it are skipped).

    Returns
    -------
    dict name -> dict
        ``tp``, ``fp``, ``fn``, ``tn`` (positive = RS), ``unknown`` (rollouts
        whose path the environment does not know), ``n`` (known), ``runs``,
        ``labels_runs`` (runs it labelled), ``accuracy``, ``precision``,
        ``recall``, ``false_positive_rate`` (None when undefined).
    """
    out: dict[str, dict] = {}
    for run in runs:
        record = ((run.manifest.organisms or {}) if run.manifest is not None else {}).get("classifier_accuracy") or {}
        for name, entry in (record.get("classifiers") or {}).items():
            acc = out.setdefault(name, {**{k: 0 for k in _COUNTS}, "runs": 0, "labels_runs": 0})
            for k in _COUNTS:
                acc[k] += int(entry["all"].get(k, 0))
            acc["runs"] += 1
            acc["labels_runs"] += int(record.get("labelling") == name)
    for acc in out.values():
        tp, fp, fn, tn = (acc[k] for k in ("tp", "fp", "fn", "tn"))
        acc["n"] = tp + fp + fn + tn
        acc["accuracy"] = (tp + tn) / acc["n"] if acc["n"] else None
        acc["precision"] = tp / (tp + fp) if tp + fp else None
        acc["recall"] = tp / (tp + fn) if tp + fn else None
        acc["false_positive_rate"] = fp / (fp + tn) if fp + tn else None
    return out
