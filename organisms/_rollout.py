"""Sampling rollouts with the environment in the loop (e.g. the digit-map family's grader note).

A rollout is generated token by token from a left-padded batch. After each
sampled token the family's :class:`~physrl.organisms.Interjector` (if it has
one) may append tokens of its own to a completion (the digit-map family: the
grader note after the policy's ``grader``, an eos once the grader has read
the answer it accepts) and may end it; those tokens carry ``env_mask = 0``
and log-probability 0 (they are not the policy's tokens) and the policy then
continues. This is how GRPOTrainer's ``rollout_func`` is fed (TRL docs,
GRPOTrainer ``rollout_func``: returns ``prompt_ids``, ``completion_ids``,
``logprobs``; extra keys such as ``env_mask`` and the columns used by reward
functions are forwarded).

:func:`measure_knobs` samples this way on every environment to measure the
step-0 knobs p, a, b (docs/model.md section 6 estimators). Token ids and
seeds come from the leaves :mod:`._tokens` and :mod:`._seeds` (re-exported
here for the trainer).
"""

from __future__ import annotations

import numpy as np
import torch

from ._config import OrganismConfig
from ._decode import CachedDecoder
from ._family import EnvironmentFamily, RolloutRequest
from ._seeds import stream_seed as stream_seed
from ._tokens import WordCodec as WordCodec, decode as decode, encode as encode, word_codec as word_codec

PHASE_CODE = {"train": 0, "eval": 1, "measure": 2}


def make_requests(family: EnvironmentFamily, envs: list, n_generations: int, rng: np.random.Generator,
                  first_group: int = 0) -> list[RolloutRequest]:
    """``len(envs)`` GRPO groups of ``n_generations`` requests each (one prompt per group, drawn with ``rng``)."""
    out = []
    for g, env in enumerate(envs):
        prompt = family.sample_prompt(env, rng)
        out += [RolloutRequest(env, prompt, first_group + g) for _ in range(n_generations)]
    return out


@torch.no_grad()
def sample_rollouts(model, tokenizer, family: EnvironmentFamily, requests: list[RolloutRequest], seed: int,
                    temperature: float = 1.0, decoder: str = "auto") -> dict[str, list]:
    """Sample one completion per request, the family's environment in the loop.

    Returns a dict of lists, one entry per request: ``prompt_ids``,
    ``completion_ids`` (policy and environment tokens), ``env_mask`` (1 policy,
    0 environment), ``logprobs`` (sampling log-probability per completion
    token, 0 for environment tokens), ``prompt`` (text), and one list per
    column of the family (the prompts' columns, then its interjector's, e.g.
    ``expected``, ``note_positions``, ``note_inserted`` for the digit-map
    family). Deterministic given the model's weights, the requests and ``seed``.

    Generation runs through a KV cache (:class:`organisms._decode.CachedDecoder`;
    ``decoder="auto"`` uses its lean Llama path where verified, ``"hf"`` the
    model's own forward with a ``DynamicCache``): the
    prompt batch (left-padded) is encoded once, then each step feeds only the
    tokens appended since the last step, i.e. the sampled token, plus the
    environment's tokens for a row it has just inserted into (they go through
    the cache like the policy's). A step whose rows append different numbers
    of tokens is left-padded inside the chunk; position ids come from the
    attention mask. Rows that have ended are dropped from the cache. The draws
    are those of the cache-free loop (one ``torch.multinomial`` over the
    active rows per step, rows in request order), so completions equal the
    recomputing loop's token for token; sampling log-probabilities agree to
    float rounding (~1e-6).
    """
    if decoder not in ("auto", "hf"):
        raise ValueError(f"decoder = {decoder!r}; allowed 'auto' or 'hf'")
    device = next(model.parameters()).device
    codec = word_codec(tokenizer, family)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    max_policy_tokens = family.max_new_tokens
    prompts = [r.prompt.text for r in requests]
    n = len(requests)
    if n == 0:
        return {"prompt_ids": [], "completion_ids": [], "env_mask": [], "logprobs": [], "prompt": [],
                **{name: [] for name in family.columns}}
    columns = {name: [r.prompt.columns[name] for r in requests] for name in requests[0].prompt.columns}
    prompt_ids = encode(tokenizer, prompts)
    env = family.interjector(requests, codec)
    # per-row state (numpy: cheap element-wise bookkeeping over the active rows)
    cap = max_policy_tokens + 16
    comp = np.full((n, cap), pad_id, dtype=np.int64)
    mask = np.zeros((n, cap), dtype=np.int64)
    logps = np.zeros((n, cap), dtype=np.float64)
    length = np.zeros(n, dtype=np.int64)
    n_policy = np.zeros(n, dtype=np.int64)
    # the prompt batch, left-padded
    width = max(map(len, prompt_ids))
    ids = np.full((n, width), pad_id, dtype=np.int64)
    att = np.zeros((n, width), dtype=np.int64)
    for row, s in enumerate(prompt_ids):
        ids[row, width - len(s):] = s
        att[row, width - len(s):] = 1
    active = np.arange(n)
    chunk = torch.from_numpy(ids)
    chunk_mask = torch.from_numpy(att)
    past_mask = chunk_mask[:, :0]
    n_real = torch.zeros(n, dtype=torch.long)  # real (unpadded) tokens each active row has in the cache
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    was_training = model.training
    model.eval()
    cached = CachedDecoder(model, lean=decoder == "auto")
    try:
        while len(active):
            full_mask = torch.cat([past_mask, chunk_mask], dim=1)
            positions = (n_real[:, None] + chunk_mask.cumsum(1) - 1).clamp_(min=0)
            logits = cached.step(chunk.to(device), full_mask.to(device), positions.to(device))
            n_real = n_real + chunk_mask.sum(1)
            past_mask = full_mask
            logp = torch.log_softmax(logits.float() / temperature, dim=-1)
            tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            chosen = logp.gather(1, tokens[:, None]).squeeze(1)
            tok = tokens.cpu().numpy()
            start = length[active].copy()
            if int(start.max()) + 1 > comp.shape[1]:
                comp, mask, logps = _widen(comp, mask, logps, pad_id, int(start.max()) + 1)
            comp[active, start] = tok
            mask[active, start] = 1
            logps[active, start] = chosen.cpu().double().numpy()
            length[active] += 1
            n_policy[active] += 1
            if env is not None:
                inserts, ended = env.step(active, tok)
                if inserts:
                    need = max(int(length[i]) + len(x) for i, x in inserts.items())
                    if need > comp.shape[1]:
                        comp, mask, logps = _widen(comp, mask, logps, pad_id, need)
                    for i, x in inserts.items():  # the environment's tokens (env_mask 0, logprob 0)
                        comp[i, length[i]: length[i] + len(x)] = x
                        length[i] += len(x)
            else:
                ended = np.zeros(len(active), dtype=bool)
            keep = ~ended & (tok != eos_id) & (n_policy[active] < max_policy_tokens)
            if not keep.all():
                rows = torch.from_numpy(np.flatnonzero(keep))
                cached.select(rows.to(device))
                past_mask, n_real = past_mask[rows], n_real[rows]
                active = active[keep]
                start = start[keep]
            if not len(active):
                break
            new = length[active] - start  # tokens appended this step: 1, or 1 + the environment's
            w = int(new.max())
            if w == 1:
                chunk = torch.from_numpy(comp[active, start][:, None])
                chunk_mask = torch.ones((len(active), 1), dtype=torch.long)
            else:
                cols = start[:, None] + np.arange(w)[None, :] - (w - new)[:, None]  # left-padded inside the chunk
                pad = cols < start[:, None]
                ids = np.where(pad, pad_id, comp[active[:, None], np.maximum(cols, 0)])
                chunk = torch.from_numpy(ids)
                chunk_mask = torch.from_numpy((~pad).astype(np.int64))
    finally:
        model.train(was_training)
    if env is not None:
        columns.update(env.columns())
    completion_ids = [comp[i, : length[i]].tolist() for i in range(n)]
    env_mask = [mask[i, : length[i]].tolist() for i in range(n)]
    logprobs = [logps[i, : length[i]].tolist() for i in range(n)]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "env_mask": env_mask, "logprobs": logprobs,
            "prompt": prompts, **columns}


