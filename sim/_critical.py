"""Final RS share and critical diversity N*(p0) (docs/model.md §3-4).

N* is the smallest number of environments N whose trained model ends with a
mean RS propensity above a threshold (0.5 by default). One search,
:func:`find_critical_diversity`, finds it for any *final-share function*
``N values -> final mean p``:

- ``"bisection"``: exact integer search, batched (each round probes several
  N per replica in one integration; assumes the share rises with N);
- ``"grid"``: the post's 16-point log grid 1 ... 10,000 with log-linear
  interpolation between the two grid points that bracket the threshold;
- ``"scan"``: every integer 1 ... n_max, the first above (exact without
  assuming monotonicity; for small n_max).

Its users: :func:`critical_diversity` (any model family, via a builder
``N -> (model, y0)``), :func:`critical_diversity_homogeneous` (the exact
α_eff reduction), the heterogeneous sweeps of ``sim._hetero``, the fit's
N* prediction (``physrl.fitting``) and the experiment's protocol N*
(``physrl.experiment.freeze``). The result carries a status per replica
(:class:`SearchStatus`): an N* is never reported as ``inf``.

"Train to saturation" (docs/model.md §2) does not depend on the time unit, so
by default (``normalize_time``) each replica's time is normalised by its
fastest rate r_max (the largest α_i Σ_j C_ij w_j over latents and trained
environments), which keeps one Euler ``dt`` stable from N = 1 to 10,000.
The horizon ``t_max`` counts time on the replica's RS-propensity clock r_z
(the largest α^z_i Σ_j C^z_ij w_j), on which RS takes off after
~1 / (p0 · gap): a replica whose other latents are much faster than z
(say α^x = 1000 α^z) gets r_max / r_z times more Euler steps, up to
``max_steps``. In the canonical case r_z = r_max and nothing changes.

A run that reaches its horizon before its derivatives fall below ``tol`` is
*settled* if its verdict (mean p above or below the threshold) survives a
linear extrapolation of z over another horizon of the same length; an
unsettled run is extended (its horizon doubled) until it settles or would
exceed ``max_steps``, and then reported as not converged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable

import numpy as np
import torch

from ._backend import to_numpy
from ._couplings import IdentityCoupling, effective_learnability
from ._integrate import check_dt, integrate_steps
from ._model import Latents, ToyModel
from ._selection import REPLICATOR, SelectionLaw
from ._options import METHODS as METHODS

Tensor = torch.Tensor


@dataclass(frozen=True)
class IntegrationConfig:
    """How each run is trained "to saturation" (docs/model.md §2 and "Numerics"; the post's values were lost).

    Attributes
    ----------
    dt : float
        Forward-Euler step, in units of the replica's fastest rate when
        ``normalize_time`` is on (model time otherwise). The canonical N*(p0)
        for p0 in 0.001 ... 0.3 is the same at dt = 0.1, 0.5, 1 and 2 (measured).
    t_max : float
        Horizon, on the RS-propensity clock when ``normalize_time`` is on
        (model time otherwise). RS needs ~1 / (p0 · gap) to take off, so the
        horizon must exceed that for the smallest p0 studied: 10,000 gives
        the canonical N*(0.001) = 154 (4,000 gives 162, 20,000 gives 154).
    tol : float
        A replica stops once every |d latent/dt| < tol (in the normalised unit).
    normalize_time : bool
        Rescale each replica's time by its fastest rate (same end state).
    max_steps : int
        Cap on Euler steps per replica, including horizon extensions
        (5·10^7 ≈ 3 s per replica with the numba engine). A run that needs
        more and has not settled is reported as not converged.

    Raises
    ------
    ValueError
        dt or t_max not positive, dt >= 8 with normalised time (Euler
        stability), or max_steps < 1.
    """

    dt: float = 1.0
    t_max: float = 10_000.0
    tol: float = 1e-6
    normalize_time: bool = True
    max_steps: int = 50_000_000

    def __post_init__(self):
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if not self.t_max > 0:
            raise ValueError(f"t_max must be > 0, got {self.t_max}")
        if self.normalize_time and self.dt >= 8:
            raise ValueError(f"dt must be < 8 (normalised time, Euler stability), got {self.dt}")
        if not self.max_steps >= 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


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
    """Raise ``ValueError`` naming ``name`` unless every value is a finite number >= 0 (learnabilities).

    An infinite learnability passed this check before and came back from the integration as NaN, in a
    two-line error that printed the tensor.
    """
    arr = np.asarray(value, dtype=float)
    if np.any(~(arr >= 0) | ~np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def time_scale(model: ToyModel) -> Tensor:
    """Per-replica fastest rate, shape (...) + (1,): :meth:`ToyModel.time_scale`."""
    return model.time_scale()


def _divide(alpha, s: Tensor):
    if isinstance(alpha, Tensor):
        return alpha.to(torch.float64) / s.to(alpha.device)
    return torch.as_tensor(to_numpy(alpha), dtype=torch.float64) / s


def normalized(model: ToyModel) -> ToyModel:
    """The same model with time rescaled per replica so its fastest rate is 1."""
    s = model.time_scale()
    return replace(model, alpha_z=_divide(model.alpha_z, s), alpha_x=_divide(model.alpha_x, s),
                   alpha_y=_divide(model.alpha_y, s))


@dataclass
class FinalShare:
    """Mean final RS propensity of a batch of runs trained to saturation, and how each run ended.

    Attributes
    ----------
    share : Tensor, shape (...)
        Mean over trained environments (w > 0; all if ``w`` is None) of the
        final p = σ(z), in [0, 1].
    converged : ndarray of bool, shape (...)
        Every |d latent/dt| fell below ``tol``.
    settled : ndarray of bool, shape (...)
        Converged, or reached its horizon with a verdict (share above or
        below the threshold) that a linear extrapolation of z over another
        horizon does not change. False: not converged by the step cap.
    capped : ndarray of bool, shape (...)
        Its horizon (or an extension) was cut by ``max_steps``.
    horizon : ndarray of float, shape (...)
        Time integrated, on the RS-propensity clock (normalised time) or in
        model time.
    steps : ndarray of int, shape (...)
        Euler steps taken.
    """

    share: Tensor
    converged: np.ndarray
    settled: np.ndarray
    capped: np.ndarray
    horizon: np.ndarray
    steps: np.ndarray

    @property
    def message(self) -> str:
        """One line: how many runs converged, settled at the horizon, or did not converge."""
        n = self.settled.size
        bad = int((~self.settled).sum())
        text = (f"{int(self.converged.sum())} of {n} runs converged, "
                f"{int((self.settled & ~self.converged).sum())} settled at the horizon")
        if bad:
            text += (f", {bad} not converged by the step cap (the share was still moving toward the "
                     f"threshold; raise t_max / --t-max or max_steps)")
        return text


def _trained_mean(p: Tensor, w) -> Tensor:
    if w is None:
        return p.mean(-1)
    trained = (torch.as_tensor(to_numpy(w), device=p.device) > 0).to(p.dtype).expand_as(p)
    return (p * trained).sum(-1) / trained.sum(-1).clamp_min(1)


def saturate(model: ToyModel, y0: Latents, *, integration: IntegrationConfig = IntegrationConfig(),
             threshold: float = 0.5, engine: str = "auto") -> FinalShare:
    """Train every replica "to saturation" and report its final mean RS share and how it ended.

    Parameters
    ----------
    model : ToyModel
        Couplings, learnabilities, weights; may carry leading replica axes.
    y0 : Latents
        Initial log-odds, shape ``(..., n_envs)`` each.
    integration : IntegrationConfig
        Euler step, horizon, tolerance, time normalisation, step cap.
    threshold : float in (0, 1)
        The mean-p threshold whose verdict decides whether a run that reached
        its horizon has settled (module docstring).
    engine : str
        Euler engine (see :func:`sim.euler`).

    Returns
    -------
    FinalShare

    Raises
    ------
    ValueError
        If ``integration.dt`` makes the Euler step unstable.

    References
    ----------
    docs/model.md §2 ("train to saturation"), §3 (mean p over environments), "Numerics".
    """
    ic = integration
    if ic.normalize_time:
        m = normalized(model)
        clock = m.propensity_rate().squeeze(-1).numpy()       # r_z / r_max in (0, 1]
        clock = np.where(clock > 0, clock, 1.0)               # z cannot move: fastest-rate unit
        wanted = np.ceil(ic.t_max / (clock * ic.dt) - 1e-9)
    else:
        m = model
        wanted = np.asarray(math.ceil(ic.t_max / ic.dt - 1e-9), dtype=float)
        clock = np.ones(())
    check_dt(m, ic.dt)
    capped = wanted > ic.max_steps
    n_steps = np.minimum(wanted, ic.max_steps).astype(np.int64)
    uniform = n_steps.size == 1 or bool(np.all(n_steps == n_steps.flat[0]))
    sol = integrate_steps(m, y0, dt=ic.dt, n_steps=int(n_steps.flat[0]) if uniform else n_steps,
                          tol=ic.tol, engine=engine)
    final = sol.final
    converged = _np_bool(sol.converged)
    steps = np.asarray(to_numpy(sol.steps, np.int64))
    rep = steps.shape
    capped = np.broadcast_to(capped, rep).copy()
    clock = np.broadcast_to(clock, rep)
    while True:
        share, unsettled = _verdict(m, final, steps * ic.dt, threshold, converged, model.w)
        unsettled |= capped & ~converged
        more = unsettled & ~capped & (2 * steps <= ic.max_steps)
        capped |= unsettled & ~more
        if not more.any():
            break
        ext = integrate_steps(m, final, dt=ic.dt, n_steps=np.where(more, steps, 0), tol=ic.tol,
                              engine=engine)
        final = ext.final
        converged = converged | _np_bool(ext.converged)
        steps = steps + np.asarray(to_numpy(ext.steps, np.int64))
    settled = ~unsettled
    horizon = steps * ic.dt * clock
    return FinalShare(share, converged, settled, capped & ~settled, horizon, steps)


def _np_bool(v) -> np.ndarray:
    return np.asarray(v.cpu() if isinstance(v, Tensor) else v, dtype=bool)


def _verdict(m: ToyModel, final: Latents, elapsed: np.ndarray, threshold: float, converged: np.ndarray, w):
    """(share, unsettled): the final share, and runs whose verdict a linear extrapolation flips."""
    p = torch.sigmoid(final.z)
    share = _trained_mean(p, w)
    dz = m.rhs(final).z
    ahead = torch.as_tensor(elapsed, dtype=final.z.dtype, device=final.z.device)[..., None]
    projected = _trained_mean(torch.sigmoid(final.z + ahead * dz), w)
    flips = ((share > threshold) != (projected > threshold)).cpu().numpy()
    return share, flips & ~converged


def final_rs_share(model: ToyModel, y0: Latents, *,
                   integration: IntegrationConfig = IntegrationConfig()) -> Tensor:
    """Mean final RS propensity over trained environments, after training to saturation.

    The ``share`` of :func:`saturate` (same parameters, threshold 0.5), which
    also says how each run ended.

    Returns
    -------
    Tensor, shape (...)
        Final p = σ(z) in [0, 1], averaged over environments with w > 0.

    Raises
    ------
    ValueError
        If ``integration.dt`` makes the Euler step unstable.
    """
    return saturate(model, y0, integration=integration).share


def _homogeneous_system(n_envs, p0, a0, b0, c_z, c_x, c_y, alpha_z, alpha_x, alpha_y, lam, dtype, device,
                        selection: SelectionLaw = REPLICATOR):
    """Single-env model and y0 of N identical environments via α_eff (validated, broadcast).

    The reduction holds under any selection law: by symmetry every
    environment's term w_j [p_j (1 − p_j)]^γ (a_j − b_j) is the same.
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
    eff = [effective_learnability(t(a), t(c), n) for a, c in ((alpha_z, c_z), (alpha_x, c_x), (alpha_y, c_y))]
    y0 = Latents.from_probabilities(p0, a0, b0, dtype=dtype, device=device)
    batched_gamma = not selection.is_replicator and np.ndim(to_numpy(selection.gamma)) > 0
    gamma = t(to_numpy(selection.gamma)) if batched_gamma else None
    shape = tuple(np.broadcast_shapes(*(tuple(v.shape) for v in eff), tuple(y0.z.shape),
                                      tuple(gamma.shape) if batched_gamma else ()))
    eff = [v.expand(shape).unsqueeze(-1) for v in eff]
    y0 = Latents(*(v.expand(shape).unsqueeze(-1).clone() for v in y0))
    if batched_gamma:  # one γ per replica, on the (single) environment axis
        selection = replace(selection, gamma=gamma.expand(shape).unsqueeze(-1))
    one = IdentityCoupling(1)
    return ToyModel(one, one, one, *eff, None, lam, None, selection), y0


def homogeneous_saturation(n_envs, p0, *, a0=0.5, b0=0.1, c_z=1.0, c_x=1.0, c_y=0.0,
                           alpha_z=1.0, alpha_x=1.0, alpha_y=1.0, lam: float = 0.0,
                           integration: IntegrationConfig = IntegrationConfig(), threshold: float = 0.5,
                           dtype=torch.float64, device=None, engine: str = "auto",
                           selection: SelectionLaw = REPLICATOR) -> FinalShare:
    """:func:`saturate` for N identical environments, via the exact reduction α_eff = α (1 + (N − 1) c).

    Parameters as in :func:`homogeneous_final_share`; returns the
    :class:`FinalShare` (share of the broadcast shape, and how each run ended).
    """
    model, y0 = _homogeneous_system(n_envs, p0, a0, b0, c_z, c_x, c_y, alpha_z, alpha_x, alpha_y, lam,
                                    dtype, device, selection)
    return saturate(model, y0, integration=integration, threshold=threshold, engine=engine)


def homogeneous_final_share(n_envs, p0, *, a0=0.5, b0=0.1, c_z=1.0, c_x=1.0, c_y=0.0,
                            alpha_z=1.0, alpha_x=1.0, alpha_y=1.0, lam: float = 0.0,
                            integration: IntegrationConfig = IntegrationConfig(),
                            dtype=torch.float64, device=None, selection: SelectionLaw = REPLICATOR) -> Tensor:
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
    selection : SelectionLaw
        The selection law (docs/model.md §9); γ may be an array that
        broadcasts with the others. Default: the post's replicator.

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
    return homogeneous_saturation(n_envs, p0, a0=a0, b0=b0, c_z=c_z, c_x=c_x, c_y=c_y, alpha_z=alpha_z,
                                  alpha_x=alpha_x, alpha_y=alpha_y, lam=lam, integration=integration,
                                  dtype=dtype, device=device, selection=selection).share


# ---- the search -------------------------------------------------------------------------------

class SearchStatus(Enum):
    """How a critical-diversity search ended for one replica (like diffrax's RESULTS).

    ``str(status)`` is its value (``"found"``, ...); :attr:`message` explains it.
    """

    FOUND = "found"
    AT_FIRST = "at_or_below_first_n"
    ABOVE_N_MAX = "above_n_max"
    NOT_CONVERGED = "not_converged"

    def __str__(self) -> str:
        return self.value

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    SearchStatus.FOUND: "N* found",
    SearchStatus.AT_FIRST: "the threshold is crossed already at the smallest N searched: N* is at or below it",
    SearchStatus.ABOVE_N_MAX: "threshold not crossed up to n_max: N* is above it (raise n_max / --n-max)",
    SearchStatus.NOT_CONVERGED: ("not converged by t_max: a final share that decided N* was still moving toward "
                                 "the threshold when the step cap was reached (raise --t-max or --max-steps)"),
}


