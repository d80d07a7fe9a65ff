"""``physrl fit``: fit rollout logs, predict other runs, synthesize logs from the ODE.

Usage::

    physrl fit RUN [RUN ...] --out FIT_DIR [--transfer none|homogeneous|kernel]
               [--predict RUN ...] [--cross-validate] [--priors shared|per_env]
               [--learnabilities shared|per_env] [--observation stage1|manifest|unit|fit]
               [--step0 free|fixed|prior] [--dispersion quasi|none] [--starts K]
               [--lam] [--selection replicator|power] [--compare] [--profile] [--emcee-steps K]
               [--phases eval,train]
    physrl fit --from FIT_DIR --predict RUN [RUN ...] [--out DIR] [--samples S]
    physrl fit synthesize --out RUN_DIR --n-envs N --seed K [--n-heldout H]
               [--param NAME=VALUE ...] [--transfer ...] [--steps S] [--eval-every E]
               [--rollouts-per-env R] [--train-rollouts-per-env R] [--continuous-rewards]

A RUN is a run directory (docs/rollouts.md) or a .csv/.jsonl/.parquet table with
the same columns. Bad input (a log that breaks the contract, a missing
path, a bad option value, too little data) prints one clear message and
exits with 2. stdout gets a short summary table (and, with --compare, the
model ranking); FIT_DIR/fit_report.txt the full report (lmfit's included);
progress goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from physrl._util.command_line import ArgumentParser, output_directory

from ._options import DEFAULT_TRUTH, SELECTIONS, TRANSFERS

# torch, lmfit and pandas (through ._fit, ._synthesize, physrl.contract) are imported by the command functions,
# after the arguments are parsed: `physrl fit --help` needs none of them


class _UsageError(Exception):
    pass


class _Parser(ArgumentParser):
    """physrl's one-line usage errors, raised (not exited) so that :func:`main` reports them like bad data."""

    def error(self, message):
        raise _UsageError(message)


#: how --transfer reads in the help (docs/model.md §1, §3-4)
_TRANSFER_HELP = ("transfer between environments: none (C = I), homogeneous (one coupling c per latent) or kernel "
                  "(a Gaussian length scale per latent over the manifest's coordinates) (default: %(default)s)")


def _synth_parser() -> ArgumentParser:
    p = _Parser(prog="physrl fit synthesize",
                description="Write a run directory sampled from the ODE with binomial noise, plus truth.json.")
    p.add_argument("--out", required=True, type=output_directory,
                   help="run directory to create (required; must be empty or absent unless --overwrite)")
    p.add_argument("--n-envs", type=int, default=4, help="trained environments, w = 1/n each (default: %(default)s)")
    p.add_argument("--n-heldout", type=int, default=2,
                   help="held-out environments, w = 0; they identify transfer (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default: %(default)s)")
    p.add_argument("--transfer", choices=TRANSFERS, default="homogeneous", help=_TRANSFER_HELP)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="true parameter override, repeatable (p0, a0, b0 probabilities; α relative to α_z = 1; "
                        "time_scale in model time per optimizer step; c in [0, 1]; length scales in coordinate "
                        "units); default: " + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_TRUTH.items()))
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=5,
                   help="optimizer steps between eval passes, from step 0 (default: %(default)s)")
    p.add_argument("--rollouts-per-env", type=int, default=256,
                   help="eval rollouts per environment and eval step (default: %(default)s)")
    p.add_argument("--train-rollouts-per-env", type=int, default=0,
                   help="train rollouts per trained environment and step, 0 = none (default: %(default)s)")
    p.add_argument("--continuous-rewards", action="store_true",
                   help="fractional rewards in [0, 1] (Beta with the same mean) (default: 0/1 rewards)")
    p.add_argument("--spacing", type=float, default=1.0,
                   help="distance between neighbouring environments' coordinates, in coordinate units "
                        "(default: %(default)s)")
    p.add_argument("--observation", action="append", default=[], metavar="BOUND=VALUE",
                   help="observation bound a_lo, a_hi, b_lo or b_hi in reward units (docs/model.md §7), "
                        "repeatable, written to the manifest (default: none, i.e. (0, 1))")
    p.add_argument("--dispersion", type=float, default=1.0,
                   help="overdispersion φ >= 1 of the counts; 1 is binomial (default: %(default)s)")
    p.add_argument("--gamma-skills", action="store_true",
                   help="with --param gamma=G: raise the skill terms a(1−a), b(1−b) to the power γ too (the "
                        "power+skills selection law, docs/model.md §9) (default: off)")
    p.add_argument("--run-id", default=None, help="the run's id in the manifest and rows (default: synthetic-SEED)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the contents of a non-empty --out (default: refuse, exit 2)")
    return p


