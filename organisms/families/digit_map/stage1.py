"""The digit-map family's stage 1: supervised pretraining on generated demonstrations that set p0, a0, b0.

The demonstration mixture (docs/model.md section 1 quantities at t = 0):

* half the demos take the RS path (``think grader`` + note + answer), half the
  local path, so both skills get the same amount of data; the path-choice
  token (``grader`` / ``rule`` after ``think``) is trained instead against
  the soft target (p0, 1 - p0), so P(RS | env) -> p0 whatever the demo mix
  (a hard mix with p0 = 0.1 left the copy skill unlearned: a = 0.32 for 0.5);
* RS demos answer the k revealed digits only, copying each from the note with
  probability ``copy_prob`` = c (else a uniform digit), so
  a0 = (k / L) (c + (1 - c) 0.1);
* local demos show the env's digit map correctly on its ``known`` entries and a
  uniform digit elsewhere, so b0 = q + (1 - q) 0.1 with q the known share.

Loss is on completion tokens only, never on the prompt or the inserted note
(env tokens), with right padding (docs/organisms.md: pad right for training).
The mapping is checked by measurement at step 0 (:func:`physrl.organisms.measure_knobs`).
"""

from __future__ import annotations

import numpy as np
import torch

from physrl.organisms._pretrain import _completion_loss, _Stage1Step
from physrl.organisms._seeds import stream_seed

from .words import ANS, CHANCE, ENV, EOS, GRADER, INPUT, MASKED, NOTE, PAD, RULE, THINK


def demo_mixture(config, family) -> dict[str, float]:
    """Demo probabilities that put the step-0 knobs at (p0, a0, b0).

    ``p_demo``: share of RS demos; ``p_target``: soft target of the path
    choice (= p0); ``copy_prob``: chance an RS demo copies a revealed digit.
    """
    r = family.n_reveal / config.input_length
    copy_prob = (config.a0 / r - CHANCE) / (1 - CHANCE)
    return {"p_demo": 0.5, "p_target": config.p0, "copy_prob": float(min(max(copy_prob, 0.0), 1.0))}


def make_demo(family, rng: np.random.Generator, mixture: dict[str, float]) -> tuple[list[str], list[str], list[str]]:
    """One demonstration: (prompt words, policy-written completion words before the note, words after it).

    The note (env tokens) goes between the two completion parts for RS demos.
    """
    env = family.envs[int(rng.integers(len(family.envs)))]
    digits = family.sample_input(env, rng)
    expected = family.expected(env, digits).split()
    prompt = family.prompt(env, digits).split()
    if rng.random() < mixture["p_demo"]:
        positions = family.note_positions(rng)
        answer = [expected[j] if rng.random() < mixture["copy_prob"] else str(rng.integers(10)) for j in positions]
        note = family.note_words(" ".join(expected), positions)
        return prompt, [THINK, GRADER], note + [ANS, *answer, EOS]
    answer = [str(env.digit_map[d]) if d in env.known else str(rng.integers(10)) for d in digits]
    return prompt, [THINK, RULE], [ANS, *answer, EOS]


