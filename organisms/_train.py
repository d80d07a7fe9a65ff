"""Stage 2: GRPO with ``trl.GRPOTrainer`` and a ``rollout_func``, every rollout logged.

One call, :func:`train`, runs (or resumes) a whole organism run into a run
directory laid out per ```docs/rollouts.md```::

    RUN_DIR/
      manifest.json               status running/finished/failed, config, envs (id, coordinates, w), ...
      rollouts/part-*.parquet     every train and eval rollout
      model_init/                 the stage-1 model + tokenizer (GRPO starts here; resume reuses it)
      checkpoints/checkpoint-K/   TRL checkpoints every ``checkpoint_every`` steps
      model_final/                the model after the last GRPO step

How TRL is driven (TRL docs, GRPOTrainer ``rollout_func`` / GRPOConfig):
the trainer's dataset is a placeholder; ``rollout_func`` samples the step's
prompts itself (deterministic in (seed, step)), spreading the
``groups_per_step`` GRPO groups over the training envs round-robin, so each
training env's share of the batch is w = 1/N. It returns ``env_mask`` so the
grader note carries no loss, plus the columns the reward function needs.
The reward function wrapper (:class:`RolloutRecorder`) scores, classifies
and logs every train rollout (TRL's completions table drops rows). The eval
pass (step 0, every ``eval_every`` steps and the last step) is ours: no
gradient, ``eval_prompts_per_env`` groups on every env, phase ``eval``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from physrl.contract import (ORGANISMS, ChunkWriter, now, read_manifest, read_rollouts, rows_on_disk, update_manifest,
                             write_manifest)

from ._checkpoints import INCOMING, publish, resume_point, step_of
from ._lock import LOCK_NAME, run_lock
from ._progress import RunProgress, stage1_progress
from ._classify import CLASSIFIERS, Classifier, classifier_accuracy, make_classifier, unmatched_vocabulary
from ._config import RESULT_NEUTRAL, OrganismConfig
from ._family import TRUTH_COLUMN, EnvironmentFamily
from .families import make_family
from ._model import (build_model, build_tokenizer, load_model, n_parameters, pick_device, prepare_tokenizer,
                     use_mask_positions)
from ._rollout import PHASE_CODE, decode, make_requests, sample_rollouts, stream_seed, word_codec

_ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
#: keys of an environment entry that belong to the contract; the rest go under "organisms"
_CONTRACT_ENV_KEYS = ("env_id", "w", "coordinates", "observation")



class _TiedHeadFilter(logging.Filter):
    """Drops transformers' Trainer warning that a resumed checkpoint lacks the tied output head.

    The tiny models tie ``lm_head.weight`` to the input embeddings, so a
    checkpoint does not store it; ``Trainer._issue_warnings_after_load`` warns
    "There were missing keys in the checkpoint model loaded: ['lm_head.weight']"
    although the head is the embedding matrix that was loaded. Any other
    missing key still warns.
    """

    def __init__(self, tied: set[str]):
        super().__init__()
        self.message = f"There were missing keys in the checkpoint model loaded: {sorted(tied)}."

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


@contextlib.contextmanager
def _quiet_tied_head_on_resume(model):
    """While resuming, silence the tied-head warning (:class:`_TiedHeadFilter`) if the model ties its head."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not (tied and head is not None and embed is not None and head.weight is embed.weight):
        yield
        return
    log = logging.getLogger("transformers.trainer")
    quiet = _TiedHeadFilter({"lm_head.weight"})
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


#: TRL's module that holds the fused LM head's vocabulary tile width (``_CHUNKED_LOGPROB_CHUNK_SIZE``)
_TRL_FUSED_HEAD = "trl.trainer.utils"


@contextlib.contextmanager
def logprob_tile(model):
    """While GRPO trains ``model``: TRL's fused LM head projects onto the vocabulary in one tile as wide as it.

    TRL 1.16's ``GRPOTrainer`` scores completions through a fused LM head
    (``trl.trainer.utils.add_fused_lm_head``, ``trl.kernels.chunked_logprob``) that
    projects the hidden states onto the vocabulary in tiles of
    ``_CHUNKED_LOGPROB_CHUNK_SIZE`` = 32768 columns, allocating an ``[N, 32768]``
    float buffer in every forward and backward even when the vocabulary is
    smaller. For the organisms' 27-word vocabulary and N = 32 x 17 scored
    positions that is 71 MB, paged in afresh twice per step: fwd + bwd of the head
    took 2.9-6.4 ms CPU against 0.8 ms with a tile as wide as the vocabulary
    (load 8, one thread). With a vocabulary of at most 32768 words both widths
    make one tile, so the products and reductions are the same and the log-probs,
    entropies and gradients bit-identical (tests/test_organisms_generation.py);
    a larger vocabulary keeps TRL's width. The module value is restored on exit.
    Nothing happens when the TRL in use has no such setting.
    """
    import importlib

    utils = importlib.import_module(_TRL_FUSED_HEAD)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    saved = getattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)
    if not isinstance(saved, int) or head is None or not hasattr(head, "weight"):
        yield
        return
    utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(saved, int(head.weight.shape[0]))
    try:
        yield
    finally:
        utils._CHUNKED_LOGPROB_CHUNK_SIZE = saved


