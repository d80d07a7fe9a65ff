"""The environment protocol: what an environment family gives the organisms' trainer (docs/environments.md).

An *environment family* is K = ``n_envs + n_heldout`` text environments
(the first ``n_envs`` trained with weight w = 1/N, the rest held out with
w = 0) whose completions take one of two paths: reward-seeking (RS) or local.
:class:`EnvironmentFamily` is the base class a family subclasses; the
trainer only ever calls the members below, so any family that implements
them runs through ``physrl organisms train`` and ``physrl experiment``
(config field ``env_family = "mypkg.envs:MyFamily"``).

Required (abstract):

* :meth:`~EnvironmentFamily.words` - every word its prompts, completions and
  inserted tokens use (the built-in tokenizer is built from them; a user's
  tokenizer must express each as one token);
* :meth:`~EnvironmentFamily.sample_prompt` - one GRPO group's prompt for an
  environment: its text and the columns the reward needs;
* :meth:`~EnvironmentFamily.reward` - TRL's reward signature
  ``(prompts, completions, **columns) -> list[float]``, values in [0, 1].

Optional (defaults in brackets):

* :meth:`~EnvironmentFamily.path_labels` - the ground-truth path of each
  rollout when the environment knows it [unknown: None];
* :meth:`~EnvironmentFamily.interjector` - tokens the environment inserts
  into a completion while it is sampled, through ``rollout_func``, with
  ``env_mask = 0`` [none];
* :meth:`~EnvironmentFamily.demonstration` or
  :meth:`~EnvironmentFamily.pretrain` - stage 1, supervised pretraining that
  sets the prior [none: GRPO starts from the freshly built model];
* :meth:`~EnvironmentFamily.describe` / :meth:`~EnvironmentFamily.manifest` -
  what the run's manifest records about the environments and the family.

The digit-map family (:class:`physrl.organisms.DigitMapFamily`,
``organisms/families/digit_map/``) is one implementation;
``tests/test_organisms_environments.py`` holds another. Resolving a config's
``env_family`` to a class is :mod:`physrl.organisms.families`.

A leaf of the organisms: this module imports none of their modules except the
generic stage 1 that the default :meth:`EnvironmentFamily.pretrain` runs
(:mod:`physrl.organisms._pretrain`, itself importing only leaves), so the
config, stage 1, rollout sampling and the trainer depend on the protocol and
never the other way round.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

#: logical types a family's extra log columns may have (the contract's, docs/rollouts.md)
COLUMN_TYPES = ("string", "int64", "float64", "bool")
#: the column holding the environment's ground-truth path label (True RS, False local, null unknown)
TRUTH_COLUMN = "rs_truth"
#: keys of a rollout batch that are not columns (:func:`physrl.organisms._rollout.sample_rollouts`)
RESERVED = ("prompt_ids", "completion_ids", "env_mask", "logprobs", "prompt", "prompt_text", "run_id", "step", "phase",
            "env_id", "group_id", "completion", "reward", "rs", "rs_score", TRUTH_COLUMN)
#: the default family's registered name
DEFAULT_FAMILY = "digit-map"
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class Environment:
    """One environment of a family.

    Attributes
    ----------
    index : int
        Position in the family, 0 … K − 1.
    id : str
        The id its rollouts carry (``env_id`` column); ``e{index}`` by convention.
    coordinates : tuple of float
        Position e_i for kernel transfer (docs/model.md §4).
    weight : float
        Training weight w: 1/N for the first N environments, 0 for held-out ones.
    """

    index: int
    id: str
    coordinates: tuple[float, ...]
    weight: float

    @property
    def trained(self) -> bool:
        """The environment is in the RL batch (w > 0)."""
        return self.weight > 0


@dataclass
class Prompt:
    """One GRPO group's prompt, as :meth:`EnvironmentFamily.sample_prompt` returns it.

    Attributes
    ----------
    text : str
        The prompt text the policy sees (whitespace-separated words).
    columns : dict of str to scalar
        Per-prompt values handed to :meth:`EnvironmentFamily.reward` and
        :meth:`EnvironmentFamily.path_labels` as keyword lists (one value per
        completion) and logged as extra rollout columns; their logical types
        are declared in :attr:`EnvironmentFamily.columns`.
    state : any
        The family's own data about the prompt (e.g. the input digits), handed
        back to :meth:`EnvironmentFamily.interjector`; never logged.
    """

    text: str
    columns: dict[str, Any] = field(default_factory=dict)
    state: Any = None


@dataclass
class RolloutRequest:
    """One completion to sample: its environment, prompt and GRPO group."""

    env: Environment
    prompt: Prompt
    group_id: int


@dataclass
class Demo:
    """One stage-1 demonstration (:meth:`EnvironmentFamily.demonstration`).

    Attributes
    ----------
    prompt : str
        Prompt text.
    completion : list of str
        Completion words, policy's and environment's, in order (an end-of-text
        word is appended by stage 1).
    env_words : list of bool
        Same length as ``completion``: True for words the environment inserts
        (no loss on them, as in GRPO, where they carry ``env_mask = 0``).
    """

    prompt: str
    completion: list[str]
    env_words: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.env_words:
            self.env_words = [False] * len(self.completion)
        if len(self.env_words) != len(self.completion):
            raise ValueError(f"Demo: env_words has {len(self.env_words)} entries for {len(self.completion)} words")


class Interjector:
    """The environment inside one batch's sampling loop: tokens it inserts, completions it ends.

    :func:`physrl.organisms._rollout.sample_rollouts` calls :meth:`step` once
    per sampled token with the rows still being sampled; inserted tokens are
    appended to those rows' completions with ``env_mask = 0`` and
    log-probability 0 (the policy did not write them), fed to the model
    through its KV cache, and the policy continues after them. A family that
    inserts nothing returns None from :meth:`EnvironmentFamily.interjector`.
    """

    def step(self, rows: np.ndarray, tokens: np.ndarray) -> tuple[dict[int, Sequence[int]], np.ndarray]:
        """React to the tokens just sampled.

        Parameters
        ----------
        rows : ndarray of int, shape (n_active,)
            Indices (into the batch's requests) of the rows still being sampled.
        tokens : ndarray of int, shape (n_active,)
            The token each of those rows just sampled.

        Returns
        -------
        inserts : dict request index -> sequence of token ids
            Tokens to append to that row after its sampled token.
        end : ndarray of bool, shape (n_active,)
            Rows the environment ends now (after their inserted tokens).
        """
        return {}, np.zeros(len(rows), dtype=bool)

    def columns(self) -> dict[str, list]:
        """Per-row values recorded during sampling (e.g. whether a note was inserted), one list per column,
        in request order; logged and passed to reward and path labels like the prompt's columns."""
        return {}


class EnvironmentFamily(abc.ABC):
    """Base class of an environment family (see the module docstring and docs/environments.md).

    Parameters
    ----------
    config : OrganismConfig
        The run's config: ``n_envs`` (N, trained), ``n_heldout`` (held out),
        ``family_seed`` (the family's own randomness), ``p0`` (the prior a
        stage 1 aims for) and ``env_options`` (the family's own settings,
        a JSON-able dict) are the fields a family normally reads.

    Attributes
    ----------
    envs : list of Environment
        Every environment, trained first (``self.envs`` is built by
        ``__init__`` via :meth:`make_environment`).
    name, version : str
        Recorded in the manifest (bump ``version`` when the family's
        behaviour changes: it is part of the stage-1 cache key).
    columns : dict of str to str
        Logical type (one of ``string``, ``int64``, ``float64``, ``bool``) of
        every column the family's prompts and interjector provide.
    max_new_tokens : int
        Most tokens the policy may write in one completion.
    max_completion_length : int
        Most completion tokens, policy's and environment's (TRL's ``max_completion_length``).
    """

    name: str = "environment-family"
    version: str = "1"
    columns: dict[str, str] = {}
    max_new_tokens: int = 16
    max_completion_length: int = 48

    def __init__(self, config):
        self.config = config
        self.options: dict[str, Any] = dict(config.env_options)
        self.envs: list[Environment] = [self.make_environment(i) for i in range(config.n_family)]
        self.by_id = {e.id: e for e in self.envs}

    def make_environment(self, index: int) -> Environment:
        """Environment number ``index``: id ``e{index}``, coordinate (index,), w = 1/N for the first N, else 0."""
        weight = 1.0 / self.config.n_envs if index < self.config.n_envs else 0.0
        return Environment(index, f"e{index}", (float(index),), weight)

    @property
    def train_envs(self) -> list[Environment]:
        """The trained environments (w > 0), in order."""
        return [e for e in self.envs if e.trained]

    # ---- required ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def words(self) -> list[str]:
        """Every word of the family's texts (prompts, both paths' completions, inserted tokens), specials excluded.

        The built-in tokenizer has one token per word (plus pad, eos, unk); a
        user model's tokenizer must encode each word as one token.
        """

    @abc.abstractmethod
    def sample_prompt(self, env: Environment, rng: np.random.Generator) -> Prompt:
        """One GRPO group's prompt for ``env``, drawn with ``rng`` (deterministic given the generator's state)."""

    @abc.abstractmethod
    def reward(self, prompts: list[str], completions: list[str], **columns: list) -> list[float]:
        """Rewards in [0, 1], one per completion; TRL's reward signature (``columns``: the family's columns)."""

    # ---- optional ---------------------------------------------------------------------------------------------
    def path_labels(self, prompts: list[str], completions: list[str], **columns: list) -> list[bool | None]:
        """Ground truth: True where the rollout took the RS path, False the local path, None unknown.

        The default knows nothing (all None). A family that knows the path
        (it inserted a note only the RS path can reach, a tool was called, an
        answer can only come from one path) says so here; the run then
        reports every classifier's confusion matrix against it.
        """
        return [None] * len(completions)

    def interjector(self, requests: list[RolloutRequest], codec) -> Interjector | None:
        """The environment's part in sampling one batch of ``requests`` (None: it inserts nothing).

        ``codec`` (:class:`physrl.organisms._tokens.WordCodec`) maps the
        family's words to the tokenizer's ids (``codec.id(word)``,
        ``codec.ids(words)``, ``codec.eos_id``).
        """
        return None

    def demonstration(self, env: Environment, rng: np.random.Generator) -> Demo | None:
        """One stage-1 demonstration for ``env`` (None, the default: the family has no stage 1).

        A family that returns demos gets the generic stage 1
        (:func:`physrl.organisms._pretrain.supervised_pretrain`): supervised
        steps on completion words, no loss on the environment's words; it sets
        the prior by how often its demos take the RS path (e.g. ``config.p0``).
        """
        return None

    def pretrain(self, model, tokenizer) -> list[float] | None:
        """Stage 1: train ``model`` in place before GRPO; returns the loss per step, None if there is none.

        The default runs the generic stage 1 when :meth:`demonstration`
        returns demos, else nothing. Stage 1 must not depend on which
        environments are trained (the stage-1 cache shares it across N).
        """
        from ._pretrain import supervised_pretrain

        probe = self.demonstration(self.envs[0], np.random.default_rng(0))
        if probe is None or self.config.pretrain_steps == 0:
            return None
        return supervised_pretrain(model, tokenizer, self)

    def describe(self) -> list[dict[str, Any]]:
        """One manifest entry per environment: ``env_id``, ``w``, ``coordinates``, optional ``observation``
        bounds (docs/rollouts.md); other keys are recorded under the manifest's ``organisms`` namespace."""
        return [{"env_id": e.id, "index": e.index, "coordinates": list(e.coordinates), "w": e.weight}
                for e in self.envs]

    def manifest(self) -> dict[str, Any]:
        """Family-level facts for the manifest's ``organisms`` namespace (e.g. the knob targets)."""
        return {}


# ---- the name of a family in a config ---------------------------------------------------------------------------------
def check_family_name(value: Any) -> None:
    """Validate config field ``env_family`` without importing anything.

    Raises
    ------
    ValueError
        Neither a registered name nor ``module.path:Class``.
    """
    if not isinstance(value, str) or not (value == DEFAULT_FAMILY or _IMPORT_PATH.match(value)):
        raise ValueError(f"config field 'env_family' = {value!r}; allowed {DEFAULT_FAMILY!r} or an import path "
                         "'package.module:FamilyClass'")
