"""The RL-algorithm knobs of organisms (issue 19): optimizer, momentum, scale_rewards, loss_type.

Validated config fields, the values TRL accepts, the optimizer the Trainer builds and records, stage 1 untouched by
them, and an SGD-with-momentum run that is killed and resumed reproducing the uninterrupted run bit for bit.
"""

import re

import pandas as pd
import pytest
import torch

from physrl.organisms import OrganismConfig, read_manifest, read_rollouts, train
from physrl.organisms._config import LOSS_TYPES, SCALE_REWARDS
from physrl.organisms._train import ResumeMismatch


@pytest.mark.parametrize("changes, message", [
    ({"optimizer": "adam"}, "'optimizer' = 'adam'; allowed 'adamw', 'sgd'"),
    ({"scale_rewards": True}, "'scale_rewards' = True; allowed 'group', 'batch', 'none'"),
    ({"scale_rewards": "std"}, "allowed 'group', 'batch', 'none'"),
    ({"loss_type": "ppo"}, "'loss_type' = 'ppo'; allowed 'dapo'"),
    ({"loss_type": "luspo"}, "needs sequence-level importance sampling"),
    ({"momentum": 0.9}, "applies to optimizer 'sgd' only"),
    ({"optimizer": "sgd", "momentum": 1.0}, "'momentum' = 1.0 is out of range; allowed [0.0, 1.0)"),
    ({"optimizer": "sgd", "momentum": -0.1}, "allowed [0.0, 1.0)"),
    ({"learning_rate": 5.0}, "'learning_rate' = 5.0 is out of range; allowed (0.0, 1.0]"),
    ({"optimizer": "sgd", "learning_rate": 5000.0}, "allowed (0.0, 1000.0]"),
])
def test_bad_algorithm_knob_names_field_and_allowed_values(changes, message):
    with pytest.raises(ValueError) as info:
        OrganismConfig(**changes)
    assert message in str(info.value)


def test_algorithm_defaults_are_trls_and_sgd_takes_large_rates():
    from trl import GRPOConfig

    cfg = OrganismConfig()
    trl_defaults = GRPOConfig(output_dir="unused", use_cpu=True, bf16=False)
    assert (cfg.optimizer, cfg.momentum) == ("adamw", 0.0)
    assert (cfg.scale_rewards, cfg.loss_type) == (trl_defaults.scale_rewards, trl_defaults.loss_type)
    sgd = OrganismConfig(optimizer="sgd", momentum=0.5, learning_rate=30.0, scale_rewards="none", loss_type="dr_grpo")
    assert sgd.to_dict()["optimizer"] == "sgd" and sgd.to_dict()["learning_rate"] == 30.0


def test_accepted_values_are_the_ones_trl_documents():
    """Every loss TRL's GRPOConfig lists is accepted, except luspo (sequence-level importance sampling);
    every scale_rewards value is one TRL's GRPOConfig documents."""
    from dataclasses import fields

    from trl import GRPOConfig

    help_text = {f.name: f.metadata.get("help", "") for f in fields(GRPOConfig)}
    listed = re.search(r"Supported values are (.*?)\. ", help_text["loss_type"]).group(1)
    trl_losses = set(re.findall(r"'(\w+)'", listed))
    assert "dapo" in trl_losses and len(trl_losses) >= 4
    assert trl_losses - {"luspo"} == set(LOSS_TYPES)
    for value in SCALE_REWARDS:
        assert f"'{value}'" in help_text["scale_rewards"] or f"{value}'" in help_text["scale_rewards"], value


def test_algorithm_knobs_do_not_enter_the_stage1_key():
    from physrl.organisms import build_model, build_tokenizer
    from physrl.organisms._stage1 import stage1_ingredients, stage1_key

    def key(cfg):
        model = build_model(build_tokenizer(cfg.n_family), cfg.hidden_size, cfg.n_layers, cfg.n_heads, seed=cfg.seed)
        return stage1_key(stage1_ingredients(cfg, model.config.to_dict(), "cpu", 1))

    base = OrganismConfig(family_size=4)
    other = base.replace(optimizer="sgd", momentum=0.9, learning_rate=10.0, scale_rewards="none", loss_type="dr_grpo")
    assert key(other) == key(base)
    assert key(base.replace(p0=0.2)) != key(base)  # the key does follow a stage-1 field