@dataclass
class CriticalDiversity:
    """Result of a critical-diversity search.

    Attributes
    ----------
    n_star : ndarray of float, shape (...)
        N* per replica: integer-valued for ``"bisection"`` and ``"scan"``,
        interpolated for ``"grid"``; the smallest N searched for
        ``at_or_below_first_n`` (an upper bound); NaN for ``above_n_max``
        (no value: N* lies above ``n_max``). Never ``inf``.
    method : str
        ``"bisection"``, ``"grid"`` or ``"scan"``.
    threshold : float
        The mean-p threshold.
    n_grid : ndarray of int or None
        The N evaluated (``"grid"``/``"scan"``).
    share : ndarray or None, shape (len(n_grid), ...)
        Mean final p at each grid N (``"grid"``/``"scan"``).
    status : ndarray of SearchStatus, shape (...)
        Per replica (see :class:`SearchStatus`).
    n_max : ndarray, shape (...)
        Largest N whose share was evaluated for the replica (the bound of
        ``above_n_max``).
    """

    n_star: np.ndarray
    method: str
    threshold: float
    n_grid: np.ndarray | None = None
    share: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    status: np.ndarray | None = None
    n_max: np.ndarray | None = None

    def __post_init__(self):
        self.n_star = np.asarray(self.n_star, dtype=float)
        if self.status is None:
            self.status = np.full(self.n_star.shape, SearchStatus.FOUND, dtype=object)

    @property
    def ok(self) -> np.ndarray:
        """Bool per replica: N* found exactly (status ``found``)."""
        return _status_is(self.status, SearchStatus.FOUND)

    def ranked(self) -> np.ndarray:
        """N* with ``above_n_max`` as +inf: for order statistics over replicas only, never to report."""
        above = _status_is(self.status, SearchStatus.ABOVE_N_MAX) | np.isnan(self.n_star)
        return np.where(above, np.inf, self.n_star)

    def describe(self, index=()) -> str:
        """One replica's N* as text, with its status next to the number (e.g. ``N* > 10000 (above_n_max: ...)``)."""
        return format_n_star(self.n_star[index], self.status[index],
                             None if self.n_max is None else np.asarray(self.n_max)[index])

    def to_dict(self) -> dict:
        """JSON-ready: n_star (None where there is no value), status, message, n_max per replica."""
        flat = [(None if not np.isfinite(v) else float(v)) for v in self.n_star.reshape(-1)]
        status = [s.value for s in self.status.reshape(-1)]
        out = {"method": self.method, "threshold": self.threshold, "shape": list(self.n_star.shape),
               "n_star": flat, "status": status,
               "messages": {s.value: s.message for s in SearchStatus}}
        if self.n_max is not None:
            out["n_max"] = [float(v) for v in np.broadcast_to(self.n_max, self.n_star.shape).reshape(-1)]
        return out


