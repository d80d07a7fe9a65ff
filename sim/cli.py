"""``physrl sim ...``: the post's figures and critical diversity from the command line.

Usage::

    physrl sim figure NUMBER --out DIR [--quick] [--seed S] [--device auto|cpu|cuda]
    physrl sim critical-diversity --p0 P [P ...] --out DIR [--c-z C] [--c-x C] [--c-y C]
        [--alpha-x A] [--alpha-y A] [--a0 A] [--b0 B] [--method bisection|grid|scan]
        [--max-steps S] [--engine auto|numba|numpy|torch] [--gamma G] [--gamma-skills]
    physrl sim selection-law --out DIR [--quick] [--gamma G [G ...]] [--t-max T]

Every N* is printed and saved with its status (``found``, ``above_n_max``,
``not_converged``, ...): a search that hit n_max or the step cap says so next
to the number. Bad values stop with a message naming the parameter and its
allowed range (exit code 2, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from physrl._util.command_line import ArgumentParser, output_directory

from ._options import ENGINES, METHODS

# numpy, torch and numba (through ._critical, ._threads, ._figures) are imported by the command functions,
# after the arguments are parsed: `physrl sim --help` needs none of them


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (use auto or cpu)")
    return name


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="physrl sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--out", required=True, type=output_directory,
                       help="output directory, created if absent (required)")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="torch device: auto is cuda when a GPU is available, else cpu (default: %(default)s)")
        p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
        p.add_argument("--dt", type=float, default=None,
                       help="Euler step in normalised model time (default: 1; 2 for figure 5)")
        p.add_argument("--t-max", type=float, default=None,
                       help="horizon in model time on the RS-propensity clock (default: 10000; 3000 for figure 5, "
                            "at most 1000 for figure 5 --quick)")
        p.add_argument("--max-steps", type=int, default=None,
                       help="cap on Euler steps per run, horizon extensions included (default: 5e7)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bars (default: shown, on stderr)")
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: one for small problems, else the faster of "
                            "1 and torch's default, measured while running)")

    fig = sub.add_parser("figure", help="reproduce one of the post's figures (docs/model.md §5)")
    fig.add_argument("k", type=int, metavar="NUMBER", help="which of the post's figures: 1-5 (docs/model.md §5)")
    fig.add_argument("--quick", action="store_true",
                     help="small grids, under a minute (default: the post's grids, minutes to an hour)")
    common(fig)

    cd = sub.add_parser("critical-diversity",
                        help="N*(p0) for N identical environments (docs/model.md §3)")
    cd.add_argument("--p0", type=float, nargs="+", required=True,
                    help="priors: initial RS propensities (probabilities in (0, 1)), one N* each (required)")
    cd.add_argument("--c-z", type=float, default=1.0, help="transfer of z between environments, in [0, 1] "
                                                           "(default: %(default)s)")
    cd.add_argument("--c-x", type=float, default=1.0, help="transfer of x (RS skill), in [0, 1] (default: %(default)s)")
    cd.add_argument("--c-y", type=float, default=0.0,
                    help="transfer of y (local skill), in [0, 1] (default: %(default)s)")
    cd.add_argument("--alpha-x", type=float, default=1.0,
                    help="learnability of x relative to α_z = 1, >= 0 (default: %(default)s)")
    cd.add_argument("--alpha-y", type=float, default=1.0,
                    help="learnability of y relative to α_z = 1, >= 0 (default: %(default)s)")
    cd.add_argument("--a0", type=float, default=0.5,
                    help="initial RS skill: expected reward of an RS rollout, in (0, 1) (default: %(default)s)")
    cd.add_argument("--b0", type=float, default=0.1,
                    help="initial local skill: expected reward of a local rollout, in (0, 1) (default: %(default)s)")
    cd.add_argument("--threshold", type=float, default=0.5,
                    help="N* is the smallest N whose final mean RS propensity p exceeds this, in (0, 1) "
                         "(default: %(default)s)")
    cd.add_argument("--n-max", type=int, default=10_000,
                    help="largest N (environments) searched; beyond it the status says above_n_max "
                         "(default: %(default)s)")
    cd.add_argument("--method", default="bisection", choices=METHODS,
                    help="search: bisection (exact integer N*, assumes p rises with N), grid (the post's 16-point "
                         "log grid, interpolated), scan (every N up to --n-max) (default: %(default)s)")
    cd.add_argument("--engine", default="auto", choices=ENGINES,
                    help="Euler engine; auto is numba on the CPU, torch on a GPU (default: %(default)s)")
    _selection_options(cd)
    common(cd)

    sl = sub.add_parser("selection-law",
                        help="the slope of log N* on log p0 against the selection-law exponent γ, canonical case "
                             "(docs/model.md §9)")
    sl.add_argument("--gamma", type=float, nargs="+", default=None,
                    help="exponents γ in [0, 3] to compute (default: 0, 0.125, ..., 1, 1.25; every other one with "
                         "--quick)")
    sl.add_argument("--quick", action="store_true",
                    help="every other p0 and γ on a coarser N grid, about a minute (default: off; the full figure "
                         "took 9.5 min on one shared core)")
    common(sl)
    return parser


def _selection_options(p) -> None:
    p.add_argument("--gamma", type=float, default=1.0,
                   help="selection-law exponent γ in [0, 3] (the fit's range): dz/dt ∝ [p(1−p)]^γ (a − b); 1 is the post's replicator, "
                        "0 a log-odds growth independent of p (docs/model.md §9) (default: %(default)s)")
    p.add_argument("--gamma-skills", action="store_true",
                   help="also raise the skill terms a(1−a), b(1−b) to the power γ (default: off; the takeoff "
                        "experiment decides, docs/model.md §9)")


def _integration(args, default):
    """``default`` (an :class:`IntegrationConfig`) with the command line's --dt, --t-max, --max-steps."""
    kw = {}
    if args.dt is not None:
        kw["dt"] = args.dt
    if args.t_max is not None:
        kw["t_max"] = args.t_max
    if args.max_steps is not None:
        kw["max_steps"] = args.max_steps
    return replace(default, **kw)


