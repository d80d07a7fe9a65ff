"""Prediction check: run the fitted ODE on a run it was not fitted on, and score it (docs/model.md §6).

The target run contributes only its configuration: its environments (ids,
w, coordinates), its prior p0 (from ``p0=``, else its manifest's ``p0``, else its
measured prior, :meth:`physrl.contract.Run.measured_prior`; the source is recorded) and its
steps. Parameter uncertainty is propagated by sampling: identified
parameters from the fit's normal approximation (clipped to their bounds);
parameters the fit could not identify are drawn over their whole plausible
range (uniform for probabilities, log-uniform over a factor 10 either side
for scales), so an unidentified direction widens the band instead of
producing a confident wrong prediction. The predictive band of an
observation adds its sampling noise (binomial with the observed counts, or
Gaussian with the observed standard error) to each parameter draw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from physrl import sim
from physrl.contract import Run, load_runs

from ._engine import single_thread
from ._fit import FitResult
from ._json import json_safe
from ._observations import observations
from ._problem import PROB_MAX, PROB_MIN, Problem, kind_of


@dataclass
class Prediction:
    """What the fitted model said about a run it was not fitted on.

    Attributes
    ----------
    run_id : str
    p0 : float
        Prior used for the target run; ``p0_source`` says where it came from.
    steps : ndarray, shape (T,)
        Optimizer steps of the target's observations.
    env_ids : list of str
    mean, lower, upper : dict latent -> ndarray, shape (T, N)
        Point prediction and the band of the *mean* (parameter uncertainty
        only) at ``level``.
    observations : pandas.DataFrame
        The target's observations with ``pred_<l>``, ``band_lo_<l>``,
        ``band_hi_<l>`` (predictive band incl. sampling noise) and
        ``inside_<l>`` columns for l in p, a, b.
    metrics : dict
        ``rmse`` per env and latent, ``coverage`` (share of observed points
        inside the predictive band, per latent and overall), ``end_state``
        and ``n_star`` (see :func:`predict`).
    notes : list of str
    """

    run_id: str
    p0: float
    p0_source: str
    steps: np.ndarray
    env_ids: list[str]
    mean: dict[str, np.ndarray]
    lower: dict[str, np.ndarray]
    upper: dict[str, np.ndarray]
    observations: pd.DataFrame
    metrics: dict
    level: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "p0": self.p0, "p0_source": self.p0_source, "level": self.level,
                "metrics": self.metrics, "notes": self.notes}


#: Euler substeps per optimizer step allowed when simulating parameter draws
PREDICT_MAX_SUBSTEPS = 4096


def _target_p0(run: Run, phases, p0: float | None) -> tuple[float, str]:
    if p0 is not None:
        return float(p0), "argument"
    if run.p0_hint is not None:
        return run.p0_hint, "manifest"
    prior = run.measured_prior(phases=phases)
    est = prior.pooled
    return (float(np.clip(est.value, PROB_MIN, PROB_MAX)),
            f"measured prior at step {prior.step} ({est.n_rs}/{est.n} RS rollouts on envs {list(prior.env_ids)}, "
            f"Jeffreys {est.level:.0%} [{est.lower:.3g}, {est.upper:.3g}])")


def _sample_fit(fit: FitResult, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """(S + 1, P) draws of the varying parameters; row 0 is the point estimate."""
    names = fit.var_names
    theta = np.array([fit.params[n].value for n in names])
    draws = np.repeat(theta[None, :], n_samples + 1, axis=0)
    ident = np.array([fit.estimates[n].identified for n in names])
    if ident.any():
        cov = fit.covariance[np.ix_(ident, ident)]
        evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
        root = evecs * np.sqrt(np.clip(evals, 0, None))
        draws[1:, ident] += rng.standard_normal((n_samples, ident.sum())) @ root.T
    for j in np.flatnonzero(~ident):
        par = fit.params[names[j]]
        if kind_of(names[j]) == "prob":
            lo, hi = max(par.min, PROB_MIN), min(par.max, PROB_MAX)
            draws[1:, j] = rng.uniform(lo, hi, n_samples)
        else:
            v = max(abs(par.value), 1e-3)
            draws[1:, j] = np.exp(rng.uniform(math.log(v / 10), math.log(v * 10), n_samples))
    for j, n in enumerate(names):
        par = fit.params[n]
        draws[:, j] = np.clip(draws[:, j], par.min, par.max)
    return draws, names


def sample_parameters(fit: FitResult, n_samples: int = 200, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Draws of the fit's varying parameters, for propagating its uncertainty.

    Identified parameters are drawn from the Gaussian of the fit's covariance;
    unidentified ones uniformly over their plausible range (probabilities over
    their bounds, scales over a factor 10 either side), then every draw is
    clipped to its bounds.

    Parameters
    ----------
    fit : FitResult
    n_samples : int
        Number of draws S.
    seed : int

    Returns
    -------
    (draws, names) : ndarray of shape (S + 1, P), list of P str
        Row 0 is the point estimate; ``names`` are ``fit.var_names``.
    """
    return _sample_fit(fit, n_samples, np.random.default_rng(seed))


