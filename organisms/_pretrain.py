"""The generic stage 1: supervised pretraining on a family's demonstrations (docs/environments.md, "stage 1").

:meth:`EnvironmentFamily.pretrain` runs :func:`supervised_pretrain` by default, on the demos of
:meth:`EnvironmentFamily.demonstration`; a family with a stage 1 of its own (the digit-map family's soft target on
the path choice, :mod:`physrl.organisms.families.digit_map.stage1`) reuses its optimizer step (:class:`_Stage1Step`)
and loss. Loss is on completion tokens only, never on the prompt or the environment's words, with right padding
(docs/organisms.md: pad right for training).

Imports only the organisms' leaves (seeds, token codec): the protocol calls it, so it must not reach back.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._seeds import stream_seed
from ._tokens import encode, word_codec


def _warmup_cosine(total: int):
    """Stage 1's learning-rate factor at step s: linear warm-up over 50 steps, cosine decay to 0 at ``total``."""
    return lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / max(total, 1)))


def _completion_loss(logits, labels):
    """Next-token cross entropy (nats per labelled token) of ``logits`` (B, T, V) against ``labels`` (B, T), -100 ignored."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)


class _Stage1Step:
    """Stage 1's optimizer: AdamW at ``pretrain_lr`` (no weight decay), gradient norm clipped at 1, the
    warm-up + cosine schedule over ``pretrain_steps``; calling it with a loss takes one step (puts the
    model in training mode first) and returns the loss as a float."""

    def __init__(self, model, config):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(config.pretrain_steps))
        model.train()

    def __call__(self, loss) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        return float(loss.detach())


def supervised_pretrain(model, tokenizer, family) -> list[float]:
    """The generic stage 1: supervised steps on a family's demonstrations; returns the loss per step.

    ``config.pretrain_steps`` steps of ``config.pretrain_batch_size`` demos
    (:meth:`EnvironmentFamily.demonstration`, envs drawn uniformly over the
    whole family so that stage 1 does not depend on which envs are trained),
    right padding, AdamW at ``config.pretrain_lr`` with stage 1's warm-up and
    cosine schedule. Loss (nats per token) on the policy's completion tokens
    and the closing eos only: never on the prompt or the environment's words.
    Prompts are encoded by the tokenizer; completion words one token each
    (:class:`physrl.organisms._tokens.WordCodec`), as in GRPO.
    """
    config = family.config
    device = next(model.parameters()).device
    codec = word_codec(tokenizer, family)
    rng = np.random.default_rng(stream_seed(config.seed, 101))
    step_fn = _Stage1Step(model, config)
    losses = []
    for _ in range(config.pretrain_steps):
        rows = []
        for _ in range(config.pretrain_batch_size):
            demo = family.demonstration(family.envs[int(rng.integers(len(family.envs)))], rng)
            prompt = encode(tokenizer, [demo.prompt])[0]
            completion = codec.ids(demo.completion) + [tokenizer.eos_token_id]
            labels = [-100] * len(prompt) + [-100 if e else t for t, e in zip(completion, demo.env_words + [False])]
            rows.append((prompt + completion, labels))
        width = max(len(r[0]) for r in rows)
        ids = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)
        att = np.zeros((len(rows), width), dtype=np.int64)
        lab = np.full((len(rows), width), -100, dtype=np.int64)
        for i, (seq, labels) in enumerate(rows):
            ids[i, : len(seq)], att[i, : len(seq)], lab[i, : len(seq)] = seq, 1, labels
        logits = model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(att).to(device)
                       ).logits.float()
        losses.append(step_fn(_completion_loss(logits, torch.from_numpy(lab).to(device))))
    return losses
