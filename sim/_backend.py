"""Array backends of the vector field: numpy and torch behind one small interface.

The right-hand side (``sim._model.VectorField``) and the Euler loop
(``sim._integrate``) are written once against the handful of operations
below; the backend is chosen by the type of the state (``numpy.ndarray`` or
``torch.Tensor``). Elementwise arithmetic (``+ - *``) and in-place updates
(``+=``) are the same in both libraries and need no wrapper.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit


class NumpyBackend:
    """numpy float arrays on the CPU (the engine for small problems)."""

    name = "numpy"

    @staticmethod
    def owns(value) -> bool:
        return isinstance(value, np.ndarray)

    @staticmethod
    def asarray(value, like: np.ndarray) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        return np.asarray(value, dtype=like.dtype)

    sigmoid = staticmethod(expit)

    @staticmethod
    def stack(values) -> np.ndarray:
        return np.stack(values)

    @staticmethod
    def sum_last(v: np.ndarray) -> np.ndarray:
        return v.sum(axis=-1, keepdims=True)

    @staticmethod
    def speed(d: np.ndarray) -> np.ndarray:
        """max |d| over latents (axis 0) and environments (last axis): shape (...)."""
        return np.abs(d).max(axis=0).max(axis=-1)

    @staticmethod
    def matvec(matrix: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(C v)_i = Σ_j C_ij v_j with broadcasting; C (..., N, K), v (..., K) -> (..., N)."""
        return np.matmul(matrix, v[..., None])[..., 0]

    @staticmethod
    def copy(v: np.ndarray) -> np.ndarray:
        return v.copy()

    @staticmethod
    def any(mask) -> bool:
        return bool(np.any(mask))

    @staticmethod
    def all(mask) -> bool:
        return bool(np.all(mask))


class TorchBackend:
    """torch tensors on any device (the engine for large batches and GPUs)."""

    name = "torch"

    @staticmethod
    def owns(value) -> bool:
        return isinstance(value, torch.Tensor)

    @staticmethod
    def asarray(value, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    sigmoid = staticmethod(torch.sigmoid)

    @staticmethod
    def stack(values) -> torch.Tensor:
        return torch.stack(list(values))

    @staticmethod
    def sum_last(v: torch.Tensor) -> torch.Tensor:
        return v.sum(dim=-1, keepdim=True)

    @staticmethod
    def speed(d: torch.Tensor) -> torch.Tensor:
        return d.abs().amax(dim=0).amax(dim=-1)

    @staticmethod
    def matvec(matrix: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (matrix @ v.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def copy(v: torch.Tensor) -> torch.Tensor:
        return v.clone()

    @staticmethod
    def any(mask) -> bool:
        return bool(mask.any())

    @staticmethod
    def all(mask) -> bool:
        return bool(mask.all())


BACKENDS = (NumpyBackend, TorchBackend)


def backend_of(value):
    """The backend owning ``value`` (numpy arrays -> numpy, tensors -> torch).

    Raises
    ------
    TypeError
        For any other type.
    """
    for b in BACKENDS:
        if b.owns(value):
            return b
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(value).__name__}")


def to_numpy(value, dtype=np.float64) -> np.ndarray:
    """Any scalar, array or (CPU or GPU) tensor as a numpy array of ``dtype``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def shape_of(value) -> tuple:
    """Shape of a scalar (``()``), array or tensor, as a tuple of ints."""
    return tuple(getattr(value, "shape", ()))
