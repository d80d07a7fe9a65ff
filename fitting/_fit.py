"""Maximum-likelihood fit of the toy model to rollout observations with lmfit (docs/model.md §6, §7).

The objective is lmfit's: a vector of signed deviance residuals plus the
step-0 prior residuals (see ``_problem``), minimised by scipy's bounded
trust-region least squares (lmfit ``Minimizer.least_squares``, method
``trf``, bounds handled natively instead of lmfit's sine transform, along
which Levenberg-Marquardt crawled on real logs) with a batched
finite-difference Jacobian passed as ``Dfun``.

Starts. The initial state (p0, a0, b0) starts at its step-0 measurement; the
rates and transfers start from the best points of a Latin hypercube over
their plausible ranges (``scipy.stats.qmc.LatinHypercube``, evaluated in one
batched integration). Each of ``n_starts`` starts is optimised; the best by
penalised deviance is the answer, and the spread of the optima is reported
(:class:`FitDiagnostics`). A start stopped at ``max_nfev`` is not converged;
the fit is converged only when its best start is.

Noise. RL runs vary more than binomial noise (the eval share at one step
depends on the whole trajectory so far). The dispersion φ is the Pearson
χ² of the data divided by its degrees of freedom (quasi-likelihood; McCullagh
& Nelder, Generalized Linear Models, §4.5); by default the covariance is
scaled by max(φ, 1) and predictive bands widen accordingly (``_predict``).

Intervals are Wald intervals on the parameter's natural scale (logit for
probabilities, log for positive scales, natural and clipped for values in
[0, 1]); they always contain the estimate (one-sided at a bound).

Identifiability. A parameter is reported as *not identified* (no interval,
``identified: false`` and a reason) when the data cannot constrain it: its
column of the Jacobian is zero, it lies in a (near-)null direction of
J^T J, its standard error is not finite, it is larger than its plausible
range (a probability with stderr > 0.25, a positive scale with relative
stderr > 1, λ with stderr > 1), or its 95% interval spans its whole range.
Parameters the data cannot support at all (one observed step, no RS
rollout) are held fixed and reported as not identified.

References: lmfit documentation, "Performing Fits and Analyzing Outputs"
(Minimizer, least_squares, ``Dfun``, ``emcee``) and "Calculation of
confidence intervals" (``conf_interval``, ``prob_func``); scipy
``optimize.least_squares`` and ``stats.qmc``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lmfit
import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats import qmc

from physrl.contract import Run, load_runs

from ._engine import single_thread
from ._observations import observations
from ._problem import JACOBIAN_MAX_SUBSTEPS, WALL, FitSpec, Measurement, ParamInfo, Problem, Step0
from ._selection import gamma_identification

NULL_EIGEN_RTOL = 1e-9
NULL_COMPONENT = 0.3
#: residual evaluations per start (lmfit max_nfev) unless the caller says otherwise
DEFAULT_MAX_NFEV = 300
#: label suffix of the quasi-likelihood's weighted refit of the best start (a record beside the starts, not one)
REFIT_LABEL = "+weighted"
#: Latin-hypercube points screened for the starts
N_SCREEN = 96


class InsufficientData(ValueError):
    """Fewer observations than the parameters that remain after holding the unsupported ones fixed."""


@dataclass
class ParameterEstimate:
    """One fitted parameter as reported in fit.json.

    Attributes
    ----------
    name : str
    value : float
    stderr : float or None
        Standard error on the natural scale (scaled by the dispersion);
        None when not identified or fixed.
    identified : bool
    vary : bool
        False for fixed parameters (``alpha_z`` = 1, the time unit; step-0
        values with ``step0="fixed"``; parameters the data cannot support).
    reason : str
        Why a parameter is not identified ("" otherwise).
    at_bound : bool
        The estimate sits on a bound (e.g. c = 0); its interval is one-sided.
    meaning : str
        What it is (run id / env id).
    info : ParamInfo
        The parameter's record (kind, latent, run, env, domain).
    bounds : (float, float)
        The parameter's allowed range.
    profile : dict or None
        Profile-likelihood interval when requested.
    measurement : Measurement or None
        For an initial-state parameter held at its step-0 measurement: that measurement's distribution,
        which gives its stderr and interval (issue 18: never a zero-width interval).
    """

    name: str
    value: float
    stderr: float | None
    identified: bool
    vary: bool
    reason: str = ""
    at_bound: bool = False
    meaning: str = ""
    info: ParamInfo | None = None
    bounds: tuple[float, float] = (-np.inf, np.inf)
    profile: dict | None = None
    measurement: Measurement | None = None

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Wald interval on the natural scale; always contains ``value``.

        Logit scale for probabilities, log scale for positive scales, natural
        (clipped to the bounds) otherwise. At a bound the interval is
        one-sided, from the bound. Returns (nan, nan) if not identified and
        (value, value) if fixed; a parameter held at its step-0 measurement
        gets the measurement's interval (:class:`Measurement`).
        """
        if not self.vary and self.measurement is not None:
            return self.measurement.interval(level)
        if not self.vary:
            return (self.value, self.value) if self.identified else (math.nan, math.nan)
        if not self.identified or self.stderr is None or not np.isfinite(self.stderr):
            return math.nan, math.nan
        return wald_interval(self.value, self.stderr, self.info.domain if self.info else "unit", self.bounds,
                             level, self.at_bound)


def wald_interval(value: float, stderr: float, domain: str, bounds: tuple[float, float], level: float,
                  at_bound: bool = False) -> tuple[float, float]:
    """Wald interval of ``value`` ± z·stderr on the scale of ``domain``, containing ``value``.

    Parameters
    ----------
    value, stderr : float
        Estimate and its standard error on the natural scale.
    domain : {"prob", "scale", "nonneg", "unit"}
        logit scale (delta method: se / (v (1 − v))), log scale (se / v),
        or natural scale clipped to ``bounds``.
    bounds : (float, float)
    level : float
    at_bound : bool
        One-sided interval from the nearer bound.
    """
    z = stats.norm.ppf(0.5 + level / 2)
    lo_b, hi_b = bounds
    v, se = value, stderr
    if at_bound:
        if abs(v - lo_b) <= abs(v - hi_b):
            hi = v * math.exp(min(z * se / v, 700.0)) if domain == "scale" and v > 0 else v + z * se
            lo, hi = lo_b, min(hi_b, hi)
        else:
            lo, hi = max(lo_b, v - z * se), hi_b
    elif domain == "prob":
        v_ = min(max(v, 1e-12), 1 - 1e-12)
        lv = math.log(v_ / (1 - v_))
        d = z * se / (v_ * (1 - v_))
        lo, hi = 1 / (1 + math.exp(-(lv - d))), 1 / (1 + math.exp(-(lv + d)))
    elif domain == "scale" and v > 0:
        d = min(z * se / v, 700.0)
        lo, hi = v * math.exp(-d), v * math.exp(d)
    else:
        lo, hi = max(lo_b, v - z * se), min(hi_b, v + z * se)
    return min(lo, v), max(hi, v)


@dataclass
class StartRecord:
    """One start of the multi-start optimisation.

    Attributes
    ----------
    label : str
        ``"measured"`` (step-0 values, best screened rates) or ``"lhs-<k>"``.
    deviance : float
        Penalised deviance at its optimum.
    converged : bool
    nfev : int
        Residual evaluations it used.
    message : str
        The optimizer's message.
    values : dict
        Its optimum's varying parameter values.
    """

    label: str
    deviance: float
    converged: bool
    nfev: int
    message: str
    values: dict

    def to_dict(self) -> dict:
        return {"label": self.label, "deviance": _num(self.deviance), "converged": self.converged,
                "nfev": self.nfev, "message": self.message,
                "values": {k: _num(v) for k, v in self.values.items()}}


