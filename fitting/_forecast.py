"""Early warning: forecast a run's end state from its first steps (issue 23).

From a run's logs up to step ``at`` (RS share p̂, RS reward â and local
reward b̂ per trained environment and eval step) this forecasts, at the run's
budget (its configured optimizer steps):

- the RS share over the trained environments (eval rollouts, last eval step),
  with a predictive band;
- P(RS ends above the threshold), the end state of the scaling experiment
  (share > threshold, strictly; physrl's scaling experiment, ``share_at_budget``);
- the step at which the RS share passes 0.5, with a band, when it does.

Model. The ODE of docs/model.md §2 and §7 (the fit's :class:`_problem.Problem`,
so any variant the fit knows, passed as ``options``: transfer, observation
bounds, a selection law once the fit has one) on the run's prefix, with the
initial state held at its step-0 measurement (docs/model.md §7) and a
*population prior* on the rates and transfers: empirical Bayes over stage-1
models. The prior is a normal distribution on the parameters' natural
scales (log for positive scales, logit for probabilities, natural for values in
[0, 1]), either

- from a population of other finished runs (:func:`fit_population`: each
  run fitted alone with :func:`fitting.fit`, cached; the prior's mean and
  covariance are kernel-weighted over the runs by their distance to the target
  in (log N, log p0)), or
- from a given fit (``fit.json`` of ``physrl fit``): its estimates and
  standard errors, unidentified parameters broad.

The posterior given the prefix is computed by importance sampling: the
likelihood is the fit's binomial deviance of the prefix, each component
tempered by the population's dispersion φ_c (docs/model.md §7); draws come
from the prior and from a defensive mixture around the posterior mode
(:func:`_importance`), weighted by prior × likelihood / proposal. A parameter
the prefix cannot pin down keeps its prior; one it can is moved by the data.
The predictive band of the end share adds the eval pass's sampling noise
(beta-binomial, overdispersed by φ_p) to each posterior draw.

Baselines (same prefix, same outputs):

- ``sigmoid``: ScaleRL's saturating curve (Khatri et al. 2025, "The Art of
  Scaling RL Compute for LLMs", eq. 1) in steps, R(t) = R0 + (A − R0) /
  (1 + (t_mid / t)^B), fitted to the prefix's RS share (binomial deviance,
  R0 = the step-0 share), extrapolated; band and probability by a parametric
  bootstrap (overdispersed binomial, refit per replicate);
- ``persistence``: the last prefix share (its Jeffreys Beta as the band and
  the probability);
- ``base_rate``: the population's share of runs at the same prior and N that
  ended above the threshold ((k + ½)/(n + 1)), its end shares' quantiles as the
  band (needs a population).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, stats

from physrl.contract import Run, load_runs

from ._endstate import budget_of, end_share, nominal_prior, prefix, share_curve, stage1_model  # noqa: F401
from ._engine import BatchConfig, single_thread
from ._forecast_baselines import EndForecast, _overdispersed, base_rate, persistence, sigmoid
from ._json import write_json
from ._observations import observations
from ._population import (DEFAULT_OPTIONS, PopulationPrior, RunFit, _from_scale, _options, _spec,  # noqa: F401
                          _to_scale, fit_population, fit_run)
from ._problem import Problem, UnstableStep, _deviance_residuals

#: forecast.json's schema version
SCHEMA = 1
#: per optimizer step, the largest Euler rate a draw may have (sim's bound α |Σ C w| / 4): a draw faster than that
#: moves its latents within a step, far below what eval passes every 20 steps resolve; it is held to the cap
RATE_CAP = 32.0
#: importance-sampling draws, resampled posterior draws
N_DRAWS, N_POSTERIOR = 512, 400
#: below this effective sample size the importance sampler has collapsed onto a few draws: the band is then the
#: spread of those few, not the posterior's, and reads far more confident than it is
ESS_MIN = 20


@dataclass
class Forecast:
    """What :func:`forecast` says about a run from its logs up to ``at``.

    Attributes
    ----------
    run_id, source : str
    at, budget : int
        Optimizer steps seen and the run's budget.
    threshold, level : float
    model : EndForecast
        The ODE with the population prior (method ``"ode"``).
    baselines : dict name -> EndForecast
        ``sigmoid``, ``persistence`` and (with a population) ``base_rate``.
    crossing : dict
        ``p_cross`` (P(the model's RS share passes 0.5 by the budget)), ``step`` (median step among draws that
        cross), ``band`` (at ``level``), ``observed`` (the first prefix step above 0.5, when it already did).
    prefix : dict
        ``step, k, n, share`` lists (trained envs, eval).
    curve : dict
        ``step`` and the model's RS share ``median, lower, upper`` (parameter band) from ``at`` to the budget;
        ``sigmoid`` (the baseline's point curve there) and ``sigmoid_step``/``sigmoid_full`` (from step 0).
    truth : dict or None
        ``step, share, rs_wins`` at the budget, when the run got there.
    prior : dict
        The prior (:meth:`PopulationPrior.to_dict`).
    posterior : dict
        ``names``, ``median``, ``lower``, ``upper`` (natural units), ``ess``, ``draws``, ``dropped``.
    seconds : float
    options : dict
    """

    run_id: str
    source: str
    at: int
    budget: int
    threshold: float
    level: float
    model: EndForecast
    baselines: dict
    crossing: dict
    prefix: dict
    curve: dict
    truth: dict | None
    prior: dict
    posterior: dict
    seconds: float
    options: dict
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        return {"schema": self.schema, "run_id": self.run_id, "source": self.source, "at": self.at,
                "budget": self.budget, "threshold": self.threshold, "level": self.level,
                "model": self.model.to_dict(), "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
                "crossing": self.crossing, "prefix": self.prefix, "curve": self.curve, "truth": self.truth,
                "prior": self.prior, "posterior": self.posterior, "seconds": self.seconds, "options": self.options,
                "warnings": self.warnings}

    @property
    def warnings(self) -> list[str]:
        """Plain-language warnings about this forecast (empty when none): a collapsed importance sampler."""
        ess, draws = self.posterior.get("ess"), self.posterior.get("draws")
        if ess is not None and ess < ESS_MIN:
            return [f"importance sampler collapsed: ESS {ess:.0f} of {draws} draws (< {ESS_MIN}); the model's band is "
                    "the spread of a few draws, not of the posterior, and is overconfident: the prefix is far from "
                    "what the prior expects (a different design or population), trust the baselines more"]
        return []

    @classmethod
    def from_dict(cls, d: dict) -> "Forecast":
        """Inverse of :meth:`to_dict` (a forecast.json read back).

        Raises
        ------
        ValueError
            For another schema version.
        """
        if d.get("schema") != SCHEMA:
            raise ValueError(f"forecast.json schema {d.get('schema')!r}, this physrl reads {SCHEMA}")
        return cls(d["run_id"], d["source"], int(d["at"]), int(d["budget"]), float(d["threshold"]),
                   float(d["level"]), EndForecast.from_dict(d["model"]),
                   {k: EndForecast.from_dict(v) for k, v in d["baselines"].items()}, d["crossing"], d["prefix"],
                   d["curve"], d["truth"], d["prior"], d["posterior"], float(d["seconds"]), d["options"])

    @property
    def methods(self) -> dict:
        """Every end-state forecast by method name, the model first."""
        return {"ode": self.model, **self.baselines}

    def save(self, out: str | Path, figure: bool = True) -> Path:
        """Write ``forecast.json`` (and ``forecast.png``) into ``out``; returns the json's path.

        Both files are written atomically, the figure first and the json last, after an older json is removed:
        a kill at any moment leaves a json only next to its own figure (or, without ``figure``, no figure).
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "forecast.json").unlink(missing_ok=True)
        if figure:
            from ._forecast_figure import plot_forecast

            plot_forecast(self, out / "forecast.png")
        else:
            (out / "forecast.png").unlink(missing_ok=True)
        write_json(out / "forecast.json", self.to_dict())
        return out / "forecast.json"

    def summary(self) -> str:
        """A few lines for people: each method's end share, band and P(RS wins), the crossing and the truth."""
        pct = int(round(self.level * 100))
        lines = [f"run {self.run_id}: forecast at step {self.at} of {self.budget} "
                 f"({100 * self.at / self.budget:.0f}% of the budget), threshold {self.threshold:g}",
                 f"  {'method':<12} {'end share':>9}  {pct}% band        P(RS wins)"]
        for name, m in self.methods.items():
            if m.share is None:
                lines.append(f"  {name:<12} {'-':>9}  {m.note}")
                continue
            band = f"[{m.band[0]:.2f}, {m.band[1]:.2f}]" if m.band else "-"
            lines.append(f"  {name:<12} {m.share:>9.2f}  {band:<14} {m.p_rs_wins:.2f}")
        c = self.crossing
        if c.get("observed") is not None:
            lines.append(f"  RS share passed 0.5 at step {c['observed']} (observed)")
        elif c.get("step") is not None:
            lines.append(f"  RS passes 0.5 by step {self.budget} with P = {c['p_cross']:.2f}: at step "
                         f"{c['step']:.0f}, {pct}% [{c['band'][0]:.0f}, {c['band'][1]:.0f}] (draws that pass)")
        else:
            lines.append(f"  RS passes 0.5 by step {self.budget} with P = {c['p_cross']:.2f}")
        if self.truth is not None:
            lines.append(f"  truth: end share {self.truth['share']:.2f} at step {self.truth['step']} "
                         f"(RS {'wins' if self.truth['rs_wins'] else 'loses'})")
        lines.append(f"  posterior: ESS {self.posterior['ess']:.0f} of {self.posterior['draws']} draws; "
                     f"{self.seconds:.1f} s")
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.prior.get("notes", [])]
        return "\n".join(lines)




