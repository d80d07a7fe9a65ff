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
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from physrl.contract import Run, load_runs

from ._engine import BatchConfig, single_thread
from ._json import write_json
from ._observations import observations
from ._problem import FitSpec, Problem, UnstableStep, _deviance_residuals

#: forecast.json's schema version
SCHEMA = 1
#: default model options (keyword arguments of fitting.fit / FitSpec) for one run on its own: transfer between
#: identical environments only rescales the rates (docs/model.md §3), which a per-run fit cannot tell apart
DEFAULT_OPTIONS = {"transfer": "none", "phases": ("eval",)}
#: per optimizer step, the largest Euler rate a draw may have (sim's bound α |Σ C w| / 4): a draw faster than that
#: moves its latents within a step, far below what eval passes every 20 steps resolve; it is held to the cap
RATE_CAP = 32.0
#: draws per importance-sampling round, rounds, resampled posterior draws
N_DRAWS, N_POSTERIOR = 512, 400
#: log-loss clip of a probability (a forecast of exactly 0 or 1 would score infinity on a miss)
PROB_CLIP = 1e-3


# ---- the run: end state, prefix, what it is ---------------------------------------------------------------
def _trained(run: Run) -> list[str]:
    return [e.env_id for e in run.environments if e.w > 0] or list(run.env_ids)


def share_curve(run: Run, phases=("eval",)) -> pd.DataFrame:
    """RS share over the trained environments per eval step.

    Returns
    -------
    DataFrame with columns ``step`` (optimizer steps), ``k`` (RS rollouts), ``n`` (rollouts), ``share`` (k/n);
    eval rollouts (all phases when the run has none).
    """
    df = run.rollouts
    rows = df[df["env_id"].isin(_trained(run)) & df["phase"].isin(phases)]
    if rows.empty:
        rows = df[df["env_id"].isin(_trained(run))]
    g = rows.groupby("step")["rs"].agg(["sum", "size"]).reset_index()
    out = pd.DataFrame({"step": g["step"].astype(int), "k": g["sum"].astype(int), "n": g["size"].astype(int)})
    out["share"] = out["k"] / out["n"]
    return out


def end_share(run: Run, budget: int) -> tuple[int, float] | None:
    """(eval step, RS share over the trained envs) at the last eval step ≤ ``budget``; None without one.

    The scaling experiment's end state (physrl's ``share_at_budget``): RS wins when this share > threshold.
    """
    curve = share_curve(run)
    curve = curve[curve["step"] <= budget]
    if curve.empty:
        return None
    last = curve.iloc[-1]
    return int(last["step"]), float(last["share"])


def budget_of(run: Run) -> int | None:
    """The run's budget in optimizer steps: the manifest's ``steps`` (None when it does not say)."""
    return None if run.manifest is None or run.manifest.steps is None else int(run.manifest.steps)


def nominal_prior(run: Run) -> float:
    """The prior p0 the run was set up with (manifest ``p0``, else the producer's config ``p0``), else measured."""
    m = run.manifest
    if m is not None and m.p0 is not None:
        return float(m.p0)
    cfg = ((m.organisms or {}).get("config") or {}) if m is not None else {}
    if isinstance(cfg.get("p0"), (int, float)):
        return float(cfg["p0"])
    return float(run.measured_prior(env_ids=_trained(run)).pooled.value)


def stage1_model(run: Run) -> str:
    """The run's stage-1 model (the unit of replication): the producer's stage-1 key, else the run id."""
    m = run.manifest
    key = (((m.organisms or {}).get("stage1") or {}).get("key")) if m is not None else None
    return str(key) if key else run.run_id