def _status_is(status: np.ndarray, which: SearchStatus) -> np.ndarray:
    return np.vectorize(lambda s: s == which, otypes=[bool])(status) if status.size else np.zeros(status.shape, bool)


def format_n_star(value, status, n_max: int | None = None) -> str:
    """N* with its status beside it: ``N* = 12``, ``N* <= 1 (...)``, ``N* > 10000 (...)``, ``N* = 9 (not converged ...)``."""
    status = status if isinstance(status, SearchStatus) else SearchStatus(status)
    if status is SearchStatus.FOUND:
        return f"N* = {value:g}"
    if status is SearchStatus.AT_FIRST:
        return f"N* <= {value:g} ({status.value}: {status.message})"
    if status is SearchStatus.ABOVE_N_MAX:
        return f"N* > {_g(n_max)} ({status.value}: {status.message})"
    shown = f"N* = {value:g}" if np.isfinite(value) else f"N* > {_g(n_max)}"
    return f"{shown} ({status.value}: {status.message})"


def _g(n_max) -> str:
    return "n_max" if n_max is None else f"{float(n_max):g}"


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
        NaN where no grid point exceeds the threshold (N* above the grid),
        ``n_grid[0]`` where the first does. :func:`find_critical_diversity`
        reports both cases with a status.
    """
    n_grid = np.asarray(n_grid, dtype=float)
    share = np.asarray(share, dtype=float)
    above = share > threshold
    out = np.full(share.shape[1:], np.nan)
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


def _evaluate(final_share, n: np.ndarray):
    """Call a final-share function; returns (share, settled) as numpy arrays of n's shape."""
    out = final_share(n)
    if isinstance(out, FinalShare):
        share, settled = out.share, out.settled
    elif isinstance(out, tuple):
        share, settled = out
    else:
        share, settled = out, None
    share = np.asarray(to_numpy(share), dtype=float)
    settled = np.ones(share.shape, bool) if settled is None else np.broadcast_to(np.asarray(settled, bool),
                                                                                  share.shape)
    return share, settled


