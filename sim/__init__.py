"""sim: the toy ODE model of behavioral selection under RL (MODEL.md §1-4).

Public surface (re-exported from small private modules):

- couplings: :class:`IdentityCoupling`, :class:`HomogeneousCoupling`,
  :class:`DenseCoupling`, :class:`GaussianKernelCoupling`,
  :class:`RandomFourierCoupling`, :func:`gaussian_kernel_matrix`
- model: :class:`ToyModel` (learnabilities, couplings, weights),
  :class:`Latents` (log-odds z, x, y)
- integrators: :func:`euler`, :func:`adaptive`, :class:`Solution`
"""

from ._couplings import Coupling as Coupling
from ._couplings import DenseCoupling as DenseCoupling
from ._couplings import GaussianKernelCoupling as GaussianKernelCoupling
from ._couplings import HomogeneousCoupling as HomogeneousCoupling
from ._couplings import IdentityCoupling as IdentityCoupling
from ._couplings import RandomFourierCoupling as RandomFourierCoupling
from ._couplings import gaussian_kernel_matrix as gaussian_kernel_matrix
from ._integrate import Solution as Solution
from ._integrate import adaptive as adaptive
from ._integrate import euler as euler
from ._model import Latents as Latents
from ._model import ToyModel as ToyModel
