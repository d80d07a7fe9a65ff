"""sim: the toy ODE model of behavioral selection under RL (docs/model.md §1-4).

Public surface (re-exported from small private modules):

- couplings: :class:`IdentityCoupling`, :class:`HomogeneousCoupling`,
  :class:`DenseCoupling`, :class:`GaussianKernelCoupling`,
  :class:`RandomFourierCoupling`, :func:`gaussian_kernel_matrix`
  :func:`effective_learnability` (the homogeneous reduction α (1 + (N − 1) c))
- model: :class:`ToyModel` (batched learnabilities, couplings, weights, λ),
  :class:`Latents` (log-odds z, x, y), :func:`reward_gradients` and
  :class:`VectorField` (the one right-hand side, numpy or torch),
  :class:`SelectionLaw` (the replicator, γ = 1, or the power law
  [p (1 − p)]^γ of docs/model.md §9)
- integrators: :func:`euler` (engines numba / numpy / torch, chosen by
  :func:`choose_engine`, overridable in a scope with :func:`engine_setting`),
  :func:`adaptive` (solve_ivp reference),
  :class:`Solution`, :class:`ThreadPolicy`, :func:`thread_setting`
- critical diversity: :func:`find_critical_diversity` (the one search, for
  any final-share function ``N -> mean p``), :func:`critical_diversity`
  (a builder ``N -> (model, y0)``), :func:`critical_diversity_homogeneous`,
  :func:`saturate` / :class:`FinalShare`, :func:`final_rs_share`,
  :func:`homogeneous_final_share`, :class:`IntegrationConfig`,
  :class:`CriticalDiversity`, :class:`SearchStatus`, :func:`format_n_star`,
  :func:`log_grid`, :func:`interpolate_crossing`

Names are imported on first use (PEP 562, as in ``physrl.organisms``), so
``import physrl.sim`` and ``physrl.sim.cli`` load without torch or numba
(``physrl sim --help`` starts in a fraction of a second).

The model alone: ``sim`` reads no logs and knows nothing of the fit, the organisms or the experiment.

Room: sim; may import: contract and its own room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from physrl._util.lazy import lazy_exports

#: public name -> the module that owns it (relative: a private module of this package)
_EXPORTS = {
    "Coupling": "_couplings", "DenseCoupling": "_couplings", "GaussianKernelCoupling": "_couplings",
    "HomogeneousCoupling": "_couplings", "IdentityCoupling": "_couplings", "RandomFourierCoupling": "_couplings",
    "effective_learnability": "_couplings", "gaussian_kernel_matrix": "_couplings",
    "ENGINES": "_options",
    "Solution": "_integrate", "adaptive": "_integrate", "choose_engine": "_integrate", "engine_setting": "_integrate",
    "euler": "_integrate",
    "SELECTIONS": "_selection", "SelectionLaw": "_selection",
    "Latents": "_model", "ToyModel": "_model", "VectorField": "_model", "observed_gradients": "_model",
    "reward_gradients": "_model",
    "ThreadPolicy": "_threads", "thread_setting": "_threads",
    "CriticalDiversity": "_critical", "FinalShare": "_critical", "IntegrationConfig": "_critical",
    "SearchStatus": "_critical", "critical_diversity": "_critical", "critical_diversity_homogeneous": "_critical",
    "final_rs_share": "_critical", "find_critical_diversity": "_critical", "format_n_star": "_critical",
    "homogeneous_final_share": "_critical", "homogeneous_saturation": "_critical", "saturate": "_critical",
    "interpolate_crossing": "_critical", "log_grid": "_critical",
    "GEOMETRIES": "_hetero", "EnvironmentDraw": "_hetero", "HeterogeneousConfig": "_hetero",
    "calibrate_scale": "_hetero", "draw_environments": "_hetero", "heterogeneous_builder": "_hetero",
    "sweep_critical_diversity": "_hetero",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ._couplings import (Coupling, DenseCoupling, GaussianKernelCoupling, HomogeneousCoupling, IdentityCoupling,
                             RandomFourierCoupling, effective_learnability, gaussian_kernel_matrix)
    from ._options import ENGINES
    from ._integrate import Solution, adaptive, choose_engine, engine_setting, euler
    from ._model import Latents, ToyModel, VectorField, observed_gradients, reward_gradients
    from ._selection import SELECTIONS, SelectionLaw
    from ._threads import ThreadPolicy, thread_setting
    from ._critical import (CriticalDiversity, FinalShare, IntegrationConfig, SearchStatus, critical_diversity,
                            critical_diversity_homogeneous, final_rs_share, find_critical_diversity, format_n_star,
                            homogeneous_final_share, homogeneous_saturation, saturate, interpolate_crossing, log_grid)
    from ._hetero import (GEOMETRIES, EnvironmentDraw, HeterogeneousConfig, calibrate_scale, draw_environments,
                          heterogeneous_builder, sweep_critical_diversity)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
