"""Tiny language-model organisms trained with TRL GRPO; every rollout logged and labelled.

Public surface (see ``organisms/README.md``)::

    from physrl.organisms import OrganismConfig, train, load_config, read_rollouts
    run_dir = train(OrganismConfig(n_envs=8, max_steps=300), "runs/n8")
"""

from physrl.contract import read_manifest as read_manifest
from physrl.contract import read_rollouts as read_rollouts

from ._classify import CLASSIFIERS as CLASSIFIERS
from ._classify import Classifier as Classifier
from ._classify import PatternClassifier as PatternClassifier
from ._classify import make_classifier as make_classifier
from ._classify import reasoning_span as reasoning_span
from ._config import OrganismConfig as OrganismConfig
from ._config import load_config as load_config
from ._envs import EnvFamily as EnvFamily
from ._envs import Environment as Environment
from ._envs import answer_reward as answer_reward
from ._model import build_model as build_model
from ._model import build_tokenizer as build_tokenizer
from ._model import load_model as load_model
from ._pretrain import measure_knobs as measure_knobs
from ._pretrain import pretrain as pretrain
from ._train import evaluate as evaluate
from ._train import saved_config as saved_config
from ._train import train as train

__all__ = [
    "CLASSIFIERS", "Classifier", "PatternClassifier", "make_classifier", "reasoning_span", "OrganismConfig",
    "load_config", "EnvFamily", "Environment", "answer_reward", "read_manifest", "read_rollouts", "build_model",
    "build_tokenizer", "load_model", "measure_knobs", "pretrain", "evaluate", "saved_config", "train",
]
