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
import json
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
from ._classify import Classifier, make_classifier
from ._config import OrganismConfig
from ._envs import EnvFamily, answer_reward
from ._model import build_model, build_tokenizer, load_model, n_parameters, pick_device
from ._pretrain import demo_mixture, pretrain
from ._rollout import PHASE_CODE, decode, make_requests, sample_rollouts, stream_seed

#: the organisms' own rollout columns, after the contract's (docs/rollouts.md: readers ignore them)
EXTRA_COLUMNS = (("expected", pa.string()), ("note_inserted", pa.bool_()), ("note_positions", pa.string()))
#: keys of an environment entry that belong to the contract; the rest go under "organisms"
_CONTRACT_ENV_KEYS = ("env_id", "w", "coordinates", "observation")


class RolloutWriter(ChunkWriter):
    """The contract's chunk writer with the organisms' extra columns (expected answer, grader note)."""

    def __init__(self, run_dir: str | Path, run_id: str):
        super().__init__(run_dir, run_id, EXTRA_COLUMNS)


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


#: config fields a resume may change: they do not change the run's rollouts (``stage1_cache`` only says
#: where a pretrained model may be found)
_RESULT_NEUTRAL = ("max_steps", "progress", "stage1_cache")


class RolloutRecorder:
    """TRL reward function (``(prompts, completions, **columns) -> list[float]``) that also logs.

    Computes :func:`answer_reward`, labels each completion with the
    classifier and buffers one row per completion in the writer, with
    ``step = trainer_state.global_step`` (optimizer steps completed) and
    ``phase = "train"``. ``enabled = False`` skips classification and logging
    (used by the overhead benchmark).
    """

    __name__ = "answer_reward"

    def __init__(self, writer: RolloutWriter, classifier: Classifier):
        self.writer = writer
        self.classifier = classifier
        self.enabled = True
        self.last: dict[str, float] = {}

    def __call__(self, prompts, completions, expected, env_id, group_id, prompt_text, note_inserted,
                 note_positions, trainer_state=None, **_):
        rewards = answer_reward(prompts, completions, expected)
        if self.enabled:
            rs, rs_score = self.classifier.classify(completions)
            self.writer.add(step=trainer_state.global_step, phase="train", env_id=env_id, group_id=group_id,
                            prompt=prompt_text, completion=completions, reward=rewards, rs=rs, rs_score=rs_score,
                            expected=expected, note_inserted=note_inserted, note_positions=note_positions)
            self.last = {"reward": float(np.mean(rewards)), "rs_share": float(np.mean(rs))}
        return rewards


def make_rollout_func(config: OrganismConfig, family: EnvFamily, tokenizer) -> Callable:
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
            "prompt_ids": out["prompt_ids"], "completion_ids": out["completion_ids"], "logprobs": out["logprobs"],
            "env_mask": out["env_mask"], "expected": out["expected"], "prompt_text": out["prompt"],
            "env_id": [r.env.id for r in requests], "group_id": [r.group_id for r in requests],
            "note_inserted": out["note_inserted"],
            "note_positions": [",".join(map(str, r.note_positions)) for r in requests],
        }

    return rollout_func


def evaluate(model, tokenizer, config: OrganismConfig, family: EnvFamily, classifier: Classifier, step: int,
             writer: RolloutWriter | None = None) -> dict[str, float]:
    """Eval pass at ``step``: ``eval_prompts_per_env`` GRPO groups on every env, no gradient, phase ``eval``.

    Rows go to ``writer`` when given. Returns the pass's mean reward, RS
    share, and RS share on training envs.
    """
    rng = np.random.default_rng(stream_seed(config.seed, step, PHASE_CODE["eval"]))
    envs = [e for e in family.envs for _ in range(config.eval_prompts_per_env)]
    requests = make_requests(family, envs, config.num_generations, rng)
    out = sample_rollouts(model, tokenizer, family, requests, stream_seed(config.seed, step, PHASE_CODE["eval"], 1),
                          config.temperature)
    texts = decode(tokenizer, out["completion_ids"])
    rewards = answer_reward(out["prompt"], texts, out["expected"])
    rs, rs_score = classifier.classify(texts)
    if writer is not None:
        writer.add(step=step, phase="eval", env_id=[r.env.id for r in requests],
                   group_id=[r.group_id for r in requests], prompt=out["prompt"], completion=texts, reward=rewards,
                   rs=rs, rs_score=rs_score, expected=out["expected"], note_inserted=out["note_inserted"],
                   note_positions=[",".join(map(str, r.note_positions)) for r in requests])
    trained = np.array([r.env.trained for r in requests])
    rs = np.array(rs)
    return {"reward": float(np.mean(rewards)), "rs_share": float(rs.mean()),
            "rs_share_train": float(rs[trained].mean())}