def prefix(run: Run, at: int) -> Run:
    """The run as it was logged up to step ``at`` (rows with step ≤ at), untrained environments without rows dropped.

    Raises
    ------
    ValueError
        If no rollout was logged by step ``at``.
    """
    rows = run.rollouts[run.rollouts["step"] <= at]
    if rows.empty:
        raise ValueError(f"run {run.run_id} ({run.source}): no rollouts logged by step {at} "
                         f"(first logged step {int(run.rollouts['step'].min())})")
    seen = set(rows["env_id"].unique())
    envs = [e for e in run.environments if e.w > 0 or e.env_id in seen]
    return dataclasses.replace(run, rollouts=rows.reset_index(drop=True), environments=envs)


def _trim(run: Run) -> Run:
    seen = set(run.rollouts["env_id"].unique())
    return dataclasses.replace(run, environments=[e for e in run.environments if e.w > 0 or e.env_id in seen])


# ---- parameter scales -------------------------------------------------------------------------------------
_DOMAIN_OF_KIND = {"time_scale": "scale", "alpha": "scale", "length_scale": "scale", "c": "unit", "lam": "nonneg",
                   "bound": "unit"}
#: prior sd on the transformed scale for a parameter a fit could not identify
_BROAD_SD = {"scale": math.log(10.0), "prob": 2.0, "unit": 0.5, "nonneg": 1.0}


def _to_scale(values: np.ndarray, domains: list[str]) -> np.ndarray:
    out = np.array(values, dtype=float, copy=True)
    for j, d in enumerate(domains):
        if d == "scale":
            out[..., j] = np.log(np.maximum(out[..., j], 1e-12))
        elif d == "prob":
            out[..., j] = special.logit(np.clip(out[..., j], 1e-9, 1 - 1e-9))
    return out


def _from_scale(values: np.ndarray, domains: list[str]) -> np.ndarray:
    out = np.array(values, dtype=float, copy=True)
    for j, d in enumerate(domains):
        if d == "scale":
            out[..., j] = np.exp(np.clip(out[..., j], -700, 700))
        elif d == "prob":
            out[..., j] = special.expit(out[..., j])
    return out


# ---- per-run fits and the population prior ----------------------------------------------------------------
@dataclass
class RunFit:
    """One finished run fitted alone: what the population prior is made of.

    Attributes
    ----------
    run_id, source : str
    stage1 : str
        Its stage-1 model (:func:`stage1_model`).
    n_envs : int
        Trained environments.
    p0 : float
        Nominal prior (:func:`nominal_prior`).
    values : dict name -> float
        Fitted rates and transfers (natural units), the initial state excluded.
    domains : dict name -> str
        ``"scale"`` (log), ``"prob"`` (logit), ``"unit"``/``"nonneg"`` (natural).
    dispersion : dict
        φ per component (p, a, b), Pearson χ²/dof.
    converged : bool
    budget : int or None
    end : (int, float) or None
        (step, share) at the budget (:func:`end_share`).
    options : dict
        Model options of the fit.
    """

    run_id: str
    source: str
    stage1: str
    n_envs: int
    p0: float
    values: dict
    domains: dict
    dispersion: dict
    converged: bool
    budget: int | None
    end: tuple | None
    options: dict

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["end"] = None if self.end is None else list(self.end)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunFit":
        d = dict(d)
        d["end"] = None if d.get("end") is None else (int(d["end"][0]), float(d["end"][1]))
        return cls(**d)


def _spec(options: dict) -> FitSpec:
    names = {f.name for f in dataclasses.fields(FitSpec)}
    unknown = set(options) - names
    if unknown:
        raise ValueError(f"model options {sorted(unknown)} are not fit options ({sorted(names)})")
    opts = {**options}
    if "phases" in opts:
        opts["phases"] = tuple(opts["phases"])
    return FitSpec(**{**opts, "step0": "fixed"})


def _options(options: dict | None) -> dict:
    out = {**DEFAULT_OPTIONS, **(options or {})}
    out["phases"] = list(out["phases"])
    return out


