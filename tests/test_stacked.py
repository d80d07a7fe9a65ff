"""StackedLlama's gradient equals transformers' own model's where a completion holds the pad id as a policy token.

Found by benchmarks/population_equivalence.py's teacher-forced replay (seed 0, update 80): the sampler can draw the
pad id inside a completion (``think <pad> ...``, attention mask 1 there). transformers' Llama embeds inputs with
``nn.Embedding(padding_idx=pad_token_id)``, which gives the pad row no gradient from that input use; the stacked
forward's plain indexing gave it one (3.3% relative gradient difference, all in that row), so a member's weights
left its solo run's at that step. Right padding alone never showed it: padded positions are not attended by
scored ones.
"""

from __future__ import annotations

import pytest
import torch


def _reference_grads(model, ids, mask, keep):
    """Gradients of the sum of the completion tokens' log-probabilities through transformers' forward."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -keep - 1:-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, -keep:, None]).squeeze(-1)
    (logp * mask[:, -keep:]).sum().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("pad_inside", [True, False])
def test_pad_id_as_policy_token_gets_transformers_gradient(pad_inside):
    from physrl.organisms import OrganismConfig, build_tokenizer, make_family
    from physrl.organisms._model import build_model, use_mask_positions
    from physrl.organisms._stacked import StackedLlama

    torch.manual_seed(0)
    family = make_family(OrganismConfig())
    tokenizer = build_tokenizer(family.words())
    pad = tokenizer.pad_token_id
    model = build_model(tokenizer, 32, 2, 4, seed=3)
    assert model.model.embed_tokens.padding_idx == pad
    use_mask_positions(model)
    prompt = [[pad, 5, 6, 7], [8, 9, 10, 11]]  # the first row left-padded
    completion = [[12, pad if pad_inside else 13, 14, 15, 16], [17, 18, pad, pad, pad]]  # the second right-padded
    ids = torch.tensor([p + c for p, c in zip(prompt, completion)])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 0]])
    keep = 5
    want = _reference_grads(model, ids, mask, keep)
    stacked = StackedLlama([model])
    logps, _ = stacked.completion_logps(ids[None], mask[None], keep)
    logps.sum().backward()
    embed = "model.embed_tokens.weight"
    got = stacked.params[embed].grad[0]
    torch.testing.assert_close(got, want[embed], rtol=1e-4, atol=1e-7)
    if pad_inside:  # the row that differed: the pad row's gradient is the tied head's alone
        assert want[embed][pad].abs().max() > 0
        torch.testing.assert_close(got[pad], want[embed][pad], rtol=1e-4, atol=1e-8)
    for name, g in want.items():
        if name in stacked.params:
            torch.testing.assert_close(stacked.params[name].grad[0], g, rtol=1e-4, atol=1e-7)