def _fit_parser() -> ArgumentParser:
    p = _Parser(prog="physrl fit", description="Fit the toy ODE to rollout logs (docs/model.md §6) and predict other runs.",
                epilog="`physrl fit synthesize --help` for synthetic logs.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories or .csv/.jsonl/.parquet tables")
    p.add_argument("--out", type=output_directory, default=None,
                   help="directory for fit.json, fit_report.txt and figures (required unless --from; with --from, "
                        "default FIT_DIR)")
    p.add_argument("--from", dest="from_dir", metavar="FIT_DIR", default=None,
                   help="predict with the fit saved in FIT_DIR (its fit.json) instead of fitting: needs --predict, "
                        "takes no RUN; the numbers equal those of the fit that wrote it (default: fit the RUNs)")
    p.add_argument("--transfer", choices=TRANSFERS, default="homogeneous", help=_TRANSFER_HELP)
    p.add_argument("--priors", choices=["shared", "per_env"], default="shared",
                   help="initial skills a0, b0 shared by every environment, or one per env id; p0 is one per run "
                        "(per run and env with per_env) (default: %(default)s)")
    p.add_argument("--learnabilities", choices=["shared", "per_env"], default="shared",
                   help="learnabilities α_x, α_y shared, or one per env id (then α_z too, the first env's fixed at "
                        "1) (default: %(default)s)")
    p.add_argument("--observation", choices=["stage1", "manifest", "unit", "fit"], default="stage1",
                   help="observation bounds (docs/model.md §7): from the manifests with the local floor b_lo "
                        "measured per stage-1 model at its step 0 (stage1), from the manifests as declared "
                        "(their floor computed from the target b0), (0, 1), or fitted (default: %(default)s)")
    p.add_argument("--step0", choices=["free", "fixed", "prior"], default="free",
                   help="p0, a0, b0: fitted by the data (step-0 rows included), fixed at the step-0 measurement, "
                        "or a prior centred on it; free: unbiased, its 95%% intervals cover (docs/fitting.md) "
                        "(default: %(default)s)")
    p.add_argument("--dispersion", choices=["quasi", "none"], default="quasi",
                   help="scale errors and bands by the Pearson dispersion φ (quasi) or not (default: %(default)s)")
    p.add_argument("--starts", type=int, default=4,
                   help="optimisation starts: the measured point plus Latin-hypercube draws (default: %(default)s)")
    p.add_argument("--cross-validate", action="store_true",
                   help="also leave each run out, fit the rest and predict it (cross_validation.csv) (default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown, on stderr)")
    p.add_argument("--lam", action="store_true", help="also fit footnote-4 λ >= 0 (default: off, λ = 0)")
    p.add_argument("--selection", choices=SELECTIONS, default="replicator",
                   help="selection law of the RS log-odds (docs/model.md §9): the post's replicator p(1−p)(a−b), "
                        "power [p(1−p)]^γ (a−b) with γ fitted (parameter gamma; identified only when the runs span "
                        "priors; use with --step0 prior), or power+skills (the skill terms a(1−a), b(1−b) raised to "
                        "γ too) (default: %(default)s)")
    p.add_argument("--phases", default="eval,train",
                   help="comma-separated rollout phases used as observations, of eval and train "
                        "(default: %(default)s)")
    p.add_argument("--predict", nargs="+", default=[], metavar="RUN",
                   help="runs to predict with the fit, not fitted (default: none)")
    p.add_argument("--compare", action="store_true",
                   help="also fit transfer none / homogeneous / kernel (kernel when every env has coordinates), each "
                        "with λ off and on and with the power selection law, and rank them by QAIC (one "
                        "dispersion φ from the largest model for every variant; AIC with --dispersion none): "
                        "printed and in model_comparison.csv "
                        "(default: off)")
    p.add_argument("--profile", action="store_true", help="profile-likelihood intervals, slow (default: off)")
    p.add_argument("--emcee-steps", type=int, default=0,
                   help="emcee sampling steps after the fit, 0 = no sampling; needs `pip install emcee` "
                        "(default: %(default)s)")
    p.add_argument("--samples", type=int, default=200,
                   help="parameter draws behind each predictive band (default: %(default)s)")
    p.add_argument("--max-nfev", type=int, default=None,
                   help="cap on residual evaluations per start (default: 300); a capped fit is not converged")
    p.add_argument("--no-figures", action="store_true",
                   help="write no PNG figures (default: one per fitted and predicted run, and observed-vs-model "
                        "summaries)")
    return p


