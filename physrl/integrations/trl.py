"""Log a user's own ``trl.GRPOTrainer`` run in the rollout-log contract (docs/rollouts.md), in one call.

::

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=train,
                          processing_class=tokenizer)
    log_rollouts(trainer, "runs/mine", eval_dataset=held_out)
    trainer.train()                      # or trainer.train(resume_from_checkpoint=True)

then ``physrl fit runs/mine --out fits/mine``.

How it hooks into TRL (TRL 1.16 ``GRPOTrainer``; its docs, "Using a custom reward function"):

- **Reward functions.** TRL calls every reward function with ``prompts``, ``completions``,
  ``completion_ids``, ``trainer_state`` and every other dataset column as keyword arguments,
  once per generation batch, and forms GRPO groups from consecutive blocks of
  ``num_generations`` completions (``rewards.view(-1, num_generations)``). Each function in
  ``trainer.reward_funcs`` is replaced by a wrapper that returns the function's own output
  unchanged and records it; the batch's reward is what TRL logs as ``reward``:
  ``sum_i w_i r_i`` over the functions (``args.reward_weights``; a ``None`` counts as absent).
- **Rows.** One per completion: ``step`` = ``trainer_state.global_step`` when it was sampled
  (optimizer steps completed), ``phase`` "train", ``env_id`` from the dataset's
  ``env_column``, ``group_id`` numbering the step's GRPO groups from 0, ``rs``/``rs_score``
  from the classifier. They are written with the contract's one writer
  (:class:`physrl.contract.ChunkWriter`) on TRL's steps: every ``flush_every`` steps, before
  every checkpoint TRL saves, and at the end.
- **Eval rows** (optional): every ``eval_every`` steps (and at step 0 and the last step), each
  prompt of ``eval_dataset`` gets one GRPO group of completions sampled from the trainer's model
  with the trainer's own generation settings, scored by the same reward functions, phase "eval".
  Sampling uses a forked RNG seeded from (``args.seed``, step), so it neither moves the training
  run's random stream nor differs between a run and its resume.
- **Manifest.** Environments and weights come from the data: ``w`` = the environment's share of
  the rows of the train dataset (TRL samples prompts uniformly, so its share of the RL batch,
  docs/model.md §1); an environment only in ``eval_dataset`` is held out (w = 0).
- **Resume.** Pass the same ``run_dir`` and call ``trainer.train(resume_from_checkpoint=...)``.
  At the start of training, train rows with step >= k and eval rows with step > k are dropped
  (k = the checkpoint's step), the rollouts the resumed trainer samples again; nothing is
  duplicated or lost (docs/rollouts.md, "Guarantees").

Limits: one process (``accelerate`` with several processes is refused); reward functions must
be callables (a reward *model*, ``nn.Module``, is refused); rollouts TRL scores in its own
``trainer.evaluate()`` are not logged (use ``eval_dataset`` here).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import platform
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from physrl.contract import (ChunkWriter, Environment, now, read_manifest, read_rollouts, rows_on_disk, update_manifest,
                             write_manifest)

#: the producer namespace this integration writes in a manifest (docs/rollouts.md, "Producer namespaces")
NAMESPACE = "trl"


# ---- text of TRL's prompts and completions ----------------------------------------------------------------------
def _text(value: Any) -> str:
    """A prompt or completion as text: a string as is; a conversation (list of ``{"role", "content"}``
    messages, content a string or a list of ``{"type": "text", "text"}`` parts) as its messages' text,
    one per line."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        lines = []
        for message in value:
            if not isinstance(message, dict):
                lines.append(str(message))
                continue
            content = message.get("content", "")
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            lines.append(str(content))
        return "\n".join(lines)
    return "" if value is None else str(value)


