"""Throughput of the heterogeneous RFF Euler step (issue 2).

Heterogeneous dynamics: N = 10,000 environments, M = 512 random Fourier
features, 32 replicas (different per-env learnabilities and initial
log-odds on one environment draw, as in a figure-5 batch; z and x share a
transfer length, so one feature matrix serves both, y has its own), float32.

In one run it times
  (a) a whole Euler step (sim.euler, save="final", no early stop), and
  (b) the bare batched matrix products that step needs on the same shapes
      (Φᵀ g then Φ u for the stacked z/x gradients and for y): the floor;
and a naive reference (Python loop over replicas, dense numpy N×N Gaussian
kernels, float64) against ours at N = 1,000.

Goals: step <= 1.5 × bare products; >= 50 × faster than naive.
Last line: ``step_over_matvec=X speedup_vs_naive=Y``.

Usage: python benchmarks/sim_throughput.py [--steps 1000] [--naive-steps 20]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from physrl import sim
from physrl.sim import Latents, RandomFourierCoupling, ToyModel


def build(n_envs: int, n_features: int, n_replicas: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dim = 4
    coords = torch.randn(n_envs, dim, generator=g, dtype=torch.float64) * 0.5
    zx = RandomFourierCoupling(coords.float(), 1.0, n_features, generator=g)
    y = RandomFourierCoupling(coords.float(), 0.05, n_features, generator=g)
    alpha = [torch.exp(0.3 * torch.randn(n_replicas, n_envs, generator=g)) / n_envs
             for _ in range(3)]
    p0 = torch.logspace(-3, -1, n_replicas)[:, None]
    y0 = Latents(torch.logit(p0) + 0.3 * torch.randn(n_replicas, n_envs, generator=g),
                 math.log(0.5 / 0.5) + 0.3 * torch.randn(n_replicas, n_envs, generator=g),
                 math.log(0.1 / 0.9) + 0.3 * torch.randn(n_replicas, n_envs, generator=g))
    return ToyModel(zx, zx, y, *alpha), Latents(*(t.float() for t in y0)), coords


def time_step(model, y0, steps: int, dt: float = 0.5) -> float:
    t0 = time.perf_counter()
    sol = sim.euler(model, y0, dt=dt, t_max=steps * dt, tol=None, save="final")
    elapsed = time.perf_counter() - t0
    assert sol.n_steps == steps and torch.isfinite(sol.final.z).all()
    return elapsed / steps


def time_bare_products(model, n_replicas: int, steps: int) -> float:
    phi_zx = model.coupling_z.features
    phi_y = model.coupling_y.features
    n = phi_zx.shape[0]
    g_zx = torch.randn(2 * n_replicas, n)
    g_y = torch.randn(n_replicas, n)
    t0 = time.perf_counter()
    for _ in range(steps):
        (g_zx @ phi_zx) @ phi_zx.T
        (g_y @ phi_y) @ phi_y.T
    return (time.perf_counter() - t0) / steps


def naive_step_time(coords: np.ndarray, n_replicas: int, steps: int, dt: float = 0.5) -> float:
    """Python loop over replicas, dense numpy kernels, float64 (the obvious implementation)."""
    d2 = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    c_zx = np.exp(-d2 / 2.0)
    c_y = np.exp(-d2 / (2 * 0.05**2))
    rng = np.random.default_rng(0)
    n = coords.shape[0]
    state = [(np.log(0.01 / 0.99) + 0.3 * rng.standard_normal(n), 0.3 * rng.standard_normal(n),
              np.log(0.1 / 0.9) + 0.3 * rng.standard_normal(n)) for _ in range(n_replicas)]
    alpha = [np.exp(0.3 * rng.standard_normal((3, n))) / n for _ in range(n_replicas)]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    t0 = time.perf_counter()
    for _ in range(steps):
        for r in range(n_replicas):
            z, x, y = state[r]
            p, a, b = sig(z), sig(x), sig(y)
            dz = alpha[r][0] * (c_zx @ (p * (1 - p) * (a - b)))
            dx = alpha[r][1] * (c_zx @ (p * a * (1 - a)))
            dy = alpha[r][2] * (c_y @ ((1 - p) * b * (1 - b)))
            state[r] = (z + dt * dz, x + dt * dx, y + dt * dy)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--naive-steps", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 is far faster when "
                             "other jobs share the cores, OpenMP threads spin otherwise)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = args.replicas
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, CPU")

    model, y0, _ = build(10_000, 512, r)
    time_step(model, y0, 5)  # warm-up
    step = time_step(model, y0, args.steps)
    bare = time_bare_products(model, r, args.steps)
    print(f"N=10000 M=512 replicas={r}: Euler step {step * 1e3:.2f} ms, bare products "
          f"{bare * 1e3:.2f} ms ({args.steps} steps each, {args.steps * (step + bare):.0f} s)")

    small, y_small, coords = build(1_000, 512, r)
    ours = time_step(small, y_small, 200)
    naive = naive_step_time(coords.numpy(), r, args.naive_steps)
    print(f"N=1000: ours {ours * 1e3:.3f} ms/step (200 steps); naive {naive * 1e3:.2f} ms/step "
          f"({args.naive_steps} steps, Python loop over {r} replicas, dense numpy float64)")
    print(f"step_over_matvec={step / bare:.2f} speedup_vs_naive={naive / ours:.1f}")


if __name__ == "__main__":
    main()
