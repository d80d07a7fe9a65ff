"""The fit as data: lmfit Parameters with typed records, their map onto the batched model,
the observation model, the step-0 priors and the likelihood.

Parametrisation (docs/model.md §2, §6, §7). Observations are indexed by
optimizer steps, and in step units the ODE only sees the products
``time_scale · α``: α_z and the time scale are degenerate. We fix **α_z = 1**
(the model time unit) and fit ``time_scale`` (model time per optimizer step)
and the *normalised* learnabilities ``alpha_x`` and ``alpha_y`` (relative to
α_z). With per-environment learnabilities, α_z of the first environment is
the fixed unit and the others are relative to it.

Every parameter carries a :class:`ParamInfo` record (kind, latent, run,
environment, domain), held in :attr:`Problem.info` and in lmfit's
``Parameter.user_data``; nothing parses names. Names (valid identifiers, as
lmfit requires) are for people: ``p0_r<i>`` (run i's prior RS propensity;
``p0_r<i>_e<j>`` per environment), ``a0``, ``b0`` (latent priors σ(x0),
σ(y0); ``a0_e<j>`` ... per env id), ``time_scale``, ``alpha_z`` (fixed 1),
``alpha_x``, ``alpha_y``, ``c_z, c_x, c_y`` or ``length_scale_*``, ``lam``, ``gamma`` (``selection="power"``),
and with ``observation="fit"`` the shared bounds ``a_lo, a_hi, b_lo, b_hi``.

Observation model (docs/model.md §7): the logs measure a_obs = a_lo +
(a_hi − a_lo)·σ(x) and b_obs = b_lo + (b_hi − b_lo)·σ(y) (p directly); the
ODE is the gradient flow of the reward in those units. Bounds per
(run, environment) come from the manifest's ``observation`` entry with the
local floor ``b_lo`` measured per stage-1 model at its step 0
(``observation="stage1"``, the default; :mod:`fitting._step0`), from the
manifest as declared, else (0, 1) (``"manifest"``), are forced to (0, 1)
(``"unit"``), or are fitted (``"fit"``).

Step-0 priors (``step0``): the initial state is measured at each run's first
step. ``"free"`` (default) leaves p0, a0, b0 to the data, the step-0 rows
among them; ``"fixed"`` holds them at that measurement (its variance carried
into the other parameters' covariance); ``"prior"`` adds one penalty residual
per p0 / a0 / b0 parameter centred on that measurement with the measurement's
own spread (p: the logit of the Jeffreys Beta(k + ½, n − k + ½); a, b: the
pooled mean reward ± its standard error, in observed units). The step-0 rows
stay in the likelihood, so with ``"prior"`` the initial state is weighted
twice: a deliberate anchor of the initial conditions to what was measured.
Over 60 synthetic sets in each of three designs every mode's 95% intervals
held every parameter's truth in >= 88% of sets; ``"free"`` is the default
because it is unbiased with intervals several times narrower, while
``"fixed"`` conditions the dynamics on a noisy start and its linearised
(Murphy-Topel) intervals, wide enough on average, missed the time scale,
α_y, c_z and c_x together when a start was off (docs/fitting.md). On real logs a fitted initial state
can drift outside its step-0 interval (the ODE trades the initial state
against the shape of b's rise); the fit notes such drift, and ``"fixed"``
rules it out.

Likelihood: RS counts are binomial (n_rs of n, probability p); rewards are
binomial in their sum (summed reward of a_n rollouts, probability a_obs or
b_obs): exact for 0/1 rewards, a quasi-binomial (fractional) likelihood for
partial credit. Each component (p, a, b) gets a weight 1/√φ_c from its
Pearson dispersion (set by the fit, 1 before). Residuals handed to lmfit
are weighted signed deviance residuals followed by the prior residuals, so
``chisqr`` is the penalised deviance and least squares is (penalised,
quasi-) maximum likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lmfit
import numpy as np
import pandas as pd
import torch
from scipy import special, stats
from scipy.special import gammaln

from ._endstate import stage1_model
from ._engine import MAX_SUBSTEPS, TRANSFERS, BatchConfig, UnstableStep, simulate
from ._options import SELECTIONS
from ._step0 import (Stage1Floor, Step0, _first_rows, _p_step0, describe_floors, measure_step0,  # noqa: F401
                     stage1_floors, step0_from_prior)
from physrl.contract import Run


PROB_MIN, PROB_MAX = 1e-4, 1 - 1e-4
OBSERVATION_MODES = ("stage1", "manifest", "unit", "fit")
STEP0_MODES = ("free", "fixed", "prior")
#: residual given to lmfit where the simulation left its valid range
WALL = 1e6
#: Euler substeps per optimizer step allowed during the fit: a latent moving more than ~4 logits
#: per optimizer step is far outside anything eval points every few steps resolve, and each
#: substep costs a full pass over the steps
FIT_MAX_SUBSTEPS = 16
#: the cap a Jacobian batch may raise to when one probe is walled at FIT_MAX_SUBSTEPS and backward steps are
#: walled too (issue 18: the reference sweep's α_x probe needed more than 16; at 4096 every column was non-zero)
JACOBIAN_MAX_SUBSTEPS = 4096
#: how a Jacobian was computed (``Problem.last_jacobian``): forward differences; backward ones (a forward probe
#: was past the substep cap); forward with the cap raised to JACOBIAN_MAX_SUBSTEPS; or not at all (all zeros)
JACOBIAN_SCHEMES = ("forward", "backward", "raised cap", "walled")
#: largest optimizer step a fit or prediction integrates to: the ODE is Euler-stepped through every
#: step from 0 to the last logged one, so the cost grows linearly with it (measured at 15 residual
#: evaluations of a 3-env run: 0.6 s to step 1e4, 37 s to 1e6, 6 min to 1e7); one corrupted step
#: value of 1e15 would otherwise make ``physrl fit`` run for years
MAX_STEP = 1_000_000


def check_step_range(runs: list[Run]) -> None:
    """Refuse runs whose largest logged step is beyond :data:`MAX_STEP`.

    Raises
    ------
    ValueError
        Naming the run's source, the step and the limit.
    """
    for run in runs:
        if len(run.rollouts) == 0:
            continue
        last = int(run.rollouts["step"].max())
        if last > MAX_STEP:
            raise ValueError(f"{run.source}: step {last} (run {run.run_id!r}) is beyond the {MAX_STEP:,} optimizer "
                             "steps a fit integrates: the ODE is Euler-stepped through every step up to the last "
                             "logged one (a corrupted step value?)")


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
    observation : {"stage1", "manifest", "unit", "fit"}
        Observation bounds (docs/model.md §7): from the manifest with the
        local path's floor ``b_lo`` measured per stage-1 model at its step 0
        (``"stage1"``, :func:`fitting._step0.stage1_floors`; the manifest's
        floor where no rule is known), from the manifest as declared (else
        (0, 1)), always (0, 1), or fitted (shared ``a_lo, a_hi, b_lo, b_hi``).
    step0 : {"prior", "fixed", "free"}
        How p0, a0, b0 relate to their step-0 measurement (module docstring).
    selection : {"replicator", "power", "power+skills"}
        The selection law of the RS log-odds (docs/model.md §9): the post's
        p (1 − p) (a − b), or [p (1 − p)]^γ (a − b) with γ fitted (parameter
        ``gamma``, identified only when the runs span priors); ``power+skills``
        raises the skill terms a (1 − a), b (1 − b) to the same γ.
    """

    transfer: str = "homogeneous"
    priors: str = "shared"
    learnabilities: str = "shared"
    lam: bool = False
    phases: tuple[str, ...] = ("eval", "train")
    substeps: int = 1
    observation: str = "stage1"
    step0: str = "free"
    selection: str = "replicator"

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
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
        if self.observation not in OBSERVATION_MODES:
            raise ValueError(f"observation must be one of {OBSERVATION_MODES}, got {self.observation!r}")
        if self.step0 not in STEP0_MODES:
            raise ValueError(f"step0 must be one of {STEP0_MODES}, got {self.step0!r}")

    def to_dict(self) -> dict:
        return {"transfer": self.transfer, "priors": self.priors, "learnabilities": self.learnabilities,
                "lam": self.lam, "phases": list(self.phases), "substeps": self.substeps,
                "observation": self.observation, "step0": self.step0, "selection": self.selection}


