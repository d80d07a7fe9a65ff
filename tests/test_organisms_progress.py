"""An organism run shows progress inside the run: a stage-1 bar (it was silent for 10-80 s) beside the GRPO bar, and
RUN_DIR/progress.json, the current stage and step, for a supervisor that cannot see the worker's stderr."""

import json

from physrl.organisms import OrganismConfig, train
from physrl.organisms._progress import RunProgress, progress_words, read_progress


def test_progress_file_is_throttled_but_always_holds_the_last_step(tmp_path):
    p = RunProgress(tmp_path, "GRPO", 5, show=False, min_interval=3600)
    assert read_progress(tmp_path)["step"] == 0                    # written at the start
    p.update(3)
    assert read_progress(tmp_path)["step"] == 0                    # within the interval: not rewritten
    p.update(5)
    assert progress_words(tmp_path) == "GRPO 5/5"                  # the stage's last step always is
    assert progress_words(tmp_path / "nothere") is None


def test_a_run_shows_a_stage1_bar_and_leaves_its_progress_file(tmp_path, capsys):
    config = OrganismConfig(n_envs=1, n_heldout=0, max_steps=2, eval_every=2, checkpoint_every=2, pretrain_steps=30,
                            groups_per_step=2, num_generations=4, eval_prompts_per_env=1, progress=True,
                            stage1_cache="off")
    run = train(config, tmp_path / "run")
    err = capsys.readouterr().err
    assert "stage 1" in err and "30/30" in err, err[-2000:]        # the stage-1 bar reached its end
    assert "GRPO" in err and "2/2" in err
    doc = json.loads((run / "progress.json").read_text())
    assert (doc["stage"], doc["step"], doc["total"]) == ("GRPO", 2, 2)