def _map_to_target(fit: FitResult, target: Problem, draws: np.ndarray, names: list[str], p0: float) -> np.ndarray:
    """θ_full of the target problem for each draw of the fit's parameters."""
    src = fit.problem
    src_full = np.repeat(src.full(fit.params)[None, :], draws.shape[0], axis=0)
    cols = [src.names.index(n) for n in names]
    src_full[:, cols] = draws
    out = np.repeat(target.full()[None, :], draws.shape[0], axis=0)
    for j, name in enumerate(target.names):
        if name.startswith("p0_r"):
            out[:, j] = p0
            continue
        if "_e" in name and name.rsplit("_e", 1)[-1].isdigit():
            stem, g = name.rsplit("_e", 1)
            env = target.env_ids[int(g)]
            if env in src.env_ids:
                out[:, j] = src_full[:, src.names.index(f"{stem}_e{src.env_ids.index(env)}")]
            else:  # an env the fit never saw: the mean over the fitted envs
                peers = [i for i, n in enumerate(src.names) if n.rsplit("_e", 1)[0] == stem]
                out[:, j] = src_full[:, peers].mean(1)
            continue
        if name in src.names:
            out[:, j] = src_full[:, src.names.index(name)]
        else:
            raise ValueError(f"the fit has no parameter {name!r} needed for the target run")
    return out


def _predictive_band(kind_binom, k_trials, mu, level, rng):
    """Quantiles over draws of observation noise around each draw's mean; mu shape (S, M)."""
    n = k_trials[None, :]
    tail = (1 - level) / 2
    out_lo = np.empty(mu.shape[1])
    out_hi = np.empty(mu.shape[1])
    b = kind_binom
    if b.any():
        nn = np.maximum(n[:, b], 1).astype(np.int64)
        sim_k = rng.binomial(np.broadcast_to(nn, mu[:, b].shape), np.clip(mu[:, b], 0, 1)) / nn
        out_lo[b], out_hi[b] = np.quantile(sim_k, [tail, 1 - tail], axis=0)
    if (~b).any():
        sim_g = mu[:, ~b] + rng.standard_normal(mu[:, ~b].shape) * n[:, ~b]
        out_lo[~b], out_hi[~b] = np.quantile(sim_g, [tail, 1 - tail], axis=0)
    return out_lo, out_hi


def predict(fit: FitResult, run, *, p0: float | None = None, n_samples: int = 200, level: float = 0.95,
            seed: int = 0, n_star: bool = True) -> Prediction:
    """Simulate the fitted parameters on another run's configuration and compare with its logs.

    Parameters
    ----------
    fit : FitResult
        From :func:`fitting.fit`.
    run : Run or path
        The target run (any of the forms :func:`fitting.load_runs` reads; the
        first run if several).
    p0 : float, optional
        Prior RS propensity of the target in (0, 1); default the manifest's
        ``p0`` (a prior the producer set exactly), else the run's measured prior
        (:meth:`physrl.contract.Run.measured_prior` in the fit's phases, trained envs pooled).
    n_samples : int
        Parameter draws for the bands and the N* interval.
    level : float
        Band / interval coverage.
    seed : int
    n_star : bool
        Also predict the critical diversity N* (homogeneous transfer only).

    Returns
    -------
    Prediction
        ``metrics``: ``rmse`` {env_id: {p, a, b}} (over the target's observed
        steps; None where an env has no such observations), ``coverage``
        {p, a, b, all} in [0, 1], ``end_state`` (observed vs predicted mean
        p over trained envs at the last step, and whether RS wins, i.e. mean
        p > 0.5; ``p_rs_wins`` is the share of parameter draws in which it
        does), ``n_star`` (point, interval, method, or a reason it is None).

    Raises
    ------
    ValueError
        If the target needs a parameter the fit does not have (e.g. kernel
        transfer and the target has no coordinates).
    """
    with single_thread():
        return _predict(fit, run, p0, n_samples, level, seed, n_star)