def extra_columns(family: EnvironmentFamily) -> list[tuple[str, pa.DataType]]:
    """The organisms' own rollout columns after the contract's (docs/rollouts.md: readers ignore them): the
    family's columns (digit-map: ``expected``, ``note_inserted``, ``note_positions``), then ``rs_truth``."""
    return [(name, _ARROW[kind]) for name, kind in family.columns.items()] + [(TRUTH_COLUMN, pa.bool_())]


class RolloutWriter(ChunkWriter):
    """The contract's chunk writer with the family's columns and the ground-truth path ``rs_truth``."""

    def __init__(self, run_dir: str | Path, run_id: str, family: EnvironmentFamily):
        super().__init__(run_dir, run_id, extra_columns(family))


def versions() -> dict[str, str]:
    """Versions of the packages that shape a run."""
    import pandas, tokenizers, transformers, trl

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__,
            "pyarrow": pa.__version__, "pandas": pandas.__version__}


def saved_config(run_dir: str | Path) -> dict:
    """The resolved :class:`OrganismConfig` fields an organisms run saved in its manifest.

    Raises
    ------
    FileNotFoundError
        No manifest in ``run_dir``.
    ValueError
        The manifest breaks the contract, or has no ``organisms.config`` (not an organisms run).
    """
    manifest = read_manifest(run_dir)
    config = (manifest.organisms or {}).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{Path(run_dir) / 'manifest.json'}: no {ORGANISMS}.config: not a physrl organisms run "
                         "(or one written before the manifest's 'organisms' namespace)")
    return config


@contextlib.contextmanager
def _quiet_libraries():
    """Inside the training call only: silence library warnings that are not the user's.

    TRL 1.16 calls transformers 5.x's deprecated ``is_gradient_checkpointing`` on
    every save and step; the warning floods the terminal. The filters are
    restored on exit (nothing process-wide is changed by importing organisms).
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our tqdm bar shows the run's progress
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


class ResumeMismatch(ValueError):
    """A resume asked for a config that differs from the run's saved one (a user error, not a crash)."""


#: config fields a resume may change: ``max_steps`` (to extend a run) and those that do not change its rollouts
_RESULT_NEUTRAL = ("max_steps", *RESULT_NEUTRAL)


def new_run_id() -> str:
    """A fresh run id: ``organism-<date>-<time>-<6 hex>``."""
    return f"organism-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def new_manifest(config: OrganismConfig, family: EnvironmentFamily, classifier: Classifier, device, run_id: str,
                 trainer: dict | None = None) -> dict:
    """The manifest a new organisms run starts with (status ``running``; docs/rollouts.md, the ``organisms``
    namespace). ``trainer``: the population trainer's record (``organisms.trainer``); absent for TRL runs."""
    described = family.describe()
    return {
        "run_id": run_id, "created": now(), "status": "running", "seed": config.seed, "steps": config.max_steps,
        "versions": versions(), "classifier": {"name": classifier.name, "version": classifier.version},
        "environments": [{k: e[k] for k in _CONTRACT_ENV_KEYS if k in e} for e in described],
        ORGANISMS: {
            "config": config.to_dict(), "device": str(device),
            "env_family": {"name": family.name, "version": family.version, "config": config.env_family,
                           "class": f"{type(family).__module__}:{type(family).__qualname__}",
                           "columns": dict(family.columns)},
            "environments": [{k: v for k, v in e.items() if k == "env_id" or k not in _CONTRACT_ENV_KEYS}
                             for e in described],
            **family.manifest(),
            **({"trainer": trainer} if trainer is not None else {}),
        },
    }


def _path_stats(rs, rewards) -> dict[str, float]:
    """RS share, mean reward of RS rollouts (a) and of the others (b); a or b NaN without such rollouts."""
    rs, rewards = np.asarray(rs, dtype=bool), np.asarray(rewards, dtype=float)
    return {"rs_share": float(rs.mean()) if len(rs) else float("nan"),
            "a": float(rewards[rs].mean()) if rs.any() else float("nan"),
            "b": float(rewards[~rs].mean()) if (~rs).any() else float("nan")}


class RolloutRecorder:
    """TRL reward function (``(prompts, completions, **columns) -> list[float]``) that also logs.

    Computes the family's reward (:meth:`EnvironmentFamily.reward`, on the
    rollouts' real prompts: TRL's ``prompts`` are the placeholder dataset's),
    labels each completion with the classifier, records the environment's
    ground-truth path, and buffers one row per completion in the writer, with
    ``step = trainer_state.global_step`` (optimizer steps completed) and
    ``phase = "train"``. ``last`` holds the batch's mean reward, RS share and
    mean a, b (for the progress bar and the tracker). ``enabled = False``
    skips classification and logging (used by the overhead benchmark).
    """

    __name__ = "answer_reward"

    def __init__(self, writer: RolloutWriter, classifier: Classifier, family: EnvironmentFamily):
        self.writer = writer
        self.classifier = classifier
        self.family = family
        self.enabled = True
        self.last: dict[str, float] = {}

    def __call__(self, prompts, completions, env_id, group_id, prompt_text, trainer_state=None, **columns):
        cols = {name: columns[name] for name in self.family.columns}
        rewards = self.family.reward(prompt_text, completions, **cols)
        if self.enabled:
            rs, rs_score = self.classifier.classify(completions, prompts=prompt_text)
            truth = self.family.path_labels(prompt_text, completions, **cols)
            self.writer.add(step=trainer_state.global_step, phase="train", env_id=env_id, group_id=group_id,
                            prompt=prompt_text, completion=completions, reward=rewards, rs=rs, rs_score=rs_score,
                            **cols, **{TRUTH_COLUMN: truth})
            self.last = {"reward": float(np.mean(rewards)), **_path_stats(rs, rewards)}
        return rewards


