"""`physrl fit` end to end: synthesize, fit, predict, files written, bad input -> exit 2."""

import json
import re
from pathlib import Path

import pytest

from physrl.cli import main as physrl


def test_synthesize_fit_predict_end_to_end(tmp_path, capsys):
    small = ["--steps", "80", "--eval-every", "10", "--n-envs", "3"]
    capsys.readouterr()
    assert physrl(["fit", "synthesize", "--out", str(tmp_path / "lo"), "--seed", "1",
                   "--param", "p0=0.1", *small]) == 0
    assert physrl(["fit", "synthesize", "--out", str(tmp_path / "hi"), "--seed", "2",
                   "--param", "p0=0.4", "--param", "time_scale=0.6", *small]) == 0
    truth = json.loads((tmp_path / "hi" / "truth.json").read_text())
    assert truth["params"]["time_scale"] == 0.6 and truth["params"]["p0"] == 0.4
    assert physrl(["fit", "synthesize", "--out", str(tmp_path / "target"), "--seed", "3",
                   "--param", "p0=0.25", "--n-envs", "5", "--n-heldout", "0", "--steps", "80"]) == 0
    out = tmp_path / "fit"
    code = physrl(["fit", str(tmp_path / "lo"), str(tmp_path / "hi"), "--out", str(out),
                   "--predict", str(tmp_path / "target"), "--samples", "40"])
    assert code == 0
    doc = json.loads((out / "fit.json").read_text())
    for name, entry in doc["params"].items():
        assert {"value", "stderr", "identified"} <= set(entry)
    assert doc["spec"]["transfer"] == "homogeneous"
    report = (out / "fit_report.txt").read_text()
    assert "[[Variables]]" in report and "[[Starts]]" in report and "95% interval" in report
    assert doc["converged"] is True and doc["dispersion"] > 0 and len(doc["diagnostics"]["starts"]) >= 2
    printed = capsys.readouterr().out
    assert "fit converged" in printed and "dispersion φ" in printed and "[[Variables]]" not in printed
    predicted = [line for line in printed.splitlines() if line.startswith("prediction ")]
    assert len(predicted) == 1 and "protocol N* " in predicted[0] and "parameter draws [" in predicted[0]
    assert not re.search(r"\b(None|nan)\b", predicted[0]), predicted[0]
    assert "fixed (" not in report and "at bound; " not in report and "step-0 table:" in report
    pred = json.loads((out / "prediction.json").read_text())["predictions"][0]
    assert abs(pred["p0"] - 0.25) < 0.06 and pred["p0_source"].startswith("measured")
    assert 0 <= pred["metrics"]["coverage"]["all"] <= 1
    for png in ("fit_00.png", "fit_01.png", "fit_vs_observed.png", "predict_00.png", "predicted_vs_observed.png"):
        assert (out / png).stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["fit", "{missing}", "--out", "{out}"], "no such run directory"),
    (["fit", "{bad}", "--out", "{out}"], "column 'reward'"),
    (["fit", "{bad}", "--out", "{out}", "--transfer", "sideways"], "invalid choice"),
    (["fit", "synthesize", "--out", "{out}", "--param", "c_q=0.3"], "unknown parameter 'c_q'"),
    (["fit", "synthesize", "--out", "{out}", "--param", "c_y=2"], "c_y must lie in [0, 1]"),
    (["fit", "synthesize", "--out", "{out}", "--param", "p0"], "NAME=VALUE"),
])
def test_bad_input_is_a_clear_message_and_exit_2(tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("run_id,step,phase,env_id,group_id,prompt,completion,reward,rs,rs_score\n"
                   "r,0,eval,e,0,p,c,7,true,0.5\n")
    paths = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "out"), "bad": str(bad)}
    code = physrl([a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_too_little_data_is_one_line_or_a_fit_with_unsupported_parameters_fixed(tmp_path, capsys):
    """Issue 12 §3: one env and one eval pass (16 rows), or 4 eval passes and no RS rollout."""
    header = "run_id,step,phase,env_id,group_id,prompt,completion,reward,rs,rs_score\n"
    one_pass = tmp_path / "short_log.csv"
    one_pass.write_text(header + "".join(f"r,0,eval,e0,{i // 8},p,c,{0.25 * (i % 3)},{str(i % 4 == 0).lower()},0.5\n"
                                         for i in range(16)))
    code = physrl(["fit", str(one_pass), "--out", str(tmp_path / "o1"), "--no-figures", "--no-progress",
                   "--step0", "fixed"])  # nothing left to fit once the initial state is held
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]  # (a no-manifest warning too)
    assert code == 2 and "Traceback" not in captured.err and len(errors) == 1
    for name in ("time_scale", "alpha_x", "alpha_y", "c_z", "c_x", "c_y"):  # one line naming what is unsupported
        assert name in captured.err
    assert "one observed step" in captured.err
    code = physrl(["fit", str(one_pass), "--out", str(tmp_path / "o1"), "--no-figures", "--no-progress",
                   "--step0", "prior"])  # the initial state alone is still fitted: unsupported parts held fixed
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    doc = json.loads((tmp_path / "o1" / "fit.json").read_text())
    for name in ("time_scale", "alpha_x", "alpha_y", "c_z", "c_x", "c_y"):
        assert doc["params"][name]["identified"] is False and "one observed step" in doc["params"][name]["reason"]
    no_rs = tmp_path / "no_rs.csv"
    no_rs.write_text(header + "".join(f"r,{20 * s},eval,e0,{i // 8},p,c,{0.25 * (i % 3)},false,0.1\n"
                                      for s in range(4) for i in range(16)))
    code = physrl(["fit", str(no_rs), "--out", str(tmp_path / "o2"), "--no-figures", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    doc = json.loads((tmp_path / "o2" / "fit.json").read_text())
    for name in ("a0", "alpha_x", "c_x"):
        assert doc["params"][name]["identified"] is False and "no RS rollout" in doc["params"][name]["reason"]


def test_compare_prints_the_ranking(tmp_path, capsys):
    """`physrl fit --compare` prints what the criterion is (QAIC with the largest model's φ, or AIC), then the
    ranking (model, k, QAIC, QBIC, ΔQAIC, ΔQBIC, converged), lowest first, with the numbers of
    model_comparison.csv."""
    import pandas as pd

    small = ["--steps", "80", "--eval-every", "10", "--n-envs", "3"]
    assert physrl(["fit", "synthesize", "--out", str(tmp_path / "lo"), "--seed", "1", "--param", "p0=0.1", *small]) == 0
    assert physrl(["fit", "synthesize", "--out", str(tmp_path / "hi"), "--seed", "2", "--param", "p0=0.4", *small]) == 0
    capsys.readouterr()
    out = tmp_path / "fit"
    assert physrl(["fit", str(tmp_path / "lo"), str(tmp_path / "hi"), "--out", str(out), "--compare", "--starts", "1",
                   "--no-figures", "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    start = printed.index(next(line for line in printed if line.startswith("model comparison")))
    table = pd.read_csv(out / "model_comparison.csv", keep_default_na=False)
    crit = table.criterion[0]
    assert set(table.criterion) == {crit} and crit in ("QAIC", "AIC")
    assert printed[start].startswith(f"model comparison by {crit} = ") and table.dispersion[0] in printed[start]
    bic = "QBIC" if crit == "QAIC" else "BIC"
    header = printed[start + 1].split()
    assert header == ["model", "k", crit, bic, "Δ" + crit, "Δ" + bic, "converged"]
    assert set(table.variant) == {f"{t}{suffix}" for t in ("none", "homogeneous", "kernel")
                                  for suffix in ("", "+lam", "+power")}
    rows = [line.split() for line in printed[start + 2:start + 2 + len(table)]]
    assert [r[0] for r in rows] == list(table.variant)  # the csv's order: lowest first
    for r, csv in zip(rows, table.itertuples()):
        assert int(r[1]) == csv.k
        assert [float(v) for v in r[2:6]] == pytest.approx([csv.qaic, csv.qbic, csv.delta_qaic, csv.delta_qbic],
                                                           abs=0.051)
        assert r[6] == ("yes" if csv.converged else "NO")
    assert float(rows[0][4]) == 0.0


def test_compare_ranking_shows_a_variant_that_could_not_be_fitted():
    import math

    import pandas as pd

    from physrl.fitting.cli import _ranking

    table = pd.DataFrame([
        {"variant": "none", "k": 3, "qaic": 10.0, "qbic": 12.0, "converged": True, "unidentified": "",
         "nested_refit": "", "error": ""},
        {"variant": "kernel", "k": None, "qaic": math.inf, "qbic": math.inf, "converged": False, "unidentified": "",
         "nested_refit": "", "error": "too few observations"}])
    table["delta_qaic"] = table.qaic - table.qaic.min()
    table["delta_qbic"] = table.qbic - table.qbic.min()
    table["criterion"], table["dispersion"] = "QAIC", "p 2.00, a 1.00, b 1.30 (from none)"
    lines = _ranking(table).splitlines()
    assert lines[2].split() == ["none", "3", "10.0", "12.0", "0.0", "0.0", "yes"]
    assert lines[3].split()[:7] == ["kernel", "-", "-", "-", "-", "-", "NO"]
    assert lines[3].endswith("error: too few observations")


def test_fit_outputs_are_replaced_atomically_never_rewritten_in_place(tmp_path, monkeypatch):
    """A rerun into the same --out killed mid-write must leave the previous fit.json (fit_report.txt,
    prediction.json) whole: every output goes to a temporary file that is renamed into place; the final
    path is never opened for writing (before: Path.write_text truncated it first)."""
    import builtins
    import io

    from physrl import fitting

    run = fitting.synthesize(tmp_path / "run", n_envs=2, n_heldout=1, steps=20, eval_every=10, rollouts_per_env=16,
                             seed=1)
    other = fitting.synthesize(tmp_path / "other", n_envs=2, n_heldout=1, steps=20, eval_every=10,
                               rollouts_per_env=16, seed=2)
    out = tmp_path / "fit"
    argv = ["fit", str(run), "--out", str(out), "--predict", str(other), "--no-figures", "--no-progress",
            "--starts", "1", "--samples", "5"]
    assert physrl(argv[:4] + argv[6:]) == 0  # a first fit, whose files the second replaces
    before = {name: (out / name).read_bytes() for name in ("fit.json", "fit_report.txt")}
    opened = []
    original = io.open

    def recording_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            opened.append(str(file))
        return original(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", recording_open)
    monkeypatch.setattr(builtins, "open", recording_open)
    assert physrl(argv) == 0
    finals = {str(out / name) for name in ("fit.json", "fit_report.txt", "prediction.json")}
    assert finals.isdisjoint(opened), sorted(finals & set(opened))
    assert all(Path(p).name.startswith(".") and p.endswith(".tmp") for p in opened if p.startswith(str(out))), opened
    assert json.loads((out / "prediction.json").read_text())["predictions"]
    assert json.loads((out / "fit.json").read_text())["params"] == json.loads(before["fit.json"])["params"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_reused_out_folder_keeps_no_run_figure_of_an_earlier_larger_fit(tmp_path):
    small = ["--steps", "60", "--eval-every", "10", "--n-envs", "2"]
    runs = [tmp_path / f"r{i}" for i in range(3)]
    for i, r in enumerate(runs):
        assert physrl(["fit", "synthesize", "--out", str(r), "--seed", str(i + 1), "--param",
                       f"p0={0.1 + 0.1 * i:.1f}", *small]) == 0
    out = tmp_path / "fit"
    assert physrl(["fit", *map(str, runs), "--out", str(out), "--starts", "1", "--no-progress"]) == 0
    assert {p.name for p in out.glob("fit_[0-9][0-9].png")} == {"fit_00.png", "fit_01.png", "fit_02.png"}
    (out / "my_notes.png").write_bytes(b"not ours")
    assert physrl(["fit", *map(str, runs[:2]), "--out", str(out), "--starts", "1", "--no-progress"]) == 0
    assert {p.name for p in out.glob("fit_[0-9][0-9].png")} == {"fit_00.png", "fit_01.png"}
    assert (out / "my_notes.png").read_bytes() == b"not ours"  # only this scheme's names are removed


def test_no_observation_in_any_run_names_the_runs(tmp_path, capsys):
    from physrl import fitting

    run = fitting.synthesize(tmp_path / "run", n_envs=2, n_heldout=1, steps=20, eval_every=10, rollouts_per_env=16,
                             seed=4)
    assert physrl(["fit", str(run), "--out", str(tmp_path / "fit"), "--phases", "train", "--no-progress",
                   "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "no observations in phases ('train',) in any run" in err and str(run) in err
