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
  event, against baselines (:data:`BASELINES`): the base rate (the sweep's overall win share at that budget,
  a hindsight baseline: it has seen the outcomes) and three prospective ones a forecaster had before the
  sweep: the rule "RS wins iff N ≥ the median N of that p0's grid", the constant 0.5, and a logistic in
  log N fitted to the calibration runs only. Intervals resample whole stage-1 models. Log loss clips every
  forecast, the model's and the baselines', into [``LOG_LOSS_FLOOR``, 1 − ``LOG_LOSS_FLOOR``]; the frozen
  forecast's agreement (its calls against the outcomes) rides along;
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
from scipy.special import expit

from physrl import fitting

from .replication import CLUSTER, cluster_labels, cluster_resamples
from .scaling import at_budget, firth_logit
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
#: the baselines a frozen forecast is scored against: name -> (words, prospective?). Prospective: a forecaster
#: could have had it before the sweep (from the design or the calibration runs alone); the base rate is the sweep's
#: own win share, known only in hindsight.
BASELINES = {
    "base_rate": ("the base rate (hindsight: the sweep's own win share)", False),
    "median_n": ("'RS wins iff N ≥ the median N of the p0's grid' (prospective: the design alone)", True),
    "half": ("the constant 0.5 (prospective)", True),
    "calibration": ("a logistic in log N fitted to the calibration runs only (prospective)", True),
}