@dataclass
class FitDiagnostics:
    """How the fit went: convergence, the starts, the noise.

    Attributes
    ----------
    converged : bool
        The best start's optimizer reported convergence (not stopped by
        ``max_nfev`` or a failure).
    status : {"converged", "max_nfev", "walled", "failed"}
        ``walled``: the optimum, or a Jacobian the optimizer stopped on, lay where the ODE is too fast for
        the step-unit Euler grid (:meth:`Problem.jacobian`).
    message : str
    nfev : int
        Residual evaluations over all starts (the screen's batched
        evaluations not counted).
    jacobians : int
        Batched Jacobian evaluations over all starts.
    max_nfev : int
        Cap per start.
    starts : list of StartRecord
        Best first; with the quasi-likelihood, the weighted refit of the best
        start comes first (label ``<start>+weighted``; not a start of its own,
        see :attr:`n_starts`).
    n_at_best : int
        Starts whose optimum lies within max(φ, 1) of the best penalised
        deviance (reached the same optimum up to noise), at least 1 (the
        start the refit came from).
    spread : dict name -> [min, max]
        Range of each varying parameter over those starts.
    deviance : float
        Data deviance at the optimum (−2 log L up to a data-only constant).
    penalty : float
        Sum of squared step-0 prior residuals at the optimum.
    pearson_chi2 : float
    dof : int
        Data points minus varying parameters.
    dispersion : float
        φ = Pearson χ² / dof over all data at the optimum (unweighted; nan
        when dof <= 0).
    dispersion_used : dict component -> float
        max(φ_c, 1) per component (p, a, b) by which its residuals were
        down-weighted (1 with ``dispersion="none"``); standard errors and
        predictive bands carry it.
    component_dispersion : dict component -> float
        φ_c = Pearson χ²_c / dof_c at the first (unweighted) optimum.
    rejected, nonfinite : int
        Trial vectors too fast for the Euler grid; non-finite residuals
        replaced by a wall.
    jacobian_fallbacks, jacobian_walled : int
        Jacobians a walled probe pushed to backward steps or a raised substep cap; Jacobians walled even so.
    seconds : float
    """

    converged: bool
    status: str
    message: str
    nfev: int
    jacobians: int
    max_nfev: int
    starts: list[StartRecord]
    n_at_best: int
    spread: dict
    deviance: float
    penalty: float
    pearson_chi2: float
    dof: int
    dispersion: float
    dispersion_used: dict
    component_dispersion: dict
    rejected: int = 0
    nonfinite: int = 0
    jacobian_fallbacks: int = 0
    jacobian_walled: int = 0
    seconds: float = 0.0

    @property
    def n_starts(self) -> int:
        """Optimiser starts (``n_starts`` / ``--starts``), as the progress bar counts them: the weighted refit
        of the best start is not one."""
        return sum(not s.label.endswith(REFIT_LABEL) for s in self.starts)

    def to_dict(self) -> dict:
        return {"converged": self.converged, "status": self.status, "message": self.message, "nfev": self.nfev,
                "jacobians": self.jacobians, "max_nfev": self.max_nfev, "n_starts": self.n_starts,
                "n_at_best": self.n_at_best, "starts": [s.to_dict() for s in self.starts],
                "spread": {k: [_num(a), _num(b)] for k, (a, b) in self.spread.items()},
                "deviance": _num(self.deviance), "penalty": _num(self.penalty),
                "pearson_chi2": _num(self.pearson_chi2), "dof": self.dof, "dispersion": _num(self.dispersion),
                "dispersion_used": {k: _num(v) for k, v in self.dispersion_used.items()},
                "component_dispersion": {k: _num(v) for k, v in self.component_dispersion.items()},
                "rejected": self.rejected, "nonfinite": self.nonfinite,
                "jacobian_fallbacks": self.jacobian_fallbacks, "jacobian_walled": self.jacobian_walled,
                "seconds": self.seconds}


