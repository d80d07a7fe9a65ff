"""The population prior of a forecast: per-run fits of finished runs, or a saved fit (issue 23).

Empirical Bayes over stage-1 models: each finished run is fitted alone (:func:`fit_run`, :func:`fitting.fit`
with the initial state at its step-0 measurement, docs/model.md §7), and the spread of their rates and transfers,
kernel-weighted by distance to the target in (log N, log p0), is the prior a forecast's prefix updates
(:class:`PopulationPrior`). The same population gives the base rate of the end state at the target's prior and N.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import special

from physrl.contract import Run, load_runs

from ._endstate import _trim, budget_of, end_share, nominal_prior, prefix, stage1_model
from ._json import write_json
from ._problem import FitSpec

#: default model options (keyword arguments of fitting.fit / FitSpec) for one run on its own: transfer between
#: identical environments only rescales the rates (docs/model.md §3), which a per-run fit cannot tell apart; the
#: observation floors named, so a cache written under the manifest's declared floors is never read as this one's
DEFAULT_OPTIONS = {"transfer": "none", "phases": ("eval",), "observation": "stage1"}


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
        One JSON per (run, row count, options, budget); a hit is read instead of refitted; an unreadable entry
        (a killed write, a hand edit) is refitted and overwritten with a warning naming the file.
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
            try:
                out.append(RunFit.from_dict(json.loads(path.read_text())))
                continue
            except (ValueError, KeyError, TypeError) as exc:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
                warnings.warn(f"cache entry {path} of run {run.run_id} is unreadable ({exc}): refitting the run and "
                              "overwriting it", stacklevel=2)
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
        covariance = weighted covariance + 0.01 I (a ridge). Dispersion: pooled over the runs (mean φ_c).
        Non-converged fits are used only when fewer than
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


