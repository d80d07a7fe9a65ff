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

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that owns it (relative: a private module of this package)
_EXPORTS = {
    "CLASSIFIERS": "_classify", "Classifier": "_classify", "PatternClassifier": "_classify",
    "make_classifier": "_classify", "reasoning_span": "_classify",
    "OrganismConfig": "_config", "load_config": "_config",
    "EnvFamily": "_envs", "Environment": "_envs", "answer_reward": "_envs",
    "read_manifest": "physrl.contract", "read_rollouts": "physrl.contract",
    "build_model": "_model", "build_tokenizer": "_model", "load_model": "_model",
    "measure_knobs": "_pretrain", "pretrain": "_pretrain",
    "Stage1Cache": "_stage1", "stage1_ingredients": "_stage1", "stage1_key": "_stage1",
    "evaluate": "_train", "saved_config": "_train", "train": "_train",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ._classify import CLASSIFIERS, Classifier, PatternClassifier, make_classifier, reasoning_span
    from ._config import OrganismConfig, load_config
    from ._envs import EnvFamily, Environment, answer_reward
    from physrl.contract import read_manifest, read_rollouts
    from ._model import build_model, build_tokenizer, load_model
    from ._pretrain import measure_knobs, pretrain
    from ._stage1 import Stage1Cache, stage1_ingredients, stage1_key
    from ._train import evaluate, saved_config, train


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    target = importlib.import_module(f".{module}", __name__) if module.startswith("_") else importlib.import_module(module)
    value = getattr(target, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
