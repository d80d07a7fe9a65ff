"""Transfer (coupling) operators: apply C to a vector of per-environment updates.

docs/model.md §1-4. Every coupling has one interface, ``apply(v)``: given
``v`` of shape ``(..., n_envs)`` it returns ``C v`` of the same shape, i.e.
``(C v)_i = sum_j C_ij v_j``: how much the updates earned on every env j move
env i. Leading axes are independent replicas (a batch); coupling parameters
(``c``, ``length_scale``, coordinates) may carry the same leading axes, so a
batch of replicas can hold different couplings (used by fits that evaluate
many parameter vectors at once and by sweeps over resampled environments).
``apply`` accepts numpy arrays and torch tensors (see ``sim._backend``);
parameters are converted once per backend, dtype and device and cached.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ._backend import NumpyBackend, backend_of

Tensor = torch.Tensor


@runtime_checkable
class Coupling(Protocol):
    """A transfer matrix C with C_ii = 1, applied to vectors.

    Attributes
    ----------
    n_envs : int
        N, the size of the last axis of the vectors it accepts.
    """

    n_envs: int

    def apply(self, v):
        """Return ``C v``; ``v`` (numpy array or tensor) has shape ``(..., n_envs)``."""
        ...

    def row_sums(self) -> Tensor:
        """Return ``sum_j C_ij``, shape ``(..., n_envs)`` (for step-size checks)."""
        ...


def _as_tensor(value, like: Tensor | None = None, dtype=None, device=None) -> Tensor:
    if like is not None:
        dtype, device = like.dtype, like.device
    return torch.as_tensor(value, dtype=dtype, device=device)


class _Converted:
    """A coupling parameter converted once per backend, dtype and device (not at every Euler step)."""

    def __init__(self, value, prepare=None):
        self.value = value
        self._prepare = prepare
        self._cache: dict = {}

    def like(self, v):
        b = backend_of(v)
        key = (b.name, str(v.dtype), str(getattr(v, "device", "cpu")))
        out = self._cache.get(key)
        if out is None:
            out = b.asarray(self.value, v)
            if self._prepare is not None:
                out = self._prepare(out)
            self._cache[key] = out
        return out


def effective_learnability(alpha, c, n_envs):
    """The homogeneous reduction α_eff = α (1 + (N − 1) c) (docs/model.md §3).

    N identical environments coupled by C = (1 − c) I + c 11ᵀ evolve exactly
    as one environment whose learnability is α_eff: every row of C sums to
    1 + (N − 1) c. Elementwise; floats, numpy arrays or tensors broadcast.

    Parameters
    ----------
    alpha : float or array, >= 0
        Learnability (model time⁻¹).
    c : float or array in [0, 1]
        Homogeneous transfer.
    n_envs : int or array, >= 1
        N.
    """
    return alpha * (1 + (n_envs - 1) * c)


def homogeneous_transfer(v, c, total):
    """(C v)_i for C = (1 − c) I + c 11ᵀ, given ``total`` = Σ_j v_j (docs/model.md §3).

    Elementwise: scalars (inside the numba kernel), numpy arrays or tensors.
    """
    return (1 - c) * v + c * total


class IdentityCoupling:
    """No transfer: C = I (each environment learns only from itself).

    Parameters
    ----------
    n_envs : int
        Number of environments N (>= 1).
    """

    def __init__(self, n_envs: int):
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.n_envs = int(n_envs)

    def apply(self, v):
        return v

    def row_sums(self) -> Tensor:
        return torch.ones(self.n_envs, dtype=torch.float64)


class HomogeneousCoupling:
    """C = (1 - c) I + c 11ᵀ, applied in O(N) (docs/model.md §3).

    Parameters
    ----------
    c : float, array or Tensor
        Transfer in [0, 1]. An array of shape ``(...,)`` gives one c per
        replica (it broadcasts against the vectors' leading axes).
    n_envs : int
        Number of environments N (>= 1).

    Raises
    ------
    ValueError
        If c lies outside [0, 1] or n_envs < 1.
    """

    def __init__(self, c, n_envs: int):
        c_np = c.detach().cpu().numpy() if isinstance(c, Tensor) else np.asarray(c, dtype=float)
        if np.any(~((c_np >= 0) & (c_np <= 1))):
            raise ValueError(f"c (transfer) must lie in [0, 1], got {c}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.c = c
        self.n_envs = int(n_envs)
        # c with a trailing env axis, converted once per backend/dtype/device
        self._c = _Converted(c, lambda t: t[..., None] if t.ndim else t)

    def apply(self, v):
        """``C v`` for ``v`` of shape ``(..., n_envs)`` (numpy array or tensor)."""
        return homogeneous_transfer(v, self._c.like(v), backend_of(v).sum_last(v))

    def row_sums(self) -> Tensor:
        c = torch.as_tensor(self.c, dtype=torch.float64)
        c = c.unsqueeze(-1) if c.ndim else c
        return effective_learnability(1.0, c, self.n_envs) * torch.ones(self.n_envs, dtype=torch.float64)


class DenseCoupling:
    """An explicit matrix C of shape ``(..., N, N)``; ``apply`` is ``C @ v``.

    Parameters
    ----------
    matrix : Tensor or array, shape (..., N, N)
        The transfer matrix; leading axes are replicas.
    """

    def __init__(self, matrix):
        m = torch.as_tensor(matrix)
        if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"matrix must have shape (..., N, N), got {tuple(m.shape)}")
        self.matrix = m
        self.n_envs = int(m.shape[-1])
        self._m = _Converted(m)
        self._mt = _Converted(m, lambda t: t.transpose(-1, -2) if isinstance(t, Tensor) else np.swapaxes(t, -1, -2))

    def apply(self, v):
        """``C v`` for ``v`` of shape ``(..., n_envs)`` (numpy array or tensor)."""
        if isinstance(v, Tensor):
            return _rows_times(v, self._mt.like(v))
        return NumpyBackend.matvec(self._m.like(v), v)

    def row_sums(self) -> Tensor:
        return self.matrix.to(torch.float64).sum(dim=-1)


def gaussian_kernel_matrix(coords, length_scale) -> Tensor:
    """Exact Gaussian transfer kernel C_ij = exp(-|e_i - e_j|² / (2 ℓ²)) (docs/model.md §4).

    Parameters
    ----------
    coords : Tensor, shape (..., N, D)
        Environment coordinates e_i.
    length_scale : float or Tensor, shape (...,)
        Characteristic transfer distance ℓ > 0 (per replica if a tensor).

    Returns
    -------
    Tensor, shape (..., N, N)
    """
    e = torch.as_tensor(coords)
    ell = _as_tensor(length_scale, like=e)
    if torch.any(ell <= 0):
        raise ValueError(f"length_scale must be > 0, got {length_scale}")
    d2 = (e.unsqueeze(-2) - e.unsqueeze(-3)).pow(2).sum(-1)
    ell = ell[..., None, None] if ell.ndim else ell
    return torch.exp(-d2 / (2 * ell**2))


class GaussianKernelCoupling(DenseCoupling):
    """Exact Gaussian kernel coupling from coordinates, O(N²) per product (docs/model.md §4).

    Parameters
    ----------
    coords : Tensor, shape (..., N, D)
        Environment coordinates.
    length_scale : float or Tensor, shape (...,)
        ℓ > 0.
    """

    def __init__(self, coords, length_scale):
        self.coords = torch.as_tensor(coords)
        self.length_scale = length_scale
        super().__init__(gaussian_kernel_matrix(self.coords, length_scale))


class RandomFourierCoupling:
    """Gaussian kernel approximated by random Fourier features, O(N M) per product.

    C ≈ Φ Φᵀ with Φ = sqrt(2/M) cos(E W / ℓ + b), W ~ N(0, I), b ~ U(0, 2π)
    (Rahimi & Recht 2007, "Random Features for Large-Scale Kernel Machines";
    docs/model.md §4). The diagonal is 1 only in expectation.

    Parameters
    ----------
    coords : Tensor, shape (..., N, D)
        Environment coordinates (leading axes are replicas).
    length_scale : float
        ℓ > 0.
    n_features : int
        M, the number of random features.
    generator : torch.Generator, optional
        Source of W and b (for reproducible features).
    """

    def __init__(self, coords, length_scale: float, n_features: int = 512,
                 generator: torch.Generator | None = None):
        e = torch.as_tensor(coords)
        if not length_scale > 0:
            raise ValueError(f"length_scale must be > 0, got {length_scale}")
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        d = e.shape[-1]
        w = torch.randn(d, n_features, generator=generator, dtype=torch.float64)
        b = torch.rand(n_features, generator=generator, dtype=torch.float64) * (2 * math.pi)
        w, b = w.to(e.device, e.dtype), b.to(e.device, e.dtype)
        self.features = math.sqrt(2.0 / n_features) * torch.cos(e @ w / length_scale + b)
        self._phi = _Converted(self.features)
        self.n_envs = int(e.shape[-2])
        self.length_scale = length_scale
        self.n_features = n_features

    def apply(self, v):
        """``C v ≈ Φ (Φᵀ v)`` for ``v`` of shape ``(..., n_envs)`` (numpy array or tensor)."""
        phi = self._phi.like(v)
        if isinstance(v, Tensor):
            return _feature_product(phi, v)
        proj = np.matmul(v[..., None, :], phi)                       # (..., 1, M)
        return np.matmul(proj, np.swapaxes(phi, -1, -2))[..., 0, :]

    def row_sums(self) -> Tensor:
        phi = self.features.to(torch.float64)
        return (phi @ phi.sum(-2, keepdim=True).transpose(-1, -2)).squeeze(-1)


def _rows_times(v: Tensor, mat: Tensor) -> Tensor:
    """``v @ mat`` with broadcasting: v (*V, N), mat (*B, N, K) -> (*broadcast(V, B), K).

    Axes along which ``mat`` does not vary (size 1 or missing in B) are folded
    into the rows of one batched matrix-matrix product, so each distinct matrix
    is read once instead of once per vector (and never copied by broadcasting).
    """
    n, k = mat.shape[-2], mat.shape[-1]
    b_shape, v_shape = mat.shape[:-2], v.shape[:-1]
    out_shape = torch.broadcast_shapes(b_shape, v_shape)
    nd = len(out_shape)
    b_full = (1,) * (nd - len(b_shape)) + tuple(b_shape)
    v = v.reshape((1,) * (nd - len(v_shape)) + tuple(v_shape) + (n,)).expand(*out_shape, n)
    row_axes = [i for i in range(nd) if b_full[i] == 1]
    feat_axes = [i for i in range(nd) if b_full[i] != 1]
    perm = feat_axes + row_axes + [nd]
    feat_sizes = [out_shape[i] for i in feat_axes]
    rows = int(math.prod(out_shape[i] for i in row_axes))
    vp = v.permute(perm).reshape(*feat_sizes, rows, n)
    res = vp @ mat.reshape(*feat_sizes, n, k)     # (*F, rows, K)
    res = res.reshape(*feat_sizes, *[out_shape[i] for i in row_axes], k)
    inv = [0] * (nd + 1)
    for j, ax in enumerate(perm):
        inv[ax] = j
    return res.permute(inv)


def _feature_product(phi: Tensor, v: Tensor) -> Tensor:
    """Φ (Φᵀ v) for phi (*B, N, M), v (*V, N): two folded batched products."""
    return _rows_times(_rows_times(v, phi), phi.transpose(-1, -2))
