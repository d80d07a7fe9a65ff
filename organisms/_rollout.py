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
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ._decode import CachedDecoder
from ._family import EnvironmentFamily, RolloutRequest

PHASE_CODE = {"train": 0, "eval": 1, "measure": 2}


def stream_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, step, phase, ...), stable across processes."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_requests(family: EnvironmentFamily, envs: list, n_generations: int, rng: np.random.Generator,
                  first_group: int = 0) -> list[RolloutRequest]:
    """``len(envs)`` GRPO groups of ``n_generations`` requests each (one prompt per group, drawn with ``rng``)."""
    out = []
    for g, env in enumerate(envs):
        prompt = family.sample_prompt(env, rng)
        out += [RolloutRequest(env, prompt, first_group + g) for _ in range(n_generations)]
    return out


class WordCodec:
    """The family's words as token ids of a tokenizer: each word one token, as it appears after a space.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    words : sequence of str
        The family's words (:meth:`EnvironmentFamily.words`).

    Raises
    ------
    ValueError
        Some words are not one token that decodes back to the word (the
        message names them), or the words do not survive an encode/decode
        round trip.
    """

    def __init__(self, tokenizer, words):
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        words = list(dict.fromkeys(words))
        vocab = _word_vocab(tokenizer)
        ids, missing = {}, []
        for w in words:
            i = vocab.get(w) if vocab is not None else _single_token(tokenizer, w)
            if i is None:
                missing.append(w)
            else:
                ids[w] = i
        if missing:
            raise ValueError(f"the tokenizer cannot express the family's words {missing} (each must encode to one "
                             "token that decodes back to the word; add them with tokenizer.add_tokens(...) and "
                             "model.resize_token_embeddings(len(tokenizer)))")
        self._ids = ids
        back = tokenizer.decode([ids[w] for w in words], skip_special_tokens=False).split()
        if back != words:
            raise ValueError(f"the tokenizer does not round-trip the family's words: {words[:8]}... decode to "
                             f"{back[:8]}...")

    def id(self, word: str) -> int:
        """The token id of ``word``."""
        return self._ids[word]

    def ids(self, words) -> list[int]:
        """Token ids of ``words``, one per word."""
        return [self._ids[w] for w in words]


def _single_token(tokenizer, word: str) -> int | None:
    unk = tokenizer.unk_token_id
    for text in (" " + word, word):
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and enc[0] != unk and tokenizer.decode(enc, skip_special_tokens=False).strip() == word:
            return int(enc[0])
    return None


def word_codec(tokenizer, family: EnvironmentFamily) -> WordCodec:
    """The :class:`WordCodec` of ``family``'s words for ``tokenizer`` (cached on the tokenizer object)."""
    words = tuple(family.words())
    cache = getattr(tokenizer, "_physrl_codecs", None)
    if cache is None:
        cache = {}
        try:
            tokenizer._physrl_codecs = cache
        except AttributeError:  # pragma: no cover - a tokenizer refusing attributes is simply not cached
            pass
    if words not in cache:
        cache[words] = WordCodec(tokenizer, words)
    return cache[words]


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
