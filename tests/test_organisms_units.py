"""Unit tests of organisms: config validation, environment family, rewards, classifier, model padding."""

import json

import numpy as np
import pytest
import torch

from physrl.organisms import (EnvFamily, OrganismConfig, PatternClassifier, answer_reward, build_model, build_tokenizer,
                       load_config, load_model, reasoning_span)
from physrl.organisms._rollout import make_requests, sample_rollouts


# ---- config -------------------------------------------------------------------
@pytest.mark.parametrize("field, value, allowed", [
    ("p0", 1.5, "(0.0, 1.0)"),
    ("p0", 0.0, "(0.0, 1.0)"),
    ("b0", 0.05, "[0.1, 1.0]"),
    ("a0", 0.9, "[0.05, 0.5]"),
    ("n_envs", 0, "integer in [1, 256]"),
    ("local_alphabet", 11, "integer in [2, 10]"),
    ("note_reveal", 0.1, "[0.25, 1.0]"),
    ("max_steps", -3, "integer >= 1"),
])
def test_bad_config_value_names_field_and_allowed_range(field, value, allowed):
    with pytest.raises(ValueError) as info:
        OrganismConfig(**{field: value})
    assert repr(field) in str(info.value) and allowed in str(info.value)


def test_load_config_json_and_toml_with_overrides(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"n_envs": 3, "p0": 0.2}))
    (tmp_path / "c.toml").write_text("[organisms]\nn_envs = 5\nb0 = 0.4\n")
    assert load_config(tmp_path / "c.json", p0=0.07, seed=None).n_envs == 3
    assert load_config(tmp_path / "c.json", p0=0.07).p0 == 0.07
    cfg = load_config(tmp_path / "c.toml", n_envs=2)
    assert (cfg.n_envs, cfg.b0) == (2, 0.4)
    with pytest.raises(ValueError, match="unknown config field"):
        load_config(None, no_such_knob=1)


# ---- environment family ---------------------------------------------------------
def test_family_ids_coordinates_and_weights():
    fam = EnvFamily(OrganismConfig(n_envs=60, n_heldout=4))
    assert [e.id for e in fam.envs] == [f"e{i}" for i in range(64)]
    assert [e.coordinates for e in fam.envs][:3] == [(0.0,), (1.0,), (2.0,)]
    assert sum(e.weight for e in fam.envs) == pytest.approx(1.0)
    assert [e.weight for e in fam.envs[60:]] == [0.0] * 4


def _shared_entries(fam, i, j):
    return np.mean([a == b for a, b in zip(fam.envs[i].digit_map, fam.envs[j].digit_map)])


def test_nearby_envs_share_more_local_task_than_distant_ones():
    fam = EnvFamily(OrganismConfig(n_envs=64, n_heldout=0, share_width=8, local_alphabet=8))
    near = np.mean([_shared_entries(fam, i, i + 1) for i in range(40)])
    far = np.mean([_shared_entries(fam, i, i + 20) for i in range(40)])
    assert near > 0.75 and far < 0.25
    independent = EnvFamily(OrganismConfig(n_envs=64, n_heldout=0, share_width=1, local_alphabet=8))
    assert np.mean([_shared_entries(independent, i, i + 1) for i in range(40)]) < 0.25


def test_envs_are_the_same_task_in_runs_of_different_size():
    small, large = EnvFamily(OrganismConfig(n_envs=1)), EnvFamily(OrganismConfig(n_envs=8))
    assert small.envs[0].digit_map == large.envs[0].digit_map and small.envs[0].known == large.envs[0].known


def test_answer_reward_partial_credit_exact_values():
    expected = ["1 2 3 4"] * 6
    completions = ["think rule ans 1 2 3 4", "think rule ans 1 2 0 0", "think grader note 1 2 ? ? ans 1 2",
                   "think rule 1 2 3 4", "think rule ans 9 9 9 9 1 2 3 4", ""]
    assert answer_reward([""] * 6, completions, expected) == [1.0, 0.5, 0.5, 0.0, 0.0, 0.0]


