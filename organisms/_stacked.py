"""K tiny Llama organisms as one set of stacked weights: one batched forward scores every member's completions.

A population (organisms/README.md, "Population training") keeps K members
of one architecture. :class:`StackedLlama` stacks their parameters along a
new leading axis (``torch.func.stack_module_state``: parameter ``name`` of
member k is ``params[name][k]``) and runs the Llama forward of all members at
once: every linear layer is one batched matmul over the member axis
(``torch.bmm`` with weights of shape (K, out, in)), attention one
``scaled_dot_product_attention`` call over K × batch rows. Member k's
outputs read only member k's weights and inputs, so the gradient of
``sum_k loss_k`` with respect to ``params[name][k]`` is member k's gradient
alone.

The forward is that of transformers' ``LlamaForCausalLM`` (RMSNorm in
float32, rotary positions from the model's own rotary embedding, SiLU-gated
MLP, tied or untied head), with position ids from the attention mask as
:func:`organisms._model.use_mask_positions` gives TRL's scoring pass, and
the padded causal mask of :func:`organisms._decode.padded_causal_mask`. The
per-token log-probabilities are those of TRL 1.16's fused LM head
(``trl.trainer.utils.add_fused_lm_head``): ``log_softmax(logits / T)`` in
float32 at the completion tokens, 0 at padding.

Each member also gets an ordinary transformers model whose parameters are
views of its slice of the stacked tensors (:meth:`StackedLlama.member`), so
rollouts and eval passes run through the organisms' own sampler
(:func:`organisms._rollout.sample_rollouts`) exactly as in a solo run, and
see every optimizer step without a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._decode import lean_supported, padded_causal_mask


def _check_same_architecture(models) -> None:
    if not models:
        raise ValueError("a population needs at least one member model")
    first = models[0].config.to_dict()
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "hidden_act",
            "attention_bias", "mlp_bias", "rope_parameters", "rope_theta", "head_dim")
    for i, m in enumerate(models[1:], start=1):
        other = m.config.to_dict()
        differ = [k for k in keys if first.get(k) != other.get(k)]
        if differ:
            raise ValueError(f"population member {i} has another architecture than member 0 (config keys {differ}); "
                             "members of one population must share it")
    for i, m in enumerate(models):
        if not lean_supported(m):
            raise ValueError(f"population member {i}: {type(m).__name__} is not a Llama-style decoder with full "
                             "attention; the population trainer supports the built-in tiny Llama (and Qwen2-style "
                             "configs); train other models with trainer = 'trl'")
        cfg = m.config
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise ValueError(f"population member {i}: attention or MLP biases are not supported by the stacked forward")
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"population member {i}: hidden_act {cfg.hidden_act!r}; the stacked forward implements silu")


class StackedLlama:
    """K Llama-style causal LMs of one architecture with their weights stacked (see the module docstring).

    Parameters
    ----------
    models : list of transformers Llama-style causal LMs
        The members' initial weights (e.g. their stage-1 models), all on one
        device. They are not modified; :meth:`member` returns new models.

    Attributes
    ----------
    params : dict[str, torch.Tensor]
        Leaf tensors of shape (K, *parameter shape), ``requires_grad=True``;
        tied weights (the head tied to the embeddings) appear once.
    k : int
        Number of members K.

    Raises
    ------
    ValueError
        No models, models of different architectures, or one the stacked
        forward does not implement (naming the member).
    """

    def __init__(self, models):
        from torch.func import stack_module_state

        _check_same_architecture(models)
        for m in models:  # stack_module_state wants one mode; a cached stage-1 model loads in eval mode
            m.train()
        self.k = len(models)
        self.template = models[0]
        self.config = models[0].config
        params, buffers = stack_module_state(list(models))
        self.params = params
        inner = self.template.model
        self.n_layers = len(inner.layers)
        attn = inner.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.n_heads = self.config.num_attention_heads
        self.n_kv_heads = getattr(self.config, "num_key_value_heads", self.n_heads) or self.n_heads
        self.eps = inner.norm.variance_epsilon
        self.rotary = inner.rotary_emb
        self.tied = "lm_head.weight" not in params
        #: the input embedding's padding_idx (nn.Embedding: that row gets no gradient from its use as an input)
        self.padding_idx = getattr(inner.embed_tokens, "padding_idx", None)
        self._members: list | None = None

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def parameters(self) -> list[torch.Tensor]:
        """The stacked leaf tensors, in ``params`` order (for an optimizer)."""
        return list(self.params.values())

    def n_parameters_per_member(self) -> int:
        """Distinct parameters of one member (tied weights once)."""
        return sum(p[0].numel() for p in self.params.values())

    # ---- members as ordinary models ------------------------------------------------------------------------------
    def member(self, k: int):
        """Member ``k`` as a transformers model whose parameters are views of ``params[name][k]`` (no copy).

        Its weights change with every in-place optimizer step on the stacked
        tensors; it is for sampling (no gradient flows through it).
        """
        if self._members is None:
            self._members = [None] * self.k
        if self._members[k] is None:
            import copy

            model = copy.deepcopy(self.template)
            canonical = {}
            for name, p in self.template.named_parameters(remove_duplicate=False):
                canonical.setdefault(id(p), name)
            names = {name: canonical[id(p)] for name, p in self.template.named_parameters(remove_duplicate=False)}
            shared: dict[str, torch.nn.Parameter] = {}
            for name, _ in list(model.named_parameters(remove_duplicate=False)):
                source = names[name]
                if source not in shared:
                    shared[source] = torch.nn.Parameter(self.params[source].detach()[k], requires_grad=False)
                owner, leaf = _owner(model, name)
                owner._parameters[leaf] = shared[source]
            self._members[k] = model
        return self._members[k]

    # ---- the batched forward -------------------------------------------------------------------------------------
    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self.params[name]  # (K, out, in)
        k, *rest, d = x.shape
        return torch.bmm(x.reshape(k, -1, d), w.transpose(1, 2)).reshape(k, *rest, w.shape[1])

    def _rms(self, x: torch.Tensor, name: str) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.params[name]  # (K, hidden)
        return w.reshape(w.shape[0], *([1] * (x.dim() - 2)), w.shape[1]) * h.to(dtype)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states of every member, shape (K, batch, tokens, hidden).

        ``input_ids`` and ``attention_mask``: (K, batch, tokens), left-padded
        prompts and right-padded completions as TRL lays them out, 0 at
        padding. Position ids come from the mask (cumsum - 1, clamped at 0).
        """
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        k, b, t = input_ids.shape
        embed = self.params["model.embed_tokens.weight"]  # (K, V, H)
        x = embed[torch.arange(k, device=embed.device)[:, None, None], input_ids]  # (K, B, T, H)
        if self.padding_idx is not None:  # as nn.Embedding(padding_idx): the pad id's row learns nothing as an
            # input, also where the policy sampled the pad id inside a completion (TRL's model drops that gradient)
            x = torch.where((input_ids == self.padding_idx)[..., None], x.detach(), x)
        flat_mask = attention_mask.reshape(k * b, t)
        positions = (flat_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.rotary(x.reshape(k * b, t, -1), positions)
        mask = padded_causal_mask(flat_mask, t)
        groups = self.n_heads // self.n_kv_heads
        for i in range(self.n_layers):
            pre = f"model.layers.{i}."
            h = self._rms(x, pre + "input_layernorm.weight")
            q = self._linear(h, pre + "self_attn.q_proj.weight").reshape(k * b, t, -1, self.head_dim).transpose(1, 2)
            kk = self._linear(h, pre + "self_attn.k_proj.weight").reshape(k * b, t, -1, self.head_dim).transpose(1, 2)
            v = self._linear(h, pre + "self_attn.v_proj.weight").reshape(k * b, t, -1, self.head_dim).transpose(1, 2)
            q, kk = apply_rotary_pos_emb(q, kk, cos, sin)
            if groups > 1:
                kk, v = kk.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            o = F.scaled_dot_product_attention(q, kk, v, attn_mask=mask, scale=self.scaling)
            o = o.transpose(1, 2).reshape(k, b, t, -1)
            x = x + self._linear(o, pre + "self_attn.o_proj.weight")
            h = self._rms(x, pre + "post_attention_layernorm.weight")
            gate = self._linear(h, pre + "mlp.gate_proj.weight")
            up = self._linear(h, pre + "mlp.up_proj.weight")
            x = x + self._linear(F.silu(gate) * up, pre + "mlp.down_proj.weight")
        return self._rms(x, "model.norm.weight")

    def completion_logps(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                         temperature: float = 1.0, entropy: bool = True):
        """Per-token log-probabilities (and entropies) of the last ``logits_to_keep`` tokens of every row.

        Shapes: ``input_ids``/``attention_mask`` (K, batch, tokens); returns
        ``(logps, entropies)`` of shape (K, batch, logits_to_keep), float32,
        0 where the token is padding, as TRL's
        ``_get_per_token_logps_and_entropies`` returns them for one model:
        ``log_softmax(logits * (1 / temperature))`` at the scored token.
        ``entropies`` is None unless ``entropy``.
        """
        hidden = self.hidden_states(input_ids, attention_mask)[:, :, -logits_to_keep - 1:-1]  # predict the next
        logits = self._linear(hidden, "model.embed_tokens.weight" if self.tied else "lm_head.weight")  # (K, B, C, V)
        logp_all = torch.log_softmax(logits.float() * (1.0 / temperature), dim=-1)
        targets = input_ids[:, :, -logits_to_keep:]
        logps = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        scored = attention_mask[:, :, -logits_to_keep:].bool()
        logps = logps.masked_fill(~scored, 0.0)
        ent = None
        if entropy:
            ent = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~scored, 0.0)
        return logps, ent


def _owner(model, name: str):
    *path, leaf = name.split(".")
    owner = model
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf


def state_bytes_per_member(stacked: StackedLlama, optimizer_states: int = 2) -> int:
    """Bytes one member's parameters, gradients and ``optimizer_states`` AdamW moments occupy."""
    per = sum(p[0].numel() * p.element_size() for p in stacked.params.values())
    return int(per * (2 + optimizer_states))