# ---- the model's forecast ---------------------------------------------------------------------------------
def population_design(run: Run, population: list) -> tuple[list, list[str]]:
    """The population without the target, and notes on what was dropped and on designs unlike the target's.

    ``population``: :class:`Run` or :class:`RunFit` objects. A run is never its own prior: the target (same
    ``run_id``) is dropped and the note says so. Designs compared: trained environments N and nominal prior p0
    (and the held-out count when ``population`` holds runs). Raises ValueError when fewer than 3 runs remain.
    """
    notes = []
    kept = [r for r in population if r.run_id != run.run_id]
    if len(kept) < len(population):
        notes.append(f"the target run {run.run_id} was in the population and was dropped (a run is not its own prior)")
    if len(kept) < 3:
        raise ValueError(f"a population prior needs at least 3 finished runs other than the target, got {len(kept)}"
                         + (f" (the target {run.run_id} itself was dropped from the {len(population)} given)"
                            if len(kept) < len(population) else ""))

    def design(r):
        if isinstance(r, RunFit):
            return r.n_envs, r.p0, None
        trained = sum(e.w > 0 for e in r.environments)
        return trained, nominal_prior(r), len(r.environments) - trained

    n_t, p0_t, h_t = design(run)
    differ = [r for r in kept if (lambda d: d[0] != n_t or not np.isclose(d[1], p0_t)
                                  or (d[2] is not None and d[2] != h_t))(design(r))]
    if differ:
        notes.append(f"{len(differ)} of {len(kept)} population runs have another design than the target's "
                     f"(N = {n_t}, p0 = {p0_t:g}, {h_t} held out), e.g. {differ[0].run_id}: the prior leans on the "
                     "runs nearest in (log N, log p0); held-out environments are not part of it")
    return kept, notes


