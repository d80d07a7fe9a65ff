"""Tiny language-model organisms trained with TRL GRPO; every rollout logged and labelled.

Public surface (see ``organisms/README.md``)::

    from physrl.organisms import OrganismConfig, train, load_config, read_rollouts
    run_dir = train(OrganismConfig(n_envs=8, max_steps=300), "runs/n8")

Names are imported on first use (PEP 562), so ``import physrl.organisms`` and
the config / command-line modules load without torch, transformers or TRL
(``physrl organisms --help`` starts in a fraction of a second); the training
entry points pull them in when they are first touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from physrl._lazy import lazy_exports

#: public name -> the module that owns it (relative: a private module of this package)
_EXPORTS = {
    "CLASSIFIERS": "_classify", "Classifier": "_classify", "PatternClassifier": "_classify",
    "JudgeClassifier": "_classify", "ConfusionMatrix": "_classify", "classifier_accuracy": "_classify",
    "make_classifier": "_classify", "register_classifier": "_classify", "reasoning_span": "_classify",
    "OrganismConfig": "_config", "load_config": "_config",
    "EnvironmentFamily": "_family", "Environment": "_family", "Prompt": "_family", "Demo": "_family",
    "Interjector": "_family", "RolloutRequest": "_family", "make_family": "_family",
    "DigitMapFamily": "_envs", "DigitMapEnvironment": "_envs", "EnvFamily": "_envs", "answer_reward": "_envs",
    "read_manifest": "physrl.contract", "read_rollouts": "physrl.contract",
    "build_model": "_model", "build_tokenizer": "_model", "load_model": "_model", "prepare_tokenizer": "_model",
    "use_mask_positions": "_model",
    "measure_knobs": "_pretrain", "pretrain": "_pretrain", "supervised_pretrain": "_pretrain",
    "WordCodec": "_rollout", "RunInUse": "_lock", "run_lock": "_lock",
    "Stage1Cache": "_stage1", "stage1_ingredients": "_stage1", "stage1_key": "_stage1",
    "check_setup": "_train", "evaluate": "_train", "saved_config": "_train", "train": "_train",
    "train_population": "_population", "StackedLlama": "_stacked",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ._classify import (CLASSIFIERS, Classifier, ConfusionMatrix, JudgeClassifier, PatternClassifier,
                            classifier_accuracy, make_classifier, reasoning_span, register_classifier)
    from ._config import OrganismConfig, load_config
    from ._family import Demo, Environment, EnvironmentFamily, Interjector, Prompt, RolloutRequest, make_family
    from ._envs import DigitMapEnvironment, DigitMapFamily, EnvFamily, answer_reward
    from physrl.contract import read_manifest, read_rollouts
    from ._model import build_model, build_tokenizer, load_model, prepare_tokenizer, use_mask_positions
    from ._pretrain import measure_knobs, pretrain, supervised_pretrain
    from ._lock import RunInUse, run_lock
    from ._rollout import WordCodec
    from ._stage1 import Stage1Cache, stage1_ingredients, stage1_key
    from ._train import check_setup, evaluate, saved_config, train
    from ._population import train_population
    from ._stacked import StackedLlama


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
