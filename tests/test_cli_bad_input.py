"""Every `physrl` subcommand over a table of bad inputs (issue 12 §3): wrong types, out-of-range values,
missing files, empty files, wrong suffixes, conflicting flags and too little data each end with exit
code 2 and exactly one line on stderr, never a traceback, and before any long work starts."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from physrl import fitting
from physrl.cli import main
from physrl.organisms import OrganismConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths of good and bad inputs, keyed by the names used in the table."""
    d = tmp_path_factory.mktemp("inputs")
    good = fitting.synthesize(d / "good", n_envs=2, n_heldout=1, steps=20, eval_every=10, rollouts_per_env=16,
                              seed=1)
    rows = fitting.load_runs(good)[0].rollouts
    paths = {"good": good, "file": d / "a_file.txt", "missing": d / "missing",
             "nonempty": d / "nonempty"}
    paths["file"].write_text("not a directory")
    paths["nonempty"].mkdir()
    (paths["nonempty"] / "something").write_text("x")
    for name, text in {"empty.csv": "", "empty.json": "", "list.json": "[1, 2]", "cfg.yaml": "n_envs: 2\n",
                       "badtype.json": '{"n_envs": "two"}', "unknown.json": '{"n_env": 2}',
                       "header.csv": ",".join(rows.columns) + "\n", "run.txt": rows.to_csv(index=False)}.items():
        (d / name).write_text(text)
        paths[name.replace(".", "_")] = d / name
    bad = rows.copy()
    bad.loc[3, "reward"] = 7
    bad.to_csv(d / "bad.csv", index=False)
    paths["bad_csv"] = d / "bad.csv"
    # too little data: one env, one eval pass (16 rows); one env, four eval passes and no RS rollout
    first = rows[(rows.env_id == "env-00") & (rows.phase == "eval") & (rows.step == 0)]
    first.to_csv(d / "short.csv", index=False)
    paths["short_csv"] = d / "short.csv"
    four = pd.concat([first.assign(step=s) for s in (0, 10, 20, 30)]).assign(rs=False)
    four.to_csv(d / "no_rs.csv", index=False)
    paths["no_rs_csv"] = d / "no_rs.csv"
    # one corrupted step value: the fit Euler-steps through every optimizer step up to the last one
    huge = rows.copy()
    huge.loc[5, "step"] = 10**15
    huge.to_csv(d / "huge_step.csv", index=False)
    paths["huge_step_csv"] = d / "huge_step.csv"
    nomanifest = d / "nomanifest"
    (nomanifest / "rollouts").mkdir(parents=True)
    for part in (good / "rollouts").iterdir():
        (nomanifest / "rollouts" / part.name).write_bytes(part.read_bytes())
    paths["nomanifest"] = nomanifest
    # an organisms run to resume (a manifest with its saved config, nothing trained yet)
    organism = d / "organism"
    organism.mkdir()
    (organism / "manifest.json").write_text(json.dumps({
        "run_id": "org", "status": "running", "environments": [{"env_id": "e0", "w": 1.0}],
        "organisms": {"config": OrganismConfig(n_envs=1, n_heldout=0).to_dict()}}))
    paths["organism"] = organism
    demo = d / "exp.toml"
    demo.write_text('name = "t"\nn_envs = [1]\np0 = [0.1]\n[organism]\nmax_steps = 2\n')
    paths["exp_toml"] = demo
    return {k: str(v) for k, v in paths.items()}


