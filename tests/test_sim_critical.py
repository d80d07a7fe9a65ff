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
    assert np.isnan(sim.interpolate_crossing([1, 10], np.array([[0.1], [0.2]]), 0.5)[0])  # no value: above the grid


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


def test_horizon_counts_on_the_propensity_clock():
    """α^x = 1000 α^z: time normalised by the fastest rate left z 10 units of its own time (issue 12 §4)."""
    run = sim.homogeneous_saturation(1, 0.05, a0=0.5, b0=0.1, alpha_x=1000.0, alpha_y=0.001)
    assert run.share.item() > 0.99 and run.converged and run.settled
    assert 1000 < float(run.horizon) < 1100          # converged after ~1040 units of the z clock
    res = sim.critical_diversity_homogeneous(0.05, a0=0.5, b0=0.1, alpha_x=1000.0, alpha_y=0.001)
    assert res.n_star == 1.0 and res.status[()] is sim.SearchStatus.FOUND
    # canonical case: z is the fastest latent, so the horizon is t_max exactly
    canon = sim.homogeneous_saturation(4, 0.01, integration=IntegrationConfig(t_max=50.0))
    assert float(canon.horizon) == 50.0 and not canon.converged


def test_a_run_mid_transition_at_the_horizon_is_extended_or_reported():
    # p0 = 0.05, N = 4 crosses 0.5 between t = 40 and 70: at t = 40 its mean p is still 0.1
    at40 = sim.homogeneous_saturation(4, 0.05, integration=IntegrationConfig(t_max=40.0))
    assert at40.settled and float(at40.horizon) == 80.0 and at40.share.item() > 0.5
    cut = sim.homogeneous_saturation(4, 0.05, integration=IntegrationConfig(t_max=40.0, max_steps=40))
    assert not cut.settled and cut.capped and cut.share.item() < 0.5
    assert "not converged by the step cap" in cut.message
    res = sim.critical_diversity_homogeneous(0.05, n_max=64, integration=IntegrationConfig(t_max=40.0, max_steps=40))
    assert res.status[()] is sim.SearchStatus.NOT_CONVERGED and "not converged" in res.describe()


def test_above_n_max_is_a_status_with_no_value():
    res = sim.critical_diversity_homogeneous([0.0001, 0.05], n_max=100, integration=FAST)
    assert np.isnan(res.n_star[0]) and res.n_star[1] == 4.0
    assert [s.value for s in res.status] == ["above_n_max", "found"]
    assert res.describe(0).startswith("N* > 100 (above_n_max")
    assert np.isinf(res.ranked()[0]) and not np.isinf(res.n_star).any()
    d = res.to_dict()
    assert d["n_star"] == [None, 4.0] and d["status"] == ["above_n_max", "found"] and d["n_max"] == [100.0, 100.0]


@pytest.mark.parametrize("method", ["bisection", "scan", "grid"])
def test_one_search_for_any_final_share_function(method):
    n_true = np.array([[3, 37], [1, 500]])          # (2, 2) replicas with known N*

    def share(n):                                   # rises with N, crosses 0.5 at n_true
        return np.where(n >= n_true[..., None], 0.9, 0.1)

    res = sim.find_critical_diversity(share, batch_shape=(2, 2), method=method, n_max=200,
                                      n_grid=np.arange(1, 201) if method == "grid" else None)
    expect = np.where(n_true <= 200, n_true, np.nan).astype(float)
    if method == "grid":   # halfway in log N between N* - 1 and N*: the share jumps from 0.1 to 0.9
        expect = np.where(n_true > 1, np.sqrt(np.maximum(n_true - 1, 1) * expect), expect)
    np.testing.assert_allclose(res.n_star, expect)
    assert [s.value for s in res.status.ravel()] == ["found", "found", "found", "above_n_max"]


def test_scan_finds_the_first_crossing_of_a_non_monotone_share():
    res = sim.find_critical_diversity(lambda n: np.where((n == 5) | (n >= 9), 0.8, 0.2), method="scan", n_max=12)
    assert res.n_star == 5.0
    res = sim.find_critical_diversity(lambda n: np.where(n >= 9, 0.8, 0.2), method="bisection", n_max=12,
                                      common_n=True, probes=1)
    assert res.n_star == 9.0
