"""The digit-map family's reward: pure functions with TRL's reward signature
``(prompts, completions, **columns) -> list[float]``, values in [0, 1] (partial credit: the share of answer digits
that are right).
"""

from __future__ import annotations

import numpy as np

from .words import ANS, EOS


def answer_digits(completion: str) -> list[str]:
    """The words after the first ``ans`` of a completion (the model's answer), up to an eos."""
    words = completion.split()
    if ANS not in words:
        return []
    out = []
    for w in words[words.index(ANS) + 1:]:
        if w == EOS:
            break
        out.append(w)
    return out


def digit_accuracy(completion: str, expected: str) -> list[bool]:
    """Per answer position: is the completion's digit right? Shape (input_length,)."""
    got = answer_digits(completion)
    want = expected.split()
    return [j < len(got) and got[j] == want[j] for j in range(len(want))]


def answer_reward(prompts: list[str], completions: list[str], expected: list[str], **_: object) -> list[float]:
    """Partial-credit reward in [0, 1]: share of answer positions with the expected digit.

    TRL reward signature; ``expected`` is the column of expected answers
    (one per completion). Missing digits score 0, extra words are ignored.
    """
    return [float(np.mean(digit_accuracy(c, e))) if e else 0.0 for c, e in zip(completions, expected, strict=True)]
