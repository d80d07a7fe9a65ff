"""Batched generation of a population's rollouts (organisms._stacked_decode): one stacked, KV-cached decode.

Each member samples with its own RNG stream and environment, so (1) a population of one samples what the solo
sampler samples for the same model, seed and requests (the same completions, token for token; the stacked forward
sums in another order, so sampling log-probabilities agree to float rounding, <= 1e-5, not bit for bit); (2) a
member's samples in a population are its solo samples; (3) changing another member's data, seed or weights leaves
a member's samples unchanged; (4) a member whose environment raises fails alone.
"""

import numpy as np
import pytest
import torch

from physrl.organisms import OrganismConfig, build_model, build_tokenizer, make_family
from physrl.organisms._rollout import make_requests, sample_rollouts
from physrl.organisms._stacked import StackedLlama
from physrl.organisms._stacked_decode import StackedDecoder, sample_population_rollouts

CONFIG = OrganismConfig(n_envs=3, n_heldout=0, family_size=5)
FAMILY = make_family(CONFIG)
FAMILY4 = make_family(OrganismConfig(n_envs=4, n_heldout=1, seed=3, family_size=5))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(FAMILY.words())


def _models(tokenizer, seeds):
    return [build_model(tokenizer, hidden_size=32, n_layers=2, n_heads=4, seed=s) for s in seeds]


def _requests(family, seed, groups=3, generations=6):
    rng = np.random.default_rng(seed)
    envs = [family.train_envs[(seed + g) % len(family.train_envs)] for g in range(groups)]
    return make_requests(family, envs, generations, rng)


def _assert_same_samples(a, b, tol=1e-5):
    assert a["completion_ids"] == b["completion_ids"]
    assert a["env_mask"] == b["env_mask"] and a["prompt_ids"] == b["prompt_ids"] and a["prompt"] == b["prompt"]
    assert a["note_inserted"] == b["note_inserted"]
    diff = max(abs(x - y) for ra, rb in zip(a["logprobs"], b["logprobs"]) for x, y in zip(ra, rb))
    assert diff <= tol, diff


def test_a_population_of_one_samples_what_the_solo_decoder_samples(tokenizer):
    [model] = _models(tokenizer, [5])
    stacked = StackedLlama([model])
    for seed in (0, 1, 2):
        requests = _requests(FAMILY, seed)
        solo = sample_rollouts(model, tokenizer, FAMILY, requests, seed=seed, temperature=1.0)
        [batched] = sample_population_rollouts(stacked, tokenizer, [FAMILY], [requests], [seed], temperature=1.0)
        _assert_same_samples(solo, batched)
        assert any(solo["note_inserted"]), "no environment insertion exercised"


def test_stacked_decoder_logits_match_the_model_forward(tokenizer):
    """One decoder step of K = 1 against transformers' own forward on the same left-padded batch: logits within
    float rounding (the stacked forward uses bmm, not the model's Linear modules)."""
    [model] = _models(tokenizer, [1])
    model.eval()
    stacked = StackedLlama([model])
    ids = torch.tensor([[0, 0, 7, 8, 9], [5, 6, 7, 8, 9]])
    att = (torch.arange(5)[None, :] >= torch.tensor([[2], [0]])).long()
    pos = (att.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, -1]
        got = StackedDecoder(stacked, rows=2).step(ids[None], att[None], pos[None])[0]
    assert torch.allclose(got, ref, atol=1e-5), float((got - ref).abs().max())


def test_members_sample_their_solo_rollouts_and_do_not_see_each_other(tokenizer):
    models = _models(tokenizer, [0, 1, 2])
    families = [FAMILY, FAMILY4, FAMILY]
    requests = [_requests(f, s, groups=2 + s) for s, f in enumerate(families)]  # unequal batch sizes
    seeds = [10, 11, 12]
    stacked = StackedLlama(models)
    outs = sample_population_rollouts(stacked, tokenizer, families, requests, seeds)
    for k in range(3):
        solo = sample_rollouts(stacked.member(k), tokenizer, families[k], requests[k], seeds[k])
        _assert_same_samples(solo, outs[k])
    # another member's data, seed and weights changed: members 0 and 2 sample exactly what they sampled
    other = StackedLlama([models[0], _models(tokenizer, [9])[0], models[2]])
    changed = sample_population_rollouts(other, tokenizer, families,
                                         [requests[0], _requests(FAMILY4, 7, groups=5), requests[2]], [10, 99, 12])
    for k in (0, 2):
        _assert_same_samples(outs[k], changed[k], tol=1e-6)
    assert changed[1]["completion_ids"] != outs[1]["completion_ids"]
    # a member that samples nothing this step (e.g. one that failed) leaves the others unchanged too
    idle = sample_population_rollouts(stacked, tokenizer, families, [requests[0], [], requests[2]], seeds)
    assert idle[1]["completion_ids"] == []
    _assert_same_samples(outs[0], idle[0], tol=1e-6)


def test_a_member_whose_environment_raises_fails_alone(tokenizer, monkeypatch):
    from physrl.organisms._family import Interjector

    class Broken(Interjector):
        def step(self, rows, tokens):
            raise RuntimeError("environment crashed")

    class BrokenFamily:
        def __getattr__(self, name):
            return getattr(FAMILY, name)

        def interjector(self, requests, codec):
            return Broken()

    models = _models(tokenizer, [0, 1])
    requests = [_requests(FAMILY, 0), _requests(FAMILY, 1)]
    outs = sample_population_rollouts(StackedLlama(models), tokenizer, [FAMILY, BrokenFamily()], requests, [0, 1])
    assert isinstance(outs[1], RuntimeError) and "environment crashed" in str(outs[1])
    _assert_same_samples(outs[0], sample_rollouts(models[0], tokenizer, FAMILY, requests[0], 0))


def test_refuses_sequences_of_the_wrong_length(tokenizer):
    stacked = StackedLlama(_models(tokenizer, [0, 1]))
    with pytest.raises(ValueError, match="one entry per member"):
        sample_population_rollouts(stacked, tokenizer, [FAMILY], [[]], [0])
