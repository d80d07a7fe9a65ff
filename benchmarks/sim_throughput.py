"""Throughput of the heterogeneous RFF Euler step, against its floor and against torchdiffeq.

Heterogeneous dynamics: N = 10,000 environments, M = 512 random Fourier
features, 32 replicas (different per-env learnabilities and initial
log-odds on one environment draw, as in a figure-5 batch; z and x share a
transfer length, so one feature matrix serves both, y has its own), float32.

In one run, interleaved in rounds (each times every contender within about
a minute; the ratios are medians over rounds, so a burst of load from other
processes does not decide them), it times
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

Usage: python benchmarks/sim_throughput.py [--steps 100] [--rounds 10] [--threads N]
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
    parser.add_argument("--steps", type=int, default=100, help="our Euler steps per round")
    parser.add_argument("--bare-steps", type=int, default=50, help="bare product steps per round and "
                                                                  "thread count")
    parser.add_argument("--torchdiffeq-steps", type=int, default=30, help="per round and thread count")
    parser.add_argument("--rounds", type=int, default=10)
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
    bare_steps = args.bare_steps
    print(f"torch {torch.__version__}, float32, CPU; torch default threads {default}; "
          f"references timed at threads {candidates}; ours: threads={policy!r}")

    model, y0 = build(10_000, 512, r)
    time_ours(model, y0, 3, dt, policy)  # warm-up
    ours, bare, tde, choices = [], [], [], []
    for _ in range(args.rounds):
        seconds, chosen = time_ours(model, y0, args.steps, dt, policy)
        ours.append(seconds / args.steps)
        choices += chosen
        b, t = {}, {}
        for c in candidates:
            with sim.ThreadPolicy(c):
                b[c] = time_bare(model, r, bare_steps) / bare_steps
                t[c] = time_torchdiffeq(model, y0, args.torchdiffeq_steps, dt) / args.torchdiffeq_steps
        bare.append(b)
        tde.append(t)
    # each round times every contender within about a minute: the median over rounds of the
    # per-round ratios is robust to bursts of load from other processes
    over = [o / min(b.values()) for o, b in zip(ours, bare)]
    speed = [min(t.values()) / o for o, t in zip(ours, tde)]

    def mean(values):
        return sum(values) / len(values)

    print(f"N=10000 M=512 replicas={r}: our Euler step {mean(ours) * 1e3:.2f} ms "
          f"({args.rounds} rounds x {args.steps} steps; the policy chose (threads, s/step) {choices})")
    for c in candidates:
        print(f"  at {c} thread(s): bare products {mean([b[c] for b in bare]) * 1e3:.2f} ms, torchdiffeq "
              f"odeint(method='euler') on the same vector field {mean([t[c] for t in tde]) * 1e3:.2f} ms")
    total_over = mean(ours) / mean([min(b.values()) for b in bare])
    total_speed = mean([min(t.values()) for t in tde]) / mean(ours)
    print(f"per round: step / floor {min(over):.2f}-{max(over):.2f}, torchdiffeq / step "
          f"{min(speed):.2f}-{max(speed):.2f}; over all rounds (first measurement included): "
          f"{total_over:.2f} and {total_speed:.2f}; medians over rounds below")
    print(f"step_over_matvec={_median(over):.2f} speedup_vs_torchdiffeq={_median(speed):.2f}")


def _median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


if __name__ == "__main__":
    main()
