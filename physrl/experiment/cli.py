"""``physrl experiment CONFIG --out DIR`` and ``physrl demo --out DIR``: the experiment's command line."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from physrl._util.command_line import ArgumentParser, output_directory

if TYPE_CHECKING:  # the config and the runner (torch, pandas) are imported once the arguments are parsed
    from .config import ExperimentConfig

DEMO_CONFIG = "demo.toml"


def _attempt(call):
    """``(call(), 0)``, or ``(None, exit code)`` with one line on stderr: 2 for bad input (ValueError), 1 for a
    failed run (RuntimeError, e.g. organism runs that failed; a rerun resumes them)."""
    try:
        return call(), 0
    except ValueError as err:
        print(f"physrl: {err}", file=sys.stderr)
        return None, 2
    except RuntimeError as err:
        print(f"physrl: {err}", file=sys.stderr)
        return None, 1


def _run(config: ExperimentConfig, out: Path, progress: bool) -> int:
    from .run import run_experiment

    summary, code = _attempt(lambda: run_experiment(config, out, progress=progress))
    if summary is None:
        return code
    print(f"report:  {out / 'report.html'}")
    print(f"summary: {out / 'summary.json'}")
    for line in n_star_lines(summary):
        print(line)
    scaling = summary.get("scaling", {})
    if len(scaling.get("p0", [])) >= 2:
        print("slope of log N* on log p0: observed " + slope_words(scaling["observed_slope"])
              + "; predicted (frozen) " + slope_words(scaling["predicted_slope"]) + "; the post's -1")
    s = summary.get("scores")
    if s:
        print("frozen forecasts: " + score_words(s))
    for line in agreement_lines(summary):
        print(line)
    return 0


def agreement_lines(summary: dict) -> list[str]:
    """The CLI's two verdicts, each under its own name (the frozen forecast's first), and the unit of
    replication with its latent ICC."""
    from . import words

    agreement = summary.get("agreement") or {}
    lines = [words.agreement_text(agreement[k]) + f" ({agreement[k]['basis']})"
             for k in ("frozen_forecast", "per_run_prediction") if agreement.get(k)]
    rep = summary.get("replication")
    if rep:
        lines.append(f"unit of replication: {rep['unit']} ({rep['clusters']}); "
                     + words.icc_text(rep.get("random_intercept")))
    return lines


def score_words(s: dict) -> str:
    """The CLI's line on the frozen forecasts: each Brier score and the log loss with its bootstrap 95%
    interval, and the Brier difference to each baseline (``summary.json``'s ``scores``)."""
    from .words import score_difference as minus
    from .words import score_with_interval as one

    from .words import BASELINE_NAMES

    boot = s.get("bootstrap") or {}
    over = (f" ({boot['note']})" if boot.get("note") else f", 95% over {boot['units']} {boot['unit']}s"
            if boot else "")
    names = [b for b in BASELINE_NAMES if s.get(f"brier_{b}") is not None]
    return (f"{s['n_events']} runs{over}: Brier {one(s, 'brier')} ("
            + ", ".join(f"{BASELINE_NAMES[b]} {one(s, f'brier_{b}')}" for b in names) + "); frozen minus "
            + ", ".join(f"{BASELINE_NAMES[b].split(' (')[0]} {minus(s, 'brier', b)}" for b in names)
            + f"; log loss {one(s, 'log_loss')} ("
            + ", ".join(f"{BASELINE_NAMES[b]} {one(s, f'log_loss_{b}')}" for b in names) + ")")


def slope_words(slope: dict) -> str:
    """One slope of log N* on log p0 in words: ``-0.381, 95% [-1.01, 0.477]``, or why it is not defined.

    Parameters
    ----------
    slope : dict
        ``summary.json``'s ``scaling.observed_slope`` or ``scaling.predicted_slope``
        ({value, interval_95, share_undefined, p0_used}).

    Returns
    -------
    str
        The value with its 95% interval (an end the bootstrap or the draws
        could not bound reads "unbounded"), or "not defined" with the reason.
    """
    if slope.get("value") is None:
        used = slope.get("p0_used") or []
        return (f"not defined (N* finite at {len(used)} p0 only, a slope needs two; "
                f"{100 * (slope.get('share_undefined') or 0):.0f}% of replicates had none)")
    lo, hi = slope.get("interval_95") or (None, None)
    ends = ["unbounded" if v is None else f"{v:.3g}" for v in (lo, hi)]
    return f"{slope['value']:.3g}, 95% [{ends[0]}, {ends[1]}]"


def n_star_lines(summary: dict) -> list[str]:
    """The CLI's N* lines, one block per p0, each number named by its estimator (physrl.experiment.words).

    Parameters
    ----------
    summary : dict
        ``summary.json`` as written by :func:`physrl.experiment.run_experiment`.

    Returns
    -------
    list of str
        ``N* at p0 = 0.1:`` followed by the observed logistic estimate (the
        bracket when one seed or perfect separation leaves no point
        estimate), the smallest winning N per seed, the frozen continuous
        prediction and the fit's integer-grid protocol N*.
    """
    from . import words

    lines = []
    for key, est in summary["observed_n_star"].items():
        lines.append(f"N* at p0 = {key}:")
        headline = est.get("headline") or words.observed_headline(est)
        basis = est.get("headline_basis") or words.observed_basis(est)
        lines.append(f"  observed, from win/loss against N: {headline}" + (f" ({basis})" if basis else ""))
        if est.get("smallest_winning_n_per_seed"):
            swept = summary.get("scaling", {}).get("design", {}).get("grid", {}).get(key)
            n_max = max(swept) if swept else None
            lines.append("  observed, smallest swept N that ended RS: "
                         + words.smallest_winning(est["smallest_winning_n_per_seed"], n_max))
        frozen = summary["predicted_n_star"].get(key)
        if frozen:
            lines.append("  predicted, frozen before the sweep (continuous N, 95% over parameter draws): "
                         + words.predicted_headline(frozen["n_star"], frozen["interval_95"], n_max=frozen["n_max"],
                                                    level=95))
            grid = frozen.get("protocol_grid")
            if grid:
                lines.append("  predicted, the fit's protocol on the integer grid (90% over parameter draws): "
                             + words.predicted_headline(grid["n_star"], grid["interval_90"], n_max=grid["n_max"],
                                                        level=90))
    return lines


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``physrl/configs`` (``demo``, ``scaling``, ...)."""
    folder = resources.files("physrl").joinpath("configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def resolve_config(name_or_path: str) -> ExperimentConfig:
    """A config file path, or the name of a shipped config (``scaling`` → physrl/configs/scaling.toml).

    Raises
    ------
    FileNotFoundError
        Neither a file nor a shipped config's name.
    ValueError
        A bad config (named field).
    """
    from .config import ExperimentConfig

    if Path(name_or_path).is_file():  # (a folder named like a shipped config is not a config)
        return ExperimentConfig.from_file(name_or_path)
    if name_or_path in shipped_configs():
        from physrl._util import toml as _toml

        text = resources.files("physrl").joinpath("configs", f"{name_or_path}.toml").read_text()
        return ExperimentConfig.from_dict(_toml.loads(text))
    raise FileNotFoundError(f"{name_or_path!r} is neither a config file nor a shipped config "
                            f"({', '.join(shipped_configs())})")


def _raw_config(name_or_path: str) -> dict:
    """The mapping of a config file or a shipped config, before it is typed (its ``kind`` picks the experiment)."""
    from physrl._util import toml as _toml

    if Path(name_or_path).is_file():
        path = Path(name_or_path)
        text = path.read_text()
        try:
            return _toml.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (_toml.TOMLDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot parse config: {err}") from err
    if name_or_path in shipped_configs():
        return _toml.loads(resources.files("physrl").joinpath("configs", f"{name_or_path}.toml").read_text())
    raise FileNotFoundError(f"{name_or_path!r} is neither a config file nor a shipped config "
                            f"({', '.join(shipped_configs())})")


def _kind_class(kind):
    """The config class of an experiment ``kind`` other than the diversity experiment's, or None."""
    if kind == "takeoff":
        from .takeoff import TakeoffConfig

        return TakeoffConfig
    if kind == "decisive":
        from .decisive import DecisiveConfig

        return DecisiveConfig
    return None


def _load(path: str, overrides: list[str]):
    """The typed config with ``--set`` overrides applied: a :class:`TakeoffConfig` when the file says
    ``kind = "takeoff"``, a :class:`DecisiveConfig` for ``kind = "decisive"``, else an
    :class:`ExperimentConfig`."""
    from .config import ExperimentConfig

    raw = _raw_config(path)
    cls = _kind_class(raw.get("kind"))
    if cls is not None:
        data = cls.from_dict(raw).to_dict()
    else:
        data = resolve_config(path).to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        target = data
        *parents, leaf = key.split(".")
        for depth, p in enumerate(parents):
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                where = ".".join(parents[:depth + 1])
                raise ValueError(f"--set {item}: {where!r} is a {type(target).__name__}, not a table; "
                                 f"set it whole (--set '{where}=...')")
        try:
            target[leaf] = json.loads(value)
        except json.JSONDecodeError:
            target[leaf] = value
    cls = _kind_class(data.get("kind"))
    return cls.from_dict(data) if cls is not None else ExperimentConfig.from_dict(data)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="physrl experiment", description=(
        "Train organisms at several diversities N and priors p0, fit the ODE on the calibration runs, "
        "predict the rest and compare predicted with observed critical diversity; or, for a config with "
        "kind = \"takeoff\" (shipped: takeoff), measure the takeoff rate of RS log-odds per prior and the "
        "selection exponent gamma per RL-algorithm arm. Rerunning the same command skips finished runs and "
        "resumes unfinished ones."))
    parser.add_argument("config", help="experiment config (TOML or JSON), or the name of a shipped config: "
                                       + ", ".join(shipped_configs()) + " (physrl/configs/NAME.toml)")
    parser.add_argument("--out", type=output_directory, default=None,
                        help="output folder (default: runs/NAME for a shipped config; required for a file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (VALUE read as JSON, else as a string), repeatable, e.g. "
                             "--set organism.max_steps=400 --set executor.engine=submitit (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown, on stderr)")
    parser.add_argument("--analyse-finished", action="store_true",
                        help="takeoff and decisive configs: train nothing, analyse the runs finished so far; the "
                             "summary says complete: false when some are missing (default: train, then analyse all)")
    parser.add_argument("--arm", action="append", default=None, metavar="NAME",
                        help="decisive configs: train only this arm's sweep (repeatable); calibration and the "
                             "frozen predictions always cover every arm (default: every arm, in config order)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``physrl experiment CONFIG --out DIR [--set KEY=VALUE ...]``; exit 2 on a bad config."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.out is None:
        if Path(args.config).is_file() or args.config not in shipped_configs():
            parser.error("--out is required for a config file")
        try:
            args.out = output_directory(str(Path("runs") / args.config))
        except argparse.ArgumentTypeError as err:
            parser.error(f"argument --out (default): {err}")
    from .runs import organism_configs

    try:
        config = _load(args.config, args.set)
        if getattr(config, "kind", None) == "takeoff":
            from .takeoff import organism_configs as takeoff_organisms

            takeoff_organisms(config)
        elif getattr(config, "kind", None) == "decisive":
            from .decisive_run import planned_organisms

            planned_organisms(config)
        else:
            organism_configs(config)  # every organism value checked before anything runs
    except (OSError, ValueError, TypeError) as err:
        print(f"physrl experiment: bad config: {err}", file=sys.stderr)
        return 2
    if args.arm and getattr(config, "kind", None) != "decisive":
        parser.error("--arm applies to a decisive config only")
    if args.arm:
        unknown = sorted(set(args.arm) - {a.name for a in config.arms})
        if unknown:
            parser.error(f"--arm {unknown[0]!r} is not an arm of this config ({', '.join(a.name for a in config.arms)})")
    if getattr(config, "kind", None) == "takeoff":
        return _run_takeoff(config, args.out, not args.no_progress, args.analyse_finished)
    if getattr(config, "kind", None) == "decisive":
        return _run_decisive(config, args.out, not args.no_progress, args.analyse_finished, args.arm)
    if args.analyse_finished:
        parser.error("--analyse-finished applies to takeoff and decisive configs only")
    return _run(config, args.out, not args.no_progress)


def _run_decisive(config, out: Path, progress: bool, analyse_finished: bool, arms) -> int:
    """Train (unless ``analyse_finished``) and analyse a decisive experiment; prints the verdict lines."""
    from .decisive_analysis import analyse_decisive
    from .decisive_run import train_decisive

    def work():
        if not analyse_finished:
            train_decisive(config, out, progress=progress, arms=arms)
        return analyse_decisive(config, out, progress=progress)

    summary, code = _attempt(work)
    if summary is None:
        return code
    print(f"summary: {out / 'summary.json'}")
    print(f"report:  {out / 'report.html'}")
    if not summary.get("complete"):
        print("PARTIAL: arms analysed " + ", ".join(summary.get("arms_analysed", [])) + " of "
              + ", ".join(summary.get("arms_planned", [])) + "; "
              + ", ".join(f"{a['name']} {a['stage1_models_finished']} stage-1 models finished"
                          for a in summary.get("arms", [])))
    for line in summary.get("verdicts", []):
        print(line)
    return 0


def _run_takeoff(config, out: Path, progress: bool, analyse_finished: bool) -> int:
    """Train and analyse a takeoff experiment (or, with ``analyse_finished``, analyse the finished runs only)."""
    from .takeoff import analyse_takeoff, run_takeoff

    summary, code = _attempt(lambda: analyse_takeoff(config, out, allow_partial=True) if analyse_finished
                             else run_takeoff(config, out, progress=progress))
    if summary is None:
        return code
    print(f"summary: {out / 'summary.json'}")
    print(f"figure:  {out / 'takeoff.png'}")
    if not summary["complete"]:
        print(f"PARTIAL: {summary['n_runs_finished']} of {summary['n_runs_planned']} runs finished")
    for arm in summary["arms"]:
        g = arm["gamma"]
        lo, hi = g["interval_95"]
        value = "not measured" if g["value"] is None else f"{g['value']:.2f}"
        ci = "" if lo is None or hi is None else f", 95% [{lo:.2f}, {hi:.2f}]"
        print(f"{arm['name']}: gamma {value}{ci} ({arm['n_runs']} runs, {arm['n_p0']} priors, "
              f"{arm['n_stage1_models']} stage-1 models)")
    return 0


def demo_config() -> ExperimentConfig:
    """The shipped default experiment (``physrl/configs/demo.toml``)."""
    from physrl._util import toml as _toml
    from .config import ExperimentConfig

    text = resources.files("physrl").joinpath("configs", DEMO_CONFIG).read_text()

    return ExperimentConfig.from_dict(_toml.loads(text))


def _demo_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="physrl demo", description=(
        "Run the small default diversity experiment (physrl/configs/demo.toml) and write DIR/report.html "
        "and DIR/summary.json."))
    # the default is a string so that argparse checks it as it checks a given --out
    parser.add_argument("--out", type=output_directory, default="runs/demo",
                        help="output folder; a rerun skips finished runs (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown, on stderr)")
    return parser


def demo_main(argv: list[str] | None = None) -> int:
    """``physrl demo --out DIR``: the small default experiment (under 10 minutes on 2 CPU cores)."""
    args = _demo_parser().parse_args(argv)
    return _run(demo_config(), args.out, not args.no_progress)