def reads_sampling_logprobs(trainer) -> bool:
    """Whether TRL's GRPO loss reads the sampling log-probabilities a ``rollout_func`` returns.

    TRL 1.16's ``GRPOTrainer`` turns them into ``sampling_per_token_logps`` (one tensor per completion, then padded)
    on every step, but reads them only for vLLM's importance-sampling correction (``use_vllm`` with
    ``vllm_importance_sampling_correction``) and the off-policy sequence mask (``off_policy_mask_threshold``);
    ``logprobs = None`` is its documented "not available" (GRPOTrainer ``_generate_and_score_completions``). The
    organisms' runs use neither, so they return None and TRL skips the conversion (~0.3 ms a step); anything else
    (another trainer, a TRL without these attributes) gets them.
    """
    from trl import GRPOTrainer

    if not isinstance(trainer, GRPOTrainer):
        return True
    missing = object()
    vllm, mask = getattr(trainer, "use_vllm", missing), getattr(trainer, "off_policy_mask_threshold", missing)
    return vllm is missing or mask is missing or bool(vllm) or mask is not None


def make_rollout_func(config: OrganismConfig, family: EnvironmentFamily, tokenizer) -> Callable:
    """The ``rollout_func(prompts, trainer) -> dict`` handed to GRPOTrainer (see module docstring)."""
    train_envs = family.train_envs

    def rollout_func(prompts, trainer):
        step = trainer.state.global_step
        n_groups = len(prompts) // config.num_generations
        envs = [train_envs[(step * n_groups + g) % len(train_envs)] for g in range(n_groups)]
        rng = np.random.default_rng(stream_seed(config.seed, step, PHASE_CODE["train"]))
        requests = make_requests(family, envs, config.num_generations, rng)
        model = trainer.accelerator.unwrap_model(trainer.model)
        out = sample_rollouts(model, tokenizer, family, requests,
                              stream_seed(config.seed, step, PHASE_CODE["train"], 1), config.temperature)
        return {
            "prompt_ids": out["prompt_ids"], "completion_ids": out["completion_ids"],
            "logprobs": out["logprobs"] if reads_sampling_logprobs(trainer) else None,
            "env_mask": out["env_mask"], "prompt_text": out["prompt"],
            "env_id": [r.env.id for r in requests], "group_id": [r.group_id for r in requests],
            **{name: out[name] for name in family.columns},
        }

    return rollout_func


def eval_envs(config: OrganismConfig, family: EnvironmentFamily) -> list:
    """The environments of an eval pass, in family order: every trained one (w > 0) and the first
    ``config.eval_heldout`` held-out ones (all of them when it is -1)."""
    if config.eval_heldout < 0:
        return list(family.envs)
    held = [e for e in family.envs if e.weight <= 0][:config.eval_heldout]
    return [e for e in family.envs if e.weight > 0 or e in held]


def evaluate(model, tokenizer, config: OrganismConfig, family: EnvironmentFamily, classifier: Classifier, step: int,
             writer: RolloutWriter | None = None) -> dict:
    """Eval pass at ``step``: ``eval_prompts_per_env`` GRPO groups on every env of :func:`eval_envs`, no gradient,
    phase ``eval``.

    Rows go to ``writer`` when given. Returns the pass's mean ``reward``,
    ``rs_share`` (all envs), ``rs_share_train`` (trained envs), ``a`` and ``b``
    (mean reward of RS / other rollouts on trained envs; NaN without any) and
    ``rs_share_by_env`` (env id -> RS share, for the envs evaluated).
    """
    rng = np.random.default_rng(stream_seed(config.seed, step, PHASE_CODE["eval"]))
    envs = [e for e in eval_envs(config, family) for _ in range(config.eval_prompts_per_env)]
    requests = make_requests(family, envs, config.num_generations, rng)
    out = sample_rollouts(model, tokenizer, family, requests, stream_seed(config.seed, step, PHASE_CODE["eval"], 1),
                          config.temperature)
    return record_eval(out, requests, tokenizer, family, classifier, step, writer)


