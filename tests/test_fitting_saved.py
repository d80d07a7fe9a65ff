"""Issue 18 item 9: a saved fit is used again (FitResult.load, `physrl fit --from FIT_DIR --predict RUN`)
with the same numbers as the fit that wrote it, and without refitting."""

import json
from pathlib import Path

import numpy as np
import pytest

from physrl import fitting
from physrl.cli import main as physrl


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    small = dict(n_envs=3, n_heldout=1, steps=80, eval_every=10, rollouts_per_env=128)
    lo = fitting.synthesize(root / "lo", seed=1, params={"p0": 0.1}, **small)
    hi = fitting.synthesize(root / "hi", seed=2, params={"p0": 0.4}, **small)
    target = fitting.synthesize(root / "target", seed=3, params={"p0": 0.25}, **{**small, "n_envs": 5})
    return root, lo, hi, target


def test_load_round_trips_fit_json_and_predictions(design, tmp_path):
    _, lo, hi, target = design
    res = fitting.fit([lo, hi], n_starts=2)
    res.save(tmp_path / "fit.json")
    back = fitting.FitResult.load(tmp_path)
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(res.to_dict(), sort_keys=True)
    assert back.var_names == res.var_names and np.array_equal(back.covariance, res.covariance)
    assert back.converged == res.converged and back.dispersion == res.dispersion
    for name in res.estimates:
        assert back.interval(name) == res.interval(name), name
    first, again = fitting.predict(res, target, n_samples=40), fitting.predict(back, target, n_samples=40)
    assert first.to_dict() == again.to_dict()
    for lat in ("p", "a", "b"):
        assert np.array_equal(first.lower[lat], again.lower[lat]) and np.array_equal(first.upper[lat], again.upper[lat])
    assert first.metrics.end_state == again.metrics.end_state


def test_load_needs_the_fitted_logs_or_says_where_they_were(design, tmp_path):
    _, lo, hi, _ = design
    res = fitting.fit([lo, hi], n_starts=1)
    res.save(tmp_path / "fit.json")
    doc = json.loads((tmp_path / "fit.json").read_text())
    for entry in doc["runs"]:
        entry["path"] = entry["source"] = str(tmp_path / "moved" / entry["run_id"])
    (tmp_path / "fit.json").write_text(json.dumps(doc))
    with pytest.raises(FileNotFoundError, match="moved"):
        fitting.FitResult.load(tmp_path)
    back = fitting.FitResult.load(tmp_path, runs=[hi, lo])  # given in another order: matched by run id
    assert back.problem.run_ids == res.problem.run_ids


def test_cli_from_predicts_without_refitting_with_the_same_numbers(design, tmp_path, capsys):
    _, lo, hi, target = design
    fit_dir, again_dir = tmp_path / "fit", tmp_path / "again"
    common = ["--predict", str(target), "--samples", "30", "--no-figures", "--no-progress"]
    assert physrl(["fit", str(lo), str(hi), "--out", str(fit_dir), "--starts", "2", *common]) == 0
    capsys.readouterr()
    assert physrl(["fit", "--from", str(fit_dir), "--out", str(again_dir), *common]) == 0
    printed = capsys.readouterr().out
    assert "not refitted" in printed and f"prediction {Path(target).name}: " in printed, printed  # named by folder
    first = json.loads((fit_dir / "prediction.json").read_text())
    again = json.loads((again_dir / "prediction.json").read_text())
    assert first["predictions"] == again["predictions"] and first["converged"] == again["converged"]
    assert not (again_dir / "fit.json").exists()  # nothing was refitted or rewritten


@pytest.mark.parametrize("extra, message", [
    (["{lo}"], "takes no RUN"),
    ([], "needs --predict"),
    (["--predict", "{lo}"], "tuned the fit"),
    (["--predict", "{target}", "--compare"], "--compare belong to a fit"),
])
def test_cli_from_refuses_what_it_cannot_do(design, tmp_path, capsys, extra, message):
    _, lo, hi, target = design
    fit_dir = tmp_path / "fit"
    assert physrl(["fit", str(lo), str(hi), "--out", str(fit_dir), "--starts", "1", "--no-figures",
                   "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["fit", "--from", str(fit_dir), *[a.format(lo=lo, target=target) for a in extra]]
    assert physrl(argv) == 2
    assert message in capsys.readouterr().err
