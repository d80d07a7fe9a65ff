import json
import subprocess
import sys

import pytest

from physrl.cli import SUBCOMMANDS, main


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_experiment_names_a_shipped_config_and_says_which_exist(tmp_path, capsys, monkeypatch):
    from physrl.experiment.cli import resolve_config, shipped_configs

    assert {"demo", "scaling"} <= set(shipped_configs())
    cfg = resolve_config("scaling")
    assert cfg.name == "scaling" and len(cfg.p0) >= 3 and len(cfg.seeds) >= 3
    assert not set(cfg.calibration_seed_list()) & set(cfg.seeds)  # calibration seeds never reused in the sweep
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scaling").mkdir()  # a folder of that name (e.g. an earlier --out) does not shadow it
    assert resolve_config("scaling").name == "scaling"
    assert main(["experiment", "no-such-config", "--out", str(tmp_path / "o")]) == 2
    assert "neither a config file nor a shipped config" in capsys.readouterr().err


#: every command and subcommand whose --help a user may ask for
HELPS = [["sim"], ["sim", "figure"], ["sim", "critical-diversity"], ["sim", "selection-law"], ["fit"], ["fit", "synthesize"],
         ["organisms"], ["organisms", "train"], ["organisms", "calibrate"], ["experiment"], ["demo"], ["forecast"]]
HEAVY = ("torch", "numba", "lmfit")
#: runs `physrl ARGS --help` in a fresh interpreter; prints the exit code, the help and which HEAVY got imported
HELP_PROBE = f"""
import contextlib, io, json, sys
from physrl.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:] + ["--help"])
print(json.dumps({{"code": code, "help": out.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_help_probe_covers_every_command():
    assert {argv[0] for argv in HELPS} == set(SUBCOMMANDS)


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_help_imports_no_torch_numba_or_lmfit(argv):
    """`physrl ... --help` parses and prints before any heavy import (the command functions import them):
    a new user's first `--help` took 8-15 s when torch, numba and lmfit came first."""
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["code"] == 0
    assert result["help"].startswith(f"usage: physrl {' '.join(argv)}"), result["help"][:200]
    assert result["heavy"] == [], f"`physrl {' '.join(argv)} --help` imported {result['heavy']}"


def _leaf_parsers():
    """Every parser that takes options, by its prog (subcommands' parsers included)."""
    import argparse

    from physrl.experiment import cli as experiment_cli
    from physrl.fitting import cli as fitting_cli
    from physrl.fitting import forecast_cli
    from physrl.organisms import cli as organisms_cli
    from physrl.sim import cli as sim_cli

    found = {}

    def walk(parser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            assert all(choice.help for choice in action._choices_actions), parser.prog  # listed with a line
            for child in action.choices.values():
                walk(child)
        if not subs:
            found[parser.prog] = parser

    for parser in (sim_cli._parser(), fitting_cli._fit_parser(), fitting_cli._synth_parser(), organisms_cli._parser(),
                   experiment_cli._parser(), experiment_cli._demo_parser(), forecast_cli._parser()):
        walk(parser)
    return found


def test_every_argument_says_what_it_is_and_its_default():
    parsers = _leaf_parsers()
    assert {" ".join(argv) for argv in HELPS} - {"sim", "organisms"} == {p.removeprefix("physrl ") for p in parsers}
    missing = []
    for prog, parser in parsers.items():
        for action in parser._actions:
            if action.dest == "help":
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                missing.append(f"{prog} {name}: no help")
            elif action.option_strings and not action.required and "default" not in action.help:
                missing.append(f"{prog} {name}: no default in {action.help!r}")
    assert not missing, "\n".join(missing)


def test_calibrate_takes_no_flag_the_sweep_would_override():
    """`physrl organisms calibrate` sets n_envs from --n-values and seed from --seeds for every run, and never
    shows a progress bar: --n-envs and --no-progress would do nothing (and --seed is argparse's short form of
    --seeds)."""
    options = {o for a in _leaf_parsers()["physrl organisms calibrate"]._actions for o in a.option_strings}
    assert not options & {"--n-envs", "--seed", "--no-progress"}
    assert {"--seeds", "--n-values", "--family-size"} <= options