def record_eval(out: dict, requests: list, tokenizer, family: EnvironmentFamily, classifier: Classifier, step: int,
                writer: RolloutWriter | None = None) -> dict:
    """An eval pass's rows and statistics from its sampled rollouts (``out``: the sampler's dict, one entry per
    rollout of ``requests``): rewards, RS labels and ground truth, rows to ``writer`` (phase ``eval``) when
    given, and the dict :func:`evaluate` returns. The one owner of an eval pass's record, shared by the solo
    trainer and the population trainer (:mod:`organisms._population`)."""
    texts = decode(tokenizer, out["completion_ids"])
    cols = {name: out[name] for name in family.columns}
    rewards = family.reward(out["prompt"], texts, **cols)
    rs, rs_score = classifier.classify(texts, prompts=out["prompt"])
    if writer is not None:
        writer.add(step=step, phase="eval", env_id=[r.env.id for r in requests],
                   group_id=[r.group_id for r in requests], prompt=out["prompt"], completion=texts, reward=rewards,
                   rs=rs, rs_score=rs_score, **cols, **{TRUTH_COLUMN: family.path_labels(out["prompt"], texts, **cols)})
    trained = np.array([r.env.trained for r in requests])
    env_ids = np.array([r.env.id for r in requests])
    rs = np.array(rs, dtype=bool)
    stats = _path_stats(rs[trained], np.asarray(rewards)[trained])
    return {"reward": float(np.mean(rewards)), "rs_share": float(rs.mean()), "rs_share_train": stats["rs_share"],
            "a": stats["a"], "b": stats["b"],
            "rs_share_by_env": {e.id: float(rs[env_ids == e.id].mean()) for e in family.envs
                                if (env_ids == e.id).any()}}


def _eval_steps_logged(run_dir: Path) -> set[int]:
    df = read_rollouts(run_dir)
    return set(int(s) for s in df.loc[df.phase == "eval", "step"].unique()) if len(df) else set()


def _finite(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and np.isfinite(v)}


def _eval_metrics(result: dict) -> dict[str, float]:
    """Tracker scalars of an eval pass (``eval_`` keys: TensorBoard / W&B file them under ``eval/``)."""
    out = {"eval_physrl/rs_share_trained": result["rs_share_train"], "eval_physrl/rs_share": result["rs_share"],
           "eval_physrl/a": result["a"], "eval_physrl/b": result["b"], "eval_physrl/reward": result["reward"]}
    out.update({f"eval_physrl/rs_share/{env}": v for env, v in result["rs_share_by_env"].items()})
    return _finite(out)


def _make_callback(config, family, tokenizer, classifier, writer, recorder, eval_done: set[int], run_dir: Path,
                   before: dict, cpu0: float):
    from transformers import TrainerCallback

    class OrganismCallback(TrainerCallback):
        """Eval passes, chunk flushes aligned with checkpoints, atomic checkpoints, the progress bar."""

        def __init__(self):
            self.bar = None
            self.last_eval: dict[str, float] = {}
            self.t0 = time.time()
            self.eval_seconds = 0.0
            self.tracker = None  # the MetricsCallback when report_to is set

        @property
        def grpo_seconds(self) -> float:
            """GRPO wall seconds of every segment so far (earlier segments up to their last checkpoint)."""
            return round(before.get("grpo_seconds", 0.0) + time.time() - self.t0, 2)

        def timing(self) -> dict[str, float]:
            """The manifest's time records, summed over segments: GRPO wall (eval included), eval wall, CPU."""
            return {"grpo_seconds": self.grpo_seconds,
                    "eval_seconds": round(before.get("eval_seconds", 0.0) + self.eval_seconds, 2),
                    "cpu_seconds": round(before.get("cpu_seconds", 0.0) + time.process_time() - cpu0, 2)}

        def _eval(self, model, step):
            if step in eval_done:
                return
            t0 = time.perf_counter()
            self.last_eval = evaluate(model, tokenizer, config, family, classifier, step, writer)
            self.eval_seconds += time.perf_counter() - t0
            eval_done.add(step)
            if self.tracker is not None:
                self.tracker.pending.update(_eval_metrics(self.last_eval))

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.t0 = time.time()
            self.bar = RunProgress(run_dir, "GRPO", config.max_steps, config.progress, state.global_step)
            if state.global_step % config.eval_every == 0:
                self._eval(model, state.global_step)
            if self.tracker is not None and self.tracker.pending:
                self.tracker.trainer.log({})  # the step-0 eval to the tracker, at its own step

        def on_step_end(self, args, state, control, model=None, **kw):
            step = state.global_step
            if step % config.eval_every == 0 or step == config.max_steps:
                self._eval(model, step)
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                writer.flush()  # before TRL writes checkpoint-<step>: chunks never run ahead of a checkpoint
            if self.bar is not None:  # the bar (config.progress) and progress.json
                self.bar.update(step, reward=f"{recorder.last.get('reward', float('nan')):.2f}",
                                rs=f"{recorder.last.get('rs_share', float('nan')):.2f}",
                                eval_rs=f"{self.last_eval.get('rs_share_train', float('nan')):.2f}")

        def on_save(self, args, state, control, **kw):
            # the Trainer wrote checkpoint-<step> completely into the staging folder: rename it into place
            publish(Path(args.output_dir) / f"checkpoint-{state.global_step}", run_dir / "checkpoints")
            update_manifest(run_dir, organisms=self.timing())

        def on_train_end(self, args, state, control, **kw):
            writer.flush()
            if self.bar is not None:
                self.bar.close()

    return OrganismCallback()