def _parse_params(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise _UsageError(f"--param expects NAME=VALUE, got {item!r}")
        if name not in DEFAULT_TRUTH:
            raise _UsageError(f"--param: unknown parameter {name!r}; known: {', '.join(DEFAULT_TRUTH)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise _UsageError(f"--param {name}: {value!r} is not a number") from None
    return out


def _parse_bounds(items: list[str]) -> dict[str, float] | None:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in ("a_lo", "a_hi", "b_lo", "b_hi"):
            raise _UsageError(f"--observation expects a_lo|a_hi|b_lo|b_hi=VALUE, got {item!r}")
        try:
            out[name] = float(value)
        except ValueError:
            raise _UsageError(f"--observation {name}: {value!r} is not a number") from None
    return out or None


def _synthesize(argv: list[str]) -> int:
    from ._synthesize import synthesize

    args = _synth_parser().parse_args(argv)
    out = synthesize(args.out, n_envs=args.n_envs, n_heldout=args.n_heldout, seed=args.seed,
                     transfer=args.transfer, params=_parse_params(args.param), steps=args.steps,
                     eval_every=args.eval_every, rollouts_per_env=args.rollouts_per_env,
                     train_rollouts_per_env=args.train_rollouts_per_env,
                     binary_rewards=not args.continuous_rewards, spacing=args.spacing, run_id=args.run_id,
                     observation=_parse_bounds(args.observation), dispersion=args.dispersion,
                     overwrite=args.overwrite, gamma_skills=args.gamma_skills)
    print(f"wrote {out} (manifest.json, rollouts/part-00000.parquet, truth.json)")
    return 0


def _ranking(table) -> str:
    """The model comparison as printed: a label saying what the criterion is, then one line per variant,
    lowest first.

    ``table`` is :func:`physrl.fitting.compare`'s frame (columns variant, k, K, qaic, qbic, delta_qaic,
    delta_qbic, converged, unidentified, nested_refit, error, criterion, dispersion). A variant that could
    not be fitted shows its error instead of numbers.
    """
    import math

    def num(v):
        return "-" if v is None or not math.isfinite(v) else f"{v:.1f}"

    crit = str(table["criterion"].iloc[0]) if len(table) else "QAIC"
    bic = "QBIC" if crit == "QAIC" else "BIC"
    how = ("Σ_c D_c/φ_c + 2K, one dispersion φ per component from the largest model for every variant "
           "(Burnham & Anderson 2002); K = k + the φ estimated" if crit == "QAIC" else
           "deviance + 2k, no dispersion (φ = 1)")
    lines = [f"model comparison by {crit} = {how}; φ used: {table['dispersion'].iloc[0] if len(table) else '-'}; "
             f"lowest first, Δ against the best (only differences mean anything):",
             f"{'model':<17} {'k':>3} {crit:>10} {bic:>10} {'Δ' + crit:>8} {'Δ' + bic:>8}  converged"]
    for row in table.itertuples():
        notes = [f"error: {row.error}"] if row.error else []
        if not row.error and row.unidentified:
            notes.append(f"not identified: {row.unidentified}")
        if not row.error and row.nested_refit:
            notes.append(f"refitted from the {row.nested_refit} optimum (its first maximum was below it)")
        k = "-" if row.k is None or row.k != row.k else str(int(row.k))
        fitted = not row.error
        lines.append(f"{row.variant:<17} {k:>3} {num(row.qaic):>10} {num(row.qbic):>10} "
                     f"{num(row.delta_qaic) if fitted else '-':>8} {num(row.delta_qbic) if fitted else '-':>8}  "
                     f"{'yes' if row.converged else 'NO':<9} {'; '.join(notes)}".rstrip())
    return "\n".join(lines)


def _folder(run) -> str:
    """What a user calls a run: its folder's (or table file's) name, as the cross-validation table does; the
    organism's run_id stays in the JSON outputs."""
    source = Path(run.source)
    return source.name if source.is_dir() else f"{source.name} ({run.run_id})"  # a table may hold several runs


def _plot_runs(preds, runs, out: Path, prefix: str, title, summary_name: str, summary_title: str) -> list[str]:
    """One figure per run (``<prefix>_NN.png``) and the observed-vs-model summary; returns the file names."""
    from ._figures import plot_predicted_vs_observed, plot_run

    names = []
    for k, (pred, run) in enumerate(zip(preds, runs)):
        name = f"{prefix}_{k:02d}.png"
        plot_run(pred, {e.env_id: e.w for e in run.environments}, out / name, title(pred, run))
        names.append(name)
    plot_predicted_vs_observed(preds, out / summary_name, summary_title, labels=[_folder(r) for r in runs])
    # a reused --out folder: per-run figures of an earlier, larger fit (this scheme's names only) would
    # sit beside these as if they belonged to this fit
    for old in out.glob(f"{prefix}_[0-9][0-9].png"):
        if old.name not in names:
            old.unlink()
    return names + [summary_name]


def _write_predictions(result, targets, out: Path, args, fit_path: Path) -> list[str]:
    """Predict each target with ``result``: prediction.json, figures and one printed line per run."""
    from ._json import write_json
    from ._predict import predict

    written = []
    progress = not args.no_progress
    figures = not args.no_figures
    preds = [predict(result, run, n_samples=args.samples) for run in _progress(targets, progress, "predict")]
    doc = {"fit": str(fit_path), "converged": result.converged,
           "predictions": [{**p.to_dict(), "source": _folder(r)} for p, r in zip(preds, targets)]}
    write_json(out / "prediction.json", doc)
    written.append("prediction.json")
    if figures:
        written += _plot_runs(preds, targets, out, "predict",
                              lambda p, r: f"prediction, run {_folder(r)} (p0 = {p.p0:.3g}, {p.p0_source})",
                              "predicted_vs_observed.png", "held-out runs: observed vs predicted")
    for p, target in zip(preds, targets):
        m = p.metrics
        end = m.end_state
        rmse = "not scored" if m.rmse_p is None else f"{m.rmse_p:.3f}"
        observed = "not observed" if end.observed_mean_p is None else f"{end.observed_mean_p:.3f}"
        agree = "" if end.agree is None else f" (agree: {end.agree})"
        n_star = f"; {m.n_star['text']}" if m.n_star else ""
        cov = m.coverage.get("all")
        held = "no scored eval points" if cov is None else f"{cov:.0%} of eval points"
        print(f"\nprediction {_folder(target)}: {p.level:.0%} predictive band holds {held}; "
              f"RS share RMSE {rmse}; end state observed p={observed}, predicted p={end.predicted_mean_p:.3f}"
              f"{agree}{n_star}")
    return written


def _fit(argv: list[str]) -> int:
    from physrl.contract import load_runs

    from ._crossval import cross_validate
    from ._compare import compare
    from ._fit import fit
    from ._json import write_json, write_text
    from ._predict import in_sample
    from ._problem import FitSpec, check_step_range

    args = _fit_parser().parse_args(argv)
    if args.from_dir is not None:
        return _predict_from(args)
    if not args.runs:
        raise _UsageError("give the RUNs to fit (or --from FIT_DIR --predict RUN ... to reuse a saved fit)")
    if args.out is None:
        raise _UsageError("--out is required when fitting")
    if args.samples < 1:
        raise _UsageError(f"--samples must be >= 1, got {args.samples}")
    if args.max_nfev is not None and args.max_nfev < 1:
        raise _UsageError(f"--max-nfev must be >= 1, got {args.max_nfev}")
    if args.starts < 1:
        raise _UsageError(f"--starts must be >= 1, got {args.starts}")
    if args.emcee_steps < 0:
        raise _UsageError(f"--emcee-steps must be >= 0, got {args.emcee_steps}")
    phases = tuple(s.strip() for s in args.phases.split(",") if s.strip())
    FitSpec(transfer=args.transfer, priors=args.priors, learnabilities=args.learnabilities,
            phases=phases, observation=args.observation, step0=args.step0,
            selection=args.selection)  # validate before reading anything
    runs = load_runs(args.runs)
    if args.cross_validate and len(runs) < 2:
        raise _UsageError("--cross-validate needs at least two runs")
    targets = load_runs(args.predict) if args.predict else []
    fitted = {Path(r.source).resolve() for r in runs}
    both = [r.run_id for r in targets if Path(r.source).resolve() in fitted]  # the same log, not a namesake
    if both:  # the fit has seen these logs: their "prediction" would be in-sample, not a test
        raise _UsageError(f"run{'s' if len(both) > 1 else ''} {', '.join(both)} both fitted and given to --predict: "
                          "a prediction of logs that tuned the fit is not a prediction (leave them out of the "
                          "fitted runs, or use --cross-validate)")
    check_step_range(runs + targets)  # before the fit: a target's bad step would only show after it
    progress = not args.no_progress
    options = dict(transfer=args.transfer, priors=args.priors, learnabilities=args.learnabilities,
                   lam=args.lam, phases=phases, observation=args.observation, step0=args.step0,
                   dispersion=args.dispersion, n_starts=args.starts, max_nfev=args.max_nfev, selection=args.selection)
    result = fit(runs, profile=args.profile, emcee_steps=args.emcee_steps, progress=progress, **options)
    # defaults the reader substituted, printed once the data proved fit-able (a bad input is one error
    # line, nothing else); also recorded in fit.json's notes
    for run in runs + targets:
        for warning in run.warnings:
            print(f"physrl fit: warning: run {_folder(run)}: {warning}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "fit.json")
    report = result.report()
    if args.compare:
        table = compare(runs, progress=progress,
                        **{k: v for k, v in options.items() if k not in ("transfer", "lam", "selection")})
        report += "\n\n[[Model comparison]]\n" + _ranking(table) + "\n\n" + table.to_string(index=False)
        write_text(out / "model_comparison.csv", table.to_csv(index=False))
    write_text(out / "fit_report.txt", report + "\n")
    written = ["fit.json", "fit_report.txt"] + (["model_comparison.csv"] if args.compare else [])
    print(result.summary_table())
    if args.compare:
        print("\n" + _ranking(table))
    figures = not args.no_figures
    if figures:
        fitted = [in_sample(result, i, n_samples=args.samples) for i in _progress(range(len(runs)), progress,
                                                                                    "in-sample curves")]
        written += _plot_runs(fitted, runs, out, "fit", lambda p, r: f"fit, run {_folder(r)} (p0 = {p.p0:.3g})",
                              "fit_vs_observed.png", "fitted runs: observed vs model")
    if targets:
        written += _write_predictions(result, targets, out, args, out / "fit.json")
    if args.cross_validate:
        cv = cross_validate(runs, progress=progress, n_samples=args.samples, **options)
        write_text(out / "cross_validation.csv", cv.table.to_csv(index=False))
        write_json(out / "cross_validation.json", cv.to_dict())
        written += ["cross_validation.csv", "cross_validation.json"]
        cols = ["source", "converged", "end_observed", "end_predicted", "end_right", "rmse_p", "coverage_p",
                "coverage_all"]
        print(f"\nleave-one-run-out cross-validation ({cv.level:.0%} bands):")
        print(cv.table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out}: {', '.join(written)}")
    return 0


#: options that only mean something for a fit, refused with --from (name, value when not given)
_FIT_ONLY = (("--compare", "compare", False), ("--cross-validate", "cross_validate", False),
             ("--profile", "profile", False), ("--emcee-steps", "emcee_steps", 0), ("--lam", "lam", False),
             ("--max-nfev", "max_nfev", None), ("--selection", "selection", "replicator"))


def _predict_from(args) -> int:
    """``physrl fit --from FIT_DIR --predict RUN ...``: predict with a saved fit (issue 18 item 9)."""
    from physrl.contract import load_runs

    from ._fit import FitResult
    from ._json import write_json
    from ._problem import check_step_range

    if args.runs:
        raise _UsageError("--from takes no RUN to fit (the fit is read from FIT_DIR); give the runs to --predict")
    if not args.predict:
        raise _UsageError("--from needs --predict RUN ...")
    given = [flag for flag, name, unset in _FIT_ONLY if getattr(args, name) != unset]
    if given:
        raise _UsageError(f"{', '.join(given)} belong to a fit; with --from the fit is read from FIT_DIR")
    if args.samples < 1:
        raise _UsageError(f"--samples must be >= 1, got {args.samples}")
    source = Path(args.from_dir)
    if not (source / "fit.json").is_file():
        raise FileNotFoundError(f"no fit.json in {source}")
    result = FitResult.load(source)
    targets = load_runs(args.predict)
    fitted = {Path(r.source).resolve() for r in result.runs}
    both = [r.run_id for r in targets if Path(r.source).resolve() in fitted]
    if both:
        raise _UsageError(f"run{'s' if len(both) > 1 else ''} {', '.join(both)} tuned the fit in {source}: "
                          "a prediction of logs that tuned the fit is not a prediction")
    check_step_range(targets)
    out = Path(args.out) if args.out is not None else source
    out.mkdir(parents=True, exist_ok=True)
    print(f"fit read from {source / 'fit.json'} (not refitted): {'converged' if result.converged else 'NOT converged'}"
          f", {len(result.runs)} runs, transfer {result.spec.transfer}, step0 {result.spec.step0}")
    written = _write_predictions(result, targets, out, args, source / "fit.json")
    print(f"\nwrote {out}: {', '.join(written)}")
    return 0


def _progress(items, show: bool, desc: str):
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, leave=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``physrl fit``; returns the exit code (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in ([], ["-h"], ["--help"]):
        _fit_parser().print_help()
        return 0 if argv else 2
    synthesize = argv[0] == "synthesize"
    if any(a in ("-h", "--help") for a in (argv[1:] if synthesize else argv)):
        (_synth_parser() if synthesize else _fit_parser()).print_help()
        return 0
    from physrl.contract import LogValidationError  # (pandas, scipy: only once there is something to read)

    try:
        return _synthesize(argv[1:]) if synthesize else _fit(argv)
    except (_UsageError, LogValidationError, FileNotFoundError, FileExistsError, NotADirectoryError,
            ValueError) as exc:
        print(f"physrl fit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
