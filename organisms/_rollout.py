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
                    temperature: float = 1.0) -> dict[str, list]:
    """Sample one completion per request, inserting the grader note after ``grader``.

    Returns a dict of lists, one entry per request: ``prompt_ids``,
    ``completion_ids`` (policy and note tokens), ``env_mask`` (1 policy, 0 note),
    ``logprobs`` (sampling log-probability per completion token, 0 for note
    tokens), ``prompt``, ``expected``, ``note_inserted``. Deterministic given
    the model's weights, the requests and ``seed``.
    """
    device = next(model.parameters()).device
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    grader_id, ans_id = tokenizer.convert_tokens_to_ids([GRADER, ANS])
    max_policy_tokens = family.config.input_length + 6
    prompts = [family.prompt(r.env, r.digits) for r in requests]
    expected = [family.expected(r.env, r.digits) for r in requests]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    notes = [tokenizer(" ".join(family.note_words(e, r.note_positions)), add_special_tokens=False)["input_ids"]
             for e, r in zip(expected, requests)]
    n = len(requests)
    comp: list[list[int]] = [[] for _ in range(n)]
    mask: list[list[int]] = [[] for _ in range(n)]
    logps: list[list[float]] = [[] for _ in range(n)]
    inserted = [False] * n
    answered = [False] * n
    n_policy = [0] * n
    n_after_ans = [0] * n  # answer words written after the note (the grader accepts n_reveal of them)
    active = list(range(n))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    was_training = model.training
    model.eval()
    while active:
        seqs = [prompt_ids[i] + comp[i] for i in active]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s):] = torch.tensor(s)
            att[row, width - len(s):] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False).logits[:, -1, :]
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        chosen = logp.gather(1, tokens[:, None]).squeeze(1)
        still = []
        for row, i in enumerate(active):
            tok = int(tokens[row])
            comp[i].append(tok)
            mask[i].append(1)
            logps[i].append(float(chosen[row]))
            n_policy[i] += 1
            if answered[i] and inserted[i]:
                n_after_ans[i] += 1
            answered[i] = answered[i] or tok == ans_id
            if tok == grader_id and not inserted[i] and not answered[i]:
                comp[i].extend(notes[i])
                mask[i].extend([0] * len(notes[i]))
                logps[i].extend([0.0] * len(notes[i]))
                inserted[i] = True
            closed = inserted[i] and n_after_ans[i] >= family.n_reveal and tok != eos_id
            if closed:  # the grader has read the answer it accepts: the environment ends the completion
                comp[i].append(eos_id)
                mask[i].append(0)
                logps[i].append(0.0)
            elif tok != eos_id and n_policy[i] < max_policy_tokens:
                still.append(i)
        active = still
    model.train(was_training)
    return {"prompt_ids": prompt_ids, "completion_ids": comp, "env_mask": mask, "logprobs": logps,
            "prompt": prompts, "expected": expected, "note_inserted": inserted}


def decode(tokenizer, completion_ids: list[list[int]]) -> list[str]:
    """Completion texts as TRL decodes them (special tokens dropped)."""
    return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