def _num(x):
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass
class FitResult:
    """A finished fit.

    Attributes
    ----------
    problem : Problem
        Data layout and likelihood (``problem.run_ids``, ``problem.env_ids``,
        ``problem.info`` the parameters' records).
    result : lmfit.MinimizerResult
        lmfit's result of the best start (``result.params``,
        ``lmfit.fit_report(result)``); its errors are lmfit's own.
    estimates : dict of ParameterEstimate
        Every parameter (varying and fixed) with its identified flag and
        dispersion-scaled standard error.
    covariance : ndarray, shape (P, P)
        Over ``var_names``, scaled by ``diagnostics.dispersion_used``
        (pseudo-inverse where singular; rows of unidentified parameters are
        not meaningful).
    var_names : list of str
    loglik, aic, bic : float
        From the data likelihood at the optimum (binomial/Gaussian, not
        quasi): AIC = -2 log L + 2k, BIC = -2 log L + k ln n.
    n_data : int
        Number of observations (data residuals).
    seconds : float
        Wall-clock time of the fit.
    runs : list of Run
    diagnostics : FitDiagnostics
        Convergence, starts and their spread, dispersion φ.
    notes : list of str
    emcee : dict or None

    Properties: ``converged``, ``dispersion`` (φ), ``spec``, ``params``,
    ``unidentified``; :meth:`interval`, :meth:`initial_state` (fitted p0,
    a0, b0 in observed units next to the step-0 measurement).
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
    diagnostics: FitDiagnostics
    notes: list[str] = field(default_factory=list)
    emcee: dict | None = None

    @property
    def spec(self) -> FitSpec:
        return self.problem.spec

    @property
    def params(self) -> lmfit.Parameters:
        return self.result.params

    @property
    def converged(self) -> bool:
        return self.diagnostics.converged

    @property
    def dispersion(self) -> float:
        return self.diagnostics.dispersion

    def value(self, name: str) -> float:
        return self.estimates[name].value

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Interval of parameter ``name`` at ``level`` (see :meth:`ParameterEstimate.interval`)."""
        return self.estimates[name].interval(level)

    @property
    def unidentified(self) -> list[str]:
        """Parameters the data do not identify (varying, or held fixed because unsupported)."""
        return [n for n, e in self.estimates.items() if not e.identified]

    def initial_state(self, level: float = 0.95) -> pd.DataFrame:
        """Fitted p0, a0, b0 in observed units next to their step-0 measurement.

        Returns
        -------
        pandas.DataFrame
            One row per initial-state parameter: ``param, quantity, fitted``
            (observed units, pooled like the measurement), ``lower, upper``
            (its interval mapped through the observation model), ``measured,
            measured_lower, measured_upper`` (95%), ``inside`` (fitted value
            within the measurement interval), ``n`` rollouts.
        """
        rows = []
        prob = self.problem
        theta = prob.full(self.params)
        init = prob.initial_observed(theta)
        for name, s0 in prob.step0.items():
            info = prob.info[name]
            if s0.quantity == "p":
                mask = prob.index["p0"] == prob.names.index(name)
            else:
                mask = prob.index[f"{s0.quantity}0"] == prob.names.index(name)
            mask = mask & prob.config.valid
            fitted = float(init[s0.quantity][0][mask].mean())
            lo, hi = self.interval(name, level)
            if s0.quantity != "p" and np.isfinite(lo):
                ob = prob.observation_arrays(theta)
                a_lo = float(ob[f"{s0.quantity}_lo"][0][mask].mean())
                span = float((ob[f"{s0.quantity}_hi"] - ob[f"{s0.quantity}_lo"])[0][mask].mean())
                lo, hi = a_lo + span * lo, a_lo + span * hi
            rows.append({"param": name, "quantity": s0.quantity, "fitted": fitted, "lower": lo, "upper": hi,
                         "measured": s0.value, "measured_lower": s0.lower, "measured_upper": s0.upper,
                         "inside": bool(s0.lower <= fitted <= s0.upper), "n": s0.n, "step": s0.step,
                         "meaning": info.meaning(prob.run_ids)})
        return pd.DataFrame(rows)

    @property
    def dynamic(self) -> list[str]:
        """The dynamic parameters the fit was asked for (time scale, learnabilities, transfers, λ, γ), fixed
        time unit α_z excluded: what a converged fit is expected to have identified."""
        kinds = ("time_scale", "alpha", "c", "length_scale", "lam", "gamma")
        return [n for n, e in self.estimates.items() if e.info is not None and e.info.kind in kinds
                and (e.vary or not e.identified)]

    def identification_warning(self) -> str:
        """A summary-level warning when the headline would mislead, else "".

        Issue 18: a fit that "converged" while most of its dynamic parameters were not identified (more than
        half of :attr:`dynamic`) has found an optimum, not the dynamics; it says which.
        """
        dyn = self.dynamic
        missing = [n for n in dyn if not self.estimates[n].identified]
        if not dyn or 2 * len(missing) <= len(dyn):
            return ""
        head = "converged, but" if self.converged else "and"
        return (f"{head} {len(missing)} of {len(dyn)} dynamic parameters are NOT IDENTIFIED "
                f"({', '.join(missing)}): these data do not determine the dynamics; do not read rates, "
                "transfers or predictions from this fit")

    def summary_table(self) -> str:
        """A short plain-text table: status, φ, and each parameter with its 95% interval."""
        d = self.diagnostics
        refit = ", then its weighted refit" if d.n_starts < len(d.starts) else ""
        lines = [f"fit {'converged' if d.converged else 'DID NOT CONVERGE (' + d.status + ')'}: "
                 f"{len(self.runs)} runs, {self.n_data} observations, {len(self.var_names)} varying parameters, "
                 f"{d.nfev} evaluations over {d.n_starts} start{'s' if d.n_starts != 1 else ''} "
                 f"({d.n_at_best} reached the best{refit}), "
                 f"{self.seconds:.1f} s",
                 f"weighted deviance {d.deviance:.1f} (+ step-0 prior {d.penalty:.1f}); dispersion φ = "
                 f"{d.dispersion:.2f} (Pearson χ²/dof); per component "
                 + ", ".join(f"{c} {v:.2f}" for c, v in d.component_dispersion.items())
                 + " (residuals weighted by 1/√max(φ, 1))"]
        warning = self.identification_warning()
        if warning:
            lines.append(f"WARNING: {warning}")
        lines += ["", f"{'parameter':<16} {'value':>10}  {'95% interval':<24} note"]
        for name, est in self.estimates.items():
            if not est.identified:
                note = f"NOT IDENTIFIED: {est.reason}"
                interval = "-"
            elif not est.vary:
                # a fixed parameter's meaning already says how it was fixed ("..., fixed at its step-0
                # measurement", "time unit (...)"); say "fixed" once
                what = est.meaning or est.reason or ""
                note = what if "fixed" in what else (f"fixed: {what}" if what else "fixed")
                interval = "-"
                if est.measurement is not None:
                    lo, hi = est.interval(0.95)
                    interval = f"[{lo:.4g}, {hi:.4g}]"
            else:
                lo, hi = est.interval(0.95)
                interval = f"[{lo:.4g}, {hi:.4g}]"
                note = "; ".join(x for x in ("at its bound (one-sided interval)" if est.at_bound else "",
                                             est.meaning) if x)
            lines.append(f"{name:<16} {est.value:>10.4g}  {interval:<24} {note}".rstrip())
        table = self.initial_state()
        if len(table):
            lines += ["", "step-0 table: initial state in observed units vs its step-0 measurement (95%):"]
            for row in table.itertuples():
                lines.append(f"  {row.param:<14} {row.quantity}: fitted {row.fitted:.3f}, measured {row.measured:.3f} "
                             f"[{row.measured_lower:.3f}, {row.measured_upper:.3f}] "
                             f"{'inside' if row.inside else 'OUTSIDE'}")
        return "\n".join(lines)

    def report(self) -> str:
        """The summary table, lmfit's ``fit_report``, likelihood, starts, identifiability and notes."""
        d = self.diagnostics
        lines = [self.summary_table(), "", "[[lmfit report of the best start]]",
                 "    (its 'chi-square' is the penalised deviance; its errors are lmfit's unscaled ones — "
                 "use the table above)",
                 lmfit.fit_report(self.result, show_correl=True, min_correl=0.5), "",
                 "[[Likelihood]]",
                 f"    log L = {self.loglik:.3f}   AIC = {self.aic:.2f}   BIC = {self.bic:.2f}   "
                 f"n_data = {self.n_data}   k = {len(self.var_names)}",
                 f"    Pearson chi2 = {d.pearson_chi2:.1f} on {d.dof} dof: dispersion phi = {d.dispersion:.3f}",
                 "", "[[Starts]] (penalised deviance at each start's optimum)"]
        for s in d.starts:
            lines.append(f"    {s.label:<10} {s.deviance:12.2f}  {'converged' if s.converged else 'NOT converged'}"
                         f"  nfev {s.nfev}  {s.message}")
        if d.spread:
            lines.append(f"    spread over the {d.n_at_best} starts at the best optimum:")
            for name, (lo, hi) in d.spread.items():
                lines.append(f"      {name:<16} [{lo:.4g}, {hi:.4g}]")
        if self.notes:
            lines += ["", "[[Notes]]"] + [f"    - {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (what ``fit.json`` holds); no NaN: missing numbers are null."""
        params = {}
        for name, est in self.estimates.items():
            lo95, hi95 = self.interval(name, 0.95)
            lo90, hi90 = self.interval(name, 0.90)
            info = est.info
            params[name] = {"value": _num(est.value), "stderr": _num(est.stderr), "identified": est.identified,
                            "vary": est.vary, "at_bound": est.at_bound, "reason": est.reason or None,
                            "meaning": est.meaning, "interval95": [_num(lo95), _num(hi95)],
                            "interval90": [_num(lo90), _num(hi90)], "profile": est.profile,
                            "measurement": None if est.measurement is None else est.measurement.to_dict(),
                            "kind": info.kind if info else None, "latent": info.latent if info else None,
                            "run": info.run if info else None, "env": info.env if info else None}
        initial = self.initial_state()
        d = self.diagnostics
        return {
            "spec": self.spec.to_dict(),
            "runs": [{"run_id": r.run_id, "source": str(r.source), "path": str(Path(r.source).resolve()),
                      "finished": r.finished, "notes": r.notes,
                      "environments": [{"env_id": e.env_id, "w": e.w, "coordinates": e.coordinates}
                                       for e in r.environments]} for r in self.runs],
            "parametrisation": "alpha_z = 1 fixes the model time unit; time_scale = model time per optimizer "
                               "step; alpha_x, alpha_y relative to alpha_z; p0_r<i> is run i's prior; a0, b0 "
                               "latent (observed = lo + (hi - lo) * latent, docs/model.md §7)",
            "observation_bounds": {k: {"min": float(v.min()), "max": float(v.max())}
                                   for k, v in self.problem.bounds.items()},
            "stage1_floors": [f.to_dict() for f in self.problem.floors.values()],
            "params": params,
            "initial_state": json.loads(initial.to_json(orient="records")) if len(initial) else [],
            "loglik": _num(self.loglik), "aic": _num(self.aic), "bic": _num(self.bic), "n_data": self.n_data,
            "n_varying": len(self.var_names), "deviance": _num(d.deviance), "dispersion": _num(d.dispersion),
            "converged": d.converged, "status": d.status, "message": d.message, "nfev": d.nfev,
            "seconds": self.seconds, "diagnostics": d.to_dict(),
            "unidentified": self.unidentified, "warning": self.identification_warning() or None,
            "notes": self.notes, "emcee": self.emcee,
            "covariance": {"names": list(self.var_names), "matrix": self.covariance.tolist(),
                           "note": "over the varying parameters, dispersion-scaled, held step-0 noise included "
                                   "(what predictions draw from; FitResult.load reads it back)"},
        }

    def save(self, path: str | Path) -> None:
        """Write ``fit.json`` atomically (a kill mid-write leaves the previous file whole); no NaN."""
        from ._json import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, runs=None) -> "FitResult":
        """A fit saved by :meth:`save` (``fit.json`` or its folder), to predict with it without refitting.

        The layout is rebuilt from the fitted runs' logs (their recorded paths, or ``runs``); values,
        flags, covariance and dispersion are read from the file, so :func:`fitting.predict` gives the same
        numbers as with the fit that wrote it. See :func:`_load_fit` below for the errors raised.
        """

        return _load_fit(path, runs)