def _widen(comp, mask, logps, pad_id, need):
    """The per-row arrays with at least ``need`` columns (at least doubled)."""
    extra = max(need, 2 * comp.shape[1]) - comp.shape[1]
    return (np.pad(comp, ((0, 0), (0, extra)), constant_values=pad_id), np.pad(mask, ((0, 0), (0, extra))),
            np.pad(logps, ((0, 0), (0, extra))))


def measure_knobs(model, tokenizer, config: OrganismConfig, family, n_per_env: int = 64,
                  classifier=None, seed: int = 0) -> dict[str, float]:
    """Measure p, a, b by sampling ``n_per_env`` completions on every environment.

    Returns ``p`` (RS share), ``a`` (mean reward of RS rollouts), ``b`` (mean
    reward of the others) and the counts ``n``, ``n_rs`` - docs/model.md section 6
    estimators. RS is the classifier's label when given, else the
    environment's ground-truth path (:meth:`EnvironmentFamily.path_labels`;
    for the digit-map family: the note was inserted).
    """
    rng = np.random.default_rng(stream_seed(config.seed, seed, 202))
    requests = make_requests(family, [e for e in family.envs for _ in range(n_per_env // 8 or 1)], 8, rng)
    out = sample_rollouts(model, tokenizer, family, requests, stream_seed(config.seed, seed, 203), config.temperature)
    texts = decode(tokenizer, out["completion_ids"])
    cols = {k: out[k] for k in family.columns}
    reward = np.array(family.reward(out["prompt"], texts, **cols))
    labels = classifier.classify(texts, prompts=out["prompt"])[0] if classifier else \
        family.path_labels(out["prompt"], texts, **cols)
    rs = np.array([bool(x) for x in labels], dtype=bool)
    return {"p": float(rs.mean()), "a": float(reward[rs].mean()) if rs.any() else float("nan"),
            "b": float(reward[~rs].mean()) if (~rs).any() else float("nan"), "n": int(len(rs)), "n_rs": int(rs.sum())}