def fit_run(run: Run, *, options: dict | None = None, budget: int | None = None, n_starts: int = 2,
            seed: int = 0) -> RunFit:
    """Fit one finished run on its own (:func:`fitting.fit`, initial state at its step-0 measurement).

    Parameters
    ----------
    run : Run
    options : dict, optional
        Model options (keyword arguments of :func:`fitting.fit`, e.g. ``transfer``, ``selection``);
        default :data:`DEFAULT_OPTIONS`.
    budget : int, optional
        Steps fitted and read as the end state (default: the manifest's steps, else every step).
    n_starts, seed : int
        Of :func:`fitting.fit`.
    """
    from ._fit import fit

    opts = _options(options)
    budget = budget_of(run) if budget is None else budget
    use = _trim(run) if budget is None else prefix(run, budget)
    res = fit([use], **{**opts, "phases": tuple(opts["phases"])}, step0="fixed", n_starts=n_starts, seed=seed)
    values, domains = {}, {}
    for name, est in res.estimates.items():
        if not est.vary or est.info is None or est.info.kind in ("p0", "a0", "b0"):
            continue
        values[name] = float(est.value)
        domains[name] = est.info.domain
    return RunFit(run.run_id, str(run.source), stage1_model(run), len([e for e in run.environments if e.w > 0]),
                  nominal_prior(run), values, domains, dict(res.diagnostics.component_dispersion),
                  bool(res.converged), budget, end_share(run, budget if budget is not None else 10**12), opts)


