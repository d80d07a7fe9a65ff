"""The toy model's vector field (docs/model.md §2): the only implementation in the project.

Per environment i the latents are the log-odds z_i (RS propensity
p = σ(z)), x_i (RS skill a = σ(x)) and y_i (local skill b = σ(y)). Gradient
flow on the expected reward R_j = p_j a_j + (1 - p_j) b_j, with transfer:

    dz_i/dt = α^z_i Σ_j C^z_ij w_j p_j (1 − p_j) (a_j − b_j)
    dx_i/dt = α^x_i Σ_j C^x_ij w_j p_j a_j (1 − a_j)
    dy_i/dt = α^y_i Σ_j C^y_ij w_j (1 − p_j) b_j (1 − b_j)

Footnote-4 variant (``lam`` > 0): a = σ(x + λ y), and ∂R/∂y gains
λ p a (1 − a).

Selection law (``selection``, docs/model.md §9): the z-term becomes
[p_j (1 − p_j)]^γ (a_j − b_j) (γ = 1, the default, is the post's replicator
above), optionally with the skill terms raised to the same power.

Three pieces, each written once:

- :func:`reward_gradients`: ∂R/∂(z, x, y) of one environment, elementwise
  (scalars in the numba kernel, numpy arrays, torch tensors), and
  :func:`observed_gradients`, the same in observed reward units (§7);
- the couplings' ``apply`` (``sim._couplings``): the transfer Σ_j C_ij v_j;
- :class:`VectorField`: the fused right-hand side of a :class:`ToyModel` for
  one backend (numpy or torch), on the stacked state ``(3, ..., n_envs)``.

Integrators (``sim._integrate``) only step a :class:`VectorField`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ._backend import backend_of, shape_of, to_numpy
from ._couplings import Coupling, HomogeneousCoupling, IdentityCoupling
from ._selection import REPLICATOR, SelectionLaw

Tensor = torch.Tensor


class Latents(NamedTuple):
    """The state: log-odds z, x, y, each of shape ``(..., n_envs)`` (tensors or numpy arrays)."""

    z: Tensor
    x: Tensor
    y: Tensor

    @classmethod
    def from_probabilities(cls, p, a, b, *, dtype=torch.float64, device=None) -> "Latents":
        """Latents from probabilities in (0, 1): z = logit p, x = logit a, y = logit b.

        Parameters
        ----------
        p, a, b : float, array or Tensor, in (0, 1)
            RS propensity, RS skill, local skill; broadcast together.

        Returns
        -------
        Latents
            Tensors of ``dtype`` on ``device``, of the broadcast shape.

        Raises
        ------
        ValueError
            If any probability is outside the open interval (0, 1).
        """
        out = []
        for name, value in (("p0", p), ("a0", a), ("b0", b)):
            t = torch.as_tensor(value, dtype=dtype, device=device)
            bad = torch.any(~((t > 0) & (t < 1))) if t.is_cuda else np.any(~((to_numpy(t) > 0) & (to_numpy(t) < 1)))
            if bool(bad):
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")
            out.append(torch.logit(t))
        z, x, y = torch.broadcast_tensors(*out)
        return cls(z.clone(), x.clone(), y.clone())

    def probabilities(self, lam=0.0) -> tuple:
        """Return (p, a, b) in [0, 1]; with footnote-4 λ, a = σ(x + λ y)."""
        return probabilities(self.z, self.x, self.y, lam)


def probabilities(z, x, y, lam=0.0) -> tuple:
    """(p, a, b) = (σ(z), σ(x + λ y), σ(y)) for numpy arrays or tensors (docs/model.md §1-2)."""
    sig = backend_of(z).sigmoid
    if _is_zero(lam):
        return sig(z), sig(x), sig(y)
    return sig(z), sig(x + lam * y), sig(y)


def reward_gradients(p, a, b, lam=None, gamma=None, skill_gamma=None):
    """∂R/∂(z, x, y) of one environment's expected reward R = p a + (1 − p) b, under the selection law.

    Elementwise and written with arithmetic only, so the same function serves
    scalars (compiled into the numba kernel), numpy arrays and torch tensors.
    With ``gamma`` and ``skill_gamma`` None it is the post's gradient flow
    (docs/model.md §2), computed exactly as before the selection law existed.

    Parameters
    ----------
    p, a, b : probabilities in [0, 1]
        RS propensity σ(z), RS skill σ(x + λ y), local skill σ(y).
    lam : float, array or None
        Footnote-4 λ >= 0; None (or omitted) for the post's model.
    gamma : float, array or None
        Selection-law exponent γ >= 0 of the z-term (docs/model.md §9):
        [p (1 − p)]^γ (a − b); None is γ = 1 (the replicator).
    skill_gamma : float, array or None
        The same for the skill terms: p [a (1 − a)]^γ and (1 − p) [b (1 − b)]^γ;
        None keeps the post's p a (1 − a), (1 − p) b (1 − b).

    Returns
    -------
    (gz, gx, gy)
        p(1 − p)(a − b), p a (1 − a), (1 − p) b (1 − b) + λ p a (1 − a) (at the defaults).
    """
    q = 1 - p
    if gamma is None:
        gz = p * q * (a - b)
    else:
        gz = (p * q) ** gamma * (a - b)
    if skill_gamma is None:
        gx = p * a * (1 - a)
        gy = q * b * (1 - b)
    else:
        gx = p * (a * (1 - a)) ** skill_gamma
        gy = q * (b * (1 - b)) ** skill_gamma
    if lam is not None:
        gy = gy + lam * gx
    return gz, gx, gy


def observed_gradients(p, a, b, lam, a_lo, a_span, b_lo, b_span, gamma=None, skill_gamma=None):
    """∂R/∂(z, x, y) of the expected reward in *observed* units (docs/model.md §7).

    R = p a_obs + (1 − p) b_obs with a_obs = a_lo + a_span · a and
    b_obs = b_lo + b_span · b: the gap that drives z is the observed one, and
    the x and y slopes scale with the spans. Elementwise like
    :func:`reward_gradients` (scalars in the numba kernel, arrays, tensors);
    with bounds (0, 1) it equals :func:`reward_gradients` exactly.

    Parameters
    ----------
    p, a, b : probabilities in [0, 1]
        σ(z), σ(x + λ y), σ(y).
    lam : float, array or None
        Footnote-4 λ >= 0.
    a_lo, a_span, b_lo, b_span : reward units
        Lower bounds and spans (hi − lo > 0) of the observed RS and local rewards.
    gamma, skill_gamma : float, array or None
        Selection-law exponents, as in :func:`reward_gradients` (None: the post's).

    Returns
    -------
    (gz, gx, gy)
    """
    gz = reward_gradients(p, a_lo + a_span * a, b_lo + b_span * b, None, gamma)[0]
    _, gx, gy = reward_gradients(p, a, b, None, None, skill_gamma)
    gx = gx * a_span
    gy = gy * b_span
    if lam is not None:
        gy = gy + lam * gx
    return gz, gx, gy


def _is_zero(value) -> bool:
    if isinstance(value, (int, float)):
        return value == 0
    return False


def _check_nonnegative(name: str, value, what: str) -> None:
    if value is None:
        return
    if isinstance(value, Tensor):
        bad = bool(torch.any(~(value >= 0))) if value.is_cuda else bool(np.any(~(to_numpy(value) >= 0)))
    else:
        bad = bool(np.any(~(np.asarray(value, dtype=float) >= 0)))
    if bad:
        raise ValueError(f"{name} ({what}) must be >= 0, got {value}")


@dataclass
class ToyModel:
    """Learnabilities, couplings, training weights and λ of the toy model (docs/model.md §1-2).

    Every quantity may carry leading replica axes: a batch of independent
    systems (parameter vectors of a fit, resampled environments, probe N of
    a search) integrates as one. Treat a model as immutable (derive a new
    one with ``dataclasses.replace``): prepared fields and rates are cached.

    Parameters
    ----------
    coupling_z, coupling_x, coupling_y : Coupling
        Transfer operators C^z, C^x, C^y (see ``sim._couplings``).
    alpha_z, alpha_x, alpha_y : float, array or Tensor, shape broadcasting to (..., n_envs)
        Learnabilities (>= 0), on the receiving environment; per model time unit.
    w : array or Tensor, shape broadcasting to (..., n_envs), optional
        Training weights (share of the RL batch; 0 = held out). Default: 1 for
        every environment (the post's convention).
    lam : float, array or Tensor, shape broadcasting to (..., 1)
        Footnote-4 coupling λ >= 0 of local heuristics into the RS path (0 = off).
    observation : tuple (a_lo, a_hi, b_lo, b_hi), optional
        Observation bounds (docs/model.md §7), each broadcasting to
        (..., n_envs), reward units with lo < hi: the flow is then the
        gradient flow of the reward in observed units (gap
        (a_lo + (a_hi − a_lo) a) − (b_lo + (b_hi − b_lo) b), the x and y
        gradients scaled by the spans). None: the post's model (0, 1).
    selection : SelectionLaw
        The selection law (docs/model.md §9): the z-term
        [p (1 − p)]^γ (a − b), γ broadcasting to (..., 1) or (..., n_envs).
        Default: the post's replicator (γ = 1), computed exactly as before.

    Raises
    ------
    ValueError
        Negative (or NaN) learnability, weight, λ or γ, couplings of
        different sizes, or a selection that is not a SelectionLaw.
    """

    coupling_z: Coupling
    coupling_x: Coupling
    coupling_y: Coupling
    alpha_z: float | Tensor = 1.0
    alpha_x: float | Tensor = 1.0
    alpha_y: float | Tensor = 1.0
    w: Tensor | None = None
    lam: float | Tensor = 0.0
    observation: tuple | None = None
    selection: SelectionLaw = REPLICATOR

    def __post_init__(self):
        if not isinstance(self.selection, SelectionLaw):
            raise ValueError(f"selection must be a sim.SelectionLaw, got {self.selection!r}")
        sizes = {self.coupling_z.n_envs, self.coupling_x.n_envs, self.coupling_y.n_envs}
        if len(sizes) != 1:
            raise ValueError(f"couplings disagree on n_envs: {sorted(sizes)}")
        for name in ("alpha_z", "alpha_x", "alpha_y"):
            _check_nonnegative(name, getattr(self, name), "learnability")
        _check_nonnegative("w", self.w, "training weights")
        _check_nonnegative("lam", self.lam, "footnote-4 λ")
        self._fields: dict = {}
        self._rates: Tensor | None = None
        self._max_rate: float | None = None

    @property
    def n_envs(self) -> int:
        return self.coupling_z.n_envs

    @property
    def couplings(self) -> tuple:
        return self.coupling_z, self.coupling_x, self.coupling_y

    @property
    def alphas(self) -> tuple:
        return self.alpha_z, self.alpha_x, self.alpha_y

    @classmethod
    def homogeneous(cls, n_envs: int, *, c_z=1.0, c_x=1.0, c_y=0.0, alpha_z=1.0,
                    alpha_x=1.0, alpha_y=1.0, lam=0.0, selection: SelectionLaw = REPLICATOR) -> "ToyModel":
        """N identical environments with C = (1 − c) I + c 11ᵀ per latent (docs/model.md §3).

        Defaults are the post's canonical scaling case (c^z = c^x = 1, c^y = 0)
        under the post's replicator law.
        """
        return cls(HomogeneousCoupling(c_z, n_envs), HomogeneousCoupling(c_x, n_envs),
                   HomogeneousCoupling(c_y, n_envs), alpha_z, alpha_x, alpha_y, None, lam, None, selection)

    @classmethod
    def single(cls, *, alpha_z=1.0, alpha_x=1.0, alpha_y=1.0, lam=0.0,
               selection: SelectionLaw = REPLICATOR) -> "ToyModel":
        """One environment (docs/model.md §2); α^z = 1 fixes the time unit."""
        one = IdentityCoupling(1)
        return cls(one, one, one, alpha_z, alpha_x, alpha_y, None, lam, None, selection)

    def field(self, like) -> "VectorField":
        """The right-hand side prepared for the backend, dtype and device of ``like`` (cached)."""
        b = backend_of(like)
        key = (b.name, str(like.dtype), str(getattr(like, "device", "cpu")))
        f = self._fields.get(key)
        if f is None:
            f = self._fields[key] = VectorField(self, like)
        return f

    def gradients(self, state: Latents) -> Latents:
        """Per-environment reward gradients w_j ∂R_j/∂(z_j, x_j, y_j), before transfer."""
        f = self.field(state.z)
        return Latents(*f.weighted_gradients(_stack(state)))

    def rhs(self, state: Latents) -> Latents:
        """Time derivatives (dz/dt, dx/dt, dy/dt), each of shape ``(..., n_envs)``."""
        d = self.field(state.z)(_stack(state))
        return Latents(d[0], d[1], d[2])

    def rates(self) -> Tensor:
        """Per-latent rates r^k_i = α^k_i |Σ_j C^k_ij w_j| over trained rows (docs/model.md §2).

        Returns
        -------
        Tensor, float64 on the CPU, shape (3, ..., n_envs)
            Latents z, x, y along the first axis. A held-out environment
            (w_i = 0) is a pure receiver: it never feeds back on itself, so its
            row counts 0 (it neither limits Euler stability nor sets a time unit).
            With ``w`` None every row is trained and Σ_j C_ij is the row sum.
            The bound is exact for non-negative C and approximate for random
            features, whose entries can be slightly negative.
        """
        if self._rates is not None:
            return self._rates
        n = self.n_envs
        w = np.ones(n) if self.w is None else to_numpy(self.w)
        w_full = np.broadcast_to(w, w.shape[:-1] + (n,)) if w.ndim else np.broadcast_to(w, (n,))
        trained = w_full > 0
        out = []
        for alpha, coupling in zip(self.alphas, self.couplings):
            # C w in numpy, or for a matrix or features in the coupling's own dtype and device
            # (no float64 copy of a large tensor)
            native = _native_tensor(coupling)
            if native is None:
                cw = coupling.apply(np.ascontiguousarray(w_full, dtype=np.float64))
            else:
                cw = coupling.apply(torch.as_tensor(np.array(w_full), dtype=native.dtype,
                                                    device=native.device))
            out.append(torch.as_tensor(to_numpy(alpha) * np.abs(to_numpy(cw)) * trained))
        shape = np.broadcast_shapes(*(tuple(r.shape) for r in out))
        self._rates = torch.stack([r.expand(shape) for r in out])
        return self._rates

    def max_rate(self) -> float:
        """An upper bound on the stiffness: max r^k_i (1 + λ) / 4 over latents, envs and replicas.

        Forward Euler is stable when ``dt * max_rate() < 2``: the sigmoid's
        slope is at most 1/4 and every gradient is a sum of such terms
        (docs/model.md §2; see :meth:`rates`). The bound holds for every
        selection law with γ >= 0 (docs/model.md §9): the slope of
        [p (1 − p)]^γ in z, γ [p (1 − p)]^γ |1 − 2p|, never exceeds 0.12, and
        [p (1 − p)]^γ a (1 − a) <= 1/4.
        """
        if self._max_rate is None:
            lam = float(to_numpy(self.lam).max()) if shape_of(self.lam) else float(self.lam)
            self._max_rate = float(self.rates().max()) / 4 * (1 + lam)
        return self._max_rate

    def time_scale(self) -> Tensor:
        """Per-replica fastest rate max_k max_i r^k_i, shape (...) + (1,), float64, CPU.

        Dividing every α by it rescales time only, so the saturated end state
        is unchanged. Clamped at 1e-300 (a system that cannot move).
        """
        r = self.rates().amax(0)
        return r.amax(-1, keepdim=True).clamp_min(1e-300)

    def propensity_rate(self) -> Tensor:
        """Per-replica rate of the RS-propensity clock max_i r^z_i, shape (...) + (1,), float64, CPU.

        The selection of RS plays out on this clock: RS takes off after
        ~1 / (p0 · gap) units of it (docs/model.md §3-4).
        """
        return self.rates()[0].amax(-1, keepdim=True)


def _native_tensor(coupling):
    """The tensor that holds a coupling's parameters (its matrix or features), if any."""
    for name in ("matrix", "features"):
        value = getattr(coupling, name, None)
        if isinstance(value, Tensor):
            return value
    return None


def _stack(state: Latents):
    z, x, y = state
    b = backend_of(z)
    shape = np.broadcast_shapes(shape_of(z), shape_of(x), shape_of(y))
    return b.stack([v.expand(shape) if isinstance(v, Tensor) else np.broadcast_to(v, shape)
                    for v in (z, x, y)])


class VectorField:
    """The fused right-hand side of a :class:`ToyModel` for one backend (docs/model.md §2).

    Built by :meth:`ToyModel.field`; parameters are converted to the
    backend, dtype and device once. Call it on the stacked state
    ``(3, ..., n_envs)`` (z, x, y along the first axis) to get the stacked
    derivatives of the same shape (or the broadcast shape with the model's
    replica axes). One sigmoid covers the three latents; couplings that are
    the same object (e.g. one set of random features for z and x) are applied
    once to a stacked input.

    Parameters
    ----------
    model : ToyModel
    like : numpy array or Tensor
        Gives the backend, dtype and device.
    """

    def __init__(self, model: ToyModel, like):
        b = self.backend = backend_of(like)
        self.model = model
        self.n_envs = model.n_envs
        conv = (lambda v: v) if False else (lambda v: v if isinstance(v, (int, float)) else b.asarray(v, like))
        alphas = [conv(a) for a in model.alphas]
        shape = np.broadcast_shapes(*(shape_of(a) for a in alphas))
        if shape:
            self.alpha = b.stack([a.expand(shape) if isinstance(a, Tensor)
                                  else np.broadcast_to(a, shape) if isinstance(a, np.ndarray)
                                  else b.asarray(np.full(shape, a), like) for a in alphas])
        else:
            self.alpha = b.asarray([float(a) for a in alphas], like)
        self._alpha_ndim = len(shape)
        self._alpha_cache: dict[int, object] = {}
        self.w = None if model.w is None else conv(model.w)
        lam = model.lam
        self.lam = None if _is_zero(lam) else conv(lam)
        law = model.selection               # None: the post's replicator, the same arithmetic as before
        self.gamma = None if law.is_replicator else conv(law.gamma)
        self.skill_gamma = self.gamma if law.skills else None
        self.obs = None
        if model.observation is not None:  # (a_lo, a_span, b_lo, b_span)
            a_lo, a_hi, b_lo, b_hi = (conv(v) for v in model.observation)
            self.obs = (a_lo, a_hi - a_lo, b_lo, b_hi - b_lo)
        self.groups: list[tuple[Coupling, list[int]]] = []
        for k, c in enumerate(model.couplings):
            for g in self.groups:
                if g[0] is c:
                    g[1].append(k)
                    break
            else:
                self.groups.append((c, [k]))

    def alpha_for(self, ndim: int):
        """α stacked as (3, ...) with enough axes to broadcast against a state of ``ndim`` axes."""
        a = self._alpha_cache.get(ndim)
        if a is None:
            pad = ndim - 1 - self._alpha_ndim
            a = self.alpha.reshape((3,) + (1,) * max(pad, 0) + tuple(self.alpha.shape[1:]))
            self._alpha_cache[ndim] = a
        return a

    def weighted_gradients(self, state):
        """w_j ∂R_j/∂(z_j, x_j, y_j) for the stacked state: a tuple of three arrays (..., N)."""
        b = self.backend
        if self.lam is None:
            s = b.sigmoid(state)
            p, a, bb = s[0], s[1], s[2]
        else:
            p, a, bb = probabilities(state[0], state[1], state[2], self.lam)
        if self.obs is None:
            g = reward_gradients(p, a, bb, self.lam, self.gamma, self.skill_gamma)
        else:  # observed units (docs/model.md §7): gap of observed rewards, slopes scaled by the spans
            g = observed_gradients(p, a, bb, self.lam, *self.obs, self.gamma, self.skill_gamma)
        if self.w is not None:
            g = tuple(v * self.w for v in g)
        return g

    def transfer(self, grads):
        """Σ_j C^k_ij g^k_j for the three latents, stacked: (3, ..., N)."""
        b = self.backend
        if len(self.groups) == 1:
            return self.groups[0][0].apply(b.stack(grads))
        parts = self._parts(grads)
        shape = np.broadcast_shapes(*(shape_of(v) for v in parts))
        return b.stack([v.expand(shape) if isinstance(v, Tensor) else np.broadcast_to(v, shape)
                        for v in parts])

    def _parts(self, grads):
        """Σ_j C^k_ij g^k_j per latent, without stacking: a list of three arrays (..., N)."""
        b = self.backend
        parts = [None, None, None]
        for coupling, idx in self.groups:
            if len(idx) == 1:
                parts[idx[0]] = coupling.apply(grads[idx[0]])
            else:
                out = coupling.apply(b.stack([grads[k] for k in idx]))
                for j, k in enumerate(idx):
                    parts[k] = out[j]
        return parts

    def add_to(self, state, dt: float) -> None:
        """``state += dt · f(state)`` in place: one Euler step without the stacked derivative.

        Each latent's transferred gradient is scaled by α and dt and added
        straight into the state (one fused multiply-add per latent in torch),
        which saves the stacking copy and two passes over the state of
        ``state += dt * self(state)``; same arithmetic up to rounding.
        """
        parts = self._parts(self.weighted_gradients(state))
        alpha = self.alpha_for(state.ndim)
        if any(tuple(np.broadcast_shapes(tuple(state.shape[1:]), tuple(p.shape), tuple(alpha.shape[1:])))
               != tuple(state.shape[1:]) for p in parts):
            d = self(state)                                       # replica axes the state lacks
            state += dt * d
            return
        torch_backend = self.backend.name == "torch"
        for k in range(3):
            if torch_backend:
                state[k].addcmul_(parts[k], alpha[k], value=dt)
            else:
                state[k] += dt * (alpha[k] * parts[k])

    def __call__(self, state):
        """d(z, x, y)/dt for the stacked state ``(3, ..., n_envs)``."""
        moved = self.transfer(self.weighted_gradients(state))   # a fresh array: scaled in place
        alpha = self.alpha_for(moved.ndim)
        if np.broadcast_shapes(tuple(alpha.shape), tuple(moved.shape)) != tuple(moved.shape):
            return alpha * moved                                 # α carries replica axes the state lacks
        moved *= alpha
        return moved
