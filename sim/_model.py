"""The toy model's vector field (docs/model.md §2).

Per environment i the latents are the log-odds z_i (RS propensity
p = σ(z)), x_i (RS skill a = σ(x)) and y_i (local skill b = σ(y)). Gradient
flow on the expected reward R_j = p_j a_j + (1 - p_j) b_j, with transfer:

    dz_i/dt = α^z_i Σ_j C^z_ij w_j p_j (1 − p_j) (a_j − b_j)
    dx_i/dt = α^x_i Σ_j C^x_ij w_j p_j a_j (1 − a_j)
    dy_i/dt = α^y_i Σ_j C^y_ij w_j (1 − p_j) b_j (1 − b_j)

Footnote-4 variant (``lam`` > 0): a = σ(x + λ y), and ∂R/∂y gains
λ p a (1 − a).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ._couplings import Coupling, HomogeneousCoupling, IdentityCoupling

Tensor = torch.Tensor


class Latents(NamedTuple):
    """The state: log-odds z, x, y, each of shape ``(..., n_envs)``."""

    z: Tensor
    x: Tensor
    y: Tensor

    @classmethod
    def from_probabilities(cls, p, a, b, *, dtype=torch.float64, device=None) -> "Latents":
        """Latents from probabilities in (0, 1): z = logit p, x = logit a, y = logit b.

        Raises
        ------
        ValueError
            If any probability is outside the open interval (0, 1).
        """
        out = []
        for name, value in (("p0", p), ("a0", a), ("b0", b)):
            t = torch.as_tensor(value, dtype=dtype, device=device)
            if torch.any((t <= 0) | (t >= 1)) or torch.any(torch.isnan(t)):
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")
            out.append(torch.logit(t))
        z, x, y = torch.broadcast_tensors(*out)
        return cls(z.clone(), x.clone(), y.clone())

    def probabilities(self, lam: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        """Return (p, a, b) in [0, 1]; with footnote-4 λ, a = σ(x + λ y)."""
        return torch.sigmoid(self.z), torch.sigmoid(self.x + lam * self.y), torch.sigmoid(self.y)


def _check_positive(name: str, value) -> None:
    t = torch.as_tensor(value, dtype=torch.float64)
    if torch.any(t < 0) or torch.any(torch.isnan(t)):
        raise ValueError(f"{name} (learnability) must be >= 0, got {value}")


@dataclass
class ToyModel:
    """Learnabilities, couplings and training weights of the toy model (docs/model.md §1-2).

    Parameters
    ----------
    coupling_z, coupling_x, coupling_y : Coupling
        Transfer operators C^z, C^x, C^y (see ``sim._couplings``).
    alpha_z, alpha_x, alpha_y : float or Tensor, shape (..., n_envs) or (..., 1)
        Learnabilities (>= 0), on the receiving environment; per model time unit.
    w : Tensor, shape (..., n_envs), optional
        Training weights (share of the RL batch; 0 = held out). Default: 1 for
        every environment (the post's convention).
    lam : float
        Footnote-4 coupling λ >= 0 of local heuristics into the RS path (0 = off).

    Raises
    ------
    ValueError
        Negative learnability, negative weight, λ < 0, or couplings of
        different sizes.
    """

    coupling_z: Coupling
    coupling_x: Coupling
    coupling_y: Coupling
    alpha_z: float | Tensor = 1.0
    alpha_x: float | Tensor = 1.0
    alpha_y: float | Tensor = 1.0
    w: Tensor | None = None
    lam: float = 0.0

    def __post_init__(self):
        sizes = {self.coupling_z.n_envs, self.coupling_x.n_envs, self.coupling_y.n_envs}
        if len(sizes) != 1:
            raise ValueError(f"couplings disagree on n_envs: {sorted(sizes)}")
        for name in ("alpha_z", "alpha_x", "alpha_y"):
            _check_positive(name, getattr(self, name))
        if self.w is not None:
            w = torch.as_tensor(self.w)
            if torch.any(w < 0) or torch.any(torch.isnan(w)):
                raise ValueError("w (training weights) must be >= 0")
        if self.lam < 0:
            raise ValueError(f"lam (footnote-4 λ) must be >= 0, got {self.lam}")

    @property
    def n_envs(self) -> int:
        return self.coupling_z.n_envs

    @classmethod
    def homogeneous(cls, n_envs: int, *, c_z=1.0, c_x=1.0, c_y=0.0, alpha_z=1.0,
                    alpha_x=1.0, alpha_y=1.0, lam: float = 0.0) -> "ToyModel":
        """N identical environments with C = (1 − c) I + c 11ᵀ per latent (docs/model.md §3).

        Defaults are the post's canonical scaling case (c^z = c^x = 1, c^y = 0).
        """
        return cls(HomogeneousCoupling(c_z, n_envs), HomogeneousCoupling(c_x, n_envs),
                   HomogeneousCoupling(c_y, n_envs), alpha_z, alpha_x, alpha_y, None, lam)

    @classmethod
    def single(cls, *, alpha_z=1.0, alpha_x=1.0, alpha_y=1.0, lam: float = 0.0) -> "ToyModel":
        """One environment (docs/model.md §2); α^z = 1 fixes the time unit."""
        one = IdentityCoupling(1)
        return cls(one, one, one, alpha_z, alpha_x, alpha_y, None, lam)

    def _weights(self, like: Tensor) -> Tensor | float:
        if self.w is None:
            return 1.0
        return torch.as_tensor(self.w, dtype=like.dtype, device=like.device)

    def gradients(self, state: Latents) -> Latents:
        """Per-environment reward gradients w_j ∂R_j/∂(z_j, x_j, y_j), before transfer."""
        p, a, b = state.probabilities(self.lam)
        w = self._weights(state.z)
        gz = w * p * (1 - p) * (a - b)
        gx = w * p * a * (1 - a)
        gy = w * (1 - p) * b * (1 - b)
        if self.lam:
            gy = gy + self.lam * gx
        return Latents(gz, gx, gy)

    def rhs(self, state: Latents) -> Latents:
        """Time derivatives (dz/dt, dx/dt, dy/dt), each of shape ``(..., n_envs)``."""
        g = self.gradients(state)
        like = state.z

        def alpha(v):
            return v if isinstance(v, (int, float)) else torch.as_tensor(v, dtype=like.dtype, device=like.device)

        return Latents(
            alpha(self.alpha_z) * self.coupling_z.apply(g.z),
            alpha(self.alpha_x) * self.coupling_x.apply(g.x),
            alpha(self.alpha_y) * self.coupling_y.apply(g.y),
        )

    def max_rate(self) -> float:
        """An upper bound on the stiffness: max_i α_i |Σ_j C_ij w_j| / 4 over latents.

        (With weights, Σ_j C_ij w_j; a bound for non-negative C, approximate for
        random features, whose entries can be slightly negative.)

        Forward Euler is stable when ``dt * max_rate() < 2`` (the sigmoid's slope
        is at most 1/4 and the gradients are sums of such terms).
        """
        rate = 0.0
        for alpha, coupling in ((self.alpha_z, self.coupling_z), (self.alpha_x, self.coupling_x),
                                (self.alpha_y, self.coupling_y)):
            a = torch.as_tensor(alpha, dtype=torch.float64).cpu()
            if self.w is None:
                rs = coupling.row_sums().abs().cpu()
            else:  # Σ_j C_ij w_j: held-out envs (w = 0) add no stiffness
                w = torch.as_tensor(self.w, dtype=torch.float64)
                w_full = w.expand(*w.shape[:-1], coupling.n_envs).to(torch.float64)
                # rows of held-out envs excluded: w_i = 0 means env i never feeds
                # back on itself (a pure receiver), so it cannot make Euler unstable
                rs = coupling.apply(w_full).abs().cpu() * (w_full.cpu() > 0)
            rate = max(rate, float((a * rs).max()) / 4)
        return rate * (1 + self.lam)
