"""Integrators for the toy model: forward Euler (as the post) and an adaptive reference.

Integrators only step the model's :class:`~sim._model.VectorField`; they
never restate it. Both return a :class:`Solution`. Times are in model time
(the unit fixed by α^z = 1 in the single-environment case, docs/model.md §2).

Forward Euler runs on one of three engines with identical steps:

- ``"numba"``: a compiled loop (``sim._numba``), for small problems on the CPU
  (the fit's: tens to thousands of numbers per step);
- ``"numpy"``: the generic loop on numpy float64 arrays (small problems when
  numba is not installed);
- ``"torch"``: the generic loop on tensors, for large batches, random
  Fourier features and GPUs, under a scoped thread policy
  (``sim._threads``).

``engine="auto"`` picks by device and size (:func:`choose_engine`). numpy and
numba compute in float64 and hand results back in the input's type and
dtype. A replica that meets the tolerance stops (its state freezes), so a
replica's result never depends on the other replicas in its batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch

from ._backend import NumpyBackend, TorchBackend, shape_of
from ._couplings import DenseCoupling, HomogeneousCoupling, IdentityCoupling
from ._model import Latents, ToyModel, _stack, probabilities
from ._options import ENGINES as ENGINES
from ._threads import ThreadPolicy

Tensor = torch.Tensor

#: auto: numba up to this many numbers touched per step (measured crossover with torch, see docs/model.md "Numerics")
NUMBA_MAX_WORK = 12_000
#: auto without numba: numpy up to this many numbers per step
NUMPY_MAX_WORK = 8192


class Status(str, Enum):
    """How an integration stopped (compares equal to its string value)."""

    CONVERGED = "converged"
    HORIZON = "horizon"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__

    @property
    def message(self) -> str:
        return {"converged": "every |d latent/dt| fell below tol",
                "horizon": "reached t_max before every |d latent/dt| fell below tol"}[self.value]


STATUS_CONVERGED = Status.CONVERGED
STATUS_HORIZON = Status.HORIZON


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
    status : Status
        ``"converged"`` (every replica's |d latent/dt| < tol) or ``"horizon"``
        (t_max reached by at least one replica).
    n_steps : int
        Euler steps taken by the longest-running replica (function
        evaluations for the adaptive solver).
    converged : Tensor of bool, shape (...)
        Per replica: did its own derivatives fall below tol.
    message : str
        A human-readable account of the stop.
    engine : str
        ``"numba"``, ``"numpy"``, ``"torch"`` or ``"solve_ivp"``.
    extras : dict
        torch engine: ``threads`` (the count at the end) and ``thread_choices``
        (the thread policy's measurements, (threads, seconds per step)).
    steps : Tensor of int, shape (...)
        Euler steps each replica took (it freezes once converged).

    Arrays are tensors when the initial state was given as tensors, numpy
    arrays when it was given as numpy arrays.
    """

    ts: Tensor
    p: Tensor
    a: Tensor
    b: Tensor
    final: Latents
    status: Status
    n_steps: int
    converged: Tensor
    message: str = ""
    extras: dict = field(default_factory=dict)
    engine: str = ""
    steps: Tensor | None = None

    @property
    def final_p(self) -> Tensor:
        """RS propensity at the stop time, shape ``(..., n_envs)``."""
        return probabilities(self.final.z, self.final.x, self.final.y)[0]


def check_dt(model: ToyModel, dt: float) -> None:
    """Raise ``ValueError`` unless ``0 < dt`` and ``dt * model.max_rate() < 2`` (Euler stability)."""
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    rate = model.max_rate()
    if dt * rate >= 2:
        raise ValueError(
            f"dt={dt} makes the Euler step unstable: dt must be < 2 / max_rate = {2 / rate:.4g} "
            f"(max_rate = max α · row-sum(C) · w / 4 = {rate:.4g})")


def _work(model: ToyModel, size: int, n_envs: int) -> int:
    """Numbers touched per Euler step by ``size`` replicas: the state plus every product with C.

    A dense coupling reads N numbers per environment, random features 2 M.
    """
    factor = 3
    for c in {id(c): c for c in model.couplings}.values():
        if isinstance(c, DenseCoupling):
            factor += n_envs
        elif hasattr(c, "n_features"):
            factor += 2 * int(c.n_features)
    return size * n_envs * factor


