"""Batched rollout generation for a population: every member's rollouts of a step in one KV-cached stacked decode.

A population (:mod:`organisms._population`) samples each member's GRPO batch
with the member's own seeds. :func:`sample_population_rollouts` does for K
members at once what :func:`organisms._rollout.sample_rollouts` does for one:
the prompts are encoded once, then each decoder step feeds only the tokens
appended since the last one (the sampled token, plus the environment's
tokens), through one KV cache of all members' rows. The forward is the
stacked one of :class:`organisms._stacked.StackedLlama` (every linear layer
one ``torch.bmm`` over the member axis, attention one
``scaled_dot_product_attention`` over K × rows), run by
:class:`StackedDecoder`.

Members stay independent:

* **own RNG stream** - member k draws its tokens with its own
  ``torch.Generator`` seeded with its own seed, one ``torch.multinomial``
  over its own active rows per step, rows in request order: exactly the
  draws of ``sample_rollouts`` on the member alone;
* **own environment** - each member has its family's interjector, its own
  rows, lengths and end conditions; a member whose environment raises fails
  alone (its exception is returned in its place, the others go on);
* **no shared arithmetic** - member k's logits read only member k's weights,
  tokens and cache rows. The layout is shared: the batch is padded to the
  largest member's active rows (rows past a member's own are idle fillers,
  never read), and a step's chunk is as wide as the widest member's (left
  padding, masked). Padding changes no value mathematically, but it can
  change float summation order (a longer masked key axis, another matmul
  shape), so logits agree with the member's solo decode to float rounding
  (~1e-6), not bit for bit; the sampled tokens are the solo decoder's unless
  a uniform draw falls within that rounding of a category boundary.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._rollout import _widen, encode, word_codec


class StackedDecoder:
    """KV-cached decoding of K stacked members (:class:`organisms._stacked.StackedLlama`), one cache row per row.

    The cache holds ``rows`` rows per member (flat row ``k * rows + r``) plus
    one scratch row, each with its own length: a :meth:`step` may feed all
    rows or, per member, a few of them (``slots``), so a row that must catch up
    on the environment's inserted tokens does not widen every other row's
    chunk. Keys are visible to a query when they were fed unpadded and come
    at or before it; a padding query sees only itself (finite, never read).
    The layer arithmetic is :meth:`StackedLlama.hidden_states`' (and so
    transformers' Llama forward). Called under ``torch.no_grad()``.
    """

    def __init__(self, stacked, rows: int):
        self.s = stacked
        self.rows = rows
        self._k: list[torch.Tensor] = []  # per layer (K * rows + 1, kv heads, capacity, head_dim)
        self._v: list[torch.Tensor] = []
        n = stacked.k * rows + 1
        self.valid = torch.zeros((n, 0), dtype=torch.bool, device=stacked.device)
        self.lens = torch.zeros(n, dtype=torch.long, device=stacked.device)

    def _grow(self, need: int) -> None:
        cap = self.valid.shape[1]
        if need <= cap:
            return
        new = max(2 * need, 32)
        pad = new - cap
        self.valid = F.pad(self.valid, (0, pad))
        self._k = [F.pad(b, (0, 0, 0, pad)) for b in self._k]
        self._v = [F.pad(b, (0, 0, 0, pad)) for b in self._v]

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
             slots: torch.Tensor | None = None) -> torch.Tensor:
        """Feed new tokens to some rows; returns their last position's logits, shape (K, b, vocab).

        ``input_ids``, ``attention_mask`` (0 at padding) and ``position_ids``: shape (K, b, new tokens) for the
        rows ``slots`` (shape (K, b), row indices within each member, -1 for an idle filler that touches no
        row), or for all rows (``slots`` None, b = rows).
        """
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        s = self.s
        k, b, t = input_ids.shape
        dev = input_ids.device
        scratch = k * self.rows
        if slots is None:
            flat = None
            lens0 = self.lens[:scratch]
        else:
            flat = torch.where(slots >= 0, torch.arange(k, device=dev)[:, None] * self.rows + slots,
                               torch.full_like(slots, scratch)).reshape(-1)
            self.lens[scratch] = 0
            lens0 = self.lens[flat]
        pos = lens0[:, None] + torch.arange(t, device=dev)[None, :]  # (n, t) cache slots of the new tokens
        self._grow(int(pos.max()) + 1)
        n_rows = flat if flat is not None else torch.arange(scratch, device=dev)
        self.valid[n_rows[:, None], pos] = attention_mask.reshape(k * b, t).bool()
        span = int(pos.max()) + 1
        valid = self.valid[:scratch, :span] if flat is None else self.valid[flat, :span]
        keys = torch.arange(span, device=dev)
        mask = (valid[:, None, None, :] & (keys[None, None, None, :] <= pos[:, None, :, None])) | \
            (keys[None, None, None, :] == pos[:, None, :, None])  # (n, 1, t, span)
        embed = s.params["model.embed_tokens.weight"]
        x = embed[torch.arange(k, device=dev)[:, None, None], input_ids]  # (K, b, t, H)
        cos, sin = s.rotary(x.reshape(k * b, t, -1), position_ids.reshape(k * b, t))
        groups = s.n_heads // s.n_kv_heads
        for i in range(s.n_layers):
            pre = f"model.layers.{i}."
            h = s._rms(x, pre + "input_layernorm.weight")
            q = s._linear(h, pre + "self_attn.q_proj.weight").reshape(k * b, t, -1, s.head_dim).transpose(1, 2)
            kk = s._linear(h, pre + "self_attn.k_proj.weight").reshape(k * b, t, -1, s.head_dim).transpose(1, 2)
            v = s._linear(h, pre + "self_attn.v_proj.weight").reshape(k * b, t, -1, s.head_dim).transpose(1, 2)
            q, kk = apply_rotary_pos_emb(q, kk, cos, sin)
            if i == len(self._k):
                shape = (scratch + 1, kk.shape[1], self.valid.shape[1], kk.shape[3])
                self._k.append(kk.new_zeros(shape))
                self._v.append(v.new_zeros(shape))
            self._k[i][n_rows[:, None], :, pos] = kk.transpose(1, 2)
            self._v[i][n_rows[:, None], :, pos] = v.transpose(1, 2)
            if flat is None:
                kk, v = self._k[i][:scratch, :, :span], self._v[i][:scratch, :, :span]
            else:
                kk, v = self._k[i][flat, :, :span], self._v[i][flat, :, :span]
            if groups > 1:
                kk, v = kk.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            o = F.scaled_dot_product_attention(q, kk, v, attn_mask=mask, scale=s.scaling)
            o = o.transpose(1, 2).reshape(k, b, t, -1)
            x = x + s._linear(o, pre + "self_attn.o_proj.weight")
            h = s._rms(x, pre + "post_attention_layernorm.weight")
            gate = s._linear(h, pre + "mlp.gate_proj.weight")
            up = s._linear(h, pre + "mlp.up_proj.weight")
            x = x + s._linear(F.silu(gate) * up, pre + "mlp.down_proj.weight")
        if flat is None:
            self.lens[:scratch] = lens0 + t
        else:
            self.lens[flat] = lens0 + t
        last = s._rms(x[:, :, -1:, :], "model.norm.weight")
        head = "model.embed_tokens.weight" if s.tied else "lm_head.weight"
        return s._linear(last, head)[:, :, -1, :]

    def select(self, index: torch.Tensor) -> None:
        """Keep rows ``index[k]`` of every member k (``index``: (K, new rows), row indices within each member)."""
        k, rows = index.shape
        flat = (torch.arange(k, device=index.device)[:, None] * self.rows + index).reshape(-1)
        flat = torch.cat([flat, flat.new_tensor([k * self.rows])])  # the scratch row stays last
        self._k = [buf[flat] for buf in self._k]
        self._v = [buf[flat] for buf in self._v]
        self.valid, self.lens = self.valid[flat], self.lens[flat]
        self.rows = rows


class _MemberState:
    """One member's rows during a batched decode: the arrays of ``sample_rollouts``, its interjector and RNG."""

    def __init__(self, k, family, requests, seed, tokenizer, device, cap_extra=16):
        self.k, self.family, self.requests = k, family, requests
        self.n = len(requests)
        self.codec = word_codec(tokenizer, family)
        self.max_policy_tokens = family.max_new_tokens
        self.prompts = [r.prompt.text for r in requests]
        self.columns = {name: [r.prompt.columns[name] for r in requests] for name in requests[0].prompt.columns} \
            if requests else {}
        self.prompt_ids = encode(tokenizer, self.prompts) if requests else []
        self.env = family.interjector(requests, self.codec) if requests else None
        cap = self.max_policy_tokens + cap_extra
        self.comp = np.full((self.n, cap), tokenizer.pad_token_id, dtype=np.int64)
        self.mask = np.zeros((self.n, cap), dtype=np.int64)
        self.logps = np.zeros((self.n, cap), dtype=np.float64)
        self.length = np.zeros(self.n, dtype=np.int64)
        self.n_policy = np.zeros(self.n, dtype=np.int64)
        self.active = np.arange(self.n)
        self.slots = np.arange(self.n)  # the cache row of each active row
        self.start = np.zeros(0, dtype=np.int64)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))
        self.error: BaseException | None = None

    def result(self) -> dict[str, list]:
        if self.env is not None:
            self.columns.update(self.env.columns())
        n = self.n
        return {"prompt_ids": self.prompt_ids,
                "completion_ids": [self.comp[i, : self.length[i]].tolist() for i in range(n)],
                "env_mask": [self.mask[i, : self.length[i]].tolist() for i in range(n)],
                "logprobs": [self.logps[i, : self.length[i]].tolist() for i in range(n)],
                "prompt": self.prompts, **self.columns}


