"""sim: the toy ODE model of behavioral selection under RL (docs/model.md §1-4).

Public surface (re-exported from small private modules):

- couplings: :class:`IdentityCoupling`, :class:`HomogeneousCoupling`,
  :class:`DenseCoupling`, :class:`GaussianKernelCoupling`,
  :class:`RandomFourierCoupling`, :func:`gaussian_kernel_matrix`
  :func:`effective_learnability` (the homogeneous reduction α (1 + (N − 1) c))
- model: :class:`ToyModel` (batched learnabilities, couplings, weights, λ),
  :class:`Latents` (log-odds z, x, y), :func:`reward_gradients` and
  :class:`VectorField` (the one right-hand side, numpy or torch)
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
"""

from ._couplings import Coupling as Coupling
from ._couplings import DenseCoupling as DenseCoupling
from ._couplings import GaussianKernelCoupling as GaussianKernelCoupling
from ._couplings import HomogeneousCoupling as HomogeneousCoupling
from ._couplings import IdentityCoupling as IdentityCoupling
from ._couplings import RandomFourierCoupling as RandomFourierCoupling
from ._couplings import effective_learnability as effective_learnability
from ._couplings import gaussian_kernel_matrix as gaussian_kernel_matrix
from ._integrate import ENGINES as ENGINES
from ._integrate import Solution as Solution
from ._integrate import adaptive as adaptive
from ._integrate import choose_engine as choose_engine
from ._integrate import engine_setting as engine_setting
from ._integrate import euler as euler
from ._model import Latents as Latents
from ._model import ToyModel as ToyModel
from ._model import VectorField as VectorField
from ._model import observed_gradients as observed_gradients
from ._model import reward_gradients as reward_gradients
from ._threads import ThreadPolicy as ThreadPolicy
from ._threads import thread_setting as thread_setting
from ._critical import CriticalDiversity as CriticalDiversity
from ._critical import FinalShare as FinalShare
from ._critical import IntegrationConfig as IntegrationConfig
from ._critical import SearchStatus as SearchStatus
from ._critical import critical_diversity as critical_diversity
from ._critical import critical_diversity_homogeneous as critical_diversity_homogeneous
from ._critical import final_rs_share as final_rs_share
from ._critical import find_critical_diversity as find_critical_diversity
from ._critical import format_n_star as format_n_star
from ._critical import homogeneous_final_share as homogeneous_final_share
from ._critical import homogeneous_saturation as homogeneous_saturation
from ._critical import saturate as saturate
from ._critical import interpolate_crossing as interpolate_crossing
from ._critical import log_grid as log_grid
from ._hetero import GEOMETRIES as GEOMETRIES
from ._hetero import EnvironmentDraw as EnvironmentDraw
from ._hetero import HeterogeneousConfig as HeterogeneousConfig
from ._hetero import calibrate_scale as calibrate_scale
from ._hetero import draw_environments as draw_environments
from ._hetero import heterogeneous_builder as heterogeneous_builder
from ._hetero import sweep_critical_diversity as sweep_critical_diversity
