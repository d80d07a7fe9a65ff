"""sim core: the homogeneous reduction, Euler's order, RFF accuracy, held-out envs (docs/model.md §2-4)."""

import math

import numpy as np
import pytest
import torch

from physrl import sim
from physrl.sim import (DenseCoupling, GaussianKernelCoupling, HomogeneousCoupling, IdentityCoupling,
                 Latents, RandomFourierCoupling, ToyModel, euler)

F64 = torch.float64


@pytest.mark.parametrize("n_envs", [2, 5, 17])
def test_homogeneous_n_envs_equal_single_env_with_effective_learnabilities(n_envs):
    c = dict(c_z=0.7, c_x=0.4, c_y=0.1)
    alpha = dict(alpha_z=1.0, alpha_x=0.6, alpha_y=1.5)
    model = ToyModel.homogeneous(n_envs, **c, **alpha)
    y0 = Latents.from_probabilities(torch.full((n_envs,), 0.05, dtype=F64), 0.4, 0.2)
    t_eval = np.linspace(0, 5, 6)
    many = euler(model, y0, dt=0.01, t_max=5, tol=None, t_eval=t_eval)
    eff = {f"alpha_{k}": alpha[f"alpha_{k}"] * (1 + (n_envs - 1) * c[f"c_{k}"]) for k in "zxy"}
    one = euler(ToyModel.single(**eff), Latents.from_probabilities(0.05, 0.4, 0.2).__class__(
        *(v.reshape(1) for v in Latents.from_probabilities(0.05, 0.4, 0.2))),
        dt=0.01, t_max=5, tol=None, t_eval=t_eval)
    for field in ("p", "a", "b"):
        got, ref = getattr(many, field), getattr(one, field)
        assert torch.max(torch.abs(got - ref)).item() < 1e-10
    assert abs(many.b[-1, 0] - many.b[0, 0]) > 0.05  # it did move


def test_euler_converges_at_first_order_to_dop853():
    coords = torch.tensor([[0.0], [0.5], [1.5]], dtype=F64)
    model = ToyModel(GaussianKernelCoupling(coords, 1.0), GaussianKernelCoupling(coords, 1.0),
                     GaussianKernelCoupling(coords, 0.3), 1.0,
                     torch.tensor([0.8, 1.2, 1.0], dtype=F64), 0.7)
    y0 = Latents.from_probabilities(torch.tensor([0.1, 0.05, 0.2], dtype=F64), 0.5, 0.2)
    ref = sim.adaptive(model, y0, t_max=3.0, rtol=1e-12, atol=1e-13).final
    dts = np.array([0.04, 0.02, 0.01, 0.005])
    errs = []
    for dt in dts:
        fin = euler(model, y0, dt=float(dt), t_max=3.0, tol=None, save="final").final
        errs.append(max(torch.max(torch.abs(a - b)).item() for a, b in zip(fin, ref)))
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert 0.9 < slope < 1.1, (slope, errs)


def test_random_fourier_products_approach_exact_kernel_as_m_grows():
    g = torch.Generator().manual_seed(0)
    coords = torch.randn(150, 3, generator=g, dtype=F64)
    v = torch.randn(150, generator=g, dtype=F64)
    exact = GaussianKernelCoupling(coords, 1.3).apply(v)
    ms = np.array([32, 128, 512, 2048])
    errs = []
    for m in ms:
        e = [torch.linalg.norm(RandomFourierCoupling(coords, 1.3, int(m), generator=g).apply(v)
                               - exact).item() for _ in range(6)]
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert -0.65 < slope < -0.35, (slope, errs)
    assert errs[-1] < 0.15 * errs[0]