def _figure(args) -> int:
    from ._figures import FigureConfig, make_figure
    if args.k not in range(1, 6):
        raise ValueError(f"figure NUMBER must be one of 1-5, got {args.k}")
    base = FigureConfig()
    cfg = FigureConfig(quick=args.quick, seed=args.seed, device=resolve_device(args.device),
                       integration=_integration(args, base.integration),
                       hetero_integration=_integration(args, base.hetero_integration),
                       progress=not args.no_progress)
    make_figure(args.k, args.out, cfg)
    print(f"wrote {args.out / f'figure-{args.k}.png'} and {args.out / f'figure-{args.k}.csv'}")
    return 0


def _critical(args) -> int:
    import numpy as np
    import pandas as pd

    from ._critical import (IntegrationConfig, check_nonnegative, check_probability, check_unit_interval,
                            critical_diversity_homogeneous)

    check_probability("p0", args.p0)
    check_probability("a0", args.a0)
    check_probability("b0", args.b0)
    check_probability("threshold", args.threshold)
    for name in ("c_z", "c_x", "c_y"):
        check_unit_interval(name.replace("_", "-"), getattr(args, name))
    for name in ("alpha_x", "alpha_y"):
        check_nonnegative(name.replace("_", "-"), getattr(args, name))
    if args.n_max < 1:
        raise ValueError(f"n-max must be >= 1, got {args.n_max}")
    integration = _integration(args, IntegrationConfig())
    from ._selection import SelectionLaw
    from ._selection import check_gamma
    law = SelectionLaw(check_gamma(args.gamma), bool(args.gamma_skills))   # ValueError names gamma and its range
    p0 = np.asarray(args.p0, dtype=float)
    res = critical_diversity_homogeneous(
        p0, a0=args.a0, b0=args.b0, c_z=args.c_z, c_x=args.c_x, c_y=args.c_y,
        alpha_x=args.alpha_x, alpha_y=args.alpha_y, method=args.method,
        threshold=args.threshold, n_max=args.n_max, integration=integration,
        device=resolve_device(args.device), progress=not args.no_progress, engine=args.engine, selection=law)
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"p0": p0, "n_star": res.n_star, "status": [s.value for s in res.status]}).to_csv(
        args.out / "critical_diversity.csv", index=False)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta.update(method=res.method, integration=asdict(integration), result=res.to_dict(), selection=law.to_dict(),
                note="n_star is empty where there is no value; status says why (messages)")
    (args.out / "critical_diversity.json").write_text(json.dumps(meta, indent=2))
    law_text = "" if law.is_replicator else f", γ = {law.gamma:g}{' (skills too)' if law.skills else ''}"
    for i, p in enumerate(p0):
        print(f"p0={p:g}  {res.describe(i)}  ({res.method}{law_text})")
    return 0


def _selection_law(args) -> int:
    from ._critical import IntegrationConfig
    from ._figures import SELECTION_T_MAX, FigureConfig, make_selection_figure
    from ._selection import check_gamma

    gammas = tuple(args.gamma) if args.gamma else None                   # None: the figure's default γ
    for g in gammas or ():
        check_gamma(g)                                                   # ValueError names gamma and its range
    # a longer horizon than N*'s default: RS needs ~I_γ(p0) / gap of z-time to take over, 2.5e4 at
    # p0 = 1e-4 and γ = 1 (docs/model.md §9)
    base = replace(IntegrationConfig(), t_max=SELECTION_T_MAX)
    cfg = FigureConfig(quick=args.quick, seed=args.seed, device=resolve_device(args.device),
                       integration=_integration(args, base), progress=not args.no_progress)
    df = make_selection_figure(args.out, cfg, gammas)
    for row in df.drop_duplicates("gamma").itertuples():
        print(f"γ = {row.gamma:g}: slope of log N* on log p0 {row.slope:.3f} (R² {row.r2:.4f}, {row.n_points} priors "
              f"in [{row.p0_min:.2g}, {row.p0_max:.2g}]); frozen-gap prediction {row.frozen_gap_slope:.3f}")
    print(f"wrote {args.out / 'selection-law.png'}, .csv and .json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``physrl sim``; returns the exit code (2 for a bad value)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message
        return int(exc.code or 0)
    from ._threads import thread_setting

    try:
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"threads must be >= 1, got {args.threads}")
        with thread_setting(args.threads if args.threads else "auto"):
            if args.command == "figure":
                return _figure(args)
            if args.command == "selection-law":
                return _selection_law(args)
            return _critical(args)
    except ValueError as exc:
        print(f"physrl sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
