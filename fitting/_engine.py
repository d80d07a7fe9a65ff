"""Batched forward model: many runs × many parameter vectors in one Euler integration.

The fit integrates the ODE of docs/model.md §2 (the vector field and the Euler
engines are ``physrl.sim``'s; nothing here restates them) in *optimizer-step* units with a
fixed step ``1 / substeps``: model time is ``t = time_scale · step``, so every
learnability is multiplied by ``time_scale`` and the Euler grid does not move
when parameters do (the residual stays smooth in every parameter, which the
finite-difference Jacobian needs). Replica axes are ``(B, R)``: B parameter
vectors (the fit's point, its P finite-difference neighbours, grid starts,
or posterior samples) times R runs. Runs with fewer environments are padded
to the widest run with w = 0 environments; a w = 0 environment sends no
update, so padding never changes a real environment, and padded cells are
never read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from physrl import sim

from ._options import TRANSFERS as TRANSFERS

Tensor = torch.Tensor
LATENTS = ("z", "x", "y")
#: cap on Euler steps per optimizer step (parameters needing more are far outside any sensible fit)
MAX_SUBSTEPS = 64


class UnstableStep(ValueError):
    """The parameters make the ODE so fast that the step-unit Euler grid cannot follow it."""


@contextlib.contextmanager
def single_thread():
    """Run torch ops on one intra-op thread, then restore the setting.

    The fit's tensors are small (B·R·N ~ 10^4): on a shared 2-core machine
    torch's thread pool spends more time synchronising than computing
    (measured 10x slower per op under load), so fits run single-threaded.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class BatchConfig:
    """What the runs fix: their environments, weights, coordinates and observed steps.

    Attributes
    ----------
    w : ndarray, shape (R, N)
        Training weights, padded with 0.
    valid : ndarray of bool, shape (R, N)
        Real (not padded) environments.
    coords : ndarray, shape (R, N, D) or None
        Environment coordinates (kernel transfer only).
    steps : ndarray of int, shape (T,)
        Sorted optimizer steps at which states are reported.
    """

    w: np.ndarray
    valid: np.ndarray
    coords: np.ndarray | None
    steps: np.ndarray

    @property
    def n_runs(self) -> int:
        return self.w.shape[0]

    @property
    def n_envs(self) -> int:
        return self.w.shape[1]


def _coupling(kind: str, value: Tensor | None, config: BatchConfig, n: int):
    if kind == "none":
        return sim.IdentityCoupling(n)
    if kind == "homogeneous":
        return sim.HomogeneousCoupling(value.clamp(0.0, 1.0), n)
    if kind == "kernel":
        coords = torch.as_tensor(config.coords, dtype=torch.float64)
        return sim.GaussianKernelCoupling(coords, value.clamp_min(1e-9))
    raise ValueError(f"transfer must be one of {TRANSFERS}, got {kind!r}")


def simulate(config: BatchConfig, phys: dict[str, Tensor], transfer: str, substeps: int = 1,
             max_rate_dt: float = 1.0, max_substeps: int = MAX_SUBSTEPS,
             engine: str = "auto", selection: str = "replicator") -> tuple[Tensor, Tensor, Tensor]:
    """Integrate B × R systems at once and report p, a, b at ``config.steps``.

    Parameters
    ----------
    config : BatchConfig
    phys : dict of Tensor
        ``p0, a0, b0`` (probabilities in (0, 1)) and ``alpha_z, alpha_x,
        alpha_y`` (per model time), each shape (B, R, N); ``time_scale``
        (model time per optimizer step), shape (B, 1, 1); transfer values
        ``c_z, c_x, c_y`` (homogeneous, in [0, 1]) or ``length_scale_z, ...``
        (kernel, > 0), shape (B, R); optional ``lam`` (footnote-4 λ >= 0),
        shape (B, 1, 1); optional ``gamma`` (selection-law exponent >= 0,
        docs/model.md §9; absent: the replicator), shape (B, 1, 1); optional observation bounds ``a_lo, a_hi, b_lo,
        b_hi`` (reward units, shape (B, R, N)): the dynamics are then the
        gradient flow of the reward in observed units (docs/model.md §7).
        The returned a, b stay latent (σ(x), σ(y)).
    transfer : {"none", "homogeneous", "kernel"}
    substeps : int
        Euler steps per optimizer step (more if stability needs it: the step
        is shrunk until ``dt · max_rate <= max_rate_dt``, at most ``max_substeps``).
    max_substeps : int
        Cap on Euler steps per optimizer step. The fit keeps the default
        (MAX_SUBSTEPS) so that absurd trial parameters are rejected quickly;
        prediction raises it, since draws of unidentified parameters may be
        fast but are still to be simulated.
    engine : {"auto", "numba", "numpy", "torch"}
        Euler engine of :func:`physrl.sim.euler`. ``"auto"`` takes numba for
        the fit's usual sizes (B·R·N up to ~1,000 numbers), torch for large
        batches and GPUs; every engine gives the same states to ~1e-12.
    selection : {"replicator", "power", "power+skills"}
        The selection law (docs/model.md §9) whose exponent is ``phys["gamma"]``
        (``"replicator"``: γ = 1, ``gamma`` must be absent).

    Returns
    -------
    (p, a, b) : Tensors, shape (T, B, R, N), probabilities at ``config.steps``.

    Raises
    ------
    UnstableStep
        If even ``max_substeps`` Euler steps per optimizer step would be unstable,
        or a parameter is not finite.
    ValueError
        For an unknown transfer or engine.

    References
    ----------
    docs/model.md §2 (the vector field, owned by ``physrl.sim``) and §6.
    """
    n = config.n_envs
    scale = phys["time_scale"]
    lam = phys.get("lam")
    gamma = phys.get("gamma")
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
    try:
        y0 = sim.Latents.from_probabilities(phys["p0"], phys["a0"], phys["b0"])
        couplings = []
        for k in LATENTS:
            key = {"homogeneous": f"c_{k}", "kernel": f"length_scale_{k}"}.get(transfer)
            couplings.append(_coupling(transfer, None if key is None else phys[key], config, n))
        observation = (tuple(phys[k] for k in ("a_lo", "a_hi", "b_lo", "b_hi")) if "a_lo" in phys else None)
        model = sim.ToyModel(*couplings, alpha_z=scale * phys["alpha_z"], alpha_x=scale * phys["alpha_x"],
                             alpha_y=scale * phys["alpha_y"],
                             w=torch.as_tensor(config.w, dtype=torch.float64),
                             lam=0.0 if lam is None else lam, observation=observation,
                             selection=sim.SelectionLaw.named(selection, 1.0 if gamma is None else gamma))
    except ValueError as exc:  # lmfit can probe NaN: a wall the optimizer backs off from, as for a too-fast ODE
        raise UnstableStep(f"parameters outside the model's domain: {exc}") from exc
    rate = model.max_rate()
    n_sub = min(max(int(substeps), int(np.ceil(rate / max_rate_dt))), int(max_substeps))
    if rate / n_sub >= 2:
        raise UnstableStep(f"rates {rate:.3g} per optimizer step need more than {max_substeps} Euler substeps")
    steps = np.asarray(config.steps, dtype=float)
    t_max = float(steps.max()) if steps.size else 0.0
    if t_max <= 0:
        p, a, b = y0.probabilities(model.lam)
        rep = len(steps)
        return p.expand(rep, *p.shape), a.expand(rep, *a.shape), b.expand(rep, *b.shape)
    sol = sim.euler(model, y0, dt=1.0 / n_sub, t_max=t_max, tol=None, t_eval=steps, engine=engine)
    return sol.p, sol.a, sol.b
