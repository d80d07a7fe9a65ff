"""The ``physrl`` command: one entry point, one subcommand per package.

Each package owns its own argument parsing in ``<package>/cli.py`` with a
``main(argv: list[str]) -> int`` function; this front only dispatches, so a
package's command line can be read (and tested) without the others.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module holding ``main(argv)``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("physrl.sim.cli", "simulate the toy ODE model; reproduce the post's figures"),
    "organisms": ("physrl.organisms.cli", "train tiny LM model organisms with GRPO, logging every rollout"),
    "fit": ("physrl.fitting.cli", "fit the ODE's parameters to rollout logs; predict other runs"),
    "forecast": ("physrl.fitting.forecast_cli", "forecast a run's end state (RS share, P(RS wins)) from its first steps"),
    "experiment": ("physrl.experiment.cli", "run a diversity experiment end to end from a config"),
    "demo": ("physrl.experiment.cli:demo_main", "run the small default experiment"),
}


def _usage() -> str:
    lines = ["usage: physrl <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`physrl <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``physrl <command> ...`` to the package that owns it.

    Returns the process exit code (0 on success, 2 on a usage error).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"physrl: unknown command {command!r}; commands: {', '.join(SUBCOMMANDS)} (see physrl --help)",
              file=sys.stderr)
        return 2
    target = SUBCOMMANDS[command][0]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        return int(getattr(module, attr or "main")(rest) or 0)
    except SystemExit as exc:  # argparse's --help (0) or a usage error it already printed on one line (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
