"""End-to-end organism runs: a 20-step run through the CLI, its logs, knobs at step 0, kill + resume."""

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from physrl.organisms import (EnvFamily, OrganismConfig, PatternClassifier, load_model, measure_knobs, read_manifest,
                              read_rollouts, saved_config, train)
from physrl.organisms.families.digit_map import digit_accuracy
from physrl.organisms.cli import main as organisms_main

FAST = dict(n_envs=2, n_heldout=1, max_steps=20, eval_every=10, checkpoint_every=5, progress=False)


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    """A 20-step run started from the command line (config file + flags)."""
    root = tmp_path_factory.mktemp("organism")
    config_file = root / "config.json"
    config_file.write_text(json.dumps({k: v for k, v in FAST.items() if k not in ("max_steps",)}))
    run_dir = root / "run"
    code = organisms_main(["train", "--out", str(run_dir), "--config", str(config_file), "--max-steps", "20",
                           "--seed", "7", "--no-progress"])
    assert code == 0
    return run_dir


def test_run_writes_valid_logs(run20):
    manifest = read_manifest(run20)
    df = read_rollouts(run20)
    cfg = manifest.organisms["config"]
    assert manifest.status == "finished" and manifest.seed == 7 and cfg["max_steps"] == 20 == manifest.steps
    for key in ("run_id", "created", "finished", "versions", "environments", "classifier", "model"):
        assert getattr(manifest, key)
    assert manifest.classifier == {"name": "pattern", "version": "1"}
    assert [e.w for e in manifest.environments] == [0.5, 0.5, 0.0]
    assert [e.coordinates for e in manifest.environments] == [(0.0,), (1.0,), (2.0,)]
    assert [e["env_id"] for e in manifest.organisms["environments"]] == ["e0", "e1", "e2"]
    assert all("digit_map" in e for e in manifest.organisms["environments"])
    assert manifest.model["architecture"] == "LlamaForCausalLM" and manifest.model["n_parameters"] > 10_000
    assert manifest.rows_written == len(df)
    assert set(df.run_id) == {manifest.run_id}
    assert df.reward.between(0, 1).all() and df.rs_score.between(0, 1).all()
    train_rows, eval_rows = df[df.phase == "train"], df[df.phase == "eval"]
    assert sorted(train_rows.step.unique()) == list(range(20))
    assert sorted(eval_rows.step.unique()) == [0, 10, 20]
    for step in (0, 10, 20):  # every env, trained or held out, at every eval step
        assert set(eval_rows[eval_rows.step == step].env_id) == {"e0", "e1", "e2"}
    assert set(train_rows.env_id) == {"e0", "e1"}  # the held-out env never trains
    # every GRPO group is complete: num_generations completions of one prompt
    sizes = df.groupby(["step", "phase", "group_id"]).agg(n=("prompt", "size"), prompts=("prompt", "nunique"))
    assert (sizes.n == cfg["num_generations"]).all() and (sizes.prompts == 1).all()
    assert len(train_rows) == 20 * cfg["groups_per_step"] * cfg["num_generations"]
    # w = 1/2: each training env gets half of every step's groups
    assert (train_rows.groupby("env_id").size() == len(train_rows) // 2).all()
    # rewards in the log are the environment's reward of the logged completion
    recomputed = [float(np.mean(digit_accuracy(c, e))) for c, e in zip(df.completion, df.expected)]
    assert np.allclose(recomputed, df.reward)


def test_every_trained_parameter_changed(run20):
    init, _ = load_model(run20 / "model_init")
    final, _ = load_model(run20 / "model_final")
    final_params = dict(final.named_parameters())
    unchanged = [name for name, p in init.named_parameters() if torch.equal(p, final_params[name])]
    assert unchanged == []


def test_knobs_measured_at_step0_match_config(run20):
    cfg = OrganismConfig(**saved_config(run20))
    model, tok = load_model(run20 / "model_init")
    m = measure_knobs(model, tok, cfg, EnvFamily(cfg), n_per_env=256)
    n_local = m["n"] - m["n_rs"]

    def inside(target, estimate, trials, z=2.58):  # normal-approximation binomial 99% interval
        half = z * math.sqrt(max(estimate * (1 - estimate), 1e-4) / trials)
        return abs(estimate - target) <= half, (round(estimate, 3), round(half, 3))

    ok_p = inside(cfg.p0, m["p"], m["n"])
    # skills are means of per-digit credits; the trials are the graded digits
    k = round(cfg.note_reveal * cfg.input_length)
    ok_a = inside(cfg.a0 / cfg.rs_ceiling, m["a"] / cfg.rs_ceiling, m["n_rs"] * k)
    ok_b = inside(cfg.b0, m["b"], n_local * cfg.input_length)
    assert ok_p[0] and ok_a[0] and ok_b[0], (m, ok_p, ok_a, ok_b)


def test_local_path_cannot_exploit_the_note(run20):
    """Local rollouts are no better on the positions the note would reveal; RS rollouts are (test has power)."""
    df = read_rollouts(run20)
    n_rev = 2

    def accuracy(rows):
        acc = np.array([digit_accuracy(c, e) for c, e in zip(rows.completion, rows.expected)], dtype=float)
        return acc[:, :n_rev].mean(), acc[:, n_rev:].mean(), len(acc)

    local = df[~df.note_inserted]
    revealed, rest, n = accuracy(local)
    assert abs(revealed - rest) < 3 * math.sqrt(0.25 / (n * n_rev)) + 0.02, (revealed, rest)
    assert not local.completion.str.contains("note").any()  # the note never reaches a local completion
    rs = df[df.note_inserted]
    rs_revealed, rs_rest, _ = accuracy(rs)
    assert rs_revealed > 0.5 and rs_rest == 0.0  # RS copies the note and is never graded on the rest


def test_bad_config_stops_before_training(tmp_path, capsys):
    code = organisms_main(["train", "--out", str(tmp_path / "r"), "--p0", "1.5"])
    assert code == 2
    assert "'p0'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


class _Heard(logging.Handler):
    """Collects the messages of the logger it is attached to."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_kill_and_resume_neither_duplicates_nor_skips(tmp_path, run20, stop_after):
    cfg = OrganismConfig(**{**saved_config(run20), "model_dir": str(run20 / "model_init"),
                            "max_steps": 20})
    run_dir = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, recorder_hook=stop_after(12), log=lambda *a: None)
    assert read_manifest(run_dir).status == "failed"
    partial = read_rollouts(run_dir)
    assert partial[partial.phase == "train"].step.max() == 9  # flushed with checkpoint-10; 10-12 not yet written
    heard = _Heard()
    trainer_log = logging.getLogger("transformers.trainer")
    trainer_log.addHandler(heard)
    try:
        train(cfg, run_dir, resume=True, log=lambda *a: None)
    finally:
        trainer_log.removeHandler(heard)
    # the tied output head is not in a checkpoint; transformers' "missing keys ['lm_head.weight']" is not news
    assert not [m for m in heard.messages if "missing keys" in m], heard.messages
    assert read_manifest(run_dir).status == "finished"
    df = read_rollouts(run_dir)
    keys = df.groupby(["step", "phase", "group_id"]).size()
    assert (keys == cfg.num_generations).all()  # no (step, phase, group) duplicated
    expected = {(s, "train", g) for s in range(20) for g in range(cfg.groups_per_step)}
    expected |= {(s, "eval", g) for s in (0, 10, 20) for g in range(3 * cfg.eval_prompts_per_env)}
    assert set(keys.index) == expected  # ... nor skipped
    # same config, seed and starting weights as run20: the resumed run reproduces its rows exactly
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    order = ["step", "phase", "group_id", "env_id", "completion"]
    ours = df[cols].sort_values(order).reset_index(drop=True)
    reference = read_rollouts(run20)[cols].sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, reference)
    # resuming a finished run is a no-op: no extra step, no new rows
    before = len(df)
    train(cfg, run_dir, resume=True, log=lambda *a: None)
    assert len(read_rollouts(run_dir)) == before
    assert not (run_dir / "checkpoints" / "checkpoint-21").exists()
