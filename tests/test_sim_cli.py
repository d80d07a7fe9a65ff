"""``physrl sim`` command line: files written, bad values stop with exit code 2."""

import pandas as pd
import pytest

from physrl.sim.cli import main


def test_figure_quick_writes_png_and_csv(tmp_path):
    code = main(["figure", "3", "--out", str(tmp_path), "--quick", "--t-max", "1500",
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    png = tmp_path / "figure-3.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    df = pd.read_csv(tmp_path / "figure-3.csv")
    assert list(df.columns) == ["p0", "n_envs", "final_p", "settled"]
    assert df.final_p.between(0, 1).all() and df.n_envs.max() == 10_000 and df.settled.all()
    # at the largest N every p0 has been taken over by RS; at N = 1 none has
    assert (df[df.n_envs == 10_000].final_p > 0.5).all()
    assert (df[df.n_envs == 1].final_p < 0.5).all()
    assert (tmp_path / "figure-3.json").exists()


def test_critical_diversity_writes_csv(tmp_path):
    code = main(["critical-diversity", "--p0", "0.05", "0.2", "--out", str(tmp_path),
                 "--t-max", "400", "--no-progress"])
    assert code == 0
    df = pd.read_csv(tmp_path / "critical_diversity.csv")
    assert list(df.columns) == ["p0", "n_star", "status"]
    assert df.n_star.tolist() == [4.0, 1.0]
    assert df.status.tolist() == ["found", "found"]


def test_slow_propensity_clock_gives_n_star_1_without_tuning_flags(tmp_path, capsys):
    """Issue 12 §4: α^x = 1000 α^z made the old horizon (fastest-rate units) too short: N* = inf."""
    code = main(["critical-diversity", "--p0", "0.05", "--a0", "0.5", "--b0", "0.1", "--alpha-x", "1000",
                 "--alpha-y", "0.001", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    assert "p0=0.05  N* = 1  (bisection)" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "critical_diversity.csv")
    assert df.n_star.tolist() == [1.0] and df.status.tolist() == ["found"]


def test_limits_are_reported_next_to_the_number_never_as_inf(tmp_path, capsys):
    code = main(["critical-diversity", "--p0", "0.0001", "--n-max", "100", "--t-max", "2000",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "N* > 100 (above_n_max" in out and "inf" not in out
    df = pd.read_csv(tmp_path / "critical_diversity.csv")
    assert df.n_star.isna().all() and df.status.tolist() == ["above_n_max"]
    # the same slow case with a step cap too small for its horizon: not converged, and the flag to raise
    code = main(["critical-diversity", "--p0", "0.05", "--alpha-x", "1000", "--alpha-y", "0.001",
                 "--max-steps", "100000", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "(not_converged: not converged by t_max" in out and "--max-steps" in out
    assert pd.read_csv(tmp_path / "critical_diversity.csv").status.tolist() == ["not_converged"]


@pytest.mark.parametrize("argv, name", [
    (["--p0", "1.5"], "p0"),
    (["--p0", "0.1", "--c-y", "1.2"], "c-y"),
    (["--p0", "0.1", "--alpha-x", "-1"], "alpha-x"),
    (["--p0", "0.1", "--b0", "0"], "b0"),
    (["--p0", "0.1", "--dt", "9"], "dt"),
])
def test_bad_values_exit_2_naming_the_parameter(tmp_path, capsys, argv, name):
    code = main(["critical-diversity", "--out", str(tmp_path), "--no-progress"] + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert name in err and "Traceback" not in err


def test_unknown_figure_number_is_an_error(tmp_path, capsys):
    assert main(["figure", "7", "--out", str(tmp_path)]) == 2
    assert "1-5" in capsys.readouterr().err
