"""The baselines a forecast is judged against: ScaleRL's sigmoid, persistence, the population's base rate.

- ``sigmoid``: ScaleRL's saturating curve (Khatri et al. 2025, "The Art of Scaling RL Compute for LLMs", eq. 1)
  in optimizer steps, R(t) = R0 + (A − R0) / (1 + (t_mid / t)^B), fitted to the prefix's RS share (binomial
  deviance, R0 = the step-0 share) and extrapolated; band and probability by a parametric bootstrap;
- ``persistence``: the last prefix share, its Jeffreys Beta as band and probability;
- ``base_rate``: the population's share of runs at the target's prior and N that ended above the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special, stats


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


def base_rate(b: dict | None, threshold: float, level: float) -> EndForecast:
    """The population's P(RS wins) at the target's prior and N, its end shares' quantiles as the band.

    ``b``: :attr:`PopulationPrior.base_rate` (``k, n, p, cell, end_shares``), None without a population.
    """
    if b is None:
        return EndForecast("base_rate", None, None, None, "no population given")
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


