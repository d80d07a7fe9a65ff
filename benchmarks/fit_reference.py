"""Fit of the reference calibration runs: this tree against commit 08702a2, side by side.

The fit of ``data/reference/demo/cal-*`` (as ``physrl fit cal-N1-p0.1-h2-s0
cal-N2-p0.3-h2-s0``, homogeneous transfer) spent 94.5% of its time in the
torch Euler at 08702a2 (issue 10). This benchmark measures, in one run, for
the old and the new code alike (each in its own process, one torch thread,
alternating old/new so that load hits both):

  (a) the per-evaluation cost on that problem: one residual (one parameter
      vector) and one forward-difference Jacobian (P + 1 vectors in one
      batched integration), after a warm-up call;
  (b) the whole ``fit(runs, transfer="homogeneous")`` with each version's
      default options (the fit's options have changed since 08702a2, e.g.
      several starts: the batched integrations each fit asked for are counted
      and printed beside the times).

The old code runs from a checkout of 08702a2 given with ``--baseline DIR``
(or ``$PHYSRL_BASELINE``), e.g. ``git worktree add DIR 08702a2``; without
one the comparison is skipped with a message and only this tree is timed.

The new fit is also timed with ``n_starts=1`` (one start, as at 08702a2) when
it has that option.

Goal (issue 10): the whole fit >= 10x faster than at 08702a2.
Last line: ``eval_speedup_vs_08702a2=X fit_speedup_vs_08702a2=Y
[one_start_fit_speedup_vs_08702a2=Z]`` (or ``fit_seconds=W`` without a baseline).

Usage: python benchmarks/fit_reference.py [--baseline DIR] [--rounds 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = ("cal-N1-p0.1-h2-s0", "cal-N2-p0.3-h2-s0")
BASELINE_COMMIT = "08702a2"


def worker(kind: str, root: Path, seconds: float) -> dict:
    """Time one version (run in its own process); returns the measurements."""
    import numpy as np
    import torch
    torch.set_num_threads(1)
    if kind == "old":
        import fitting
        from fitting._problem import FitSpec, Problem
    else:
        from physrl import fitting
        from physrl.fitting._problem import FitSpec, Problem
    paths = [str(root / "data" / "reference" / "demo" / name) for name in RUNS]
    runs = fitting.load_runs(paths)
    problem = Problem.build(runs, fitting.observations(runs), FitSpec(transfer="homogeneous"))
    theta = problem.full()[None]

    def per_call(fn) -> float:
        fn()  # warm-up (first numba call loads the compiled kernel from its cache)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return (time.perf_counter() - t0) / n

    residual = per_call(lambda: problem.residuals_full(theta))
    jacobian = per_call(lambda: problem.jacobian(problem.params))
    counts = {"integrations": 0, "vectors": 0}
    predict_states = Problem.predict_states

    def counted(self, theta_full, *a, **k):   # every batched integration the fit asks for
        counts["integrations"] += 1
        counts["vectors"] += int(np.atleast_2d(theta_full).shape[0])
        return predict_states(self, theta_full, *a, **k)

    Problem.predict_states = counted
    t0 = time.perf_counter()
    res = fitting.fit(runs, transfer="homogeneous")
    fit_seconds = time.perf_counter() - t0
    out = {"residual": residual, "jacobian": jacobian, "fit": fit_seconds,
           "nfev": getattr(getattr(res, "result", None), "nfev", None), "n_varying": len(problem.var_names),
           "chisqr": float(getattr(getattr(res, "result", None), "chisqr", float("nan"))), **counts}
    if "n_starts" in inspect.signature(fitting.fit).parameters:   # one start, as the fit of 08702a2
        counts.update(integrations=0, vectors=0)
        t0 = time.perf_counter()
        fitting.fit(runs, transfer="homogeneous", n_starts=1)
        out.update(fit_one_start=time.perf_counter() - t0, integrations_one_start=counts["integrations"])
    Problem.predict_states = predict_states
    return out


def run_worker(kind: str, root: Path, seconds: float, baseline: Path | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if kind == "old":
        env["PYTHONPATH"] = str(baseline)
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--root", str(root), "--seconds", str(seconds)],
                         env=env, cwd=str(root if kind == "new" else baseline), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default=os.environ.get("PHYSRL_BASELINE"),
                    help=f"checkout of commit {BASELINE_COMMIT} (old layout: run with PYTHONPATH=DIR)")
    ap.add_argument("--rounds", type=int, default=2, help="old/new pairs; the faster of each is kept")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per evaluation kind")
    ap.add_argument("--worker", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.root), args.seconds)))
        return 0
    baseline = Path(args.baseline) if args.baseline else None
    if baseline is not None and not (baseline / "fitting" / "_engine.py").exists():
        print(f"--baseline {baseline} is not a checkout of {BASELINE_COMMIT} (no fitting/_engine.py)")
        baseline = None
    if baseline is None:
        print(f"no baseline checkout (--baseline DIR or $PHYSRL_BASELINE; git worktree add DIR {BASELINE_COMMIT}):"
              " the comparison with the old code is skipped")
    else:
        head = subprocess.run(["git", "-C", str(baseline), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        print(f"baseline: {baseline} at {head or 'unknown commit'}")
    kinds = ["old", "new"] if baseline is not None else ["new"]
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for kind in kinds:
            m = run_worker(kind, REPO if kind == "new" else baseline, args.seconds, baseline)
            prev = best.get(kind)
            best[kind] = m if prev is None else {
                k: (min(v, prev[k]) if k in ("residual", "jacobian", "fit", "fit_one_start") else v)
                for k, v in m.items()}
    for kind in kinds:
        m = best[kind]
        print(f"{kind}: residual {m['residual'] * 1e3:.2f} ms, Jacobian ({m['n_varying']} + 1 vectors) "
              f"{m['jacobian'] * 1e3:.2f} ms, whole fit {m['fit']:.2f} s ({m['integrations']} batched "
              f"integrations of {m['vectors']} parameter vectors; lmfit nfev {m['nfev']}, chi-square "
              f"{m['chisqr']:.4f}; best of {args.rounds})")
    new = best["new"]
    if baseline is None:
        print(f"fit_seconds={new['fit']:.2f}")
        return 0
    old = best["old"]
    res_x, jac_x, fit_x = (old[k] / new[k] for k in ("residual", "jacobian", "fit"))
    per_eval = (old["residual"] + old["jacobian"]) / (new["residual"] + new["jacobian"])
    print(f"per evaluation: residual {res_x:.1f}x, Jacobian {jac_x:.1f}x faster; whole fit {fit_x:.1f}x "
          f"(integrations old {old['integrations']}, new {new['integrations']}: the fit's own options decide "
          f"how many it asks for)")
    line = f"eval_speedup_vs_{BASELINE_COMMIT}={per_eval:.1f} fit_speedup_vs_{BASELINE_COMMIT}={fit_x:.1f}"
    if "fit_one_start" in new:
        one_x = old["fit"] / new["fit_one_start"]
        print(f"new fit with n_starts=1 (one start, as at {BASELINE_COMMIT}): {new['fit_one_start']:.2f} s "
              f"({new['integrations_one_start']} integrations), {one_x:.1f}x faster than the old fit")
        line += f" one_start_fit_speedup_vs_{BASELINE_COMMIT}={one_x:.1f}"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