def _predict(fit, run, p0, n_samples, level, seed, want_n_star) -> Prediction:
    if not isinstance(run, Run):
        run = load_runs([run])[0]
    rng = np.random.default_rng(seed)
    spec = fit.spec
    obs = observations([run])
    obs = obs[obs["phase"].isin(spec.phases)].reset_index(drop=True)
    p0_value, p0_source = _target_p0(run, spec.phases, p0)
    target = Problem.build([run], obs, spec)
    target.max_substeps = PREDICT_MAX_SUBSTEPS  # draws of unidentified parameters may be fast
    draws, names = _sample_fit(fit, n_samples, rng)
    theta = _map_to_target(fit, target, draws, names, p0_value)
    p, a, b = (s.numpy()[:, :, 0, :] for s in target.predict_states(theta))  # (T, S+1, N)
    n_env = len(run.environments)
    states = {"p": p[..., :n_env], "a": a[..., :n_env], "b": b[..., :n_env]}
    tail = (1 - level) / 2
    mean = {k: v[:, 0] for k, v in states.items()}
    lower = {k: np.quantile(v[:, 1:], tail, axis=1) for k, v in states.items()}
    upper = {k: np.quantile(v[:, 1:], 1 - tail, axis=1) for k, v in states.items()}
    notes = [f"p0 = {p0_value:.4g} from {p0_source}"]
    if fit.unidentified:
        notes.append("unidentified parameters drawn over their whole range: " + ", ".join(fit.unidentified))

    # per-observation predictions and predictive bands
    steps = target.config.steps
    env_pos = {e: j for j, e in enumerate(run.env_ids)}
    t = np.searchsorted(steps, obs["step"].to_numpy())
    e = obs["env_id"].map(env_pos).to_numpy(int)
    table = obs.copy()
    binary = obs["binary"].to_numpy(bool)
    inside_all = []
    coverage = {}
    for lat, hat, trials in (("p", "p_hat", "n"), ("a", "a_hat", "a_n"), ("b", "b_hat", "b_n")):
        mu = states[lat][t, :, e].T  # (S+1, M)
        table[f"pred_{lat}"] = mu[0]
        have = table[trials].to_numpy() > 0
        if lat == "p":
            binom, scale = np.ones(len(t), bool), table["n"].to_numpy(float)
        else:
            se = table[f"{lat}_se"].to_numpy(float)
            binom = binary.copy()
            scale = np.where(binary, table[trials].to_numpy(float),
                             np.where(np.isfinite(se), np.maximum(se, 1e-2), 0.5))
        lo, hi = _predictive_band(binom, scale, mu[1:], level, rng)
        observed = table[hat].to_numpy(float)
        inside = (observed >= lo - 1e-12) & (observed <= hi + 1e-12)
        table[f"band_lo_{lat}"] = np.where(have, lo, np.nan)
        table[f"band_hi_{lat}"] = np.where(have, hi, np.nan)
        table[f"inside_{lat}"] = np.where(have, inside, False)
        coverage[lat] = float(inside[have].mean()) if have.any() else None
        inside_all.append(inside[have])
    both = np.concatenate(inside_all)
    coverage["all"] = float(both.mean()) if both.size else None

    rmse = {}
    for env, rows in table.groupby("env_id", sort=False):
        rmse[env] = {}
        for lat, hat in (("p", "p_hat"), ("a", "a_hat"), ("b", "b_hat")):
            d = (rows[hat] - rows[f"pred_{lat}"]).to_numpy(float)
            d = d[np.isfinite(d)]
            rmse[env][lat] = float(np.sqrt(np.mean(d**2))) if d.size else None

    trained = np.array([env.w > 0 for env in run.environments])
    last = int(steps.max())
    at_last = table[table["step"] == last]
    observed_last = at_last[at_last["env_id"].isin([e_.env_id for e_ in run.environments if e_.w > 0])]
    obs_mean = float(observed_last["n_rs"].sum() / max(observed_last["n"].sum(), 1)) if len(observed_last) else None
    pred_last = states["p"][-1][:, trained].mean(-1) if trained.any() else states["p"][-1].mean(-1)
    end_state = {"step": last, "observed_mean_p": obs_mean, "predicted_mean_p": float(pred_last[0]),
                 "predicted_interval": [float(np.quantile(pred_last[1:], tail)),
                                        float(np.quantile(pred_last[1:], 1 - tail))],
                 "observed_rs_wins": None if obs_mean is None else bool(obs_mean > 0.5),
                 "predicted_rs_wins": bool(pred_last[0] > 0.5),
                 "p_rs_wins": float((pred_last[1:] > 0.5).mean())}
    end_state["agree"] = None if obs_mean is None else end_state["observed_rs_wins"] == end_state["predicted_rs_wins"]
    metrics = {"rmse": rmse, "coverage": coverage, "end_state": end_state,
               "n_star": _n_star(fit, draws, names, p0_value, level) if want_n_star else None}
    return Prediction(run.run_id, p0_value, p0_source, steps, run.env_ids, mean, lower, upper, table, metrics,
                      level, notes)