FAST = dict(n_envs=1, n_heldout=0, pretrain_steps=40, max_steps=12, eval_every=6, checkpoint_every=5,
            progress=False)


def _rows(run):
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    return read_rollouts(run)[cols].sort_values(["step", "phase", "group_id", "completion"]).reset_index(drop=True)


def _final_weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model_final" / "model.safetensors"))


def test_sgd_with_momentum_is_built_recorded_and_survives_a_resume(tmp_path, stop_after):
    """The Trainer builds torch.optim.SGD with the configured momentum (recorded in the manifest); a run killed
    after step 7 and resumed from checkpoint-5 (momentum buffers restored from optimizer.pt) ends with the
    uninterrupted run's weights and rows; dropping the momentum changes them (so the check can fail)."""
    cfg = OrganismConfig(**FAST, optimizer="sgd", momentum=0.9, learning_rate=3.0, scale_rewards="none",
                         stage1_cache=str(tmp_path / "s1"))
    whole = train(cfg, tmp_path / "whole", log=lambda *a: None)
    record = read_manifest(whole).organisms["optimizer"]
    assert record["class"] == "torch.optim.sgd.SGD"
    assert (record["lr"], record["momentum"], record["weight_decay"]) == (3.0, 0.9, 0.0)

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, killed, recorder_hook=stop_after(7), log=lambda *a: None)
    train(cfg, killed, resume=True, log=lambda *a: None)
    assert read_manifest(killed).status == "finished"
    want, got = _final_weights(whole), _final_weights(killed)
    assert all(torch.equal(want[k], got[k]) for k in want)
    pd.testing.assert_frame_equal(_rows(killed), _rows(whole))

    with pytest.raises(ResumeMismatch, match="momentum"):  # the knobs change rollouts: a resume may not switch them
        train(cfg.replace(momentum=0.5, max_steps=14), killed, resume=True, log=lambda *a: None)

    plain = train(cfg.replace(momentum=0.0), tmp_path / "plain", log=lambda *a: None)
    assert not all(torch.equal(want[k], v) for k, v in _final_weights(plain).items())


def test_default_run_records_trainers_adamw(tmp_path):
    """optimizer = adamw passes nothing: the Trainer's default AdamW (as before the field), no weight decay."""
    run = train(OrganismConfig(**{**FAST, "max_steps": 2, "eval_every": 2}, stage1_cache="off"), tmp_path / "r",
                log=lambda *a: None)
    record = read_manifest(run).organisms["optimizer"]
    assert record["class"] == "torch.optim.adamw.AdamW"
    assert (record["lr"], record["betas"], record["weight_decay"]) == (2e-4, [0.9, 0.999], 0.0)


def test_knobs_from_the_command_line(tmp_path, capsys):
    """Flags override the config file; a bad value exits 2 naming the field before anything is written."""
    import json

    from physrl.organisms.cli import main

    config = tmp_path / "c.json"
    config.write_text(json.dumps({k: v for k, v in FAST.items() if k != "progress"}))
    assert main(["train", "--out", str(tmp_path / "bad"), "--optimizer", "sgd", "--momentum", "1.5"]) == 2
    assert "'momentum' = 1.5" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    code = main(["train", "--out", str(tmp_path / "r"), "--config", str(config), "--max-steps", "2", "--no-progress",
                 "--optimizer", "sgd", "--learning-rate", "0.1", "--momentum", "0.5", "--scale-rewards", "none",
                 "--loss-type", "dr_grpo", "--stage1-cache", "off"])
    assert code == 0
    manifest = read_manifest(tmp_path / "r")
    saved = manifest.organisms["config"]
    assert (saved["optimizer"], saved["learning_rate"], saved["momentum"], saved["scale_rewards"],
            saved["loss_type"]) == ("sgd", 0.1, 0.5, "none", "dr_grpo")
    assert manifest.organisms["optimizer"]["momentum"] == 0.5