def _rate_proxy(values: np.ndarray, names: list[str], spread: float) -> np.ndarray:
    """Per draw, time scale × largest learnability × ``spread`` / 4 (per optimizer step): sim's stability bound
    (docs/model.md §8: α |Σ_j C_ij w_j| / 4) with |Σ_j C_ij w_j| ≤ ``spread`` (max w without transfer, Σ w
    with)."""
    ts = values[:, names.index("time_scale")] if "time_scale" in names else np.ones(len(values))
    alphas = [values[:, j] for j, n in enumerate(names) if n.startswith("alpha_")]
    top = np.max(np.column_stack([np.ones(len(values))] + alphas), axis=1)
    return ts * top * spread / 4


class _Posterior:
    """Prefix likelihood and model curves for batches of parameter draws (one run)."""

    def __init__(self, run: Run, at: int, budget: int, prior: PopulationPrior, grid_every: int):
        spec = _spec(prior.options)
        pre = prefix(run, at)
        obs = observations(pre)
        obs = obs[obs["phase"].isin(spec.phases)]
        self.problem = Problem.build([pre], obs, spec)
        pr = self.problem
        var = [n for n in pr.var_names if pr.info[n].kind not in ("p0", "a0", "b0")]
        missing = sorted(set(var) - set(prior.names))
        if missing:
            raise ValueError(f"the prior has no distribution for {missing} (model options {prior.options}); "
                             f"it covers {prior.names}")
        self.names = [n for n in prior.names if n in pr.names]
        extra = sorted(set(prior.names) - set(pr.names))
        if extra:
            raise ValueError(f"the prior's parameters {extra} are not in this model (options {prior.options})")
        pr.weights = {c: 1.0 / math.sqrt(max(prior.dispersion.get(c, 1.0), 1.0)) for c in ("p", "a", "b")}
        pr.max_substeps = int(RATE_CAP * 2)
        seen = np.asarray(pr.config.steps)
        future = np.arange((int(seen.max()) // grid_every + 1) * grid_every, budget + 1, grid_every)
        future = np.union1d(future[future > seen.max()], [budget]) if budget > seen.max() else np.array([], int)
        self.steps = np.concatenate([seen, future]).astype(np.int64)
        self.config_prefix = pr.config
        self.config_full = BatchConfig(pr.config.w, pr.config.valid, pr.config.coords, self.steps)
        self.trained = pr.config.w[0] > 0
        w = pr.config.w[0]
        self.spread = float(w.max() if spec.transfer == "none" else w.sum())
        self.base = pr.full()
        self.n_seen = len(seen)

    def capped(self, values: np.ndarray) -> np.ndarray:
        """Draws with every learnability × time scale held to :data:`RATE_CAP` (a latent that fast finishes
        moving within an optimizer step either way; the Euler grid cannot follow it faster)."""
        values = np.array(values, float, copy=True)
        cap = RATE_CAP * 4 / self.spread
        if "time_scale" in self.names:
            j = self.names.index("time_scale")
            values[:, j] = np.minimum(values[:, j], cap)
            ts = values[:, j]
        else:
            ts = np.ones(len(values))
        for j, n in enumerate(self.names):
            if n.startswith("alpha_"):
                values[:, j] = np.minimum(values[:, j], cap / ts)
        return values

    def residuals(self, values: np.ndarray) -> np.ndarray:
        """Tempered deviance residuals of the prefix, shape (B, M), for natural-unit draws (capped)."""
        pr = self.problem
        pr.config = self.config_prefix
        theta = pr.expand(self.capped(values), self.names, self.base)
        try:
            p, a, b = pr.predict_states(theta)
        except UnstableStep:
            return np.full((len(values), pr.n_data), 1e3)
        states = {"p": p, "a": a, "b": b}
        out = [(_deviance_residuals(c, states[c.latent][c.t, :, c.r, c.e].T) * pr.weights[c.latent]).numpy()
               for c in pr.components]
        return np.nan_to_num(np.concatenate(out, axis=1), nan=1e3, posinf=1e3, neginf=-1e3)

    def evaluate(self, values: np.ndarray, full: bool = False, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """(log-likelihood of the prefix (B,), mean RS share over trained envs (B, T)) for natural-unit draws.

        ``full=False`` integrates the prefix only (the likelihood; shares up to ``at``), ``True`` to the
        budget. Draws faster than the Euler grid follows are held to :data:`RATE_CAP` (:meth:`capped`).
        """
        pr = self.problem
        pr.config = self.config_full if full else self.config_prefix
        steps = pr.config.steps
        loglik = np.full(len(values), -np.inf)
        share = np.full((len(values), len(steps)), np.nan)
        values = self.capped(values)
        rate = _rate_proxy(values, self.names, self.spread)
        idx = np.argsort(rate)
        for start in range(0, len(idx), chunk):
            sel = idx[start:start + chunk]
            theta = pr.expand(values[sel], self.names, self.base)
            try:
                p, a, b = pr.predict_states(theta)
            except UnstableStep:
                continue
            states = {"p": p, "a": a, "b": b}
            total = np.zeros(len(sel))
            for comp in pr.components:
                mu = states[comp.latent][comp.t, :, comp.r, comp.e].T
                r = (_deviance_residuals(comp, mu) * pr.weights[comp.latent]).numpy()
                total += (r**2).sum(1)
            pn = p[:, :, 0, :].numpy()                                       # (T, B, N)
            share[sel] = pn[:, :, self.trained].mean(-1).T
            loglik[sel] = np.where(np.isfinite(total), -0.5 * total, -np.inf)
        return loglik, share


def _mvn_logpdf(x, mean, cov):
    return stats.multivariate_normal(mean, cov, allow_singular=True).logpdf(x)


def forecast(run, at: int, *, prior: PopulationPrior | None = None, population=None, budget: int | None = None,
             threshold: float = 0.5, level: float = 0.9, options: dict | None = None,
             cache_dir: str | Path | None = None, seed: int = 0, n_draws: int = N_DRAWS,
             grid_every: int = 5, exclude: set | None = None) -> Forecast:
    """Forecast a run's end state from its logs up to step ``at``.

    Parameters
    ----------
    run : Run or path
        The run (live or finished); only rows with step ≤ ``at`` are read for the forecast. Rows after the
        budget are never read; the truth at the budget is reported when the run got there (never used).
    at : int
        Optimizer steps seen (≥ the first logged step).
    prior : PopulationPrior, optional
        A ready prior (e.g. :meth:`PopulationPrior.from_fit`). Exactly one of ``prior`` and ``population``.
    population : list of RunFit, Run or paths, optional
        Other finished runs (:func:`fit_population` is called on runs and paths; ``cache_dir`` caches it).
    budget : int, optional
        Steps the run is configured for (default: its manifest's ``steps``).
    threshold : float
        End state: RS wins when the end share > threshold (probability).
    level : float
        Coverage of the bands.
    options : dict, optional
        Model options passed through to the fit (e.g. ``{"transfer": "none", "selection": "power"}``);
        default :data:`DEFAULT_OPTIONS`; with ``prior``, the prior's.
    seed : int
        Seed of every draw (the forecast is reproducible).
    n_draws : int
        Importance-sampling draws (a quarter from the prior, the rest around the posterior mode).
    grid_every : int
        Steps between the forecast curve's points (crossing-step resolution).
    exclude : set of str, optional
        Stage-1 models left out of the population (evaluation).

    Returns
    -------
    Forecast

    Raises
    ------
    ValueError
        No budget known, ``at`` not before the budget, before the first logged step or past the last one, both or neither of
        ``prior`` / ``population``, a population too small, or a prior that does not match the model.
    """
    t0 = time.perf_counter()
    if not isinstance(run, Run):
        run = load_runs([run])[0]
    budget = budget_of(run) if budget is None else int(budget)
    if budget is None:
        raise ValueError(f"run {run.run_id}: its manifest gives no budget (steps); pass budget=")
    if budget < 1:
        raise ValueError(f"budget must be a positive integer (optimizer steps), got {budget}")
    if not 0 <= at < budget:
        raise ValueError(f"at = {at} must lie in [0, budget = {budget})")
    last = int(run.rollouts["step"].max())
    if at > last:
        raise ValueError(f"at = {at} lies past the run's last logged step ({last}): run {run.run_id}'s logs end "
                         f"there; forecast at step <= {last} (or --watch to wait for it)")
    if (prior is None) == (population is None):
        raise ValueError("give exactly one of prior= (a fit or a ready prior) and population= (finished runs)")
    notes: list[str] = []
    if prior is None:
        fits = list(population)
        if fits and not isinstance(fits[0], (RunFit, Run)):
            fits = load_runs(fits)
        fits, notes = population_design(run, fits)          # the target dropped, counted before any fit
        if fits and not isinstance(fits[0], RunFit):
            fits = fit_population(fits, options=options, cache_dir=cache_dir)
        elif options is not None and any(f.options != _options(options) for f in fits):
            raise ValueError(f"the population was fitted with options {fits[0].options}, not {_options(options)}: "
                             "refit it with these options (fit_population) or leave options out")
        prior = PopulationPrior.from_population(fits, sum(e.w > 0 for e in run.environments), nominal_prior(run),
                                                threshold=threshold, exclude=exclude)
    elif options is not None:
        prior = dataclasses.replace(prior, options=_options(options))
    rng = np.random.default_rng(seed)
    curve = share_curve(prefix(run, at))
    with single_thread():
        post = _Posterior(run, at, budget, prior, grid_every)
        draws, weights, ess, dropped = _importance(post, prior, rng, n_draws)
        # resample the posterior; integrate the picked draws to the budget
        pick = rng.choice(len(draws), size=N_POSTERIOR, p=weights)
        uniq, inverse = np.unique(pick, return_inverse=True)
        _, shares = post.evaluate(draws[uniq], full=True)
        model_curves = shares[inverse]
        sig, sig_curve = sigmoid(curve, budget, threshold, level, phi=prior.dispersion["p"], seed=seed)
    # add the end eval pass's noise
    end_p = model_curves[:, -1]
    n_env = curve["n"].iloc[-1] / max(int(post.trained.sum()), 1)
    counts = np.zeros(N_POSTERIOR)
    for _ in range(int(post.trained.sum())):
        counts += _overdispersed(rng, np.full(N_POSTERIOR, n_env), end_p, prior.dispersion["p"])
    pred = counts / (n_env * int(post.trained.sum()))
    tail = (1 - level) / 2
    model = EndForecast("ode", float(np.median(pred)), (float(np.quantile(pred, tail)),
                                                         float(np.quantile(pred, 1 - tail))),
                        float(np.clip(np.mean(pred > threshold), 0.5 / (N_POSTERIOR + 1), 1 - 0.5 / (N_POSTERIOR + 1))),
                        f"posterior ESS {ess:.0f}")
    # crossing of 0.5
    above = curve[curve["share"] > 0.5]
    fut = post.steps >= at
    cross = {"observed": int(above["step"].iloc[0]) if len(above) else None, "p_cross": None, "step": None,
             "band": None}
    if cross["observed"] is None:
        mc = model_curves[:, fut]
        hit = mc > 0.5
        any_hit = hit.any(1)
        cross["p_cross"] = float(any_hit.mean())
        if any_hit.any():
            first = post.steps[fut][hit[any_hit].argmax(1)]
            cross["step"] = float(np.median(first))
            cross["band"] = [float(np.quantile(first, tail)), float(np.quantile(first, 1 - tail))]
    else:
        cross["p_cross"] = 1.0
    truth = None
    if int(run.rollouts["step"].max()) >= budget or run.finished:
        e = end_share(run, budget)
        if e is not None:
            truth = {"step": e[0], "share": e[1], "rs_wins": bool(e[1] > threshold)}
    qs = np.quantile(model_curves[:, fut], [tail, 0.5, 1 - tail], axis=0)
    grid = post.steps[fut]
    post_vals = draws[pick]
    baselines = {"sigmoid": sig, "persistence": persistence(curve, threshold, level),
                 "base_rate": base_rate(prior.base_rate, threshold, level)}
    return Forecast(
        run.run_id, str(run.source), int(at), int(budget), float(threshold), float(level), model, baselines, cross,
        {"step": curve["step"].tolist(), "k": curve["k"].tolist(), "n": curve["n"].tolist(),
         "share": curve["share"].tolist()},
        {"step": grid.tolist(), "lower": qs[0].tolist(), "median": qs[1].tolist(), "upper": qs[2].tolist(),
         "sigmoid": sig_curve[grid].tolist(), "sigmoid_step": list(range(0, budget + 1, grid_every)),
         "sigmoid_full": sig_curve[::grid_every].tolist()},
        truth, {**prior.to_dict(), "notes": notes},
        {"names": post.names, "median": np.median(post_vals, 0).tolist(),
         "lower": np.quantile(post_vals, tail, 0).tolist(), "upper": np.quantile(post_vals, 1 - tail, 0).tolist(),
         "ess": float(ess), "draws": int(len(draws)), "dropped": int(dropped)},
        time.perf_counter() - t0, dict(prior.options))


def _importance(post: _Posterior, prior: PopulationPrior, rng, n_draws: int):
    """Importance sampling of the posterior (module docstring).

    1. ``n_draws // 4`` draws from the prior; the best (prior × likelihood) starts
    2. the posterior mode (scipy ``least_squares``: the prefix's tempered deviance residuals and the prior's
       whitened residuals; batched forward-difference Jacobian), whose Laplace covariance (JᵀJ)⁻¹ makes
    3. a defensive proposal 0.8 N(mode, 2 Laplace) + 0.2 prior (Hesterberg 1995, Technometrics 37:185) for the
       remaining draws; every draw is weighted by prior × likelihood / the mixture of both stages (balance
       heuristic).

    Returns (draws natural (K, P), normalised weights (K,), effective sample size, draws with a non-finite
    likelihood).
    """
    order = [prior.names.index(n) for n in post.names]
    mean, cov = prior.mean[order], prior.cov[np.ix_(order, order)]
    dom = [prior.domains[i] for i in order]
    pr = post.problem
    lo = _to_scale(np.array([[pr.params[n].min for n in post.names]]), dom)[0]
    hi = _to_scale(np.array([[pr.params[n].max for n in post.names]]), dom)[0]
    whiten = np.linalg.cholesky(np.linalg.inv(cov))          # ‖(x − μ) L‖² = (x − μ)ᵀ Σ⁻¹ (x − μ)
    n0 = max(n_draws // 4, 16)
    x0 = np.clip(rng.multivariate_normal(mean, cov, size=n0), lo, hi)
    ll0, _ = post.evaluate(_from_scale(x0, dom))
    start = x0[int(np.argmax(ll0 + _mvn_logpdf(x0, mean, cov)))]

    def resid(batch):
        data = post.residuals(_from_scale(np.atleast_2d(batch), dom))
        return np.concatenate([data, (np.atleast_2d(batch) - mean) @ whiten], axis=1)

    def jac(x):
        h = 1e-5 * np.maximum(1.0, np.abs(x))
        step = np.where(x + h > hi, -h, h)
        batch = np.vstack([x, x + np.diag(step)])
        r = resid(batch)
        return ((r[1:] - r[0]) / step[:, None]).T

    sol = optimize.least_squares(lambda x: resid(x)[0], np.clip(start, lo + 1e-9, hi - 1e-9), jac=jac,
                                 bounds=(lo, hi), method="trf", max_nfev=60, x_scale="jac")
    j = jac(sol.x)
    lap = np.linalg.pinv(j.T @ j)
    lap = 0.5 * (lap + lap.T) + 1e-6 * np.eye(len(mean))
    prop_cov = 2.0 * lap
    n1 = n_draws - n0
    comp = rng.random(n1) < 0.8
    x1 = np.where(comp[:, None], rng.multivariate_normal(sol.x, prop_cov, size=n1),
                  rng.multivariate_normal(mean, cov, size=n1))
    x1 = np.clip(x1, lo, hi)
    ll1, _ = post.evaluate(_from_scale(x1, dom))
    x = np.vstack([x0, x1])
    loglik = np.concatenate([ll0, ll1])
    log_prior = _mvn_logpdf(x, mean, cov)
    # the overall proposal: n0 prior draws and n1 draws of the defensive mixture
    log_q = np.logaddexp(np.log(n0 + 0.2 * n1) + log_prior,
                         np.log(0.8 * n1) + _mvn_logpdf(x, sol.x, prop_cov)) - np.log(n0 + n1)
    logw = loglik + log_prior - log_q
    finite = np.isfinite(logw)
    if not finite.any():
        raise ValueError("every parameter draw gave a non-finite likelihood")
    w = np.where(finite, np.exp(logw - logw[finite].max()), 0.0)
    w /= w.sum()
    return _from_scale(x, dom), w, 1.0 / float((w**2).sum()), int((~finite).sum())