@dataclass(frozen=True)
class ParamInfo:
    """What one fitted parameter is.

    Attributes
    ----------
    name : str
        lmfit name (for people; never parsed).
    kind : str
        ``"p0"``, ``"a0"``, ``"b0"`` (initial state), ``"time_scale"``,
        ``"alpha"`` (learnability), ``"c"`` (homogeneous transfer),
        ``"length_scale"`` (kernel transfer), ``"lam"`` (footnote-4 λ),
        ``"gamma"`` (selection-law exponent, docs/model.md §9) or
        ``"bound"`` (a fitted observation bound).
    latent : str or None
        ``"z"``, ``"x"``, ``"y"`` for learnabilities and transfers; ``"a"`` or
        ``"b"`` for observation bounds.
    run : int or None
        Run index (p0 only).
    env : str or None
        Environment id (per-environment parameters).
    domain : {"prob", "scale", "nonneg", "unit"}
        (0, 1) probabilities (intervals on the logit scale), positive scales
        (log scale), λ >= 0 and [0, 1] values (natural scale, clipped).
    """

    name: str
    kind: str
    latent: str | None = None
    run: int | None = None
    env: str | None = None
    domain: str = "prob"

    def meaning(self, run_ids: list[str]) -> str:
        """What it is, for people: its run and environment, and what the value means."""
        parts = []
        if self.run is not None:
            parts.append(f"run {run_ids[self.run]}")
        if self.env is not None:
            parts.append(f"env {self.env}")
        if self.kind in ("a0", "b0"):
            parts.append("latent σ(x0) (observed a0 in the step-0 table)" if self.kind == "a0"
                         else "latent σ(y0) (observed b0 in the step-0 table)")
        return ", ".join(parts)


