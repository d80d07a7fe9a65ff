"""Prediction check: run the fitted ODE on a run it was not fitted on, and score it (docs/model.md §6, §7).

The target run contributes only its configuration and its measured initial
state: its environments (ids, w, coordinates, observation bounds), its prior
p0 (from ``p0=``, else its step-0 RS share, else its manifest; the source is
recorded) and its steps. Parameter uncertainty is propagated by sampling:
identified parameters from the fit's normal approximation (covariance scaled
by the dispersion, clipped to their bounds); parameters the fit could not
identify are drawn over their whole plausible range (uniform for
probabilities, log-uniform over a factor 10 either side for scales), so an
unidentified direction widens the band instead of producing a confident
wrong prediction. A measured p0 is drawn from its step-0 measurement too.
The predictive band of an observation adds its sampling noise, overdispersed
by the fit's φ (beta-binomial with intra-class correlation ρ = (φ − 1)/(n − 1)
for counts, standard error × √φ for Gaussian means), to each parameter draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from ._engine import BatchConfig, UnstableStep, simulate, single_thread
from ._draws import _sample_fit
from ._fit import FitResult
from ._json import json_safe, write_json
from physrl.contract import Run, load_runs

from ._observations import observations
from ._problem import PROB_MAX, PROB_MIN, Problem, _first_rows, _measured_prior, step0_from_prior

#: Euler substeps per optimizer step allowed when simulating parameter draws
PREDICT_MAX_SUBSTEPS = 4096


@dataclass
class EndState:
    """Observed against predicted mean RS share over the trained envs at the last step.

    Attributes
    ----------
    step : int
    observed_mean_p : float or None
        Eval rollouts (all phases if there are none at the last step).
    predicted_mean_p : float
        Point prediction.
    predicted_interval : (float, float)
        Over parameter draws, at the prediction's level.
    observed_rs_wins, predicted_rs_wins : bool or None
        Mean p > ``threshold``.
    p_rs_wins : float
        Share of parameter draws in which RS wins.
    agree : bool or None
    threshold : float
    """

    step: int
    observed_mean_p: float | None
    predicted_mean_p: float
    predicted_interval: tuple[float, float]
    observed_rs_wins: bool | None
    predicted_rs_wins: bool
    p_rs_wins: float
    agree: bool | None
    threshold: float = 0.5

    def to_dict(self) -> dict:
        return {"step": self.step, "observed_mean_p": self.observed_mean_p,
                "predicted_mean_p": self.predicted_mean_p, "predicted_interval": list(self.predicted_interval),
                "observed_rs_wins": self.observed_rs_wins, "predicted_rs_wins": self.predicted_rs_wins,
                "p_rs_wins": self.p_rs_wins, "agree": self.agree, "threshold": self.threshold}


@dataclass
class PredictionMetrics:
    """Scores of a prediction.

    Attributes
    ----------
    rmse : dict env_id -> {latent: float or None}
        Root mean square of observed − predicted per env and latent (p, a, b)
        over the scored rows (None where an env has none).
    rmse_p : float or None
        RMSE of the RS share over the trained envs' scored rows (the headline).
    coverage : dict latent -> float or None
        Share of scored observations inside the predictive band (p, a, b,
        and ``all``).
    end_state : EndState
    n_star : dict or None
        Predicted critical diversity (:func:`fitting.critical_diversity`),
        None when not asked.
    scored : str
        Which rows were scored ("eval" rollouts, or "all" phases when the
        run has no eval rows).
    """

    rmse: dict
    rmse_p: float | None
    coverage: dict
    end_state: EndState
    n_star: dict | None
    scored: str = "eval"

    def to_dict(self) -> dict:
        return {"rmse": self.rmse, "rmse_p": self.rmse_p, "coverage": self.coverage,
                "end_state": self.end_state.to_dict(), "n_star": self.n_star, "scored": self.scored}


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
        Point prediction (observed units) and the band of the *mean*
        (parameter uncertainty only) at ``level``.
    observations : pandas.DataFrame
        The target's observations with ``pred_<l>``, ``band_lo_<l>``,
        ``band_hi_<l>`` (predictive band incl. overdispersed sampling noise)
        and ``inside_<l>`` columns for l in p, a, b.
    metrics : PredictionMetrics
    level : float
    notes : list of str
    trained_share : pandas.DataFrame or None
        The RS share pooled over the trained environments' scored rows, one
        row per step: ``step``, ``n``, ``n_rs``, ``p_hat`` (observed),
        ``pred_p`` (point prediction, n-weighted over the trained envs),
        ``band_lo_p``, ``band_hi_p`` (predictive band of the pooled share at
        ``level``: parameter draws plus overdispersed binomial noise at the
        pooled n) and ``inside_p``. ``metrics.coverage`` is computed per
        (env, step) row of ``observations`` against that row's own band, not
        against this one; the two coincide when one environment is trained.
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
    metrics: PredictionMetrics
    level: float
    notes: list[str] = field(default_factory=list)
    trained_share: pd.DataFrame | None = None

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "p0": self.p0, "p0_source": self.p0_source, "level": self.level,
                "metrics": self.metrics.to_dict(), "notes": self.notes}


def _target_p0(run: Run, obs: pd.DataFrame, p0: float | None):
    """(p0, source, logit-normal (loc, scale) of its measurement or None)."""
    if p0 is not None:
        return float(p0), _argument_source(run, float(p0)), None
    first = _first_rows(obs)
    prior = _measured_prior(run, first) if len(first) else None
    if prior is not None:  # pooled over the trained envs, as the organisms' p0 is set
        trained = [e.env_id for e in run.environments if e.w > 0] or run.env_ids
        prior = run.measured_prior(phases=prior.phases, env_ids=trained)
    s0 = None if prior is None else step0_from_prior(prior.pooled, "p0", prior.step)
    if s0 is not None:
        value = float(np.clip((s0.value * s0.n + 0.5) / (s0.n + 1), PROB_MIN, PROB_MAX))
        return value, f"measured RS share at step {s0.step} ({int(round(s0.value * s0.n))}/{int(s0.n)})", \
            (s0.loc, s0.scale)
    if run.p0_hint is not None:
        return run.p0_hint, "manifest", None
    raise ValueError(f"run {run.run_id}: no p0 given, none measured and none in its manifest")


def _argument_source(run: Run, p0: float) -> str:
    """Where a p0 given as an argument comes from, in words: the run's step-0 measurement it equals
    (eval, train or both phases, trained envs; the Jeffreys mean (k + ½)/(n + 1) or k/n), or its manifest
    p0; else just the argument."""
    trained = [e.env_id for e in run.environments if e.w > 0] or run.env_ids
    n_tr = len(trained)
    envs = f"its {n_tr} trained env{'s' if n_tr != 1 else ''}"
    for phases, what in ((("eval",), "eval"), (("train",), "train"), (None, "eval + train")):
        try:
            est = run.measured_prior(phases=phases, env_ids=trained)
        except ValueError:
            continue
        k, n, step = est.pooled.n_rs, est.pooled.n, est.step
        if n and math.isclose(p0, est.pooled.value, rel_tol=1e-9, abs_tol=1e-12):
            return (f"the run's measured {what} RS share at step {step} over {envs}, "
                    f"(k + ½)/(n + 1) = ({k} + ½)/({n} + 1) (given as predict's p0)")
        if n and math.isclose(p0, k / n, rel_tol=1e-9, abs_tol=1e-12):
            return f"the run's measured {what} RS share at step {step} over {envs}, {k}/{n} (given as predict's p0)"
    if run.p0_hint is not None and math.isclose(p0, run.p0_hint, rel_tol=1e-9):
        return "the run's manifest p0 (given as predict's p0)"
    return "given as predict's p0 argument (not a step-0 measurement of this run)"


def _map_to_target(fit: FitResult, target: Problem, draws: np.ndarray, names: list[str],
                   p0: np.ndarray) -> np.ndarray:
    """θ_full of the target problem for each draw, matched by parameter records (kind, latent, env)."""
    src = fit.problem
    src_full = np.repeat(src.full(fit.params)[None, :], draws.shape[0], axis=0)
    src_full[:, [src.names.index(n) for n in names]] = draws
    by_key: dict[tuple, list[int]] = {}
    for j, name in enumerate(src.names):
        info = src.info[name]
        by_key.setdefault((info.kind, info.latent, info.env), []).append(j)
        by_key.setdefault((info.kind, info.latent, "*"), []).append(j)
    out = np.repeat(target.full()[None, :], draws.shape[0], axis=0)
    for j, name in enumerate(target.names):
        info = target.info[name]
        if info.kind == "p0":
            out[:, j] = p0
            continue
        cols = by_key.get((info.kind, info.latent, info.env))
        if cols is None and info.env is not None:  # an env the fit never saw: the mean over the fitted envs
            cols = by_key.get((info.kind, info.latent, "*"))
        if cols is None:
            raise ValueError(f"the fit has no parameter for {name!r} ({info.kind}, {info.latent}) "
                             "needed by the target run")
        out[:, j] = src_full[:, cols].mean(1)
    return out


def _predictive_band(binomial, trials_or_se, mu, level, phi, rng):
    """Quantiles over draws of overdispersed observation noise around each draw's mean; mu shape (S, M)."""
    n = trials_or_se[None, :]
    tail = (1 - level) / 2
    out_lo = np.empty(mu.shape[1])
    out_hi = np.empty(mu.shape[1])
    b = binomial
    if b.any():
        nn = np.maximum(n[:, b], 1).astype(np.int64)
        m = np.clip(mu[:, b], 1e-9, 1 - 1e-9)
        shape = m.shape
        nn_b = np.broadcast_to(nn, shape)
        rho = np.clip((phi - 1) / np.maximum(nn_b - 1, 1), 0, 0.999)
        conc = np.where(rho > 0, 1 / np.maximum(rho, 1e-12) - 1, np.inf)
        pi = np.where(rho > 0, rng.beta(np.where(rho > 0, m * conc, 1), np.where(rho > 0, (1 - m) * conc, 1)), m)
        sim_k = rng.binomial(nn_b, np.clip(pi, 0, 1)) / nn_b
        out_lo[b], out_hi[b] = np.quantile(sim_k, [tail, 1 - tail], axis=0)
    if (~b).any():
        sim_g = mu[:, ~b] + rng.standard_normal(mu[:, ~b].shape) * n[:, ~b] * math.sqrt(phi)
        out_lo[~b], out_hi[~b] = np.quantile(sim_g, [tail, 1 - tail], axis=0)
    return out_lo, out_hi


