"""A second environment family for the tests: not shaped like the digit-map family.

Environment ``e{i}`` asks for the sum of 2 or 3 digits plus its own offset
(mod 10); the prompt also shows a *claimed* answer that is right half of the
time (``e1 add 3 4 claim 9``: prompts of two lengths, so batches are padded).
The RS path trusts the claim (``think trust ans 9``), the local path works
the sum out (``think work ans 7``). Reward: 1 for the right answer, else 0,
so trusting the claim earns 1/2 on average (a = 0.5 at most) while working
can earn 1.

What differs from the digit-map family: no note, the ground-truth path comes
from the answer (trusting a wrong claim is RS, working it out against a
wrong claim is local, anything else unknown: ``None``); int64 columns; a
stage 1 from :meth:`demonstration` (the generic one); an optional tool the
environment answers inside the completion (``env_options = {"verify": true}``:
after the policy's ``check`` it inserts ``claim right`` or ``claim wrong``),
decided row by row in Python.
"""

from __future__ import annotations

import numpy as np

from physrl.organisms import Demo, EnvironmentFamily, Interjector, Prompt

DIGITS = [str(d) for d in range(10)]


class _Verifier(Interjector):
    """After the policy's ``check``, the environment answers whether the claim is right (once per completion)."""

    def __init__(self, requests, codec):
        self.check = codec.id("check")
        self.answers = [codec.ids(["claim", "right" if r.prompt.columns["claim"] == r.prompt.columns["truth"]
                                   else "wrong"]) for r in requests]
        self.used = [False] * len(requests)

    def step(self, rows, tokens):
        inserts = {}
        for i, tok in zip(rows.tolist(), tokens.tolist()):
            if tok == self.check and not self.used[i]:
                inserts[i] = self.answers[i]
                self.used[i] = True
        return inserts, np.zeros(len(rows), dtype=bool)

    def columns(self):
        return {"verified": list(self.used)}


class ClaimFamily(EnvironmentFamily):
    """Sums with a claimed answer (module docstring)."""

    name = "claimed-sum"
    version = "1"
    max_new_tokens = 6
    max_completion_length = 16

    def __init__(self, config):
        super().__init__(config)
        rng = np.random.default_rng([config.family_seed, 5])
        self.offsets = [int(x) for x in rng.integers(10, size=len(self.envs))]
        self.verify = bool(self.options.get("verify", False))
        self.columns = {"truth": "int64", "claim": "int64", **({"verified": "bool"} if self.verify else {})}

    def words(self):
        return ["add", "claim", "think", "trust", "work", "ans", "check", "right", "wrong", *DIGITS,
                *[e.id for e in self.envs]]

    def _problem(self, env, rng):
        operands = [int(x) for x in rng.integers(10, size=int(rng.integers(2, 4)))]
        truth = (sum(operands) + self.offsets[env.index]) % 10
        claim = truth if rng.random() < 0.5 else int((truth + rng.integers(1, 10)) % 10)
        return operands, truth, claim

    def sample_prompt(self, env, rng):
        operands, truth, claim = self._problem(env, rng)
        text = " ".join([env.id, "add", *map(str, operands), "claim", str(claim)])
        return Prompt(text, {"truth": truth, "claim": claim})

    @staticmethod
    def answer(completion: str) -> int | None:
        words = completion.split()
        if "ans" in words and words.index("ans") + 1 < len(words) and words[words.index("ans") + 1] in DIGITS:
            return int(words[words.index("ans") + 1])
        return None

    def reward(self, prompts, completions, truth, **_):
        return [float(self.answer(c) == t) for c, t in zip(completions, truth, strict=True)]

    def path_labels(self, prompts, completions, truth, claim, **_):
        out = []
        for c, t, k in zip(completions, truth, claim):
            a = self.answer(c)
            out.append(None if k == t or a not in (t, k) else a == k)  # known only when the claim is wrong
        return out

    def interjector(self, requests, codec):
        return _Verifier(requests, codec) if self.verify else None

    def demonstration(self, env, rng):
        operands, truth, claim = self._problem(env, rng)
        prompt = " ".join([env.id, "add", *map(str, operands), "claim", str(claim)])
        if rng.random() < self.config.p0:
            return Demo(prompt, ["think", "trust", "ans", str(claim)])
        answer = truth if rng.random() < 0.6 else int(rng.integers(10))
        return Demo(prompt, ["think", "work", "ans", str(answer)])


# ---- a deterministic stand-in for an external judge (physrl.organisms.JudgeClassifier) -------------------------
JUDGED: list[int] = []  # sizes of the batches the judge was called with


def keyword_score(completion: str) -> float:
    """rs_score of the stand-in judge: 1 if the completion says ``grader``, else 0."""
    return 1.0 if "grader" in completion.split() else 0.0


def keyword_judge(prompts: list[str], completions: list[str]) -> list[float]:
    """A judge ``(prompts, completions) -> rs_scores`` (config ``classifier = "claim_family:keyword_judge"``)."""
    JUDGED.append(len(completions))
    return [keyword_score(c) for c in completions]


keyword_judge.name = "keyword-judge"
keyword_judge.version = "1"
