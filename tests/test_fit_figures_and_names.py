"""`physrl fit`'s per-run figures stay readable when logs have train rows at every step, and every name a user
reads is the run's folder, not the organism's run_id (issue 21, sections 3.2 and 3.3)."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from physrl import fitting
from physrl.cli import main
from physrl.contract import load_runs
from physrl.fitting import _figures
from physrl.fitting._figures import plot_run, pooled_train_points

STEPS, EVAL_EVERY = 60, 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    out = {}
    for name, seed in (("calib-low", 1), ("sweep-n2", 2)):  # train rows at every step, a few rollouts each
        out[name] = fitting.synthesize(root / name, n_envs=2, n_heldout=1, steps=STEPS, eval_every=EVAL_EVERY,
                                       rollouts_per_env=32, train_rollouts_per_env=8, seed=seed,
                                       run_id=f"organism-{seed}-abcdef")
    return out


def test_train_rows_pool_per_eval_interval_with_their_counts(runs):
    run = load_runs([runs["calib-low"]])[0]
    obs = fitting.observations(run)
    train = obs[(obs.phase == "train") & (obs.env_id == "env-00")]
    eval_steps = np.unique(obs.loc[obs.phase == "eval", "step"])
    pooled = pooled_train_points(train, eval_steps)
    step, hat, lo, hi = pooled["p"]
    assert len(step) == len(eval_steps) - 1                      # [0, 10), [10, 20), ... [50, 60)
    second = train[(train.step >= 10) & (train.step < 20)]
    assert hat[1] == pytest.approx(second.n_rs.sum() / second.n.sum())
    assert step[1] == pytest.approx(14.5)
    assert np.all(lo <= hat) and np.all(hat <= hi)


def test_prediction_figure_draws_eval_points_and_pooled_train_points_not_every_row(runs, monkeypatch, tmp_path):
    fitted = load_runs([runs["calib-low"]])
    target = load_runs([runs["sweep-n2"]])[0]
    pred = fitting.predict(fitting.fit(fitted, n_starts=1), target, n_samples=10)
    kept = []
    monkeypatch.setattr(_figures.plt, "close", lambda fig: kept.append(fig))
    plot_run(pred, {e.env_id: e.w for e in target.environments}, tmp_path / "p.png")
    ax = kept[0].axes[0]                                          # env env-00, latent p
    markers = {line.get_marker(): len(line.get_xdata()) for line in ax.lines if line.get_marker() in ("o", "s")}
    n_eval = STEPS // EVAL_EVERY + 1
    assert markers == {"o": n_eval, "s": n_eval - 1}               # was one point per (phase, step): 67
    legend = [t.get_text() for t in kept[0].legends[0].get_texts()]
    assert "eval (Jeffreys 95%)" in legend and "train rollouts pooled per eval interval (Jeffreys 95%)" in legend
    plt.close(kept[0])


def test_predictions_are_named_by_folder(runs, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", str(runs["calib-low"]), "--out", str(out), "--predict", str(runs["sweep-n2"]),
                 "--starts", "1", "--samples", "5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "\nprediction sweep-n2: " in printed and "organism-2-abcdef" not in printed.split("prediction ")[-1]
    doc = json.loads((out / "prediction.json").read_text())
    assert doc["predictions"][0]["source"] == "sweep-n2" and doc["predictions"][0]["run_id"] == "organism-2-abcdef"