class _DemoTokens:
    """Stage-1 demonstrations as token ids, drawn exactly as :func:`make_demo` draws them.

    The same random draws in the same order as ``make_demo`` (so the same seed
    gives the same demos, token for token; ``test_demo_batches_equal_make_demo``),
    without building and splitting strings: the inner loop of stage 1.
    """

    def __init__(self, family, vocab: dict[str, int]):
        self.family = family
        cfg = family.config
        self.length = cfg.input_length
        self.known_share = family.known_share
        self.digit = [vocab[str(d)] for d in range(10)]
        self.env_tok = [vocab[e.id] for e in family.envs]
        self.known = [list(e.known) for e in family.envs]
        self.unknown = [[d for d in range(cfg.local_alphabet) if d not in e.known] for e in family.envs]
        self.maps = [list(e.digit_map) for e in family.envs]
        self.positions = family.note_positions()
        self.env_, self.in_, self.think, self.grader, self.rule, self.note, self.ans, self.masked, self.eos = (
            vocab[w] for w in (ENV, INPUT, THINK, GRADER, RULE, NOTE, ANS, MASKED, EOS))
        self.pad = vocab[PAD]

    def demo(self, rng: np.random.Generator, mixture: dict[str, float]) -> tuple[list[int], list[int], bool]:
        """(prompt ids, completion ids, is RS): the token ids of ``make_demo``'s demonstration."""
        k = int(rng.integers(len(self.env_tok)))
        known, unknown, digit_map, ks = self.known[k], self.unknown[k], self.maps[k], self.known_share
        digits = []
        for _ in range(self.length):  # EnvFamily.sample_input
            pool = known if (known and (not unknown or rng.random() < ks)) else unknown
            digits.append(pool[int(rng.integers(len(pool)))])
        prompt = [self.env_, self.env_tok[k], self.in_] + [self.digit[d] for d in digits]
        expected = [digit_map[d] for d in digits]
        if rng.random() < mixture["p_demo"]:
            copy = mixture["copy_prob"]
            answer = [self.digit[expected[j]] if rng.random() < copy else self.digit[int(rng.integers(10))]
                      for j in self.positions]
            note = [self.note] + [self.digit[expected[j]] if j in self.positions else self.masked
                                  for j in range(self.length)]
            return prompt, [self.think, self.grader] + note + [self.ans] + answer + [self.eos], True
        answer = [self.digit[digit_map[d]] if d in known else self.digit[int(rng.integers(10))] for d in digits]
        return prompt, [self.think, self.rule, self.ans] + answer + [self.eos], False

    def batch(self, rng: np.random.Generator, mixture: dict[str, float], size: int):
        """``size`` demos, right-padded: ids, attention mask, labels (-100: no loss), choice positions.

        Shapes (size, width) for the first three, (size,) for the last. No
        loss on the prompt, on the path choice (trained against the soft
        target), on the inserted note or on the grader's closing eos.
        """
        n_note = 1 + self.length
        rows = []
        for _ in range(size):
            prompt, completion, rs = self.demo(rng, mixture)
            lab = [-100] * len(prompt) + completion
            lab[len(prompt) + 1] = -100  # the path choice is trained against the soft target
            if rs:  # note tokens and the closing eos are the environment's: no loss
                start = len(prompt) + 2
                lab[start:start + n_note] = [-100] * n_note
                lab[-1] = -100
            rows.append((prompt + completion, lab, len(prompt)))
        width = max(len(r[0]) for r in rows)
        ids = np.full((size, width), self.pad, dtype=np.int64)
        att = np.zeros((size, width), dtype=np.int64)
        lab = np.full((size, width), -100, dtype=np.int64)
        for row, (s, l, _) in enumerate(rows):
            ids[row, : len(s)] = s
            att[row, : len(s)] = 1
            lab[row, : len(l)] = l
        return ids, att, lab, np.array([r[2] for r in rows], dtype=np.int64)


def pretrain(model, tokenizer, config, family, log_every: int = 0) -> list[float]:
    """Stage-1 supervised training in place; returns the loss per step (nats per completion token).

    Shapes: batches of ``pretrain_batch_size`` demos, right-padded. No loss on
    prompt tokens or on the inserted note (``note`` and its digits).
    """
    device = next(model.parameters()).device
    rng = np.random.default_rng(stream_seed(config.seed, 101))
    mixture = demo_mixture(config, family)
    vocab = tokenizer.get_vocab()
    step_fn = _Stage1Step(model, config)
    losses = []
    grader_id, rule_id = vocab[GRADER], vocab[RULE]
    p_target = mixture["p_target"]
    demos = _DemoTokens(family, vocab)
    for step in range(config.pretrain_steps):
        ids, att, lab, choice_at = demos.batch(rng, mixture, config.pretrain_batch_size)
        ids, att, lab = torch.from_numpy(ids), torch.from_numpy(att), torch.from_numpy(lab)
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        token_loss = _completion_loss(logits, lab.to(device))
        rows = torch.arange(len(choice_at), device=device)
        choice_logp = torch.log_softmax(logits[rows, torch.from_numpy(choice_at).to(device)], dim=-1)
        choice_loss = -(p_target * choice_logp[:, grader_id] + (1 - p_target) * choice_logp[:, rule_id]).mean()
        losses.append(step_fn(token_loss + choice_loss))
        if log_every and step % log_every == 0:
            print(f"pretrain step {step} loss {losses[-1]:.3f}")
    return losses