def _cache_key(run: Run, options: dict, budget) -> str:
    blob = json.dumps({"run": run.run_id, "rows": len(run.rollouts), "options": options, "budget": budget},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def fit_population(runs, *, options: dict | None = None, cache_dir: str | Path | None = None,
                   progress: bool = False) -> list[RunFit]:
    """Fit each finished run on its own (:func:`fit_run`), reading and writing a per-run cache.

    Parameters
    ----------
    runs : list of Run or paths
    options : dict, optional
        Model options (see :func:`fit_run`).
    cache_dir : path, optional
        One JSON per (run, row count, options, budget); a hit is read instead of refitted.
    progress : bool
        A tqdm bar on stderr.

    Raises
    ------
    ValueError
        If a run is not finished (a live run is not population).
    """
    if runs and not isinstance(runs[0], Run):
        runs = load_runs(runs)
    opts = _options(options)
    cache = None if cache_dir is None else Path(cache_dir)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    it = runs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(runs, desc="population fits", unit="run")
    out = []
    for run in it:
        if not run.finished:
            raise ValueError(f"population run {run.run_id} ({run.source}) is not finished: only finished runs "
                             "make a prior")
        path = None if cache is None else cache / f"{_cache_key(run, opts, budget_of(run))}.json"
        if path is not None and path.exists():
            out.append(RunFit.from_dict(json.loads(path.read_text())))
            continue
        rf = fit_run(run, options=opts)
        if path is not None:
            write_json(path, rf.to_dict())
        out.append(rf)
    return out


@dataclass
class PopulationPrior:
    """A normal prior on the rates and transfers (natural scales), plus what the population says about the end.

    Attributes
    ----------
    names : list of str
        Parameter names (the fit's, e.g. ``time_scale, alpha_x, alpha_y``).
    domains : list of str
        Their scales (``scale`` log, ``prob`` logit, ``unit``/``nonneg`` natural).
    mean : ndarray, shape (P,)
    cov : ndarray, shape (P, P)
        On those scales.
    dispersion : dict
        φ per component (p, a, b) used to temper the prefix likelihood (≥ 1).
    options : dict
        Model options the parameters belong to.
    source : str
        ``"population"`` or the fit's path.
    n_runs : float
        Runs behind it (effective number under the kernel weights).
    base_rate : dict or None
        ``{"k", "n", "p", "cell", "end_shares"}``: population runs at the same prior and N (``cell`` True)
        or kernel-weighted neighbours (False); ``p`` = (k + ½)/(n + 1).
    """

    names: list
    domains: list
    mean: np.ndarray
    cov: np.ndarray
    dispersion: dict
    options: dict
    source: str
    n_runs: float
    base_rate: dict | None = None

    def to_dict(self) -> dict:
        return {"names": list(self.names), "domains": list(self.domains), "mean": self.mean.tolist(),
                "cov": self.cov.tolist(), "sd": np.sqrt(np.diag(self.cov)).tolist(), "dispersion": self.dispersion,
                "options": self.options, "source": self.source, "n_runs": self.n_runs, "base_rate": self.base_rate}

    @classmethod
    def from_dict(cls, d: dict) -> "PopulationPrior":
        return cls(list(d["names"]), list(d["domains"]), np.asarray(d["mean"], float), np.asarray(d["cov"], float),
                   dict(d["dispersion"]), dict(d["options"]), d["source"], float(d["n_runs"]), d.get("base_rate"))

    @classmethod
    def from_population(cls, fits: list[RunFit], n_envs: int, p0: float, *, threshold: float = 0.5,
                        bandwidth: float = 0.5, exclude: set | None = None) -> "PopulationPrior":
        """Kernel-weighted normal over per-run fits, centred on the target's (log N, log p0).

        Weights exp(−d² / 2h²) with d the Euclidean distance in (log N, log p0) and h = ``bandwidth``;
        covariance = weighted covariance + 0.01 I (a ridge). Dispersion: pooled over the runs (mean φ_c). Non-converged fits are used only when fewer than
        five converged fits remain. ``exclude``: stage-1 models left out (leave-one-stage-1-model-out).

        Raises
        ------
        ValueError
            Fewer than three usable fits, or fits with different parameters or options.
        """
        exclude = exclude or set()
        fits = [f for f in fits if f.stage1 not in exclude]
        good = [f for f in fits if f.converged and all(np.isfinite(list(f.values.values())))]
        if len(good) < 5:
            good = [f for f in fits if all(np.isfinite(list(f.values.values())))]
        if len(good) < 3:
            raise ValueError(f"a population prior needs at least 3 fitted runs, got {len(good)}")
        names = list(good[0].values)
        if any(list(f.values) != names for f in good) or any(f.options != good[0].options for f in good):
            raise ValueError("population fits have different parameters or model options: refit them together")
        domains = [good[0].domains[n] for n in names]
        x = _to_scale(np.array([[f.values[n] for n in names] for f in good]), domains)
        d2 = np.array([(math.log(f.n_envs) - math.log(n_envs)) ** 2 + (math.log(f.p0) - math.log(p0)) ** 2
                       for f in good])
        w = np.exp(-d2 / (2 * bandwidth**2))
        w = w / w.sum()
        mean = w @ x
        cov = (x - mean).T @ ((x - mean) * w[:, None]) / max(1 - (w**2).sum(), 1e-9) + 0.01 * np.eye(len(names))
        # pooled quasi-likelihood dispersion: Σ χ² / Σ dof over the runs (equal dof: the mean of their φ)
        disp = {c: float(max(1.0, np.nanmean([f.dispersion.get(c, np.nan) for f in good]))) for c in "pab"}
        # base rate: same cell (prior and N), else kernel-weighted over every fit with an end state
        ended = [f for f in fits if f.end is not None]
        cell = [f for f in ended if f.n_envs == n_envs and abs(f.p0 - p0) <= 1e-9 * max(1.0, p0)]
        if cell:
            k = float(sum(f.end[1] > threshold for f in cell))
            n = float(len(cell))
            shares = sorted(f.end[1] for f in cell)
        elif ended:
            we = np.exp(-np.array([(math.log(f.n_envs) - math.log(n_envs)) ** 2 + (math.log(f.p0) - math.log(p0)) ** 2
                                   for f in ended]) / (2 * bandwidth**2))
            k = float(we @ np.array([f.end[1] > threshold for f in ended], float))
            n = float(we.sum())
            shares = [f.end[1] for f in ended]
        base = None
        if ended:
            base = {"k": k, "n": n, "p": (k + 0.5) / (n + 1), "cell": bool(cell), "end_shares": list(shares)}
        return cls(names, domains, mean, cov, disp, good[0].options, "population", float(1 / (w**2).sum()), base)

    @classmethod
    def from_fit(cls, fit_dir: str | Path) -> "PopulationPrior":
        """The prior of a saved fit (``fit.json`` of ``physrl fit``): estimates ± standard errors (natural scales).

        Unidentified parameters get a broad sd (a factor 10 for scales, 2 logits, 0.5 for values in [0, 1]);
        the initial state is not taken (the target run's own step-0 measurement is). Model options: the fit's.

        Raises
        ------
        ValueError
            If the file is missing or not a fit.
        """
        path = Path(fit_dir)
        path = path / "fit.json" if path.is_dir() else path
        if not path.exists():
            raise ValueError(f"{fit_dir}: no fit.json (a folder written by `physrl fit --out`)")
        try:
            doc = json.loads(path.read_text())
            params, spec = doc["params"], doc["spec"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a fit.json of physrl fit ({exc})") from None
        names, domains, mean, sd = [], [], [], []
        for name, p in params.items():
            kind = p.get("kind")
            if not p.get("vary") or kind in ("p0", "a0", "b0"):
                continue
            dom = _DOMAIN_OF_KIND.get(kind, "unit")
            v = float(p["value"])
            se = p.get("stderr")
            t = float(_to_scale(np.array([v]), [dom])[0])
            if p.get("identified") and se is not None and math.isfinite(se):
                s = {"scale": se / max(v, 1e-12), "prob": se / max(v * (1 - v), 1e-12)}.get(dom, se)
            else:
                s = _BROAD_SD[dom]
            names.append(name)
            domains.append(dom)
            mean.append(t)
            sd.append(max(s, 1e-3))
        diag = doc.get("diagnostics", {}) or {}
        disp = {c: float(max(1.0, (diag.get("component_dispersion") or {}).get(c) or 1.0)) for c in "pab"}
        options = {k: v for k, v in spec.items() if k != "step0"}
        return cls(names, domains, np.array(mean), np.diag(np.square(sd)), disp, options, str(path), math.nan, None)


# ---- results ----------------------------------------------------------------------------------------------
@dataclass
class EndForecast:
    """One method's forecast of the end state.

    Attributes
    ----------
    method : str
    share : float or None
        Median forecast end share (probability in [0, 1]).
    band : (float, float) or None
        Predictive band of the measured end share at ``level``.
    p_rs_wins : float or None
        P(measured end share > threshold).
    note : str
    """

    method: str
    share: float | None
    band: tuple | None
    p_rs_wins: float | None
    note: str = ""

    def to_dict(self) -> dict:
        return {"method": self.method, "share": self.share, "band": None if self.band is None else list(self.band),
                "p_rs_wins": self.p_rs_wins, "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> "EndForecast":
        return cls(d["method"], d["share"], None if d["band"] is None else tuple(d["band"]), d["p_rs_wins"],
                   d.get("note", ""))


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
        ``sigmoid`` (the baseline's point curve).
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
                "prior": self.prior, "posterior": self.posterior, "seconds": self.seconds, "options": self.options}

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
        """Write ``forecast.json`` (and ``forecast.png``) into ``out``; returns the json's path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "forecast.json", self.to_dict())
        if figure:
            plot_forecast(self, out / "forecast.png")
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
        return "\n".join(lines)


# ---- baselines --------------------------------------------------------------------------------------------
def _beta_band(k: float, n: float, level: float) -> tuple[float, float]:
    t = (1 - level) / 2
    lo, hi = stats.beta.ppf([t, 1 - t], k + 0.5, n - k + 0.5)
    return float(lo), float(hi)


def persistence(curve: pd.DataFrame, threshold: float, level: float) -> EndForecast:
    """The last prefix share, its Jeffreys Beta(k + ½, n − k + ½) as band and P(share > threshold)."""
    last = curve.iloc[-1]
    k, n = float(last["k"]), float(last["n"])
    p_win = float(stats.beta.sf(threshold, k + 0.5, n - k + 0.5))
    return EndForecast("persistence", float(last["share"]), _beta_band(k, n, level), p_win,
                       f"share at step {int(last['step'])}")


def base_rate(prior: PopulationPrior | None, threshold: float, level: float) -> EndForecast:
    """The population's P(RS wins) at the target's prior and N, its end shares' quantiles as the band."""
    if prior is None or prior.base_rate is None:
        return EndForecast("base_rate", None, None, None, "no population given")
    b = prior.base_rate
    shares = np.asarray(b["end_shares"], float)
    t = (1 - level) / 2
    where = "same prior and N" if b["cell"] else "kernel-weighted neighbours (no run at this prior and N)"
    return EndForecast("base_rate", float(np.median(shares)),
                       (float(np.quantile(shares, t)), float(np.quantile(shares, 1 - t))), float(b["p"]),
                       f"{b['k']:.3g} of {b['n']:.3g} population runs ended above {threshold:g} ({where})")


def scalerl_curve(t, r0: float, a: float, b: float, t_mid: float) -> np.ndarray:
    """ScaleRL's sigmoid (Khatri et al. 2025, eq. 1) in steps: R0 + (A − R0) / (1 + (t_mid / t)^B); R(0) = R0."""
    t = np.asarray(t, float)
    with np.errstate(divide="ignore", over="ignore"):
        ratio = np.where(t > 0, (t_mid / np.maximum(t, 1e-300)) ** b, np.inf)
    return r0 + (a - r0) / (1 + ratio)


def fit_sigmoid(steps, k, n, r0: float, horizon: float, start=None) -> tuple[np.ndarray, float]:
    """Fit (A, B, t_mid) of :func:`scalerl_curve` to counts k of n at ``steps`` > 0 (binomial deviance).

    A in [0, 1], B in [0.1, 20], t_mid in [1, 100·horizon] (log scale). Nine starts (A × t_mid), the best by
    deviance; one from ``start`` (A, B, t_mid) when given (the bootstrap's refits).

    Returns
    -------
    (params (A, B, t_mid), deviance)
    """
    steps, k, n = (np.asarray(v, float) for v in (steps, k, n))
    keep = steps > 0
    steps, k, n = steps[keep], k[keep], n[keep]

    def resid(theta):
        a, b, lt = theta
        mu = np.clip(scalerl_curve(steps, r0, a, b, math.exp(lt)), 1e-9, 1 - 1e-9)
        dev = 2 * (special.xlogy(k, k / (n * mu)) + special.xlogy(n - k, (n - k) / (n * (1 - mu))))
        return np.sign(k - n * mu) * np.sqrt(np.maximum(dev, 0))

    lo, hi = [0.0, 0.1, 0.0], [1.0, 20.0, math.log(100 * horizon)]
    last = float(steps.max()) if steps.size else horizon
    starts = ([(a0, 2.0, tm) for a0 in (0.1, 0.5, 0.95) for tm in (0.5 * last, 2 * last, 8 * last)]
              if start is None else [tuple(start)])
    best = None
    for a0, b0, tm in starts:
        x0 = np.clip([a0, b0, math.log(max(tm, 1.0))], np.add(lo, 1e-6), np.subtract(hi, 1e-6))
        r = optimize.least_squares(resid, x0, bounds=(lo, hi), method="trf")
        if best is None or r.cost < best.cost:
            best = r
    a, b, lt = best.x
    return np.array([a, b, math.exp(lt)]), float(2 * best.cost)


def sigmoid(curve: pd.DataFrame, budget: int, threshold: float, level: float, *, phi: float = 1.0,
            n_boot: int = 40, seed: int = 0) -> tuple[EndForecast, np.ndarray]:
    """ScaleRL-style baseline: :func:`fit_sigmoid` on the prefix, extrapolated to ``budget``.

    Band and probability: a parametric bootstrap (``n_boot`` replicates of the prefix counts drawn
    beta-binomially around the fitted curve with dispersion max(Pearson χ²/dof, ``phi``, 1), refitted), each
    replicate's end share with the end eval pass's sampling noise (same dispersion). Replicates are refitted from
    the prefix's fit (one start each).

    Returns
    -------
    (EndForecast, point curve at steps 0..budget)
    """
    rng = np.random.default_rng(seed)
    steps, k, n = (curve[c].to_numpy(float) for c in ("step", "k", "n"))
    r0 = float((k[0] + 0.5) / (n[0] + 1)) if steps[0] == 0 else 0.0
    theta, _ = fit_sigmoid(steps, k, n, r0, budget)
    mu = np.clip(scalerl_curve(steps, r0, *theta), 1e-9, 1 - 1e-9)
    keep = steps > 0
    dof = int(keep.sum()) - 3
    pearson = float((((k - n * mu) ** 2) / (n * mu * (1 - mu)))[keep].sum())
    disp = max(1.0, phi, pearson / dof if dof > 0 else 1.0)
    n_end = float(n[-1])
    ends = []
    for _ in range(n_boot):
        kb = _overdispersed(rng, n, mu, disp)
        kb[~keep] = k[~keep]
        th, _ = fit_sigmoid(steps, kb, n, r0, budget, start=theta)
        end = float(np.clip(scalerl_curve([budget], r0, *th)[0], 1e-9, 1 - 1e-9))
        ends.append(_overdispersed(rng, np.array([n_end]), np.array([end]), disp)[0] / n_end)
    ends = np.asarray(ends)
    t = (1 - level) / 2
    point = float(scalerl_curve([budget], r0, *theta)[0])
    grid = np.arange(0, budget + 1)
    note = f"A = {theta[0]:.3f}, B = {theta[1]:.3g}, t_mid = {theta[2]:.4g} steps, dispersion {disp:.2f}"
    # P(win): bootstrap share, shrunk by one pseudo-count each way so a finite bootstrap never says 0 or 1
    p_win = float(((ends > threshold).sum() + 0.5) / (len(ends) + 1))
    return (EndForecast("sigmoid", point, (float(np.quantile(ends, t)), float(np.quantile(ends, 1 - t))), p_win,
                        note), scalerl_curve(grid, r0, *theta))


def _overdispersed(rng, n: np.ndarray, mu: np.ndarray, phi: float) -> np.ndarray:
    """Counts of n trials around probabilities mu with variance φ n μ (1 − μ) (beta-binomial), φ ≥ 1."""
    n = np.asarray(n, float)
    mu = np.clip(np.asarray(mu, float), 1e-9, 1 - 1e-9)
    rho = np.clip((phi - 1) / np.maximum(n - 1, 1), 0, 0.999)
    if np.all(rho <= 1e-9):
        return rng.binomial(n.astype(int), mu).astype(float)
    conc = (1 - rho) / np.maximum(rho, 1e-9)
    p = rng.beta(mu * conc, (1 - mu) * conc)
    return rng.binomial(n.astype(int), p).astype(float)


# ---- the model's forecast ---------------------------------------------------------------------------------
def _rate_proxy(values: np.ndarray, names: list[str], spread: float) -> np.ndarray:
    """Per draw, time scale × largest learnability × ``spread`` / 4 (per optimizer step): sim's stability bound
    (docs/model.md §8: α |Σ_j C_ij w_j| / 4) with |Σ_j C_ij w_j| ≤ ``spread`` (max w without transfer, Σ w with)."""
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
        No budget known, ``at`` not before the budget or before the first logged step, both or neither of
        ``prior`` / ``population``, a population too small, or a prior that does not match the model.
    """
    t0 = time.perf_counter()
    if not isinstance(run, Run):
        run = load_runs([run])[0]
    budget = budget_of(run) if budget is None else int(budget)
    if budget is None:
        raise ValueError(f"run {run.run_id}: its manifest gives no budget (steps); pass budget=")
    if not 0 <= at < budget:
        raise ValueError(f"at = {at} must lie in [0, budget = {budget})")
    if (prior is None) == (population is None):
        raise ValueError("give exactly one of prior= (a fit or a ready prior) and population= (finished runs)")
    if prior is None:
        fits = population
        if fits and not isinstance(fits[0], RunFit):
            fits = fit_population(fits, options=options, cache_dir=cache_dir)
        fits = [f for f in fits if f.run_id != run.run_id]
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
                 "base_rate": base_rate(prior, threshold, level)}
    return Forecast(
        run.run_id, str(run.source), int(at), int(budget), float(threshold), float(level), model, baselines, cross,
        {"step": curve["step"].tolist(), "k": curve["k"].tolist(), "n": curve["n"].tolist(),
         "share": curve["share"].tolist()},
        {"step": grid.tolist(), "lower": qs[0].tolist(), "median": qs[1].tolist(), "upper": qs[2].tolist(),
         "sigmoid": sig_curve[grid].tolist()},
        truth, prior.to_dict(),
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


# ---- figure -----------------------------------------------------------------------------------------------
def plot_forecast(fc: Forecast, path: str | Path) -> None:
    """The prefix, the model's band to the budget, the baselines' end forecasts and the truth when known (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.6))
    pre = fc.prefix
    lo, hi = _beta_band_arrays(pre["k"], pre["n"], 0.9)
    ax.errorbar(pre["step"], pre["share"], yerr=[np.subtract(pre["share"], lo), np.subtract(hi, pre["share"])],
                fmt="o", color="k", ms=4, lw=1, label=f"observed RS share (to step {fc.at}; 90% Jeffreys)")
    c = fc.curve
    ax.fill_between(c["step"], c["lower"], c["upper"], color="C0", alpha=0.25,
                    label=f"ODE + population prior, {int(fc.level * 100)}% band of the share")
    ax.plot(c["step"], c["median"], color="C0", lw=2, label="ODE median")
    ax.plot(c["step"], c["sigmoid"], color="C1", lw=1.5, ls="--", label="ScaleRL sigmoid (point)")
    ax.axvline(fc.at, color="grey", lw=1, ls=":")
    ax.axhline(fc.threshold, color="grey", lw=0.8)
    x_end = fc.budget
    colours = {"ode": "C0", "sigmoid": "C1", "persistence": "C2", "base_rate": "C3"}
    for i, (name, m) in enumerate(fc.methods.items()):
        if m.share is None:
            continue
        x = x_end + (i + 1) * 0.025 * fc.budget
        ax.errorbar([x], [m.share], yerr=[[m.share - m.band[0]], [m.band[1] - m.share]], fmt="s",
                    color=colours.get(name, "k"), capsize=3, ms=5,
                    label=f"{name} at budget: P(RS wins) = {m.p_rs_wins:.2f}")
    if fc.truth is not None:
        ax.plot([fc.truth["step"]], [fc.truth["share"]], marker="*", color="crimson", ms=14, ls="none",
                label=f"truth at step {fc.truth['step']}: {fc.truth['share']:.2f}")
    cr = fc.crossing
    if cr.get("step") is not None and cr.get("band") is not None:
        ax.errorbar([cr["step"]], [0.5], xerr=[[cr["step"] - cr["band"][0]], [cr["band"][1] - cr["step"]]],
                    fmt="v", color="C4", capsize=3, label=f"passes 0.5 (P = {cr['p_cross']:.2f}), band")
    ax.set_xlim(-0.02 * fc.budget, fc.budget * 1.13)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("RS share (trained envs, eval)")
    ax.set_title(f"{fc.run_id}: forecast from step {fc.at} of {fc.budget}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _beta_band_arrays(k, n, level):
    k, n = np.asarray(k, float), np.asarray(n, float)
    t = (1 - level) / 2
    return stats.beta.ppf(t, k + 0.5, n - k + 0.5), stats.beta.ppf(1 - t, k + 0.5, n - k + 0.5)