# ---- classifier ---------------------------------------------------------------------------------------------------
def resolve_classifier(classifier, rs_patterns: Sequence[str] | None = None,
                       local_patterns: Sequence[str] | None = None):
    """The classifier ``log_rollouts`` labels with (physrl.organisms' classifiers, organisms/_classify.py).

    Parameters
    ----------
    classifier : str, Classifier or callable
        A registered name (``"pattern"``, :data:`physrl.organisms.CLASSIFIERS`) or ``"module:attr"``
        (as config field ``classifier``); an object with ``classify(completions, prompts=None) ->
        (rs, rs_score)``; or a judge ``judge(prompts, completions) -> rs_scores`` in [0, 1]
        (wrapped in :class:`physrl.organisms.JudgeClassifier`, rs = score > 0.5).
    rs_patterns, local_patterns : list of str, optional
        Words of the pattern classifier; default those of :class:`physrl.organisms.OrganismConfig`.

    Raises
    ------
    ValueError
        An unknown name, or an object that is neither a classifier nor a callable.
    """
    from physrl.organisms import JudgeClassifier, OrganismConfig, make_classifier

    defaults = OrganismConfig()
    rs_patterns = list(defaults.rs_patterns if rs_patterns is None else rs_patterns)
    local_patterns = list(defaults.local_patterns if local_patterns is None else local_patterns)
    if isinstance(classifier, str):
        return make_classifier(classifier, rs_patterns, local_patterns)
    if hasattr(classifier, "classify"):
        for attr, default in (("name", type(classifier).__name__), ("version", "1")):
            if not hasattr(classifier, attr):
                setattr(classifier, attr, default)
        return classifier
    if callable(classifier):
        name = getattr(classifier, "name", getattr(classifier, "__name__", type(classifier).__name__))
        return JudgeClassifier(classifier, name=str(name), version=str(getattr(classifier, "version", "1")))
    raise ValueError(f"classifier {classifier!r}: a registered name, 'module:attr', an object with classify(), "
                     "or a judge callable (prompts, completions) -> rs_scores")


