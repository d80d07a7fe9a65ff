"""Sampling rollouts with the environment in the loop (the RS path's grader note).

A rollout is generated token by token from a left-padded batch. When the
policy writes ``grader`` in its reasoning (before ``ans``), the environment
appends the grader note's tokens to that completion, and after ``ans`` plus
the k answer digits the grader accepts it appends an eos; both carry
``env_mask = 0`` and log-probability 0 (they are not the policy's tokens) and
the policy then continues. This is how GRPOTrainer's ``rollout_func`` is fed
(TRL docs, GRPOTrainer ``rollout_func``: returns ``prompt_ids``,
``completion_ids``, ``logprobs``; extra keys such as ``env_mask`` and the
columns used by reward functions are forwarded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ._decode import CachedDecoder
from ._envs import ANS, EnvFamily, Environment, GRADER

PHASE_CODE = {"train": 0, "eval": 1, "measure": 2}


def stream_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, step, phase, ...), stable across processes."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class RolloutRequest:
    """One completion to sample: environment, input digits, GRPO group and the note positions it would see."""

    env: Environment
    digits: list[int]
    group_id: int
    note_positions: list[int]


def make_requests(family: EnvFamily, envs: list[Environment], n_generations: int, rng: np.random.Generator,
                  first_group: int = 0) -> list[RolloutRequest]:
    """``len(envs)`` GRPO groups of ``n_generations`` requests each (one prompt per group)."""
    out = []
    for g, env in enumerate(envs):
        digits = family.sample_input(env, rng)
        for _ in range(n_generations):
            out.append(RolloutRequest(env, digits, first_group + g, family.note_positions(rng)))
    return out


@torch.no_grad()
def sample_rollouts(model, tokenizer, family: EnvFamily, requests: list[RolloutRequest], seed: int,
                    temperature: float = 1.0, decoder: str = "auto") -> dict[str, list]:
    """Sample one completion per request, inserting the grader note after ``grader``.

    Returns a dict of lists, one entry per request: ``prompt_ids``,
    ``completion_ids`` (policy and note tokens), ``env_mask`` (1 policy, 0 note),
    ``logprobs`` (sampling log-probability per completion token, 0 for note
    tokens), ``prompt``, ``expected``, ``note_inserted``. Deterministic given
    the model's weights, the requests and ``seed``.

    Generation runs through a KV cache (:class:`organisms._decode.CachedDecoder`;
    ``decoder="auto"`` uses its lean Llama path where verified, ``"hf"`` the
    model's own forward with a ``DynamicCache``): the
    prompt batch (left-padded) is encoded once, then each step feeds only the
    tokens appended since the last step, i.e. the sampled token, plus the
    grader note's tokens for a row that has just written ``grader`` (the
    environment's tokens go through the cache like the policy's). A step
    whose rows append different numbers of tokens is left-padded inside the
    chunk; position ids come from the attention mask. Rows that have ended
    are dropped from the cache. The draws are those of the cache-free loop
    (one ``torch.multinomial`` over the active rows per step, rows in
    request order), so completions equal the recomputing loop's token for
    token; sampling log-probabilities agree to float rounding (~1e-6).
    """
    device = next(model.parameters()).device
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    grader_id, ans_id = tokenizer.convert_tokens_to_ids([GRADER, ANS])
    max_policy_tokens = family.config.input_length + 6
    n_reveal = family.n_reveal
    prompts = [family.prompt(r.env, r.digits) for r in requests]
    expected = [family.expected(r.env, r.digits) for r in requests]
    n = len(requests)
    if n == 0:
        return {"prompt_ids": [], "completion_ids": [], "env_mask": [], "logprobs": [], "prompt": [],
                "expected": [], "note_inserted": []}
    prompt_ids = encode(tokenizer, prompts)
    notes = encode(tokenizer, [" ".join(family.note_words(e, r.note_positions)) for e, r in zip(expected, requests)])
    note_len = np.array([len(x) for x in notes])
    cap = max_policy_tokens + int(note_len.max()) + 1
    # per-row state (numpy: cheap element-wise bookkeeping over the active rows)
    comp = np.full((n, cap), pad_id, dtype=np.int64)
    mask = np.zeros((n, cap), dtype=np.int64)
    logps = np.zeros((n, cap), dtype=np.float64)
    length = np.zeros(n, dtype=np.int64)
    inserted = np.zeros(n, dtype=bool)
    answered = np.zeros(n, dtype=bool)
    n_policy = np.zeros(n, dtype=np.int64)
    n_after_ans = np.zeros(n, dtype=np.int64)  # answer words written after the note (the grader accepts n_reveal)
    note_arr = np.full((n, int(note_len.max())), pad_id, dtype=np.int64)
    for i, x in enumerate(notes):
        note_arr[i, : len(x)] = x
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
    if decoder not in ("auto", "hf"):
        raise ValueError(f"decoder = {decoder!r}; allowed 'auto' or 'hf'")
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
            comp[active, start] = tok
            mask[active, start] = 1
            logps[active, start] = chosen.cpu().double().numpy()
            length[active] += 1
            n_policy[active] += 1
            n_after_ans[active] += answered[active] & inserted[active]
            answered[active] |= tok == ans_id
            new_note = (tok == grader_id) & ~inserted[active] & ~answered[active]
            for i in active[new_note]:  # the environment inserts the note (env_mask 0, logprob 0)
                comp[i, length[i]: length[i] + note_len[i]] = note_arr[i, : note_len[i]]
                length[i] += note_len[i]
            inserted[active[new_note]] = True
            closed = inserted[active] & (n_after_ans[active] >= n_reveal) & (tok != eos_id)
            ended = active[closed]  # the grader has read the answer it accepts: the environment ends the completion
            comp[ended, length[ended]] = eos_id
            length[ended] += 1
            keep = ~closed & (tok != eos_id) & (n_policy[active] < max_policy_tokens)
            if not keep.all():
                rows = torch.from_numpy(np.flatnonzero(keep))
                cached.select(rows.to(device))
                past_mask, n_real = past_mask[rows], n_real[rows]
                active = active[keep]
                start = start[keep]
            if not len(active):
                break
            new = length[active] - start  # tokens appended this step: 1, or 1 + the note's
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
    completion_ids = [comp[i, : length[i]].tolist() for i in range(n)]
    env_mask = [mask[i, : length[i]].tolist() for i in range(n)]
    logprobs = [logps[i, : length[i]].tolist() for i in range(n)]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "env_mask": env_mask, "logprobs": logprobs,
            "prompt": prompts, "expected": expected, "note_inserted": inserted.tolist()}


def _word_vocab(tokenizer) -> dict[str, int] | None:
    """The word -> id map when ``tokenizer`` is a plain word-level one (each whitespace-separated word one
    token, no normaliser), else None. Cached on the tokenizer object."""
    cached = getattr(tokenizer, "_physrl_word_vocab", False)
    if cached is not False:
        return cached
    vocab = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordLevel" and backend.normalizer is None and \
            type(backend.pre_tokenizer).__name__ == "WhitespaceSplit":
        vocab = dict(tokenizer.get_vocab())
    try:
        tokenizer._physrl_word_vocab = vocab
    except AttributeError:  # pragma: no cover - a tokenizer refusing attributes is simply not cached
        pass
    return vocab


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` without special tokens, as ``tokenizer(texts, add_special_tokens=False)`` gives them.

    For a plain word-level tokenizer (the organisms' own) the ids are looked up
    word by word (unknown words -> the unk id), ~20x faster for these short
    texts; any other tokenizer is called.
    """
    vocab = _word_vocab(tokenizer)
    if vocab is None or tokenizer.unk_token_id is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    return [[vocab.get(w, unk) for w in text.split()] for text in texts]


def decode(tokenizer, completion_ids: list[list[int]]) -> list[str]:
    """Completion texts as TRL decodes them (special tokens dropped)."""
    return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
