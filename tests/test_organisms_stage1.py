"""Stage 1: fast demo batches, the stage-1 cache (key, hits, races) and the fixed-family design."""

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from physrl.organisms import (EnvFamily, OrganismConfig, build_model, build_tokenizer, load_model, pretrain,
                              read_manifest, train)
from physrl.organisms.families.digit_map.stage1 import _DemoTokens, demo_mixture, make_demo
from physrl.organisms._stage1 import STAGE1_FIELDS, Stage1Cache, cache_dir, stage1_ingredients, stage1_key

TINY = dict(n_envs=2, n_heldout=1, pretrain_steps=30, max_steps=4, eval_every=2, checkpoint_every=50,
            progress=False, seed=3)


def test_demo_batches_equal_make_demo():
    """The token-id demos draw exactly what make_demo draws (same words, same generator state after)."""
    for cfg in (OrganismConfig(), OrganismConfig(n_envs=5, n_heldout=0, local_alphabet=5, b0=0.6, a0=0.3)):
        family = EnvFamily(cfg)
        tok = build_tokenizer(cfg.n_family)
        vocab = tok.get_vocab()
        mixture = demo_mixture(cfg, family)
        fast, slow = np.random.default_rng(11), np.random.default_rng(11)
        demos = _DemoTokens(family, vocab)
        for _ in range(500):
            prompt, completion, rs = demos.demo(fast, mixture)
            words = make_demo(family, slow, mixture)
            assert prompt == [vocab[w] for w in words[0]]
            assert completion == [vocab[w] for w in words[1] + words[2]] and rs == (words[1][1] == "grader")
        assert fast.random() == slow.random()


# ---- what stage 1 depends on ---------------------------------------------------------------------------------
def _key(cfg):
    tok = build_tokenizer(cfg.n_family)
    model = build_model(tok, cfg.hidden_size, cfg.n_layers, cfg.n_heads, seed=cfg.seed)
    return stage1_key(stage1_ingredients(cfg, model.config.to_dict(), "cpu", 1))


def test_stage1_key_follows_every_ingredient_and_nothing_else():
    base = OrganismConfig(family_size=6)
    key = _key(base)
    changed = {"seed": 1, "family_seed": 7, "input_length": 6, "local_alphabet": 4, "share_width": 2,
               "note_reveal": 0.75, "p0": 0.2, "a0": 0.4, "b0": 0.4, "pretrain_steps": 10, "pretrain_batch_size": 8,
               "pretrain_lr": 1e-3, "hidden_size": 32, "n_layers": 1, "n_heads": 2}
    assert set(changed) == set(STAGE1_FIELDS)
    for name, value in changed.items():
        assert _key(base.replace(**{name: value})) != key, name
    assert _key(base.replace(family_size=7)) != key  # K
    # GRPO-only fields and the split of the family into trained / held out do not enter
    for name, value in {"n_envs": 1, "learning_rate": 1e-3, "max_steps": 9, "eval_every": 5, "temperature": 0.7,
                        "stage1_cache": "off", "num_generations": 4}.items():
        assert _key(base.replace(**{name: value})) == key, name
    assert _key(OrganismConfig(n_envs=2, n_heldout=4)) == _key(OrganismConfig(n_envs=6, n_heldout=0))


def test_stage1_does_not_depend_on_which_envs_are_trained():
    """N = 1 and N = 4 of one family (K = 4) pretrain to the same weights, bit for bit."""
    states = []
    for n in (1, 4):
        cfg = OrganismConfig(n_envs=n, family_size=4, pretrain_steps=15)
        family = EnvFamily(cfg)
        tok = build_tokenizer(cfg.n_family)
        model = build_model(tok, seed=cfg.seed)
        pretrain(model, tok, cfg, family)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_family_size_sets_heldout_and_is_validated():
    cfg = OrganismConfig(n_envs=3, family_size=8)
    assert (cfg.n_heldout, cfg.n_family) == (5, 8)
    assert cfg.replace(n_envs=8).n_heldout == 0
    assert [e.weight for e in EnvFamily(cfg).envs] == [1 / 3] * 3 + [0.0] * 5
    with pytest.raises(ValueError, match="'family_size'"):
        OrganismConfig(n_envs=4, family_size=3)
    assert OrganismConfig(n_envs=4, n_heldout=3).n_family == 7  # family_size 0: K = n_envs + n_heldout


