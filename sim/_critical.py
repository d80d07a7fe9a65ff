"""Final RS share and critical diversity N*(p0) (docs/model.md §3-4).

Two ways to find N*, the smallest number of environments N whose trained
model has mean final RS propensity above a threshold (0.5 by default):

- ``"bisection"``: exact search over integer N (batched: every round probes
  several N at once, so each round is one integration);
- ``"grid"``: the post's 16-point log grid 1 ... 10,000 with log-linear
  interpolation between the two grid points that bracket the threshold.

"Train to saturation" (docs/model.md §2) does not depend on the time unit, so by
default each replica's time is normalised by its fastest rate (the largest
α_i Σ_j C_ij w_j over latents and environments; α^z_eff in the canonical
homogeneous case). The Euler step ``dt`` and horizon ``t_max`` of
:class:`IntegrationConfig` are in those normalised units, which keeps one
``dt`` stable and accurate from N = 1 to N = 10,000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ._couplings import HomogeneousCoupling, IdentityCoupling
from ._integrate import euler
from ._model import Latents, ToyModel

Tensor = torch.Tensor

METHODS = ("bisection", "grid")


@dataclass(frozen=True)
class IntegrationConfig:
    """How each run is trained "to saturation" (docs/model.md §2; the post's values were lost).

    Attributes
    ----------
    dt : float
        Forward-Euler step, in normalised model time (see module docstring) when
        ``normalize_time`` is on. The canonical N*(p0) for p0 in 0.001 ... 0.3 is
        the same at dt = 0.1, 0.5, 1 and 2 (measured).
    t_max : float
        Horizon in the same units. RS needs a time ~ 1 / (p0 · gap) to take
        off, so the horizon must exceed that for the smallest p0 studied:
        10,000 gives the canonical N*(0.001) = 154 (4,000 gives 162, 20,000
        gives 154). Runs rarely meet ``tol`` because the late approach is ~1/t.
    tol : float
        Early stop once every |d latent/dt| < tol (per replica batch).
    normalize_time : bool
        Rescale each replica's time by its fastest rate (same end state).
    """

    dt: float = 1.0
    t_max: float = 10_000.0
    tol: float = 1e-6
    normalize_time: bool = True

    def __post_init__(self):
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if not self.t_max > 0:
            raise ValueError(f"t_max must be > 0, got {self.t_max}")
        if self.normalize_time and self.dt >= 8:
            raise ValueError(f"dt must be < 8 (normalised time, Euler stability), got {self.dt}")


def check_probability(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless every value lies in the open interval (0, 1)."""
    arr = np.asarray(value, dtype=float)
    if np.any(~(arr > 0) | ~(arr < 1)):
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")


def check_unit_interval(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless every value lies in [0, 1]."""
    arr = np.asarray(value, dtype=float)
    if np.any(~(arr >= 0) | ~(arr <= 1)):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def check_nonnegative(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless every value is >= 0 (learnabilities)."""
    arr = np.asarray(value, dtype=float)
    if np.any(~(arr >= 0)):
        raise ValueError(f"{name} must be >= 0, got {value}")


def time_scale(model: ToyModel) -> Tensor:
    """Per-replica fastest rate max_k max_i α^k_i Σ_j C^k_ij w_j, shape (...) + (1,).

    Dividing every α by it rescales time only, so the saturated end state is
    unchanged. Shape is the replica batch shape with a trailing 1 (broadcasts
    against ``(..., n_envs)``).
    """
    w = None if model.w is None else torch.as_tensor(model.w, dtype=torch.float64)
    rates = []
    for alpha, coupling in ((model.alpha_z, model.coupling_z), (model.alpha_x, model.coupling_x),
                            (model.alpha_y, model.coupling_y)):
        a = torch.as_tensor(alpha, dtype=torch.float64).cpu()
        if w is None:
            rs = coupling.row_sums().cpu().abs()
        else:  # Σ_j C_ij w_j (exact for non-negative kernels; held-out envs count 0)
            w_full = w.expand(*w.shape[:-1], coupling.n_envs)
            # only trained rows: a held-out env has no feedback on itself (a pure
            # receiver), so it neither limits stability nor sets the time unit
            rs = (coupling.apply(w_full).cpu().abs() * (w_full.cpu() > 0))
        rates.append((a * rs).amax(-1, keepdim=True) if (a * rs).ndim else (a * rs).reshape(1))
    shape = torch.broadcast_shapes(*(r.shape for r in rates))
    out = torch.stack([r.expand(shape) for r in rates]).amax(0)
    return out.clamp_min(1e-300)


def normalized(model: ToyModel) -> ToyModel:
    """The same model with time rescaled per replica so its fastest rate is 1."""
    s = time_scale(model)
    return replace(model, alpha_z=torch.as_tensor(model.alpha_z, dtype=torch.float64) / s,
                   alpha_x=torch.as_tensor(model.alpha_x, dtype=torch.float64) / s,
                   alpha_y=torch.as_tensor(model.alpha_y, dtype=torch.float64) / s)


def final_rs_share(model: ToyModel, y0: Latents, *,
                   integration: IntegrationConfig = IntegrationConfig()) -> Tensor:
    """Mean final RS propensity over trained environments, after training to saturation.

    Parameters
    ----------
    model : ToyModel
        Couplings, learnabilities, weights; may carry leading replica axes.
    y0 : Latents
        Initial log-odds, shape ``(..., n_envs)`` each.
    integration : IntegrationConfig
        Euler step, horizon, tolerance, time normalisation.

    Returns
    -------
    Tensor, shape (...)
        Mean over environments with w > 0 (all if ``model.w`` is None) of the
        final p = σ(z) in [0, 1].

    Raises
    ------
    ValueError
        If ``integration.dt`` makes the Euler step unstable.

    References
    ----------
    docs/model.md §2 ("train to saturation"), §3 (mean p over environments).
    """
    m = normalized(model) if integration.normalize_time else model
    sol = euler(m, y0, dt=integration.dt, t_max=integration.t_max, tol=integration.tol,
                save="final")
    p = sol.final_p
    if model.w is None:
        return p.mean(-1)
    trained = (torch.as_tensor(model.w, device=p.device) > 0).to(p.dtype)
    trained = trained.expand_as(p)
    return (p * trained).sum(-1) / trained.sum(-1).clamp_min(1)


def homogeneous_final_share(n_envs, p0, *, a0=0.5, b0=0.1, c_z=1.0, c_x=1.0, c_y=0.0,
                            alpha_z=1.0, alpha_x=1.0, alpha_y=1.0, lam: float = 0.0,
                            integration: IntegrationConfig = IntegrationConfig(),
                            dtype=torch.float64, device=None) -> Tensor:
    """Final p of N identical environments, via the exact reduction α_eff = α (1 + (N − 1) c).

    Every argument may be a scalar or an array; they broadcast together and the
    result has the broadcast shape (a batch of independent single-env systems).

    Parameters
    ----------
    n_envs : int or array of int >= 1
        N.
    p0, a0, b0 : float or array in (0, 1)
        Initial RS propensity, RS skill, local skill.
    c_z, c_x, c_y : float or array in [0, 1]
        Homogeneous transfers.
    alpha_z, alpha_x, alpha_y : float or array >= 0
        Learnabilities (model time⁻¹).
    lam : float
        Footnote-4 λ >= 0.

    Returns
    -------
    Tensor
        Final p in [0, 1] (equal in every environment by symmetry).

    Raises
    ------
    ValueError
        Naming the parameter, for a probability outside (0, 1), c outside
        [0, 1], negative learnability or N < 1.

    References
    ----------
    docs/model.md §3; the post, "Homogenous Coupling".
    """
    for name, v in (("p0", p0), ("a0", a0), ("b0", b0)):
        check_probability(name, v)
    for name, v in (("c_z", c_z), ("c_x", c_x), ("c_y", c_y)):
        check_unit_interval(name, v)
    for name, v in (("alpha_z", alpha_z), ("alpha_x", alpha_x), ("alpha_y", alpha_y)):
        check_nonnegative(name, v)
    if np.any(np.asarray(n_envs) < 1):
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")

    def t(v):
        return torch.as_tensor(np.array(v, dtype=float), dtype=dtype, device=device)

    n = t(n_envs)
    az = t(alpha_z) * (1 + (n - 1) * t(c_z))
    ax = t(alpha_x) * (1 + (n - 1) * t(c_x))
    ay = t(alpha_y) * (1 + (n - 1) * t(c_y))
    y0 = Latents.from_probabilities(p0, a0, b0, dtype=dtype, device=device)
    shape = torch.broadcast_shapes(az.shape, ax.shape, ay.shape, y0.z.shape)
    az, ax, ay = (v.expand(shape).unsqueeze(-1) for v in (az, ax, ay))
    y0 = Latents(*(v.expand(shape).unsqueeze(-1).clone() for v in y0))
    if device is None or str(device) == "cpu":
        # same Euler steps as sim.euler, in numpy (per-op overhead ~20x below torch's
        # for these tiny batches); checked equal in tests/test_sim_critical.py
        return torch.as_tensor(_single_env_final_p(
            az.squeeze(-1).numpy(), ax.squeeze(-1).numpy(), ay.squeeze(-1).numpy(),
            *(v.squeeze(-1).numpy() for v in y0), lam, integration), dtype=dtype)
    one = IdentityCoupling(1)
    model = ToyModel(one, one, one, az, ax, ay, None, lam)
    return final_rs_share(model, y0, integration=integration)


def _single_env_final_p(az, ax, ay, z, x, y, lam, integration: IntegrationConfig) -> np.ndarray:
    """Forward Euler of a batch of single-env systems (docs/model.md §2), numpy float64."""
    az, ax, ay = (np.broadcast_to(np.asarray(v, dtype=float), z.shape) for v in (az, ax, ay))
    if integration.normalize_time:
        scale = np.maximum(np.maximum(az, ax), ay)
        scale = np.where(scale > 0, scale, 1.0)
        az, ax, ay = az / scale, ax / scale, ay / scale
    rate = max(float(np.max(az)), float(np.max(ax)), float(np.max(ay))) * (1 + lam) / 4
    if integration.dt * rate >= 2:
        raise ValueError(f"dt={integration.dt} makes the Euler step unstable: dt must be < "
                         f"{2 / rate:.4g}")
    dt, tol = integration.dt, integration.tol
    z, x, y = (np.array(v, dtype=float) for v in (z, x, y))
    n_max = int(np.ceil(integration.t_max / dt - 1e-9))
    with np.errstate(over="ignore", under="ignore"):
        for _ in range(n_max):
            p = 1 / (1 + np.exp(-z))
            a = 1 / (1 + np.exp(-(x + lam * y))) if lam else 1 / (1 + np.exp(-x))
            b = 1 / (1 + np.exp(-y))
            dz = az * (p * (1 - p) * (a - b))
            gx = p * a * (1 - a)
            dx = ax * gx
            dy = ay * ((1 - p) * b * (1 - b) + lam * gx) if lam else ay * ((1 - p) * b * (1 - b))
            if tol is not None and max(np.abs(dz).max(), np.abs(dx).max(), np.abs(dy).max()) < tol:
                break
            z += dt * dz
            x += dt * dx
            y += dt * dy
    return 1 / (1 + np.exp(-z))


@dataclass
class CriticalDiversity:
    """Result of a critical-diversity search.

    Attributes
    ----------
    n_star : ndarray of float, shape (...)
        N* per replica; ``inf`` when the threshold is not crossed up to
        ``n_max``; 1 when already crossed at N = 1. Integer-valued for
        ``"bisection"``, interpolated for ``"grid"``.
    method : str
        ``"bisection"`` (exact integer search) or ``"grid"`` (log grid,
        log-linear interpolation).
    threshold : float
        The mean-p threshold.
    n_grid : ndarray of int or None
        The grid of N (``"grid"`` only).
    share : ndarray or None, shape (len(n_grid), ...)
        Mean final p at each grid N (``"grid"`` only).
    """

    n_star: np.ndarray
    method: str
    threshold: float
    n_grid: np.ndarray | None = None
    share: np.ndarray | None = None
    extras: dict = field(default_factory=dict)


def log_grid(n_max: int = 10_000, n_points: int = 16) -> np.ndarray:
    """The post's diversity grid: ``n_points`` integers log-spaced from 1 to ``n_max``.

    Duplicates after rounding are dropped (harmless for 16 points up to 10,000).
    """
    if n_max < 1 or n_points < 2:
        raise ValueError(f"need n_max >= 1 and n_points >= 2, got {n_max}, {n_points}")
    return np.unique(np.round(np.logspace(0, math.log10(n_max), n_points)).astype(int))


def interpolate_crossing(n_grid, share, threshold: float = 0.5) -> np.ndarray:
    """N* from mean p on a grid: first crossing above ``threshold``, log-linear interpolation.

    Between the last grid point at or below the threshold, N_k, and the first
    above it, N_{k+1}, log N* is linear in the share:
    ``log N* = log N_k + (thr − s_k) / (s_{k+1} − s_k) · (log N_{k+1} − log N_k)``.

    Parameters
    ----------
    n_grid : array of int, shape (G,)
    share : array, shape (G, ...)
        Mean final p at each grid N.

    Returns
    -------
    ndarray of float, shape (...)
        ``inf`` if no grid point exceeds the threshold, ``n_grid[0]`` if the first does.
    """
    n_grid = np.asarray(n_grid, dtype=float)
    share = np.asarray(share, dtype=float)
    above = share > threshold
    out = np.full(share.shape[1:], np.inf)
    any_above = above.any(0)
    k = np.argmax(above, axis=0)  # first index above
    logn = np.log(n_grid)
    it = np.nditer(k, flags=["multi_index"])
    for kk in it:
        idx = it.multi_index
        if not any_above[idx]:
            continue
        kk = int(kk)
        if kk == 0:
            out[idx] = n_grid[0]
            continue
        s0, s1 = share[(kk - 1,) + idx], share[(kk,) + idx]
        frac = (threshold - s0) / (s1 - s0) if s1 != s0 else 1.0
        out[idx] = math.exp(logn[kk - 1] + frac * (logn[kk] - logn[kk - 1]))
    return out


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


def critical_diversity(build: Callable[[int], tuple[ToyModel, Latents]], *, method: str = "grid",
                       threshold: float = 0.5, n_max: int = 10_000, n_grid_points: int = 16,
                       n_grid=None, integration: IntegrationConfig = IntegrationConfig(),
                       progress: bool = False) -> CriticalDiversity:
    """Critical diversity N* for any model family, given a builder ``N -> (model, y0)``.

    Parameters
    ----------
    build : callable(int) -> (ToyModel, Latents)
        Returns the model with N environments and its initial log-odds; they
        may carry leading replica axes (shape ``(..., N)``), which must be the
        same for every N. For nested heterogeneous draws, build N from the first
        N environments of one large draw (see :func:`sim.heterogeneous_builder`).
    method : {"grid", "bisection"}
        ``"grid"``: evaluate every N of the log grid (``n_grid`` or
        :func:`log_grid`) ``(n_max, n_grid_points)``, interpolate log-linearly.
        ``"bisection"``: exact smallest integer N with share > threshold,
        assuming the share rises with N; each probe N is one call of ``build``
        (all replicas), so it costs ~log2(n_max) integrations per distinct bracket.
    threshold : float in (0, 1)
        Mean-p threshold (0.5 in the post).
    n_max : int
        Largest N searched.
    integration : IntegrationConfig
        Euler settings (normalised time by default).
    progress : bool
        Show a tqdm bar over the probed N.

    Returns
    -------
    CriticalDiversity
        ``n_star`` of shape (...) (the replica shape), with ``method`` recorded.

    Raises
    ------
    ValueError
        For an unknown method, threshold outside (0, 1) or n_max < 1.

    References
    ----------
    docs/model.md §3 (definition, both methods) and §4; the post, "Numerical Details".
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_probability("threshold", threshold)
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")

    cache: dict[int, np.ndarray] = {}

    def share_at(n: int) -> np.ndarray:
        if n not in cache:
            model, y0 = build(int(n))
            cache[n] = final_rs_share(model, y0, integration=integration).detach().cpu().numpy()
        return cache[n]

    if method == "grid":
        grid = log_grid(n_max, n_grid_points) if n_grid is None else np.asarray(n_grid, dtype=int)
        bar = _progress_bar(len(grid), "N grid", progress)
        shares = []
        for n in grid:
            shares.append(share_at(int(n)))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        share = np.stack(shares)
        return CriticalDiversity(interpolate_crossing(grid, share, threshold), "grid", threshold,
                                 grid, share)

    # bisection: per replica, invariant share(lo) <= thr < share(hi)
    s1, smax = share_at(1), share_at(n_max)
    n_star = np.where(s1 > threshold, 1.0, np.where(smax > threshold, np.nan, np.inf))
    lo = np.ones(s1.shape, dtype=np.int64)
    hi = np.full(s1.shape, n_max, dtype=np.int64)
    bar = _progress_bar(int(math.ceil(math.log2(max(n_max, 2)))), "bisection", progress)
    while True:
        open_ = np.isnan(n_star) & (hi - lo > 1)
        if not open_.any():
            break
        mids = np.unique(((lo + hi) // 2)[open_])
        # probe the median pending midpoint; all replicas benefit from the result
        mid = int(mids[len(mids) // 2])
        s = share_at(mid)
        inside = np.isnan(n_star) & (lo < mid) & (mid < hi)
        hi = np.where(inside & (s > threshold), mid, hi)
        lo = np.where(inside & ~(s > threshold), mid, lo)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    n_star = np.where(np.isnan(n_star), hi.astype(float), n_star)
    return CriticalDiversity(n_star, "bisection", threshold,
                             extras={"probed": np.array(sorted(cache))})


def critical_diversity_homogeneous(p0, *, a0=0.5, b0=0.1, c_z=1.0, c_x=1.0, c_y=0.0,
                                   alpha_z=1.0, alpha_x=1.0, alpha_y=1.0, lam: float = 0.0,
                                   method: str = "bisection", threshold: float = 0.5,
                                   n_max: int = 10_000, n_grid_points: int = 16,
                                   integration: IntegrationConfig = IntegrationConfig(),
                                   dtype=torch.float64, device=None,
                                   progress: bool = False) -> CriticalDiversity:
    """N*(p0) for N identical environments (docs/model.md §3), via the exact α_eff reduction.

    Every parameter may be an array; all broadcast together and ``n_star``
    has the broadcast shape (e.g. p0 of shape (P,) against c_y of shape
    (C, 1) gives (C, P)). Bisection is fully batched: each round integrates
    15 probe N per replica at once, so ~4 rounds cover 1 ... 10,000.

    Parameters
    ----------
    p0, a0, b0 : float or array in (0, 1)
        Initial RS propensity, RS skill, local skill (canonical: a0 = 0.5, b0 = 0.1).
    c_z, c_x, c_y : float or array in [0, 1]
        Transfers (canonical: 1, 1, 0).
    alpha_z, alpha_x, alpha_y : float or array >= 0
        Learnabilities (canonical: 1, 1, 1).
    method : {"bisection", "grid"}
        Exact integer N* or the post's log grid with log-linear interpolation.
    threshold, n_max, n_grid_points, integration
        As in :func:`critical_diversity`.

    Returns
    -------
    CriticalDiversity
        ``n_star`` float array (``inf`` if above ``n_max``).

    Raises
    ------
    ValueError
        Naming the offending parameter and its allowed range.

    Example
    -------
    >>> sim.critical_diversity_homogeneous([0.01, 0.1]).n_star   # doctest: +SKIP
    array([..., ...])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_probability("threshold", threshold)
    params = dict(p0=p0, a0=a0, b0=b0, c_z=c_z, c_x=c_x, c_y=c_y, alpha_z=alpha_z,
                  alpha_x=alpha_x, alpha_y=alpha_y)
    for name in ("p0", "a0", "b0"):
        check_probability(name, params[name])
    for name in ("c_z", "c_x", "c_y"):
        check_unit_interval(name, params[name])
    for name in ("alpha_z", "alpha_x", "alpha_y"):
        check_nonnegative(name, params[name])
    shape = np.broadcast_shapes(*(np.shape(v) for v in params.values()))

    def share(n):  # n broadcasts against `shape` with one extra trailing probe axis
        kw = {k: np.asarray(v, dtype=float)[..., None] for k, v in params.items()}
        return homogeneous_final_share(n, lam=lam, integration=integration, dtype=dtype,
                                       device=device, **kw).cpu().numpy()

    if method == "grid":
        grid = log_grid(n_max, n_grid_points)
        s = share(np.broadcast_to(grid.astype(float), shape + (len(grid),)))
        s = np.moveaxis(s, -1, 0)
        return CriticalDiversity(interpolate_crossing(grid, s, threshold), "grid", threshold,
                                 grid, s)

    # k-ary search: 15 probes per replica per round, in one batched integration
    ends = share(np.broadcast_to(np.array([1.0, float(n_max)]), shape + (2,)))
    n_star = np.where(ends[..., 0] > threshold, 1.0,
                      np.where(ends[..., 1] > threshold, np.nan, np.inf))
    lo = np.ones(shape, dtype=np.int64)
    hi = np.full(shape, n_max, dtype=np.int64)
    k = 15
    bar = _progress_bar(None, "bisection rounds", progress)
    while True:
        open_ = np.isnan(n_star) & (hi - lo > 1)
        if not open_.any():
            break
        # probes strictly between lo and hi, geometrically spaced, integer
        frac = np.arange(1, k + 1) / (k + 1)
        probes = np.exp(np.log(lo)[..., None] + frac * (np.log(hi) - np.log(lo))[..., None])
        probes = np.clip(np.round(probes), (lo + 1)[..., None], np.maximum(hi - 1, lo + 1)[..., None])
        # make sure the arithmetic midpoint region is covered when the bracket is narrow
        lin = lo[..., None] + np.ceil(frac * (hi - lo)[..., None])
        probes = np.where((hi - lo)[..., None] <= 2 * k, np.clip(lin, lo[..., None] + 1, hi[..., None] - 1), probes)
        s = share(probes.astype(float))
        above = s > threshold
        # new hi: smallest probe above; new lo: largest probe not above (and below new hi)
        big = np.where(above, probes, np.inf).min(-1)
        new_hi = np.where(np.isfinite(big), big, hi).astype(np.int64)
        small = np.where(~above & (probes < new_hi[..., None]), probes, -np.inf).max(-1)
        new_lo = np.where(np.isfinite(small), small, lo).astype(np.int64)
        lo = np.where(open_, new_lo, lo)
        hi = np.where(open_, new_hi, hi)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    n_star = np.where(np.isnan(n_star), hi.astype(float), n_star)
    return CriticalDiversity(n_star, "bisection", threshold)
