"""Throughput of the heterogeneous RFF Euler step, against its floor and against torchdiffeq.

Heterogeneous dynamics: N = 10,000 environments, M = 512 random Fourier
features, 32 replicas (different per-env learnabilities and initial
log-odds on one environment draw, as in a figure-5 batch; z and x share a
transfer length, so one feature matrix serves both, y has its own), float32.

In one run, interleaved in rounds so that a change of load hits every
contender alike, it times
  (a) our Euler step (``sim.euler``, save="final", no early stop) with the
      default thread policy (``sim.ThreadPolicy``: one thread or torch's
      default, whichever it measures faster while it runs);
  (b) the bare batched matrix products that step needs on the same shapes
      (Φᵀ g then Φ u for the stacked z/x gradients and for y): the floor,
      taken at the better of 1 thread and torch's default;
  (c) torchdiffeq's ``odeint(method="euler")`` stepping the same vector field
      (``model.field``), also at its better thread count: the library peer.

Goals (issue 10): step <= 1.2 × the floor, quiet or with a busy core, and
at least as fast as torchdiffeq. Last line:
``step_over_matvec=X speedup_vs_torchdiffeq=Y``.

Usage: python benchmarks/sim_throughput.py [--steps 150] [--rounds 6] [--threads N]
(``--threads N`` fixes the thread count for every contender instead).
"""

from __future__ import annotations

import argparse
import math
import time

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
    return ToyModel(zx, zx, y, *alpha), Latents(*(t.float() for t in y0))


def time_ours(model, y0, steps: int, dt: float, threads) -> tuple[float, list]:
    t0 = time.perf_counter()
    sol = sim.euler(model, y0, dt=dt, t_max=steps * dt, tol=None, save="final", engine="torch",
                    threads=threads)
    elapsed = time.perf_counter() - t0
    assert sol.n_steps == steps and torch.isfinite(sol.final.z).all()
    return elapsed, sol.extras.get("thread_choices", [])


def time_bare(model, n_replicas: int, steps: int) -> float:
    phi_zx = model.coupling_z.features
    phi_y = model.coupling_y.features
    n = phi_zx.shape[0]
    g_zx = torch.randn(2 * n_replicas, n)
    g_y = torch.randn(n_replicas, n)
    t0 = time.perf_counter()
    for _ in range(steps):
        (g_zx @ phi_zx) @ phi_zx.T
        (g_y @ phi_y) @ phi_y.T
    return time.perf_counter() - t0


def time_torchdiffeq(model, y0, steps: int, dt: float) -> float:
    from torchdiffeq import odeint
    state = torch.stack(list(y0))
    field = model.field(state)
    t = torch.tensor([0.0, steps * dt])
    t0 = time.perf_counter()
    out = odeint(lambda _t, s: field(s), state, t, method="euler", options={"step_size": dt})
    elapsed = time.perf_counter() - t0
    assert torch.isfinite(out[-1]).all()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="our Euler steps per round")
    parser.add_argument("--bare-steps", type=int, default=None, help="bare product steps per round and "
                                                                        "thread count (default: --steps)")
    parser.add_argument("--torchdiffeq-steps", type=int, default=50, help="per round and thread count")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--replicas", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None,
                        help="fix torch's thread count for every contender (default: our policy; the "
                             "references at the better of 1 and torch's default)")
    args = parser.parse_args()
    dt = 0.5
    default = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    candidates = [torch.get_num_threads()] if args.threads else sorted({1, default})
    policy = args.threads if args.threads else "auto"
    r = args.replicas
    bare_steps = args.bare_steps or args.steps
    print(f"torch {torch.__version__}, float32, CPU; torch default threads {default}; "
          f"references timed at threads {candidates}; ours: threads={policy!r}")

    model, y0 = build(10_000, 512, r)
    time_ours(model, y0, 3, dt, policy)  # warm-up
    ours = 0.0
    bare = {c: 0.0 for c in candidates}
    tde = {c: 0.0 for c in candidates}
    choices = []
    for _ in range(args.rounds):
        seconds, chosen = time_ours(model, y0, args.steps, dt, policy)
        ours += seconds
        choices += chosen
        for c in candidates:
            with sim.ThreadPolicy(c):
                bare[c] += time_bare(model, r, bare_steps)
                tde[c] += time_torchdiffeq(model, y0, args.torchdiffeq_steps, dt)
    step = ours / (args.rounds * args.steps)
    bare_step = {c: v / (args.rounds * bare_steps) for c, v in bare.items()}
    td_step = {c: v / (args.rounds * args.torchdiffeq_steps) for c, v in tde.items()}
    floor, td_best = min(bare_step.values()), min(td_step.values())
    print(f"N=10000 M=512 replicas={r}: our Euler step {step * 1e3:.2f} ms "
          f"({args.rounds} x {args.steps} steps; the policy measured (threads, s/step) {choices})")
    print("bare products " + ", ".join(f"{v * 1e3:.2f} ms at {c} thread(s)" for c, v in bare_step.items())
          + f" -> floor {floor * 1e3:.2f} ms")
    print("torchdiffeq odeint(method='euler'), same vector field: "
          + ", ".join(f"{v * 1e3:.2f} ms at {c} thread(s)" for c, v in td_step.items())
          + f" -> best {td_best * 1e3:.2f} ms")
    print(f"step_over_matvec={step / floor:.2f} speedup_vs_torchdiffeq={td_best / step:.2f}")


if __name__ == "__main__":
    main()
