"""`physrl fit` on the wrong input says what is wrong and what to do (issue 21, section 3.6): a semicolon-separated
CSV names the delimiter; an experiment folder points at its runs."""

import json
import shutil
from pathlib import Path

import pytest

from physrl.cli import main

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference" / "demo"

HEADER = ["run_id", "step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]


def _rows(sep: str) -> str:
    rows = [sep.join(HEADER)]
    for step in range(3):
        for k in range(4):   # a completion with a comma: what made pandas say 'Expected 3 fields in line 8, saw 4'
            rows.append(sep.join(["r", str(step), "train", "e0", f"g{step}", "p", f"think grader, ans {k}",
                                  str(k % 2), "true" if k % 2 else "false"]))
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("sep, name", [(";", "semicolons (;)"), ("\t", "tabs")])
def test_a_csv_separated_by_semicolons_or_tabs_is_refused_naming_the_delimiter(tmp_path, capsys, sep, name):
    table = tmp_path / "log.csv"
    table.write_text(_rows(sep))
    assert main(["fit", str(table), "--out", str(tmp_path / "fit"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{table}: the header is separated by {name}, not commas" in err, err
    assert f"sep={sep!r}" in err and "Expected" not in err
    assert not (tmp_path / "fit" / "fit.json").exists()


def test_an_experiment_folder_points_at_its_runs(tmp_path, capsys):
    experiment = tmp_path / "demo"
    runs = sorted(p for p in REFERENCE.glob("*") if (p / "manifest.json").is_file())[:2]
    if not runs:
        pytest.skip(f"no reference runs in {REFERENCE}")
    for run in runs:
        (experiment / "runs" / run.name).mkdir(parents=True)
        shutil.copy(run / "manifest.json", experiment / "runs" / run.name / "manifest.json")
    (experiment / "summary.json").write_text(json.dumps({}))
    assert main(["fit", str(experiment), "--out", str(tmp_path / "fit"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"this is an experiment folder, not a run: its 2 runs are in {experiment / 'runs'}/" in err, err
    assert f"`physrl fit {experiment / 'runs'}/*`" in err
