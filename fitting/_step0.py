"""The step-0 measurement: a run's initial state and its stage-1 model's observation floor (docs/model.md §7).

Every run starts from a stage-1 model (one per prior and seed; the unit of replication, keyed by the
producer's ``organisms.stage1.key``, :func:`fitting.stage1_model`). What the logs measure at the first
eval pass is that model's state before RL:

- :func:`measure_step0`: p̂ (Jeffreys), and the mean rewards â, b̂ with their standard errors, pooled over
  the rows given (one run's first step, for its own p0, a0, b0);
- :func:`stage1_floors`: the observation floor ``b_lo`` of the local path, measured per stage-1 model from
  the first-step b̂ pooled over *every* run of that model (all its environments), not computed from the
  producer's target b0.

The floor rule (docs/model.md §7, "Floors are measured"). The observation map is
b_obs = b_lo + (b_hi − b_lo)·σ(y), and the environment family fixes the latent σ(y0) a stage-1 model starts
from (digit-map: 0.1, chance on the map entries stage 1 never taught). The manifest's declared b_lo is
that rule applied to the *target* b0, b_lo = (b0 − σ(y0)·b_hi)/(1 − σ(y0)); so σ(y0) is read back from the
declared bounds and the target, σ(y0) = (b0_target − b_lo)/(b_hi − b_lo), and the floor is the same rule
applied to the *measured* b̂0 of the stage-1 model:

    b_lo = (b̂0 − σ(y0)·b_hi) / (1 − σ(y0)),   clipped into [0, b_hi)

Its noise is the pooled measurement's: b̂0 ± 1.96 standard errors mapped through the rule (the interval
``b_lo_interval``), the standard error with GRPO groups as units (the rollouts of a group share one
prompt, so they are not independent; :func:`_group_se`) where that is the larger. Pooled over a stage-1
model's runs (about 1,000 local rollouts per model in the scaling sweep) it is a fraction of one
(run, env) cell's sampling spread, which is why it is pooled.
Runs without a target b0 or without declared bounds keep the manifest's floor (said in the notes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

from ._endstate import stage1_model
from physrl.contract import Run


@dataclass(frozen=True)
class Step0:
    """The measured initial value a p0 / a0 / b0 parameter is held against.

    Attributes
    ----------
    param : str
        Parameter name.
    quantity : {"p", "a", "b"}
    value : float
        Measured value in observed units (RS share or mean reward).
    lower, upper : float
        Its 95% interval (Jeffreys for p; mean ± 1.96 standard errors for a, b).
    loc, scale : float
        The prior: logit(p0) ~ Normal(loc, scale) for p (the logit of the
        Jeffreys Beta), a_obs ~ Normal(loc, scale) for a, b.
    n : float
        Rollouts behind it.
    step : int
        The step (each run's first observed step).
    """

    param: str
    quantity: str
    value: float
    lower: float
    upper: float
    loc: float
    scale: float
    n: float
    step: int

    def to_dict(self) -> dict:
        return {"quantity": self.quantity, "value": self.value, "interval95": [self.lower, self.upper],
                "n": self.n, "step": self.step}


def _first_rows(obs: pd.DataFrame) -> pd.DataFrame:
    """Each run's first observed step (eval rows when that step has any, else train rows)."""
    out = []
    for _, rows in obs.groupby("run_id", sort=False):
        first = rows[rows["step"] == rows["step"].min()]
        ev = first[first["phase"] == "eval"]
        out.append(ev if len(ev) else first)
    return pd.concat(out) if out else obs.iloc[:0]


def step0_from_prior(estimate, param: str, step: int) -> Step0 | None:
    """Step0 of p from a :class:`physrl.contract.PriorEstimate` (the run's measured prior, defined there)."""
    if estimate is None or not estimate.n:
        return None
    return _p_step0(float(estimate.n_rs), float(estimate.n), param, step)


def _p_step0(k: float, n: float, param: str, step: int) -> Step0:
    al, be = k + 0.5, n - k + 0.5
    lo, hi = stats.beta.ppf([0.025, 0.975], al, be)
    loc = float(special.digamma(al) - special.digamma(be))
    scale = float(math.sqrt(special.polygamma(1, al) + special.polygamma(1, be)))
    return Step0(param, "p", k / n, float(lo), float(hi), loc, scale, n, step)


def measure_step0(rows: pd.DataFrame, quantity: str, param: str) -> Step0 | None:
    """The step-0 measurement of p, a or b pooled over ``rows`` (first-step observations), or None.

    p: Jeffreys interval and the logit of Beta(k + ½, n − k + ½) (mean
    ψ(k + ½) − ψ(n − k + ½), variance ψ'(k + ½) + ψ'(n − k + ½)). a, b: the
    pooled mean reward and its standard error (binomial when rewards are
    0/1), in observed units.
    """
    if quantity == "p":
        k, n = float(rows["n_rs"].sum()), float(rows["n"].sum())
        if n <= 0:
            return None
        return _p_step0(k, n, param, int(rows["step"].min()))
    n_c = rows[f"{quantity}_n"].to_numpy(float)
    keep = n_c > 0
    if not keep.any():
        return None
    n_c = n_c[keep]
    s = rows[f"{quantity}_sum"].to_numpy(float)[keep]
    se = rows[f"{quantity}_se"].to_numpy(float)[keep]
    binary = rows["binary"].to_numpy(bool)[keep]
    n = float(n_c.sum())
    mean = float(s.sum() / n)
    cell_mean = s / n_c
    var = np.where(binary, cell_mean * (1 - cell_mean), np.where(np.isfinite(se) & (n_c > 1), se**2 * n_c, 0.25))
    var = np.maximum(var, 1e-4)
    pooled_se = float(math.sqrt((var * n_c).sum()) / n)
    return Step0(param, quantity, mean, max(0.0, mean - 1.96 * pooled_se), min(1.0, mean + 1.96 * pooled_se),
                 mean, pooled_se, n, int(rows["step"].min()))



# ---- the stage-1 model's observation floor ------------------------------------------------------------------
@dataclass(frozen=True)
class Stage1Floor:
    """The local path's observation floor ``b_lo`` of one stage-1 model, measured at its step 0.

    Attributes
    ----------
    stage1 : str
        The stage-1 model (:func:`fitting.stage1_model`: the producer's stage-1 key, else the run id).
    runs : tuple of str
        The runs whose first-step rows were pooled.
    b0 : Step0
        The pooled step-0 measurement of the local path's mean reward b̂0 (reward units, 95% interval).
    sigma_y0 : float
        The latent σ(y0) in [0, 1) the family starts a stage-1 model from (read back from the declared
        bounds and the target b0).
    b_lo : float
        The floor in reward units, in [0, b_hi).
    b_lo_interval : (float, float)
        The floor's 95% interval from b̂0's (the rule is monotone).
    declared_b_lo : float
        The manifest's floor (from the target b0), for comparison.
    b_hi : float
        The manifest's ceiling (unchanged).
    """

    stage1: str
    runs: tuple[str, ...]
    b0: Step0
    sigma_y0: float
    b_lo: float
    b_lo_interval: tuple[float, float]
    declared_b_lo: float
    b_hi: float

    def to_dict(self) -> dict:
        return {"stage1": self.stage1, "runs": list(self.runs), "b0": self.b0.to_dict(), "sigma_y0": self.sigma_y0,
                "b_lo": self.b_lo, "b_lo_interval95": list(self.b_lo_interval), "declared_b_lo": self.declared_b_lo,
                "b_hi": self.b_hi}


def floor_from_b0(b0, sigma_y0: float, b_hi: float):
    """The floor rule b_lo = (b0 − σ(y0)·b_hi)/(1 − σ(y0)), clipped into [0, b_hi − 1e-3] (scalars or arrays).

    Raises
    ------
    ValueError
        If σ(y0) is not in [0, 1).
    """
    if not 0.0 <= sigma_y0 < 1.0:
        raise ValueError(f"sigma_y0 must lie in [0, 1), got {sigma_y0!r}")
    out = (np.asarray(b0, float) - sigma_y0 * b_hi) / (1.0 - sigma_y0)
    out = np.clip(out, 0.0, b_hi - 1e-3)
    return float(out) if out.ndim == 0 else out


def declared_floor_rule(run: Run) -> tuple[float, float, float] | None:
    """(σ(y0), declared b_lo, b_hi) of a run, or None when its manifest cannot say.

    σ(y0) = (b0_target − b_lo)/(b_hi − b_lo) from the producer's target b0 (``organisms.knobs_target.b0``,
    else ``organisms.config.b0``) and the declared bounds, which must be the same on every environment.
    None without a target b0, without observation bounds, or with a σ(y0) outside [0, 1).
    """
    m = run.manifest
    org = (m.organisms or {}) if m is not None else {}
    target = (org.get("knobs_target") or {}).get("b0")
    if not isinstance(target, (int, float)):
        target = (org.get("config") or {}).get("b0")
    if not isinstance(target, (int, float)) or isinstance(target, bool):
        return None
    declared = {(e.observation["b_lo"], e.observation["b_hi"]) for e in run.environments if e.observation}
    if len(declared) != 1 or any(e.observation is None for e in run.environments):
        return None
    b_lo, b_hi = declared.pop()
    sigma = (float(target) - b_lo) / (b_hi - b_lo)
    if not -1e-6 <= sigma < 1.0:
        return None
    return round(max(sigma, 0.0), 6), float(b_lo), float(b_hi)


def stage1_floors(runs: list[Run], obs: pd.DataFrame,
                  given: dict[str, Stage1Floor] | None = None) -> tuple[dict[str, Stage1Floor], list[str]]:
    """The measured floor of every stage-1 model among ``runs`` (module docstring), and notes.

    Parameters
    ----------
    runs : list of Run
    obs : pandas.DataFrame
        Their observations (:func:`fitting.observations`, every phase: the first step's eval rows are used,
        else its train rows).
    given : dict stage-1 key -> Stage1Floor, optional
        Floors measured over a larger set of runs (e.g. every run of an experiment): used as they are for
        their stage-1 models, so a single run's prediction uses its model's pooled floor.

    Returns
    -------
    (dict stage-1 key -> Stage1Floor, list of str)
        Stage-1 models whose runs give no rule (no target b0 or no declared bounds), different rules, or no
        local-path rollouts at step 0 have no entry; the notes say which and why.
    """
    given = dict(given or {})
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(stage1_model(run), []).append(run)
    first = _first_rows(obs) if len(obs) else obs
    floors, notes = {}, []
    for key, members in groups.items():
        if key in given:
            floors[key] = given[key]
            continue
        rules = {declared_floor_rule(r) for r in members}
        if None in rules or len(rules) != 1:
            if any(e.observation is not None for r in members for e in r.environments):  # else nothing to keep
                why = "no target b0 or declared bounds" if None in rules else "runs declare different floors"
                notes.append(f"stage-1 model {key[:12]}: floor kept from the manifest ({why})")
            continue
        sigma, declared, b_hi = rules.pop()
        ids = [r.run_id for r in members]
        rows = first[first["run_id"].isin(ids)]
        s0 = measure_step0(rows, "b", "b_lo") if len(rows) else None
        if s0 is None:
            notes.append(f"stage-1 model {key[:12]}: no local-path rollout at step 0; floor kept from the manifest")
            continue
        se = _group_se(members, rows, s0.value)
        if se is not None and se > s0.scale:  # rollouts of one GRPO group share a prompt: not independent
            s0 = Step0(s0.param, s0.quantity, s0.value, max(0.0, s0.value - 1.96 * se),
                       min(1.0, s0.value + 1.96 * se), s0.loc, se, s0.n, s0.step)
        floor = floor_from_b0(s0.value, sigma, b_hi)
        lo, hi = floor_from_b0(np.array([s0.lower, s0.upper]), sigma, b_hi)
        floors[key] = Stage1Floor(key, tuple(ids), s0, sigma, floor, (float(lo), float(hi)), declared, b_hi)
    return floors, notes


def _group_se(members: list[Run], first: pd.DataFrame, mean: float) -> float | None:
    """Standard error of the pooled local mean reward b̂0 with GRPO groups as units (a ratio estimator's
    cluster-robust SE over (run, env, group) at each run's first step); None when fewer than two groups.

    The rollouts of one group answer one prompt, whose input digits decide how many map entries are known:
    on the scaling sweep the cells' spread at step 0 is what resampling groups gives, not single rollouts."""
    sums, counts = [], []
    for run in members:
        mine = first[first["run_id"] == run.run_id]
        if mine.empty:
            continue
        ro = run.rollouts
        keep = ((ro["step"] == int(mine["step"].iloc[0])) & ro["phase"].isin(set(mine["phase"]))
                & ro["env_id"].isin(set(mine["env_id"])) & ~ro["rs"].astype(bool))
        g = ro[keep].groupby(["env_id", "group_id"])["reward"].agg(["sum", "count"])
        sums.append(g["sum"].to_numpy(float))
        counts.append(g["count"].to_numpy(float))
    if not sums:
        return None
    s, n = np.concatenate(sums), np.concatenate(counts)
    if len(s) < 2 or n.sum() <= 0:
        return None
    resid = s - mean * n
    return float(math.sqrt((resid ** 2).sum() * len(s) / (len(s) - 1)) / n.sum())


def describe_floors(floors: dict[str, Stage1Floor]) -> str:
    """One line for the fit's notes: each stage-1 model's measured floor against the declared one."""
    parts = [f"{k[:12]} {f.b_lo:.3f} [{f.b_lo_interval[0]:.3f}, {f.b_lo_interval[1]:.3f}] "
             f"(b̂0 {f.b0.value:.3f} over {int(f.b0.n)} local rollouts of {len(f.runs)} run"
             f"{'s' if len(f.runs) != 1 else ''})" for k, f in floors.items()]
    declared = sorted({round(f.declared_b_lo, 4) for f in floors.values()})
    return ("observation floor b_lo measured per stage-1 model at step 0 (docs/model.md §7; declared from the "
            f"target b0: {', '.join(f'{d:g}' for d in declared)}): " + "; ".join(parts))