@dataclass
class Scores:
    """Proper scores of the frozen P(RS wins) forecasts at one budget (lower is better).

    Attributes
    ----------
    brier, log_loss : float
        The frozen predictions.
    brier_base_rate, log_loss_base_rate : float
        Forecasting every run with the sweep's overall win share: a hindsight
        baseline (it has seen the outcomes it is scored on).
    brier_median_n, log_loss_median_n : float
        "RS wins iff N ≥ the median N of the p0's grid" (forecast 1 or 0;
        prospective: the design alone).
    brier_half, log_loss_half : float
        The constant forecast 0.5 (prospective).
    brier_calibration, log_loss_calibration : float or None
        A Firth logistic of *RS wins* on log N fitted to the calibration runs
        alone at this budget (prospective; None without calibration outcomes).
    n_events : int
        Sweep runs scored.
    budget : int
    base_rate : float
    frozen_agreement : float
        The frozen forecast's agreement: share of sweep runs whose frozen call
        (P(RS wins) > ½: RS wins) matched the outcome. Not the per-run
        prediction's agreement (which starts from each run's own measured
        step 0 after the fact).
    frozen_agreement_count : int
    interval_95 : dict
        Percentile bootstrap 95% intervals, name -> [lower, upper], of every
        score above, of ``frozen_agreement`` and of the differences
        ``<kind>_minus_<baseline>`` (kind ``brier`` / ``log_loss``, every
        baseline of :data:`BASELINES`; negative: the frozen forecasts did
        better). Whole stage-1 models are resampled (every N of one (p0, seed)
        starts from one, so its runs go together), within each p0, when there
        are :data:`MIN_CLUSTERS` or more; with fewer, no interval (empty dict).
        The base rate is recomputed in every replicate.
    bootstrap : dict
        ``{"unit": "stage-1 model" | "run", "units": int, "replicates": int, "strata": "p0"}``
        (``replicates`` 0 and a ``note`` saying why when no interval was computed).
    baselines : dict
        name -> {"label", "prospective"} (:data:`BASELINES`).
    calibration_logistic : dict or None
        ``intercept``, ``slope`` (per unit log N), ``runs`` of the calibration baseline.
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
    brier_half: float | None = None
    log_loss_half: float | None = None
    brier_calibration: float | None = None
    log_loss_calibration: float | None = None
    frozen_agreement: float | None = None
    frozen_agreement_count: int | None = None
    baselines: dict = field(default_factory=dict)
    calibration_logistic: dict | None = None

    def verdict(self, baseline: str) -> str:
        """:func:`brier_verdict` of these scores against ``baseline`` (a key of :data:`BASELINES`)."""
        return brier_verdict(self.to_dict(), baseline)

    def to_dict(self) -> dict:
        return asdict(self)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    q = np.clip(p, LOG_LOSS_FLOOR, 1 - LOG_LOSS_FLOOR)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def calibration_logistic(calibration: pd.DataFrame | None, budget: int) -> dict | None:
    """The prospective baseline: Firth logistic of *RS wins* on log N over the calibration runs at ``budget``.

    Returns ``{"intercept", "slope", "runs", "wins"}`` (slope 0 when the calibration runs have one N), or
    None without calibration outcomes at this budget.
    """
    if calibration is None or calibration.empty:
        return None
    rows = calibration[calibration.budget == budget]
    if rows.empty:
        return None
    log_n = np.log(rows.n_envs.to_numpy(float))
    y = rows.win.to_numpy(float)
    if np.unique(log_n).size >= 2:
        beta = firth_logit(np.column_stack([np.ones_like(log_n), log_n]), y).beta
        b0, b1 = float(beta[0]), float(beta[1])
    else:
        b0, b1 = float(firth_logit(np.ones((len(y), 1)), y).beta[0]), 0.0
    return {"intercept": b0, "slope": b1, "runs": int(len(y)), "wins": int(y.sum())}


def score(predictions: dict, outcomes: pd.DataFrame, budget: int, grid: dict[float, list[int]], *,
          calibration: pd.DataFrame | None = None, unit: str = "auto") -> Scores:
    """Brier score and log loss of the frozen forecasts against the runs' outcomes at ``budget``.

    Parameters
    ----------
    predictions : dict
        The frozen payload (``cells`` with p0, n_envs, budget, p_win).
    outcomes : DataFrame
        One row per sweep run and budget: ``p0, n_envs, seed, budget, win``
        (and ``cluster``, the run's stage-1 model; without it each (p0, seed)
        is one).
    budget : int
    grid : dict
        p0 -> N values (for the median-N baseline).
    calibration : DataFrame, optional
        The calibration runs' outcomes (same columns), for the prospective
        calibration-logistic baseline.
    unit : str
        What the bootstrap resamples: "auto" (stage-1 models when there are
        :data:`MIN_CLUSTERS` or more, else no interval), "cluster" or "run"
        (the naive bootstrap, for comparison).

    Raises
    ------
    ValueError
        If no outcome has this budget.
    """
    rows = at_budget(outcomes, budget).reset_index(drop=True)
    forecast = {(round(c["p0"], 12), c["n_envs"]): c["p_win"] for c in predictions["cells"]
                if c["budget"] == budget}
    p = np.array([forecast[(round(r.p0, 12), r.n_envs)] for r in rows.itertuples()], float)
    y = rows.win.to_numpy(float)
    medians = {round(p0, 12): float(np.median(ns)) for p0, ns in grid.items()}
    cal = calibration_logistic(calibration, budget)
    baselines = {"median_n": np.array([1.0 if r.n_envs >= medians[round(r.p0, 12)] else 0.0
                                       for r in rows.itertuples()]),
                 "half": np.full(len(y), 0.5)}
    if cal is not None:
        baselines["calibration"] = expit(cal["intercept"] + cal["slope"] * np.log(rows.n_envs.to_numpy(float)))
    clusters = cluster_labels(rows)
    n_clusters = len(np.unique(clusters))
    if unit == "auto":
        unit = "cluster" if n_clusters >= MIN_CLUSTERS else "none"
    groups = clusters if unit != "run" else np.array([f"run {i}" for i in range(len(y))])
    if unit == "none":  # too few stage-1 models: a percentile interval would claim more than the data hold
        intervals, replicates = {}, 0
    else:
        intervals, replicates = _score_intervals(p, y, baselines, groups, rows.p0.to_numpy(float),
                                                 n_boot=SCORE_BOOTSTRAP)
    point = _all_scores(p, y, baselines)
    return Scores(
        brier=point["brier"], brier_base_rate=point["brier_base_rate"], log_loss=point["log_loss"],
        log_loss_base_rate=point["log_loss_base_rate"], brier_median_n=point["brier_median_n"],
        log_loss_median_n=point["log_loss_median_n"], n_events=int(len(y)), budget=int(budget),
        base_rate=float(y.mean()), interval_95=intervals,
        bootstrap={"unit": "run" if unit == "run" else CLUSTER, "units": int(len(np.unique(groups))),
                   "replicates": replicates, "strata": "p0",
                   **({"note": f"no interval: {n_clusters} {CLUSTER}s, fewer than the {MIN_CLUSTERS} a cluster "
                               "bootstrap needs"} if unit == "none" else {})},
        brier_half=point["brier_half"], log_loss_half=point["log_loss_half"],
        brier_calibration=point.get("brier_calibration"), log_loss_calibration=point.get("log_loss_calibration"),
        frozen_agreement=point["frozen_agreement"], frozen_agreement_count=int(((p > 0.5) == (y > 0.5)).sum()),
        baselines={k: {"label": v[0], "prospective": v[1]} for k, v in BASELINES.items()
                   if k != "calibration" or cal is not None},
        calibration_logistic=cal)


SCORE_BOOTSTRAP = 2000  # replicates behind the scores' intervals
#: the fewest stage-1 models behind a cluster-bootstrap interval of a score. With G clusters the percentile
#: interval of a mean is about mean ± 1.96·s·√((G−1)/G)/√G while the pivot is Student's t with G − 1 degrees of
#: freedom, so its coverage is P(|t_{G−1}| ≤ 1.96·√((G−1)/G)): 0.81 at G = 4, 0.90 at G = 10, 0.93 at G = 18
#: (Cameron & Miller 2015, "A practitioner's guide to cluster-robust inference", J. Human Resources 50(2),
#: §VI: few clusters). Below it no interval is reported and no baseline is called beaten or lost to.
MIN_CLUSTERS = 10


def _all_scores(p: np.ndarray, y: np.ndarray, baselines: dict[str, np.ndarray]) -> dict[str, float]:
    base = float(y.mean())
    forecasts = {"base_rate": np.full_like(y, base), **baselines}
    out = {"brier": float(np.mean((p - y) ** 2)), "log_loss": _log_loss(p, y),
           "frozen_agreement": float(np.mean((p > 0.5) == (y > 0.5)))}
    for name, q in forecasts.items():
        out[f"brier_{name}"] = float(np.mean((q - y) ** 2))
        out[f"log_loss_{name}"] = _log_loss(q, y)
    for kind in ("brier", "log_loss"):
        for name in forecasts:
            out[f"{kind}_minus_{name}"] = out[kind] - out[f"{kind}_{name}"]
    return out


def _score_intervals(p, y, baselines, groups, strata, n_boot: int, seed: int = 0) -> tuple[dict, int]:
    """Percentile bootstrap 95% intervals of every score and difference, resampling whole ``groups``
    within each stratum."""
    rng = np.random.default_rng(seed)
    draws = []
    for idx in cluster_resamples(groups, strata, n_boot, rng):
        draws.append(_all_scores(p[idx], y[idx], {k: v[idx] for k, v in baselines.items()}))
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
