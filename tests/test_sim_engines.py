"""Euler engines (numba, numpy, torch) step the one vector field alike; the thread policy is scoped."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from physrl import sim
from physrl.sim import GaussianKernelCoupling, HomogeneousCoupling, IdentityCoupling, Latents, ToyModel
from physrl.sim._integrate import numba_available

F64 = torch.float64
ENGINES = ["numpy", "torch"] + (["numba"] if numba_available() else [])
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "demo"


def _batched(kind: str, b: int = 3, r: int = 2, n: int = 4):
    """B parameter vectors × R runs × N envs, every quantity tensor-valued, one env held out."""
    g = torch.Generator().manual_seed(5)
    alpha = [1.0 + 2 * torch.rand(b, r, n, generator=g, dtype=F64) for _ in range(3)]
    w = torch.full((r, n), 1.0 / (n - 1), dtype=F64)
    w[:, -1] = 0.0
    lam = 0.3 * torch.rand(b, 1, 1, generator=g, dtype=F64)
    if kind == "identity":
        couplings = [IdentityCoupling(n)] * 3
    elif kind == "homogeneous":
        couplings = [HomogeneousCoupling(torch.rand(b, r, generator=g, dtype=F64), n) for _ in range(3)]
    else:
        coords = torch.randn(r, n, 2, generator=g, dtype=F64)
        couplings = [GaussianKernelCoupling(coords, 0.5 + torch.rand(b, r, generator=g, dtype=F64))
                     for _ in range(3)]
    model = ToyModel(*couplings, *alpha, w=w, lam=lam)
    p0 = 0.05 + 0.3 * torch.rand(b, r, n, generator=g, dtype=F64)
    return model, Latents.from_probabilities(p0, 0.6, 0.2)


@pytest.mark.parametrize("kind", ["identity", "homogeneous", "kernel"])
def test_engines_give_the_same_states_for_tensor_alpha_w_lambda_and_couplings(kind):
    model, y0 = _batched(kind)
    t_eval = [0.0, 0.5, 1.33, 3.0]
    sols = {e: sim.euler(model, y0, dt=0.05, t_max=3.0, tol=None, t_eval=t_eval, engine=e) for e in ENGINES}
    ref = sols["torch"]
    assert ref.p.shape == (4, 3, 2, 4)
    assert (ref.p[-1] - ref.p[0]).abs().max() > 1e-2          # it moved
    for engine, sol in sols.items():
        assert sol.engine == engine
        for name in ("p", "a", "b"):
            assert torch.max(torch.abs(getattr(sol, name) - getattr(ref, name))).item() < 1e-12, (engine, name)


def test_a_converged_replica_freezes_so_its_result_does_not_depend_on_its_batch():
    model, y0 = _batched("homogeneous")
    # the first parameter vector on its own (batch axis of size 1)
    alone_model = ToyModel(*(HomogeneousCoupling(c.c[:1], 4) for c in model.couplings),
                           *(a[:1] for a in model.alphas), w=model.w, lam=model.lam[:1])
    alone_y0 = Latents(*(v[:1] for v in y0))
    for engine in ENGINES:
        batch = sim.euler(model, y0, dt=0.5, t_max=2000.0, tol=1e-2, save="final", engine=engine)
        assert batch.steps.unique().numel() > 1, batch.steps           # replicas stopped at different steps
        assert bool(batch.converged.all()) and batch.status == "converged"
        alone = sim.euler(alone_model, alone_y0, dt=0.5, t_max=2000.0, tol=1e-2, save="final", engine=engine)
        assert torch.max(torch.abs(alone.final.z[0] - batch.final.z[0])).item() < 1e-12
        assert torch.equal(alone.steps[0], batch.steps[0])


def test_engines_agree_with_the_dop853_reference():
    model, y0 = _batched("kernel")
    ref = sim.adaptive(model, y0, t_max=2.0, rtol=1e-11, atol=1e-12).final
    for engine in ENGINES:
        fin = sim.euler(model, y0, dt=1e-3, t_max=2.0, tol=None, save="final", engine=engine).final
        assert max(torch.max(torch.abs(u - v)).item() for u, v in zip(fin, ref)) < 2e-3


def test_fit_deviance_is_the_same_for_every_engine(monkeypatch):
    from physrl import fitting
    from physrl.fitting import _engine, _problem
    runs = fitting.load_runs(sorted(str(p) for p in REFERENCE.iterdir() if p.name.startswith("cal-")))
    problem = _problem.Problem.build(runs, fitting.observations(runs), _problem.FitSpec(transfer="homogeneous"))
    theta = problem.full()
    batch = np.repeat(theta[None], 4, 0)
    batch[1:, :3] *= np.array([[1.05], [0.9], [1.1]])                 # other priors (a0 stays below 1)
    deviance = {}
    for engine in ENGINES:
        monkeypatch.setattr(_problem, "simulate", functools.partial(_engine.simulate, engine=engine))
        deviance[engine] = (problem.residuals_full(batch) ** 2).sum(1)
    for engine, dev in deviance.items():
        np.testing.assert_allclose(dev, deviance["torch"], rtol=1e-6, err_msg=engine)
    assert np.ptp(deviance["torch"]) > 1.0                           # the vectors differ


def test_auto_engine_by_size_device_and_coupling():
    model, y0 = _batched("homogeneous")
    assert sim.choose_engine(model, y0) == ("numba" if numba_available() else "numpy")
    big = ToyModel.homogeneous(64, alpha_x=torch.ones(400, 1, dtype=F64))
    big_y0 = Latents.from_probabilities(torch.full((64,), 0.1, dtype=F64), 0.5, 0.1)
    assert sim.choose_engine(big, big_y0) == "torch"                 # 400 × 64 × 3 numbers per step
    coords = torch.randn(5, 2, dtype=F64)
    rff = sim.RandomFourierCoupling(coords, 1.0, 16)
    small_rff = ToyModel(rff, rff, rff)
    y5 = Latents.from_probabilities(torch.full((5,), 0.1, dtype=F64), 0.5, 0.1)
    assert sim.choose_engine(small_rff, y5) == "torch"
    assert sim.choose_engine(model, y0, progress=lambda t, T: None) in ("numpy", "torch")
    with pytest.raises(ValueError, match="engine"):
        sim.choose_engine(model, y0, "jax")
    with sim.engine_setting("torch"):                                  # scoped override of "auto"
        assert sim.choose_engine(model, y0) == "torch"
        assert sim.euler(model, y0, dt=0.1, t_max=1.0).engine == "torch"
        assert sim.choose_engine(model, y0, "numpy") == "numpy"      # an explicit engine still wins
    assert sim.choose_engine(model, y0) != "torch"
    if numba_available():
        with pytest.raises(ValueError, match="random Fourier"):
            sim.euler(small_rff, y5, dt=0.1, t_max=1.0, engine="numba")


def test_thread_policy_is_scoped_and_restores_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with sim.ThreadPolicy("auto", work=100):
            assert torch.get_num_threads() == 1                      # small problem: one thread
        assert torch.get_num_threads() == 2
        with sim.ThreadPolicy(None, work=10**9):
            assert torch.get_num_threads() == 2                      # None: leave it alone
        with sim.thread_setting(1), sim.ThreadPolicy("auto", work=10**9):
            assert torch.get_num_threads() == 1                      # the scoped default wins
        with pytest.raises(ValueError, match="threads"):
            sim.ThreadPolicy(0)
        # measured choice: one untimed step, then PROBE_STEPS timed steps per candidate
        sim._threads._MEMORY.clear()
        with sim.ThreadPolicy("auto", work=10**9) as policy:
            assert policy.measuring
            for threads_seen, seconds in [(1, 9.0), (1, 1.0), (1, 1.0), (1, 1.0),
                                          (2, 9.0), (2, 3.0), (2, 3.0), (2, 3.0)]:
                assert torch.get_num_threads() == threads_seen
                policy.step(seconds)
            assert policy.choices == [(1, 1.0)] and torch.get_num_threads() == 1
            policy.step(1.0)
            policy._next_probe = 0.0                                   # the probe interval has passed
            policy.step(1.0)                                           # -> probe 2 threads for one step
            assert torch.get_num_threads() == 2
            policy.step(2.0)                                           # not promising: back to 1
            assert torch.get_num_threads() == 1 and policy._period == 2 * sim._threads.PROBE_EVERY
            policy._next_probe = 0.0
            for seconds in (1.0, 0.5, 0.5, 0.5):                       # promising, confirmed: switch
                policy.step(seconds)
            assert policy.choices[-1] == (2, 0.5) and torch.get_num_threads() == 2
        with sim.ThreadPolicy("auto", work=10**9) as again:            # remembered: no new measurement
            assert torch.get_num_threads() == 2 and again.choices == []
        assert torch.get_num_threads() == 2
        model, y0 = _batched("identity")
        sim.euler(model, y0, dt=0.1, t_max=1.0, engine="torch")
        assert torch.get_num_threads() == 2                          # an integration restores it
    finally:
        torch.set_num_threads(before)


def test_engines_agree_with_observation_bounds_and_unit_bounds_change_nothing():
    model, y0 = _batched("homogeneous")
    g = torch.Generator().manual_seed(9)
    lo = 0.2 * torch.rand(2, 4, generator=g, dtype=F64)
    bounds = (lo, lo + 0.6, 0.5 * lo, 0.5 * lo + 0.7)                # (a_lo, a_hi, b_lo, b_hi) per (run, env)
    observed = ToyModel(*model.couplings, *model.alphas, w=model.w, lam=model.lam, observation=bounds)
    unit = ToyModel(*model.couplings, *model.alphas, w=model.w, lam=model.lam, observation=(0.0, 1.0, 0.0, 1.0))
    t_eval = [0.0, 1.0, 3.0]
    ref = sim.euler(observed, y0, dt=0.05, t_max=3.0, tol=None, t_eval=t_eval, engine="torch")
    plain = sim.euler(model, y0, dt=0.05, t_max=3.0, tol=None, t_eval=t_eval, engine="torch")
    assert (ref.p - plain.p).abs().max() > 1e-3                      # the bounds matter
    for engine in ENGINES:
        sol = sim.euler(observed, y0, dt=0.05, t_max=3.0, tol=None, t_eval=t_eval, engine=engine)
        assert torch.max(torch.abs(sol.p - ref.p)).item() < 1e-12, engine
        same = sim.euler(unit, y0, dt=0.05, t_max=3.0, tol=None, t_eval=t_eval, engine=engine)
        assert torch.max(torch.abs(same.p - plain.p)).item() < 1e-15, engine