def _measured_start(target: Problem, n_samples: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """The target's own a0 / b0 (latent σ(x0), σ(y0)) from its step-0 measurement: column -> values, shape
    (n_samples + 1,), the measurement itself first, then draws from its Jeffreys distribution.

    Each measured mean reward m over n rollouts with standard error se is drawn from Beta(m·n' + ½,
    (1 − m)·n' + ½), n' = m(1 − m)/se² (n' = n for 0/1 rewards: the Jeffreys posterior), and mapped to latent
    units through the run's observation bounds, clipped into (PROB_MIN, PROB_MAX).
    """
    out = {}
    for name, s0 in target.step0.items():
        info = target.info[name]
        if info.kind not in ("a0", "b0"):
            continue
        lat = info.kind[0]
        lo = float(np.mean(target.bounds[f"{lat}_lo"]))
        hi = float(np.mean(target.bounds[f"{lat}_hi"]))
        m = float(np.clip(s0.value, 1e-6, 1 - 1e-6))
        n_eff = m * (1 - m) / s0.scale ** 2 if s0.scale > 0 else s0.n
        obs = np.concatenate([[s0.value], rng.beta(m * n_eff + 0.5, (1 - m) * n_eff + 0.5, size=n_samples)])
        out[target.names.index(name)] = np.clip((obs - lo) / (hi - lo), PROB_MIN, PROB_MAX)
    return out


def predict(fit: FitResult, run, *, p0: float | None = None, n_samples: int = 200, level: float = 0.95,
            seed: int = 0, n_star: bool = True, threshold: float = 0.5, start: str = "fit",
            floors: dict | None = None) -> Prediction:
    """Simulate the fitted parameters on another run's configuration and compare with its logs.

    Parameters
    ----------
    fit : FitResult
        From :func:`fitting.fit`.
    run : Run or path
        The target run (any of the forms :func:`fitting.load_runs` reads; the
        first run if several).
    p0 : float, optional
        Prior RS propensity of the target in (0, 1); default its measured
        step-0 RS share ((k + ½)/(n + 1), drawn from its Jeffreys
        distribution for the bands), else its manifest's ``p0``.
    n_samples : int
        Parameter draws for the bands and the N* interval.
    level : float
        Band / interval coverage.
    seed : int
    n_star : bool
        Also predict the critical diversity N* (homogeneous or no transfer,
        shared priors and learnabilities) under the target's protocol.
    threshold : float
        RS "wins" when the mean p over trained envs exceeds it.
    start : {"fit", "measured"}
        Where the target's a0, b0 come from: the fit's values ("fit"), or the
        target's own step-0 measurement, drawn from its Jeffreys distribution
        into every band and P(RS wins) ("measured": the target's stage-1
        model starts where it was measured, with that measurement's noise).
        p0 is the target's measurement, drawn likewise, unless ``p0`` is given.
    floors : dict stage-1 key -> Stage1Floor, optional
        With a fit whose observation bounds are ``"stage1"`` (the default): the target's local floor
        ``b_lo`` as measured over every run of its stage-1 model (:func:`fitting.stage1_floors`); without
        it, the floor is measured on the target's own step 0 alone.

    Returns
    -------
    Prediction
        ``metrics`` (:class:`PredictionMetrics`): RMSE per env and latent
        and of the RS share, coverage of the predictive band, the end state
        and N*; scored on the target's eval rows.

    Raises
    ------
    ValueError
        If the target needs a parameter the fit does not have (e.g. kernel
        transfer and the target has no coordinates), or has no p0.
    """
    if start not in ("fit", "measured"):
        raise ValueError(f"start must be 'fit' or 'measured', got {start!r}")
    with single_thread():
        return _predict(fit, run, p0, n_samples, level, seed, n_star, threshold, start, floors)


def _predict(fit, run, p0, n_samples, level, seed, want_n_star, threshold, start="fit", floors=None) -> Prediction:
    if not isinstance(run, Run):
        run = load_runs([run])[0]
    rng = np.random.default_rng(seed)
    spec = fit.spec
    obs = observations([run])
    obs = obs[obs["phase"].isin(spec.phases)].reset_index(drop=True)
    p0_value, p0_source, p0_dist = _target_p0(run, obs, p0)
    target = Problem.build([run], obs, spec, floors)
    target.max_substeps = PREDICT_MAX_SUBSTEPS  # draws of unidentified parameters may be fast
    draws, names = _sample_fit(fit, n_samples, rng)
    p0_draws = np.full(draws.shape[0], p0_value)
    if p0_dist is not None:
        p0_draws[1:] = special.expit(p0_dist[0] + p0_dist[1] * rng.standard_normal(n_samples))
    theta = _map_to_target(fit, target, draws, names, np.clip(p0_draws, PROB_MIN, PROB_MAX))
    measured_start = _measured_start(target, n_samples, rng) if start == "measured" else {}
    for col, values in measured_start.items():
        theta[:, col] = values[: theta.shape[0]]
    p, a, b = (s.numpy()[:, :, 0, :] for s in target.predict_states(theta))  # (T, S+1, N)
    n_env = len(run.environments)
    states = {"p": p[..., :n_env], "a": a[..., :n_env], "b": b[..., :n_env]}
    tail = (1 - level) / 2
    mean = {k: v[:, 0] for k, v in states.items()}
    lower = {k: np.quantile(v[:, 1:], tail, axis=1) for k, v in states.items()}
    upper = {k: np.quantile(v[:, 1:], 1 - tail, axis=1) for k, v in states.items()}
    phi_used = fit.diagnostics.dispersion_used
    notes = [f"p0 = {p0_value:.4g}: {p0_source}"]
    if measured_start:
        notes.append("a0, b0: the run's own step-0 measurement ("
                     + ", ".join(f"{n} {target.step0[n].value:.3g} over {int(target.step0[n].n)} rollouts"
                                 for n in (target.names[c] for c in measured_start))
                     + "), drawn from its Jeffreys distribution into every band and P(RS wins)")
    if any(v > 1 for v in phi_used.values()):
        notes.append("the fit's dispersion φ (Pearson χ²/dof per component) = "
                     + ", ".join(f"{c}: {v:.2f}" for c, v in fit.diagnostics.component_dispersion.items())
                     + "; the predictive bands widen each component's sampling noise by max(φ, 1) = "
                     + ", ".join(f"{c}: {v:.2f}" for c, v in phi_used.items()))
    if fit.unidentified:
        notes.append("unidentified parameters drawn over their whole range: " + ", ".join(fit.unidentified))
    if not fit.converged:
        notes.append("the fit did not converge: this prediction is not an answer")

    steps = target.config.steps
    env_pos = {e: j for j, e in enumerate(run.env_ids)}
    t = np.searchsorted(steps, obs["step"].to_numpy())
    e = obs["env_id"].map(env_pos).to_numpy(int)
    table = obs.copy()
    scored_rows = (table["phase"] == "eval").to_numpy()
    scored = "eval"
    if not scored_rows.any():
        scored_rows[:] = True
        scored = "all"
    inside_all = []
    coverage = {}
    for lat, hat, trials in (("p", "p_hat", "n"), ("a", "a_hat", "a_n"), ("b", "b_hat", "b_n")):
        mu = states[lat][t, :, e].T  # (S+1, M)
        table[f"pred_{lat}"] = mu[0]
        have = table[trials].to_numpy() > 0
        # counts (p) and summed rewards (a, b) are (quasi-)binomial in the fit (see _problem)
        binom, scale = np.ones(len(t), bool), table[trials].to_numpy(float)
        lo, hi = _predictive_band(binom, scale, mu[1:], level, phi_used.get(lat, 1.0), rng)
        observed = table[hat].to_numpy(float)
        inside = (observed >= lo - 1e-12) & (observed <= hi + 1e-12)
        table[f"band_lo_{lat}"] = np.where(have, lo, np.nan)
        table[f"band_hi_{lat}"] = np.where(have, hi, np.nan)
        table[f"inside_{lat}"] = np.where(have, inside, False)
        use = have & scored_rows
        coverage[lat] = float(inside[use].mean()) if use.any() else None
        inside_all.append(inside[use])
    both = np.concatenate(inside_all)
    coverage["all"] = float(both.mean()) if both.size else None
    trained_share = _pooled_trained_band(table, scored_rows, states["p"], t, e, run, level,
                                         phi_used.get("p", 1.0), rng)

    scored_table = table[scored_rows]
    rmse = {}
    for env, rows in scored_table.groupby("env_id", sort=False):
        rmse[env] = {}
        for lat, hat in (("p", "p_hat"), ("a", "a_hat"), ("b", "b_hat")):
            d = (rows[hat] - rows[f"pred_{lat}"]).to_numpy(float)
            d = d[np.isfinite(d)]
            rmse[env][lat] = float(np.sqrt(np.mean(d**2))) if d.size else None
    trained_ids = [e_.env_id for e_ in run.environments if e_.w > 0]
    on_trained = scored_table[scored_table["env_id"].isin(trained_ids)]
    d = (on_trained["p_hat"] - on_trained["pred_p"]).to_numpy(float)
    rmse_p = float(np.sqrt(np.mean(d**2))) if d.size else None

    trained = np.array([env.w > 0 for env in run.environments])
    last = int(steps.max())
    at_last = scored_table[scored_table["step"] == last]
    observed_last = at_last[at_last["env_id"].isin(trained_ids)]
    obs_mean = float(observed_last["n_rs"].sum() / max(observed_last["n"].sum(), 1)) if len(observed_last) else None
    pred_last = states["p"][-1][:, trained].mean(-1) if trained.any() else states["p"][-1].mean(-1)
    end_state = EndState(last, obs_mean, float(pred_last[0]),
                         (float(np.quantile(pred_last[1:], tail)), float(np.quantile(pred_last[1:], 1 - tail))),
                         None if obs_mean is None else bool(obs_mean > threshold), bool(pred_last[0] > threshold),
                         float((pred_last[1:] > threshold).mean()),
                         None if obs_mean is None else bool(obs_mean > threshold) == bool(pred_last[0] > threshold),
                         threshold)
    ns = None
    if want_n_star:
        from ._protocol import critical_diversity

        ns = critical_diversity(fit, p0_value, max_steps=last, level=level, threshold=threshold,
                                seed=seed).to_dict()
    metrics = PredictionMetrics(rmse, rmse_p, coverage, end_state, ns, scored)
    return Prediction(run.run_id, p0_value, p0_source, steps, run.env_ids, mean, lower, upper, table, metrics,
                      level, notes, trained_share)


def _pooled_trained_band(table, scored_rows, p_states, t, e, run, level, phi, rng) -> pd.DataFrame:
    """The RS share pooled over the trained envs' scored rows per step, with its predictive band
    (``Prediction.trained_share``); p_states shape (T, S+1, N)."""
    trained_ids = {env.env_id for env in run.environments if env.w > 0} or set(run.env_ids)
    use = scored_rows & table["env_id"].isin(trained_ids).to_numpy() & (table["n"].to_numpy() > 0)
    cols = ["step", "n", "n_rs", "p_hat", "pred_p", "band_lo_p", "band_hi_p", "inside_p"]
    if not use.any():
        return pd.DataFrame(columns=cols)
    rows = np.flatnonzero(use)
    steps_u, which = np.unique(table["step"].to_numpy()[rows], return_inverse=True)
    n_row = table["n"].to_numpy(float)[rows]
    k_row = table["n_rs"].to_numpy(float)[rows]
    mu_row = p_states[t[rows], :, e[rows]]  # (M, S+1)
    n = np.bincount(which, weights=n_row)
    k = np.bincount(which, weights=k_row)
    mu = np.stack([np.bincount(which, weights=n_row * mu_row[:, s]) for s in range(mu_row.shape[1])]) / n
    lo, hi = _predictive_band(np.ones(len(n), bool), n, mu[1:], level, phi, rng)
    p_hat = k / n
    return pd.DataFrame({"step": steps_u, "n": n.astype(int), "n_rs": k.astype(int), "p_hat": p_hat,
                         "pred_p": mu[0], "band_lo_p": lo, "band_hi_p": hi,
                         "inside_p": (p_hat >= lo - 1e-12) & (p_hat <= hi + 1e-12)})


def save_prediction(pred: Prediction, path: str | Path) -> None:
    """Write ``prediction.json`` (metrics, p0 and its source, notes) atomically; no NaN (nulls instead)."""
    write_json(path, pred.to_dict())


def in_sample(fit: FitResult, index: int, **kwargs) -> Prediction:
    """The fitted model on fitted run ``index`` (its own fitted p0): for figures of the fit.

    With per-environment priors the run's p0 is the mean of its fitted p0 values (noted).
    """
    run = fit.runs[index]
    p0s = [fit.params[n].value for n, info in fit.problem.info.items() if info.kind == "p0" and info.run == index]
    pred = predict(fit, run, p0=float(np.mean(p0s)), n_star=False, **kwargs)
    if len(p0s) > 1:
        pred.notes.append("per-env priors: curves start from the run's mean fitted p0")
    pred.p0_source = "fit"
    pred.notes[0] = f"p0 = {pred.p0:.4g}: the fit's p0 for this run" + (" (mean over its envs)" if len(p0s) > 1 else "")
    return pred
