"""Rollout generation through a KV cache samples what recomputing the whole prefix samples, row for row.

The reference below is the generation loop of commit 08702a2 (every step
re-runs the model on prompt + completion so far, left-padded), with position
ids taken from the attention mask. ``sample_rollouts`` (cached, lean or
through the model's own forward) must draw the same tokens from the same
seed; log-probabilities agree to float rounding.
"""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from physrl.organisms import EnvFamily, OrganismConfig, build_model, build_tokenizer, pretrain
from physrl.organisms._decode import CachedDecoder, lean_supported
from physrl.organisms.families.digit_map.words import ANS, GRADER
from physrl.organisms._rollout import encode, make_requests, sample_rollouts


@torch.no_grad()
def recompute_rollouts(model, tokenizer, family, requests, seed, temperature=1.0):
    """08702a2's loop: no cache, the whole left-padded prefix every token (positions from the mask)."""
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    grader_id, ans_id = tokenizer.convert_tokens_to_ids([GRADER, ANS])
    max_policy_tokens = family.config.input_length + 6
    digits = [r.prompt.state[0] for r in requests]
    prompts = [family.prompt(r.env, d) for r, d in zip(requests, digits)]
    expected = [family.expected(r.env, d) for r, d in zip(requests, digits)]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    notes = [tokenizer(" ".join(family.note_words(e, family.note_positions())), add_special_tokens=False)["input_ids"]
             for e in expected]
    n = len(requests)
    comp, mask, logps = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
    inserted, answered, n_policy, n_after_ans = [False] * n, [False] * n, [0] * n, [0] * n
    active = list(range(n))
    generator = torch.Generator()
    generator.manual_seed(seed)
    model.eval()
    while active:
        seqs = [prompt_ids[i] + comp[i] for i in active]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s):] = torch.tensor(s)
            att[row, width - len(s):] = 1
        positions = (att.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=att, position_ids=positions, use_cache=False).logits[:, -1, :]
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        chosen = logp.gather(1, tokens[:, None]).squeeze(1)
        still = []
        for row, i in enumerate(active):
            tok = int(tokens[row])
            comp[i].append(tok)
            mask[i].append(1)
            logps[i].append(float(chosen[row]))
            n_policy[i] += 1
            if answered[i] and inserted[i]:
                n_after_ans[i] += 1
            answered[i] = answered[i] or tok == ans_id
            if tok == grader_id and not inserted[i] and not answered[i]:
                comp[i].extend(notes[i])
                mask[i].extend([0] * len(notes[i]))
                logps[i].extend([0.0] * len(notes[i]))
                inserted[i] = True
            if inserted[i] and n_after_ans[i] >= family.n_reveal and tok != eos_id:
                comp[i].append(eos_id)
                mask[i].append(0)
                logps[i].append(0.0)
            elif tok != eos_id and n_policy[i] < max_policy_tokens:
                still.append(i)
        active = still
    return {"prompt_ids": prompt_ids, "completion_ids": comp, "env_mask": mask, "logprobs": logps,
            "prompt": prompts, "expected": expected, "note_inserted": inserted}


class UnevenPrompts(EnvFamily):
    """Odd envs repeat their id in the prompt, so a batch's prompts differ in length (left padding)."""

    @staticmethod
    def prompt(env, digits):
        words = ["env", env.id] + ([env.id] if env.index % 2 else []) + ["in", *map(str, digits)]
        return " ".join(words)


@pytest.fixture(scope="module")
def pretrained():
    """A briefly pretrained organism (peaked path choice, some copying), its family and tokenizer."""
    cfg = OrganismConfig(n_envs=3, n_heldout=1, pretrain_steps=80, seed=4)
    family = EnvFamily(cfg)
    tok = build_tokenizer(cfg.n_family)
    model = build_model(tok, seed=cfg.seed)
    pretrain(model, tok, cfg, family)
    return model, tok, family


def assert_same_rollouts(got, want):
    for key in ("prompt_ids", "completion_ids", "env_mask", "prompt", "expected", "note_inserted"):
        assert got[key] == want[key], key
    diff = max(abs(a - b) for x, y in zip(got["logprobs"], want["logprobs"]) for a, b in zip(x, y))
    assert diff < 1e-4, diff


