"""Experiment tracking: ``report_to`` passed to TRL, the organisms' own scalars beside TRL's, read back from
TensorBoard event files and compared with the logged rollouts."""

import importlib.util

import pandas as pd
import pytest

from physrl.organisms import OrganismConfig, read_manifest, read_rollouts, train
from physrl.organisms.cli import main as organisms_main

SMALL = dict(n_envs=2, n_heldout=1, pretrain_steps=40, max_steps=6, eval_every=3, checkpoint_every=3,
             groups_per_step=2, num_generations=4, eval_prompts_per_env=2, progress=False, seed=3)


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed "
                    "(pip install 'physrl[tensorboard]')")
def test_tensorboard_scalars_equal_the_logged_rows(tmp_path):
    run = train(OrganismConfig(**SMALL, report_to="tensorboard"), tmp_path / "tb", log=lambda *a: None)
    assert read_manifest(run).organisms["config"]["report_to"] == "tensorboard"
    scalars = _scalars(run / "tensorboard")
    rows = read_rollouts(run)
    train_rows, eval_rows = rows[rows.phase == "train"], rows[rows.phase == "eval"]
    # the train batch of update s was sampled at step s - 1 (its rows carry step = s - 1)
    share = scalars["train/physrl/rs_share"]
    assert sorted(share) == list(range(1, 7))
    for s, value in share.items():
        batch = train_rows[train_rows.step == s - 1]
        assert value == pytest.approx(batch.rs.mean(), abs=1e-6), s
        for key, pick in (("a", batch.rs), ("b", ~batch.rs)):
            if pick.any():
                assert scalars[f"train/physrl/{key}"][s] == pytest.approx(batch.reward[pick].mean(), abs=1e-6)
            else:  # no such rollout in the batch: nothing logged (not a NaN)
                assert s not in scalars.get(f"train/physrl/{key}", {})
    # eval passes at steps 0, 3, 6: RS share per environment, trained and held out
    for env in ("e0", "e1", "e2"):
        per_env = scalars[f"eval/physrl/rs_share/{env}"]
        assert sorted(per_env) == [0, 3, 6]
        for step, value in per_env.items():
            at = eval_rows[(eval_rows.step == step) & (eval_rows.env_id == env)]
            assert value == pytest.approx(at.rs.mean(), abs=1e-6)
    trained = eval_rows[eval_rows.env_id.isin(["e0", "e1"])].groupby("step").rs.mean()
    assert [scalars["eval/physrl/rs_share_trained"][s] for s in (0, 3, 6)] == pytest.approx(trained.tolist())
    # TRL's own metrics are there too (the mean reward of the batch of update s, same rows)
    reward = scalars["train/reward"]
    assert [reward[s] for s in range(1, 7)] == pytest.approx(
        [train_rows[train_rows.step == s - 1].reward.mean() for s in range(1, 7)], abs=1e-6)
    assert "train/loss" in scalars
    # tracking changes nothing the run logs
    plain = read_rollouts(train(OrganismConfig(**SMALL), tmp_path / "plain", log=lambda *a: None))
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    pd.testing.assert_frame_equal(rows[cols].reset_index(drop=True), plain[cols].reset_index(drop=True))


def test_report_to_is_validated_and_a_missing_tracker_named(tmp_path, capsys, monkeypatch):
    assert OrganismConfig(report_to="wandb,tensorboard").report_to == "tensorboard,wandb"
    assert OrganismConfig(report_to="None").report_to == "none"
    with pytest.raises(ValueError, match="'report_to'.*mlflow"):
        OrganismConfig(report_to="mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = organisms_main(["train", "--out", str(tmp_path / "r"), "--report-to", "wandb", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "wandb package is not installed" in err and "physrl[wandb]" in err
    assert not (tmp_path / "r").exists()
