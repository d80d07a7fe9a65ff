"""The takeoff of reward-seeking: early growth rate of logit p per run, and the selection exponent γ per arm.

The selection law of issue 19, dz/dt ∝ [p (1 − p)]^γ (a − b) for the RS log-odds z = logit p of a trained
environment: γ = 1 is the post's replicator flow (docs/model.md), γ = 0 a growth that does not depend on p (what
GRPO's std-scaled advantages and Adam's normalised steps would give). In the early phase, while p stays near p0
and the skill gap a − b is about constant, z grows at a rate

    dz/dt ≈ r,    r ∝ [p0 (1 − p0)]^γ.

The measured r is the slope over the takeoff window, an average over the p the window spans; for γ > 0 the growth
speeds up as p rises, relatively more at small p0, which pulls the measured γ below the flow's. Two pure
functions measure it from logs; nothing here trains.

:func:`takeoff_rate`
    One run: the eval rows on its trained environments (pooled per eval step), the eval points of the takeoff
    window (from step 0 until p̂ passes ``p_stop`` or the local path wins), and the slope of logit p̃ against
    steps by weighted least squares with binomial weights on Jeffreys-smoothed counts, p̃ = (k + ½)/(n + 1),
    Var(logit p̃) ≈ 1 / (n p̃ (1 − p̃)) (delta method; Jeffreys prior: Brown, Cai & DasGupta 2001). Its standard
    error is the weighted one times the square root of the dispersion max(1, χ²/(m − 2)) (quasi-binomial: a GRPO
    run's logit p wanders more than binomial sampling alone).

:func:`selection_exponent`
    One arm: γ and the scale C in r = C [p0 (1 − p0)]^γ by weighted non-linear least squares on the rate scale
    (weights 1/SE², so rates near zero or below it count with their real precision), and a 95% percentile
    interval from a bootstrap over stage-1 models: whole clusters (every run of a stage-1 model) resampled with
    replacement within each prior, the design kept (Davison & Hinkley 1997, §3.8, stratified cluster resampling).
    Resampling m clusters per prior underestimates the variance by the factor (m − 1)/m (Davison & Hinkley
    1997, §3.8): at the takeoff design's m = 4 (5 priors), 95% percentile intervals covered 85% (γ = 1) and
    ~90% (γ = 0.3) of synthetic truths in 40 arms each. The percentiles are therefore widened about γ̂ by
    sqrt(m / (m − 1)), m the mean number of stage-1 models per prior; widened, they covered 92.5% at both γ in
    80 synthetic arms each (tests/test_fitting_takeoff.py's design). With one stage-1 model per prior the
    bootstrap has no spread to resample: the interval is then NaN, not a degenerate [γ̂, γ̂].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: columns of an eval-count table (one row per eval step, pooled over the run's trained environments)
COUNT_COLUMNS = ("step", "n", "n_rs", "a_n", "a_sum", "b_n", "b_sum")


@dataclass(frozen=True)
class TakeoffRate:
    """The early growth rate of logit p of one run (:func:`takeoff_rate`).

    Attributes
    ----------
    run_id : str
    rate : float
        d logit p / d step, per optimizer step (NaN with fewer than ``min_points`` eval points in the window).
    stderr : float
        Its standard error (binomial, inflated by ``dispersion``).
    intercept : float
        Fitted logit p at step 0.
    dispersion : float
        χ² of the weighted fit / (m − 2) (NaN with m = 2 points); the stderr uses max(1, dispersion).
    steps : tuple of int
        The eval steps used (the takeoff window).
    stop : str
        Why the window ended: ``"p passed 0.5"`` (the first point with p̂ ≥ p_stop is the window's last),
        ``"local path won"`` (b̂ above the run's pooled RS skill â at the next point: that point and later ones
        are left out) or
        ``"end of run"``.
    p0_hat : float
        Measured RS share at step 0 on the trained environments (k / n).
    """

    run_id: str
    rate: float
    stderr: float
    intercept: float
    dispersion: float
    steps: tuple[int, ...]
    stop: str
    p0_hat: float

    @property
    def n_points(self) -> int:
        """Eval points in the takeoff window."""
        return len(self.steps)


def trained_eval_counts(run) -> pd.DataFrame:
    """A run's eval rollouts on its trained environments (w > 0), pooled per eval step.

    Parameters
    ----------
    run : fitting.Run
        As returned by :func:`physrl.fitting.load_runs`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COUNT_COLUMNS`: ``step`` (optimizer steps), ``n`` rollouts, ``n_rs`` RS rollouts,
        ``a_n`` / ``a_sum`` count and summed reward of the RS rollouts, ``b_n`` / ``b_sum`` of the others.
        Sorted by step.

    Raises
    ------
    ValueError
        The run has no eval rows on a trained environment.
    """
    trained = {e.env_id for e in run.environments if e.w > 0}
    df = run.rollouts
    df = df[(df["phase"] == "eval") & df["env_id"].isin(trained)]
    if df.empty:
        raise ValueError(f"run {run.run_id}: no eval rows on its trained environments {sorted(trained)}")
    rs = df["rs"].to_numpy(bool)
    r = df["reward"].to_numpy(float)
    work = pd.DataFrame({"step": df["step"].to_numpy(np.int64), "n": 1, "n_rs": rs.astype(int),
                         "a_n": rs.astype(int), "a_sum": np.where(rs, r, 0.0),
                         "b_n": (~rs).astype(int), "b_sum": np.where(rs, 0.0, r)})
    return work.groupby("step", sort=True).sum().reset_index()[list(COUNT_COLUMNS)]


def _window(counts: pd.DataFrame, p_stop: float) -> tuple[pd.DataFrame, str]:
    """The takeoff window: rows from step 0 up to the first with p̂ ≥ p_stop (kept), or up to the last before the
    local path wins: b̂ above the run's RS skill â, the mean reward of all its RS eval rollouts (pooled over the
    whole run: at p0 = 0.02 an eval point has one or two RS rollouts, too few to compare against)."""
    keep = 0
    a_n, a_sum = counts["a_n"].sum(), counts["a_sum"].sum()
    a_hat = a_sum / a_n if a_n > 0 else float("inf")
    for i, row in enumerate(counts.itertuples(index=False)):
        if i > 0 and row.b_n > 0 and row.b_sum / row.b_n > a_hat:
            return counts.iloc[:keep], "local path won"
        keep = i + 1
        if row.n_rs / row.n >= p_stop:
            return counts.iloc[:keep], f"p passed {p_stop:g}"
    return counts.iloc[:keep], "end of run"


def _wls_slope(t: np.ndarray, k: np.ndarray, n: np.ndarray) -> tuple[float, float, float, float]:
    """Slope, its binomial-weight standard error, intercept and dispersion of logit p̃ on t (module docstring)."""
    p = (k + 0.5) / (n + 1.0)
    y = np.log(p / (1 - p))
    w = n * p * (1 - p)
    tw = np.sum(w * t) / w.sum()
    sxx = np.sum(w * (t - tw) ** 2)
    slope = float(np.sum(w * (t - tw) * y) / sxx)
    intercept = float(np.sum(w * y) / w.sum() - slope * tw)
    m = len(t)
    chi2 = float(np.sum(w * (y - intercept - slope * t) ** 2))
    dispersion = chi2 / (m - 2) if m > 2 else float("nan")
    se = math.sqrt(1.0 / sxx) * math.sqrt(max(1.0, dispersion) if m > 2 else 1.0)
    return slope, se, intercept, dispersion


def takeoff_rate(counts, *, run_id: str | None = None, p_stop: float = 0.5, max_step: int | None = None,
                 min_points: int = 2) -> TakeoffRate:
    """The early growth rate of logit p of one run, with its standard error (module docstring).

    Parameters
    ----------
    counts : fitting.Run or pandas.DataFrame
        A run (its eval rows on trained environments are pooled by :func:`trained_eval_counts`), or such a table:
        columns :data:`COUNT_COLUMNS`, one row per eval step, step 0 first.
    run_id : str, optional
        Names the run in the result (default: the Run's id, else ``""``).
    p_stop : float
        The window ends at the first eval point with p̂ ≥ p_stop (that point included), in (0, 1).
    max_step : int, optional
        Eval points after this step are not used (a step budget), in optimizer steps.
    min_points : int
        Fewer eval points in the window give ``rate = stderr = NaN`` (at least 2).

    Returns
    -------
    TakeoffRate

    Raises
    ------
    ValueError
        A table without the columns, with n < 1, n_rs outside [0, n], repeated steps, or a bad ``p_stop`` /
        ``min_points``.
    """
    if not 0 < p_stop < 1:
        raise ValueError(f"p_stop = {p_stop!r}; allowed (0, 1)")
    if min_points < 2:
        raise ValueError(f"min_points = {min_points!r}; allowed an integer >= 2 (a slope needs two points)")
    if not isinstance(counts, pd.DataFrame):
        run_id = counts.run_id if run_id is None else run_id
        counts = trained_eval_counts(counts)
    missing = [c for c in COUNT_COLUMNS if c not in counts.columns]
    if missing:
        raise ValueError(f"eval counts lack column(s) {missing}; expected {list(COUNT_COLUMNS)}")
    counts = counts.sort_values("step").reset_index(drop=True)
    if max_step is not None:
        counts = counts[counts["step"] <= max_step].reset_index(drop=True)
    n, k = counts["n"].to_numpy(float), counts["n_rs"].to_numpy(float)
    if len(counts) == 0 or (n < 1).any() or (k < 0).any() or (k > n).any() or counts["step"].duplicated().any():
        raise ValueError("eval counts need one row per step with n >= 1 and 0 <= n_rs <= n")
    window, stop = _window(counts, p_stop)
    p0_hat = float(k[0] / n[0])
    steps = tuple(int(s) for s in window["step"])
    if len(window) < min_points:
        return TakeoffRate(run_id or "", float("nan"), float("nan"), float("nan"), float("nan"), steps, stop, p0_hat)
    slope, se, intercept, dispersion = _wls_slope(window["step"].to_numpy(float), window["n_rs"].to_numpy(float),
                                                  window["n"].to_numpy(float))
    return TakeoffRate(run_id or "", slope, se, intercept, dispersion, steps, stop, p0_hat)


@dataclass(frozen=True)
class SelectionExponent:
    """The exponent γ of one arm in r = C [p0 (1 − p0)]^γ (:func:`selection_exponent`).

    Attributes
    ----------
    gamma : float
        Point estimate (γ = 1: the post's replicator flow; γ = 0: growth independent of the prior).
    interval : tuple of float
        Bootstrap percentile interval at ``level`` (over stage-1 models, stratified by prior; widened about γ̂ by
        sqrt(m / (m − 1)), module docstring).
    level : float
    scale : float
        C, in logit units per optimizer step at p0 (1 − p0) = 1.
    n_p0, n_stage1_models, n_runs : int
        Distinct priors, stage-1 models and runs with a finite rate that entered the fit.
    n_boot : int
        Bootstrap draws whose fit converged (of the requested).
    draws : numpy.ndarray
        The bootstrap γ values, shape (n_boot,).
    """

    gamma: float
    interval: tuple[float, float]
    level: float
    scale: float
    n_p0: int
    n_stage1_models: int
    n_runs: int
    n_boot: int
    draws: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-able summary: ``gamma: {value, interval_95}`` and the counts (takeoff summary.json's per-arm keys)."""
        key = f"interval_{round(100 * self.level)}"
        return {"gamma": {"value": self.gamma, key: list(self.interval)}, "scale": self.scale, "n_p0": self.n_p0,
                "n_stage1_models": self.n_stage1_models, "n_runs": self.n_runs, "n_boot": self.n_boot}


def _fit_power(x: np.ndarray, r: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """(γ, log C) minimising Σ ((r − C x^γ) / se)²; started from the log-log fit of the positive rates."""
    from scipy.optimize import least_squares

    lx = np.log(x)
    pos = r > 0
    if pos.sum() >= 2 and np.ptp(lx[pos]) > 0:
        g0, c0 = np.polyfit(lx[pos], np.log(r[pos]), 1)
    else:
        g0, c0 = 0.5, math.log(max(np.mean(np.abs(r)), 1e-12))
    res = least_squares(lambda th: (r - np.exp(th[1] + th[0] * lx)) / se, x0=[g0, c0], method="lm")
    return float(res.x[0]), float(res.x[1])


def selection_exponent(rates: pd.DataFrame, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                       se_floor: float = 1e-3) -> SelectionExponent:
    """γ of one arm, with a bootstrap interval over stage-1 models (module docstring).

    Parameters
    ----------
    rates : pandas.DataFrame
        One row per run: ``p0`` (the prior, in (0, 1)), ``stage1`` (the stage-1 model's id: runs sharing it are
        one cluster), ``rate`` and ``stderr`` (:class:`TakeoffRate`'s, per optimizer step). Rows with a NaN rate
        are left out (counted in nothing).
    n_boot : int
        Bootstrap draws (>= 100).
    level : float
        Coverage of the percentile interval, in (0, 1).
    seed : int
        Seed of the bootstrap's generator (results are reproducible from it).
    se_floor : float
        Standard errors below this (logit per step) are raised to it, so no run gets unbounded weight.

    Returns
    -------
    SelectionExponent

    Raises
    ------
    ValueError
        Missing columns, a prior outside (0, 1), fewer than two distinct priors with a finite rate, or bad
        ``n_boot`` / ``level``.
    """
    missing = [c for c in ("p0", "stage1", "rate", "stderr") if c not in rates.columns]
    if missing:
        raise ValueError(f"rates lack column(s) {missing}; expected p0, stage1, rate, stderr")
    if n_boot < 100 or not 0 < level < 1:
        raise ValueError(f"n_boot = {n_boot!r} (allowed >= 100), level = {level!r} (allowed (0, 1))")
    df = rates[np.isfinite(rates["rate"].to_numpy(float)) & np.isfinite(rates["stderr"].to_numpy(float))]
    p0 = df["p0"].to_numpy(float)
    if ((p0 <= 0) | (p0 >= 1)).any():
        raise ValueError(f"p0 must lie in (0, 1); got {sorted(set(p0[(p0 <= 0) | (p0 >= 1)]))}")
    if df["p0"].nunique() < 2:
        raise ValueError(f"γ needs runs at two or more priors with a finite rate; got {df['p0'].nunique()}")
    x = p0 * (1 - p0)
    r = df["rate"].to_numpy(float)
    se = np.maximum(df["stderr"].to_numpy(float), se_floor)
    gamma, log_c = _fit_power(x, r, se)
    # stratified cluster bootstrap: per prior, resample its stage-1 models with replacement, keep all their runs
    clusters = {}
    for i, (p, s) in enumerate(zip(df["p0"], df["stage1"])):
        clusters.setdefault(p, {}).setdefault(s, []).append(i)
    strata = [list(models.values()) for models in clusters.values()]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = np.concatenate([np.concatenate([models[j] for j in rng.integers(len(models), size=len(models))])
                              for models in strata])
        try:
            g, _ = _fit_power(x[idx], r[idx], se[idx])
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.isfinite(g):
            draws.append(g)
    draws = np.asarray(draws)
    tail = (1 - level) / 2
    if len(draws) and max(len(models) for models in strata) > 1:
        # resampling m clusters shrinks the variance by (m - 1)/m: widen the percentiles about γ̂ by sqrt(m/(m - 1))
        m = np.mean([len(models) for models in strata])
        inflate = math.sqrt(m / (m - 1)) if m > 1 else 1.0
        lo, hi = gamma + inflate * (np.quantile(draws, [tail, 1 - tail]) - gamma)
    else:
        lo, hi = float("nan"), float("nan")
    n_models = len({(p, s) for p, s in zip(df["p0"], df["stage1"])})
    return SelectionExponent(gamma, (float(lo), float(hi)), level, float(math.exp(log_c)), int(df["p0"].nunique()),
                             n_models, len(df), len(draws), draws)
