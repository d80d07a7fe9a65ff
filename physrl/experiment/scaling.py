"""Observed critical diversity N*(p0) and the scaling law, estimated over stage-1 models.

The statistics of the scaling experiment (docs/model.md §3, §4: N* falls with
the prior p0 along a straight log-log line, slope about −1):

- each sweep run is one Bernoulli outcome, *RS wins* (its RS share on the
  trained environments, read at a step budget, exceeds the threshold);
- P(RS wins | N, p0) per cell, with a Jeffreys interval over its runs (one per stage-1 model);
- N*(p0) is the 50% point of a logistic regression of win/loss on log N,
  fitted per p0 with Firth's penalised likelihood (finite even when the seeds
  separate perfectly, where maximum likelihood diverges; Firth 1993,
  Biometrika 80:27; Heinze & Schemper 2002, Stat. Med. 21:2409). When the
  data separate perfectly the bracket (largest N that lost, smallest N that
  won] is reported beside it;
- its interval is a percentile bootstrap over stage-1 models, the unit of
  replication (every N of one (p0, seed) starts from one pretrained stage-1
  model, so its runs are resampled together; :mod:`physrl.experiment.replication`);
  a replicate whose logistic does not rise with N is censored at the grid's
  edge its win share points to (share < ½: N* above the grid; else below);
- the scaling law is the least-squares slope of log N* on log p0, its
  interval the same bootstrap (each p0's stage-1 models resampled
  independently). Every replicate enters: a replicate N* beyond the swept
  grid is censored at the grid's edge (the largest or smallest N of that
  p0), and the share of replicates so censored is reported.

Everything here reads only outcome tables; nothing trains or fits the ODE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit

from physrl.fitting import jeffreys_interval

from .replication import CLUSTER, cluster_labels, stage1_key

#: the post's canonical slope of log N* against log p0 (docs/model.md §4)
CANONICAL_SLOPE = -1.0


@dataclass
class FirthFit:
    """A Firth-penalised logistic regression ``P(y = 1) = expit(X @ beta)``.

    Attributes
    ----------
    beta : ndarray, shape (P,)
    covariance : ndarray, shape (P, P)
        Inverse Fisher information at ``beta``.
    converged : bool
    iterations : int
    """

    beta: np.ndarray
    covariance: np.ndarray
    converged: bool
    iterations: int


def _penalised_loglik(X, y, beta) -> float:
    eta = X @ beta
    ll = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    pi = expit(eta)
    info = X.T @ ((pi * (1 - pi))[:, None] * X)
    sign, logdet = np.linalg.slogdet(info)
    return ll + 0.5 * logdet if sign > 0 else -math.inf


def firth_logit(X, y, *, max_iter: int = 200, tol: float = 1e-9, max_step: float = 5.0) -> FirthFit:
    """Firth's bias-reduced logistic regression (Jeffreys-prior penalised likelihood).

    Newton-Raphson on the modified score U*(β) = Xᵀ(y − π + h(½ − π)), h the
    diagonal of the hat matrix W^½X(XᵀWX)⁻¹XᵀW^½, with step halving on the
    penalised log-likelihood l(β) + ½ log|XᵀWX| (the algorithm of R's
    ``logistf``). Estimates are finite under complete separation.

    Parameters
    ----------
    X : array_like, shape (n, P)
        Design matrix (include a column of ones for an intercept).
    y : array_like, shape (n,)
        0/1 outcomes.
    max_iter : int
    tol : float
        Convergence when every coordinate of the Newton step is below ``tol``.
    max_step : float
        Largest change of any coefficient in one iteration.

    Returns
    -------
    FirthFit

    Raises
    ------
    ValueError
        If ``X`` and ``y`` disagree in length or ``y`` is not 0/1.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (n, P) and y (n,), got {X.shape} and {y.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y must hold 0/1 outcomes")
    beta = np.zeros(X.shape[1])
    current = _penalised_loglik(X, y, beta)
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        pi = expit(X @ beta)
        w = pi * (1 - pi)
        info = X.T @ (w[:, None] * X)
        inv = np.linalg.pinv(info)
        h = w * np.einsum("ij,jk,ik->i", X, inv, X)
        step = inv @ (X.T @ (y - pi + h * (0.5 - pi)))
        largest = float(np.max(np.abs(step)))
        if largest > max_step:
            step *= max_step / largest
        if float(np.max(np.abs(step))) < tol:
            converged = True
            break
        for _ in range(30):  # step halving until the penalised likelihood does not fall
            trial = _penalised_loglik(X, y, beta + step)
            if trial >= current - 1e-12:
                break
            step /= 2
        beta = beta + step
        current = _penalised_loglik(X, y, beta)
    pi = expit(X @ beta)
    info = X.T @ ((pi * (1 - pi))[:, None] * X)
    return FirthFit(beta, np.linalg.pinv(info), converged, it)


@dataclass
class NStarEstimate:
    """N* at one p0 and step budget: the 50% point of P(RS wins) on log N.

    Attributes
    ----------
    p0 : float
    budget : int
        Optimizer steps at which end states were read.
    n_star : float or None
        exp(−β₀/β₁) of the Firth logistic fit; None when it is not defined
        (see ``status``).
    interval_95 : list of (float or None)
        Percentile bootstrap over stage-1 models; 0 / None mark an end beyond
        the swept grid (N* below the smallest / above the largest N), null both
        when not computed.
    n_seeds : int
    bracket : list
        [largest N that ever lost, smallest N that ever won] when the data
        separate perfectly (N* lies in (lo, hi]); None otherwise.
    slope : float or None
        β₁, the change of the log-odds of winning per unit log N.
    status : str
        ``ok``; ``separated`` (perfectly separated: Firth estimate plus the
        bracket); ``no_wins`` (N* > largest N swept); ``all_wins`` (N* ≤
        smallest N swept); ``below_grid`` / ``above_grid`` (the logistic's
        50% point lies outside the swept N: only the bound is reported);
        ``no_increase`` (β₁ ≤ 0: winning does not become likelier with N, no
        N* defined).
    bootstrap : dict
        ``replicates``, ``unit`` (the stage-1 model), ``clusters`` (stage-1
        models at this p0), ``share_above_grid``, ``share_below_grid`` (every
        replicate beyond the grid, censored ones included), ``share_undefined``
        (replicates whose logistic did not rise with N, censored at the edge
        their win share points to).
    """

    p0: float
    budget: int
    n_star: float | None
    interval_95: list
    n_seeds: int
    bracket: list | None
    slope: float | None
    status: str
    bootstrap: dict = field(default_factory=dict)
    intercept: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _n_star_point(log_n: np.ndarray, wins: np.ndarray) -> tuple[float, str, float | None, float | None]:
    """(N*, status, slope, intercept); N* = inf above the swept N, 0 below it, nan if undefined.

    The logistic's 50% point is an estimate only inside the swept range of N;
    outside it is an extrapolation, reported as a bound (status
    ``below_grid`` / ``above_grid``, like ``all_wins`` / ``no_wins``).
    """
    if wins.sum() == 0:
        return math.inf, "no_wins", None, None
    if wins.sum() == len(wins):
        return 0.0, "all_wins", None, None
    X = np.column_stack([np.ones_like(log_n), log_n])
    fit = firth_logit(X, wins)
    b0, b1 = (float(v) for v in fit.beta)
    if b1 <= 0:
        return math.nan, "no_increase", b1, b0
    log_star = -b0 / b1
    if log_star < log_n.min():
        return 0.0, "below_grid", b1, b0
    if log_star > log_n.max():
        return math.inf, "above_grid", b1, b0
    separated = log_n[wins == 0].max() < log_n[wins == 1].min()
    return math.exp(log_star), "separated" if separated else "ok", b1, b0


def quantile_interval(values: np.ndarray, level: float = 0.95) -> list:
    """Central ``level`` interval [lo, hi] of ``values`` (NaN dropped; an infinite end is None)."""
    vals = values[~np.isnan(values)]
    if vals.size == 0:
        return [None, None]
    tail = (1 - level) / 2
    lo, hi = np.quantile(vals, [tail, 1 - tail], method="inverted_cdf")
    return [None if not np.isfinite(v) else float(v) for v in (lo, hi)]


def at_budget(outcomes: pd.DataFrame, budget: int) -> pd.DataFrame:
    """The outcome rows read at ``budget`` optimizer steps.

    Raises
    ------
    ValueError
        If no row has this budget.
    """
    rows = outcomes[outcomes.budget == budget]
    if rows.empty:
        raise ValueError(f"no outcomes at budget {budget}")
    return rows


def _replicate_n_star(log_n: np.ndarray, wins: np.ndarray) -> tuple[float, bool]:
    """(N* of one bootstrap replicate, whether it was undefined): inf above the grid, 0 below it.

    A replicate whose logistic does not rise with N has no 50% point; it is
    censored at the edge its win share points to (RS won in fewer than half of
    its runs: N* above the grid, inf; else below it, 0), so that it enters
    every interval instead of being dropped.
    """
    value, status, _, _ = _n_star_point(log_n, wins)
    if status == "no_increase":
        return (math.inf if wins.mean() < 0.5 else 0.0), True
    return value, False


def n_star_by_p0(outcomes: pd.DataFrame, budget: int, *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[list[NStarEstimate], np.ndarray, list[float], list[int]]:
    """Observed N*(p0) with bootstrap intervals over stage-1 models, at one step budget.

    Parameters
    ----------
    outcomes : DataFrame
        One row per sweep run with columns ``p0, n_envs, seed, budget, win``
        (win: bool or 0/1) and, optionally, ``cluster`` (the run's stage-1
        model; without it each (p0, seed) is one, see
        :func:`physrl.experiment.replication.cluster_labels`).
    budget : int
        Rows with this ``budget`` are used.
    n_boot : int
        Bootstrap replicates: each p0's stage-1 models resampled with
        replacement, independently across p0 (different p0 never share one).
    seed : int
        Seed of the bootstrap.
    level : float
        Interval coverage.

    Returns
    -------
    (estimates, replicates, p0s, seeds)
        ``replicates`` has shape (n_boot, len(p0s)): the bootstrap N* values
        (inf: above the grid, 0: below it; a replicate without a 50% point is
        censored at one of them), reused for the slope's interval.

    Raises
    ------
    ValueError
        If no row has this budget.
    """
    rows = at_budget(outcomes, budget).reset_index(drop=True)
    rows = rows.assign(cluster=cluster_labels(rows))
    p0s = sorted(rows.p0.unique().tolist())
    seeds = np.array(sorted(rows.seed.unique().tolist())) if "seed" in rows else np.zeros(0, int)
    rng = np.random.default_rng(seed)
    n_clusters = {p: rows[rows.p0 == p].cluster.nunique() for p in p0s}
    do_boot = max(n_clusters.values()) > 1
    replicates = np.full((n_boot if do_boot else 0, len(p0s)), math.nan)
    undefined = np.zeros(replicates.shape, bool)
    estimates = []
    for j, p0 in enumerate(p0s):
        at = rows[rows.p0 == p0]
        log_n = np.log(at.n_envs.to_numpy(float))
        wins = at.win.to_numpy(float)
        n_star, status, slope, intercept = _n_star_point(log_n, wins)
        lost, won = at.n_envs[at.win == 0], at.n_envs[at.win == 1]
        bracket = None
        if status in ("separated", "no_wins", "all_wins"):
            bracket = [int(lost.max()) if len(lost) else 0, int(won.min()) if len(won) else None]
        elif status == "below_grid":
            bracket = [0, int(at.n_envs.min())]
        elif status == "above_grid":
            bracket = [int(at.n_envs.max()), None]
        clusters = sorted(at.cluster.unique().tolist())
        by_cluster = {c: (np.log(g.n_envs.to_numpy(float)), g.win.to_numpy(float)) for c, g in at.groupby("cluster")}
        memo: dict[tuple, tuple[float, bool]] = {}  # a resample is a multiset of clusters: each fitted once
        for b in range(replicates.shape[0]):
            key = tuple(sorted(int(i) for i in rng.integers(len(clusters), size=len(clusters))))
            if key not in memo:
                parts = [by_cluster[clusters[i]] for i in key]
                memo[key] = _replicate_n_star(np.concatenate([p[0] for p in parts]),
                                              np.concatenate([p[1] for p in parts]))
            replicates[b, j], undefined[b, j] = memo[key]
        reps = replicates[:, j]
        interval = quantile_interval(reps, level) if reps.size else [None, None]
        estimates.append(NStarEstimate(
            p0=float(p0), budget=int(budget),
            n_star=float(n_star) if np.isfinite(n_star) and n_star > 0 else None,
            interval_95=interval, n_seeds=int(at.seed.nunique()) if "seed" in at else len(clusters),
            bracket=bracket, slope=slope, status=status, intercept=intercept,
            bootstrap={"replicates": int(reps.size), "unit": CLUSTER, "clusters": len(clusters),
                       "share_above_grid": float(np.mean(np.isinf(reps))) if reps.size else None,
                       "share_below_grid": float(np.mean(reps == 0)) if reps.size else None,
                       "share_undefined": float(np.mean(undefined[:, j])) if reps.size else None}))
    return estimates, replicates, [float(p) for p in p0s], [int(s) for s in seeds]


def log_log_slope(p0s, n_stars) -> float:
    """Least-squares slope of log N* on log p0 (nan unless ≥ 2 finite positive N*)."""
    p = np.asarray(p0s, float)
    n = np.asarray(n_stars, float)
    ok = np.isfinite(n) & (n > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(p[ok]), np.log(n[ok]), 1)[0])


@dataclass
class SlopeEstimate:
    """The scaling law's slope d log N* / d log p0 with its interval.

    Attributes
    ----------
    value : float or None
        From the point estimates (None when fewer than two p0 have a finite N*).
    interval_95 : list
        Percentile interval over replicates (bootstrap over stage-1 models for
        the observed slope, parameter draws for the predicted one).
    replicates : int
    share_undefined : float or None
        Share of replicates with no slope (a p0 whose N* was not finite and,
        without ``edges``, could not be censored).
    p0_used : list of float
    method : str
    share_censored : float or None
        Share of replicates with an N* beyond the grid at one of ``p0_used``,
        entered at the grid's edge (None when no edges were given).
    """

    value: float | None
    interval_95: list
    replicates: int
    share_undefined: float | None
    p0_used: list
    method: str
    share_censored: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def slope_replicates(p0s, point_n_stars, replicate_n_stars: np.ndarray, edges=None) -> tuple[np.ndarray, np.ndarray]:
    """The slope of log N* on log p0 in every replicate, and which replicates were censored.

    Parameters are those of :func:`slope_with_interval`. Returns ``(slopes, censored)``, both of shape (B,):
    NaN where a replicate has no slope; ``censored`` true where an N* beyond the grid was entered at its edge.
    Two slope arrays from the same cluster resamples (e.g. two arms over the same stage-1 models, bootstrapped
    with one seed) can be subtracted replicate by replicate.
    """
    point = np.array([math.nan if v is None else v for v in point_n_stars], float)
    used = np.isfinite(point) & (point > 0)  # replicates use the same p0 as the point estimate
    reps = np.asarray(replicate_n_stars, float)
    reps = reps[:, used] if reps.ndim == 2 and reps.shape[0] else reps.reshape(0, int(used.sum()))
    censored = np.zeros(reps.shape[0], bool)
    if edges is not None and reps.size:
        lo_edge = np.array([e[0] for e in edges], float)[used]
        hi_edge = np.array([e[1] for e in edges], float)[used]
        below, above = reps <= 0, np.isinf(reps)
        censored = (below | above).any(axis=1)
        reps = np.where(above, hi_edge[None, :], np.where(below, lo_edge[None, :], reps))
    slopes = np.full(reps.shape[0], math.nan)
    defined = (np.all(np.isfinite(reps) & (reps > 0), axis=1) if reps.size and used.sum() >= 2
               else np.zeros(reps.shape[0], bool))
    if defined.any():
        logp = np.log(np.asarray(p0s, float)[used])
        x = logp - logp.mean()
        logn = np.log(reps[defined])
        slopes[defined] = (logn - logn.mean(axis=1, keepdims=True)) @ x / (x @ x)
    return slopes, censored


def slope_with_interval(p0s, point_n_stars, replicate_n_stars: np.ndarray, method: str,
                        level: float = 0.95, edges=None) -> SlopeEstimate:
    """Slope of log N* on log p0 and its percentile interval over replicates.

    Parameters
    ----------
    p0s : sequence of float, length P
    point_n_stars : sequence, length P
        Point estimates (None / nan / inf: not finite).
    replicate_n_stars : ndarray, shape (B, P)
        N* per replicate (inf: above the grid, 0: below it); only the p0 with a
        finite point estimate enter (the same set as the point slope).
    method : str
        Describes the replicates (stored).
    edges : sequence of (float, float), length P, optional
        Smallest and largest N swept per p0. Given, every replicate enters: an
        N* above the grid is censored at the largest N, one below it at the
        smallest (``share_censored`` says how many replicates were); only NaN
        replicates have no slope. Without it, a replicate with a non-finite N*
        at one of the p0 has no slope and is left out.
    """
    point = np.array([math.nan if v is None else v for v in point_n_stars], float)
    value = log_log_slope(p0s, point)
    slopes, censored = slope_replicates(p0s, point, replicate_n_stars, edges)
    defined = np.isfinite(slopes)
    reps = np.asarray(replicate_n_stars, float)
    return SlopeEstimate(
        value=None if not np.isfinite(value) else value,
        interval_95=quantile_interval(slopes, level) if defined.any() else [None, None],
        replicates=int(reps.shape[0]),
        share_undefined=float(np.mean(~defined)) if reps.shape[0] else None,
        p0_used=[float(p) for p, v in zip(p0s, point) if np.isfinite(v) and v > 0],
        method=method,
        share_censored=(float(np.mean(censored & defined)) if edges is not None and reps.shape[0] else None))


def win_table(outcomes: pd.DataFrame, budget: int, level: float = 0.95) -> pd.DataFrame:
    """P(RS wins | N, p0) per cell at one budget, with a Jeffreys interval over its runs (one per
    stage-1 model in a cell, so a cell's runs are independent).

    Returns
    -------
    DataFrame
        Columns ``p0, n_envs, wins, n, p_win, lower, upper``.
    """
    rows = outcomes[outcomes.budget == budget]
    g = rows.groupby(["p0", "n_envs"]).win.agg(["sum", "count"]).reset_index()
    lo, hi = jeffreys_interval(g["sum"].to_numpy(float), g["count"].to_numpy(float), level)
    return pd.DataFrame({"p0": g.p0, "n_envs": g.n_envs, "wins": g["sum"].astype(int), "n": g["count"],
                         "p_win": g["sum"] / g["count"], "lower": lo, "upper": hi})


def logistic_curve(estimate: NStarEstimate, n_values) -> np.ndarray:
    """P(RS wins) of the fitted logistic at ``n_values`` (nan where no logistic was fitted)."""
    n = np.asarray(n_values, float)
    if estimate.slope is None or estimate.intercept is None:
        return np.full(n.shape, math.nan)
    return expit(estimate.intercept + estimate.slope * np.log(n))


def share_at_budget(obs: pd.DataFrame, run, budget: int) -> tuple[int, float]:
    """(eval step, RS share over the trained envs' eval rollouts) at the last eval step ≤ ``budget``.

    Parameters
    ----------
    obs : DataFrame
        ``fitting.observations`` of the run (or of several runs).
    run : fitting.Run
    budget : int
        Optimizer steps.

    Raises
    ------
    ValueError
        If the run has no eval rollouts on a trained environment at or before ``budget``.
    """
    trained = {e.env_id for e in run.environments if e.w > 0}
    rows = obs[(obs.run_id == run.run_id) & (obs.phase == "eval") & obs.env_id.isin(trained)
               & (obs.step <= budget)]
    if rows.empty:
        raise ValueError(f"run {run.run_id} has no eval rollouts on a trained environment by step {budget}")
    last = int(rows.step.max())
    at = rows[rows.step == last]
    return last, float(at.n_rs.sum() / at.n.sum())


def outcomes_table(obs: pd.DataFrame, runs: dict, plan: dict, budgets, threshold: float, *,
                   role: str = "sweep") -> pd.DataFrame:
    """One row per (run of ``role``, budget): ``run_id, p0, n_envs, seed, budget, step, final_p, win, cluster``.

    ``plan`` maps run_id -> PlannedRun (role, n_envs, p0, seed); ``runs`` run_id -> fitting.Run.
    ``role`` is "sweep" (every run that is not calibration) or "calibration". ``cluster`` is the run's
    stage-1 model (:func:`physrl.experiment.replication.stage1_key`; ``p0=…/seed=…`` where the manifest
    has no key).
    """
    rows = []
    for k, r in plan.items():
        if (r.role == "calibration") != (role == "calibration"):
            continue
        key = stage1_key(runs[k]) or f"p0={r.p0:g}/seed={int(r.seed)}"
        for b in budgets:
            step, share = share_at_budget(obs, runs[k], b)
            rows.append({"run_id": k, "p0": r.p0, "n_envs": r.n_envs, "seed": r.seed, "budget": int(b),
                         "step": step, "final_p": share, "win": int(share > threshold), "cluster": key})
    return pd.DataFrame(rows)