def eval_seed(seed: int, step: int) -> int:
    """The torch seed of the eval pass at ``step`` of a run seeded ``seed`` (the same in every process)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step, 0x65766C]).generate_state(1, np.uint64)[0] >> 1)


# ---- the manifest's environments -------------------------------------------------------------------------------
def _column(dataset, name: str, what: str) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:
        raise ValueError(f"{what}: log_rollouts needs a map-style datasets.Dataset (its {name!r} column gives the "
                         f"environments and their weights), got {type(dataset).__name__}")
    if name not in names:
        raise ValueError(f"{what} has no column {name!r} (its columns: {list(names)}); pass env_column=<the column "
                         "naming each prompt's environment>")
    return [str(v) for v in dataset[name]]


def dataset_environments(train_dataset, env_column: str = "env_id", eval_dataset=None) -> list[dict[str, Any]]:
    """The manifest's environments from the data: ``[{"env_id", "w"}, ...]``.

    ``w`` = the environment's share of the train dataset's rows (in [0, 1], summing to 1 over the
    trained ones; docs/model.md §1); environments only in ``eval_dataset`` come after, with w = 0.

    Raises
    ------
    ValueError
        A dataset without ``env_column`` (its columns listed), or an empty train dataset.
    """
    envs = _column(train_dataset, env_column, "the trainer's train_dataset")
    if not envs:
        raise ValueError("the trainer's train_dataset is empty")
    counts = Counter(envs)
    out = [{"env_id": e, "w": counts[e] / len(envs)} for e in counts]
    if eval_dataset is not None:
        for e in dict.fromkeys(_column(eval_dataset, env_column, "eval_dataset")):
            if e not in counts:
                out.append({"env_id": e, "w": 0.0})
    return out


def _versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    import physrl

    return {"python": platform.python_version(), "physrl": physrl.__version__, "trl": trl.__version__,
            "transformers": transformers.__version__, "torch": torch.__version__}


# ---- the recorder ----------------------------------------------------------------------------------------------
class RolloutLogger:
    """What :func:`log_rollouts` attaches to a trainer: reward-function wrappers, a callback and the writer.

    Built by :func:`log_rollouts`; the attributes are for inspection.

    Attributes
    ----------
    trainer : trl.GRPOTrainer
    run_dir : Path
    run_id : str
    writer : physrl.contract.ChunkWriter
    classifier : Classifier
    callback : transformers.TrainerCallback
        The callback added to the trainer.
    dropped_on_resume : int
        Rows dropped at the start of the last ``train()`` (those past its checkpoint).
    """

    def __init__(self, trainer, run_dir: Path, run_id: str, writer: ChunkWriter, classifier, env_column: str,
                 eval_dataset, eval_every: int, eval_generations: int, flush_every: int | None,
                 reward_range: tuple[float, float], env_ids: list[str], reward_funcs: list[Callable]):
        self.trainer, self.run_dir, self.run_id, self.writer = trainer, run_dir, run_id, writer
        self.classifier, self.env_column = classifier, env_column
        self.eval_dataset, self.eval_every, self.eval_generations = eval_dataset, eval_every, eval_generations
        self.flush_every, self.reward_range, self.env_ids = flush_every, reward_range, set(env_ids)
        self.dropped_on_resume = 0
        self._originals = list(reward_funcs)  # the user's reward functions, unwrapped (the eval pass calls them)
        self._batch: dict[str, Any] | None = None  # the generation batch the wrappers are recording
        self._groups: dict[tuple[int, str], int] = {}  # (step, phase) -> groups logged
        self._eval_done: set[int] = set()
        self._unscorable = 0
        self.callback = self._make_callback()

    # -- reward-function wrappers --------------------------------------------------------------------------------
    def wrap(self, index: int, func: Callable) -> Callable:
        """``func`` with its output recorded as reward function ``index`` of the current generation batch."""
        logger = self

        if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None)):
            async def wrapper(*args, **kwargs):
                out = await func(*args, **kwargs)
                logger._record(index, out, kwargs)
                return out
        else:
            def wrapper(*args, **kwargs):
                out = func(*args, **kwargs)
                logger._record(index, out, kwargs)
                return out
        functools.update_wrapper(wrapper, func)  # TRL named its reward functions already; this keeps __wrapped__
        wrapper.__wrapped_by_physrl__ = True
        return wrapper

    def _record(self, index: int, out, kwargs: dict) -> None:
        completions, prompts = kwargs.get("completions"), kwargs.get("prompts")
        if completions is None or prompts is None:
            raise TypeError("a reward function wrapped by physrl.integrations.trl.log_rollouts was called without "
                            "prompts= and completions= keywords (TRL's GRPOTrainer passes them)")
        batch = self._batch
        if batch is None or batch["completions"] is not completions:
            self._finish_batch()
            if not self.trainer.model.training:  # TRL's own evaluate(): not a train rollout
                self._batch = {"completions": completions, "skip": True}
                return
            if self.env_column not in kwargs:
                raise ValueError(f"the reward functions got no {self.env_column!r} column (got {sorted(kwargs)}): "
                                 f"keep it in the train dataset and leave GRPOConfig(remove_unused_columns=False)")
            state = kwargs.get("trainer_state") or self.trainer.state
            self._batch = batch = {"completions": completions, "prompts": prompts, "skip": False,
                                   "env_id": [str(e) for e in kwargs[self.env_column]],
                                   "step": int(state.global_step), "outputs": {}}
        if not batch["skip"]:
            batch["outputs"][index] = [math.nan if r is None else float(r) for r in out]

    def _finish_batch(self) -> None:
        """Label and buffer the generation batch the wrappers recorded (phase "train")."""
        batch, self._batch = self._batch, None
        if batch is None or batch["skip"]:
            return
        g = self.trainer.num_generations
        n = len(batch["completions"])
        if n % g:
            raise ValueError(f"a generation batch of {n} completions is not whole GRPO groups of "
                             f"num_generations = {g} (several processes? log_rollouts runs in one)")
        rewards = self._combine([batch["outputs"].get(i, [math.nan] * n)
                                 for i in range(len(self.trainer.reward_funcs))])
        groups = [j // g for j in range(n)]
        self._add(batch["step"], "train", batch["prompts"], batch["completions"], batch["env_id"], groups, rewards)

    def _combine(self, outputs: list[list[float]]) -> list[float]:
        """TRL's logged reward per rollout: sum_i w_i r_i over the reward functions (NaN skipped; all NaN -> NaN)."""
        weights = [float(w) for w in self.trainer.reward_weights.tolist()]
        out = []
        for values in zip(*outputs):
            present = [(w, r) for w, r in zip(weights, values) if not math.isnan(r)]
            out.append(math.fsum(w * r for w, r in present) if present else math.nan)
        return out

    def _add(self, step: int, phase: str, prompts, completions, env_ids, groups, rewards) -> None:
        """Rescale rewards to [0, 1], label, number the groups within (step, phase) and buffer the rows."""
        lo, hi = self.reward_range
        keep = [j for j, r in enumerate(rewards) if not math.isnan(r)]
        if len(keep) < len(rewards):
            self._unscorable += len(rewards) - len(keep)
            warnings.warn(f"log_rollouts: {len(rewards) - len(keep)} rollouts at step {step} ({phase}) that every "
                          "reward function scored None are not logged (TRL gives them no advantage either)",
                          RuntimeWarning, stacklevel=2)
        scaled = []
        for j in keep:
            r = (rewards[j] - lo) / (hi - lo)
            if not -1e-9 <= r <= 1 + 1e-9:
                raise ValueError(f"log_rollouts: reward {rewards[j]!r} at step {step} ({phase}) lies outside "
                                 f"reward_range = ({lo:g}, {hi:g}); the contract's rewards lie in [0, 1] "
                                 "(docs/rollouts.md): pass reward_range=(min, max) of your summed, weighted rewards")
            scaled.append(min(max(r, 0.0), 1.0))
        prompt_text = [_text(prompts[j]) for j in keep]
        completion_text = [_text(completions[j]) for j in keep]
        envs = [env_ids[j] for j in keep]
        unknown = sorted(set(envs) - self.env_ids)
        if unknown:
            raise ValueError(f"log_rollouts: rollouts of environments {unknown} that the manifest does not list "
                             f"({sorted(self.env_ids)}): the datasets changed after log_rollouts was called")
        rs, rs_score = self._classify(completion_text, prompt_text)
        first = self._groups.get((step, phase), 0)
        local = [groups[j] for j in keep]
        self._groups[(step, phase)] = first + (max(groups) + 1 if groups else 0)
        self.writer.add(step=step, phase=phase, env_id=envs, group_id=[first + k for k in local],
                        prompt=prompt_text, completion=completion_text, reward=scaled,
                        rs=[bool(x) for x in rs], rs_score=[float(x) for x in rs_score])

    def _classify(self, completions: list[str], prompts: list[str]) -> tuple[list, list]:
        """``classifier.classify``, given the prompts when its ``classify`` takes them (organisms/_classify.py)."""
        try:
            params = inspect.signature(self.classifier.classify).parameters
            takes = "prompts" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
            takes = True
        out = (self.classifier.classify(completions, prompts=prompts) if takes
               else self.classifier.classify(completions))
        rs, rs_score = (list(x) for x in out)
        if len(rs) != len(completions) or len(rs_score) != len(completions):
            raise ValueError(f"classifier {self.classifier.name!r} returned {len(rs)} labels and {len(rs_score)} "
                             f"scores for {len(completions)} completions")
        return rs, rs_score

    # -- eval -------------------------------------------------------------------------------------------------------
    def evaluate(self, step: int) -> int:
        """Sample one GRPO group per ``eval_dataset`` prompt from the trainer's model and buffer them as phase
        "eval" at ``step``; returns the rows buffered (0 without an eval dataset or when ``step`` is logged)."""
        if self.eval_dataset is None or step in self._eval_done:
            return 0
        import torch

        trainer, ds, g = self.trainer, self.eval_dataset, self.eval_generations
        rows = [ds[i] for i in range(len(ds))]
        prompts = [row["prompt"] for row in rows for _ in range(g)]
        columns = {k: [row[k] for row in rows for _ in range(g)] for k in ds.column_names if k != "prompt"}
        model = trainer.accelerator.unwrap_model(trainer.model)
        devices = [model.device] if model.device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(eval_seed(int(trainer.args.seed), int(step)))
                completion_ids = self._generate(model, prompts)
        finally:
            model.train(was_training)
        tok = trainer.processing_class
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        conversational = isinstance(prompts[0], list)
        completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
        outputs = []
        for func in self._originals:
            out = func(prompts=prompts, completions=completions, completion_ids=completion_ids,
                       trainer_state=trainer.state, log_extra=lambda *a, **k: None,
                       log_metric=lambda *a, **k: None, **columns)
            if inspect.iscoroutine(out):
                loop = getattr(trainer, "async_loop", None)
                out = (asyncio.run_coroutine_threadsafe(out, loop).result() if loop is not None
                       else asyncio.run(out))
            outputs.append([math.nan if r is None else float(r) for r in out])
        env_ids = [str(e) for e in columns[self.env_column]]
        before = self.writer.pending
        self._add(step, "eval", prompts, completions, env_ids, [j // g for j in range(len(prompts))],
                  self._combine(outputs))
        self._eval_done.add(step)
        return self.writer.pending - before

    def _generate(self, model, prompts: list) -> list[list[int]]:
        """Completion token ids of ``prompts`` (left-padded, the trainer's generation config), cut after the
        first eos, as TRL's transformers path does."""
        import torch

        trainer = self.trainer
        tok = trainer.processing_class
        if isinstance(prompts[0], list):  # as TRL renders conversations (GRPOTrainer._tokenize_prompts)
            ids = tok.apply_chat_template(conversation=prompts, chat_template=getattr(trainer, "chat_template", None),
                                          add_generation_prompt=True, tokenize=True, return_dict=True,
                                          **(getattr(trainer, "chat_template_kwargs", None) or {}))["input_ids"]
        else:
            ids = tok(text=prompts)["input_ids"]
        pad = tok.pad_token_id if tok.pad_token_id is not None else trainer.eos_token_ids[0]
        eos = set(trainer.eos_token_ids)
        batch = max(1, int(trainer.args.per_device_eval_batch_size or 1) * self.eval_generations)
        config = getattr(trainer, "generation_config", None)
        if config is None:  # vLLM generation: the same sampling settings for transformers' generate
            from transformers import GenerationConfig

            config = GenerationConfig(max_new_tokens=trainer.max_completion_length, do_sample=True,
                                      temperature=trainer.temperature, pad_token_id=pad,
                                      eos_token_id=list(trainer.eos_token_ids))
        out: list[list[int]] = []
        for start in range(0, len(ids), batch):
            part = ids[start: start + batch]
            width = max(len(x) for x in part)
            input_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in part], device=model.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in part], device=model.device)
            generated = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            for row in generated[:, width:].tolist():
                cut = next((i for i, t in enumerate(row) if t in eos), None)
                out.append(row if cut is None else row[: cut + 1])
        return out

    # -- resume ---------------------------------------------------------------------------------------------------
    def _begin(self, state) -> None:
        """At the start of ``train()``: drop the rows the trainer will sample again, mark the run running."""
        self._batch = None
        self._groups.clear()
        step = int(state.global_step)
        manifest = read_manifest(self.run_dir)
        on_disk = rows_on_disk(self.run_dir)
        if step == 0 and on_disk and manifest.status == "finished":
            raise FileExistsError(f"{self.run_dir} holds the finished run {manifest.run_id} ({on_disk} rows) and "
                                  "this trainer starts at step 0: log to a new run_dir, or resume the trainer "
                                  "(trainer.train(resume_from_checkpoint=...))")
        self.dropped_on_resume = self.writer.truncate(step if step > 0 else -1)
        if self.dropped_on_resume:
            warnings.warn(f"log_rollouts: training starts at step {step}; dropped {self.dropped_on_resume} rows "
                          f"logged past it in {self.run_dir} (the trainer samples them again)", UserWarning,
                          stacklevel=1)
        rows = read_rollouts(self.run_dir, keep_extra=False)
        self._eval_done = {int(s) for s in rows.loc[rows["phase"] == "eval", "step"].unique()}
        ns = dict(manifest.extra.get(NAMESPACE) or {})
        resumed = int(ns.get("resumed", 0)) + (1 if step > 0 else 0)
        update_manifest(self.run_dir, status="running", error=None, steps=int(state.max_steps),
                        **{NAMESPACE: {**ns, "resumed": resumed}})

    def _finish(self, state) -> None:
        self._finish_batch()
        self.writer.flush()
        manifest = read_manifest(self.run_dir)
        ns = dict(manifest.extra.get(NAMESPACE) or {})
        ns["unscorable_not_logged"] = int(ns.get("unscorable_not_logged", 0)) + self._unscorable
        self._unscorable = 0
        update_manifest(self.run_dir, status="finished", finished=now(), rows_written=rows_on_disk(self.run_dir),
                        **{NAMESPACE: ns})

    # -- the callback ---------------------------------------------------------------------------------------------
    def _make_callback(self):
        from transformers import TrainerCallback

        logger = self

        class PhysrlRolloutCallback(TrainerCallback):
            """Writes the rows of physrl.integrations.trl.log_rollouts on the trainer's steps."""

            def on_train_begin(self, args, state, control, **kwargs):
                logger._begin(state)
                if state.global_step % logger.eval_every == 0:
                    logger.evaluate(state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                logger._finish_batch()  # every generation of this optimizer step has been scored
                step = state.global_step
                if step % logger.eval_every == 0 or step >= state.max_steps or control.should_training_stop:
                    logger.evaluate(step)
                due = logger.flush_every is not None and step % logger.flush_every == 0
                if due or control.should_save or control.should_training_stop:
                    logger.writer.flush()  # before TRL saves checkpoint-<step>: rows never lag a checkpoint

            def on_epoch_end(self, args, state, control, **kwargs):
                if control.should_save:
                    logger.writer.flush()

            def on_train_end(self, args, state, control, **kwargs):
                logger._finish(state)

        return PhysrlRolloutCallback()


def log_rollouts(trainer, run_dir: str | Path, *, env_column: str = "env_id", classifier="pattern",
                 eval_dataset=None, eval_every: int = 10, eval_generations: int | None = None,
                 flush_every: int | None = 10, reward_range: tuple[float, float] = (0.0, 1.0),
                 rs_patterns: Sequence[str] | None = None, local_patterns: Sequence[str] | None = None,
                 run_id: str | None = None) -> RolloutLogger:
    """Log every rollout of an existing ``trl.GRPOTrainer`` into ``run_dir`` (docs/rollouts.md), ready for
    ``physrl fit``. Call it after building the trainer and before ``trainer.train()``.

    Parameters
    ----------
    trainer : trl.GRPOTrainer
        The user's trainer (single process). Its reward functions are wrapped in place and a
        callback is added; neither changes what it trains.
    run_dir : path
        The run directory (created): ``manifest.json`` and ``rollouts/part-*.parquet``. To resume,
        pass the same directory and call ``trainer.train(resume_from_checkpoint=...)``.
    env_column : str
        Column of the train (and eval) dataset naming each prompt's environment.
    classifier : str, Classifier or callable
        What labels ``rs`` / ``rs_score`` (:func:`resolve_classifier`): ``"pattern"`` (default: the
        organisms' whole-word patterns over the reasoning span after ``think``), another registered
        name or ``"module:attr"``, a classifier object, or a judge ``(prompts, completions) -> scores``.
    eval_dataset : datasets.Dataset, optional
        Prompts (column ``prompt``, ``env_column`` and whatever the reward functions read) for eval
        rows; environments not in the train dataset are held out (w = 0).
    eval_every : int
        Eval rows every this many optimizer steps (also at step 0 and the last step).
    eval_generations : int, optional
        Completions per eval prompt (one GRPO group); default ``trainer.num_generations``.
    flush_every : int or None
        Write a chunk every this many steps (None: only before checkpoints and at the end).
    reward_range : (lo, hi)
        Range of TRL's reward (the weighted sum of the reward functions); logged as
        (r - lo) / (hi - lo) in [0, 1]. Default (0, 1): logged as is.
    rs_patterns, local_patterns : list of str, optional
        Words of the pattern classifier (default: the organisms' ``grader reward score`` / ``rule``).
    run_id : str, optional
        The run's id (default ``trl-<time>-<random>``; a resumed run keeps its own).

    Returns
    -------
    RolloutLogger
        Its ``callback`` is in the trainer; ``run_dir`` and ``run_id`` say where the rows go.

    Raises
    ------
    ValueError
        A dataset without ``env_column``; a reward model (``nn.Module``) among the reward functions;
        training on several processes; ``eval_every`` < 1 or a bad ``reward_range``; an unknown
        classifier; a ``run_dir`` holding a run over other environments or weights, or labelled by another
        classifier. During training, a reward outside ``reward_range`` raises ValueError (naming it).
    FileExistsError
        (at ``trainer.train()``) ``run_dir`` holds a finished run and the trainer starts at step 0.

    Source: TRL ``GRPOTrainer`` (reward-function keyword arguments, ``num_generations`` grouping,
    ``reward_weights``), transformers ``TrainerCallback``; docs/rollouts.md for the rows and manifest.
    """
    import torch

    if getattr(trainer.accelerator, "num_processes", 1) > 1:
        raise ValueError(f"log_rollouts runs in single-process training; this trainer has "
                         f"{trainer.accelerator.num_processes} processes")
    for func in trainer.reward_funcs:
        if isinstance(func, torch.nn.Module):
            raise ValueError(f"log_rollouts wraps callable reward functions; {type(func).__name__} is a reward "
                             "model (nn.Module): score it inside a reward function instead")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an integer >= 1 (optimizer steps), got {eval_every!r}")
    if flush_every is not None and (not isinstance(flush_every, int) or flush_every < 1):
        raise ValueError(f"flush_every must be an integer >= 1 or None, got {flush_every!r}")
    lo, hi = (float(x) for x in reward_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"reward_range must be finite (lo, hi) with lo < hi, got {reward_range!r}")
    if eval_dataset is not None and "prompt" not in eval_dataset.column_names:
        raise ValueError(f"eval_dataset has no 'prompt' column (its columns: {eval_dataset.column_names})")
    eval_generations = int(eval_generations or trainer.num_generations)
    labeller = resolve_classifier(classifier, rs_patterns, local_patterns)
    environments = dataset_environments(trainer.train_dataset, env_column, eval_dataset)
    run_dir = Path(run_dir)
    namespace = {"env_column": env_column, "num_generations": int(trainer.num_generations),
                 "eval_every": eval_every, "eval_generations": eval_generations,
                 "eval_prompts": 0 if eval_dataset is None else len(eval_dataset),
                 "reward_funcs": list(trainer.reward_func_names),
                 "reward_weights": [float(w) for w in trainer.reward_weights.tolist()],
                 "reward_range": [lo, hi], "output_dir": str(trainer.args.output_dir)}
    if (run_dir / "manifest.json").exists():
        manifest = read_manifest(run_dir)
        saved = [e.to_dict() for e in manifest.environments]
        mine = [Environment.from_dict(e).to_dict() for e in environments]
        if saved != mine:
            raise ValueError(f"{run_dir} holds run {manifest.run_id} over environments {saved}, but this trainer's "
                             f"datasets give {mine}: log to a new run_dir")
        labelled = {"name": labeller.name, "version": str(labeller.version)}
        if manifest.classifier is not None and manifest.classifier != labelled:
            raise ValueError(f"{run_dir} holds run {manifest.run_id} labelled by classifier {manifest.classifier}, "
                             f"not {labelled}: one run is labelled by one classifier; log to a new run_dir")
        run_id = manifest.run_id
        update_manifest(run_dir, **{NAMESPACE: {**(manifest.extra.get(NAMESPACE) or {}), **namespace}})
    else:
        if (run_dir / "rollouts").exists() and any((run_dir / "rollouts").iterdir()):
            raise ValueError(f"{run_dir} holds rollouts but no manifest.json: not a run log_rollouts can continue")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = run_id or f"trl-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        model = trainer.accelerator.unwrap_model(trainer.model)
        write_manifest(run_dir, {
            "run_id": run_id, "status": "running", "created": now(), "environments": environments,
            "seed": int(trainer.args.seed), "versions": _versions(),
            "classifier": {"name": labeller.name, "version": str(labeller.version)},
            "model": {"architecture": type(model).__name__,
                      "n_parameters": int(sum(p.numel() for p in model.parameters())),
                      "model_type": getattr(model.config, "model_type", None)},
            NAMESPACE: namespace,
        })
    logger = RolloutLogger(trainer, run_dir, run_id, ChunkWriter(run_dir, run_id), labeller, env_column,
                           eval_dataset, eval_every, eval_generations, flush_every, (lo, hi),
                           [e["env_id"] for e in environments],
                           [f.__wrapped__ if getattr(f, "__wrapped_by_physrl__", False) else f
                            for f in trainer.reward_funcs])
    trainer.reward_funcs[:] = [logger.wrap(i, f) for i, f in enumerate(logger._originals)]
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb).__name__ == "PhysrlRolloutCallback":  # log_rollouts called twice on one trainer
            trainer.remove_callback(cb)
    trainer.add_callback(logger.callback)
    return logger