#: (command line with {placeholders}, a fragment the one-line message must hold)
CASES = [
    # ---- physrl sim -------------------------------------------------------------------------------------
    ("sim", ["sim"], "required: command"),
    ("sim", ["sim", "figure", "9", "--out", "{dir}"], "1-5"),
    ("sim", ["sim", "figure", "one", "--out", "{dir}"], "invalid int value"),
    ("sim", ["sim", "figure", "1"], "required: --out"),
    ("sim", ["sim", "figure", "1", "--out", "{dir}", "--dt", "-1"], "dt"),
    ("sim", ["sim", "figure", "1", "--out", "{file}", "--quick"], "not a directory"),
    ("sim", ["sim", "critical-diversity", "--p0", "1.5", "--out", "{dir}"], "p0"),
    ("sim", ["sim", "critical-diversity", "--p0", "abc", "--out", "{dir}"], "invalid float value"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--c-z", "2", "--out", "{dir}"], "c-z"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--alpha-x", "-1", "--out", "{dir}"], "alpha-x"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--alpha-x", "inf", "--out", "{dir}"],
     "alpha-x must be a finite number >= 0, got inf"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--alpha-y", "nan", "--out", "{dir}"],
     "alpha-y must be a finite number >= 0, got nan"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--n-max", "0", "--out", "{dir}"], "n-max"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--t-max", "0", "--out", "{dir}"], "t_max"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--method", "magic", "--out", "{dir}"], "invalid choice"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--threads", "0", "--out", "{dir}"], "threads"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--out", "{file}"], "not a directory"),
    ("sim", ["sim", "critical-diversity", "--p0", "0.1", "--out", "{file}/sub"], "a_file.txt is a file"),
    # ---- physrl organisms train -----------------------------------------------------------------------
    ("organisms", ["organisms"], "required: command"),
    ("organisms", ["organisms", "train"], "--out RUN_DIR or --resume RUN_DIR"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--p0", "1.5"], "'p0'"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--n-envs", "two"], "invalid int value"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--max-steps", "0"], "'max_steps'"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--config", "{missing}.json"], "missing.json"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--config", "{empty_json}"], "not valid JSON"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--config", "{cfg_yaml}"], "allowed suffixes"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--config", "{list_json}"], "expected an object"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--config", "{badtype_json}"], "'n_envs'"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--config", "{unknown_json}"], "unknown config field"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--resume", "{organism}"], "not both"),
    ("organisms", ["organisms", "train", "--resume", "{organism}", "--config", "{badtype_json}"],
     "--config cannot be combined with --resume"),
    ("organisms", ["organisms", "train", "--resume", "{missing}"], "no such run (no "),
    ("organisms", ["organisms", "train", "--resume", "{file}"], "a file, not a run directory"),
    ("organisms", ["organisms", "train", "--resume", "{good}"], "no organisms.config"),
    ("organisms", ["organisms", "train", "--resume", "{organism}", "--seed", "1"],
     "differs from the run's saved config in ['seed']"),
    ("organisms", ["organisms", "train", "--out", "{nonempty}"], "is not empty"),
    ("organisms", ["organisms", "train", "--out", "{file}"], "is a file"),
    ("organisms", ["organisms", "train", "--out", "{file}/run"], "a_file.txt is a file"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--model", "{missing}"], "'model_dir'"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--model", "{dir}"], "no config.json"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--env-family", "no.such_pkg:Family"], "'env_family'"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--env-family", "digit map"], "'env_family'"),
    ("organisms", ["organisms", "train", "--out", "{dir}", "--report-to", "mlflow"], "'report_to'"),
    # ---- physrl organisms calibrate -------------------------------------------------------------------
    ("organisms", ["organisms", "calibrate"], "required: --out"),
    ("organisms", ["organisms", "calibrate", "--out", "{dir}", "--grid", "{{bad"], "not valid JSON"),
    ("organisms", ["organisms", "calibrate", "--out", "{dir}", "--grid", "[1]"], "expected a JSON object"),
    ("organisms", ["organisms", "calibrate", "--out", "{dir}", "--grid", '{{"nope": [1]}}'], "unknown config field"),
    ("organisms", ["organisms", "calibrate", "--out", "{dir}", "--grid", '{{"p0": [2.0]}}'], "'p0'"),
    ("organisms", ["organisms", "calibrate", "--out", "{dir}", "--n-values", "0", "8"], "'n_envs'"),
    ("organisms", ["organisms", "calibrate", "--out", "{dir}", "--seeds", "-1"], "'seed'"),
    ("organisms", ["organisms", "calibrate", "--out", "{file}"], "is a file"),
    # ---- physrl fit -----------------------------------------------------------------------------------------
    ("fit", ["fit", "--out", "{dir}"], "RUN"),
    ("fit", ["fit", "{missing}", "--out", "{dir}"], "no such run directory"),
    ("fit", ["fit", "{bad_csv}", "--out", "{dir}"], "row 3, column 'reward'"),
    ("fit", ["fit", "{empty_csv}", "--out", "{dir}"], "empty.csv"),
    ("fit", ["fit", "{header_csv}", "--out", "{dir}"], "no rows"),
    ("fit", ["fit", "{run_txt}", "--out", "{dir}"], "unknown table format '.txt'"),
    ("fit", ["fit", "{nomanifest}", "--out", "{dir}"], "manifest.json"),
    ("fit", ["fit", "{good}", "{good}", "--out", "{dir}"], "given twice"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--transfer", "sideways"], "invalid choice"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--samples", "0"], "--samples"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--max-nfev", "0"], "--max-nfev"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--max-nfev", "ten"], "invalid int value"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--phases", "warmup"], "phases"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--emcee-steps", "-1"], "emcee"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--predict", "{missing}"], "no such run directory"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--predict", "{good}"], "a prediction of logs that tuned the fit"),
    ("fit", ["fit", "{good}", "--out", "{file}"], "a_file.txt"),
    ("fit", ["fit", "{good}", "--out", "{file}/fit"], "a_file.txt is a file"),
    # held at its step-0 measurement, one pass leaves nothing to fit (under the default --step0 free the initial
    # state alone is fitted and the dynamics held, tests/test_fitting_cli.py)
    ("fit", ["fit", "{short_csv}", "--out", "{dir}", "--step0", "fixed"], "cannot support time_scale"),
    ("fit", ["fit", "{huge_step_csv}", "--out", "{dir}"], "step 1000000000000000"),
    ("fit", ["fit", "{good}", "--out", "{dir}", "--predict", "{huge_step_csv}"], "beyond the 1,000,000"),
    # ---- physrl fit synthesize ------------------------------------------------------------------------
    ("synthesize", ["fit", "synthesize"], "required: --out"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--n-envs", "0"], "n_envs"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--steps", "x"], "invalid int value"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--n-heldout", "-1"], "n_heldout"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--eval-every", "0"], "eval_every"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--rollouts-per-env", "0"], "rollouts_per_env"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--param", "c_q=1"], "unknown parameter 'c_q'"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--param", "p0=2"], "p0"),
    ("synthesize", ["fit", "synthesize", "--out", "{dir}", "--param", "p0"], "NAME=VALUE"),
    ("synthesize", ["fit", "synthesize", "--out", "{good}"], "overwrite"),
    ("synthesize", ["fit", "synthesize", "--out", "{file}"], "a_file.txt"),
    # ---- physrl experiment / demo ---------------------------------------------------------------------
    ("experiment", ["experiment"], "required: config"),
    ("experiment", ["experiment", "{missing}.toml", "--out", "{dir}"], "missing.toml"),
    ("experiment", ["experiment", "{empty_json}", "--out", "{dir}"], "cannot parse config"),
    ("experiment", ["experiment", "{cfg_yaml}", "--out", "{dir}"], "cfg.yaml"),
    ("experiment", ["experiment", "{exp_toml}"], "--out is required"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "organism.max_steps=-1"], "max_steps"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "threshold=2"], "threshold"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "nope=1"], "nope"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "noequals"], "KEY=VALUE"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "n_envs=two"], "n_envs"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "calibration.n_envs=2"],
     "--set calibration.n_envs=2: 'calibration' is a list, not a table"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "organism.max_steps.x=1"],
     "'organism.max_steps' is a int, not a table"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "calibration=5"],
     "calibration must be a non-empty list"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{dir}", "--set", "name=5"], "name must be a non-empty string"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{file}"], "not a directory"),
    ("experiment", ["experiment", "{exp_toml}", "--out", "{file}/x/y"], "a_file.txt is a file"),
    ("demo", ["demo", "--out", "{file}"], "not a directory"),
    ("demo", ["demo", "--out", "{file}/demo"], "a_file.txt is a file"),
    ("demo", ["demo", "--bogus"], "unrecognized arguments: --bogus"),
    ("physrl", ["nonsense"], "unknown command 'nonsense'"),
]