# ---- the cache ---------------------------------------------------------------------------------------------------
def _rows(run_dir):
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs"]
    return pd.concat([pd.read_parquet(p) for p in sorted((Path(run_dir) / "rollouts").glob("part-*.parquet"))])[
        cols].sort_values(["step", "phase", "group_id", "completion"]).reset_index(drop=True)


def test_cache_hit_gives_the_cold_run(tmp_path):
    cold = train(OrganismConfig(**TINY), tmp_path / "a", log=lambda *a: None)
    hit = train(OrganismConfig(**{**TINY, "n_envs": 3, "n_heldout": 0}), tmp_path / "b", log=lambda *a: None)
    off = train(OrganismConfig(**{**TINY, "stage1_cache": "off"}), tmp_path / "sub" / "c", log=lambda *a: None)
    s_cold, s_hit, s_off = (read_manifest(r).organisms["stage1"] for r in (cold, hit, off))
    assert (s_cold["cache"], s_hit["cache"], s_off["cache"]) == ("miss", "hit", "off")
    assert s_cold["key"] == s_hit["key"] == s_off["key"] and s_hit["seconds"] == 0.0
    assert not (tmp_path / "sub" / ".stage1_cache").exists()
    entries = [p for p in (tmp_path / ".stage1_cache").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in entries] == [s_cold["key"]]
    assert json.loads((entries[0] / "stage1.json").read_text())["ingredients"]["n_family"] == 3
    for run in (hit, off):
        a, _ = load_model(cold / "model_init")
        b, _ = load_model(run / "model_init")
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    pd.testing.assert_frame_equal(_rows(cold), _rows(off))  # same config, cache on or off: same rollouts
    rows_hit = _rows(hit)
    assert set(rows_hit[rows_hit.phase == "train"].env_id) == {"e0", "e1", "e2"}  # N = 3 trained on the cached model
    step0 = [r[(r.phase == "eval") & (r.step == 0)].reset_index(drop=True) for r in (_rows(cold), rows_hit)]
    pd.testing.assert_frame_equal(*step0)  # step-0 eval on all K envs: same model, same draws


def _race_worker(root, barrier, out):
    """Publish one key at the same moment as the other worker, then both ask for one stage-1 model."""
    from physrl.organisms._train import _stage1_model

    torch.set_num_threads(1)
    tok = build_tokenizer(2)
    model = build_model(tok, hidden_size=16, n_layers=1, n_heads=2, seed=0)
    barrier.wait()
    out.put(("publish", str(Stage1Cache(Path(root) / "raw").publish("k" * 24, model, tok, {"worker": True}))))
    cfg = OrganismConfig(n_envs=1, n_heldout=1, pretrain_steps=5, hidden_size=16, n_heads=2, n_layers=1,
                         stage1_cache=str(Path(root) / "locked"))
    barrier.wait()
    _, _, info = _stage1_model(cfg, EnvFamily(cfg), Path(root) / "run", torch.device("cpu"), log=lambda *a: None)
    out.put(("locked", info["cache"]))


def test_two_workers_racing_both_end_with_a_valid_model(tmp_path):
    """Two processes: a raw publish race on one key, then two runs needing one stage-1 model at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path), barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [out.get(timeout=5) for _ in range(4)]
    entry = tmp_path / "raw" / ("k" * 24)
    assert sorted(v for k, v in got if k == "publish") == [str(entry)] * 2  # both got the one entry
    model, tok = load_model(entry)
    assert model.config.hidden_size == 16 and len(tok) == len(build_tokenizer(2))
    assert [p.name for p in (tmp_path / "raw").iterdir() if p.name.endswith(".tmp")] == []
    locked = sorted(v for k, v in got if k == "locked")
    try:
        import fcntl  # noqa: F401 - the per-key lock: the second worker waits and loads the first one's model
        assert locked == ["hit", "miss"]
    except ImportError:  # pragma: no cover - no lock: both pretrain, the cache stays valid
        assert locked in (["hit", "miss"], ["miss", "miss"])


def test_cache_dir_setting(tmp_path):
    assert cache_dir("auto", tmp_path / "runs" / "r1") == (tmp_path / "runs" / ".stage1_cache").resolve()
    assert cache_dir("off", tmp_path / "r") is None
    assert cache_dir(str(tmp_path / "c"), tmp_path / "r") == tmp_path / "c"
    with pytest.raises(ValueError, match="'stage1_cache'"):
        OrganismConfig(stage1_cache="")