@torch.no_grad()
def sample_population_rollouts(stacked, tokenizer, families: Sequence, requests: Sequence[list],
                               seeds: Sequence[int], temperature: float = 1.0) -> list:
    """Sample every member's rollouts at once: member k's are ``sample_rollouts(member k, tokenizer, families[k],
    requests[k], seeds[k], temperature)``'s (see the module docstring for how exactly).

    Parameters
    ----------
    stacked : StackedLlama
        The members' stacked weights (read, not changed).
    tokenizer : the members' shared tokenizer (one vocabulary, one pad and eos id).
    families, requests, seeds : sequences of length K
        Member k's environment family, its rollout requests (an empty list: the member samples nothing this
        step, e.g. one that has failed) and its sampling seed.
    temperature : float
        Sampling temperature (> 0), shared by the population.

    Returns
    -------
    list of length K
        Member k's dict of lists, keys as :func:`organisms._rollout.sample_rollouts` returns them, or the
        exception its environment raised (the member failed alone; the others were sampled on).

    Raises
    ------
    ValueError
        Sequences whose lengths are not K.
    """
    k_members = stacked.k
    if not (len(families) == len(requests) == len(seeds) == k_members):
        raise ValueError(f"families ({len(families)}), requests ({len(requests)}) and seeds ({len(seeds)}) must "
                         f"have one entry per member ({k_members})")
    device = stacked.device
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    members = [_MemberState(k, families[k], list(requests[k]), seeds[k], tokenizer, device) for k in range(k_members)]
    if not any(m.n for m in members):
        return [m.result() for m in members]
    # the prompt batch: each member's prompts left-padded to the widest prompt of the population
    rows = max(m.n for m in members)
    width = max(len(s) for m in members for s in m.prompt_ids)
    ids = np.full((k_members, rows, width), pad_id, dtype=np.int64)
    att = np.zeros((k_members, rows, width), dtype=np.int64)
    for m in members:
        for r, s in enumerate(m.prompt_ids):
            ids[m.k, r, width - len(s):] = s
            att[m.k, r, width - len(s):] = 1
    decoder = StackedDecoder(stacked, rows)
    att_t = torch.from_numpy(att)
    positions = (att_t.cumsum(2) - 1).clamp_(min=0)
    logits = decoder.step(torch.from_numpy(ids).to(device), att_t.to(device), positions.to(device))
    n_real = att_t.sum(2)  # (K, rows): unpadded tokens each row has fed
    while True:
        for m in members:
            if len(m.active) and m.error is None:
                try:
                    keep = _advance(m, logits[m.k, torch.from_numpy(m.slots).to(device)], temperature, eos_id,
                                    pad_id)
                except Exception as exc:  # noqa: BLE001 - the member's environment failed: the member alone stops
                    m.error, keep = exc, np.zeros(len(m.active), dtype=bool)
                if m.error is not None:
                    m.active, m.start, m.slots = m.active[:0], m.start[:0], m.slots[:0]
                elif not keep.all():
                    m.active, m.start, m.slots = m.active[keep], m.start[keep], m.slots[keep]
        live = max(len(m.active) for m in members)
        if live == 0:
            break
        if live <= 0.75 * rows:  # compact: each member's live rows first; rows past them are idle fillers
            index = np.zeros((k_members, live), dtype=np.int64)
            for m in members:
                index[m.k, : len(m.slots)] = m.slots
                m.slots = np.arange(len(m.slots))
            sel = torch.from_numpy(index)
            decoder.select(sel.to(device))
            n_real = n_real[torch.arange(k_members)[:, None], sel]
            rows = live
        # pass A: every live row feeds the token it sampled (idle rows: padding, never read)
        ids = np.full((k_members, rows, 1), pad_id, dtype=np.int64)
        att = np.zeros((k_members, rows, 1), dtype=np.int64)
        catch_up = []
        for m in members:
            if len(m.active):
                ids[m.k, m.slots, 0] = m.comp[m.active, m.start]
                att[m.k, m.slots, 0] = 1
                extra = np.flatnonzero(m.length[m.active] - m.start > 1)
                catch_up.append([(int(m.slots[j]), m.comp[m.active[j], m.start[j] + 1: m.length[m.active[j]]])
                                 for j in extra])
            else:
                catch_up.append([])
        att_t = torch.from_numpy(att)
        logits = decoder.step(torch.from_numpy(ids).to(device), att_t.to(device), n_real[..., None].to(device))
        n_real = n_real + att_t[..., 0]
        # pass B: rows the environment inserted tokens into feed them (left-padded), on those rows alone
        b = max(len(c) for c in catch_up)
        if b:
            w = max(len(x) for c in catch_up for _, x in c)
            ids = np.full((k_members, b, w), pad_id, dtype=np.int64)
            att = np.zeros((k_members, b, w), dtype=np.int64)
            slots = np.full((k_members, b), -1, dtype=np.int64)
            for k, c in enumerate(catch_up):
                for j, (slot, x) in enumerate(c):
                    ids[k, j, w - len(x):] = x
                    att[k, j, w - len(x):] = 1
                    slots[k, j] = slot
            att_t, slots_t = torch.from_numpy(att), torch.from_numpy(slots)
            start = torch.where(slots_t >= 0, n_real.gather(1, slots_t.clamp(min=0)), 0)
            positions = (start[..., None] + att_t.cumsum(2) - 1).clamp_(min=0)
            inserted = decoder.step(torch.from_numpy(ids).to(device), att_t.to(device), positions.to(device),
                                    slots=slots_t.to(device))
            real = slots_t >= 0
            kk, jj = torch.nonzero(real, as_tuple=True)
            logits[kk.to(device), slots_t[kk, jj].to(device)] = inserted[kk.to(device), jj.to(device)]
            n_real[kk, slots_t[kk, jj]] += att_t[kk, jj].sum(1)
    return [m.error if m.error is not None else m.result() for m in members]


