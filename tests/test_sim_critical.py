"""Critical diversity N*(p0) (docs/model.md §3-4): canonical scaling, methods, nested sweeps."""

import numpy as np
import pytest
import torch

from physrl import sim
from physrl.sim import IntegrationConfig, Latents, ToyModel
from physrl.sim._critical import final_rs_share
from physrl.sim._hetero import _padded_system

FAST = IntegrationConfig(dt=1.0, t_max=3000.0)
P0 = np.array([0.005, 0.01, 0.02, 0.05])


def test_canonical_n_star_falls_with_p0_on_a_log_log_line():
    res = sim.critical_diversity_homogeneous(P0, integration=FAST)
    n_star = res.n_star
    assert res.method == "bisection"
    assert np.all(np.diff(n_star) < 0), n_star
    x, y = np.log(P0), np.log(n_star)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.var(y - (slope * x + intercept)) / np.var(y)
    assert -1.3 < slope < -0.7, slope
    assert r2 > 0.97, r2


def test_grid_method_brackets_the_bisection_answer():
    bis = sim.critical_diversity_homogeneous([0.01], integration=FAST).n_star[0]
    grid = sim.critical_diversity_homogeneous([0.01], method="grid", integration=FAST)
    k = np.searchsorted(grid.n_grid, bis)
    assert grid.method == "grid"
    assert grid.n_grid[k - 1] <= grid.n_star[0] <= grid.n_grid[k]


def test_generic_bisection_with_a_builder_matches_the_homogeneous_reduction():
    def build(n):
        y0 = Latents.from_probabilities(torch.full((n,), 0.05, dtype=torch.float64), 0.5, 0.1)
        return ToyModel.homogeneous(n), y0

    short = IntegrationConfig(dt=1.0, t_max=400.0)   # takeoff at p0 = 0.05 needs ~50
    generic = sim.critical_diversity(build, method="bisection", n_max=64, integration=short)
    reduced = sim.critical_diversity_homogeneous(0.05, n_max=64, integration=short)
    assert generic.n_star == reduced.n_star == 4.0
    # the reduction's final share is the N-env system's, to float precision
    model, y0 = build(7)
    full = final_rs_share(model, y0, integration=IntegrationConfig(dt=1.0, t_max=300.0))
    red = sim.homogeneous_final_share(7, 0.05, integration=IntegrationConfig(dt=1.0, t_max=300.0))
    assert abs(full.item() - red.item()) < 1e-10


def test_interpolation_is_log_linear_between_bracketing_points():
    share = np.array([[0.1], [0.3], [0.9]])
    n = sim.interpolate_crossing([1, 10, 100], share, 0.5)
    assert n[0] == pytest.approx(10 * 10 ** (1 / 3))
    assert np.isinf(sim.interpolate_crossing([1, 10], np.array([[0.1], [0.2]]), 0.5)[0])


def test_padded_sweep_equals_separate_nested_systems():
    cfg = sim.HeterogeneousConfig(geometry="clusters", scale=0.5)
    draw = sim.draw_environments(cfg, 2, 30, seed=3)
    p0 = torch.tensor([0.01, 0.05], dtype=torch.float64)
    integ = IntegrationConfig(dt=2.0, t_max=60.0)
    model, y0 = _padded_system(cfg, draw, p0, [4, 11, 30], torch.float64, None)
    padded = final_rs_share(model, y0, integration=integ).numpy()
    build = sim.heterogeneous_builder(cfg, draw, p0.numpy(), dtype=torch.float64)
    for k, n in enumerate([4, 11, 30]):
        m, y = build(n)
        assert np.abs(final_rs_share(m, y, integration=integ).numpy() - padded[:, k]).max() < 1e-12


def test_heterogeneous_sweep_n_star_falls_with_p0_and_is_reproducible():
    cfg = sim.HeterogeneousConfig(geometry="gaussian", scale=0.5)
    a = sim.sweep_critical_diversity(cfg, [0.01, 0.05], n_resamplings=2, n_max=100,
                                     n_grid_points=8, progress=False, seed=7,
                                     integration=IntegrationConfig(dt=2.0, t_max=1000.0))
    d1, d2 = sim.draw_environments(cfg, 2, 50, seed=7), sim.draw_environments(cfg, 2, 50, seed=7)
    assert torch.equal(d1.coords, d2.coords) and torch.equal(d1.noise_init, d2.noise_init)
    med = np.median(a.n_star, 0)
    assert np.all(np.isfinite(med)) and med[0] > 2 * med[1], med
