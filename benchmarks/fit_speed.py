"""Benchmark: joint fit of 20 synthetic runs × 16 environments × 40 eval points (issue 3).

Fast path: every residual evaluation integrates all runs in one batched
Euler call in optimizer-step units, and the finite-difference Jacobian
integrates its P + 1 parameter vectors in one more call (lmfit ``Dfun``).
Naive reference: a residual that calls ``scipy.integrate.solve_ivp`` (RK45,
rtol 1e-6) once per run, with lmfit's own finite-difference Jacobian (one
residual per parameter). A full naive fit takes minutes, so by default its
time is estimated from measured costs: (its residual time) × (the residual
evaluations lmfit's own forward differences would need along the fast
fit's path: Jacobians × P + residual calls); pass
``--full-naive`` to run it to the end instead.

Usage: ``python benchmarks/fit_speed.py [--runs 20] [--envs 16] [--full-naive]``.
Last line: ``fit_seconds=X speedup_vs_naive=Y``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lmfit
import numpy as np
import torch
from scipy.integrate import solve_ivp

from physrl import fitting
from physrl import sim
from physrl.fitting._engine import single_thread
from physrl.fitting._problem import FitSpec, Problem


class NaiveProblem(Problem):
    """Same data and likelihood; states from scipy solve_ivp, one run and one parameter vector at a time."""

    def predict_states(self, theta_full):
        theta_full = np.atleast_2d(theta_full)
        phys = self.physical(theta_full)
        steps = self.config.steps.astype(float)
        n_runs, n_envs = self.config.w.shape
        out = np.zeros((3, len(steps), theta_full.shape[0], n_runs, n_envs))
        for b in range(theta_full.shape[0]):
            ts = float(phys["time_scale"][b, 0, 0])
            for r in range(n_runs):
                model = sim.ToyModel(*(sim.HomogeneousCoupling(float(phys[f"c_{k}"][b, r]), n_envs) for k in "zxy"),
                                     alpha_z=phys["alpha_z"][b, r], alpha_x=phys["alpha_x"][b, r],
                                     alpha_y=phys["alpha_y"][b, r], w=torch.as_tensor(self.config.w[r]))
                y0 = sim.Latents.from_probabilities(phys["p0"][b, r], phys["a0"][b, r], phys["b0"][b, r])
                v0 = torch.cat(list(y0)).numpy()

                def f(_t, v, model=model):
                    s = torch.from_numpy(v).reshape(3, n_envs)
                    d = model.rhs(sim.Latents(s[0], s[1], s[2]))
                    return torch.cat(list(d)).numpy()

                sol = solve_ivp(f, (0.0, ts * steps[-1]), v0, t_eval=ts * steps, rtol=1e-6, atol=1e-9)
                z, x, y = sol.y.reshape(3, n_envs, -1)
                out[0, :, b, r] = 1 / (1 + np.exp(-z.T))
                out[1, :, b, r] = 1 / (1 + np.exp(-x.T))
                out[2, :, b, r] = 1 / (1 + np.exp(-y.T))
        return tuple(torch.as_tensor(o) for o in out)


def make_runs(root: Path, n_runs: int, n_envs: int) -> list:
    paths = []
    for i in range(n_runs):
        n_train = [4, 8, 12, 14][i % 4]  # runs that differ in N and p0 constrain transfer and learnability
        p0 = float(np.geomspace(0.05, 0.5, n_runs)[i])
        paths.append(fitting.synthesize(root / f"run{i:02d}", n_envs=n_train, n_heldout=n_envs - n_train, seed=i,
                                        steps=195, eval_every=5, rollouts_per_env=64, params={"p0": p0}))
    return fitting.load_runs(paths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--full-naive", action="store_true", help="run the naive fit to convergence (minutes)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        runs = make_runs(Path(tmp), args.runs, args.envs)
        obs = fitting.observations(runs)
        n_points = obs.groupby("run_id")["step"].nunique().max()
        print(f"synthesized {len(runs)} runs x {args.envs} envs x {n_points} eval points "
              f"({sum(len(r.rollouts) for r in runs)} rollouts) in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        res = fitting.fit(runs, transfer="homogeneous")
        fit_seconds = time.perf_counter() - t
        n_jac = res.diagnostics.jacobians - 1  # batched Jacobians over all starts (minus the final one)
        n_res = res.diagnostics.nfev
        truth = fitting.DEFAULT_TRUTH
        print(f"fast fit: {fit_seconds:.2f} s, {len(res.var_names)} varying parameters, "
              f"{res.n_data} observations, converged={res.converged}, unidentified={res.unidentified}")
        for name in ("time_scale", "alpha_x", "alpha_y", "c_z", "c_x", "c_y"):
            lo, hi = res.interval(name)
            print(f"  {name:<11} {res.value(name):.4f}  95% [{lo:.4f}, {hi:.4f}]  truth {truth[name]}")

        spec = FitSpec(transfer="homogeneous")
        naive = NaiveProblem.build(runs, obs, spec)
        with single_thread():
            t = time.perf_counter()
            naive.residuals_full(naive.full()[None])
            naive_residual = time.perf_counter() - t
            fast = Problem.build(runs, obs, spec)
            t = time.perf_counter()
            fast.residuals_full(fast.full()[None])
            fast_residual = time.perf_counter() - t
            t = time.perf_counter()
            fast.jacobian(fast.params)
            fast_jacobian = time.perf_counter() - t
        n_params = len(res.var_names)
        print(f"one residual: naive (solve_ivp per run) {naive_residual:.2f} s, batched {fast_residual:.3f} s; "
              f"one Jacobian: naive ~{naive_residual * (n_params + 1):.1f} s (P+1 residuals), "
              f"batched {fast_jacobian:.3f} s")
        if args.full_naive:
            with single_thread():
                t = time.perf_counter()
                out = lmfit.Minimizer(naive.residual, naive.params, scale_covar=False).leastsq()
                naive_seconds = time.perf_counter() - t
            print(f"naive fit ran to the end: {naive_seconds:.1f} s, {out.nfev} residual evaluations")
        else:
            # same path as the fast fit: n_jac Jacobians (P residuals each by forward differences) + n_res residuals
            n_naive = n_jac * n_params + n_res
            naive_seconds = naive_residual * n_naive
            print(f"naive fit estimated from measured cost: ({n_jac} Jacobians x {n_params} + {n_res}) residuals "
                  f"x {naive_residual:.2f} s = {naive_seconds:.0f} s (--full-naive runs it)")
    print(f"fit_seconds={fit_seconds:.2f} speedup_vs_naive={naive_seconds / fit_seconds:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
