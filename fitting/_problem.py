"""The fit as data: lmfit Parameters, their map onto the batched model, and the likelihood.

Parametrisation (docs/model.md §2, §6). Observations are indexed by optimizer
steps, and in step units the ODE only sees the products ``time_scale · α``:
α_z and the time scale are degenerate. We fix **α_z = 1** (the model time
unit, as docs/model.md §2 does for one environment) and fit ``time_scale`` (model
time per optimizer step) and the *normalised* learnabilities ``alpha_x`` and
``alpha_y`` (relative to α_z). With per-environment learnabilities, α_z of
the first environment is the fixed unit and the others are relative to it.

Parameter names (valid Python identifiers, as lmfit requires):

- ``p0_r<i>`` prior RS propensity of run i (runs may differ in p0);
  per-environment priors: ``p0_r<i>_e<j>``;
- ``a0``, ``b0`` priors of RS and local skill shared by all runs;
  per-environment: ``a0_e<j>``, ``b0_e<j>`` (j indexes env ids over all runs);
- ``time_scale``; ``alpha_z`` (fixed 1), ``alpha_x``, ``alpha_y``;
  per-environment: ``alpha_x_e<j>`` ...;
- transfer: ``c_z, c_x, c_y`` in [0, 1] (homogeneous) or
  ``length_scale_z, ...`` > 0 (kernel, in the manifest's coordinate units);
- ``lam``: footnote-4 λ >= 0 when that variant is on.

Likelihood: RS counts are binomial (n_rs of n, probability p); rewards are
binomial (summed reward of a_n rollouts, probability a or b) when all
rewards of the run are 0/1, otherwise Gaussian around a (b) with the
observed standard error (variance floored at 1e-4, 0.25 when fewer than two
rollouts). Residuals handed to lmfit are signed deviance residuals, so
``chisqr`` is the deviance, ``-2 log L`` up to a data-only constant, and
least squares is maximum likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lmfit
import numpy as np
import pandas as pd
import torch
from scipy.special import gammaln

from physrl.contract import Run

from ._engine import MAX_SUBSTEPS, TRANSFERS, BatchConfig, UnstableStep, simulate

PROB_MIN, PROB_MAX = 1e-4, 1 - 1e-4
SCALE_PARAMS = ("alpha", "time_scale", "length_scale")


@dataclass
class FitSpec:
    """Which variant of the model to fit.

    Attributes
    ----------
    transfer : {"none", "homogeneous", "kernel"}
        No transfer (C = I), one c per latent (docs/model.md §3), or one Gaussian
        length scale per latent over the manifest's coordinates (§4).
    priors : {"shared", "per_env"}
        a0, b0 shared by every env (p0 one per run), or one per env id
        (p0 one per run and env).
    learnabilities : {"shared", "per_env"}
        α_x, α_y shared, or one per env id (then α_z too, first env fixed at 1).
    lam : bool
        Fit footnote-4 λ (else λ = 0).
    phases : tuple of str
        Which rollout phases are observations ("eval" and/or "train").
    substeps : int
        Euler steps per optimizer step.
    """

    transfer: str = "homogeneous"
    priors: str = "shared"
    learnabilities: str = "shared"
    lam: bool = False
    phases: tuple[str, ...] = ("eval", "train")
    substeps: int = 1

    def __post_init__(self):
        if self.transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {TRANSFERS}, got {self.transfer!r}")
        for name in ("priors", "learnabilities"):
            if getattr(self, name) not in ("shared", "per_env"):
                raise ValueError(f"{name} must be 'shared' or 'per_env', got {getattr(self, name)!r}")
        bad = set(self.phases) - {"eval", "train"}
        if bad or not self.phases:
            raise ValueError(f"phases must be a non-empty subset of ('eval', 'train'), got {self.phases!r}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")


def kind_of(name: str) -> str:
    """'prob' for parameters in (0, 1), 'scale' for positive scales, 'lam' for λ >= 0."""
    if name == "lam":
        return "lam"
    if name.startswith(SCALE_PARAMS):
        return "scale"
    return "prob"


@dataclass
class _Component:
    """One family of residuals (p, a or b): where each datum sits and its likelihood."""

    latent: str          # "p", "a" or "b"
    t: np.ndarray        # index into config.steps
    r: np.ndarray        # run index
    e: np.ndarray        # env slot within the run
    k: np.ndarray        # successes (binomial) or mean (gaussian)
    n: np.ndarray        # trials (binomial) or standard error (gaussian)
    binomial: np.ndarray  # bool per datum


@dataclass
class Problem:
    """Observations of several runs, the parameters that explain them, and the residual.

    Build with :meth:`Problem.build`. ``residuals(theta)`` evaluates B
    parameter vectors in one batched integration; ``jacobian`` computes
    forward differences with all P+1 vectors in one integration too.
    """

    spec: FitSpec
    run_ids: list[str]
    env_ids: list[str]                  # global env ids (index j of the *_e<j> names)
    run_env_ids: list[list[str]]
    config: BatchConfig
    params: lmfit.Parameters
    names: list[str]                    # every parameter (varying and fixed), θ_full order
    index: dict[str, np.ndarray]        # physical quantity -> column of θ_full, shape (R, N) or (1,)
    components: list[_Component]
    log_const: float                    # log L = -deviance / 2 + log_const
    n_data: int
    notes: list[str] = field(default_factory=list)
    max_substeps: int = MAX_SUBSTEPS    # cap on Euler steps per optimizer step (see _engine.simulate)
    _cache: dict = field(default_factory=dict)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def build(cls, runs: list[Run], obs: pd.DataFrame, spec: FitSpec) -> "Problem":
        """Lay out parameters and data for ``runs`` (observations from :func:`fitting.observations`).

        Raises
        ------
        ValueError
            No observations in the chosen phases, kernel transfer without
            coordinates, or environments with different coordinate dimensions.
        """
        notes: list[str] = []
        obs = obs[obs["phase"].isin(spec.phases)]
        if obs.empty:
            raise ValueError(f"no observations in phases {spec.phases}")
        run_ids = [r.run_id for r in runs]
        run_env_ids = [r.env_ids for r in runs]
        env_ids = list(dict.fromkeys(e for ids in run_env_ids for e in ids))
        n_runs, n_envs = len(runs), max(len(ids) for ids in run_env_ids)
        w = np.zeros((n_runs, n_envs))
        valid = np.zeros((n_runs, n_envs), bool)
        coords = None
        if spec.transfer == "kernel":
            dims = {len(e.coordinates) for r in runs for e in r.environments if e.coordinates is not None}
            missing = [r.run_id for r in runs if any(e.coordinates is None for e in r.environments)]
            if missing or len(dims) != 1:
                raise ValueError("kernel transfer needs coordinates for every environment in the manifest "
                                 f"(missing in runs {missing})" if missing else
                                 f"environment coordinates have different dimensions {sorted(dims)}")
            coords = np.zeros((n_runs, n_envs, dims.pop()))
        for i, run in enumerate(runs):
            for j, env in enumerate(run.environments):
                w[i, j], valid[i, j] = env.w, True
                if coords is not None:
                    coords[i, j] = env.coordinates
            if not (w[i] > 0).any():
                notes.append(f"run {run.run_id}: no environment has w > 0 (nothing trains)")
        steps = np.unique(obs["step"].to_numpy(np.int64))
        config = BatchConfig(w, valid, coords, steps)

        params, index, names = _parameters(runs, run_env_ids, env_ids, obs, spec, n_envs)
        components, log_const, n_data = _components(obs, run_ids, run_env_ids, steps)
        return cls(spec, run_ids, env_ids, run_env_ids, config, params, names, index, components,
                   log_const, n_data, notes)

    # ---- parameter vectors ------------------------------------------------------------------
    @property
    def var_names(self) -> list[str]:
        """Names of the varying parameters, in lmfit's order."""
        return [n for n, p in self.params.items() if p.vary]

    def full(self, params: lmfit.Parameters | None = None) -> np.ndarray:
        """θ_full (every parameter's value, in ``names`` order) of ``params``."""
        params = self.params if params is None else params
        return np.array([params[n].value for n in self.names], dtype=float)

    def expand(self, theta_var: np.ndarray, names: list[str], base: np.ndarray) -> np.ndarray:
        """Batch of θ_full from values of the parameters ``names``, shape (B, len(names))."""
        theta_var = np.atleast_2d(theta_var)
        out = np.repeat(base[None, :], theta_var.shape[0], axis=0)
        cols = [self.names.index(n) for n in names]
        out[:, cols] = theta_var
        return out

    def physical(self, theta_full: np.ndarray) -> dict[str, torch.Tensor]:
        """Map θ_full, shape (B, P_all), to the inputs of :func:`fitting._engine.simulate`."""
        th = torch.as_tensor(np.atleast_2d(theta_full), dtype=torch.float64)
        out = {}
        for key, idx in self.index.items():
            if idx.ndim == 2:          # per (run, env)
                out[key] = th[:, idx]  # (B, R, N)
            elif key in ("time_scale", "lam"):
                out[key] = th[:, idx[0]].reshape(-1, 1, 1)
            else:                      # per-latent transfer value, one per run
                out[key] = th[:, idx[0]].reshape(-1, 1).expand(-1, self.config.n_runs)
        return out

    def predict_states(self, theta_full: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(p, a, b), each (T, B, R, N), for a batch of θ_full."""
        return simulate(self.config, self.physical(theta_full), self.spec.transfer, self.spec.substeps,
                        max_substeps=self.max_substeps)

    # ---- likelihood -------------------------------------------------------------------------
    def residuals_full(self, theta_full: np.ndarray) -> np.ndarray:
        """Signed deviance residuals, shape (B, M), for a batch of θ_full (B, P_all)."""
        try:
            p, a, b = self.predict_states(theta_full)
        except UnstableStep as exc:  # far outside the data's range: a wall the optimizer backs off from
            self._cache["rejected"] = self._cache.get("rejected", 0) + 1
            return np.full((np.atleast_2d(theta_full).shape[0], self.n_data), 1e6)
        states = {"p": p, "a": a, "b": b}
        pieces = []
        for comp in self.components:
            mu = states[comp.latent][comp.t, :, comp.r, comp.e].T  # (B, M_c)
            pieces.append(_deviance_residuals(comp, mu))
        res = torch.cat(pieces, dim=1).numpy()
        bad = ~np.isfinite(res)
        if bad.any():  # never silently: the simulation left the valid range
            res = np.where(bad, 1e6, res)
            self._cache["nonfinite"] = self._cache.get("nonfinite", 0) + int(bad.sum())
        return res

    def residual(self, params: lmfit.Parameters) -> np.ndarray:
        """lmfit objective: residual vector (M,) at ``params``."""
        theta = self.full(params)
        key = theta.tobytes()
        cached = self._cache.get("res")
        if cached is not None and cached[0] == key:
            return cached[1]
        res = self.residuals_full(theta[None, :])[0]
        self._cache["res"] = (key, res)
        return res

    def jacobian(self, params: lmfit.Parameters, rel_step: float = 1e-6) -> np.ndarray:
        """Forward-difference Jacobian (M, P_vary) w.r.t. the external parameter values.

        All P + 1 parameter vectors are integrated in one batched call (lmfit
        ``Dfun``, derivatives across the rows, ``col_deriv=False``).
        """
        names = [n for n, p in params.items() if p.vary]
        self._cache["n_jacobians"] = self._cache.get("n_jacobians", 0) + 1
        theta = self.full(params)
        batch = np.repeat(theta[None, :], len(names) + 1, axis=0)
        steps = np.empty(len(names))
        for j, name in enumerate(names):
            par = params[name]
            h = rel_step * max(abs(par.value), 0.05)
            if par.value + h > par.max:
                h = -h
            steps[j] = h
            batch[j + 1, self.names.index(name)] += h
        res = self.residuals_full(batch)
        self._cache["res"] = (theta.tobytes(), res[0])
        return (res[1:] - res[0]).T / steps

    def loglik(self, deviance: float) -> float:
        """log L from the deviance (sum of squared residuals)."""
        return -0.5 * deviance + self.log_const


def _deviance_residuals(comp: _Component, mu: torch.Tensor) -> torch.Tensor:
    k = torch.as_tensor(comp.k)
    n = torch.as_tensor(comp.n)
    binom = torch.as_tensor(comp.binomial)
    mu = mu.clamp(1e-12, 1 - 1e-12)
    # binomial: d = 2 [k log(k / n mu) + (n - k) log((n - k) / n (1 - mu))]
    safe_n = torch.where(binom, n, torch.ones_like(n))
    rest = safe_n - k
    t1 = torch.where(k > 0, k * torch.log(k.clamp_min(1e-300) / (safe_n * mu)), torch.zeros_like(mu))
    t2 = torch.where(rest > 0, rest * torch.log(rest.clamp_min(1e-300) / (safe_n * (1 - mu))),
                     torch.zeros_like(mu))
    dev = (2 * (t1 + t2)).clamp_min(0)
    r_binom = torch.sign(k - safe_n * mu) * torch.sqrt(dev)
    r_gauss = (k - mu) / torch.where(binom, torch.ones_like(n), n)
    return torch.where(binom, r_binom, r_gauss)


def _components(obs: pd.DataFrame, run_ids, run_env_ids, steps) -> tuple[list[_Component], float, int]:
    run_pos = {r: i for i, r in enumerate(run_ids)}
    env_pos = [{e: j for j, e in enumerate(ids)} for ids in run_env_ids]
    r = obs["run_id"].map(run_pos).to_numpy(int)
    e = np.array([env_pos[ri][ei] for ri, ei in zip(r, obs["env_id"])], dtype=int)
    t = np.searchsorted(steps, obs["step"].to_numpy(np.int64))
    binary = obs["binary"].to_numpy(bool)
    comps = []
    log_const = 0.0
    n_data = 0
    # p: binomial counts
    n = obs["n"].to_numpy(float)
    k = obs["n_rs"].to_numpy(float)
    keep = n > 0
    comps.append(_Component("p", t[keep], r[keep], e[keep], k[keep], n[keep], np.ones(keep.sum(), bool)))
    for lat in ("a", "b"):
        n_l = obs[f"{lat}_n"].to_numpy(float)
        s = obs[f"{lat}_sum"].to_numpy(float)
        se = obs[f"{lat}_se"].to_numpy(float)
        keep = n_l > 0
        mean = np.where(keep, s / np.where(keep, n_l, 1), 0.0)
        var = np.where(np.isfinite(se) & (n_l > 1), se**2 * n_l, 0.25)
        gauss_se = np.sqrt(np.maximum(var, 1e-4) / np.where(keep, n_l, 1))
        kk = np.where(binary, s, mean)
        nn = np.where(binary, n_l, gauss_se)
        comps.append(_Component(lat, t[keep], r[keep], e[keep], kk[keep], nn[keep], binary[keep]))
    for comp in comps:
        n_data += len(comp.k)
        b = comp.binomial
        k_, n_ = comp.k[b], comp.n[b]
        # saturated binomial log-likelihood (log L at mu = k / n), so that log L = -dev/2 + const
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(n_ > 0, k_ / np.where(n_ > 0, n_, 1), 0)
            sat = (gammaln(n_ + 1) - gammaln(k_ + 1) - gammaln(n_ - k_ + 1)
                   + np.where(k_ > 0, k_ * np.log(np.where(frac > 0, frac, 1)), 0)
                   + np.where(n_ - k_ > 0, (n_ - k_) * np.log(np.where(frac < 1, 1 - frac, 1)), 0))
        log_const += float(sat.sum())
        log_const += float((-np.log(comp.n[~b]) - 0.5 * np.log(2 * np.pi)).sum())
    return comps, log_const, n_data


def _pooled_first(obs: pd.DataFrame, mask: np.ndarray, num: str, den: str, default: float) -> float:
    sub = obs[mask]
    if sub.empty:
        return default
    first = sub[sub["step"] == sub["step"].min()]
    total = float(first[den].sum())
    if total <= 0:
        return default
    return float(np.clip(first[num].sum() / total, 0.02, 0.98))


def _start(estimate, default: float = 0.2) -> float:
    """A start value for a prior from a measured share: clipped into [0.02, 0.98]."""
    if estimate is None or not estimate.n:
        return default
    return float(np.clip(estimate.share, 0.02, 0.98))


def _parameters(runs, run_env_ids, env_ids, obs, spec: FitSpec, n_envs: int):
    params = lmfit.Parameters()
    n_runs = len(runs)
    index: dict[str, np.ndarray] = {}
    names: list[str] = []

    def add(name, value, vary=True, lo=-np.inf, hi=np.inf):
        params.add(name, value=value, vary=vary, min=lo, max=hi)
        names.append(name)
        return len(names) - 1

    everywhere = np.ones(len(obs), bool)
    # priors: p0 per run (or per run and env), started at the run's measured prior
    # (Run.measured_prior, every env pooled); a0, b0 shared (or per env id)
    p0_idx = np.zeros((n_runs, n_envs), int)
    for i, run in enumerate(runs):
        try:
            prior = run.measured_prior(phases=spec.phases, env_ids=run.env_ids)
        except ValueError:  # no rows of this run in these phases
            prior = None
        if spec.priors == "shared":
            guess = _start(prior.pooled if prior else None)
            p0_idx[i, :] = add(f"p0_r{i}", guess, True, PROB_MIN, PROB_MAX)
        else:
            for j, env in enumerate(run_env_ids[i]):
                p0_idx[i, j] = add(f"p0_r{i}_e{env_ids.index(env)}", _start(prior.per_env.get(env) if prior else None),
                                   True, PROB_MIN, PROB_MAX)
    index["p0"] = p0_idx
    for lat in ("a", "b"):
        idx = np.zeros((n_runs, n_envs), int)
        if spec.priors == "shared":
            col = add(f"{lat}0", _pooled_first(obs, everywhere, f"{lat}_sum", f"{lat}_n", 0.5), True,
                      PROB_MIN, PROB_MAX)
            idx[:] = col
        else:
            cols = {}
            for env in env_ids:
                mask = (obs["env_id"] == env).to_numpy()
                cols[env] = add(f"{lat}0_e{env_ids.index(env)}",
                                _pooled_first(obs, mask, f"{lat}_sum", f"{lat}_n", 0.5), True, PROB_MIN, PROB_MAX)
            for i, ids in enumerate(run_env_ids):
                for j, env in enumerate(ids):
                    idx[i, j] = cols[env]
                idx[i, len(ids):] = cols[ids[0]]  # padding reads any valid column
        index[f"{lat}0"] = idx
    index["time_scale"] = np.array([add("time_scale", 0.1, True, 1e-6, 1e3)])
    for lat in ("z", "x", "y"):
        idx = np.zeros((n_runs, n_envs), int)
        if spec.learnabilities == "shared":
            idx[:] = add(f"alpha_{lat}", 1.0, lat != "z", 1e-4, 1e3)
        else:
            cols = {}
            for g, env in enumerate(env_ids):
                cols[env] = add(f"alpha_{lat}_e{g}", 1.0, not (lat == "z" and g == 0), 1e-4, 1e3)
            for i, ids in enumerate(run_env_ids):
                for j, env in enumerate(ids):
                    idx[i, j] = cols[env]
                idx[i, len(ids):] = cols[ids[0]]
        index[f"alpha_{lat}"] = idx
    for lat in ("z", "x", "y"):
        if spec.transfer == "homogeneous":
            index[f"c_{lat}"] = np.array([add(f"c_{lat}", 0.5, True, 0.0, 1.0)])
        elif spec.transfer == "kernel":
            coords = np.array([e.coordinates for r in runs for e in r.environments], dtype=float)
            spread = float(np.sqrt(((coords - coords.mean(0)) ** 2).sum(1).mean())) or 1.0
            index[f"length_scale_{lat}"] = np.array([add(f"length_scale_{lat}", spread, True, 1e-3 * spread,
                                                         1e3 * spread)])
    if spec.lam:
        index["lam"] = np.array([add("lam", 0.1, True, 0.0, 10.0)])
    return params, index, names
