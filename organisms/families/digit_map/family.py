"""The digit-map family: its environments, prompts, grader note (the interjector) and observation bounds.

The family as a whole is described in the package docstring (:mod:`physrl.organisms.families.digit_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from physrl.organisms._config import OrganismConfig
from physrl.organisms._family import (DEFAULT_FAMILY, Environment, EnvironmentFamily, Interjector, Prompt,
                                     RolloutRequest)

from .rewards import answer_reward
from .words import ANS, CHANCE, ENV, GRADER, INPUT, MASKED, NOTE, env_id, family_words

@lru_cache(maxsize=None)
def _block_value(family_seed: int, digit: int, block: int) -> int:
    return int(np.random.default_rng([family_seed, 7, digit, block]).integers(10))


@dataclass(frozen=True)
class DigitMapEnvironment(Environment):
    """One digit-map environment: id, coordinates e_i, training weight w, digit map and demo knowledge.

    ``digit_map[d]`` is f_i(d) for every input symbol d < local_alphabet;
    ``known`` lists the symbols whose map entry stage-1 demonstrations show
    correctly (the others are shown as uniform random digits); with the input
    distribution of :meth:`DigitMapFamily.sample_input` this sets b0. The unknown
    entries are what the local path must learn during RL (its difficulty).
    """

    digit_map: tuple[int, ...] = ()
    known: tuple[int, ...] = ()


class _GraderNote(Interjector):
    """The digit-map environment in the sampling loop (module docstring).

    After the policy's first ``grader`` (before ``ans``) the note is inserted;
    after ``ans`` and the k answer words the grader accepts, an eos closes the
    completion. Vectorised over the batch's rows (numpy).
    """

    def __init__(self, family: "DigitMapFamily", requests: list[RolloutRequest], codec):
        n = len(requests)
        self.grader, self.ans, self.eos = codec.id(GRADER), codec.id(ANS), codec.eos_id
        self.n_reveal = family.n_reveal
        self.notes = [np.asarray(codec.ids(family.note_words(r.prompt.columns["expected"], r.prompt.state[1])),
                                 dtype=np.int64) for r in requests]
        self.eos_ids = np.array([self.eos], dtype=np.int64)
        self.inserted = np.zeros(n, dtype=bool)
        self.answered = np.zeros(n, dtype=bool)
        self.n_after_ans = np.zeros(n, dtype=np.int64)  # answer words written after the note (grader accepts n_reveal)

    def step(self, rows, tokens):
        self.n_after_ans[rows] += self.answered[rows] & self.inserted[rows]
        self.answered[rows] |= tokens == self.ans
        new_note = (tokens == self.grader) & ~self.inserted[rows] & ~self.answered[rows]
        inserts = {int(i): self.notes[i] for i in rows[new_note]}  # the environment inserts the note
        self.inserted[rows[new_note]] = True
        closed = self.inserted[rows] & (self.n_after_ans[rows] >= self.n_reveal) & (tokens != self.eos)
        for i in rows[closed]:  # the grader has read the answer it accepts: the environment ends the completion
            inserts[int(i)] = self.eos_ids
        return inserts, closed

    def columns(self):
        return {"note_inserted": self.inserted.tolist()}


class DigitMapFamily(EnvironmentFamily):
    """The K = n_envs + n_heldout digit-map environments of a run (see module docstring).

    Environment i sits at coordinate e_i = (i,) on a line. Its digit map entry
    for symbol d is ``T_d[(i + phase_d) // share_width]`` with ``T_d`` a random
    digit sequence of the family seed and ``phase_d`` staggered over symbols,
    so envs at distance k < share_width share about (1 - k / share_width) of
    their entries and envs further apart share only chance coincidences (0.1).

    One implementation of :class:`physrl.organisms.EnvironmentFamily`
    (docs/environments.md): prompts ``env e3 in 2 0 5 1``, the reward
    :func:`answer_reward`, the ground-truth path "the note was inserted", the
    grader note inserted through ``rollout_func``, and its own stage 1
    (:func:`physrl.organisms.pretrain`: the soft-target trick that sets p0).

    Example:
        >>> fam = DigitMapFamily(OrganismConfig(n_envs=2, n_heldout=1))
        >>> [e.id for e in fam.envs], [e.weight for e in fam.envs]
        (['e0', 'e1', 'e2'], [0.5, 0.5, 0.0])
    """

    name = DEFAULT_FAMILY
    version = "1"
    columns = {"expected": "string", "note_inserted": "bool", "note_positions": "string"}

    def __init__(self, config: OrganismConfig):
        self.config = config
        self.options = dict(config.env_options)
        m, s = config.local_alphabet, config.share_width
        known_share = (config.b0 - CHANCE) / (1.0 - CHANCE)  # b0 = q + (1 - q) * 0.1
        envs = []
        for i in range(config.n_family):
            phases = [(d * s) // m for d in range(m)]
            digit_map = tuple(_block_value(config.family_seed, d, (i + phases[d]) // s) for d in range(m))
            rng = np.random.default_rng([config.family_seed, 11, i])
            n_known = 0 if known_share <= 0 else m if known_share >= 1 else min(max(round(known_share * m), 1), m - 1)
            known = tuple(sorted(int(x) for x in rng.permutation(m)[:n_known]))
            weight = 1.0 / config.n_envs if i < config.n_envs else 0.0
            envs.append(DigitMapEnvironment(i, env_id(i), (float(i),), weight, digit_map, known))
        self.envs: list[DigitMapEnvironment] = envs
        self.by_id = {e.id: e for e in envs}
        self.n_reveal = int(round(config.note_reveal * config.input_length))
        self.known_share = known_share
        self.max_new_tokens = config.input_length + 6
        self.max_completion_length = 4 * config.input_length + 16

    # ---- the protocol ------------------------------------------------------------------------------------------
    def words(self) -> list[str]:
        return family_words(self.config.n_family)

    def sample_prompt(self, env: DigitMapEnvironment, rng: np.random.Generator) -> Prompt:
        """``env e3 in 2 0 5 1``; columns ``expected`` (the answer) and ``note_positions`` (what a note reveals)."""
        digits = self.sample_input(env, rng)
        positions = self.note_positions(rng)
        return Prompt(self.prompt(env, digits), {"expected": self.expected(env, digits),
                                                 "note_positions": ",".join(map(str, positions))},
                      state=(digits, positions))

    def reward(self, prompts, completions, expected, **_):
        return answer_reward(prompts, completions, expected)

    def path_labels(self, prompts, completions, note_inserted, **_):
        """The RS path is the one that reached the note: ``note_inserted`` (the environment inserted it)."""
        return [bool(x) for x in note_inserted]

    def interjector(self, requests, codec):
        return _GraderNote(self, requests, codec)

    def pretrain(self, model, tokenizer):
        """Stage 1 of the digit-map organisms (:func:`physrl.organisms.pretrain`)."""
        from .stage1 import pretrain

        return pretrain(model, tokenizer, self.config, self)

    def demonstration(self, env, rng):  # stage 1 is :meth:`pretrain` (its soft target on the path choice)
        return None

    def manifest(self):
        from .stage1 import demo_mixture

        c = self.config
        return {"knobs_target": {"p0": c.p0, "a0": c.a0, "b0": c.b0, "rs_ceiling": c.rs_ceiling},
                "demo_mixture": demo_mixture(c, self)}

    # ---- prompts, answers, notes --------------------------------------------
    def sample_input(self, env: DigitMapEnvironment, rng: np.random.Generator) -> list[int]:
        """Input digits, shape (input_length,).

        Each digit is one of the env's pretrained (``known``) map entries with
        probability q = (b0 - 0.1) / 0.9, else one of its unknown entries
        (uniform within each set), so a model that knows exactly the known
        entries has local skill b0 on average.
        """
        m = self.config.local_alphabet
        known = list(env.known)
        unknown = [d for d in range(m) if d not in env.known]
        out = []
        for _ in range(self.config.input_length):
            pool = known if (known and (not unknown or rng.random() < self.known_share)) else unknown
            out.append(int(pool[int(rng.integers(len(pool)))]))
        return out

    @staticmethod
    def prompt(env: DigitMapEnvironment, digits: list[int]) -> str:
        """Prompt text, e.g. ``env e3 in 2 0 5 1``."""
        return " ".join([ENV, env.id, INPUT, *map(str, digits)])

    @staticmethod
    def expected(env: DigitMapEnvironment, digits: list[int]) -> str:
        """The expected answer, digits separated by spaces, e.g. ``7 1 1 4``."""
        return " ".join(str(env.digit_map[d]) for d in digits)

    def note_positions(self, rng: np.random.Generator | None = None) -> list[int]:
        """Answer positions the grader note reveals: the first k = round(note_reveal * input_length)."""
        return list(range(self.n_reveal))

    @staticmethod
    def note_words(expected: str, positions: list[int]) -> list[str]:
        """The note the environment inserts after ``think grader``: ``note`` then digit or ``?`` per position."""
        digits = expected.split()
        return [NOTE] + [d if j in positions else MASKED for j, d in enumerate(digits)]

    def observation_bounds(self) -> dict[str, float]:
        """Reward range of each path, for the fit's observation model (docs/model.md §7).

        Observed a = a_lo + (a_hi - a_lo)·σ(x), b = b_lo + (b_hi - b_lo)·σ(y):

        - RS path: the grader accepts only the k revealed digits, so
          a_hi = a_max = k / input_length (the cap); copying them at chance
          (one digit in ten) gives a_lo = 0.1·a_max;
        - local path: an input digit hits a known (pretrained) map entry with
          probability q = (b0 - 0.1) / 0.9, which a model keeping its demos
          gets right, so b_lo = q; σ(y) is the accuracy on the unknown entries
          (0.1 = chance at step 0, 1 = map learned), b_hi = 1.

        The same for every environment of the family (the knobs are per family).
        """
        a_max = self.n_reveal / self.config.input_length
        b_lo = min(max(self.known_share, 0.0), 0.99)
        return {"a_lo": round(CHANCE * a_max, 6), "a_hi": a_max, "b_lo": round(b_lo, 6), "b_hi": 1.0}

    def describe(self) -> list[dict]:
        """Manifest entries: id, coordinates, w, digit map, known entries, observation bounds."""
        bounds = self.observation_bounds()
        return [
            {"env_id": e.id, "index": e.index, "coordinates": list(e.coordinates), "w": e.weight,
             "digit_map": list(e.digit_map), "known_entries": list(e.known), "observation": dict(bounds)}
            for e in self.envs
        ]


#: the name this family had before the environment protocol (kept for callers)
EnvFamily = DigitMapFamily