def _n_star(fit: FitResult, draws: np.ndarray, names: list[str], p0: float, level: float,
            n_draws: int = 64) -> dict:
    """N*(p0) of N identical environments with the fitted priors, learnabilities and c (docs/model.md §3)."""
    if fit.spec.transfer != "homogeneous" or fit.spec.priors != "shared" or fit.spec.learnabilities != "shared":
        return {"value": None, "reason": "N* is defined here for homogeneous transfer with shared priors "
                                         "and learnabilities (docs/model.md §3)"}
    keys = ["a0", "b0", "alpha_x", "alpha_y", "c_z", "c_x", "c_y"]
    values = {}
    rows = min(n_draws, draws.shape[0] - 1) + 1
    for k in keys:
        if k in names:
            values[k] = draws[:rows, names.index(k)]
        else:
            values[k] = np.full(rows, fit.params[k].value)
    lam = float(fit.params["lam"].value) if "lam" in fit.params else 0.0
    try:
        res = sim.critical_diversity_homogeneous(p0, a0=values["a0"], b0=values["b0"], c_z=values["c_z"],
                                                 c_x=values["c_x"], c_y=values["c_y"], alpha_z=1.0,
                                                 alpha_x=values["alpha_x"], alpha_y=values["alpha_y"], lam=lam,
                                                 method="bisection")
    except Exception as exc:
        return {"value": None, "reason": f"critical diversity failed: {type(exc).__name__}: {exc}"}
    ns = res.ranked()  # N* above n_max ranks +inf for the quantiles; it is never reported as a number
    tail = (1 - level) / 2
    finite = ns[1:]
    out = {"value": None if not np.isfinite(ns[0]) else float(ns[0]), "p0": p0, "method": res.method,
           "threshold": float(res.threshold), "n_draws": int(finite.size), "level": level,
           "share_above_n_max": float(np.mean(~np.isfinite(finite))),
           "status": res.status[0].value, "status_message": res.status[0].message,
           "share_not_converged": float(np.mean([s is sim.SearchStatus.NOT_CONVERGED for s in res.status[1:]]))}
    with np.errstate(invalid="ignore"):
        q = np.quantile(finite, [tail, 1 - tail]) if finite.size else [math.nan, math.nan]
    out["interval"] = [None if not np.isfinite(v) else float(v) for v in q]
    if fit.unidentified:
        out["note"] = "unidentified parameters drawn over their range: " + ", ".join(fit.unidentified)
    return out


def save_prediction(pred: Prediction, path: str | Path) -> None:
    """Write ``prediction.json`` (metrics, p0 and its source, notes); no NaN (nulls instead)."""
    Path(path).write_text(json.dumps(json_safe(pred.to_dict()), indent=2))


def in_sample(fit: FitResult, index: int, **kwargs) -> Prediction:
    """The fitted model on fitted run ``index`` (its own p0 estimate): for figures of the fit.

    With per-environment priors the run's p0 is the mean of its fitted p0 values (noted).
    """
    run = fit.runs[index]
    if f"p0_r{index}" in fit.params:
        p0 = fit.params[f"p0_r{index}"].value
        pred = predict(fit, run, p0=p0, n_star=False, **kwargs)
    else:
        names = [n for n in fit.params if n.startswith(f"p0_r{index}_e")]
        p0 = float(np.mean([fit.params[n].value for n in names]))
        pred = predict(fit, run, p0=p0, n_star=False, **kwargs)
        pred.notes.append("per-env priors: curves start from the run's mean fitted p0")
    pred.p0_source = "fit"
    return pred