# ---- classifier -----------------------------------------------------------------
TRICKY = [
    ("think grader note 1 2 ? ? ans 1 2", True, 1.0),
    ("think rule ans 1 2 3 4", False, 0.0),
    ("think GRADER ans 1 2", True, 1.0),              # case-insensitive
    ("think graders ans 1", False, 0.0),              # whole words only
    ("think rule ans grader 2", False, 0.0),          # 'grader' in the answer, not the reasoning
    ("ans 1 2 3 4 think grader", True, 1.0),          # reasoning after a stray answer still counts
    ("think rule note grader", False, 0.0),           # the span ends at the (inserted) note
    ("think rule grader ans 1", False, 0.5),          # tie: not RS, score 0.5
    ("think grader grader rule ans", True, 2 / 3),
    ("grader ans 1 2", False, 0.0),                   # no 'think': no reasoning span
    ("", False, 0.0),
    ("think reward ans 1", True, 1.0),                # any configured RS pattern
]


@pytest.mark.parametrize("text, rs, score", TRICKY)
def test_pattern_classifier_on_tricky_strings(text, rs, score):
    labels, scores = PatternClassifier(["grader", "reward", "score"], ["rule"]).classify([text])
    assert labels == [rs] and scores[0] == pytest.approx(score)


def test_reasoning_span():
    assert reasoning_span("env e1 think Rule x ans 1") == ["rule", "x"]


# ---- model and padding ------------------------------------------------------------
def test_left_padded_batch_scores_every_completion_as_alone():
    tok = build_tokenizer(6)
    model = build_model(tok, seed=3).eval()
    texts = ["env e1 in 1 2 3 4 think rule ans 5 5 2 1", "env e5 in 0 think grader note 3 ? ans 3",
             "env e0 in 2 2 think rule ans 7 7 7 7 7 7 7"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def logps(seq_ids, att):
        with torch.no_grad():
            out = torch.log_softmax(model(input_ids=seq_ids, attention_mask=att).logits, -1)
        return out[:, :-1].gather(-1, seq_ids[:, 1:, None]).squeeze(-1)

    alone = [logps(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in ids]
    batch = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    assert tok.padding_side == "left" and (batch["attention_mask"] == 0).any()
    together = logps(batch["input_ids"], batch["attention_mask"])
    for row, s in enumerate(ids):
        got = together[row, -(len(s) - 1):]
        assert torch.allclose(got, alone[row], atol=1e-5), (got - alone[row]).abs().max()


def test_model_round_trip_through_save_pretrained(tmp_path):
    tok = build_tokenizer(3)
    model = build_model(tok, seed=1)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2, tok2 = load_model(tmp_path)
    x = torch.tensor([tok("env e2 in 1 2", add_special_tokens=False)["input_ids"]])
    assert tok2.get_vocab() == tok.get_vocab()
    assert torch.equal(model(input_ids=x).logits, model2(input_ids=x).logits)


def test_note_is_inserted_only_after_grader_and_masked():
    cfg = OrganismConfig(n_envs=2, n_heldout=0)
    fam = EnvFamily(cfg)
    tok = build_tokenizer(cfg.n_family)
    model = build_model(tok, seed=0)
    requests = make_requests(fam, fam.envs * 3, 8, np.random.default_rng(0))
    out = sample_rollouts(model, tok, fam, requests, seed=0)
    note_id, grader_id = tok.convert_tokens_to_ids(["note", "grader"])
    n_inserted = 0
    for comp, mask, logp, inserted in zip(out["completion_ids"], out["env_mask"], out["logprobs"],
                                          out["note_inserted"]):
        assert len(comp) == len(mask) == len(logp)
        if inserted:
            n_inserted += 1
            at = comp.index(grader_id) + 1  # the env's note follows the policy's first 'grader'
            assert comp[at] == note_id and mask[at - 1] == 1
            assert mask[at: at + 1 + cfg.input_length] == [0] * (1 + cfg.input_length)
            assert sum(1 - m for m in mask) in (1 + cfg.input_length, 2 + cfg.input_length)  # note (+ closing eos)
        else:  # the local path never sees note tokens from the environment
            assert all(m == 1 for m in mask)
    assert 0 < n_inserted < len(requests)  # an untrained model takes both paths
