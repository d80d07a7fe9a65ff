"""The GRPO phase's overhead cuts (issue 20) leave every number TRL computes unchanged, bit for bit."""

from __future__ import annotations

import pytest
import torch

from physrl.organisms import OrganismConfig, build_model, build_tokenizer, make_family


def _policy():
    config = OrganismConfig()
    tokenizer = build_tokenizer(make_family(config).words())
    return build_model(tokenizer, config.hidden_size, config.n_layers, config.n_heads, seed=3)


def test_fused_head_tile_as_wide_as_the_vocabulary_is_bit_identical():
    """TRL's chunked log-prob head at its 32768-column tile and at a tile as wide as the 27-word vocabulary:
    the same log-probs, entropies and gradients (hidden states and head weights), bit for bit."""
    chunked = pytest.importorskip("trl.kernels.chunked_logprob")
    g = torch.Generator().manual_seed(0)
    vocab = len(build_tokenizer(make_family(OrganismConfig()).words()))
    hidden0, weight0 = torch.randn(32 * 17, 64, generator=g), torch.randn(vocab, 64, generator=g)
    targets = torch.randint(0, vocab, (32 * 17,), generator=g)
    weights = torch.rand(32 * 17, generator=g)

    def run(tile):
        hidden, weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
        logp, entropy, *_ = chunked.ChunkedLogProbFunction.apply(hidden, weight, None, targets, 0.7, tile, None, 1.0,
                                                                 ("log_probs", "entropy"))
        ((logp * weights).sum() + 0.1 * entropy.sum()).backward()
        return logp.detach(), entropy.detach(), hidden.grad, weight.grad

    for wide, narrow in zip(run(32768), run(vocab)):
        assert torch.equal(wide, narrow)


def test_logprob_tile_sets_the_vocabulary_width_inside_and_restores_trls_after():
    utils = pytest.importorskip("trl.trainer.utils")
    from physrl.organisms._train import logprob_tile

    model = _policy()
    before = utils._CHUNKED_LOGPROB_CHUNK_SIZE
    with logprob_tile(model):
        assert utils._CHUNKED_LOGPROB_CHUNK_SIZE == model.lm_head.weight.shape[0] == 27
    assert utils._CHUNKED_LOGPROB_CHUNK_SIZE == before == 32768
    with pytest.raises(RuntimeError), logprob_tile(model):
        raise RuntimeError("a failed step")
    assert utils._CHUNKED_LOGPROB_CHUNK_SIZE == before
