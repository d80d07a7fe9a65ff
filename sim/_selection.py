"""The selection law: how the RL algorithm turns a skill gap into growth of RS log-odds (docs/model.md §9).

The post's model is the gradient flow of the expected reward, whose z-term
p (1 − p) (a − b) is the replicator law: early log-odds growth ∝ p. An RL
algorithm that normalises its updates (GRPO's group-std advantages, Adam's
per-parameter RMS) can remove that factor. The power law

    dz_i/dt = α^z_i Σ_j C^z_ij w_j [p_j (1 − p_j)]^γ (a_j − b_j)

interpolates: γ = 1 is the replicator (the post), γ = 0 a growth of log-odds
independent of p. With ``skills`` the skill terms get the same exponent,
p a (1 − a) → p [a (1 − a)]^γ and (1 − p) b (1 − b) → (1 − p) [b (1 − b)]^γ;
off by default (which one the organisms follow is what the takeoff
experiment measures). The law is one term of ``sim``'s vector field
(:func:`sim.reward_gradients`); every engine steps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._options import SELECTIONS as SELECTIONS


#: the largest exponent the command line accepts, the fit's bound on γ (fitting's parameter range [0, 3]): beyond it
#: [p (1 − p)]^γ underflows at the priors the selection law is about (γ = 20 at p0 = 1e-4 gives 1e-80), so no N* is
#: found at any N and the figure has nothing to draw
GAMMA_MAX = 3.0


def check_gamma(gamma: float) -> float:
    """``gamma`` as a float when it lies in [0, :data:`GAMMA_MAX`]; ValueError naming the range and why otherwise."""
    g = float(gamma)
    if not 0.0 <= g <= GAMMA_MAX:
        raise ValueError(f"gamma must lie in [0, {GAMMA_MAX:g}] (the fit's range), got {gamma:g}: beyond it "
                         f"[p(1-p)]^gamma underflows at small priors and no N* exists at any N")
    return g


@dataclass(frozen=True)
class SelectionLaw:
    """The power-law selection term [p (1 − p)]^γ (a − b) of the RS log-odds (docs/model.md §9).

    Parameters
    ----------
    gamma : float, array or Tensor >= 0, broadcasting to (..., 1) or (..., n_envs)
        The exponent γ; 1 is the post's replicator (the default), 0 makes the
        growth of z independent of p. May carry replica axes (a batch of γ
        values, e.g. a fit's parameter draws).
    skills : bool
        Apply the same exponent to the skill terms a (1 − a) and b (1 − b)
        (default False: skills learn as in the post).

    Raises
    ------
    ValueError
        If γ is negative, not finite, empty, a string or a boolean.

    Example
    -------
    >>> model = ToyModel.single(selection=SelectionLaw(gamma=0.0))   # doctest: +SKIP

    References
    ----------
    docs/model.md §9 ("Which gradient flow?"); Liu et al. 2025 (Dr. GRPO);
    Malladi et al. 2022 (SDEs of adaptive gradient methods).
    """

    gamma: object = 1.0
    skills: bool = False

    def __post_init__(self):
        value = self.gamma
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if isinstance(value, (str, bytes)):
            raise ValueError(f"gamma (selection-law exponent) must be a number, not the string {value!r}")
        try:
            raw = np.asarray(value)
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"gamma (selection-law exponent) must be a number or an array of numbers, "
                             f"got {value!r}") from None
        if raw.dtype == bool:
            raise ValueError(f"gamma (selection-law exponent) must be a number, not the boolean {value!r}")
        if arr.size == 0:
            raise ValueError("gamma (selection-law exponent) must hold at least one value, got an empty array")
        if np.any(~np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"gamma (selection-law exponent) must be a finite number >= 0, got {self.gamma}")
        if not isinstance(self.skills, (bool, np.bool_)):
            raise ValueError(f"skills must be True or False, got {self.skills!r}")

    @property
    def is_replicator(self) -> bool:
        """True when the law is exactly the post's: a scalar γ = 1 (then ``skills`` changes nothing)."""
        return isinstance(self.gamma, (int, float)) and float(self.gamma) == 1.0

    @property
    def name(self) -> str:
        """``"replicator"``, ``"power"`` or ``"power+skills"`` (one of :data:`SELECTIONS`)."""
        if self.is_replicator:
            return "replicator"
        return "power+skills" if self.skills else "power"

    @classmethod
    def named(cls, name: str, gamma=1.0) -> "SelectionLaw":
        """The law called ``name`` (one of :data:`SELECTIONS`) with exponent ``gamma``.

        ``"replicator"`` ignores ``gamma`` (γ = 1). Raises ValueError for an unknown name.
        """
        if name not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {name!r}")
        if name == "replicator":
            return cls()
        return cls(gamma, skills=name == "power+skills")

    def to_dict(self) -> dict:
        """JSON-ready: name, γ (a number, or a list for a batch) and the skills flag."""
        g = self.gamma
        if hasattr(g, "detach"):
            g = g.detach().cpu().numpy()
        g = float(g) if np.ndim(g) == 0 else np.asarray(g, dtype=float).tolist()
        return {"name": self.name, "gamma": g, "skills": bool(self.skills)}


REPLICATOR = SelectionLaw()