def choose_engine(model: ToyModel, y0: Latents, engine: str = "auto", *, progress=None) -> str:
    """The Euler engine for ``model`` and ``y0``: ``engine`` itself, or the automatic choice.

    ``"auto"``: the engine of an enclosing :func:`engine_setting` if any;
    else torch for GPU tensors, random-feature couplings, a progress
    callback or more than :data:`NUMBA_MAX_WORK` numbers per step; otherwise
    numba (numpy if numba is not installed and the problem is below
    :data:`NUMPY_MAX_WORK`).

    Raises
    ------
    ValueError
        For an unknown engine, numba asked for a coupling it does not
        support (random Fourier features) or with a progress callback, or
        numba not installed.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        engine = _DEFAULT_ENGINE[-1]
    simple = all(isinstance(c, (IdentityCoupling, HomogeneousCoupling, DenseCoupling)) for c in model.couplings)
    if engine == "numba":
        if not simple:
            raise ValueError("engine 'numba' supports identity, homogeneous and dense couplings; "
                             "use 'torch' or 'numpy' for random Fourier features")
        if progress is not None:
            raise ValueError("engine 'numba' cannot report progress; use 'torch' or 'numpy'")
        if not numba_available():
            raise ValueError("engine 'numba' needs numba (pip install numba)")
        return engine
    if engine != "auto":
        return engine
    if isinstance(y0.z, Tensor) and y0.z.device.type != "cpu":
        return "torch"
    if not simple:
        return "torch"
    work = _work(model, int(np.prod(_replica_shape(model, y0), dtype=np.int64)), model.n_envs)
    if progress is None and work <= NUMBA_MAX_WORK and numba_available():
        return "numba"
    if work <= NUMPY_MAX_WORK:
        return "numpy"
    return "torch"


_NUMBA: list = []
_DEFAULT_ENGINE: list = ["auto"]


@contextlib.contextmanager
def engine_setting(engine: str = "auto"):
    """Within this scope, integrations asking for ``engine="auto"`` use ``engine`` instead.

    For overriding the engine of code that does not expose it (e.g. a whole
    ``physrl.fitting.fit``: ``with sim.engine_setting("torch"): fit(...)``);
    restores the previous default on exit.

    Raises
    ------
    ValueError
        For an unknown engine.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _DEFAULT_ENGINE.append(engine)
    try:
        yield
    finally:
        _DEFAULT_ENGINE.pop()


def numba_available() -> bool:
    """True if numba imports (checked once)."""
    if not _NUMBA:
        try:
            import numba  # noqa: F401
            _NUMBA.append(True)
        except ImportError:  # optional at run time: numpy takes over
            _NUMBA.append(False)
    return _NUMBA[0]


def _replica_shape(model: ToyModel, y0: Latents) -> tuple:
    """Broadcast replica shape of the state and every model quantity (without the env axis)."""
    shapes = [shape_of(v) for v in y0] + [shape_of(a) for a in model.alphas]
    shapes += [shape_of(model.w), shape_of(model.lam)[:-1] + (1,) if shape_of(model.lam) else ()]
    gamma = shape_of(model.selection.gamma)
    shapes.append(gamma[:-1] + (1,) if gamma else ())
    for c in model.couplings:
        if isinstance(c, HomogeneousCoupling):
            shapes.append(shape_of(c.c) + (1,))
        elif isinstance(c, DenseCoupling):
            shapes.append(tuple(c.matrix.shape[:-1]))
        elif hasattr(c, "features"):
            shapes.append(tuple(c.features.shape[:-1]))
    full = np.broadcast_shapes(*shapes, (model.n_envs,))
    return tuple(full[:-1])


def _initial_state(model: ToyModel, y0: Latents, backend, dtype=None):
    """Stacked (3, *S, N) copy of y0 broadcast to the model's replica shape, in ``backend``."""
    shape = _replica_shape(model, y0) + (model.n_envs,)
    if backend is NumpyBackend:
        return np.stack([np.broadcast_to(_np64(v), shape) for v in y0]).astype(dtype or np.float64)
    return torch.stack([v.expand(shape) for v in y0])


