"""``physrl organisms ...``: train an organism run, or run the calibration sweep.

    physrl organisms train --out RUN_DIR [--config FILE] [--n-envs N] [--family-size K] [--p0 P] [--max-steps S]
                           [--seed K] [--stage1-cache auto|off|DIR] [--model DIR] [--env-family MOD:CLASS]
                           [--report-to none|tensorboard|wandb] [--optimizer adamw|sgd] [--learning-rate LR]
                           [--momentum M] [--scale-rewards group|batch|none] [--loss-type dapo|grpo|...]
    physrl organisms train --resume RUN_DIR [--max-steps S]
    physrl organisms calibrate --out DIR [--config FILE] [--grid JSON] [--seeds 0 1] [--n-values 1 8]
                               [--family-size K] [--p0 P] [--max-steps S] [--stage1-cache ...] [--model DIR] ...

Flags override the config file (JSON or TOML). A bad config value stops the
command before any training, naming the field and its allowed range (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from physrl._util.command_line import ArgumentParser, output_directory

from ._config import OrganismConfig, load_config

#: the robustness check of the shipped defaults (README, "Calibration"; run it with --seeds 0 1 2):
#: N = 1 vs N = 8 with and without held-out envs (the held-out envs' demos change the init)
DEFAULT_GRID = {"n_heldout": [0, 2]}


def _grid(text: str) -> dict[str, list]:
    """``--grid``: a JSON object mapping config fields to non-empty lists of values."""
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise argparse.ArgumentTypeError(f"expected a JSON object field -> non-empty list of values, got {text!r}")
    return grid


def _calibration_configs(base: OrganismConfig, grid: dict[str, list], n_values, seeds) -> None:
    """Build every config the sweep will train, so a bad grid value stops it before any training.

    Raises
    ------
    ValueError
        An unknown grid field or a value out of range (naming it).
    """
    import itertools

    fields = set(base.to_dict())
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise ValueError(f"--grid: unknown config field(s) {unknown}")
    for values in itertools.product(*grid.values()):
        for seed in seeds:
            for n in n_values:
                try:
                    base.replace(**dict(zip(grid, values)), seed=seed, n_envs=n)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"--grid {dict(zip(grid, values))}, seed {seed}, N {n}: {exc}") from None


def _default(name: str) -> str:
    """'default: X, or the --config file's' for a flag that overrides OrganismConfig's field ``name``."""
    value = OrganismConfig.__dataclass_fields__[name].default
    return f"default: {value}, or the --config file's"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="physrl organisms", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="stage-1 pretraining then GRPO, every rollout logged to RUN_DIR")
    tr.add_argument("--out", type=output_directory, metavar="RUN_DIR",
                    help="run directory of a new run (no default: give --out or --resume)")
    tr.add_argument("--resume", type=Path, metavar="RUN_DIR",
                    help="continue RUN_DIR from its newest complete checkpoint, with its saved config "
                         "(default: start a new run at --out)")
    cal = sub.add_parser("calibrate", help="measured sweep over knobs: final RS share at N=1 vs N=8")
    cal.add_argument("--out", type=output_directory, required=True,
                     help="directory for the sweep's runs and calibration.csv (required)")
    cal.add_argument("--grid", type=_grid, default=None,
                     help=f"JSON dict config field -> list of values; the sweep trains every combination "
                          f"(default: {json.dumps(DEFAULT_GRID)})")
    cal.add_argument("--seeds", type=int, nargs="+", default=[0],
                     help="run seeds; every knob setting is trained once per seed and N (default: 0)")
    cal.add_argument("--n-values", type=int, nargs=2, default=[1, 8], metavar=("N_SMALL", "N_LARGE"),
                     help="the two diversities compared: the knobs flip if RS loses at N_SMALL and wins at N_LARGE "
                          "(default: 1 8)")
    tr.add_argument("--config", type=Path, help="JSON or TOML config file, fields of OrganismConfig; flags override "
                                                "it (default: OrganismConfig's defaults)")
    cal.add_argument("--config", type=Path,
                     help="JSON or TOML config file, fields of OrganismConfig, the base of every run of the sweep; "
                          "flags override it, and --n-values and --seeds replace its n_envs and seed "
                          "(default: OrganismConfig's defaults)")
    tr.add_argument("--n-envs", type=int, dest="n_envs",
                    help=f"N: trained environments, each w = 1/N of every batch ({_default('n_envs')})")
    tr.add_argument("--family-size", type=int, dest="family_size",
                    help="K: fix the family at K envs, the first N trained, the rest held out; runs of one K share "
                         f"one stage-1 model ({_default('family_size')}; 0 means K = N + n_heldout)")
    cal.add_argument("--family-size", type=int, dest="family_size",
                     help="K for every run of the sweep: the family is fixed at K envs, so the two N of a seed "
                          "share one stage-1 model; K >= N_LARGE "
                          f"({_default('family_size')}; 0 gives each N its own family of N + n_heldout envs)")
    for p in (tr, cal):
        p.add_argument("--stage1-cache", dest="stage1_cache", metavar="auto|off|DIR",
                       help="stage-1 model cache; auto is .stage1_cache next to the run directory "
                            f"({_default('stage1_cache')})")
        p.add_argument("--model", dest="model_dir", metavar="DIR",
                       help="start GRPO from this local causal LM (save_pretrained directory with its tokenizer) "
                            "instead of the built-in tiny Llama; stage 1 is skipped (default: the built-in model)")
        p.add_argument("--env-family", dest="env_family", metavar="digit-map|MODULE:CLASS",
                       help=f"environment family, docs/environments.md ({_default('env_family')})")
        p.add_argument("--report-to", dest="report_to", metavar="none|tensorboard|wandb",
                       help="experiment tracker(s), passed to TRL's report_to, comma-separated for both "
                            f"({_default('report_to')})")
        p.add_argument("--p0", type=float,
                       help="prior RS propensity: target share of step-0 rollouts that open with `think grader`, "
                            f"in (0, 1) ({_default('p0')})")
        p.add_argument("--optimizer", metavar="adamw|sgd",
                       help="GRPO optimizer: the Trainer's AdamW or torch.optim.SGD; SGD needs a far larger "
                            f"--learning-rate (docs/organisms.md) ({_default('optimizer')})")
        p.add_argument("--learning-rate", type=float, dest="learning_rate",
                       help=f"GRPO learning rate ({_default('learning_rate')}; measured for sgd: 0.1)")
        p.add_argument("--momentum", type=float,
                       help=f"SGD momentum in [0, 1), sgd only ({_default('momentum')})")
        p.add_argument("--scale-rewards", dest="scale_rewards", metavar="group|batch|none",
                       help=f"TRL's advantage scaling by reward std ({_default('scale_rewards')})")
        p.add_argument("--loss-type", dest="loss_type", metavar="dapo|grpo|dr_grpo|...",
                       help=f"TRL's GRPO loss, passed through ({_default('loss_type')})")
        p.add_argument("--max-steps", type=int, dest="max_steps",
                       help=f"GRPO optimizer steps per run ({_default('max_steps')}"
                            + ("; with --resume: the saved run's, which this may extend)" if p is tr else ")"))
    tr.add_argument("--seed", type=int,
                    help=f"run seed: model init, pretraining data, rollout sampling ({_default('seed')})")
    tr.add_argument("--no-progress", action="store_false", dest="progress", default=None,
                    help="no progress bar (default: a tqdm bar on stderr, unless the --config file says "
                         "progress = false)")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``physrl organisms``; returns the exit code (0 ok, 2 usage or config error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k, None) for k in ("n_envs", "family_size", "p0", "max_steps", "seed", "progress",
                                                     "stage1_cache", "model_dir", "env_family", "report_to",
                                                     "optimizer", "learning_rate", "momentum", "scale_rewards",
                                                     "loss_type")}
    if args.command == "calibrate":  # the sweep sets n_envs and seed per run; its base config holds the first
        overrides.update(n_envs=min(args.n_values), seed=args.seeds[0])
    if args.command == "train":
        if args.resume is not None and args.out is not None:
            parser.error("give --out RUN_DIR (a new run) or --resume RUN_DIR (continue one), not both")
        if args.resume is not None and args.config is not None:
            parser.error("--config cannot be combined with --resume: a resumed run keeps its saved config "
                         "(--max-steps may extend it)")
        if args.resume is None and args.out is None:
            parser.error("train needs --out RUN_DIR or --resume RUN_DIR")
    if args.command == "train" and args.resume is not None and not (args.resume / "manifest.json").is_file():
        # said before the trainer (torch, TRL: seconds) is imported
        what = ("a file, not a run directory" if args.resume.is_file() else
                f"no such run (no {args.resume / 'manifest.json'})")
        print(f"physrl organisms: --resume {args.resume}: {what}; start a new run with --out", file=sys.stderr)
        return 2
    try:
        if args.command == "train" and args.resume is not None:
            from ._train import saved_config

            saved = saved_config(args.resume)
            config = load_config(None, **{**saved, **{k: v for k, v in overrides.items() if v is not None}})
        else:
            config = load_config(args.config, **overrides)
        if args.command == "train":
            from ._train import check_setup

            check_setup(config, resume=args.resume is not None)  # family, classifiers, trackers, model: now
    except (ValueError, FileNotFoundError) as exc:
        print(f"physrl organisms: {exc}", file=sys.stderr)
        return 2
    if args.command == "train":
        from ._lock import RunInUse
        from ._train import ResumeMismatch
        from ._trainers import train

        run_dir = args.resume or args.out
        try:
            train(config, run_dir, resume=args.resume is not None)
        except (FileExistsError, ResumeMismatch, RunInUse) as exc:
            print(f"physrl organisms: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C: the manifest says 'failed' and the checkpoints stay; one line, not 68
            if (Path(run_dir) / "manifest.json").is_file():
                print(f"\nphysrl organisms: interrupted; resume with `physrl organisms train --resume {run_dir}`",
                      file=sys.stderr)
            else:
                print("\nphysrl organisms: interrupted before the run started; nothing was written", file=sys.stderr)
            return 130
        print(f"run written to {run_dir}")
        return 0
    from ._calibrate import calibrate

    try:
        _calibration_configs(config, args.grid or DEFAULT_GRID, args.n_values, args.seeds)
    except ValueError as exc:
        print(f"physrl organisms: {exc}", file=sys.stderr)
        return 2
    table = calibrate(config, args.grid or DEFAULT_GRID, args.out, n_values=tuple(args.n_values), seeds=args.seeds)
    print(table.to_string(index=False))
    print(f"calibration table: {args.out / 'calibration.csv'}")
    return 0
