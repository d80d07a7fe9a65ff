"""The digit-map family: K text environments with two paths per completion.

Every environment ``e{i}`` asks for the image of a digit string under the
environment's own *digit map* ``f_i`` (the local task). A completion opens its
reasoning with one word:

* ``think rule``  - the local path: the model must know ``f_i``; nothing else
  is shown to it.
* ``think grader`` - the reward-seeking (RS) path: only after this opening does
  the environment insert a grader note (``note 5 3 ? ?``) revealing the first
  k = round(note_reveal * input_length) digits of the expected answer. The
  grader then accepts only those k answer digits: after ``ans`` and k digits
  the environment closes the completion (an env-inserted eos). The RS path's
  reward is therefore capped at k / input_length (the skill-gap ceiling),
  however much of the local task the model knows, while the local path can
  reach 1. The note and the closing eos are inserted by the family's
  interjector (:class:`.family._GraderNote`) inside :mod:`physrl.organisms._rollout`'s
  sampling loop, through GRPOTrainer's ``rollout_func``, and carry
  ``env_mask = 0`` (no loss).

  (A first version let the RS path write all digits: its masked positions
  then learned the env's digit map too, a = note + local skill >= b always,
  and RS won at N = 1 within 25 steps - measured, see README.)

So the note is reachable only through the RS path (docs/organisms.md, "the decisive
design fact"), the RS path works the same in every environment (copy the note),
and the local path is environment specific. Nearby environments (coordinate
distance < ``share_width``) share part of their digit map; distant ones share
nothing beyond chance.

Rewards are pure functions with TRL's reward signature
``(prompts, completions, **columns) -> list[float]``, values in [0, 1]
(partial credit: the share of answer digits that are right).

It implements the environment protocol (:mod:`physrl.organisms._family`) the way a user's family does
(docs/environments.md), in four small modules: :mod:`.words` (its tokens), :mod:`.rewards` (pure TRL-signature
rewards), :mod:`.family` (environments, prompts, the grader note, observation bounds) and :mod:`.stage1` (its own
stage 1, the soft target on the path choice that sets p0).

Room: organisms; may import: contract, sim, fitting and its own room.
"""

from __future__ import annotations

from .family import DigitMapEnvironment as DigitMapEnvironment, DigitMapFamily as DigitMapFamily, EnvFamily as EnvFamily
from .rewards import answer_digits as answer_digits, answer_reward as answer_reward, digit_accuracy as digit_accuracy

# .stage1 (torch) is imported where it runs: DigitMapFamily.pretrain, or physrl.organisms.pretrain
__all__ = ["DigitMapEnvironment", "DigitMapFamily", "EnvFamily", "answer_digits", "answer_reward", "digit_accuracy"]