def test_batched_feature_products_match_plain_matvecs():
    g = torch.Generator().manual_seed(1)
    coords = torch.randn(3, 1, 40, 2, generator=g, dtype=F64)   # (R, 1, N, D)
    rff = RandomFourierCoupling(coords, 0.8, 64, generator=g)
    dense = GaussianKernelCoupling(coords, 0.8)
    v = torch.randn(2, 3, 4, 40, generator=g, dtype=F64)          # (2, R, P, N)
    phi = rff.features
    ref = ((v.unsqueeze(-2) @ phi) @ phi.transpose(-1, -2)).squeeze(-2)
    assert torch.allclose(rff.apply(v), ref, atol=1e-12)
    ref_dense = (dense.matrix @ v.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(dense.apply(v), ref_dense, atol=1e-12)


def test_fast_final_path_equals_saved_trajectory_path():
    g = torch.Generator().manual_seed(2)
    coords = torch.randn(4, 30, 3, generator=g, dtype=F64)
    rff = RandomFourierCoupling(coords, 1.0, 64, generator=g)
    alpha = torch.exp(0.3 * torch.randn(4, 30, generator=g, dtype=F64)) / 30
    w = torch.ones(30, dtype=F64)
    w[:3] = 0
    model = ToyModel(rff, rff, GaussianKernelCoupling(coords, 0.3), alpha, 0.5 / 30, alpha,
                     w, lam=0.2)
    y0 = Latents(*(v.expand(30) for v in Latents.from_probabilities(0.05, 0.5, 0.2)))
    a = euler(model, y0, dt=0.1, t_max=5, save="all")
    b = euler(model, y0, dt=0.1, t_max=5, save="final")
    assert a.n_steps == b.n_steps == 50
    for u, v in zip(a.final, b.final):
        assert torch.max(torch.abs(u - v)).item() < 1e-12


def _three_envs(coupling):
    w = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
    model = ToyModel(coupling, coupling, coupling, 1.0, 1.0, 1.0, w)
    y0 = Latents.from_probabilities(torch.tensor([0.1, 0.2, 0.05], dtype=F64), 0.6, 0.2)
    return model, y0


def test_held_out_env_with_identity_coupling_never_moves():
    model, y0 = _three_envs(IdentityCoupling(3))
    sol = euler(model, y0, dt=0.05, t_max=30, tol=None)
    for k in range(3):
        assert torch.equal(sol.final[k][2], y0[k][2])
        assert abs(sol.final[k][0] - y0[k][0]) > 1e-3   # trained envs do move


def test_held_out_env_with_kernel_coupling_moves_only_through_transfer():
    near = torch.tensor([[0.0], [0.3], [0.6]], dtype=F64)
    model, y0 = _three_envs(GaussianKernelCoupling(near, 1.0))
    sol = euler(model, y0, dt=0.05, t_max=30, tol=None)
    assert abs(sol.final.z[2] - y0.z[2]) > 1e-2
    # its velocity is exactly the transfer Σ_j C_2j w_j g_j from the trained envs
    g = model.gradients(y0)
    c = model.coupling_z.matrix
    assert torch.isclose(model.rhs(y0).z[2], c[2, 0] * g.z[0] + c[2, 1] * g.z[1], atol=1e-15)
    # move it far away (no transfer): it stays put
    far = torch.tensor([[0.0], [0.3], [60.0]], dtype=F64)
    model, y0 = _three_envs(GaussianKernelCoupling(far, 1.0))
    sol = euler(model, y0, dt=0.05, t_max=30, tol=None)
    assert abs(sol.final.z[2] - y0.z[2]) < 1e-12


def test_validation_errors_name_the_parameter():
    with pytest.raises(ValueError, match="p0"):
        Latents.from_probabilities(1.5, 0.5, 0.1)
    with pytest.raises(ValueError, match="c"):
        HomogeneousCoupling(1.2, 3)
    with pytest.raises(ValueError, match="alpha_x"):
        ToyModel.homogeneous(3, alpha_x=-1.0)
    with pytest.raises(ValueError, match="dt"):
        euler(ToyModel.homogeneous(100), Latents.from_probabilities(torch.full((100,), 0.1), 0.5, 0.1),
              dt=1.0, t_max=1.0)
    with pytest.raises(ValueError, match="c_y"):
        sim.homogeneous_final_share(2, 0.1, c_y=-0.1)
    with pytest.raises(ValueError, match="alpha_y"):
        sim.critical_diversity_homogeneous(0.1, alpha_y=-2)
    with pytest.raises(ValueError, match="geometry"):
        sim.HeterogeneousConfig(geometry="torus")