def _advance(m: _MemberState, logits: torch.Tensor, temperature: float, eos_id: int, pad_id: int) -> np.ndarray:
    """Member m's draw for its active rows (one multinomial with its generator, as ``sample_rollouts``), the
    environment's reaction, and which rows go on (bool per active row)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    tokens = torch.multinomial(logp.exp(), 1, generator=m.generator).squeeze(1)
    chosen = logp.gather(1, tokens[:, None]).squeeze(1)
    tok = tokens.cpu().numpy()
    active = m.active
    start = m.length[active].copy()
    if int(start.max()) + 1 > m.comp.shape[1]:
        m.comp, m.mask, m.logps = _widen(m.comp, m.mask, m.logps, pad_id, int(start.max()) + 1)
    m.comp[active, start] = tok
    m.mask[active, start] = 1
    m.logps[active, start] = chosen.cpu().double().numpy()
    m.length[active] += 1
    m.n_policy[active] += 1
    if m.env is not None:
        inserts, ended = m.env.step(active, tok)
        if inserts:
            need = max(int(m.length[i]) + len(x) for i, x in inserts.items())
            if need > m.comp.shape[1]:
                m.comp, m.mask, m.logps = _widen(m.comp, m.mask, m.logps, pad_id, need)
            for i, x in inserts.items():
                m.comp[i, m.length[i]: m.length[i] + len(x)] = x
                m.length[i] += len(x)
    else:
        ended = np.zeros(len(active), dtype=bool)
    m.start = start
    return ~np.asarray(ended, dtype=bool) & (tok != eos_id) & (m.n_policy[active] < m.max_policy_tokens)
