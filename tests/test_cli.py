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
    from physrl.experiment_cli import resolve_config, shipped_configs

    assert {"demo", "scaling"} <= set(shipped_configs())
    cfg = resolve_config("scaling")
    assert cfg.name == "scaling" and len(cfg.p0) >= 3 and len(cfg.seeds) >= 3
    assert not set(cfg.calibration_seed_list()) & set(cfg.seeds)  # calibration seeds never reused in the sweep
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scaling").mkdir()  # a folder of that name (e.g. an earlier --out) does not shadow it
    assert resolve_config("scaling").name == "scaling"
    assert main(["experiment", "no-such-config", "--out", str(tmp_path / "o")]) == 2
    assert "neither a config file nor a shipped config" in capsys.readouterr().err