@dataclass(frozen=True)
class Measurement:
    """The step-0 measurement distribution of a parameter held at its measurement, in the parameter's units.

    p0 (a probability): the Jeffreys posterior Beta(k + ½, n − k + ½) of the RS share, whose mean
    (k + ½)/(n + 1) is the held value. a0, b0 (latent σ(x0), σ(y0)): Normal(mean, sd) of the pooled mean
    reward ± its standard error mapped through the observation bounds, latent = (obs − lo)/(hi − lo)
    (docs/model.md §7). Issue 18: a held parameter reports this interval, not a zero-width one.

    Attributes
    ----------
    kind : {"beta", "normal"}
    a, b : float
        Beta shape parameters, or Normal mean and standard deviation (latent units).
    """

    kind: str
    a: float
    b: float

    @property
    def sd(self) -> float:
        """Standard deviation (parameter units)."""
        if self.kind == "beta":
            n = self.a + self.b
            return math.sqrt(self.a * self.b / (n * n * (n + 1)))
        return self.b

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Equal-tailed interval at ``level``, inside (PROB_MIN, PROB_MAX)."""
        q = [(1 - level) / 2, (1 + level) / 2]
        lo, hi = stats.beta.ppf(q, self.a, self.b) if self.kind == "beta" else stats.norm.ppf(q, self.a, self.b)
        return float(np.clip(lo, PROB_MIN, PROB_MAX)), float(np.clip(hi, PROB_MIN, PROB_MAX))

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` draws, clipped to (PROB_MIN, PROB_MAX)."""
        x = rng.beta(self.a, self.b, size) if self.kind == "beta" else rng.normal(self.a, self.b, size)
        return np.clip(x, PROB_MIN, PROB_MAX)

    def to_dict(self) -> dict:
        return ({"distribution": "beta", "alpha": self.a, "beta": self.b} if self.kind == "beta" else
                {"distribution": "normal", "mean": self.a, "sd": self.b})


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
class _Prior:
    """One penalty residual: a weighted mean of the observed initial value over cells, against Step0."""

    step0: Step0
    col: int                 # column of θ_full
    cells: np.ndarray        # (K, 2) run, env slot of the cells it governs
    weights: np.ndarray      # (K,) rollouts per cell at step 0


@dataclass
class EvalCounter:
    """Counts of what the residual function met (read by the fit's diagnostics).

    Attributes
    ----------
    residual_calls, jacobian_calls : int
    rejected : int
        Parameter vectors too fast for the step-unit Euler grid (residual WALL).
    nonfinite : int
        Non-finite residuals replaced by WALL.
    jacobian_fallbacks : int
        Jacobians whose forward batch was walled by a probe and that were computed with backward steps or
        a raised substep cap instead (:meth:`Problem.jacobian`).
    jacobian_walled : int
        Jacobians walled under every scheme (returned as zeros).
    best : float
        Lowest penalised deviance seen.
    """

    residual_calls: int = 0
    jacobian_calls: int = 0
    rejected: int = 0
    nonfinite: int = 0
    jacobian_fallbacks: int = 0
    jacobian_walled: int = 0
    best: float = math.inf