def _ids():
    out = []
    for case in CASES:
        values = case.values if hasattr(case, "values") else case
        out.append(" ".join(values[1]).replace("{", "").replace("}", ""))
    return out


@pytest.mark.parametrize("command, argv, message", CASES, ids=_ids())
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, command, argv, message):
    new = tmp_path / "new"
    argv = [a.format(**files, dir=new) for a in argv]
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err, captured.out[-2000:])
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and message in err, err
    assert err.count("error:") <= 1, err  # one prefix, not the parser's and the command's
    assert not new.exists()  # nothing was started


@pytest.mark.parametrize("argv", [["organisms", "train", "--out", "{dir}", "--p0", "-1"],
                                  ["fit", "{bad_csv}", "--out", "{dir}"],
                                  ["sim", "critical-diversity", "--p0", "2", "--out", "{dir}"]])
def test_the_installed_command_says_it_in_one_line(files, tmp_path, argv):
    """The same through the console entry point in a fresh process (real exit code, real stderr)."""
    argv = [a.format(**files, dir=tmp_path / "new") for a in argv]
    out = subprocess.run([sys.executable, "-m", "physrl", *argv], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_a_log_with_no_rs_rollout_fits_with_rs_parameters_held_and_not_identified(files, tmp_path, capsys):
    """One env, four eval passes, no RS rollout (issue 12 §3): not a traceback but a fit that holds what the
    data cannot support fixed and says so, parameter by parameter, in fit.json."""
    out = tmp_path / "fit"
    assert main(["fit", files["no_rs_csv"], "--out", str(out), "--no-figures", "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    params = json.loads((out / "fit.json").read_text())["params"]
    for name in ("a0", "alpha_x", "c_x"):  # RS skill is never observed
        assert params[name]["identified"] is False and not params[name]["vary"], params[name]
        assert "no RS rollout" in params[name]["reason"]
    assert params["time_scale"]["identified"] is False  # nothing trains (no train rows): no dynamics


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (no new entries, even for root)")
@pytest.mark.parametrize("argv", [["fit", "{good}", "--out", "/proc/physrl-out"],
                                  ["sim", "critical-diversity", "--p0", "0.1", "--out", "/proc/physrl-out/x"],
                                  ["experiment", "{exp_toml}", "--out", "/proc/physrl-out"]])
def test_an_out_folder_that_cannot_be_written_is_refused_before_anything_runs(files, capsys, argv):
    """Permission bits do not stop root, so the check creates (and removes) a probe folder; /proc takes none.
    Before: the fit ran to its end and then failed to create --out (sim: a traceback)."""
    code = main([a.format(**files) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot write /proc/physrl-out" in err and "no new entry can be made in /proc" in err, err


def test_the_write_check_leaves_nothing_behind(tmp_path):
    from physrl._util.command_line import output_directory

    (tmp_path / "old").mkdir()
    assert output_directory(str(tmp_path / "old")) == tmp_path / "old"
    assert output_directory(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old"]


def test_the_default_out_folders_are_checked_too(tmp_path, monkeypatch, capsys):
    """physrl demo's default runs/demo (and a shipped config's runs/NAME) pass the --out check."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder goes")
    assert main(["demo"]) == 2
    assert main(["experiment", "demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("runs is a file, not a directory" in line for line in err), err