@pytest.mark.parametrize("decoder", ["auto", "hf"])
def test_cached_rollouts_equal_recomputed_rollouts(pretrained, decoder):
    model, tok, family = pretrained
    n_rs = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        envs = family.envs * 4 if seed % 2 else [family.envs[(seed + g) % 3] for g in range(4)]  # eval- / train-like
        requests = make_requests(family, envs, 8, rng)
        want = recompute_rollouts(model, tok, family, requests, seed=100 + seed)
        got = sample_rollouts(model, tok, family, requests, seed=100 + seed, decoder=decoder)
        assert_same_rollouts(got, want)
        n_rs += sum(got["note_inserted"])
    assert n_rs > 10  # the note insertion (chunks of several tokens through the cache) was exercised


@pytest.mark.parametrize("decoder", ["auto", "hf"])
def test_left_padded_prompts_through_the_cache(pretrained, decoder):
    model, tok, _ = pretrained
    family = UnevenPrompts(OrganismConfig(n_envs=3, n_heldout=1))
    requests = make_requests(family, family.envs * 3, 8, np.random.default_rng(1))
    assert len({len(encode(tok, [r.prompt.text])[0]) for r in requests}) == 2
    assert_same_rollouts(sample_rollouts(model, tok, family, requests, seed=5, decoder=decoder),
                         recompute_rollouts(model, tok, family, requests, seed=5))


def test_absolute_position_model_through_the_cache():
    """GPT-2 (learned absolute positions): position ids from the mask keep left-padded rows exact."""
    family = UnevenPrompts(OrganismConfig(n_envs=2, n_heldout=0))
    tok = build_tokenizer(2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                       bos_token_id=tok.eos_token_id))
    assert not lean_supported(model)
    requests = make_requests(family, family.envs * 4, 8, np.random.default_rng(2))
    assert_same_rollouts(sample_rollouts(model, tok, family, requests, seed=9),
                         recompute_rollouts(model, tok, family, requests, seed=9))


def test_lean_step_matches_the_model_forward(pretrained):
    """One cached step of the lean path against the model's forward on the full left-padded sequence."""
    model, tok, _ = pretrained
    assert lean_supported(model)
    ids = torch.tensor([[3, 21, 4, 11, 12, 13, 14], [0, 0, 3, 22, 4, 15, 16]])
    att = (ids != 0).long()
    nxt = torch.tensor([[5], [5]])
    full_ids, full_att = torch.cat([ids, nxt], 1), torch.cat([att, torch.ones(2, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        want = model(input_ids=full_ids, attention_mask=full_att,
                     position_ids=(full_att.cumsum(1) - 1).clamp(min=0)).logits[:, -1]
        dec = CachedDecoder(model, lean=True)
        dec.step(ids, att, (att.cumsum(1) - 1).clamp(min=0))
        got = dec.step(nxt, full_att, full_att.sum(1, keepdim=True) - 1)
    assert dec.path == "lean"
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_word_level_fast_encoding_equals_the_tokenizer():
    tok = build_tokenizer(12)
    texts = ["env e11 in 1 2 3 4", "note 5 ? ? ?", "think grader zzz ans 1"]
    assert encode(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]


def test_short_run_rows_equal_08702a2(tmp_path):
    """A short run (stage 1 + GRPO + eval) logs the rows the code of commit 08702a2 logged (data/reference)."""
    import json
    from pathlib import Path

    import pandas as pd

    from physrl.organisms import read_rollouts, train
    from physrl.organisms._train import versions

    ref = Path(__file__).resolve().parents[1] / "data" / "reference" / "organisms-08702a2"
    meta = json.loads((ref / "meta.json").read_text())
    now = versions()
    differ = {k: (meta["versions"][k], now[k]) for k in ("torch", "transformers", "trl", "numpy", "tokenizers")
              if meta["versions"][k] != now[k]}
    if differ:
        pytest.skip(f"library versions differ from the reference's (recorded, now): {differ}")
    run = train(OrganismConfig(**meta["config"], stage1_cache="off"), tmp_path / "run", log=lambda *a: None)
    cols = ["step", "phase", "env_id", "group_id", "prompt", "completion", "reward", "rs", "rs_score", "expected",
            "note_inserted", "note_positions"]
    got = read_rollouts(run)[cols].sort_values(["step", "phase", "group_id", "completion"]).reset_index(drop=True)
    want = pd.read_csv(ref / "rows.csv.gz", keep_default_na=False)
    assert len(got) == meta["rows"] == len(want)
    for col in cols:
        if col in ("reward", "rs_score"):
            assert (got[col].to_numpy() == want[col].to_numpy()).all(), col
        else:
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col