def _initial_state_uncertainty(problem: Problem, params: lmfit.Parameters,
                               gradient: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """Covariance the varying parameters inherit from an initial state held at its measurement.

    With p0, a0, b0 fixed at their step-0 measurement ŝ (``step0="fixed"``)
    the estimate θ̂(ŝ) moves with ŝ: dθ̂/dŝ = −(JᵀJ)⁺ Jᵀ J_s, so Var θ̂ gains
    G Σ_s Gᵀ with Σ_s the measurement's variance (two-step estimator; Murphy
    & Topel 1985), ``gradient`` from :func:`_held_gradient`. None when no initial state is fixed.
    """
    if gradient is None:
        return None
    fixed, g = list(gradient), np.column_stack(list(gradient.values()))
    var = np.empty(len(fixed))
    theta = problem.full(params)
    ob = problem.observation_arrays(theta)
    for k, n in enumerate(fixed):
        s0 = problem.step0[n]
        v = params[n].value
        if s0.quantity == "p":
            var[k] = (v * (1 - v) * s0.scale) ** 2
        else:
            cols = problem.index[f"{s0.quantity}0"] == problem.names.index(n)
            span = float((ob[f"{s0.quantity}_hi"] - ob[f"{s0.quantity}_lo"])[0][cols & problem.config.valid].mean())
            var[k] = (s0.scale / span) ** 2
    return (g * var) @ g.T


def _held_gradient(problem: Problem, params: lmfit.Parameters, names: list[str], jac: np.ndarray,
                   skip) -> dict[str, np.ndarray] | None:
    """dθ̂/dŝ: how the varying parameters' optimum moves with each held step-0 value ŝ, or None.

    Linearised at the optimum, dθ̂/dŝ = −(JᵀJ)⁺ Jᵀ J_s (Murphy & Topel 1985). Returns held name -> column
    over ``names`` (parameter units of the held value). Read by the covariance and by emcee, which moves
    its chain along it for draws of ŝ from the measurement (issue 18).
    """
    fixed = [n for n in problem.step0 if not params[n].vary and n not in skip]
    if not fixed or not names:
        return None
    probe = params.copy()
    for n, par in probe.items():
        par.vary = n in fixed
    j_s = problem.jacobian(probe)
    g = -np.linalg.pinv(jac.T @ jac, rcond=NULL_EIGEN_RTOL, hermitian=True) @ (jac.T @ j_s)
    return {n: g[:, k] for k, n in enumerate(fixed)}


def _identify(problem: Problem, params: lmfit.Parameters, names: list[str], jac: np.ndarray,
              scale: float, extra: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Covariance (scaled by ``scale``, plus ``extra``) and identified flags from the Jacobian at the optimum."""
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
    if extra is not None:
        cov = cov + extra
    out = {}
    for j, n in enumerate(names):
        se = float(np.sqrt(cov[j, j])) if cov[j, j] > 0 else math.nan
        par = params[n]
        info = problem.info[n]
        at_bound = _at_bound(par.value, par.min, par.max, info.domain)
        if not reasons[n]:
            if not np.isfinite(se):
                reasons[n] = "no finite standard error"
            elif info.domain in ("prob", "unit") and se > 0.25:
                reasons[n] = f"stderr {se:.2g} spans the whole (0, 1) range"
            elif info.domain == "scale" and se > par.value:
                reasons[n] = f"stderr {se:.2g} exceeds the value (relative error > 100%)"
            elif info.domain == "nonneg" and se > 1.0:
                reasons[n] = f"stderr {se:.2g} > 1"
            else:
                lo, hi = wald_interval(par.value, se, info.domain, (par.min, par.max), 0.95, at_bound)
                if info.domain in ("prob", "unit") and lo <= par.min + 0.01 * (par.max - par.min) \
                        and hi >= par.max - 0.01 * (par.max - par.min):
                    reasons[n] = f"95% interval [{lo:.3g}, {hi:.3g}] spans the whole range"
                elif info.domain == "scale" and hi / max(lo, 1e-300) > 1e3:
                    reasons[n] = f"95% interval [{lo:.3g}, {hi:.3g}] spans more than three decades"
        out[n] = (se, reasons[n], at_bound)
    return out, cov


def _component_dispersion(problem: Problem, theta: np.ndarray, n_params: int) -> dict[str, float]:
    """Pearson χ² / dof per component (p, a, b); the parameters' dof shared in proportion to the data."""
    pearson = problem.pearson(theta)
    total = sum(len(v) for v in pearson.values())
    out = {}
    for c in ("p", "a", "b"):
        v = pearson.get(c, np.empty(0))
        dof = len(v) - n_params * len(v) / max(total, 1)
        out[c] = float(v @ v / dof) if dof > 0 else math.nan
    return out


def _at_bound(value: float, lo: float, hi: float, domain: str) -> bool:
    if domain == "scale":
        return bool(value <= lo * 1.001 or value >= hi / 1.001)
    span = hi - lo if np.isfinite(hi - lo) else max(abs(value), 1.0)
    return bool(min(abs(value - lo), abs(hi - value)) < 1e-4 * span)


def _unsupported(problem: Problem, obs: pd.DataFrame) -> dict[str, str]:
    """Parameters the data cannot support at all, with the reason (held fixed, not identified)."""
    out = {}
    obs = obs[obs["phase"].isin(problem.spec.phases)]
    steps_per_run = obs.groupby("run_id")["step"].nunique()
    rate_kinds = ("time_scale", "alpha", "c", "length_scale", "lam", "gamma")
    if steps_per_run.max() < 2:
        for name, info in problem.info.items():
            if info.kind in rate_kinds and problem.params[name].vary:
                out[name] = "one observed step: no dynamics to fit"
    # a skill never observed: its initial value, its learnability / transfer, and its observation bounds
    for count, skill, latent, reason in (("a_n", "a", "x", "no RS rollout: RS skill is never observed"),
                                         ("b_n", "b", "y", "no non-RS rollout: local skill is never observed")):
        if (obs[count] > 0).any():
            continue
        for name, info in problem.info.items():
            if problem.params[name].vary and (info.kind == f"{skill}0"
                                              or (info.kind in ("alpha", "c", "length_scale") and info.latent == latent)
                                              or (info.kind == "bound" and info.latent == skill)):
                out.setdefault(name, reason)
    if problem.spec.lam and "lam" in problem.params and (not (obs["a_n"] > 0).any() or not (obs["b_n"] > 0).any()):
        out.setdefault("lam", "needs both RS and non-RS rollouts")
    return out


def fit(runs, *, transfer: str = "homogeneous", priors: str = "shared", learnabilities: str = "shared",
        lam: bool = False, phases=("eval", "train"), substeps: int = 1, observation: str = "stage1",
        step0: str = "free", dispersion: str | dict = "quasi", n_starts: int = 4,
        profile: bool | list[str] = False, emcee_steps: int = 0, emcee_walkers: int | None = None, seed: int = 0,
        max_nfev: int | None = None, progress: bool = False, selection: str = "replicator",
        start: dict[str, float] | None = None) -> FitResult:
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
    observation : {"stage1", "manifest", "unit", "fit"}
        Observation bounds (docs/model.md §7): from the manifests with the
        local floor b_lo measured per stage-1 model at its step 0 (default;
        :func:`fitting._step0.stage1_floors`), from the manifests as declared
        (else (0, 1)), (0, 1), or fitted.
    step0 : {"free", "fixed", "prior"}
        p0, a0, b0 fitted by the data alone, the step-0 rows included
        (default: unbiased, and its 95% intervals held every parameter's
        truth in >= 88% of 60 synthetic sets in each of three designs,
        docs/fitting.md); fixed at their step-0 measurement (its variance
        carried into the others' covariance, Murphy-Topel; a noisy start bends
        the dynamics set by set, intervals several times wider); or a prior centred on the
        measurement (the step-0 rows then count twice).
    dispersion : {"quasi", "none"} or dict
        Scale the covariance by max(φ, 1), φ = Pearson χ²/dof (default), or not; or a dict component
        (``"p"``, ``"a"``, ``"b"``) -> φ_c >= 1 held fixed (from another fit: :func:`fitting.compare` puts
        every variant on the largest model's φ), residuals weighted by 1/√φ_c from the first start.
    n_starts : int
        Optimisations from the measured start and the best Latin-hypercube
        points (>= 1).
    profile : bool or list of str
        Profile-likelihood 95% intervals (``lmfit.conf_interval``) for all
        identified varying parameters (True) or the named ones; slow.
    emcee_steps : int
        If > 0, run ``Minimizer.emcee`` for that many steps (needs the
        ``mcmc`` extra: ``pip install emcee``).
    seed : int
        Seed of the Latin hypercube and of emcee.
    max_nfev : int, optional
        Cap on residual evaluations per start (default 300); a start stopped
        there is not converged.
    progress : bool
        A tqdm bar on stderr (evaluations so far, best deviance).
    selection : {"replicator", "power", "power+skills"}
        The selection law (docs/model.md §9): the post's replicator, or the
        power law with its exponent ``gamma`` fitted (in [0, 3]; reported as
        not identified unless the runs span priors, ``fitting._selection``),
        on the RS log-odds only or on the skill terms too.
    start : dict name -> value, optional
        One more start (labelled "given"), e.g. a nested model's optimum; names the fit does not vary are
        ignored.

    Returns
    -------
    FitResult
        ``converged`` says whether the best start converged; read
        ``diagnostics`` before using the numbers.

    Raises
    ------
    ValueError
        Bad option, no observations, or kernel transfer without coordinates.
    InsufficientData
        Fewer observations than the parameters the data can support.
    LogValidationError
        If paths are given and a log breaks the contract.
    ImportError
        ``emcee_steps > 0`` without emcee installed.
    """
    if isinstance(dispersion, dict):
        bad = {c: v for c, v in dispersion.items() if c not in ("p", "a", "b") or not np.isfinite(v) or v < 1}
        if bad:
            raise ValueError(f"a fixed dispersion maps p, a, b to finite φ >= 1, got {bad}")
    elif dispersion not in ("quasi", "none"):
        raise ValueError(f"dispersion must be 'quasi', 'none' or a dict of φ per component, got {dispersion!r}")
    if n_starts < 1:
        raise ValueError(f"n_starts must be >= 1, got {n_starts}")
    if max_nfev is not None and max_nfev < 1:
        raise ValueError(f"max_nfev must be >= 1, got {max_nfev}")
    with single_thread():
        return _fit(runs, FitSpec(transfer=transfer, priors=priors, learnabilities=learnabilities, lam=lam,
                                  phases=tuple(phases), substeps=substeps, observation=observation, step0=step0,
                                  selection=selection),
                    dispersion=dispersion, n_starts=n_starts, profile=profile, emcee_steps=emcee_steps,
                    emcee_walkers=emcee_walkers, seed=seed, max_nfev=max_nfev or DEFAULT_MAX_NFEV,
                    progress=progress, start=start)


def _fit(runs, spec: FitSpec, *, dispersion, n_starts, profile, emcee_steps, emcee_walkers, seed, max_nfev,
         progress, start=None) -> FitResult:
    t0 = time.perf_counter()
    if not runs:
        raise ValueError("no runs to fit")
    if not isinstance(runs[0], Run):
        runs = load_runs(runs)
    obs = observations(runs)
    problem = Problem.build(runs, obs, spec)
    notes = [f"run {r.run_id}: {n}" for r in runs for n in r.notes] + list(problem.notes)
    unsupported = _unsupported(problem, obs)
    for name in unsupported:
        problem.params[name].vary = False
    if unsupported:
        notes.append("held fixed, the data cannot support them: "
                     + "; ".join(f"{n} ({r})" for n, r in unsupported.items()))
    n_var = len(problem.var_names)
    if n_var == 0:
        raise InsufficientData("nothing left to fit: the data cannot support "
                               + "; ".join(f"{n} ({r})" for n, r in unsupported.items())
                               + " and the initial state is held at its step-0 measurement")
    if problem.n_data + problem.n_prior < n_var:
        raise InsufficientData(f"{problem.n_data} observations (+ {problem.n_prior} step-0 priors) cannot support "
                               f"{n_var} parameters ({', '.join(problem.var_names)}); add eval passes, "
                               "environments or runs")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="fit", unit="eval", file=sys.stderr, leave=False)

        def show(counter):
            bar.update(1)
            bar.set_postfix(best_deviance=f"{counter.best:.1f}", refresh=False)

        problem.on_evaluation = show

    if isinstance(dispersion, dict):  # held fixed (compare: the largest model's φ for every variant)
        problem.weights = {c: 1.0 / math.sqrt(dispersion.get(c, 1.0)) for c in problem.weights}
    starts = _starting_points(problem, n_starts, seed)
    if start:
        starts.append(("given", {n: v for n, v in start.items() if n in problem.params and problem.params[n].vary}))
    records, results = [], []
    minimizer = None
    for k, (label, values) in enumerate(starts):
        params = problem.params.copy()
        for n, v in values.items():
            params[n].value = float(np.clip(v, params[n].min, params[n].max))
        if bar is not None:
            bar.set_description(f"fit start {k + 1}/{len(starts)}")
        mini = lmfit.Minimizer(problem.residual, params, Dfun=problem.jacobian, nan_policy="raise")
        before, walled = problem.counter.residual_calls, problem.counter.jacobian_walled
        res = mini.least_squares(max_nfev=max_nfev, x_scale="jac")
        used = problem.counter.residual_calls - before
        converged, message = _outcome(res, max_nfev, problem.counter.jacobian_walled - walled)
        dev = float(np.sum(problem.residual(res.params) ** 2))
        records.append(StartRecord(label, dev, converged, used, message,
                                   {n: float(res.params[n].value) for n in res.var_names}))
        results.append((dev, k, res, mini))
    if bar is not None:
        bar.close()
    problem.on_evaluation = None
    order = sorted(range(len(results)), key=lambda i: results[i][0])
    best_dev, _, result, minimizer = results[order[0]]
    records = [records[i] for i in order]
    best = records[0]
    names = list(result.var_names)
    dof = problem.n_data - len(names)

    # quasi-likelihood: one dispersion per component (p, a, b), then refit with weights 1/√max(φ_c, 1)
    phi_c = _component_dispersion(problem, problem.full(result.params), len(names))
    if dispersion == "quasi" and dof > 0:
        problem.weights = {c: 1.0 / math.sqrt(max(v, 1.0)) if np.isfinite(v) else 1.0 for c, v in phi_c.items()}
        problem._memo = None
        mini = lmfit.Minimizer(problem.residual, result.params.copy(), Dfun=problem.jacobian, nan_policy="raise")
        before, walled = problem.counter.residual_calls, problem.counter.jacobian_walled
        refit = mini.least_squares(max_nfev=max_nfev, x_scale="jac")
        converged, message = _outcome(refit, max_nfev, problem.counter.jacobian_walled - walled)
        dev = float(np.sum(problem.residual(refit.params) ** 2))
        best = StartRecord(f"{best.label}{REFIT_LABEL}", dev, converged, problem.counter.residual_calls - before,
                           message, {n: float(refit.params[n].value) for n in refit.var_names})
        # the other starts' deviances on the weighted scale, for the spread
        for r in records:
            params = refit.params.copy()
            for n, v in r.values.items():
                params[n].value = v
            r.deviance = float(np.sum(problem.residual(params) ** 2))
        records = [best] + records
        result, minimizer = refit, mini
    theta = problem.full(result.params)
    res_vec = problem.residual(result.params)
    data_res, prior_res = problem.split(res_vec)
    deviance = float(data_res @ data_res)
    penalty = float(prior_res @ prior_res)
    pearson = problem.pearson(theta)
    chi2 = float(sum(v @ v for v in pearson.values()))
    phi = chi2 / dof if dof > 0 else math.nan
    scale = 1.0  # the weights carry the dispersion
    tol = 1.0
    at_best = [r for r in records if r.deviance - best.deviance <= tol]
    if best not in at_best:
        at_best = [best] + at_best
    spread = {n: (min(r.values[n] for r in at_best), max(r.values[n] for r in at_best)) for n in names}
    starts_only = [r for r in records if not r.label.endswith(REFIT_LABEL)]  # the refit is not a start
    origin = best.label.removesuffix(REFIT_LABEL)  # the start the refit came from reached the best through it
    worse = [r for r in starts_only if r.deviance - best.deviance > tol and r.label != origin]
    n_at_best = len(starts_only) - len(worse)
    if np.any(np.abs(res_vec) >= WALL):  # the optimum sits where the ODE outran the Euler grid: no answer
        best.converged = False
        best.message = ("the best optimum lies where the ODE is too fast for the step-unit Euler grid "
                        "(residuals walled); " + best.message)
    jac = problem.jacobian(result.params)
    if problem.last_jacobian == "walled":  # identification and the convergence test would read a zero matrix
        best.converged = False
        best.message = (f"the Jacobian at the optimum is walled: a probe is too fast for the Euler grid even at "
                        f"{JACOBIAN_MAX_SUBSTEPS} substeps per optimizer step, so neither convergence nor "
                        "identification can be read from it; " + best.message)
    elif problem.last_jacobian != "forward":
        notes.append(f"the optimum lies against the stability wall of the fit's Euler grid (a forward probe is "
                     f"past its {problem.max_substeps} substeps per optimizer step): it is the best point short "
                     f"of that wall, not an interior maximum; its Jacobian used "
                     f"{_SCHEME_WORDS[problem.last_jacobian]}")
    status = ("converged" if best.converged else "walled" if "walled" in best.message
              else "max_nfev" if "max_nfev" in best.message else "failed")
    held_gradient = _held_gradient(problem, result.params, names, jac, unsupported)
    extra = _initial_state_uncertainty(problem, result.params, held_gradient)
    ident, cov = _identify(problem, result.params, names, jac, scale, extra)
    ident = gamma_identification(problem, ident)   # γ needs runs that span priors (docs/model.md §9)
    diagnostics = FitDiagnostics(best.converged, status, best.message, problem.counter.residual_calls,
                                 problem.counter.jacobian_calls, max_nfev, records, n_at_best, spread,
                                 deviance, penalty, chi2, dof, phi,
                                 {c: 1.0 / w**2 for c, w in problem.weights.items()}, phi_c,
                                 problem.counter.rejected, problem.counter.nonfinite,
                                 problem.counter.jacobian_fallbacks, problem.counter.jacobian_walled)
    if not best.converged:
        notes.append(f"the best start did not converge: {best.message}; the numbers below are not an answer")
    if problem.counter.rejected:
        notes.append(f"{problem.counter.rejected} trial parameter vectors were too fast for the step-unit Euler "
                     "grid and were rejected (residual 1e6) during the search")
    if problem.counter.nonfinite:
        notes.append(f"{problem.counter.nonfinite} non-finite residuals were replaced by 1e6 during the search")
    if worse:
        notes.append(f"{len(worse)} of {len(starts_only)} starts ended at a worse optimum "
                     f"(penalised deviance {', '.join(f'{r.deviance:.1f}' for r in worse)} "
                     f"vs {best.deviance:.1f})")
    if np.isfinite(phi) and phi > 1.5:
        notes.append("dispersion φ = " + ", ".join(f"{c}: {v:.2f}" for c, v in phi_c.items())
                     + ": the data vary more than binomial noise"
                     + ("; each component is weighted by 1/√max(φ, 1), so standard errors and predictive bands "
                        "carry it" if dispersion == "quasi" else
                        "; NOT accounted for (dispersion='none')" if dispersion == "none" else
                        "; residuals weighted by the φ given (" + ", ".join(f"{c}: {v:.2f}" for c, v in
                                                                            dispersion.items()) + ")"))
    estimates = {}
    for name, par in result.params.items():
        info = problem.info[name]
        meaning = info.meaning(problem.run_ids)
        if par.vary:
            se, reason, at_bound = ident[name]
            identified = not reason
            estimates[name] = ParameterEstimate(name, float(par.value), se if identified else None, identified,
                                                True, reason, at_bound, meaning, info, (par.min, par.max))
        elif name in unsupported:
            estimates[name] = ParameterEstimate(name, float(par.value), None, False, False,
                                                f"held fixed: {unsupported[name]}", False, meaning, info,
                                                (par.min, par.max))
        else:
            held = problem.measurement(name, theta) if info.kind in ("p0", "a0", "b0") else None
            why = ("time unit (alpha_z and time_scale are degenerate in step units)" if info.kind == "alpha"
                   else "fixed at its step-0 measurement (interval: the measurement's)" if held else "fixed")
            estimates[name] = ParameterEstimate(name, float(par.value), None if held is None else held.sd, True,
                                                False, "", False, ", ".join(x for x in (meaning, why) if x), info,
                                                (par.min, par.max), measurement=held)
    unidentified = [n for n, e in estimates.items() if not e.identified]
    if unidentified:
        notes.append(f"not identified by these data: {', '.join(unidentified)}")
    loglik = problem.loglik(deviance)
    k = len(names)
    fit_result = FitResult(problem, result, estimates, cov, names, loglik, -2 * loglik + 2 * k,
                           -2 * loglik + k * math.log(problem.n_data), problem.n_data, 0.0, runs, diagnostics,
                           notes)
    outside = fit_result.initial_state()
    if len(outside) and not outside["inside"].all():
        bad = outside[~outside["inside"]]
        notes.append("fitted initial state outside its step-0 measurement interval: "
                     + ", ".join(f"{r.param} {r.fitted:.3f} vs [{r.measured_lower:.3f}, {r.measured_upper:.3f}]"
                                 for r in bad.itertuples()))
    if profile:
        _profile(minimizer, fit_result, profile)
    if emcee_steps:
        _emcee(minimizer, fit_result, emcee_steps, emcee_walkers, seed, held_gradient,
               cov if extra is None else cov - extra)
    fit_result.seconds = diagnostics.seconds = time.perf_counter() - t0
    return fit_result


_SCHEME_WORDS = {"backward": "backward differences", "raised cap": f"a cap raised to {JACOBIAN_MAX_SUBSTEPS} substeps"}


def _outcome(res, max_nfev: int, walled: int) -> tuple[bool, str]:
    """(converged, message) of one least-squares run that met ``walled`` walled Jacobians.

    A walled Jacobian is all zeros, so its gradient passes every tolerance: an optimizer that met one
    stopped on it (issue 18), and its "success" is not a convergence.
    """
    if getattr(res, "aborted", False):
        return False, "stopped at the cap of %d residual evaluations (max_nfev)" % max_nfev
    if walled:
        return False, (f"{walled} Jacobian(s) walled (a probe too fast for the Euler grid even at "
                       f"{JACOBIAN_MAX_SUBSTEPS} substeps): the optimizer's stop rests on a zero gradient; "
                       f"it said: {res.message}")
    return bool(res.success), str(res.message)


def _plausible(problem: Problem, name: str) -> tuple[float, float, bool]:
    """(low, high, log) range a start is drawn from."""
    info = problem.info[name]
    par = problem.params[name]
    horizon = max(float(problem.config.steps.max()), 1.0)
    if info.kind == "time_scale":
        return 0.3 / horizon, 300.0 / horizon, True
    if info.kind == "alpha":
        return 0.03, 30.0, True
    if info.kind == "length_scale":
        return max(par.min, par.value / 10), min(par.max, par.value * 10), True
    if info.kind == "lam":
        return 0.0, 2.0, False
    if info.kind == "gamma":
        return 0.0, 1.5, False
    return max(par.min, 0.02), min(par.max, 0.98), False


def _starting_points(problem: Problem, n_starts: int, seed: int) -> list[tuple[str, dict]]:
    """The measured start plus Latin-hypercube starts: initial state at step 0, rates screened in one batch.

    The rate, transfer and bound parameters are drawn over their plausible
    ranges (log-uniform for scales); all N_SCREEN draws are evaluated in one
    batched integration and the best ``n_starts`` become starts (the best
    one is labelled "measured": step-0 initial state, best screened rates).
    """
    free = [n for n in problem.var_names if problem.info[n].kind not in ("p0", "a0", "b0")]
    if not free:
        return [("measured", {})]
    ranges = [_plausible(problem, n) for n in free]
    sample = qmc.LatinHypercube(d=len(free), seed=seed).random(N_SCREEN)
    values = np.empty_like(sample)
    for j, (lo, hi, log) in enumerate(ranges):
        values[:, j] = (np.exp(np.log(lo) + sample[:, j] * (np.log(hi) - np.log(lo))) if log
                        else lo + sample[:, j] * (hi - lo))
    base = problem.full()
    values = np.vstack([values, [problem.params[n].value for n in free]])  # the defaults compete too
    batch = problem.expand(values, free, base)
    dev = np.concatenate([(problem.residuals_full(chunk) ** 2).sum(1)
                          for chunk in np.array_split(batch, max(1, len(batch) // 32))])
    order = np.argsort(dev)[:n_starts]
    out = []
    for rank, i in enumerate(order):
        label = "default" if i == len(values) - 1 else f"lhs-{int(i)}"
        out.append(("measured" if rank == 0 else label, dict(zip(free, values[i]))))
    return out


def _profile(minimizer: lmfit.Minimizer, fit_result: FitResult, which) -> None:
    names = [n for n in fit_result.var_names if fit_result.estimates[n].identified]
    if isinstance(which, (list, tuple)):
        names = [n for n in names if n in which]

    def prob_func(best, new):  # likelihood ratio: deviance difference ~ chi-square(1), scaled by φ
        return stats.chi2.cdf(max(new.chisqr - best.chisqr, 0.0), 1)

    try:
        ci = lmfit.conf_interval(minimizer, fit_result.result, p_names=names, sigmas=[0.95],
                                 prob_func=prob_func)
    except lmfit.minimizer.MinimizerException as exc:  # lmfit's "cannot determine" is reported, not fatal
        fit_result.notes.append(f"profile intervals failed: {exc}")
        return
    for name, rows in ci.items():
        vals = {round(p, 4): v for p, v in rows}
        lo, hi = rows[0][1], rows[-1][1]
        fit_result.estimates[name].profile = {"level": 0.95, "lower": None if not np.isfinite(lo) else float(lo),
                                              "upper": None if not np.isfinite(hi) else float(hi),
                                              "best": float(vals.get(0.0, fit_result.value(name)))}


def _emcee(minimizer: lmfit.Minimizer, fit_result: FitResult, steps: int, walkers, seed: int,
           held_gradient: dict[str, np.ndarray] | None = None, start_cov: np.ndarray | None = None) -> None:
    """lmfit's emcee over the identified varying parameters, carrying the held step-0 values' noise.

    Parameters held at their step-0 measurement ŝ (``step0="fixed"``) are drawn from that measurement
    (:class:`Measurement`), one draw per chain sample, and every varying parameter's sample moves along
    ``held_gradient`` (dθ̂/dŝ, :func:`_held_gradient`) by the draw's distance from ŝ: the chain is the
    posterior given ŝ, shifted as the optimum would move with it (a linearised two-step posterior; issue 18).
    Without this the held values had no interval and the others were conditioned on a noisy ŝ.

    The walkers start at draws from the Gaussian approximation N(θ̂, ``start_cov``) (the fit's covariance
    given ŝ, over ``fit_result.var_names``; :func:`_walker_start`), not in lmfit's default ball of relative
    width 1e-4 around θ̂: from that ball the ensemble of a few hundred steps had not spread to the posterior
    (autocorrelation times ~20 steps), and its 95% intervals of the dynamics were 0.4-0.7 times the Wald
    widths and held the truth in 5 of 7 synthetic sets (benchmarks/fit_coverage.py, docs/fitting.md).
    """
    try:
        import emcee  # noqa: F401
    except ImportError as exc:
        raise ImportError("emcee sampling needs the 'mcmc' extra: pip install emcee") from exc
    params = fit_result.params.copy()
    for name in fit_result.unidentified:  # unidentified directions are flat: keep them fixed
        params[name].vary = False
    nvar = sum(p.vary for p in params.values())
    walkers = walkers or max(2 * nvar + 2, 16)
    pos = _walker_start(fit_result, params, start_cov, walkers, np.random.default_rng(seed))
    out = minimizer.emcee(params=params, steps=steps, nwalkers=walkers, pos=pos,
                          burn=steps // 4, is_weighted=True, seed=seed, progress=False)
    chains = {name: out.flatchain[name].to_numpy().copy() for name in out.var_names}
    held = _held_draws(fit_result, held_gradient, chains, np.random.default_rng(seed))
    summary = {}
    for name, chain in {**chains, **held}.items():
        q = np.quantile(chain, [0.025, 0.05, 0.5, 0.95, 0.975])
        summary[name] = {"median": float(q[2]), "interval90": [float(q[1]), float(q[3])],
                         "interval95": [float(q[0]), float(q[4])]}
    note = "likelihood not scaled by the dispersion"
    if held:
        note += ("; parameters held at their step-0 measurement (" + ", ".join(held) + ") drawn from it, the "
                 "others moved along dθ̂/dŝ by each draw (linearised two-step posterior)")
    fit_result.emcee = {"steps": steps, "walkers": int(walkers), "burn": steps // 4,
                        "acceptance": float(np.mean(out.acceptance_fraction)), "params": summary,
                        "note": note}


def _walker_start(fit_result: FitResult, params: lmfit.Parameters, cov: np.ndarray | None, walkers: int,
                  rng: np.random.Generator) -> np.ndarray | None:
    """Walkers' start, shape (walkers, sampled parameters in ``params`` order): draws from N(θ̂, cov) restricted
    to the sampled (varying, identified) parameters, clipped into their bounds; None (lmfit's default ball)
    when the covariance is missing or not finite. ``cov`` is over ``fit_result.var_names``."""
    names = [n for n, p in params.items() if p.vary]
    if cov is None or not names:
        return None
    idx = [fit_result.var_names.index(n) for n in names]
    sub = np.asarray(cov)[np.ix_(idx, idx)]
    if not np.all(np.isfinite(sub)):
        return None
    evals, evecs = np.linalg.eigh((sub + sub.T) / 2)
    root = evecs * np.sqrt(np.clip(evals, 0.0, None))
    mean = np.array([params[n].value for n in names])
    pos = mean + rng.standard_normal((walkers, len(names))) @ root.T
    lo = np.array([params[n].min for n in names])
    hi = np.array([params[n].max for n in names])
    return np.clip(pos, lo, hi)


def _held_draws(fit_result: FitResult, held_gradient, chains: dict[str, np.ndarray],
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draws of each held step-0 value from its measurement, one per chain sample; shifts ``chains`` in place."""
    out = {}
    if not held_gradient or not chains:
        return out
    size = len(next(iter(chains.values())))
    for name, column in held_gradient.items():
        est = fit_result.estimates[name]
        if est.measurement is None:
            continue
        draws = est.measurement.draw(rng, size)
        out[name] = draws
        for j, var in enumerate(fit_result.var_names):
            if var in chains:
                chains[var] += column[j] * (draws - est.value)
    for var, chain in chains.items():  # stay inside the parameters' bounds
        par = fit_result.params[var]
        np.clip(chain, par.min, par.max, out=chain)
    return out


# -- a saved fit read back (FitResult.load): A saved fit read back: :meth:`FitResult.load` rebuilds a :class:`FitResult` from ``fit.json``.


def _saved_float(x) -> float:
    return math.nan if x is None else float(x)


def _saved_runs(doc: dict, runs, where: Path) -> list[Run]:
    """The fitted runs, in the fit's order: ``runs`` if given, else loaded from the recorded paths."""
    wanted = [r["run_id"] for r in doc["runs"]]
    if runs is None:
        sources = list(dict.fromkeys(r.get("path") or r["source"] for r in doc["runs"]))
        missing = [s for s in sources if not Path(s).exists()]
        if missing:
            raise FileNotFoundError(f"{where}: the fitted runs' logs are needed to rebuild the fit's layout and "
                                    f"are not at {', '.join(missing)} (pass them as FitResult.load(path, runs=...))")
        runs = load_runs(sources)
    elif runs and not isinstance(runs[0], Run):
        runs = load_runs(runs)
    by_id = {r.run_id: r for r in runs}
    absent = [r for r in wanted if r not in by_id]
    if absent:
        raise ValueError(f"{where}: fitted runs {absent} are not among the runs given")
    return [by_id[r] for r in wanted]


def _saved_estimate(name: str, entry: dict, problem: Problem) -> ParameterEstimate:
    par = problem.params[name]
    held = entry.get("measurement")
    measurement = None
    if held is not None:
        measurement = (Measurement("beta", held["alpha"], held["beta"]) if held["distribution"] == "beta"
                       else Measurement("normal", held["mean"], held["sd"]))
    return ParameterEstimate(name, float(entry["value"]), entry["stderr"], bool(entry["identified"]),
                             bool(entry["vary"]), entry["reason"] or "", bool(entry["at_bound"]), entry["meaning"],
                             problem.info[name], (par.min, par.max), entry["profile"], measurement)


def _saved_diagnostics(d: dict) -> FitDiagnostics:
    starts = [StartRecord(s["label"], _saved_float(s["deviance"]), s["converged"], s["nfev"], s["message"],
                          {k: _saved_float(v) for k, v in s["values"].items()}) for s in d["starts"]]
    return FitDiagnostics(d["converged"], d["status"], d["message"], d["nfev"], d["jacobians"], d["max_nfev"],
                          starts, d["n_at_best"], {k: tuple(map(_saved_float, v)) for k, v in d["spread"].items()},
                          _saved_float(d["deviance"]), _saved_float(d["penalty"]), _saved_float(d["pearson_chi2"]), d["dof"],
                          _saved_float(d["dispersion"]), {k: _saved_float(v) for k, v in d["dispersion_used"].items()},
                          {k: _saved_float(v) for k, v in d["component_dispersion"].items()}, d["rejected"],
                          d["nonfinite"], d.get("jacobian_fallbacks", 0), d.get("jacobian_walled", 0),
                          _saved_float(d["seconds"]))


def _load_fit(path: str | Path, runs=None) -> FitResult:
    """Read a fit written by :meth:`FitResult.save` (a ``fit.json`` file or the folder holding it).

    Parameters
    ----------
    path : str or Path
        ``fit.json`` or its folder (``physrl fit --out``).
    runs : list of Run or paths, optional
        The fitted runs, when their logs no longer sit at the paths ``fit.json`` records.

    Returns
    -------
    FitResult
        With the saved values, flags, covariance and diagnostics; ``result`` holds the parameters only
        (no optimizer history: ``report()``'s lmfit section is not available).

    Raises
    ------
    FileNotFoundError
        No fit.json, or the fitted runs' logs are missing.
    ValueError
        A fit.json without the covariance (written before it was saved) or runs that do not match.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "fit.json"
    doc = json.loads(path.read_text())
    if "covariance" not in doc:
        raise ValueError(f"{path}: no covariance in this fit.json (written by an older physrl); refit to use it")
    spec_doc = dict(doc["spec"])
    spec = FitSpec(**{**spec_doc, "phases": tuple(spec_doc["phases"])})
    fitted = _saved_runs(doc, runs, path)
    problem = Problem.build(fitted, observations(fitted), spec)
    saved = doc["params"]
    if set(saved) != set(problem.params):
        raise ValueError(f"{path}: the runs give parameters {sorted(problem.params)}, the file {sorted(saved)}")
    for name, entry in saved.items():
        problem.params[name].set(value=float(entry["value"]), vary=bool(entry["vary"]))
    d = doc["diagnostics"]
    problem.weights = {c: 1.0 / math.sqrt(_saved_float(v)) for c, v in d["dispersion_used"].items()}
    result = lmfit.minimizer.MinimizerResult(params=problem.params.copy(), var_names=list(doc["covariance"]["names"]))
    cov = np.array([[_saved_float(v) for v in row] for row in doc["covariance"]["matrix"]], dtype=float).reshape(
        len(result.var_names), len(result.var_names))
    estimates = {name: _saved_estimate(name, saved[name], problem) for name in problem.names}
    fit = FitResult(problem, result, estimates, cov, list(result.var_names), _saved_float(doc["loglik"]),
                    _saved_float(doc["aic"]), _saved_float(doc["bic"]), int(doc["n_data"]), _saved_float(doc["seconds"]), fitted,
                    _saved_diagnostics(d), list(doc["notes"]), doc.get("emcee"))
    return fit
