"""Integrators for the toy model: forward Euler (as the post) and an adaptive reference.

Both return a :class:`Solution`. Times are in model time (the unit fixed by
α^z = 1 in the single-environment case, docs/model.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._model import Latents, ToyModel

Tensor = torch.Tensor

STATUS_CONVERGED = "converged"  # every |d latent/dt| < tol
STATUS_HORIZON = "horizon"      # reached t_max first


@dataclass
class Solution:
    """Result of an integration (scipy / diffrax style).

    Attributes
    ----------
    ts : Tensor, shape (T,)
        Model times of the saved states.
    p, a, b : Tensor, shape (T, ..., n_envs)
        RS propensity, RS skill and local skill (probabilities in [0, 1]) at
        ``ts``; with ``save="final"``, T = 1 and ``ts`` holds the stop time.
    final : Latents
        Latents (z, x, y) at the stop time, shape ``(..., n_envs)`` each.
    status : str
        ``"converged"`` (every |d latent/dt| < tol) or ``"horizon"`` (t_max reached).
    n_steps : int
        Euler steps taken (function evaluations for the adaptive solver).
    converged : Tensor of bool, shape (...)
        Per replica: did its own derivatives fall below tol.
    message : str
        A human-readable account of the stop.
    """

    ts: Tensor
    p: Tensor
    a: Tensor
    b: Tensor
    final: Latents
    status: str
    n_steps: int
    converged: Tensor
    message: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def final_p(self) -> Tensor:
        """RS propensity at the stop time, shape ``(..., n_envs)``."""
        return torch.sigmoid(self.final.z)


def _check_dt(model: ToyModel, dt: float) -> None:
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    rate = model.max_rate()
    if dt * rate >= 2:
        raise ValueError(
            f"dt={dt} makes the Euler step unstable: dt must be < 2 / max_rate = {2 / rate:.4g} "
            f"(max_rate = max α · row-sum(C) · w / 4 = {rate:.4g})")


def euler(model: ToyModel, y0: Latents, *, dt: float = 0.1, t_max: float = 1000.0,
          tol: float | None = 1e-6, t_eval=None, save: str = "all",
          progress=None) -> Solution:
    """Integrate with forward Euler, stopping early when every derivative is below ``tol``.

    Parameters
    ----------
    model : ToyModel
        Learnabilities, couplings and training weights.
    y0 : Latents
        Initial log-odds, each of shape ``(..., n_envs)``; their dtype and
        device are used throughout (float64 for tests, float32 on GPU).
    dt : float
        Step in model time; must satisfy ``dt * model.max_rate() < 2``.
    t_max : float
        Horizon in model time.
    tol : float or None
        Early stop once max |d latent/dt| < tol over every replica and env;
        None disables early stopping (always run to ``t_max``).
    t_eval : array of float, optional
        Sorted model times at which to report the state (linear interpolation
        between the bracketing Euler steps). Overrides ``save``; times past an
        early stop report the stopped state.
    save : {"all", "final"}
        Save every step, or only the final state (for memory on sweeps).
    progress : callable(t, t_max), optional
        Called every ~1% of the horizon (e.g. to drive a progress bar).

    Returns
    -------
    Solution

    Raises
    ------
    ValueError
        If dt is not positive or is too large for a stable Euler step, or
        ``save`` is unknown.
    """
    _check_dt(model, dt)
    if save not in ("all", "final"):
        raise ValueError(f"save must be 'all' or 'final', got {save!r}")
    if save == "final" and t_eval is None:
        return _euler_final(model, y0, dt=dt, t_max=t_max, tol=tol, progress=progress)
    d0 = model.rhs(y0)  # replica axes of α, w or couplings may broadcast the state up
    shape = torch.broadcast_shapes(*(t.shape for t in y0), *(t.shape for t in d0))
    z, x, y = (t.expand(shape).clone() for t in y0)
    n_max = int(np.ceil(t_max / dt - 1e-9))
    grid = None if t_eval is None else np.asarray(t_eval, dtype=float)
    if grid is not None and np.any(np.diff(grid) < 0):
        raise ValueError("t_eval must be sorted")
    saved_t, saved = [], []

    def record(t, state):
        saved_t.append(t)
        saved.append(Latents(*(s.clone() for s in state)))

    k_eval = 0
    if grid is not None:
        while k_eval < len(grid) and grid[k_eval] <= 0:
            record(float(grid[k_eval]), (z, x, y))
            k_eval += 1
    elif save == "all":
        record(0.0, (z, x, y))

    status, n = STATUS_HORIZON, 0
    report_every = max(1, n_max // 100)
    converged = torch.zeros(z.shape[:-1], dtype=torch.bool, device=z.device)
    for n in range(1, n_max + 1):
        d = model.rhs(Latents(z, x, y))
        if tol is not None:
            speed = torch.maximum(torch.maximum(d.z.abs(), d.x.abs()), d.y.abs()).amax(dim=-1)
            converged = speed < tol
            if bool(converged.all()):
                status, n = STATUS_CONVERGED, n - 1
                break
        z_new, x_new, y_new = z + dt * d.z, x + dt * d.x, y + dt * d.y
        t_new = n * dt
        if grid is not None:
            while k_eval < len(grid) and grid[k_eval] <= t_new + 1e-12:
                frac = (grid[k_eval] - (n - 1) * dt) / dt
                record(float(grid[k_eval]), tuple(o + frac * (nw - o) for o, nw in
                                                   ((z, z_new), (x, x_new), (y, y_new))))
                k_eval += 1
        z, x, y = z_new, x_new, y_new
        if grid is None and save == "all":
            record(t_new, (z, x, y))
        if progress is not None and n % report_every == 0:
            progress(t_new, t_max)
    t_stop = n * dt
    if grid is not None:
        while k_eval < len(grid):
            record(float(grid[k_eval]), (z, x, y))
            k_eval += 1
    elif save == "final" or not saved_t:
        record(t_stop, (z, x, y))
    final = Latents(z, x, y)
    if tol is None:
        converged = torch.zeros(z.shape[:-1], dtype=torch.bool, device=z.device)
    msg = (f"converged at t={t_stop:g} after {n} steps (tol={tol})" if status == STATUS_CONVERGED
           else f"reached t_max={t_max:g} after {n} steps")
    return _solution(saved_t, saved, final, status, n, converged, msg, model.lam, z)


def _alpha(value, like: Tensor):
    if isinstance(value, (int, float)):
        return float(value)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _euler_final(model: ToyModel, y0: Latents, *, dt: float, t_max: float, tol: float | None,
                 progress=None) -> Solution:
    """Fast path of :func:`euler` for ``save="final"``: same steps, fused and in place.

    The three latents live in one stacked tensor (one sigmoid call per step),
    learnabilities are pre-multiplied by dt, the RS-path and local gradients
    share p and 1 − p, and couplings that are the same object (e.g. one set of
    random features for z and x) are applied once to a stacked input.
    """
    like = y0.z
    d0 = model.rhs(y0)  # its shape tells how couplings/α broadcast against the state
    shape = torch.broadcast_shapes(*(t.shape for t in y0), *(t.shape for t in d0))
    state = torch.stack([t.to(like.dtype).expand(shape) for t in y0]).clone()
    lam = model.lam
    w = None if model.w is None else torch.as_tensor(model.w, dtype=like.dtype, device=like.device)
    a_dt = [_alpha(a, like) * dt for a in (model.alpha_z, model.alpha_x, model.alpha_y)]
    cz, cx, cy = model.coupling_z, model.coupling_x, model.coupling_y
    n_max = int(np.ceil(t_max / dt - 1e-9))
    report_every = max(1, n_max // 100)
    status, n = STATUS_HORIZON, 0
    converged = torch.zeros(like.shape[:-1], dtype=torch.bool, device=like.device)
    grads = torch.empty_like(state)
    for n in range(1, n_max + 1):
        if lam:
            s = torch.sigmoid(torch.stack((state[0], state[1] + lam * state[2], state[2])))
        else:
            s = torch.sigmoid(state)
        p, a, b = s[0], s[1], s[2]
        q = s * (1 - s)                      # p(1-p), a(1-a), b(1-b)
        torch.mul(q[0], a - b, out=grads[0])
        torch.mul(p, q[1], out=grads[1])
        torch.mul(1 - p, q[2], out=grads[2])
        if lam:
            grads[2].add_(grads[1], alpha=lam)
        if w is not None:
            grads.mul_(w)
        if cz is cx and cx is cy:
            transferred = cz.apply(grads)
            dz, dx, dy = transferred[0], transferred[1], transferred[2]
        elif cz is cx:
            zx = cz.apply(grads[:2])
            dz, dx, dy = zx[0], zx[1], cy.apply(grads[2])
        else:
            dz, dx, dy = cz.apply(grads[0]), cx.apply(grads[1]), cy.apply(grads[2])
        if tol is not None:
            speed = torch.maximum(torch.maximum((dz * (a_dt[0] / dt)).abs(), (dx * (a_dt[1] / dt)).abs()),
                                  (dy * (a_dt[2] / dt)).abs()).amax(dim=-1)
            converged = speed < tol
            if bool(converged.all()):
                status, n = STATUS_CONVERGED, n - 1
                break
        state[0].addcmul_(dz, a_dt[0]) if not isinstance(a_dt[0], float) else state[0].add_(dz, alpha=a_dt[0])
        state[1].addcmul_(dx, a_dt[1]) if not isinstance(a_dt[1], float) else state[1].add_(dx, alpha=a_dt[1])
        state[2].addcmul_(dy, a_dt[2]) if not isinstance(a_dt[2], float) else state[2].add_(dy, alpha=a_dt[2])
        if progress is not None and n % report_every == 0:
            progress(n * dt, t_max)
    t_stop = n * dt
    final = Latents(state[0], state[1], state[2])
    if tol is None:
        converged = torch.zeros(like.shape[:-1], dtype=torch.bool, device=like.device)
    msg = (f"converged at t={t_stop:g} after {n} steps (tol={tol})" if status == STATUS_CONVERGED
           else f"reached t_max={t_max:g} after {n} steps")
    return _solution([t_stop], [final], final, status, n, converged, msg, lam, like)


def _solution(saved_t, saved, final, status, n, converged, msg, lam, like) -> Solution:
    ts = torch.tensor(saved_t, dtype=like.dtype, device=like.device)
    zs = torch.stack([s.z for s in saved])
    xs = torch.stack([s.x for s in saved])
    ys = torch.stack([s.y for s in saved])
    return Solution(ts, torch.sigmoid(zs), torch.sigmoid(xs + lam * ys), torch.sigmoid(ys),
                    final, status, n, converged, msg)


def adaptive(model: ToyModel, y0: Latents, *, t_max: float = 1000.0, t_eval=None,
             rtol: float = 1e-10, atol: float = 1e-12, method: str = "DOP853") -> Solution:
    """Reference solution with ``scipy.integrate.solve_ivp`` (default DOP853).

    For accuracy checks of :func:`euler`: runs on CPU in float64 and does not
    stop early. Parameters as in :func:`euler`; ``rtol``/``atol`` are
    solve_ivp's tolerances.

    Raises
    ------
    RuntimeError
        If solve_ivp reports a failure.
    """
    from scipy.integrate import solve_ivp

    shape = y0.z.shape
    device = y0.z.device
    y_flat = torch.cat([t.detach().to("cpu", torch.float64).reshape(-1) for t in y0]).numpy()
    size = y0.z.numel()

    def f(_t, v):
        s = torch.from_numpy(v)
        state = Latents(s[:size].reshape(shape), s[size:2 * size].reshape(shape),
                        s[2 * size:].reshape(shape))
        d = model.rhs(state)
        return torch.cat([t.reshape(-1) for t in d]).numpy()

    grid = np.array([t_max]) if t_eval is None else np.asarray(t_eval, dtype=float)
    res = solve_ivp(f, (0.0, float(grid[-1])), y_flat, method=method, t_eval=grid,
                    rtol=rtol, atol=atol)
    if not res.success:
        raise RuntimeError(f"solve_ivp failed: {res.message}")
    saved = []
    for k in range(res.y.shape[1]):
        s = torch.from_numpy(res.y[:, k].copy()).to(device)
        saved.append(Latents(s[:size].reshape(shape), s[size:2 * size].reshape(shape),
                             s[2 * size:].reshape(shape)))
    return _solution(list(res.t), saved, saved[-1], STATUS_HORIZON, int(res.nfev),
                     torch.zeros(shape[:-1], dtype=torch.bool), res.message, model.lam, y0.z)
