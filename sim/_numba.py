"""The numba engine: forward Euler of small batches, compiled (imported only when used).

For the fit's problems (tens to thousands of numbers per step) torch spends
~75 µs per Euler step on per-operation dispatch and numpy ~20 µs; a compiled
loop over replicas and environments takes well under a microsecond per
environment. The kernel steps the same vector field as the other engines: it
compiles ``sim._model.observed_gradients`` (which calls ``reward_gradients``)
and ``sim._couplings.homogeneous_transfer`` themselves (no copy of the model),
and supports identity, homogeneous and
dense (Gaussian-kernel) couplings with per-replica α, w, λ, c and selection-law
exponent γ (docs/model.md §9). There is one kernel per law, compiled from the
same loop: the replicator's never reads γ and runs the post's arithmetic (its
numbers do not move), the power law's reads γ per replica and environment.
Random Fourier features run on the torch engine.

The compiled kernel is cached on disk by numba (``cache=True``), so only the
first process on a machine pays the ~3 s compilation.
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import math
import types

import numba
import numpy as np

from ._couplings import DenseCoupling, HomogeneousCoupling, IdentityCoupling, homogeneous_transfer
from ._model import observed_gradients, reward_gradients

_gradients = numba.njit(error_model="numpy")(reward_gradients)
# observed_gradients calls reward_gradients: the same code object, with that global bound to
# the compiled function (numba cannot call a plain Python function)
_observed = numba.njit(error_model="numpy")(types.FunctionType(
    observed_gradients.__code__, {"reward_gradients": _gradients, "__builtins__": builtins},
    "observed_gradients", observed_gradients.__defaults__))
_homogeneous = numba.njit(error_model="numpy")(homogeneous_transfer)

#: numba's on-disk cache checks only the source file of the cached function (this one); the
#: kernel's name carries a hash of the model functions it compiles in, so that editing them
#: in sim/_model.py or sim/_couplings.py recompiles it instead of loading a stale kernel
MODEL_HASH = hashlib.sha1("".join(inspect.getsource(f) for f in (
    reward_gradients, observed_gradients, homogeneous_transfer)).encode()).hexdigest()[:12]

KIND_IDENTITY, KIND_HOMOGENEOUS, KIND_DENSE = 0, 1, 2


@numba.njit(cache=True, error_model="numpy")
def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


@numba.njit(cache=True, error_model="numpy")
def _record(saved, r, k_eval, z, x, y, lam_r, i):
    """Store the probabilities (p, a, b) = (σ(z), σ(x + λ y), σ(y)) of one env at a grid time."""
    saved[r, k_eval, 0, i] = _sigmoid(z)
    saved[r, k_eval, 1, i] = _sigmoid(x + lam_r * y)
    saved[r, k_eval, 2, i] = _sigmoid(y)


def _euler(state, alpha, w, lam, gamma, skills, obs, kinds, c, mats, dt, n_steps, tol, grid, saved, taken,
           converged):
    """Euler steps of R independent replicas, in place (see :func:`euler`)."""
    n_rep = state.shape[1]
    n_env = state.shape[2]
    n_grid = grid.shape[0]
    s = np.empty((3, n_env))
    old = np.empty((3, n_env))
    g = np.empty((3, n_env))
    d = np.empty((3, n_env))
    for r in range(n_rep):
        for k in range(3):
            for i in range(n_env):
                s[k, i] = state[k, r, i]
        k_eval = 0
        lam_r = lam[r]
        while k_eval < n_grid and grid[k_eval] <= 0:
            for i in range(n_env):
                _record(saved, r, k_eval, s[0, i], s[1, i], s[2, i], lam_r, i)
            k_eval += 1
        n_done = 0
        conv = False
        for step in range(1, n_steps[r] + 1):
            for i in range(n_env):
                p = _sigmoid(s[0, i])
                a = _sigmoid(s[1, i] + lam_r * s[2, i])
                b = _sigmoid(s[2, i])
                # observed reward units (docs/model.md §7); bounds (0, 1) give reward_gradients exactly;
                # selection law (§9): POWER is a compile-time constant (one kernel per law), so the
                # replicator's kernel has one call site, inlined as before the law existed
                if POWER:
                    if skills:
                        gz, gx, gy = _observed(p, a, b, lam_r, obs[0, r, i], obs[1, r, i], obs[2, r, i],
                                               obs[3, r, i], gamma[r, i], gamma[r, i])
                    else:
                        gz, gx, gy = _observed(p, a, b, lam_r, obs[0, r, i], obs[1, r, i], obs[2, r, i],
                                               obs[3, r, i], gamma[r, i])
                else:
                    gz, gx, gy = _observed(p, a, b, lam_r, obs[0, r, i], obs[1, r, i], obs[2, r, i], obs[3, r, i])
                wi = w[r, i]
                g[0, i] = gz * wi
                g[1, i] = gx * wi
                g[2, i] = gy * wi
            speed = 0.0
            for k in range(3):
                kind = kinds[k]
                if kind == KIND_HOMOGENEOUS:
                    total = 0.0
                    for j in range(n_env):
                        total += g[k, j]
                    ck = c[k, r]
                    for i in range(n_env):
                        d[k, i] = alpha[k, r, i] * _homogeneous(g[k, i], ck, total)
                elif kind == KIND_DENSE:
                    for i in range(n_env):
                        acc = 0.0
                        for j in range(n_env):
                            acc += mats[k, r, i, j] * g[k, j]
                        d[k, i] = alpha[k, r, i] * acc
                else:
                    for i in range(n_env):
                        d[k, i] = alpha[k, r, i] * g[k, i]
                for i in range(n_env):
                    if abs(d[k, i]) > speed:
                        speed = abs(d[k, i])
            if tol >= 0 and speed < tol:
                conv = True
                break
            t_new = step * dt
            record = k_eval < n_grid and grid[k_eval] <= t_new + 1e-12
            if record:
                for k in range(3):
                    for i in range(n_env):
                        old[k, i] = s[k, i]
            for k in range(3):
                for i in range(n_env):
                    s[k, i] += dt * d[k, i]
            while k_eval < n_grid and grid[k_eval] <= t_new + 1e-12:
                frac = (grid[k_eval] - (step - 1) * dt) / dt
                for i in range(n_env):
                    _record(saved, r, k_eval, old[0, i] + frac * (s[0, i] - old[0, i]),
                            old[1, i] + frac * (s[1, i] - old[1, i]), old[2, i] + frac * (s[2, i] - old[2, i]),
                            lam_r, i)
                k_eval += 1
            n_done = step
        while k_eval < n_grid:
            for i in range(n_env):
                _record(saved, r, k_eval, s[0, i], s[1, i], s[2, i], lam_r, i)
            k_eval += 1
        for k in range(3):
            for i in range(n_env):
                state[k, r, i] = s[k, i]
        taken[r] = n_done
        converged[r] = conv


def _kernel(power: bool):
    """The Euler kernel for the replicator (``power`` False: the post's arithmetic, γ never read) or the
    power law (γ per replica and environment), compiled from the one loop above with POWER frozen."""
    name = f"_euler_{'power_' if power else ''}{MODEL_HASH}"
    f = types.FunctionType(_euler.__code__, {**globals(), "POWER": power}, name)
    f.__qualname__ = name
    return numba.njit(cache=True, error_model="numpy")(f)


POWER = False
_euler_replicator = _kernel(False)
_euler_power = _kernel(True)


def supports(model) -> bool:
    """True if every coupling of ``model`` is identity, homogeneous or dense (the kernel's kinds)."""
    return all(isinstance(c, (IdentityCoupling, HomogeneousCoupling, DenseCoupling)) for c in model.couplings)


def _np(value) -> np.ndarray:
    """A scalar, array or tensor as a float64 numpy array (no copy when it already is one)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def euler(model, state0: np.ndarray, *, dt: float, n_steps, tol, grid) -> tuple:
    """Forward Euler of ``model`` from the stacked state, with the numba kernel.

    Parameters
    ----------
    model : ToyModel
        With identity, homogeneous or dense couplings (:func:`supports`).
    state0 : ndarray, shape (3, *S, N)
        Initial (z, x, y), already broadcast to the replica shape S.
    dt : float
        Euler step, model time.
    n_steps : int or ndarray of int, shape S
        Steps per replica (a replica stops earlier if it converges).
    tol : float or None
        A replica stops (freezes) once max |d latent/dt| < tol.
    grid : ndarray of float, shape (G,), or None
        Times at which to record the state (linear interpolation inside a step).

    Returns
    -------
    (final, saved, taken, converged)
        final (3, *S, N) latents; saved (G, 3, *S, N) *probabilities* (p, a, b)
        at the grid times, or None; taken (S) int steps; converged (S) bool.
    """
    shape = state0.shape[1:]
    rep, n = shape[:-1], shape[-1]
    size = int(np.prod(rep, dtype=np.int64))
    state = np.array(np.asarray(state0, dtype=np.float64).reshape(3, size, n), order="C", copy=True)
    # fresh writable C arrays (one set of types: one compiled kernel), filled through reshaped views
    alpha = np.empty((3, size, n))
    for k, a in enumerate(model.alphas):
        alpha[k].reshape(shape)[...] = _np(a)
    w = np.ones((size, n))
    if model.w is not None:
        w.reshape(shape)[...] = _np(model.w)
    lam = np.empty(size)
    lam.reshape(rep + (1,) if rep else (1,))[...] = _np(model.lam)
    power = not model.selection.is_replicator
    gamma = np.empty((size, n) if power else (1, 1))   # selection-law exponent (docs/model.md §9)
    if power:
        gamma.reshape(shape)[...] = _np(model.selection.gamma)
    skills = bool(model.selection.skills) and power
    obs = np.empty((4, size, n))               # a_lo, a_hi − a_lo, b_lo, b_hi − b_lo
    if model.observation is None:
        obs[0], obs[1], obs[2], obs[3] = 0.0, 1.0, 0.0, 1.0
    else:
        a_lo, a_hi, b_lo, b_hi = (_np(v) for v in model.observation)
        for k, v in enumerate((a_lo, a_hi - a_lo, b_lo, b_hi - b_lo)):
            obs[k].reshape(shape)[...] = v
    kinds = np.zeros(3, dtype=np.int64)
    c = np.zeros((3, size))
    dense = any(isinstance(cp, DenseCoupling) for cp in model.couplings)
    mats = np.zeros((3, size, n, n) if dense else (3, 1, 1, 1))
    for k, cp in enumerate(model.couplings):
        if isinstance(cp, HomogeneousCoupling):
            kinds[k] = KIND_HOMOGENEOUS
            c[k].reshape(rep if rep else (1,))[...] = _np(cp.c)
        elif isinstance(cp, DenseCoupling):
            kinds[k] = KIND_DENSE
            m = cp.matrix.detach().cpu().numpy() if hasattr(cp.matrix, "detach") else cp.matrix
            mats[k] = np.broadcast_to(np.asarray(m, dtype=np.float64), rep + (n, n)).reshape(size, n, n)
    steps = np.empty(size, dtype=np.int64)
    steps.reshape(rep if rep else (1,))[...] = np.asarray(n_steps, dtype=np.int64)
    g = np.zeros(0) if grid is None else np.array(grid, dtype=np.float64, order="C", copy=True)
    saved = np.zeros((size, len(g), 3, n))   # per replica contiguous (cache-friendly writes)
    taken = np.zeros(size, dtype=np.int64)
    converged = np.zeros(size, dtype=np.bool_)
    kernel = _euler_power if power else _euler_replicator
    kernel(state, alpha, w, lam, gamma, skills, obs, kinds, c, mats, float(dt), steps, -1.0 if tol is None else float(tol),
           g, saved, taken, converged)
    final = state.reshape((3,) + shape)
    out_saved = None if grid is None else np.moveaxis(saved, 0, 2).reshape((len(g), 3) + shape)
    return final, out_saved, taken.reshape(rep), converged.reshape(rep)