def _np64(v) -> np.ndarray:
    if isinstance(v, Tensor):
        return v.detach().cpu().numpy().astype(np.float64)
    return np.asarray(v, dtype=np.float64)


def _loop(field_, state, *, dt: float, n_steps, tol, grid, save_all: bool, progress, policy=None):
    """The generic Euler loop on numpy arrays or tensors (in place on ``state``).

    Returns (saved_t, saved, taken, converged): the recorded times and stacked
    states, and per-replica steps taken and convergence flags (backend arrays).
    """
    b = field_.backend
    rep = tuple(state.shape[1:-1])
    per_replica = np.ndim(n_steps) > 0
    n_max = int(np.max(n_steps)) if per_replica else int(n_steps)
    if b is TorchBackend:
        converged = torch.zeros(rep, dtype=torch.bool, device=state.device)
        limit = torch.as_tensor(n_steps, device=state.device) if per_replica else None
        taken = torch.zeros(rep, dtype=torch.int64, device=state.device)
    else:
        converged = np.zeros(rep, dtype=bool)
        limit = np.asarray(n_steps) if per_replica else None
        taken = np.zeros(rep, dtype=np.int64)
    masked = tol is not None or per_replica
    saved_t, saved = [], []
    k_eval = 0
    if grid is not None:
        while k_eval < len(grid) and grid[k_eval] <= 0:
            saved_t.append(float(grid[k_eval]))
            saved.append(b.copy(state))
            k_eval += 1
    elif save_all:
        saved_t.append(0.0)
        saved.append(b.copy(state))
    report_every = max(1, n_max // 100)
    timing = policy is not None and policy.measuring
    n = 0
    fused = not masked and grid is None and not save_all   # nothing but the state is needed
    for step in range(1, n_max + 1):
        t0 = time.perf_counter() if timing else 0.0
        if fused:
            field_.add_to(state, dt)
            n = step
            if progress is not None and step % report_every == 0:
                progress(step * dt, n_max * dt)
            if timing:
                policy.step(time.perf_counter() - t0)
            continue
        d = field_(state)
        if masked:
            active = ~converged
            if tol is not None:
                converged = converged | (active & (b.speed(d) < tol))
                active = ~converged
            if per_replica:
                active = active & (limit >= step)
            if not b.any(active):
                break
            if not b.all(active):
                d = d * active[..., None]
            taken = taken + active
        t_new = step * dt
        old = None
        if grid is not None and k_eval < len(grid) and grid[k_eval] <= t_new + 1e-12:
            old = b.copy(state)
        if b is TorchBackend:
            state.add_(d, alpha=dt)
        else:
            d *= dt
            state += d
        n = step
        if grid is not None:
            while k_eval < len(grid) and grid[k_eval] <= t_new + 1e-12:
                frac = (grid[k_eval] - (step - 1) * dt) / dt
                saved_t.append(float(grid[k_eval]))
                saved.append(old + frac * (state - old))
                k_eval += 1
        elif save_all:
            saved_t.append(t_new)
            saved.append(b.copy(state))
        if progress is not None and step % report_every == 0:
            progress(t_new, n_max * dt)
        if timing:
            policy.step(time.perf_counter() - t0)
    if not masked:
        taken = taken + n
    if grid is not None:
        while k_eval < len(grid):
            saved_t.append(float(grid[k_eval]))
            saved.append(b.copy(state))
            k_eval += 1
    return saved_t, saved, taken, converged


def euler(model: ToyModel, y0: Latents, *, dt: float = 0.1, t_max: float = 1000.0,
          tol: float | None = 1e-6, t_eval=None, save: str = "all", progress=None,
          engine: str = "auto", threads="auto") -> Solution:
    """Integrate with forward Euler, stopping each replica once its derivatives are below ``tol``.

    Parameters
    ----------
    model : ToyModel
        Learnabilities, couplings and training weights.
    y0 : Latents
        Initial log-odds, each of shape ``(..., n_envs)`` (tensors or numpy
        arrays); their type, dtype and device are those of the result
        (float64 for tests, float32 on GPU).
    dt : float
        Step in model time; must satisfy ``dt * model.max_rate() < 2``.
    t_max : float
        Horizon in model time.
    tol : float or None
        A replica stops (its state freezes) once its max |d latent/dt| < tol;
        the integration ends when every replica has stopped. None disables
        early stopping (always run to ``t_max``).
    t_eval : array of float, optional
        Sorted model times at which to report the state (linear interpolation
        between the bracketing Euler steps). Overrides ``save``; times past an
        early stop report the stopped state.
    save : {"all", "final"}
        Save every step, or only the final state (for memory on sweeps).
    progress : callable(t, t_max), optional
        Called every ~1% of the horizon (e.g. to drive a progress bar).
    engine : {"auto", "numba", "numpy", "torch"}
        See the module docstring and :func:`choose_engine`.
    threads : "auto", int or None
        torch engine only: the thread policy (:class:`sim._threads.ThreadPolicy`),
        applied for this call and restored afterwards.

    Returns
    -------
    Solution

    Raises
    ------
    ValueError
        If dt is not positive or is too large for a stable Euler step,
        ``save`` or ``engine`` is unknown, or ``t_eval`` is not sorted.

    References
    ----------
    docs/model.md §2 (dynamics, "train to saturation") and "Numerics".
    """
    check_dt(model, dt)
    if save not in ("all", "final"):
        raise ValueError(f"save must be 'all' or 'final', got {save!r}")
    grid = None if t_eval is None else np.asarray(t_eval, dtype=float).reshape(-1)
    if grid is not None and np.any(np.diff(grid) < 0):
        raise ValueError("t_eval must be sorted")
    n_steps = int(np.ceil(t_max / dt - 1e-9))
    return integrate_steps(model, y0, dt=dt, n_steps=n_steps, tol=tol, grid=grid,
                           save_all=save == "all" and grid is None, progress=progress,
                           engine=engine, threads=threads)


def integrate_steps(model: ToyModel, y0: Latents, *, dt: float, n_steps, tol=None, grid=None,
                    save_all: bool = False, progress=None, engine: str = "auto",
                    threads="auto") -> Solution:
    """Forward Euler with a step count per replica (the core of :func:`euler`).

    Parameters
    ----------
    n_steps : int or array of int, shape (...) (the replica shape)
        Euler steps each replica takes at most; a replica past its count
        freezes. A per-replica count gives each replica its own horizon
        ``n_steps · dt`` (used by ``sim._critical`` for the RS-propensity clock).
    grid : ndarray, optional
        As ``t_eval`` of :func:`euler` (needs a scalar ``n_steps``).

    Other parameters as in :func:`euler`; ``dt`` is not checked here.
    """
    engine = choose_engine(model, y0, engine, progress=progress)
    like = y0.z
    extras: dict = {}
    probs = None
    per_replica = np.ndim(n_steps) > 0
    if per_replica and (grid is not None or save_all):
        raise ValueError("per-replica step counts need save='final' without t_eval")
    if engine == "numba":
        from . import _numba
        state0 = _initial_state(model, y0, NumpyBackend)
        final, saved, taken, converged = _numba.euler(model, state0, dt=dt, n_steps=n_steps, tol=tol, grid=grid)
        saved_t = list(grid) if grid is not None else []
        if saved is not None:       # the kernel stores probabilities (p, a, b), not latents
            probs = saved
        saved = saved if saved is not None else []
    elif engine == "numpy":
        state = _initial_state(model, y0, NumpyBackend)
        saved_t, saved, taken, converged = _loop(model.field(state), state, dt=dt, n_steps=n_steps, tol=tol,
                                                 grid=grid, save_all=save_all, progress=progress)
        final = state
    else:
        t_like = like if isinstance(like, Tensor) else torch.as_tensor(like)
        state = _initial_state(model, Latents(*(torch.as_tensor(v, dtype=t_like.dtype, device=t_like.device)
                                                for v in y0)), TorchBackend)
        work = _work(model, state[0].numel() // model.n_envs, model.n_envs)
        with ThreadPolicy(threads, work, state.device.type) as policy:
            saved_t, saved, taken, converged = _loop(model.field(state), state, dt=dt, n_steps=n_steps, tol=tol,
                                                     grid=grid, save_all=save_all, progress=progress,
                                                     policy=policy)
            extras = {"threads": torch.get_num_threads(), "thread_choices": list(policy.choices)}
        final = state
    taken_np = np.asarray(taken.cpu() if isinstance(taken, Tensor) else taken)
    conv_np = np.asarray(converged.cpu() if isinstance(converged, Tensor) else converged)
    n_done = int(taken_np.max()) if taken_np.size else 0
    status = Status.CONVERGED if conv_np.size and conv_np.all() else Status.HORIZON
    t_stop = n_done * dt
    msg = (f"converged at t={t_stop:g} after {n_done} steps (tol={tol})" if status is Status.CONVERGED
           else f"reached t_max={np.max(n_steps) * dt:g} after {n_done} steps")
    if not len(saved_t):
        saved_t, saved = [t_stop], [final]
    sol = _solution(saved_t, saved, final, status, n_done, converged, taken, msg, model.lam, like, engine,
                    probs)
    sol.extras.update(extras)
    return sol


def _convert(v, like):
    """A backend array as the type, dtype and device of ``like``."""
    if isinstance(like, Tensor):
        t = v if isinstance(v, Tensor) else torch.from_numpy(np.array(v, order="C", copy=True))
        return t.to(dtype=like.dtype if t.is_floating_point() else t.dtype, device=like.device)
    arr = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
    return arr.astype(like.dtype) if arr.dtype.kind == "f" else arr


def _solution(saved_t, saved, final, status, n, converged, taken, msg, lam, like, engine,
              probs=None) -> Solution:
    """Assemble a Solution; ``saved`` is a list of stacked states or one array (T, 3, ..., N);
    ``probs``, if given, the stacked probabilities (p, a, b) at the saved times already."""
    if isinstance(saved, np.ndarray):
        states, ts = saved, np.asarray(saved_t, dtype=float)
    elif isinstance(saved[0], Tensor):
        states = torch.stack(saved)
        ts = torch.tensor(saved_t, dtype=like.dtype if isinstance(like, Tensor) else torch.float64)
    else:
        states = np.stack(saved)
        ts = np.asarray(saved_t, dtype=float)
    # probabilities in the engine's own backend (numpy's sigmoid is the same per element whatever
    # the batch layout, so a replica's states do not depend on its batch), then the caller's type
    if isinstance(states, np.ndarray) and not isinstance(lam, (int, float)):
        lam = lam.detach().cpu().numpy() if isinstance(lam, Tensor) else np.asarray(lam)
    if probs is None:
        probs = probabilities(states[:, 0], states[:, 1], states[:, 2], lam)
    else:
        probs = (probs[:, 0], probs[:, 1], probs[:, 2])
    p, a, b = (_convert(v, like) for v in probs)
    final = _convert(final, like)
    return Solution(_convert(ts, like), p, a, b, Latents(final[0], final[1], final[2]), status, n,
                    _convert(converged, like), msg, engine=engine, steps=_convert(taken, like))


def adaptive(model: ToyModel, y0: Latents, *, t_max: float = 1000.0, t_eval=None,
             rtol: float = 1e-10, atol: float = 1e-12, method: str = "DOP853") -> Solution:
    """Reference solution with ``scipy.integrate.solve_ivp`` (default DOP853).

    For accuracy checks of :func:`euler`: steps the numpy vector field in
    float64 on the CPU and does not stop early. Parameters as in
    :func:`euler`; ``rtol``/``atol`` are solve_ivp's tolerances.

    Raises
    ------
    RuntimeError
        If solve_ivp reports a failure.
    """
    from scipy.integrate import solve_ivp

    state0 = _initial_state(model, y0, NumpyBackend)
    shape = state0.shape
    field_ = model.field(state0)

    def f(_t, v):
        return np.asarray(field_(v.reshape(shape)), dtype=float).reshape(-1)

    grid = np.array([t_max]) if t_eval is None else np.asarray(t_eval, dtype=float)
    res = solve_ivp(f, (0.0, float(grid[-1])), state0.reshape(-1), method=method, t_eval=grid,
                    rtol=rtol, atol=atol)
    if not res.success:
        raise RuntimeError(f"solve_ivp failed: {res.message}")
    saved = [res.y[:, k].reshape(shape) for k in range(res.y.shape[1])]
    rep = shape[1:-1]
    return _solution(list(res.t), saved, saved[-1], Status.HORIZON, int(res.nfev), np.zeros(rep, bool),
                     np.zeros(rep, np.int64), res.message, model.lam, y0.z, "solve_ivp")