def _eval_steps_logged(run_dir: Path) -> set[int]:
    df = read_rollouts(run_dir)
    return set(int(s) for s in df.loc[df.phase == "eval", "step"].unique()) if len(df) else set()


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

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.t0 = time.time()
            if config.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=config.max_steps, initial=state.global_step, desc="GRPO", unit="step")
            if state.global_step % config.eval_every == 0:
                self._eval(model, state.global_step)

        def on_step_end(self, args, state, control, model=None, **kw):
            step = state.global_step
            if step % config.eval_every == 0 or step == config.max_steps:
                self._eval(model, step)
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                writer.flush()  # before TRL writes checkpoint-<step>: chunks never run ahead of a checkpoint
            if self.bar is not None:
                self.bar.update(step - self.bar.n)
                self.bar.set_postfix(reward=f"{recorder.last.get('reward', float('nan')):.2f}",
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


def _grpo_args(config: OrganismConfig, run_dir: Path, device: torch.device):
    from trl import GRPOConfig

    batch = config.groups_per_step * config.num_generations
    return GRPOConfig(
        output_dir=str(run_dir / "checkpoints" / INCOMING), per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_generations=config.num_generations, max_steps=config.max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        beta=0.0, temperature=config.temperature, max_completion_length=4 * config.input_length + 16,
        use_cpu=device.type == "cpu", bf16=False, fp16=False, gradient_checkpointing=False,
        save_strategy="steps", save_steps=config.checkpoint_every, save_total_limit=None, save_only_model=False,
        logging_steps=10 ** 9, report_to="none", disable_tqdm=True, seed=config.seed, data_seed=config.seed,
        dataloader_num_workers=0, eval_strategy="no", log_completions=False,
    )


def _stage1_model(config: OrganismConfig, family: EnvFamily, run_dir: Path, device, log=print):
    """The stage-1 model for ``config``: from the stage-1 cache when an entry matches, else trained (and cached).

    Returns ``(model, tokenizer, info)`` with ``info`` the manifest's ``stage1`` record: ``cache`` (``hit``,
    ``miss`` or ``off``), ``key``, ``seconds`` (pretraining time of this run; 0 on a hit) and ``final_loss``.
    """
    from ._stage1 import Stage1Cache, cache_dir, stage1_ingredients, stage1_key

    tokenizer = build_tokenizer(config.n_family)
    model = build_model(tokenizer, config.hidden_size, config.n_layers, config.n_heads, seed=config.seed).to(device)
    root = cache_dir(config.stage1_cache, run_dir)
    ingredients = stage1_ingredients(config, model.config.to_dict(), device.type, torch.get_num_threads())
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
        losses = pretrain(model, tokenizer, config, family)
        seconds = time.time() - t0
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


def _prepare_model(config: OrganismConfig, family: EnvFamily, run_dir: Path, device, log=print):
    """Stage 1 (cached, or a user model dir) -> ``run_dir/model_init``; returns (model, tokenizer, stage-1 info)."""
    init_dir = run_dir / "model_init"
    if (init_dir / "config.json").exists():
        model, tokenizer = load_model(init_dir, device)
        return model, tokenizer, None
    info = None
    if config.model_dir is not None:
        from ._envs import vocabulary

        model, tokenizer = load_model(config.model_dir, device)
        missing = sorted(set(vocabulary(config.n_family)) - set(tokenizer.get_vocab()))
        if missing:
            raise ValueError(f"config field 'model_dir': its tokenizer lacks the family's words {missing[:8]}")
    else:
        model, tokenizer, info = _stage1_model(config, family, run_dir, device, log)
    tmp = run_dir / f".model_init.{uuid.uuid4().hex}.tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, init_dir)
    return model, tokenizer, info


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
    """
    with _quiet_libraries():
        return _train(config, Path(out_dir), resume, recorder_hook, log)


def _train(config: OrganismConfig, run_dir: Path, resume: bool, recorder_hook, log) -> Path:
    from datasets import Dataset
    from trl import GRPOTrainer

    cpu0 = time.process_time()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(config.device)
    family = EnvFamily(config)
    classifier = make_classifier(config.classifier, config.rs_patterns, config.local_patterns)
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
        writer = RolloutWriter(run_dir, run_id)
        dropped = writer.truncate(step_of(checkpoint) if checkpoint else -1)
        log(f"resume {run_id} from {checkpoint.name if checkpoint else 'the start'}; dropped {dropped} rows past it")
        update_manifest(run_dir, status="running", error=None, steps=config.max_steps,
                        organisms={"config": mine, "resumed": (manifest.organisms or {}).get("resumed", 0) + 1})
    else:
        if run_dir.exists() and not run_dir.is_dir():
            raise FileExistsError(f"{run_dir} is a file, not a run directory")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir} is not empty; pass resume=True (--resume) to continue it")
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = f"organism-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        writer = RolloutWriter(run_dir, run_id)
        described = family.describe()
        write_manifest(run_dir, {
            "run_id": run_id, "created": now(), "status": "running", "seed": config.seed, "steps": config.max_steps,
            "versions": versions(), "classifier": {"name": classifier.name, "version": classifier.version},
            "environments": [{k: e[k] for k in _CONTRACT_ENV_KEYS if k in e} for e in described],
            ORGANISMS: {
                "config": config.to_dict(), "device": str(device),
                "environments": [{k: v for k, v in e.items() if k == "env_id" or k not in _CONTRACT_ENV_KEYS}
                                 for e in described],
                "knobs_target": {"p0": config.p0, "a0": config.a0, "b0": config.b0, "rs_ceiling": config.rs_ceiling},
                "demo_mixture": demo_mixture(config, family),
            },
        })
    callback = None
    try:
        model, tokenizer, stage1 = _prepare_model(config, family, run_dir, device, log)
        if stage1 is not None:
            update_manifest(run_dir, organisms={"stage1": stage1})
        update_manifest(run_dir, model={"architecture": type(model).__name__, "n_parameters": n_parameters(model),
                                        "hidden_size": model.config.hidden_size,
                                        "n_layers": model.config.num_hidden_layers,
                                        "vocab_size": model.config.vocab_size})
        recorder = RolloutRecorder(writer, classifier)
        eval_done = _eval_steps_logged(run_dir) if resume else set()
        before = read_manifest(run_dir).organisms or {}
        before = {k: float(before.get(k, 0.0)) for k in ("grpo_seconds", "eval_seconds", "cpu_seconds")}
        callback = _make_callback(config, family, tokenizer, classifier, writer, recorder, eval_done, run_dir,
                                  before, cpu0)
        n_rows = max(64, config.groups_per_step * config.num_generations)
        dataset = Dataset.from_dict({"prompt": ["placeholder (rollout_func samples the prompts)"] * n_rows})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = GRPOTrainer(model=model, reward_funcs=[recorder], args=_grpo_args(config, run_dir, device),
                                  train_dataset=dataset, processing_class=tokenizer,
                                  rollout_func=make_rollout_func(config, family, tokenizer), callbacks=[callback])
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our bar shows progress; TRL's metric dicts stay out of stdout
        if recorder_hook is not None:
            recorder_hook(recorder, trainer)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        timing = callback.timing()
        tmp = run_dir / f".model_final.{uuid.uuid4().hex}.tmp"
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if (run_dir / "model_final").exists():  # from a segment killed after it was written
            shutil.rmtree(run_dir / "model_final")
        os.replace(tmp, run_dir / "model_final")
        shutil.rmtree(run_dir / "checkpoints" / INCOMING, ignore_errors=True)
        update_manifest(run_dir, status="finished", finished=now(), rows_written=rows_on_disk(run_dir),
                        organisms=timing)
    except BaseException as exc:
        # buffered rows lie past the last checkpoint: a resume samples them again, so they are not written
        changes = {"organisms": callback.timing()} if callback is not None else {}
        update_manifest(run_dir, status="failed", finished=now(), error=f"{type(exc).__name__}: {exc}", **changes)
        raise
    return run_dir
