"""Tiny language-model organisms trained with TRL GRPO; every rollout logged and labelled.

Public surface (see ``organisms/README.md``)::

    from physrl.organisms import OrganismConfig, train, load_config, read_rollouts
    run_dir = train(OrganismConfig(n_envs=8, max_steps=300), "runs/n8")

Names are imported on first use (PEP 562), so ``import physrl.organisms`` and
the config / command-line modules load without torch, transformers or TRL
(``physrl organisms --help`` starts in a fraction of a second); the training
entry points pull them in when they are first touched.

Inside: the environment protocol (``_family``, a leaf) and the built-in families that implement it
(``families/``); the config (``_config``), stage 1 (``_pretrain`` and a family's own), rollout sampling
(``_rollout``, ``_decode``, ``_tokens``), the classifiers (``_classify``), the models (``_model``) and the
trainer (``_train``) with its checkpoints, lock and stage-1 cache. Runs are written through
:mod:`physrl.contract` only.

Room: organisms; may import: contract, sim, fitting and its own room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from physrl._util.lazy import lazy_exports

#: public name -> the module that owns it (relative: a private module of this package)
_EXPORTS = {
    "CLASSIFIERS": "_classify", "Classifier": "_classify", "PatternClassifier": "_classify",
    "JudgeClassifier": "_classify", "ConfusionMatrix": "_classify", "classifier_accuracy": "_classify",
    "make_classifier": "_classify", "register_classifier": "_classify", "reasoning_span": "_classify",
    "OrganismConfig": "_config", "load_config": "_config",
    "EnvironmentFamily": "_family", "Environment": "_family", "Prompt": "_family", "Demo": "_family",
    "Interjector": "_family", "RolloutRequest": "_family", "make_family": "physrl.organisms.families",
    "DigitMapFamily": "physrl.organisms.families.digit_map", "DigitMapEnvironment": "physrl.organisms.families.digit_map",
    "EnvFamily": "physrl.organisms.families.digit_map", "answer_reward": "physrl.organisms.families.digit_map",
    "read_manifest": "physrl.contract", "read_rollouts": "physrl.contract",
    "build_model": "_model", "build_tokenizer": "_model", "load_model": "_model", "prepare_tokenizer": "_model",
    "use_mask_positions": "_model",
    "measure_knobs": "_rollout", "pretrain": "physrl.organisms.families.digit_map.stage1",
    "supervised_pretrain": "_pretrain", "WordCodec": "_tokens", "RunInUse": "_lock", "run_lock": "_lock",
    "Stage1Cache": "_stage1", "stage1_ingredients": "_stage1", "stage1_key": "_stage1",
    "check_setup": "_train", "evaluate": "_train", "saved_config": "_train", "train": "_trainers",
    "train_population": "_population", "population_key": "_population", "StackedLlama": "_stacked",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ._classify import (CLASSIFIERS, Classifier, ConfusionMatrix, JudgeClassifier, PatternClassifier,
                            classifier_accuracy, make_classifier, reasoning_span, register_classifier)
    from ._config import OrganismConfig, load_config
    from ._family import Demo, Environment, EnvironmentFamily, Interjector, Prompt, RolloutRequest
    from .families import make_family
    from .families.digit_map import DigitMapEnvironment, DigitMapFamily, EnvFamily, answer_reward
    from physrl.contract import read_manifest, read_rollouts
    from ._model import build_model, build_tokenizer, load_model, prepare_tokenizer, use_mask_positions
    from ._pretrain import supervised_pretrain
    from .families.digit_map.stage1 import pretrain
    from ._lock import RunInUse, run_lock
    from ._rollout import measure_knobs
    from ._tokens import WordCodec
    from ._stage1 import Stage1Cache, stage1_ingredients, stage1_key
    from ._train import check_setup, evaluate, saved_config
    from ._trainers import train
    from ._population import population_key, train_population
    from ._stacked import StackedLlama


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
