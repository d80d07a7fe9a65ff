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


def test_rotary_table_rows_equal_the_rotary_embedding_at_any_batch_shape():
    """The direct decoder step's table of cos / sin per position equals the model's rotary embedding, bit for bit."""
    from physrl.organisms._decode import CachedDecoder

    model = _policy()
    dec = CachedDecoder(model, lean=True)
    g = torch.Generator().manual_seed(1)
    for shape in [(32, 7), (32, 1), (5, 3), (192, 2), (1, 40)]:
        positions = torch.randint(0, 90, shape, generator=g)
        x = torch.zeros(*shape, 64)
        cos, sin = dec._rotary(x, positions)
        want_cos, want_sin = model.model.rotary_emb(x, positions)
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin), shape


def test_direct_decoder_step_equals_the_module_calls_bit_for_bit():
    """A cached decode (left-padded prompts, ragged chunks, rows dropped) through the direct step and through the
    module calls: the same logits at every step."""
    from physrl.organisms._decode import CachedDecoder

    model = _policy().eval()
    direct, modules = CachedDecoder(model, lean=True), CachedDecoder(model, lean=True)
    modules._direct = False
    assert direct._direct and direct.path == "lean"
    ids = torch.tensor([[3, 21, 4, 11, 12, 13, 14], [0, 0, 3, 22, 4, 15, 16], [0, 3, 23, 4, 17, 18, 19]])
    att = (ids != 0).long()
    chunks = [torch.tensor([[5], [6], [7]]), torch.tensor([[0, 8], [9, 10], [0, 11]]), torch.tensor([[12], [13]])]
    with torch.no_grad():
        first = (ids, att, (att.cumsum(1) - 1).clamp(min=0))
        assert torch.equal(direct.step(*first), modules.step(*first))
        mask, n_real = att, att.sum(1)
        for chunk in chunks:
            if len(chunk) < len(mask):  # the last row ended: dropped from both caches
                for dec in (direct, modules):
                    dec.select(torch.tensor([0, 1]))
                mask, n_real = mask[:2], n_real[:2]
            cm = (chunk != 0).long()
            cm[:, -1] = 1
            mask = torch.cat([mask, cm], 1)
            args = (chunk, mask, (n_real[:, None] + cm.cumsum(1) - 1).clamp(min=0))
            n_real = n_real + cm.sum(1)
            assert torch.equal(direct.step(*args), modules.step(*args))


def test_sampling_logprobs_go_to_trl_only_where_its_loss_reads_them():
    """None (TRL skips converting them) for a GRPOTrainer without vLLM or the off-policy mask, the organisms' runs;
    the log-probs for vLLM, an off-policy threshold, or anything that is not a GRPOTrainer."""
    from trl import GRPOTrainer

    from physrl.organisms._train import reads_sampling_logprobs

    def trainer(**attrs):
        t = object.__new__(GRPOTrainer)
        t.__dict__.update(attrs)
        return t

    assert not reads_sampling_logprobs(trainer(use_vllm=False, off_policy_mask_threshold=None))
    assert reads_sampling_logprobs(trainer(use_vllm=True, off_policy_mask_threshold=None))
    assert reads_sampling_logprobs(trainer(use_vllm=False, off_policy_mask_threshold=0.5))
    assert reads_sampling_logprobs(trainer(use_vllm=False))  # a TRL without the setting: keep them
    assert reads_sampling_logprobs(object())