def _metrics_callback(recorder: RolloutRecorder, trainer):
    """A callback that adds the organisms' scalars to every log the Trainer sends to its trackers.

    It must run before the trackers' own ``on_log`` (it is put first in the
    trainer's callback list) because they read the same ``logs`` dict. Adds,
    at each optimizer step s, ``physrl/rs_share``, ``physrl/a``, ``physrl/b``
    of the train batch that update s used (sampled at step s - 1, the rows
    logged with ``step = s - 1``; TRL's own ``reward`` is of that batch too),
    and the scalars of an eval pass run at step s (``eval_physrl/...``: RS
    share per env, on trained envs, a, b, reward).
    """
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.trainer = trainer
            self.pending: dict[str, float] = {}
            self.logged_step = -1

        def on_log(self, args, state, control, logs=None, **kw):
            if logs is None:
                return
            if state.global_step != self.logged_step and state.global_step > 0 and recorder.last:
                logs.update(_finite({f"physrl/{k}": recorder.last[k] for k in ("rs_share", "a", "b")}))
                self.logged_step = state.global_step
            logs.update(self.pending)
            self.pending = {}

    return MetricsCallback()


def _grpo_args(config: OrganismConfig, run_dir: Path, device: torch.device, family: EnvironmentFamily,
               run_id: str = ""):
    from trl import GRPOConfig

    batch = config.groups_per_step * config.num_generations
    tracking = config.report_to != "none"
    # transformers < 5 writes TensorBoard files to TrainingArguments.logging_dir (output_dir/runs/... by default),
    # 5.x to TENSORBOARD_LOGGING_DIR (_tracking_environment): both point at RUN_DIR/tensorboard
    old_tb = ({"logging_dir": str(run_dir / "tensorboard")} if "tensorboard" in config.report_to
              and "logging_dir" in {f.name for f in dataclasses.fields(GRPOConfig)} else {})
    return GRPOConfig(**old_tb,
        output_dir=str(run_dir / "checkpoints" / INCOMING), per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_generations=config.num_generations, max_steps=config.max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        beta=0.0, temperature=config.temperature, max_completion_length=family.max_completion_length,
        use_cpu=device.type == "cpu", bf16=False, fp16=False, gradient_checkpointing=False,
        save_strategy="steps", save_steps=config.checkpoint_every, save_total_limit=None, save_only_model=False,
        logging_steps=1 if tracking else 10 ** 9, report_to=config.report_to.split(",") if tracking else "none",
        run_name=run_id if tracking else None, disable_tqdm=True, seed=config.seed, data_seed=config.seed,
        dataloader_num_workers=0, eval_strategy="no", log_completions=False,
        scale_rewards=config.scale_rewards, loss_type=config.loss_type, **_optimizer_args(config),
    )


def _optimizer_args(config: OrganismConfig) -> dict:
    """TrainingArguments that choose the GRPO optimizer of config field ``optimizer``.

    ``adamw``: nothing (the Trainer's default AdamW, as every run before the field existed). ``sgd``: the
    Trainer's own ``optim="sgd"`` (``torch.optim.SGD``, momentum through ``optim_args``), so the optimizer is
    built, checkpointed (``optimizer.pt``, momentum buffers included) and restored on resume by the Trainer
    (transformers docs, TrainingArguments ``optim`` / ``optim_args``).
    """
    if config.optimizer == "sgd":
        return {"optim": "sgd", "optim_args": f"momentum={config.momentum!r}"}
    return {}


