"""Maximum-likelihood fit of the toy model to rollout observations with lmfit (docs/model.md §6).

The objective is lmfit's: a vector of signed deviance residuals (see
``_problem``), minimised by Levenberg-Marquardt (``Minimizer.leastsq``) with
a batched finite-difference Jacobian passed as ``Dfun``. Errors come from
the covariance (J^T J)^-1 of those residuals in external parameter space
(lmfit ``scale_covar=False``: the likelihood fixes the scale; set
``scale_covar=True`` to inflate by the reduced chi-square for overdispersed
data). Profile intervals (``lmfit.conf_interval`` with a chi-square(1)
likelihood-ratio probability) and ``Minimizer.emcee`` sampling are on
request. References: lmfit documentation, "Performing Fits and Analyzing
Outputs" (Minimizer, leastsq ``Dfun``/``col_deriv``, ``scale_covar``,
``emcee``, ``is_weighted``) and "Calculation of confidence intervals"
(``conf_interval``, ``prob_func``).

Identifiability. A parameter is reported as *not identified* (no interval,
``identified: false`` and a reason) when the data cannot constrain it: its
column of the Jacobian is zero, it lies in a (near-)null direction of
J^T J, or its standard error is larger than its plausible range (a
probability with stderr > 0.25, a positive scale with stderr > its value,
λ with stderr > 1). Its point value is still shown, flagged, never as a
confident number.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import lmfit
import numpy as np
import pandas as pd
from scipy import stats

from physrl.contract import Run, load_runs

from ._engine import single_thread
from ._observations import observations
from ._problem import FitSpec, Problem, kind_of

NULL_EIGEN_RTOL = 1e-9
NULL_COMPONENT = 0.3


@dataclass
class ParameterEstimate:
    """One fitted parameter as reported in fit.json.

    Attributes
    ----------
    name : str
    value : float
    stderr : float or None
        None when not identified or fixed.
    identified : bool
    vary : bool
        False for fixed parameters (e.g. ``alpha_z`` = 1, the time unit).
    reason : str
        Why a parameter is not identified ("" otherwise).
    at_bound : bool
        The estimate sits on a bound (e.g. c = 0); its interval is one-sided.
    meaning : str
        What it is (run id / env id for indexed names).
    """

    name: str
    value: float
    stderr: float | None
    identified: bool
    vary: bool
    reason: str = ""
    at_bound: bool = False
    meaning: str = ""
    profile: dict | None = None

    def interval(self, level: float = 0.95, bounds: tuple[float, float] = (-np.inf, np.inf)):
        """Wald interval on the natural scale: logit for probabilities, log for scales.

        Returns (lower, upper), or (nan, nan) if not identified. At a bound the
        interval is one-sided, from the bound to bound + z·stderr.
        """
        if not self.identified or self.stderr is None or not self.vary:
            return (math.nan, math.nan) if self.vary else (self.value, self.value)
        z = stats.norm.ppf(0.5 + level / 2)
        v, se = self.value, self.stderr
        kind = kind_of(self.name)
        lo_b, hi_b = bounds
        if self.at_bound:
            if abs(v - lo_b) <= abs(v - hi_b):
                return lo_b, min(hi_b, lo_b + z * se)
            return max(lo_b, hi_b - z * se), hi_b
        if kind == "prob":
            lv = math.log(v / (1 - v))
            d = z * se / (v * (1 - v))
            return 1 / (1 + math.exp(-(lv - d))), 1 / (1 + math.exp(-(lv + d)))
        if kind == "scale":
            d = z * se / v
            return v * math.exp(-d), v * math.exp(d)
        return max(lo_b, v - z * se), min(hi_b, v + z * se)


@dataclass
class FitResult:
    """A finished fit.

    Attributes
    ----------
    problem : Problem
        Data layout and likelihood (``problem.run_ids``, ``problem.env_ids``).
    result : lmfit.MinimizerResult
        lmfit's own result (``result.params``, ``lmfit.fit_report(result)``).
    estimates : dict of ParameterEstimate
        Every parameter (varying and fixed) with its identified flag.
    covariance : ndarray, shape (P, P)
        Over ``var_names`` (pseudo-inverse where singular; rows of
        unidentified parameters are not meaningful).
    var_names : list of str
    loglik, aic, bic : float
        From the full likelihood (not lmfit's Gaussian aic/bic):
        AIC = -2 log L + 2k, BIC = -2 log L + k ln n.
    n_data : int
        Number of observations (residuals).
    seconds : float
        Wall-clock time of the fit.
    notes : list of str
    """

    problem: Problem
    result: lmfit.MinimizerResult
    estimates: dict[str, ParameterEstimate]
    covariance: np.ndarray
    var_names: list[str]
    loglik: float
    aic: float
    bic: float
    n_data: int
    seconds: float
    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    emcee: dict | None = None

    @property
    def spec(self) -> FitSpec:
        return self.problem.spec

    @property
    def params(self) -> lmfit.Parameters:
        return self.result.params

    def value(self, name: str) -> float:
        return self.estimates[name].value

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Interval of parameter ``name`` at ``level`` (see :meth:`ParameterEstimate.interval`)."""
        par = self.params[name]
        return self.estimates[name].interval(level, (par.min, par.max))

    @property
    def unidentified(self) -> list[str]:
        return [n for n, e in self.estimates.items() if e.vary and not e.identified]

    def report(self) -> str:
        """lmfit's ``fit_report`` followed by likelihood, identifiability and notes."""
        lines = [lmfit.fit_report(self.result, show_correl=True, min_correl=0.5), "",
                 "[[Likelihood]]",
                 "    (chi-square above = deviance of binomial/Gaussian observations; "
                 "stderr from (J^T J)^-1, not scaled by reduced chi-square)"
                 if not self.result.scale_covar_used else "    (stderr scaled by reduced chi-square)",
                 f"    log L = {self.loglik:.3f}   AIC = {self.aic:.2f}   BIC = {self.bic:.2f}   "
                 f"n_data = {self.n_data}   k = {len(self.var_names)}",
                 "", "[[Identifiability and 95% intervals]]"]
        for name, est in self.estimates.items():
            if not est.vary:
                lines.append(f"    {name:<18} = {est.value:.6g} (fixed: {est.meaning})")
            elif est.identified:
                lo, hi = self.interval(name)
                bound = "  [at bound: one-sided]" if est.at_bound else ""
                lines.append(f"    {name:<18} = {est.value:.5g} ± {est.stderr:.2g}   95%: [{lo:.4g}, {hi:.4g}]"
                             f"{bound}   {est.meaning}")
            else:
                lines.append(f"    {name:<18}   NOT IDENTIFIED ({est.reason}); point value {est.value:.3g} "
                             f"is not an estimate   {est.meaning}")
        if self.notes:
            lines += ["", "[[Notes]]"] + [f"    - {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (what ``fit.json`` holds); no NaN: missing numbers are null."""
        def num(x):
            return None if x is None or not np.isfinite(x) else float(x)

        params = {}
        for name, est in self.estimates.items():
            lo95, hi95 = self.interval(name, 0.95)
            lo90, hi90 = self.interval(name, 0.90)
            params[name] = {"value": num(est.value), "stderr": num(est.stderr), "identified": est.identified,
                            "vary": est.vary, "at_bound": est.at_bound, "reason": est.reason or None,
                            "meaning": est.meaning, "interval95": [num(lo95), num(hi95)],
                            "interval90": [num(lo90), num(hi90)], "profile": est.profile}
        spec = self.spec
        return {
            "spec": {"transfer": spec.transfer, "priors": spec.priors, "learnabilities": spec.learnabilities,
                     "lam": spec.lam, "phases": list(spec.phases), "substeps": spec.substeps},
            "runs": [{"run_id": r.run_id, "source": str(r.source), "finished": r.finished, "notes": r.notes,
                      "environments": [{"env_id": e.env_id, "w": e.w, "coordinates": e.coordinates}
                                       for e in r.environments]} for r in self.runs],
            "parametrisation": "alpha_z = 1 fixes the model time unit; time_scale = model time per optimizer "
                               "step; alpha_x, alpha_y relative to alpha_z; p0_r<i> is run i's prior",
            "params": params,
            "loglik": num(self.loglik), "aic": num(self.aic), "bic": num(self.bic), "n_data": self.n_data,
            "n_varying": len(self.var_names), "deviance": num(self.result.chisqr),
            "redchi": num(self.result.redchi), "success": bool(self.result.success),
            "message": self.result.message, "nfev": int(self.result.nfev), "seconds": self.seconds,
            "unidentified": self.unidentified, "notes": self.notes, "emcee": self.emcee,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _meaning(name: str, problem: Problem) -> str:
    parts = name.split("_")
    out = []
    for p in parts:
        if p.startswith("r") and p[1:].isdigit():
            out.append(f"run {problem.run_ids[int(p[1:])]}")
        if p.startswith("e") and p[1:].isdigit() and name.rsplit("_", 1)[-1] == p:
            out.append(f"env {problem.env_ids[int(p[1:])]}")
    if name == "alpha_z" or name.startswith("alpha_z_e0"):
        out.append("time unit (alpha_z and time_scale are degenerate in step units)")
    return ", ".join(out)


def _identify(problem: Problem, params: lmfit.Parameters, names: list[str], jac: np.ndarray,
              scale: float) -> tuple[dict, np.ndarray]:
    """Covariance and identified flags from the Jacobian at the optimum."""
    fisher = jac.T @ jac
    diag = np.diag(fisher).copy()
    reasons = {n: "" for n in names}
    for j, n in enumerate(names):
        if not diag[j] > 0:
            reasons[n] = "the data do not depend on it (zero Jacobian column)"
    d = np.sqrt(np.where(diag > 0, diag, 1.0))
    scaled = fisher / np.outer(d, d)
    evals, evecs = np.linalg.eigh(scaled)
    null = evals < NULL_EIGEN_RTOL * max(evals.max(), 1e-300)
    for k in np.flatnonzero(null):
        comp = np.abs(evecs[:, k])
        involved = [names[j] for j in np.flatnonzero(comp > NULL_COMPONENT)]
        for n in involved:
            if not reasons[n]:
                others = [m for m in involved if m != n]
                reasons[n] = ("degenerate with " + ", ".join(others)) if others else "flat direction of the likelihood"
    inv_scaled = np.linalg.pinv(scaled, rcond=NULL_EIGEN_RTOL, hermitian=True)
    cov = inv_scaled / np.outer(d, d) * scale
    out = {}
    for j, n in enumerate(names):
        se = float(np.sqrt(cov[j, j])) if cov[j, j] > 0 else math.nan
        par = params[n]
        kind = kind_of(n)
        if not reasons[n]:
            if not np.isfinite(se):
                reasons[n] = "no finite standard error"
            elif kind == "prob" and se > 0.25:
                reasons[n] = f"stderr {se:.2g} spans the whole (0, 1) range"
            elif kind == "scale" and se > par.value:
                reasons[n] = f"stderr {se:.2g} exceeds the value (relative error > 100%)"
            elif kind == "lam" and se > 1.0:
                reasons[n] = f"stderr {se:.2g} > 1"
        span = par.max - par.min if np.isfinite(par.max - par.min) else max(abs(par.value), 1.0)
        at_bound = bool(min(abs(par.value - par.min), abs(par.max - par.value)) < 1e-4 * span)
        out[n] = (se, reasons[n], at_bound)
    return out, cov


def fit(runs, *, transfer: str = "homogeneous", priors: str = "shared", learnabilities: str = "shared",
        lam: bool = False, phases=("eval", "train"), substeps: int = 1, profile: bool | list[str] = False,
        emcee_steps: int = 0, emcee_walkers: int | None = None, scale_covar: bool = False,
        seed: int = 0, max_nfev: int | None = None, grid: bool = True) -> FitResult:
    """Fit the toy model's parameters to one or many runs jointly.

    Parameters
    ----------
    runs : list of Run, or paths
        Runs from :func:`fitting.load_runs` (or paths it accepts). Runs share
        every parameter except their prior p0 (``p0_r<i>``).
    transfer : {"none", "homogeneous", "kernel"}
        Transfer model (docs/model.md §3 / §4); kernel needs env coordinates.
    priors, learnabilities : {"shared", "per_env"}
        See :class:`fitting.FitSpec`.
    lam : bool
        Fit footnote-4 λ.
    phases : tuple of str
        Rollout phases used as observations.
    substeps : int
        Euler steps per optimizer step in the fitted ODE.
    profile : bool or list of str
        Profile-likelihood 95% intervals (``lmfit.conf_interval``) for all
        identified varying parameters (True) or the named ones; slow.
    emcee_steps : int
        If > 0, run ``Minimizer.emcee`` for that many steps (needs the
        ``mcmc`` extra: ``pip install emcee``) and store medians and
        quantiles in ``FitResult.emcee``.
    scale_covar : bool
        Inflate errors by the reduced chi-square (overdispersed data).
    seed : int
        Seed for emcee.
    max_nfev : int, optional
        Cap on residual evaluations (lmfit ``max_nfev``).
    grid : bool
        Start from the best of a batched grid over (time_scale, alpha_x,
        alpha_y) before Levenberg-Marquardt (recommended).

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Bad option, no observations, or kernel transfer without coordinates.
    LogValidationError
        If paths are given and a log breaks the contract.
    ImportError
        ``emcee_steps > 0`` without emcee installed.
    """
    with single_thread():
        return _fit(runs, transfer=transfer, priors=priors, learnabilities=learnabilities, lam=lam,
                    phases=phases, substeps=substeps, profile=profile, emcee_steps=emcee_steps,
                    emcee_walkers=emcee_walkers, scale_covar=scale_covar, seed=seed, max_nfev=max_nfev,
                    grid=grid)


def _fit(runs, *, transfer, priors, learnabilities, lam, phases, substeps, profile, emcee_steps,
         emcee_walkers, scale_covar, seed, max_nfev, grid) -> FitResult:
    t0 = time.perf_counter()
    if not runs:
        raise ValueError("no runs to fit")
    if not isinstance(runs[0], Run):
        runs = load_runs(runs)
    spec = FitSpec(transfer=transfer, priors=priors, learnabilities=learnabilities, lam=lam,
                   phases=tuple(phases), substeps=substeps)
    obs = observations(runs)
    problem = Problem.build(runs, obs, spec)
    notes = [f"run {r.run_id}: {n}" for r in runs for n in r.notes] + list(problem.notes)
    if grid:
        _grid_start(problem)
    minimizer = lmfit.Minimizer(problem.residual, problem.params, scale_covar=scale_covar,
                                Dfun=problem.jacobian, col_deriv=False, nan_policy="raise")
    result = minimizer.leastsq(max_nfev=max_nfev)
    result.scale_covar_used = scale_covar
    if problem._cache.get("rejected"):
        notes.append(f"{problem._cache['rejected']} trial parameter vectors were too fast for the step-unit Euler "
                     "grid and were rejected (residual 1e6) during the search")
    if problem._cache.get("nonfinite"):
        notes.append(f"{problem._cache['nonfinite']} non-finite residuals were replaced by 1e6 during the search")
    if not result.success:
        capped = max_nfev is not None and result.nfev >= max_nfev
        notes.append(f"stopped at the cap of {max_nfev} residual evaluations (max_nfev) before converging"
                     if capped else f"optimizer did not report success: {result.message}")
    names = list(result.var_names)
    jac = problem.jacobian(result.params)
    deviance = float(np.sum(problem.residual(result.params) ** 2))
    dof = max(problem.n_data - len(names), 1)
    scale = deviance / dof if scale_covar else 1.0
    ident, cov = _identify(problem, result.params, names, jac, scale)
    for n in names:  # fit_report shows the same errors; none for what the data cannot constrain
        se, reason, _ = ident[n]
        result.params[n].stderr = se if (np.isfinite(se) and not reason) else None
    result.covar = cov
    estimates = {}
    for name, par in result.params.items():
        if par.vary:
            se, reason, at_bound = ident[name]
            identified = not reason
            estimates[name] = ParameterEstimate(name, float(par.value), se if identified else None, identified,
                                                True, reason, at_bound, _meaning(name, problem))
        else:
            estimates[name] = ParameterEstimate(name, float(par.value), None, True, False, "", False,
                                                _meaning(name, problem) or "fixed")
    if result.redchi > 1.5:
        notes.append(f"reduced chi-square {result.redchi:.2f} > 1.5: data vary more than the model's "
                     "binomial noise; consider scale_covar=True")
    unidentified = [n for n, e in estimates.items() if e.vary and not e.identified]
    if unidentified:
        notes.append(f"not identified by these data: {', '.join(unidentified)}")
    loglik = problem.loglik(deviance)
    k = len(names)
    fit_result = FitResult(problem, result, estimates, cov, names, loglik, -2 * loglik + 2 * k,
                           -2 * loglik + k * math.log(problem.n_data), problem.n_data, 0.0, runs, notes)
    if profile:
        _profile(minimizer, fit_result, profile)
    if emcee_steps:
        _emcee(minimizer, fit_result, emcee_steps, emcee_walkers, seed)
    fit_result.seconds = time.perf_counter() - t0
    return fit_result


def _grid_start(problem: Problem) -> None:
    """Set time_scale, alpha_x, alpha_y to the best point of a log grid (one batched integration)."""
    steps = problem.config.steps
    horizon = max(float(steps.max()), 1.0)
    ts = np.geomspace(0.3, 300.0, 10) / horizon
    ax = ay = np.array([0.3, 1.0, 3.0])
    names = ["time_scale"] + [n for n in ("alpha_x", "alpha_y") if n in problem.params and problem.params[n].vary]
    mesh = np.array(np.meshgrid(ts, *([ax] * (len(names) - 1)), indexing="ij")).reshape(len(names), -1).T
    base = problem.full()
    batch = problem.expand(mesh, names, base)
    res = problem.residuals_full(batch)
    best = mesh[int(np.argmin((res**2).sum(1)))]
    for n, v in zip(names, best):
        problem.params[n].value = float(v)


def _profile(minimizer: lmfit.Minimizer, fit_result: FitResult, which) -> None:
    names = [n for n in fit_result.var_names if fit_result.estimates[n].identified]
    if isinstance(which, (list, tuple)):
        names = [n for n in names if n in which]

    def prob_func(best, new):  # likelihood ratio: deviance difference ~ chi-square(1)
        return stats.chi2.cdf(max(new.chisqr - best.chisqr, 0.0), 1)

    try:
        ci = lmfit.conf_interval(minimizer, fit_result.result, p_names=names, sigmas=[0.95],
                                 prob_func=prob_func)
    except Exception as exc:  # an unconverged profile is reported, not fatal
        fit_result.notes.append(f"profile intervals failed: {type(exc).__name__}: {exc}")
        return
    for name, rows in ci.items():
        vals = {round(p, 4): v for p, v in rows}
        lo, hi = rows[0][1], rows[-1][1]
        fit_result.estimates[name].profile = {"level": 0.95, "lower": None if not np.isfinite(lo) else float(lo),
                                              "upper": None if not np.isfinite(hi) else float(hi),
                                              "best": float(vals.get(0.0, fit_result.value(name)))}


def _emcee(minimizer: lmfit.Minimizer, fit_result: FitResult, steps: int, walkers, seed: int) -> None:
    try:
        import emcee  # noqa: F401
    except ImportError as exc:
        raise ImportError("emcee sampling needs the 'mcmc' extra: pip install emcee") from exc
    params = fit_result.params.copy()
    for name in fit_result.unidentified:  # unidentified directions are flat: keep them fixed
        params[name].vary = False
    nvar = sum(p.vary for p in params.values())
    walkers = walkers or max(2 * nvar + 2, 16)
    out = minimizer.emcee(params=params, steps=steps, nwalkers=walkers,
                          burn=steps // 4, is_weighted=True, seed=seed, progress=False)
    summary = {}
    for name in out.var_names:
        chain = out.flatchain[name].to_numpy()
        q = np.quantile(chain, [0.025, 0.05, 0.5, 0.95, 0.975])
        summary[name] = {"median": float(q[2]), "interval90": [float(q[1]), float(q[3])],
                         "interval95": [float(q[0]), float(q[4])]}
    fit_result.emcee = {"steps": steps, "walkers": int(walkers), "burn": steps // 4,
                        "acceptance": float(np.mean(out.acceptance_fraction)), "params": summary}


def compare(runs, variants: dict[str, dict] | None = None, **common) -> pd.DataFrame:
    """Fit several model variants to the same runs and rank them by AIC/BIC.

    Parameters
    ----------
    runs : list of Run or paths
    variants : dict name -> keyword arguments of :func:`fit`, optional
        Default: transfer none / homogeneous / kernel (kernel only when every
        env has coordinates), each with footnote-4 λ off and on.
    **common
        Passed to every :func:`fit`.

    Returns
    -------
    pandas.DataFrame
        One row per variant: ``variant, k, loglik, aic, bic, delta_aic,
        delta_bic, unidentified``, sorted by AIC. Failed variants keep their
        error message in ``error``.
    """
    if runs and not isinstance(runs[0], Run):
        runs = load_runs(runs)
    if variants is None:
        transfers = ["none", "homogeneous"]
        if all(e.coordinates is not None for r in runs for e in r.environments):
            transfers.append("kernel")
        variants = {f"{t}{'+lam' if l else ''}": {"transfer": t, "lam": l} for t in transfers for l in (False, True)}
    rows = []
    for name, kws in variants.items():
        try:
            res = fit(runs, **{**common, **kws})
            rows.append({"variant": name, "k": len(res.var_names), "loglik": res.loglik, "aic": res.aic,
                         "bic": res.bic, "unidentified": ",".join(res.unidentified), "error": ""})
        except Exception as exc:
            rows.append({"variant": name, "k": None, "loglik": None, "aic": np.inf, "bic": np.inf,
                         "unidentified": "", "error": f"{type(exc).__name__}: {exc}"})
    table = pd.DataFrame(rows).sort_values("aic", kind="stable").reset_index(drop=True)
    table["delta_aic"] = table["aic"] - table["aic"].min()
    table["delta_bic"] = table["bic"] - table["bic"].min()
    return table
