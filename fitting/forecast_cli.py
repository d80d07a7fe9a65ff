"""``physrl forecast``: early warning, a run's end state forecast from its first steps (issue 23).

Usage::

    physrl forecast RUN_DIR --at STEP (--prior FIT_DIR | --population RUN_DIR ...) [--out DIR]
                    [--budget STEPS] [--threshold 0.5] [--level 0.9] [--transfer none|homogeneous|kernel]
                    [--option NAME=VALUE ...] [--cache DIR] [--seed K] [--watch [--interval S]]

Prints each method's end share, band and P(RS wins), and the step at which RS passes 0.5; ``--out`` gets
``forecast.json`` and ``forecast.png``. ``--watch`` re-forecasts a live run whenever a new chunk of rollouts
lands (the latest logged step moves on), from its latest step, until the run reaches its budget or is no longer
running. Bad input prints one line and exits with 2. The model and its baselines:
``physrl.fitting.forecast`` (docs/forecast.md).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from physrl._util.command_line import ArgumentParser, output_directory


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="physrl forecast",
                       description="Forecast a run's RS share at its budget, P(RS ends above the threshold) and "
                                   "the step at which RS passes 0.5, from its logs up to --at, with the fitted ODE "
                                   "and a population prior; baselines: ScaleRL sigmoid, persistence, base rate.")
    p.add_argument("run", help="run directory (docs/rollouts.md), live or finished")
    p.add_argument("--at", type=int, default=None,
                   help="optimizer steps seen: only rows with step <= AT are read (default with --watch: the "
                        "latest logged step; required otherwise)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prior", metavar="FIT_DIR", help="a `physrl fit --out` folder: its estimates are the prior (default: none; this or --population "
                          "is required)")
    src.add_argument("--population", nargs="+", metavar="RUN_DIR",
                     help="finished runs (other stage-1 models): each is fitted alone and their spread is the prior "
                          "(default: none; this or --prior is required)")
    p.add_argument("--out", type=output_directory, help="folder for forecast.json and forecast.png (default: none, the forecast is only printed)")
    p.add_argument("--budget", type=int, help="steps the run is configured for (default: its manifest's steps)")
    p.add_argument("--threshold", type=float, default=0.5, help="RS wins when the end share > this (default 0.5)")
    p.add_argument("--level", type=float, default=0.9, help="coverage of the bands (default 0.9)")
    p.add_argument("--transfer", choices=("none", "homogeneous", "kernel"),
                   help="model option passed to the fit (default: none with --population, the fit's with --prior)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="any other fit option passed through (e.g. selection=power); VALUE read as JSON if it parses "
                        "(default: none)")
    p.add_argument("--cache", help="folder caching the population's per-run fits (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.add_argument("--watch", action="store_true", help="re-forecast a live run at every new chunk (default: off)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between checks with --watch (default 10)")
    return p


def _options(args) -> dict | None:
    opts = {}
    if args.transfer:
        opts["transfer"] = args.transfer
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--option {item!r}: expected NAME=VALUE")
        try:
            opts[name] = json.loads(value)
        except json.JSONDecodeError:
            opts[name] = value
    return opts or None


def _one(args, run, at, prior, population, options):
    from physrl import fitting

    fc = fitting.forecast(run, at, prior=prior, population=population, budget=args.budget, threshold=args.threshold,
                    level=args.level, options=options, cache_dir=args.cache, seed=args.seed)
    print(fc.summary(), flush=True)
    if args.out:
        path = fc.save(args.out)
        print(f"wrote {path} and {path.with_name('forecast.png')}", flush=True)
    return fc


def _first_chunk(path):
    """The run at ``path``, or None while it has not written its manifest and first chunk of rollouts."""
    from physrl.contract import load_runs

    path = Path(path)
    if not path.exists() or (path.is_dir() and (not (path / "manifest.json").exists()
                                                or not any((path / "rollouts").glob("part-*.parquet")))):
        return None
    run = load_runs([path])[0]
    return None if run.rollouts.empty else run


def main(argv: list[str] | None = None) -> int:
    """Run ``physrl forecast``; returns the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    if not 0 < args.level < 1 or not 0 < args.threshold < 1:
        print("physrl forecast: error: --level and --threshold must lie in (0, 1)", file=sys.stderr)
        return 2
    if not args.interval >= 0 or args.interval == float("inf"):
        print(f"physrl forecast: error: --interval must be a finite number of seconds >= 0, got {args.interval:g}",
              file=sys.stderr)
        return 2
    if args.budget is not None and args.budget < 1:
        print(f"physrl forecast: error: --budget must be a positive integer (optimizer steps), got {args.budget}",
              file=sys.stderr)
        return 2
    if args.at is None and not args.watch:
        print("physrl forecast: error: --at STEP is required (or --watch)", file=sys.stderr)
        return 2
    from physrl.contract import LogValidationError, load_runs
    from physrl import fitting

    try:
        options = _options(args)
        prior = fitting.PopulationPrior.from_fit(args.prior) if args.prior else None
        population = None
        if args.population:
            from physrl.fitting._forecast import population_design

            runs = load_runs(args.population)
            target = _first_chunk(args.run) if args.watch else load_runs([args.run])[0]
            if target is not None:                  # the target dropped and the count checked before any fit
                runs, notes = population_design(target, runs)
                for note in notes:
                    print(f"note: {note}", flush=True)
            population = fitting.fit_population(runs, options=options, cache_dir=args.cache, progress=True)
        if not args.watch:
            _one(args, load_runs([args.run])[0], args.at, prior, population, options)
            return 0
        last = None
        waiting = False
        while True:
            run = _first_chunk(args.run)
            if run is None:
                if not waiting:
                    print(f"waiting for the first chunk of rollouts in {args.run} (checking every {args.interval:g} s)",
                          flush=True)
                    waiting = True
                time.sleep(args.interval)
                continue
            step = int(run.rollouts["step"].max())
            budget = args.budget or fitting.budget_of(run)
            at = step if args.at is None or (last is not None) else min(args.at, step)
            if budget is not None and at >= budget:
                print(f"run {run.run_id} reached its budget ({budget} steps): nothing left to forecast")
                return 0
            if at != last:
                _one(args, run, at, prior, population, options)
                last = at
            if run.manifest is not None and run.manifest.status != "running":
                print(f"run {run.run_id} is {run.manifest.status}: stopped watching")
                return 0
            time.sleep(args.interval)
    except (ValueError, LogValidationError, FileNotFoundError) as exc:
        print(f"physrl forecast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