def optimizer_record(optimizer) -> dict:
    """The manifest's ``organisms.optimizer``: the class the Trainer built and its hyper-parameters (first
    parameter group: lr, momentum, betas, eps, weight_decay, ... whichever the class has)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    group = inner.param_groups[0] if getattr(inner, "param_groups", None) else {}
    keep = ("lr", "momentum", "dampening", "nesterov", "betas", "eps", "weight_decay", "fused", "foreach")
    hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k in keep}
    return {"class": f"{type(inner).__module__}.{type(inner).__qualname__}", **hyper}


def check_setup(config: OrganismConfig, resume: bool = False) -> EnvironmentFamily:
    """Everything about ``config`` that can fail before training, checked now: the environment family (imported
    and checked against the protocol), the classifiers (imported), the trackers (installed).

    Parameters
    ----------
    config : OrganismConfig
    resume : bool
        A resumed run: its model is in ``model_init``, so ``model_dir`` is not checked again.

    Returns
    -------
    EnvironmentFamily
        The run's family.

    Raises
    ------
    ValueError
        Naming the config field and what is wrong.
    """
    import importlib.util

    family = make_family(config)
    if config.model_dir is not None and not resume:
        _check_model_dir(config, family)
    for name in [config.classifier, *config.compare_classifiers]:
        if name not in CLASSIFIERS:
            make_classifier(name, config.rs_patterns, config.local_patterns, cache_dir=None)
    for tracker, extra in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if tracker in config.report_to.split(",") and importlib.util.find_spec(tracker) is None:
            raise ValueError(f"config field 'report_to' = {config.report_to!r}: the {tracker} package is not "
                             f"installed (pip install 'physrl[{extra}]')")
    return family


def _check_model_dir(config: OrganismConfig, family: EnvironmentFamily) -> None:
    """A user's model directory holds a model config and a tokenizer that can express the family's words."""
    from ._model import load_tokenizer

    path = Path(config.model_dir)
    if not (path / "config.json").is_file():
        raise ValueError(f"config field 'model_dir' = {config.model_dir!r}: not a save_pretrained model directory "
                         "(no config.json)")
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"config field 'model_dir' = {config.model_dir!r}: no tokenizer saved with it "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    prepare_tokenizer(tokenizer)
    try:
        word_codec(tokenizer, family)
    except ValueError as exc:
        raise ValueError(f"config field 'model_dir' = {config.model_dir!r}: {exc}") from None


@contextlib.contextmanager
def _tracking_environment(config: OrganismConfig, run_dir: Path):
    """Environment variables the trackers read, set for this run only: TensorBoard event files go to
    ``RUN_DIR/tensorboard`` (``TENSORBOARD_LOGGING_DIR``), W&B runs offline (``WANDB_MODE``, unless set) into
    ``RUN_DIR/wandb`` (``WANDB_DIR``, unless set) under project ``physrl`` (``WANDB_PROJECT``, unless set)."""
    wanted = {}
    trackers = config.report_to.split(",")
    if "tensorboard" in trackers:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if "wandb" in trackers:
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        for key, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(run_dir)), ("WANDB_PROJECT", "physrl")):
            if key not in os.environ:
                wanted[key] = value
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _wandb_run(config: OrganismConfig, run_id: str):
    """This run's own W&B run, started before training and finished after it (exit code 1 on an exception).

    TRL's ``WandbCallback`` starts a W&B run only when ``wandb.run`` is None and never finishes it, and
    wandb reads ``WANDB_DIR`` once per process: a second run trained in the same process (an experiment's
    pool worker) logged into the first one's W&B run, in the first one's folder, and an offline run file
    was complete only at the process's exit. Started here with the run's own ``dir`` (``WANDB_DIR``, set
    by :func:`_tracking_environment`), name and mode; the callback then logs into it ("run may have been
    created manually", transformers' ``WandbCallback.setup``). Must run inside :func:`_tracking_environment`.
    """
    if "wandb" not in config.report_to.split(","):
        yield
        return
    import wandb

    started = None
    if wandb.run is None:
        started = wandb.init(dir=os.environ["WANDB_DIR"], project=os.environ["WANDB_PROJECT"],
                             mode=os.environ["WANDB_MODE"], name=run_id)
    try:
        yield
    except BaseException:
        if started is not None:
            started.finish(exit_code=1)
        raise
    if started is not None:
        started.finish(exit_code=0)


def _stage1_model(config: OrganismConfig, family: EnvironmentFamily, run_dir: Path, device, log=print):
    """The stage-1 model for ``config``: from the stage-1 cache when an entry matches, else trained (and cached).

    Returns ``(model, tokenizer, info)`` with ``info`` the manifest's ``stage1`` record: ``cache`` (``hit``,
    ``miss`` or ``off``), ``key``, ``seconds`` (pretraining time of this run; 0 on a hit) and ``final_loss``.
    A family without a stage 1 (:meth:`EnvironmentFamily.pretrain` returns None) starts GRPO from the freshly
    built model (``cache`` ``none``).
    """
    from ._stage1 import Stage1Cache, cache_dir, stage1_ingredients, stage1_key

    tokenizer = build_tokenizer(family.words())
    model = build_model(tokenizer, config.hidden_size, config.n_layers, config.n_heads, seed=config.seed).to(device)
    root = cache_dir(config.stage1_cache, run_dir)
    ingredients = stage1_ingredients(config, model.config.to_dict(), device.type, torch.get_num_threads(), family)
    key = stage1_key(ingredients)
    cache = Stage1Cache(root) if root is not None else None
    with cache.lock(key) if cache is not None else contextlib.nullcontext():
        entry = cache.lookup(key) if cache is not None else None
        if entry is not None:
            model, tokenizer = load_model(entry, device)
            meta = json.loads((entry / "stage1.json").read_text())
            log(f"stage 1: cache hit {entry}")
            return model, tokenizer, {"cache": "hit", "key": key, "entry": str(entry), "seconds": 0.0,
                                      "final_loss": meta.get("final_loss")}
        t0 = time.time()
        with stage1_progress(run_dir, config.pretrain_steps, config.progress):
            losses = family.pretrain(model, tokenizer)
        seconds = time.time() - t0
        if losses is None:
            log(f"stage 1: none (the {family.name} family has no stage 1); GRPO starts from the built model")
            return model, tokenizer, {"cache": "none", "key": key, "seconds": 0.0, "final_loss": None}
        log(f"stage 1: {config.pretrain_steps} steps in {seconds:.1f} s, final loss {losses[-1]:.3f}"
            if losses else "stage 1: skipped (pretrain_steps = 0)")
        info = {"cache": "off" if cache is None else "miss", "key": key, "seconds": round(seconds, 2),
                "final_loss": losses[-1] if losses else None}
        if cache is not None:
            try:
                info["entry"] = str(cache.publish(key, model, tokenizer, {**info, "ingredients": ingredients,
                                                                         "losses": losses}))
            except OSError as exc:  # a read-only or full cache folder must not fail the run
                log(f"stage 1: not cached ({exc})")
    return model, tokenizer, info


def _prepare_model(config: OrganismConfig, family: EnvironmentFamily, run_dir: Path, device, log=print):
    """Stage 1 (cached), or a user's model dir -> ``run_dir/model_init``; returns (model, tokenizer, stage-1 info,
    tokenizer record). The policy's forward passes take position ids from the attention mask
    (:func:`use_mask_positions`).

    Raises
    ------
    ValueError
        A user model that cannot be loaded, or whose tokenizer cannot express the family's words (naming them).
    """
    init_dir = run_dir / "model_init"
    info, record = None, None
    if (init_dir / "config.json").exists():
        model, tokenizer = load_model(init_dir, device)
    elif config.model_dir is not None:
        model, tokenizer = load_model(config.model_dir, device, left_padding=False)
        changes = prepare_tokenizer(tokenizer, model)
        try:
            word_codec(tokenizer, family)
        except ValueError as exc:
            raise ValueError(f"config field 'model_dir' = {config.model_dir!r}: {exc}") from None
        for change in changes:
            log(f"model {config.model_dir}: {change}")
        record = {"source": str(Path(config.model_dir).resolve()), "class": type(tokenizer).__name__,
                  "pad_token": tokenizer.pad_token, "padding_side": tokenizer.padding_side, "changes": changes}
        info = {"cache": "user model", "model_dir": record["source"], "seconds": 0.0}
    else:
        model, tokenizer, info = _stage1_model(config, family, run_dir, device, log)
    if not (init_dir / "config.json").exists():
        tmp = run_dir / f".model_init.{uuid.uuid4().hex}.tmp"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, init_dir)
    use_mask_positions(model)
    return model, tokenizer, info, record


def _labelling_and_compared(config: OrganismConfig, run_dir: Path) -> tuple[Classifier, dict[str, Classifier]]:
    """The run's labelling classifier and every classifier scored against the ground truth (by name)."""
    if config.judge_cache == "off":
        judge_dir = None
    elif config.judge_cache == "auto":
        judge_dir = Path(run_dir).resolve().parent / ".judge_cache"
    else:
        judge_dir = Path(config.judge_cache).expanduser()
    compared: dict[str, Classifier] = {}
    for name in [config.classifier, *CLASSIFIERS, *config.compare_classifiers]:
        if name not in compared:
            compared[name] = make_classifier(name, config.rs_patterns, config.local_patterns, cache_dir=judge_dir)
    return compared[config.classifier], compared


