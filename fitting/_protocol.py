"""The fitted ODE under an experiment's protocol: N identical trained environments sharing the
batch (w = 1/N each) for a fixed number of optimizer steps, and the critical diversity N* it
implies (docs/model.md §3, §7).

N identical environments with homogeneous transfer c are exactly one
environment with learnabilities α (1 + (N − 1) c) / N (docs/model.md §3 with
w = 1/N), so every N is one replica of a batched single-environment
integration, with the fit's observation bounds (the trained environments'
bounds of the first fitted run, or the fitted ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from physrl import sim
from ._engine import BatchConfig, simulate, single_thread
from ._draws import sample_parameters
from ._fit import FitResult

#: Euler substeps per optimizer step allowed for parameter draws
MAX_SUBSTEPS = 4096


def _check(fit: FitResult) -> None:
    spec = fit.spec
    if spec.transfer not in ("homogeneous", "none") or spec.priors != "shared" or spec.learnabilities != "shared":
        raise ValueError("the protocol needs a homogeneous (or no-transfer) fit with shared priors and "
                         f"learnabilities, got transfer={spec.transfer!r}, priors={spec.priors!r}, "
                         f"learnabilities={spec.learnabilities!r}")


def _bounds(fit: FitResult, draws: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    prob = fit.problem
    out = {}
    trained = (prob.config.w[0] > 0) & prob.config.valid[0]
    for key, arr in prob.bounds.items():
        if key in names:
            out[key] = draws[:, names.index(key)]
        elif key in prob.index:
            out[key] = np.full(draws.shape[0], float(fit.params[key].value))
        else:
            row = arr[0][trained] if trained.any() else arr[0][prob.config.valid[0]]
            out[key] = np.full(draws.shape[0], float(row.mean()))
    return out


def protocol_final_p(fit: FitResult, p0: float, n_values, max_steps: int, *, n_draws: int = 64,
                     seed: int = 0) -> np.ndarray:
    """Mean p after ``max_steps`` optimizer steps of N environments sharing the batch (w = 1/N).

    Parameters
    ----------
    fit : FitResult
        A fit with transfer "homogeneous" or "none" and shared priors and
        learnabilities.
    p0 : float
        Prior RS propensity in (0, 1).
    n_values : sequence of int
        Diversities N (>= 1).
    max_steps : int
        Optimizer steps of a run.
    n_draws : int
        Parameter draws (:func:`fitting.sample_parameters`).
    seed : int

    Returns
    -------
    ndarray, shape (n_draws + 1, len(n_values))
        Final p (identical in every environment); row 0 is the point estimate.

    Raises
    ------
    ValueError
        For a kernel fit or per-environment parameters, or p0 outside (0, 1).
    """
    _check(fit)
    if not 0 < p0 < 1:
        raise ValueError(f"p0 must lie in (0, 1), got {p0}")
    draws, names = sample_parameters(fit, n_draws, seed=seed)
    ns = np.asarray(n_values, dtype=float)
    if (ns < 1).any():
        raise ValueError("every N must be >= 1")

    def col(key, default=None):
        if key in names:
            return draws[:, names.index(key)]
        if key in fit.params:
            return np.full(draws.shape[0], float(fit.params[key].value))
        return np.full(draws.shape[0], default)

    b, k = draws.shape[0], ns.size
    phys = {}
    for lat in ("z", "x", "y"):
        c = col(f"c_{lat}", 0.0) if fit.spec.transfer == "homogeneous" else np.zeros(b)
        eff = sim.effective_learnability(col(f"alpha_{lat}")[:, None], c[:, None], ns[None, :]) / ns[None, :]
        phys[f"alpha_{lat}"] = torch.as_tensor(eff[:, :, None])  # (B, K runs, 1 env)
    phys["time_scale"] = torch.as_tensor(col("time_scale")).reshape(-1, 1, 1)
    phys["p0"] = torch.full((b, k, 1), float(p0), dtype=torch.float64)
    for lat in ("a", "b"):
        phys[f"{lat}0"] = torch.as_tensor(col(f"{lat}0")).reshape(-1, 1, 1).expand(b, k, 1)
    if fit.spec.lam:
        phys["lam"] = torch.as_tensor(col("lam", 0.0)).reshape(-1, 1, 1)
    if "gamma" in fit.params:  # the power selection law (docs/model.md §9)
        phys["gamma"] = torch.as_tensor(col("gamma", 1.0)).reshape(-1, 1, 1)
    if fit.problem.has_observation_model:
        for key, v in _bounds(fit, draws, names).items():
            phys[key] = torch.as_tensor(v).reshape(-1, 1, 1).expand(b, k, 1)
    config = BatchConfig(np.ones((k, 1)), np.ones((k, 1), bool), None, np.array([0, int(max_steps)]))
    with single_thread():
        p, _, _ = simulate(config, phys, "none", fit.spec.substeps, max_substeps=MAX_SUBSTEPS,
                           selection=fit.spec.selection)
    return p[-1, :, :, 0].numpy()


@dataclass
class CriticalDiversity:
    """Predicted N*(p0) under the protocol, with an interval over parameter draws.

    Attributes
    ----------
    p0 : float
    value : float or None
        Smallest N <= n_max whose final mean p exceeds ``threshold`` at the
        point estimate; None when none does (``status`` says why).
    interval : (float or None, float or None)
        Quantiles over draws at ``level``; an end above n_max is None.
    share_above_n_max : float
        Share of draws for which no N <= n_max passes.
    status : {"ok", "at_grid_min", "above_n_max", "fit_not_converged", "unavailable"}
        ``at_grid_min``: RS wins already at N = 1, the grid's lower end, so
        ``value`` (1) is an upper bound, N* <= 1.
    reason : str
    n_max, max_steps, threshold, level, n_draws
    """

    p0: float
    value: float | None
    interval: tuple
    share_above_n_max: float
    status: str
    reason: str
    n_max: int
    max_steps: int
    threshold: float
    level: float
    n_draws: int

    def to_dict(self) -> dict:
        return {"p0": self.p0, "value": self.value, "interval": list(self.interval),
                "share_above_n_max": self.share_above_n_max, "status": self.status, "reason": self.reason,
                "n_max": self.n_max, "max_steps": self.max_steps, "threshold": self.threshold,
                "level": self.level, "n_draws": self.n_draws,
                "method": "smallest N on 1..n_max (protocol: w = 1/N, fixed steps)", "text": self.describe()}

    def describe(self) -> str:
        """One line for people: ``protocol N* = 11 (integer grid 1..64), 90% ... [2, > 64]``, ``N* ≤ 1 (...)``.

        An interval end above ``n_max`` reads ``> n_max`` and one at N = 1
        reads ``≤ 1``; never ``None`` or ``nan``.
        """
        def one(v):
            if v is None or not np.isfinite(v):
                return f"> {self.n_max}"
            return "≤ 1" if v <= 1 else f"{v:g}"

        level = f"{self.level:.0%}"
        interval = f"{level} over {self.n_draws} parameter draws [{one(self.interval[0])}, {one(self.interval[1])}]"
        if self.status == "ok":
            return f"protocol N* = {self.value:g} (integer grid 1..{self.n_max}), {interval}"
        if self.status == "at_grid_min":
            return f"protocol N* ≤ 1 (RS wins already at N = 1, the grid's lower end), {interval}"
        if self.status == "above_n_max":
            return (f"protocol N* > {self.n_max} (no N ≤ {self.n_max} made RS win; "
                    f"{self.share_above_n_max:.0%} of draws above too), {interval}")
        return f"protocol N* not computed ({self.status}: {self.reason})"


def critical_diversity(fit: FitResult, p0: float, *, max_steps: int, n_max: int = 64, threshold: float = 0.5,
                       level: float = 0.9, n_draws: int = 64, seed: int = 0) -> CriticalDiversity:
    """N*(p0) of the fitted ODE under the protocol of :func:`protocol_final_p`.

    An unconverged fit gives no N* (status ``fit_not_converged``); a fit
    whose model has no single N-environment protocol gives status
    ``unavailable`` with the reason.
    """
    if not fit.converged:
        return CriticalDiversity(p0, None, (None, None), math.nan, "fit_not_converged",
                                 "fit did not converge: no N* is claimed", n_max, max_steps, threshold, level, 0)
    try:  # sim's one N* search: every N in 1..n_max, the first that passes (no monotonicity assumed)
        res = sim.find_critical_diversity(
            lambda n: protocol_final_p(fit, p0, n[0], max_steps, n_draws=n_draws, seed=seed),
            batch_shape=(n_draws + 1,), method="scan", n_max=n_max, threshold=threshold)
    except ValueError as exc:
        return CriticalDiversity(p0, None, (None, None), math.nan, "unavailable", str(exc), n_max, max_steps,
                                 threshold, level, 0)
    drawn = res.ranked()[1:]          # no N <= n_max passes: ranks as +inf, reported as None
    tail = (1 - level) / 2
    lo, hi = np.quantile(drawn, [tail, 1 - tail], method="nearest") if drawn.size else (math.nan, math.nan)
    interval = tuple(None if not np.isfinite(v) else float(v) for v in (lo, hi))
    value = float(res.n_star[0]) if np.isfinite(res.n_star[0]) else None
    status = "above_n_max" if value is None else "at_grid_min" if value <= 1 else "ok"
    reason = {"above_n_max": f"no N <= {n_max} made RS win",
              "at_grid_min": "RS wins already at N = 1 (the grid's lower end): N* <= 1"}.get(status, "")
    return CriticalDiversity(p0, value, interval, float(np.mean(~np.isfinite(drawn))) if drawn.size else math.nan,
                             status, reason, n_max, max_steps, threshold, level, int(drawn.size))