@dataclass
class Problem:
    """Observations of several runs, the parameters that explain them, and the residual.

    Build with :meth:`Problem.build`. ``residuals_full(theta)`` evaluates B
    parameter vectors in one batched integration; ``jacobian`` computes
    forward differences with all P+1 vectors in one integration too.
    """

    spec: FitSpec
    run_ids: list[str]
    env_ids: list[str]                  # global env ids
    run_env_ids: list[list[str]]
    config: BatchConfig
    params: lmfit.Parameters
    names: list[str]                    # every parameter (varying and fixed), θ_full order
    info: dict[str, ParamInfo]
    index: dict[str, np.ndarray]        # physical quantity -> column of θ_full, shape (R, N) or (1,)
    bounds: dict[str, np.ndarray]       # a_lo, a_hi, b_lo, b_hi, shape (R, N), from manifests (+ stage-1 floors)
    components: list[_Component]
    priors: list[_Prior]
    step0: dict[str, Step0]
    log_const: float                    # log L = -deviance / 2 + log_const
    n_data: int
    notes: list[str] = field(default_factory=list)
    max_substeps: int = FIT_MAX_SUBSTEPS  # cap on Euler steps per optimizer step (see _engine.simulate)
    weights: dict = field(default_factory=lambda: {"p": 1.0, "a": 1.0, "b": 1.0})  # 1/√φ per component
    counter: EvalCounter = field(default_factory=EvalCounter)
    on_evaluation: object = None        # optional callable(counter) after each residual call (progress)
    last_jacobian: str = ""             # the scheme of the latest jacobian() (JACOBIAN_SCHEMES)
    floors: dict = field(default_factory=dict)  # stage-1 key -> Stage1Floor (observation "stage1")
    _memo: tuple | None = None

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def build(cls, runs: list[Run], obs: pd.DataFrame, spec: FitSpec,
              floors: dict[str, Stage1Floor] | None = None) -> "Problem":
        """Lay out parameters and data for ``runs`` (observations from :func:`fitting.observations`).

        With ``spec.observation == "stage1"`` each run's local floor ``b_lo`` is its stage-1 model's,
        measured at step 0 over ``runs`` (:func:`fitting._step0.stage1_floors`), or taken from ``floors``
        (stage-1 key -> :class:`Stage1Floor`, measured over more runs) where given.

        Raises
        ------
        ValueError
            No observations in the chosen phases, a step beyond :data:`MAX_STEP`, kernel transfer without
            coordinates, environments with different coordinate dimensions,
            or a bad observation bound in a manifest.
        """
        notes: list[str] = []
        check_step_range(runs)
        measured: dict[str, Stage1Floor] = {}
        if spec.observation == "stage1":  # from every phase's first step, before the phases are chosen
            measured, floor_notes = stage1_floors(runs, obs, floors)
            notes += floor_notes
        obs = obs[obs["phase"].isin(spec.phases)]
        if obs.empty:
            named = ", ".join(f"{r.run_id} ({r.source})" if getattr(r, "source", None) else r.run_id for r in runs)
            raise ValueError(f"no observations in phases {tuple(spec.phases)} in any run: {named}")
        run_ids = [r.run_id for r in runs]
        run_env_ids = [r.env_ids for r in runs]
        env_ids = list(dict.fromkeys(e for ids in run_env_ids for e in ids))
        n_runs, n_envs = len(runs), max(len(ids) for ids in run_env_ids)
        w = np.zeros((n_runs, n_envs))
        valid = np.zeros((n_runs, n_envs), bool)
        bounds = {k: np.full((n_runs, n_envs), v) for k, v in (("a_lo", 0.0), ("a_hi", 1.0), ("b_lo", 0.0),
                                                               ("b_hi", 1.0))}
        coords = None
        if spec.transfer == "kernel":
            dims = {len(e.coordinates) for r in runs for e in r.environments if e.coordinates is not None}
            missing = [r.run_id for r in runs if any(e.coordinates is None for e in r.environments)]
            if missing or len(dims) != 1:
                raise ValueError("kernel transfer needs coordinates for every environment in the manifest "
                                 f"(missing in runs {missing})" if missing else
                                 f"environment coordinates have different dimensions {sorted(dims)}")
            coords = np.zeros((n_runs, n_envs, dims.pop()))
        no_bounds = []
        for i, run in enumerate(runs):
            for j, env in enumerate(run.environments):
                w[i, j], valid[i, j] = env.w, True
                if coords is not None:
                    coords[i, j] = env.coordinates
                if spec.observation in ("manifest", "stage1"):
                    found = observation_bounds(run, env.env_id)
                    if found is None:
                        no_bounds.append(f"{run.run_id}/{env.env_id}")
                    else:
                        for k, v in found.items():
                            bounds[k][i, j] = v
            floor = measured.get(stage1_model(run))
            if floor is not None:
                bounds["b_lo"][i, :len(run.environments)] = floor.b_lo
            if not (w[i] > 0).any():
                notes.append(f"run {run.run_id}: no environment has w > 0 (nothing trains)")
        for i in range(n_runs):  # padding copies a real env, so padded cells stay in range
            n_real = len(run_env_ids[i])
            for k in bounds:
                bounds[k][i, n_real:] = bounds[k][i, 0]
        if measured:
            notes.append(describe_floors(measured))
        if spec.observation in ("manifest", "stage1") and no_bounds:
            notes.append("observation bounds (0, 1) for environments whose manifest gives none: "
                         + ", ".join(no_bounds[:6]) + (" ..." if len(no_bounds) > 6 else ""))
        steps = np.unique(obs["step"].to_numpy(np.int64))
        config = BatchConfig(w, valid, coords, steps)

        components, log_const, n_data = _components(obs, run_ids, run_env_ids, steps)
        layout = _Layout(runs, run_env_ids, env_ids, obs, spec, n_envs, bounds)
        problem = cls(spec, run_ids, env_ids, run_env_ids, config, layout.params, layout.names, layout.info,
                      layout.index, bounds, components, layout.priors, layout.step0, log_const, n_data,
                      notes + layout.notes)
        problem.floors = measured
        return problem

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

    def observation_arrays(self, theta_full: np.ndarray) -> dict[str, np.ndarray]:
        """Bounds a_lo, a_hi, b_lo, b_hi per draw, shape (B, R, N) (fitted or from the manifests)."""
        th = np.atleast_2d(theta_full)
        out = {}
        for key, arr in self.bounds.items():
            if key in self.index:
                out[key] = np.broadcast_to(th[:, self.index[key][0]][:, None, None],
                                           (th.shape[0],) + arr.shape).copy()
            else:
                out[key] = np.broadcast_to(arr[None], (th.shape[0],) + arr.shape).copy()
        for lat in ("a", "b"):  # a fitted pair may cross: keep a span of at least 1e-3
            out[f"{lat}_hi"] = np.maximum(out[f"{lat}_hi"], out[f"{lat}_lo"] + 1e-3)
        return out

    def physical(self, theta_full: np.ndarray) -> dict[str, torch.Tensor]:
        """Map θ_full, shape (B, P_all), to the inputs of :func:`fitting._engine.simulate`."""
        th = torch.as_tensor(np.atleast_2d(theta_full), dtype=torch.float64)
        out = {}
        for key, idx in self.index.items():
            if key in self.bounds:
                continue
            if idx.ndim == 2:          # per (run, env)
                out[key] = th[:, idx]  # (B, R, N)
            elif key in ("time_scale", "lam", "gamma"):
                out[key] = th[:, idx[0]].reshape(-1, 1, 1)
            else:                      # per-latent transfer value, one per run
                out[key] = th[:, idx[0]].reshape(-1, 1).expand(-1, self.config.n_runs)
        if self.has_observation_model:
            for key, arr in self.observation_arrays(theta_full).items():
                out[key] = torch.as_tensor(arr, dtype=torch.float64)
        return out

    @property
    def has_observation_model(self) -> bool:
        """True unless every bound is (0, 1) and none is fitted (then the model is docs/model.md §2 as is)."""
        if any(k in self.index for k in self.bounds):
            return True
        return not (np.all(self.bounds["a_lo"] == 0) and np.all(self.bounds["b_lo"] == 0)
                    and np.all(self.bounds["a_hi"] == 1) and np.all(self.bounds["b_hi"] == 1))

    def predict_latent(self, theta_full: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(p, σ(x), σ(y)), each (T, B, R, N), for a batch of θ_full."""
        return simulate(self.config, self.physical(theta_full), self.spec.transfer, self.spec.substeps,
                        max_substeps=self.max_substeps, selection=self.spec.selection)

    def predict_states(self, theta_full: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(p, a_obs, b_obs), each (T, B, R, N): what the logs measure (docs/model.md §7)."""
        p, a, b = self.predict_latent(theta_full)
        if not self.has_observation_model:
            return p, a, b
        ob = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in self.observation_arrays(theta_full).items()}
        return (p, ob["a_lo"] + (ob["a_hi"] - ob["a_lo"]) * a, ob["b_lo"] + (ob["b_hi"] - ob["b_lo"]) * b)

    def measurement(self, name: str, theta_full: np.ndarray | None = None) -> Measurement | None:
        """The step-0 measurement distribution of initial-state parameter ``name`` in its own units, or None.

        a0, b0 are mapped into latent units through the (mean) observation bounds of the cells they govern
        at ``theta_full`` (default: the current parameter values); the Normal is centred on the
        parameter's value there, p0's Beta on the Jeffreys mean it is held at.
        """
        s0 = self.step0.get(name)
        if s0 is None:
            return None
        if s0.quantity == "p":
            k = s0.value * s0.n
            return Measurement("beta", k + 0.5, s0.n - k + 0.5)
        theta = self.full() if theta_full is None else np.asarray(theta_full, float)
        ob = self.observation_arrays(theta)
        cells = (self.index[f"{s0.quantity}0"] == self.names.index(name)) & self.config.valid
        span = float((ob[f"{s0.quantity}_hi"] - ob[f"{s0.quantity}_lo"])[0][cells].mean())
        return Measurement("normal", float(theta[self.names.index(name)]), s0.scale / span)

    def initial_observed(self, theta_full: np.ndarray) -> dict[str, np.ndarray]:
        """p0, a0, b0 in observed units per (run, env), shape (B, R, N)."""
        th = np.atleast_2d(theta_full)
        ob = self.observation_arrays(th)
        return {"p": th[:, self.index["p0"]],
                "a": ob["a_lo"] + (ob["a_hi"] - ob["a_lo"]) * th[:, self.index["a0"]],
                "b": ob["b_lo"] + (ob["b_hi"] - ob["b_lo"]) * th[:, self.index["b0"]]}

    # ---- likelihood -------------------------------------------------------------------------
    @property
    def n_prior(self) -> int:
        return len(self.priors) if self.spec.step0 == "prior" else 0

    def residuals_full(self, theta_full: np.ndarray) -> np.ndarray:
        """Signed deviance residuals and prior residuals, shape (B, M + Q), for θ_full (B, P_all)."""
        theta_full = np.atleast_2d(theta_full)
        try:
            p, a, b = self.predict_states(theta_full)
        except UnstableStep:  # far outside the data's range: a wall the optimizer backs off from
            self.counter.rejected += 1
            return np.full((theta_full.shape[0], self.n_data + self.n_prior), WALL)
        states = {"p": p, "a": a, "b": b}
        pieces = []
        for comp in self.components:
            mu = states[comp.latent][comp.t, :, comp.r, comp.e].T  # (B, M_c)
            pieces.append(_deviance_residuals(comp, mu) * self.weights[comp.latent])
        res = torch.cat(pieces, dim=1).numpy()
        if self.n_prior:
            res = np.concatenate([res, self.prior_residuals(theta_full)], axis=1)
        bad = ~np.isfinite(res)
        if bad.any():  # never silently: the simulation left the valid range
            res = np.where(bad, WALL, res)
            self.counter.nonfinite += int(bad.sum())
        return res

    def prior_residuals(self, theta_full: np.ndarray) -> np.ndarray:
        """(B, Q): (model's initial value − step-0 measurement) / its spread, logit scale for p."""
        init = self.initial_observed(theta_full)
        out = np.empty((theta_full.shape[0], len(self.priors)))
        for q, prior in enumerate(self.priors):
            s0 = prior.step0
            vals = init[s0.quantity][:, prior.cells[:, 0], prior.cells[:, 1]]  # (B, K)
            mean = (vals * prior.weights).sum(1) / prior.weights.sum()
            if s0.quantity == "p":
                mean = special.logit(np.clip(mean, 1e-12, 1 - 1e-12))
            out[:, q] = (mean - s0.loc) / s0.scale
        return out

    def pearson(self, theta_full: np.ndarray) -> dict[str, np.ndarray]:
        """Unweighted Pearson residuals of the data per component (p, a, b), at one θ_full."""
        cap, self.max_substeps = self.max_substeps, max(self.max_substeps, 4096)
        try:  # an optimum stopped early may be fast: simulate it rather than give up
            p, a, b = self.predict_states(np.atleast_2d(theta_full))
        finally:
            self.max_substeps = cap
        states = {"p": p, "a": a, "b": b}
        out = {}
        for comp in self.components:
            mu = states[comp.latent][comp.t, 0, comp.r, comp.e].numpy().clip(1e-9, 1 - 1e-9)
            r_b = (comp.k - comp.n * mu) / np.sqrt(np.where(comp.binomial, comp.n, 1) * mu * (1 - mu))
            r_g = (comp.k - mu) / comp.n
            out[comp.latent] = np.where(comp.binomial, r_b, r_g)
        return out

    def residual(self, params: lmfit.Parameters) -> np.ndarray:
        """lmfit objective: residual vector (M + Q,) at ``params``."""
        theta = self.full(params)
        key = theta.tobytes()
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        res = self.residuals_full(theta[None, :])[0]
        self._memo = (key, res)
        self.counter.residual_calls += 1
        self.counter.best = min(self.counter.best, float(res @ res))
        if self.on_evaluation is not None:
            self.on_evaluation(self.counter)
        return res

    def jacobian(self, params: lmfit.Parameters, rel_step: float = 1e-6) -> np.ndarray:
        """Finite-difference Jacobian (M + Q, P_vary) w.r.t. the external parameter values.

        All P + 1 parameter vectors are integrated in one batched call (lmfit
        ``Dfun``, derivatives across the rows, ``col_deriv=False``), so they
        share one Euler grid and the differences carry no discretisation
        noise. One probe past the substep cap would wall the whole batch (every
        row ``WALL``, every column zero: issue 18), so a walled batch is retried
        with backward steps, then with the cap raised to
        :data:`JACOBIAN_MAX_SUBSTEPS`; which scheme served is
        ``self.last_jacobian`` (:data:`JACOBIAN_SCHEMES`) and is counted in
        ``counter``. When every scheme is walled the Jacobian is all zeros and
        ``last_jacobian == "walled"``: the caller must not read convergence or
        identification from it.
        """
        names = [n for n, p in params.items() if p.vary]
        self.counter.jacobian_calls += 1
        theta = self.full(params)
        steps = np.empty(len(names))
        for j, name in enumerate(names):
            par = params[name]
            h = rel_step * max(abs(par.value), 0.05)
            steps[j] = -h if par.value + h > par.max else h
        cols = [self.names.index(n) for n in names]
        lower = np.array([params[n].min for n in names])
        backward = np.where(theta[cols] - np.abs(steps) < lower, np.abs(steps), -np.abs(steps))
        for scheme, h, cap in (("forward", steps, self.max_substeps), ("backward", backward, self.max_substeps),
                               ("raised cap", steps, max(self.max_substeps, JACOBIAN_MAX_SUBSTEPS))):
            if scheme == "backward" and np.array_equal(h, steps):
                continue
            batch = np.repeat(theta[None, :], len(names) + 1, axis=0)
            batch[np.arange(1, len(names) + 1), cols] += h
            res = self._unwalled(batch, cap)
            if res is not None:
                self.last_jacobian = scheme
                if scheme != "forward":
                    self.counter.jacobian_fallbacks += 1
                if cap == self.max_substeps:  # the same Euler grid as a residual call: reuse its value
                    self._memo = (theta.tobytes(), res[0])
                return (res[1:] - res[0]).T / h
        self.last_jacobian = "walled"
        self.counter.jacobian_walled += 1
        return np.zeros((self.n_data + self.n_prior, len(names)))

    def _unwalled(self, theta_full: np.ndarray, cap: int) -> np.ndarray | None:
        """Residuals of a batch with ``cap`` Euler substeps per optimizer step, or None if any row is walled."""
        before, self.max_substeps = self.max_substeps, cap
        rejected = self.counter.rejected
        try:
            res = self.residuals_full(theta_full)
        finally:
            self.max_substeps = before
        if self.counter.rejected > rejected or np.any(np.abs(res) >= WALL):
            self.counter.rejected = rejected  # a probe's wall is not a rejected trial point of the search
            return None
        return res

    def split(self, residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(data residuals (M,), prior residuals (Q,)) of a residual vector."""
        return residuals[: self.n_data], residuals[self.n_data:]

    def loglik(self, deviance: float) -> float:
        """log L of the data from their deviance (sum of squared data residuals)."""
        return -0.5 * deviance + self.log_const


def observation_bounds(run: Run, env_id: str) -> dict[str, float] | None:
    """The manifest's observation bounds of one environment (docs/model.md §7), or None.

    Read from :attr:`physrl.contract.Environment.observation` (validated by
    the contract reader: 0 <= lo < hi <= 1).
    """
    for env in run.environments:
        if env.env_id == env_id and env.observation is not None:
            return dict(env.observation)
    return None


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
        # rewards in [0, 1]: summed reward of n_l rollouts, binomial when 0/1 and quasi-binomial
        # (variance φ μ (1 - μ), Papke & Wooldridge 1996) otherwise; φ per component is estimated
        # after the fit. A Gaussian with the observed standard error gave cells whose rewards were
        # all equal (b = 0 on a held-out env, a = 0.5 at the RS cap) a near-zero variance and let
        # them dominate the fit.
        del mean, gauss_se
        comps.append(_Component(lat, t[keep], r[keep], e[keep], s[keep], n_l[keep], np.ones(keep.sum(), bool)))
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


def _measured_prior(run: Run, first: pd.DataFrame):
    """The run's measured prior (:meth:`physrl.contract.Run.measured_prior`) over the rows the fit
    treats as step 0 (eval rows of the first step when there are any), every env pooled; None without rows."""
    rows = first[first["run_id"] == run.run_id]
    if rows.empty:
        return None
    try:
        return run.measured_prior(phases=tuple(rows["phase"].unique()), env_ids=run.env_ids)
    except ValueError:
        return None


class _Layout:
    """Builds the lmfit Parameters, their records, the index onto (run, env) and the step-0 priors."""

    def __init__(self, runs, run_env_ids, env_ids, obs, spec: FitSpec, n_envs: int, bounds):
        self.params = lmfit.Parameters()
        self.names: list[str] = []
        self.info: dict[str, ParamInfo] = {}
        self.index: dict[str, np.ndarray] = {}
        self.priors: list[_Prior] = []
        self.step0: dict[str, Step0] = {}
        self.notes: list[str] = []
        self.spec = spec
        n_runs = len(runs)
        first = _first_rows(obs)
        run_pos = {r.run_id: i for i, r in enumerate(runs)}
        env_pos = [{e: j for j, e in enumerate(ids)} for ids in run_env_ids]

        def cells_of(rows, lat):
            n_col = "n" if lat == "p" else f"{lat}_n"
            rows = rows[rows[n_col] > 0]
            cells = np.array([[run_pos[r], env_pos[run_pos[r]][e]] for r, e in zip(rows["run_id"], rows["env_id"])],
                             dtype=int).reshape(-1, 2)
            return cells, rows[n_col].to_numpy(float)

        # initial state: p0 per run (or run and env); a0, b0 shared (or per env id)
        p0_idx = np.zeros((n_runs, n_envs), int)
        for i, run in enumerate(runs):
            groups = ([(f"p0_r{i}", None, first["run_id"] == run.run_id)] if spec.priors == "shared" else
                      [(f"p0_r{i}_e{env_ids.index(env)}", env, (first["run_id"] == run.run_id)
                        & (first["env_id"] == env)) for env in run_env_ids[i]])
            prior = _measured_prior(run, first)
            for name, env, mask in groups:
                rows = first[mask.to_numpy(bool)]
                estimate = None if prior is None else (prior.pooled if env is None else prior.per_env.get(env))
                col = self._initial(name, ParamInfo(name, "p0", "z", i, env, "prob"), rows, "p", None, None,
                                    cells_of, None if prior is None else step0_from_prior(estimate, name, prior.step))
                if env is None:
                    p0_idx[i, :] = col
                else:
                    p0_idx[i, run_env_ids[i].index(env)] = col
        self.index["p0"] = p0_idx
        for lat, latent in (("a", "x"), ("b", "y")):
            idx = np.zeros((n_runs, n_envs), int)
            envs = [None] if spec.priors == "shared" else env_ids
            cols = {}
            for env in envs:
                name = f"{lat}0" if env is None else f"{lat}0_e{env_ids.index(env)}"
                rows = first if env is None else first[(first["env_id"] == env).to_numpy(bool)]
                cols[env] = self._initial(name, ParamInfo(name, f"{lat}0", latent, None, env, "prob"), rows, lat,
                                          bounds[f"{lat}_lo"], bounds[f"{lat}_hi"], cells_of)
            for i, ids in enumerate(run_env_ids):
                for j, env in enumerate(ids):
                    idx[i, j] = cols[None if spec.priors == "shared" else env]
                idx[i, len(ids):] = idx[i, 0]  # padding reads any valid column
            self.index[f"{lat}0"] = idx
        self.index["time_scale"] = np.array([self._add("time_scale", 0.1, True, 1e-6, 1e3,
                                                       ParamInfo("time_scale", "time_scale", domain="scale"))])
        for lat in ("z", "x", "y"):
            idx = np.zeros((n_runs, n_envs), int)
            if spec.learnabilities == "shared":
                idx[:] = self._add(f"alpha_{lat}", 1.0, lat != "z", 1e-4, 1e3,
                                   ParamInfo(f"alpha_{lat}", "alpha", lat, domain="scale"))
            else:
                cols = {}
                for g, env in enumerate(env_ids):
                    name = f"alpha_{lat}_e{g}"
                    cols[env] = self._add(name, 1.0, not (lat == "z" and g == 0), 1e-4, 1e3,
                                          ParamInfo(name, "alpha", lat, None, env, "scale"))
                for i, ids in enumerate(run_env_ids):
                    for j, env in enumerate(ids):
                        idx[i, j] = cols[env]
                    idx[i, len(ids):] = cols[ids[0]]
            self.index[f"alpha_{lat}"] = idx
        for lat in ("z", "x", "y"):
            if spec.transfer == "homogeneous":
                self.index[f"c_{lat}"] = np.array([self._add(f"c_{lat}", 0.5, True, 0.0, 1.0,
                                                             ParamInfo(f"c_{lat}", "c", lat, domain="unit"))])
            elif spec.transfer == "kernel":
                coords = np.array([e.coordinates for r in runs for e in r.environments], dtype=float)
                spread = float(np.sqrt(((coords - coords.mean(0)) ** 2).sum(1).mean())) or 1.0
                name = f"length_scale_{lat}"
                self.index[name] = np.array([self._add(name, spread, True, 1e-3 * spread, 1e3 * spread,
                                                       ParamInfo(name, "length_scale", lat, domain="scale"))])
        if spec.lam:
            self.index["lam"] = np.array([self._add("lam", 0.1, True, 0.0, 10.0,
                                                    ParamInfo("lam", "lam", domain="nonneg"))])
        if spec.selection != "replicator":  # γ starts at the replicator's 1 (docs/model.md §9)
            self.index["gamma"] = np.array([self._add("gamma", 1.0, True, 0.0, 3.0,
                                                      ParamInfo("gamma", "gamma", domain="nonneg"))])
        if spec.observation == "fit":
            for key, value in (("a_lo", 0.02), ("a_hi", 0.98), ("b_lo", 0.02), ("b_hi", 0.98)):
                self.index[key] = np.array([self._add(key, value, True, 0.0, 1.0,
                                                      ParamInfo(key, "bound", key[0], domain="unit"))])

    def _add(self, name, value, vary, lo, hi, info: ParamInfo) -> int:
        self.params.add(name, value=value, vary=vary, min=lo, max=hi)
        self.params[name].user_data = info
        self.names.append(name)
        self.info[name] = info
        return len(self.names) - 1

    def _initial(self, name, info, rows, quantity, lo_arr, hi_arr, cells_of, s0=None) -> int:
        """Add one initial-state parameter at its step-0 measurement (latent units), with its prior."""
        if s0 is None:
            s0 = measure_step0(rows, quantity, name)
        value = 0.2 if quantity == "p" else 0.5
        cells, weights = cells_of(rows, quantity)
        if s0 is not None:
            if quantity == "p":
                value = (s0.value * s0.n + 0.5) / (s0.n + 1)
            else:  # observed units -> latent σ through the (mean) bounds of the cells it governs
                lo = float(np.average(lo_arr[cells[:, 0], cells[:, 1]], weights=weights))
                hi = float(np.average(hi_arr[cells[:, 0], cells[:, 1]], weights=weights))
                if not lo < s0.value < hi:
                    self.notes.append(f"{name}: step-0 measurement {s0.value:.3g} lies outside the observation "
                                      f"bounds ({lo:.3g}, {hi:.3g}); the start is clipped into them")
                value = (s0.value - lo) / (hi - lo)
            value = float(np.clip(value, 0.01, 0.99))
        vary = not (self.spec.step0 == "fixed" and s0 is not None)
        col = self._add(name, value, vary, PROB_MIN, PROB_MAX, info)
        if s0 is not None:
            self.step0[name] = s0
            if self.spec.step0 == "prior":
                self.priors.append(_Prior(s0, col, cells, weights))
        return col