def train(config: OrganismConfig, out_dir: str | Path, resume: bool = False, *,
          recorder_hook: Callable[[RolloutRecorder, object], None] | None = None, log=print) -> Path:
    """Run (or resume) one organism run: stage 1, then GRPO with every rollout logged.

    Parameters
    ----------
    config : OrganismConfig
        The run's resolved config (validated; see its fields).
    out_dir : path
        Run directory (created). Must be empty or absent unless ``resume``.
    resume : bool
        Continue from the newest complete checkpoint in ``out_dir`` with its
        saved config (``config`` must then equal it except ``max_steps``,
        ``progress`` and ``stage1_cache``); incomplete checkpoints (a kill while one was written)
        are skipped and moved aside, with a ``log`` line saying why; logged
        rows past the checkpoint are dropped and sampled again, so no
        (step, phase, group) is duplicated or skipped. A run killed at any
        moment (even by SIGKILL) can be resumed this way.
    recorder_hook : callable, optional
        Called as ``hook(recorder, trainer)`` before training (benchmarks,
        tests adding a callback).
    log : callable
        Where one-line progress messages go (default ``print``).

    Returns
    -------
    Path
        The run directory.

    Raises
    ------
    FileExistsError
        ``out_dir`` holds something and ``resume`` is False.
    FileNotFoundError
        ``resume`` and ``out_dir`` has no manifest.
    ResumeMismatch
        ``resume`` with a config that differs from the saved one (names the fields).
    RunInUse
        Another live process is training ``out_dir`` (its pid named); nothing was touched.
    """
    if config.trainer == "population":
        raise ValueError("config.trainer = 'population' is trained by organisms.train (organisms._trainers), "
                         "which routes it to organisms._population; this is the TRL trainer")
    run_dir = Path(out_dir)
    if not resume and run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file, not a run directory")
    if resume and not run_dir.is_dir():  # nothing to lock: _train names what is missing
        with _quiet_libraries():
            return _train(config, run_dir, resume, recorder_hook, log)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(run_dir), _quiet_libraries():
            return _train(config, run_dir, resume, recorder_hook, log)
    finally:
        if created and not any(run_dir.iterdir()):  # a new run that stopped before writing anything
            run_dir.rmdir()


