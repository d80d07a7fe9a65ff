"""`physrl fit` says the same number of starts in its bar and its summary, and shows progress through --compare's
refits (issue 21, sections 3.5 and 3.1)."""

import re

import pandas as pd
import pytest

from physrl import fitting
from physrl.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fitting.synthesize(tmp_path_factory.mktemp("syn") / "run", n_envs=2, n_heldout=1, steps=40, eval_every=10,
                              rollouts_per_env=64, seed=3)


@pytest.mark.parametrize("starts", [1, 3])
def test_the_bar_and_the_summary_count_the_same_starts(run, capsys, starts):
    result = fitting.fit([run], n_starts=starts, progress=True)
    err = capsys.readouterr().err
    bar = re.findall(r"fit start (\d+)/(\d+)", err)
    assert bar and bar[-1] == (str(starts), str(starts))
    d = result.diagnostics
    assert d.n_starts == starts and len(d.starts) == starts + 1         # + the quasi-likelihood's weighted refit
    assert d.starts[0].label.endswith("+weighted")
    assert 1 <= d.n_at_best <= starts
    first = result.summary_table().splitlines()[0]
    plural = "start" if starts == 1 else "starts"
    assert f"over {starts} {plural} ({d.n_at_best} reached the best, then its weighted refit)" in first, first
    assert result.to_dict()["diagnostics"]["n_starts"] == starts


def test_compare_shows_a_bar_over_its_refits(run, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", str(run), "--out", str(out), "--compare", "--starts", "1", "--no-figures"]) == 0
    err = capsys.readouterr().err
    n = len(pd.read_csv(out / "model_comparison.csv"))
    assert n == 9                                  # none / homogeneous / kernel: λ off, λ on, and the power selection law
    assert "model comparison" in err and f"{n}/{n}" in err, err[-2000:]
    assert "homogeneous+lam" in err                                   # the variant being fitted is named