def find_critical_diversity(final_share: Callable[[np.ndarray], object], *, batch_shape=(),
                            method: str = "bisection", threshold: float = 0.5, n_max: int = 10_000,
                            n_grid_points: int = 16, n_grid=None, probes: int = 15,
                            common_n: bool = False, chunk: int | None = None,
                            stop: Callable[[np.ndarray], bool] | None = None,
                            progress: bool = False, desc: str | None = None) -> CriticalDiversity:
    """The critical diversity N* of a batch of replicas, for any final-share function.

    Parameters
    ----------
    final_share : callable(n) -> share, (share, settled) or FinalShare
        ``n``: int array of shape ``batch_shape + (K,)``, K values of N per
        replica; returns the mean final p of each (replica, N), same shape,
        optionally with a bool ``settled`` array (False: the run had not
        converged by its step cap, see :func:`saturate`).
    batch_shape : tuple of int
        The replica shape.
    method : {"bisection", "grid", "scan"}
        See the module docstring. ``"bisection"`` assumes the share rises with N.
    threshold : float in (0, 1)
        Mean-p threshold (0.5 in the post).
    n_max : int >= 1
        Largest N searched (``"bisection"``, ``"scan"``, and the default grid).
    n_grid_points, n_grid
        ``"grid"``: :func:`log_grid` ``(n_max, n_grid_points)``, or this
        explicit sorted grid of N (integers, or reals for a model such as
        the protocol ODE that accepts a real N).
    probes : int >= 1
        ``"bisection"``: N probed per replica and round (15: ~4 rounds for
        1 ... 10,000).
    common_n : bool
        Every replica must be probed at the same N in one call (a builder
        that makes all replicas at one N). Bisection then probes the median
        pending midpoint(s).
    chunk : int, optional
        ``"grid"``/``"scan"``: evaluate this many grid points per call
        (default: all at once).
    stop : callable(crossed) -> bool, optional
        ``"grid"``/``"scan"``: called after every chunk with the bool array
        (batch_shape) of replicas that crossed; True stops the grid there
        (replicas not yet crossed report ``above_n_max`` with the last N run).
    progress : bool
        tqdm bar (to stderr) over the calls; ``desc`` labels it.

    Returns
    -------
    CriticalDiversity
        ``n_star``, ``status`` and ``n_max`` of shape ``batch_shape``.

    Raises
    ------
    ValueError
        For an unknown method, a threshold outside (0, 1), n_max < 1 or probes < 1.

    References
    ----------
    docs/model.md §3 (definition, both methods) and §4; the post, "Numerical Details".
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_probability("threshold", threshold)
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    shape = tuple(batch_shape)
    if method in ("grid", "scan"):
        if method == "scan":
            grid = np.arange(1, n_max + 1)
        else:
            grid = log_grid(n_max, n_grid_points) if n_grid is None else np.asarray(n_grid)
        return _grid_search(final_share, shape, grid, method, threshold, chunk, stop, progress, desc)
    return _bisection(final_share, shape, threshold, n_max, probes, common_n, progress, desc)


def _grid_search(final_share, shape, grid, method, threshold, chunk, stop, progress, desc) -> CriticalDiversity:
    step = len(grid) if chunk is None else max(1, int(chunk))
    bar = _progress_bar(len(grid), desc or "N grid", progress)
    shares, settled, done = [], [], []
    for start in range(0, len(grid), step):
        ns = grid[start:start + step]
        s, ok = _evaluate(final_share, np.broadcast_to(ns, shape + (len(ns),)).copy())
        shares.append(np.moveaxis(s, -1, 0))
        settled.append(np.moveaxis(ok, -1, 0))
        done.extend(ns.tolist())
        if bar is not None:
            bar.update(len(ns))
        if stop is not None and stop((np.concatenate(shares) > threshold).any(0)):
            break
    if bar is not None:
        bar.close()
    share, ok = np.concatenate(shares), np.concatenate(settled)
    n_grid = np.array(done)
    above = share > threshold
    crossed = above.any(0)
    first = np.argmax(above, axis=0)
    if method == "scan":
        n_star = np.where(crossed, n_grid[first].astype(float), np.nan)
    else:
        n_star = interpolate_crossing(n_grid, share, threshold)
    # every run up to the first crossing decides N* (all of them when none crossed)
    upto = np.where(crossed, first, len(n_grid) - 1)
    decided_by_unsettled = (~ok & (np.arange(len(n_grid)).reshape((-1,) + (1,) * len(shape)) <= upto)).any(0)
    status = np.full(shape, SearchStatus.FOUND, dtype=object)
    status[crossed & (first == 0) & (n_grid[0] > 1)] = SearchStatus.AT_FIRST
    status[~crossed] = SearchStatus.ABOVE_N_MAX
    status[decided_by_unsettled] = SearchStatus.NOT_CONVERGED
    return CriticalDiversity(n_star, method, threshold, n_grid, share, status=status,
                             n_max=np.full(shape, n_grid[-1]))


def _bisection(final_share, shape, threshold, n_max, k, common_n, progress, desc) -> CriticalDiversity:
    ends, ends_ok = _evaluate(final_share, np.broadcast_to(np.array([1, n_max]), shape + (2,)).copy())
    at_one = ends[..., 0] > threshold
    n_star = np.where(at_one, 1.0, np.where(ends[..., 1] > threshold, np.nan, np.inf))
    unsettled = ~ends_ok[..., 0] | (~at_one & ~ends_ok[..., 1])
    lo = np.ones(shape, dtype=np.int64)
    hi = np.full(shape, n_max, dtype=np.int64)
    bar = _progress_bar(None, desc or "bisection rounds", progress)
    while True:
        open_ = np.isnan(n_star) & (hi - lo > 1)
        if not open_.any():
            break
        if common_n:
            mids = np.unique(((lo + hi) // 2)[open_])
            pick = mids[np.unique(np.linspace(0, len(mids) - 1, min(k, len(mids))).round().astype(int))]
            probes = np.broadcast_to(pick, shape + (len(pick),)).astype(float)
        else:  # k probes strictly between lo and hi, geometrically spaced, integer
            frac = np.arange(1, k + 1) / (k + 1)
            probes = np.exp(np.log(lo)[..., None] + frac * (np.log(hi) - np.log(lo))[..., None])
            probes = np.clip(np.round(probes), (lo + 1)[..., None], np.maximum(hi - 1, lo + 1)[..., None])
            # narrow brackets: cover the arithmetic midpoints
            lin = lo[..., None] + np.ceil(frac * (hi - lo)[..., None])
            probes = np.where((hi - lo)[..., None] <= 2 * k,
                              np.clip(lin, lo[..., None] + 1, hi[..., None] - 1), probes)
        s, ok = _evaluate(final_share, probes.astype(np.int64))
        inside = open_[..., None] & (probes > lo[..., None]) & (probes < hi[..., None])
        above = (s > threshold) & inside
        unsettled |= (inside & ~ok).any(-1)
        # new hi: smallest probe above; new lo: largest probe not above (and below new hi)
        big = np.where(above, probes, np.inf).min(-1)
        new_hi = np.where(np.isfinite(big), big, hi).astype(np.int64)
        small = np.where(inside & ~above & (probes < new_hi[..., None]), probes, -np.inf).max(-1)
        new_lo = np.where(np.isfinite(small), small, lo).astype(np.int64)
        lo = np.where(open_, new_lo, lo)
        hi = np.where(open_, new_hi, hi)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    above_max = np.isinf(n_star)
    n_star = np.where(np.isnan(n_star), hi.astype(float), n_star)
    n_star = np.where(above_max, np.nan, n_star)
    status = np.full(shape, SearchStatus.FOUND, dtype=object)
    status[above_max] = SearchStatus.ABOVE_N_MAX
    status[unsettled] = SearchStatus.NOT_CONVERGED
    return CriticalDiversity(n_star, "bisection", threshold, status=status, n_max=np.full(shape, n_max))


def critical_diversity(build: Callable[[int], tuple[ToyModel, Latents]], *, method: str = "grid",
                       threshold: float = 0.5, n_max: int = 10_000, n_grid_points: int = 16,
                       n_grid=None, integration: IntegrationConfig = IntegrationConfig(),
                       progress: bool = False, engine: str = "auto") -> CriticalDiversity:
    """Critical diversity N* for any model family, given a builder ``N -> (model, y0)``.

    Parameters
    ----------
    build : callable(int) -> (ToyModel, Latents)
        Returns the model with N environments and its initial log-odds; they
        may carry leading replica axes (shape ``(..., N)``), which must be the
        same for every N. For nested heterogeneous draws, build N from the first
        N environments of one large draw (see :func:`sim.heterogeneous_builder`).
    method : {"grid", "bisection", "scan"}
        See :func:`find_critical_diversity`; bisection probes one N (all
        replicas) per round, ~log2(n_max) integrations per distinct bracket.
    threshold, n_max, n_grid_points, n_grid
        As in :func:`find_critical_diversity`.
    integration : IntegrationConfig
        Euler settings (normalised time by default).
    progress : bool
        Show a tqdm bar over the probed N.
    engine : str
        Euler engine (see :func:`sim.euler`).

    Returns
    -------
    CriticalDiversity
        ``n_star`` and ``status`` of shape (...) (the replica shape).

    Raises
    ------
    ValueError
        For an unknown method, threshold outside (0, 1) or n_max < 1.

    References
    ----------
    docs/model.md §3 (definition, both methods) and §4; the post, "Numerical Details".
    """
    cache: dict[int, FinalShare] = {}

    def at(n: int) -> FinalShare:
        if n not in cache:
            model, y0 = build(int(n))
            cache[n] = saturate(model, y0, integration=integration, threshold=threshold, engine=engine)
        return cache[n]

    first = at(1)
    shape = tuple(first.share.shape)

    def share(ns: np.ndarray):
        row = ns.reshape(-1, ns.shape[-1])[0]
        res = [at(int(n)) for n in row]
        return (np.stack([to_numpy(r.share) for r in res], -1), np.stack([r.settled for r in res], -1))

    res = find_critical_diversity(share, batch_shape=shape, method=method, threshold=threshold, n_max=n_max,
                                  n_grid_points=n_grid_points, n_grid=n_grid, probes=1, common_n=True,
                                  chunk=1, progress=progress)
    res.extras["probed"] = np.array(sorted(cache))
    return res


def critical_diversity_homogeneous(p0, *, a0=0.5, b0=0.1, c_z=1.0, c_x=1.0, c_y=0.0,
                                   alpha_z=1.0, alpha_x=1.0, alpha_y=1.0, lam: float = 0.0,
                                   method: str = "bisection", threshold: float = 0.5,
                                   n_max: int = 10_000, n_grid_points: int = 16,
                                   integration: IntegrationConfig = IntegrationConfig(),
                                   dtype=torch.float64, device=None,
                                   progress: bool = False, engine: str = "auto",
                                   selection: SelectionLaw = REPLICATOR, n_grid=None) -> CriticalDiversity:
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
    lam : float
        Footnote-4 λ >= 0.
    method : {"bisection", "grid", "scan"}
        Exact integer N*, the post's log grid with log-linear interpolation,
        or every N up to n_max.
    threshold, n_max, n_grid_points, integration
        As in :func:`critical_diversity`.
    selection : SelectionLaw
        The selection law (docs/model.md §9); its γ may be an array that
        broadcasts with the other parameters (one N* per γ). Default: the
        post's replicator.
    n_grid : array of float, optional
        ``"grid"``: an explicit sorted grid of N >= 1. The reduction
        α (1 + (N − 1) c) is defined for real N, so a fine real grid gives a
        nearly continuous N* (used for slopes, ``sim._selection_figure``).
    engine : str
        Euler engine (see :func:`sim.euler`; ``"auto"`` picks numba on the CPU).

    Returns
    -------
    CriticalDiversity
        ``n_star`` and ``status`` per replica (NaN and ``above_n_max`` above
        ``n_max``; ``not_converged`` when a deciding run had not settled by
        ``integration.max_steps``).

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
    gamma_shape = () if selection.is_replicator else np.shape(to_numpy(selection.gamma))
    for name in ("p0", "a0", "b0"):
        check_probability(name, params[name])
    for name in ("c_z", "c_x", "c_y"):
        check_unit_interval(name, params[name])
    for name in ("alpha_z", "alpha_x", "alpha_y"):
        check_nonnegative(name, params[name])
    shape = np.broadcast_shapes(*(np.shape(v) for v in params.values()), gamma_shape)
    kw = {k: np.asarray(v, dtype=float)[..., None] for k, v in params.items()}
    law = selection
    if gamma_shape:
        law = replace(selection, gamma=np.asarray(to_numpy(selection.gamma), dtype=float)[..., None])

    def share(n):  # n: shape + (K,)
        return homogeneous_saturation(n, lam=lam, integration=integration, threshold=threshold, dtype=dtype,
                                      device=device, engine=engine, selection=law, **kw)

    return find_critical_diversity(share, batch_shape=shape, method=method, threshold=threshold, n_max=n_max,
                                   n_grid_points=n_grid_points, n_grid=n_grid, progress=progress)