def _train(config: OrganismConfig, run_dir: Path, resume: bool, recorder_hook, log) -> Path:
    from datasets import Dataset
    from trl import GRPOTrainer

    cpu0 = time.process_time()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(config.device)
    family = check_setup(config, resume)
    classifier, compared = _labelling_and_compared(config, run_dir)
    checkpoint = None
    if resume:
        manifest = read_manifest(run_dir)
        saved = saved_config(run_dir)
        mine = config.to_dict()
        defaults = OrganismConfig().to_dict()  # fields added after the run was saved hold their defaults
        differ = sorted(k for k in mine if k not in _RESULT_NEUTRAL and saved.get(k, defaults[k]) != mine[k])
        if differ:
            raise ResumeMismatch(f"resume {run_dir}: the config differs from the run's saved config in {differ} "
                                 f"(saved: {', '.join(f'{k}={saved.get(k, defaults[k])!r}' for k in differ)}); only "
                                 f"{', '.join(_RESULT_NEUTRAL)} may change")
        run_id = manifest.run_id
        done = int(saved.get("max_steps", 0))
        if manifest.status == "finished" and done >= config.max_steps:
            log(f"{run_id} already finished its {done} steps (max_steps {config.max_steps}); nothing to resume")
            return run_dir
        checkpoint = resume_point(run_dir / "checkpoints", log)
        for tmp in run_dir.glob(".*.tmp"):  # a model folder being written when the run stopped
            shutil.rmtree(tmp, ignore_errors=True)
        writer = RolloutWriter(run_dir, run_id, family)
        dropped = writer.truncate(step_of(checkpoint) if checkpoint else -1)
        log(f"resume {run_id} from {checkpoint.name if checkpoint else 'the start'}; dropped {dropped} rows past it")
        update_manifest(run_dir, status="running", error=None, steps=config.max_steps,
                        organisms={"config": mine, "resumed": (manifest.organisms or {}).get("resumed", 0) + 1})
    else:
        if run_dir.exists() and not run_dir.is_dir():
            raise FileExistsError(f"{run_dir} is a file, not a run directory")
        if run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise FileExistsError(f"{run_dir} is not empty; pass resume=True (--resume) to continue it")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = new_run_id()
        writer = RolloutWriter(run_dir, run_id, family)
        write_manifest(run_dir, new_manifest(config, family, classifier, device, run_id))
    callback = None
    try:
        model, tokenizer, stage1, tokenizer_record = _prepare_model(config, family, run_dir, device, log)
        if stage1 is not None:
            update_manifest(run_dir, organisms={"stage1": stage1})
        if tokenizer_record is not None:
            update_manifest(run_dir, organisms={"tokenizer": tokenizer_record})
        mc = model.config
        update_manifest(run_dir, model={"architecture": type(model).__name__, "n_parameters": n_parameters(model),
                                        "model_type": getattr(mc, "model_type", None),
                                        "hidden_size": getattr(mc, "hidden_size", None),
                                        "n_layers": getattr(mc, "num_hidden_layers", None),
                                        "vocab_size": getattr(mc, "vocab_size", None),
                                        "source": config.model_dir or "built-in"})
        recorder = RolloutRecorder(writer, classifier, family)
        eval_done = _eval_steps_logged(run_dir) if resume else set()
        before = read_manifest(run_dir).organisms or {}
        before = {k: float(before.get(k, 0.0)) for k in ("grpo_seconds", "eval_seconds", "cpu_seconds")}
        callback = _make_callback(config, family, tokenizer, classifier, writer, recorder, eval_done, run_dir,
                                  before, cpu0)
        n_rows = max(64, config.groups_per_step * config.num_generations)
        dataset = Dataset.from_dict({"prompt": ["placeholder (rollout_func samples the prompts)"] * n_rows})
        with warnings.catch_warnings(), _tracking_environment(config, run_dir):
            warnings.simplefilter("ignore")
            trainer = GRPOTrainer(model=model, reward_funcs=[recorder],
                                  args=_grpo_args(config, run_dir, device, family, run_id),
                                  train_dataset=dataset, processing_class=tokenizer,
                                  rollout_func=make_rollout_func(config, family, tokenizer), callbacks=[callback])
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our bar shows progress; TRL's metric dicts stay out of stdout
        if config.report_to != "none":  # first in line: the trackers' on_log read the logs it adds to
            callback.tracker = _metrics_callback(recorder, trainer)
            trainer.callback_handler.callbacks.insert(0, callback.tracker)
        if recorder_hook is not None:
            recorder_hook(recorder, trainer)
        with _tracking_environment(config, run_dir), _quiet_tied_head_on_resume(model), \
                _wandb_run(config, run_id), logprob_tile(model):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        timing = callback.timing()
        tmp = run_dir / f".model_final.{uuid.uuid4().hex}.tmp"
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if (run_dir / "model_final").exists():  # from a segment killed after it was written
            shutil.rmtree(run_dir / "model_final")
        os.replace(tmp, run_dir / "model_final")
        shutil.rmtree(run_dir / "checkpoints" / INCOMING, ignore_errors=True)
        rollouts = read_rollouts(run_dir)
        accuracy = classifier_accuracy(rollouts, compared, config.classifier)
        unmatched = unmatched_vocabulary(classifier, rollouts["completion"])  # every label non-RS for want of words
        if unmatched:
            warnings.warn(f"{run_id}: {unmatched}", RuntimeWarning, stacklevel=2)
        update_manifest(run_dir, status="finished", finished=now(), rows_written=rows_on_disk(run_dir),
                        organisms={**timing, "classifier_accuracy": accuracy, "classifier_warning": unmatched,
                                   "optimizer": optimizer_record(trainer.optimizer)})
    except BaseException as exc:
        # buffered rows lie past the last checkpoint: a resume samples them again, so they are not written
        changes = {"organisms": callback.timing()} if callback is not None else {}
        update_manifest(run_dir, status="failed", finished=now(), error=f"{type(exc).__name__}: {exc}", **changes)
        raise
    return run_dir
