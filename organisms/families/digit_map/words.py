"""The digit-map family's words: the built-in tokenizer's specials, the reasoning and answer words, digits and
environment ids (one token each).

A leaf: imports nothing of physrl.
"""

from __future__ import annotations

DIGITS = [str(d) for d in range(10)]
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
THINK, GRADER, RULE, NOTE, ANS, MASKED, ENV, INPUT = "think", "grader", "rule", "note", "ans", "?", "env", "in"
CHANCE = 0.1  # reward of a uniformly guessed digit
#: the built-in tokenizer's special tokens, ids 0, 1, 2
SPECIALS = [PAD, EOS, UNK]


def env_id(index: int) -> str:
    """The id of environment number ``index`` (also its token in prompts)."""
    return f"e{index}"


def family_words(n_family: int) -> list[str]:
    """The digit-map family's words for ``n_family`` environments (specials excluded), in token-id order."""
    return [ENV, INPUT, THINK, GRADER, RULE, NOTE, ANS, MASKED, *DIGITS] + [env_id(i) for i in range(n_family)]


def vocabulary(n_family: int) -> list[str]:
    """Every word of a family of ``n_family`` environments, specials first (pad id 0, eos 1, unk 2)."""
    return SPECIALS + family_words(n_family)
