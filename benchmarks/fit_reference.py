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
      default options (the fit's options may have changed since 08702a2:
      its evaluation counts are printed beside the times).

The old code runs from a checkout of 08702a2 given with ``--baseline DIR``
(or ``$PHYSRL_BASELINE``), e.g. ``git worktree add DIR 08702a2``; without
one the comparison is skipped with a message and only this tree is timed.

Goal (issue 10): the whole fit >= 10x faster than at 08702a2.
Last line: ``eval_speedup_vs_08702a2=X fit_speedup_vs_08702a2=Y`` (or
``fit_seconds=Z`` without a baseline).

Usage: python benchmarks/fit_reference.py [--baseline DIR] [--rounds 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
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
    t0 = time.perf_counter()
    res = fitting.fit(runs, transfer="homogeneous")
    fit_seconds = time.perf_counter() - t0
    result = getattr(res, "result", None)
    return {"residual": residual, "jacobian": jacobian, "fit": fit_seconds,
            "nfev": getattr(result, "nfev", None), "n_varying": len(problem.var_names),
            "chisqr": float(getattr(result, "chisqr", float("nan")))}


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
            best[kind] = m if prev is None else {k: (min(v, prev[k]) if k in ("residual", "jacobian", "fit")
                                                     else v) for k, v in m.items()}
    for kind in kinds:
        m = best[kind]
        print(f"{kind}: residual {m['residual'] * 1e3:.2f} ms, Jacobian ({m['n_varying']} + 1 vectors) "
              f"{m['jacobian'] * 1e3:.2f} ms, whole fit {m['fit']:.2f} s ({m['nfev']} residual evaluations, "
              f"chi-square {m['chisqr']:.4f}; best of {args.rounds})")
    new = best["new"]
    if baseline is None:
        print(f"fit_seconds={new['fit']:.2f}")
        return 0
    old = best["old"]
    res_x, jac_x, fit_x = (old[k] / new[k] for k in ("residual", "jacobian", "fit"))
    per_eval = (old["residual"] + old["jacobian"]) / (new["residual"] + new["jacobian"])
    print(f"per evaluation: residual {res_x:.1f}x, Jacobian {jac_x:.1f}x faster; whole fit {fit_x:.1f}x "
          f"(evaluation counts old {old['nfev']}, new {new['nfev']})")
    print(f"eval_speedup_vs_{BASELINE_COMMIT}={per_eval:.1f} fit_speedup_vs_{BASELINE_COMMIT}={fit_x:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
