"""Population training: K organisms trained in lockstep, TRL's GRPO objective per member, weights stacked.

``trainer = "population"`` (organisms/README.md, "Population training")
trains K members that share an architecture and a step budget at once. Each
member keeps what a solo run (:func:`organisms.train`, TRL's
``GRPOTrainer``) has: its seed, its stage-1 model (initial weights), N and
environments, its data stream (rollouts sampled with its own seeds and its own
RNG stream), its optimizer state and its own run directory under the log
contract (docs/rollouts.md). Only the expensive part is shared: one batched,
KV-cached decode that samples every member's rollouts of a step and every
member's eval pass (:mod:`organisms._stacked_decode`; each member's
completions are its solo sampler's, logits equal to float rounding), one
batched forward and backward of all members' completions
(:class:`organisms._stacked.StackedLlama`) and one optimizer over the
stacked weights.

The objective is TRL's, not a copy of it:

* **advantages** - TRL 1.16's ``GRPOTrainer._generate_and_score_completions``
  (one reward function, ``multi_objective_aggregation="sum_then_normalize"``):
  reward minus the GRPO group's mean, divided by (std + 1e-4) of the group
  (``scale_rewards="group"``), of the member's batch (``"batch"``: the
  member's own batch, as a solo run has it) or not at all (``"none"``);
  :func:`group_advantages`.
* **loss** - TRL's own ``GRPOTrainer._compute_loss`` is called once per
  member with that member's per-token log-probabilities, mask and
  advantages (:class:`PopulationGRPO`), so every ``loss_type`` (``dapo``,
  ``grpo``, ``dr_grpo``, ``bnpo``, ...), clipping ε, β = 0 and the
  normalisation are TRL's; a member's loss is normalised by its own tokens
  (``dapo``'s ``num_items_in_batch`` is the member's), never the population's.
* **optimizer** - the class and keyword arguments transformers' ``Trainer``
  builds from the same ``GRPOConfig`` (``Trainer.get_optimizer_cls_and_kwargs``;
  AdamW, fused on this torch), its weight-decay groups, its learning-rate
  schedule (``get_scheduler``). AdamW's update is element-wise, so on stacked
  weights member k's update reads only member k's gradient and moments.
  Optimizers that couple elements of a tensor (Adafactor, LAMB-style trust
  ratios) are refused.
* **gradient clipping** - per member: member k's gradient is scaled by
  ``min(1, max_grad_norm / (‖g_k‖ + 1e-6))`` with ‖g_k‖ the norm over all of
  member k's parameters, the formula of ``torch.nn.utils.clip_grad_norm_``
  that the Trainer applies to a solo run's whole model.

Nothing else couples members: no batch-wide reward scaling, no shared RNG
(each member's rollouts use its own ``stream_seed``), no population-wide
normalisation; the learning-rate schedule is a function of the step, which
members share because they step in lockstep.

:func:`train_population` runs whole populations: one run directory per member
(manifest record ``organisms.trainer``), eval passes, crash-safe checkpoints
per member at common steps and resume from the newest step all members
reached; a member that raises fails alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from ._stacked import StackedLlama

#: ``GRPOConfig.optim`` values whose update is element-wise (safe on stacked weights)
ELEMENTWISE_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop")


@dataclass
class MemberBatch:
    """One member's GRPO batch for one optimizer step, as ``rollout_func`` hands it to TRL.

    ``prompt_ids``, ``completion_ids``, ``env_mask``: one list per completion
    (``env_mask`` 1 for policy tokens, 0 for tokens the environment inserted;
    None means all 1); ``rewards``: one float per completion, GRPO groups
    of ``num_generations`` consecutive rows (NaN = unscorable, advantage 0).
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rewards: Sequence[float]
    env_mask: list[list[int]] | None = None

    def __post_init__(self):
        n = len(self.prompt_ids)
        if not (len(self.completion_ids) == len(self.rewards) == n) or (
                self.env_mask is not None and len(self.env_mask) != n):
            raise ValueError(f"MemberBatch: prompt_ids ({n}), completion_ids ({len(self.completion_ids)}), rewards "
                             f"({len(self.rewards)}) and env_mask must have one entry per completion")


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    """GRPO advantages of one member's batch, as TRL 1.16's ``GRPOTrainer`` computes them (one reward function).

    ``rewards``: shape (batch,), GRPO groups of ``num_generations``
    consecutive rows, NaN for an unscorable completion. Returns shape
    (batch,): ``(r - group mean) / (s + 1e-4)`` with ``s`` the group's std
    (``scale_rewards="group"``), the batch's std (``"batch"``), or no division
    (``"none"``); NaN-aware (``trl.trainer.utils.nanstd``); NaN advantages 0.

    Raises
    ------
    ValueError
        An unknown ``scale_rewards``, or a batch that is not whole groups.
    """
    from trl.trainer.utils import nanstd

    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards are not whole GRPO groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations, dim=0)
    if scale_rewards in ("group", "none"):
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations, dim=0) if num_generations > 1 \
            else torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        raise ValueError(f"scale_rewards = {scale_rewards!r}; allowed 'group', 'batch' or 'none'")
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def _pad(rows: list[list[int]], width: int, value, left: bool) -> np.ndarray:
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            if left:
                out[i, width - len(r):] = r
            else:
                out[i, :len(r)] = r
    return out


def _loss_trainer(args, template, tokenizer):
    """A ``trl.GRPOTrainer`` built from ``args`` on a throwaway copy of ``template``: used only for TRL's loss
    (``_compute_loss``) and its attributes (loss type, ε, β, ...), never trained."""
    import copy
    import warnings

    from datasets import Dataset
    from trl import GRPOTrainer

    model = copy.deepcopy(template)
    dataset = Dataset.from_dict({"prompt": ["placeholder"] * max(2, args.per_device_train_batch_size)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                              args=args, train_dataset=dataset, processing_class=tokenizer,
                              rollout_func=lambda prompts, trainer: {})
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


class PopulationGRPO:
    """One GRPO optimizer step for every member of a population at once (see the module docstring).

    Parameters
    ----------
    stacked : StackedLlama
        The members' stacked weights (updated in place).
    args : trl.GRPOConfig
        The GRPO settings a solo run of these members would use
        (``organisms._train._grpo_args``): loss type, ε, β, scale_rewards,
        temperature, num_generations, optimizer, learning rate and schedule,
        max_grad_norm, max_steps. ``gradient_accumulation_steps``,
        ``steps_per_generation`` and ``num_iterations`` must be 1 (one
        update per generated batch, as the organisms run).
    tokenizer : tokenizer of the members (pad id)

    Raises
    ------
    ValueError
        Settings the population trainer does not implement (naming them).
    """

    def __init__(self, stacked: StackedLlama, args, tokenizer):
        from transformers import Trainer, get_scheduler

        for name in ("gradient_accumulation_steps", "steps_per_generation", "num_iterations"):
            if getattr(args, name) not in (1, None):
                raise ValueError(f"GRPOConfig.{name} = {getattr(args, name)}: the population trainer runs one "
                                 "update per generated batch (1)")
        if args.beta != 0.0:
            raise ValueError(f"GRPOConfig.beta = {args.beta}: the population trainer has no reference model "
                             "(beta must be 0, as the organisms run)")
        if str(getattr(args.optim, "value", args.optim)) not in ELEMENTWISE_OPTIMIZERS:
            raise ValueError(f"optimizer {args.optim!r} is not element-wise; on stacked weights it would couple "
                             f"members. Allowed with trainer = 'population': {', '.join(ELEMENTWISE_OPTIMIZERS)}")
        self.stacked = stacked
        self.args = args
        self.pad_id = tokenizer.pad_token_id
        self.trl = _loss_trainer(args, stacked.template, tokenizer)
        self.scale_rewards = self.trl.scale_rewards
        self.num_generations = args.num_generations
        self.temperature = args.temperature
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, stacked.template)
        decay = set(Trainer.get_decay_parameter_names(self.trl, stacked.template))
        groups = [{"params": [p for n, p in stacked.params.items() if n in decay], "weight_decay": args.weight_decay},
                  {"params": [p for n, p in stacked.params.items() if n not in decay], "weight_decay": 0.0}]
        self.optimizer = cls([g for g in groups if g["params"]], **kwargs)
        self.scheduler = get_scheduler(args.lr_scheduler_type, optimizer=self.optimizer,
                                       num_warmup_steps=args.get_warmup_steps(args.max_steps),
                                       num_training_steps=args.max_steps,
                                       scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        self.max_grad_norm = args.max_grad_norm

    # ---- batches -------------------------------------------------------------------------------------------------
    def pack(self, batches: Sequence[MemberBatch]) -> dict[str, torch.Tensor]:
        """Members' batches as TRL lays one out, stacked: prompts left-padded, completions right-padded.

        Returns tensors of shape (K, batch, width): ``prompt_ids``,
        ``prompt_mask``, ``completion_ids``, ``completion_mask``, ``tool_mask``
        (the env mask, padded with 1 as TRL pads it) and ``advantages`` (K, batch).
        Widths are the largest over all members; padding is masked everywhere
        (attention, loss), so a member's loss does not depend on it.

        Raises
        ------
        ValueError
            Not one batch per member, or members with different batch sizes.
        """
        if len(batches) != self.stacked.k:
            raise ValueError(f"{len(batches)} member batches for a population of {self.stacked.k}")
        sizes = {len(b.prompt_ids) for b in batches}
        if len(sizes) != 1:
            raise ValueError(f"members' batches differ in size ({sorted(sizes)}); a population steps in lockstep")
        p = max(len(r) for b in batches for r in b.prompt_ids)
        c = max(max((len(r) for r in b.completion_ids), default=0) for b in batches)
        c = max(c, 1)
        dev = self.stacked.device
        ones = lambda rows: [[1] * len(r) for r in rows]  # noqa: E731
        out = {
            "prompt_ids": [_pad(b.prompt_ids, p, self.pad_id, True) for b in batches],
            "prompt_mask": [_pad(ones(b.prompt_ids), p, 0, True) for b in batches],
            "completion_ids": [_pad(b.completion_ids, c, self.pad_id, False) for b in batches],
            "completion_mask": [_pad(ones(b.completion_ids), c, 0, False) for b in batches],
            "tool_mask": [_pad(b.env_mask if b.env_mask is not None else ones(b.completion_ids), c, 1, False)
                          for b in batches],
        }
        packed = {k: torch.from_numpy(np.stack(v)).to(dev) for k, v in out.items()}
        rewards = torch.tensor(np.array([np.asarray(b.rewards, dtype=np.float32) for b in batches]), device=dev)
        packed["advantages"] = torch.stack([group_advantages(r, self.num_generations, self.scale_rewards)
                                            for r in rewards])
        return packed

    # ---- the update ----------------------------------------------------------------------------------------------
    def losses(self, packed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each member's TRL GRPO loss (scalar tensors with a graph to the stacked weights)."""
        input_ids = torch.cat([packed["prompt_ids"], packed["completion_ids"]], dim=2)
        attention = torch.cat([packed["prompt_mask"], packed["completion_mask"]], dim=2)
        keep = packed["completion_ids"].shape[2]
        logps, entropies = self.stacked.completion_logps(input_ids, attention, keep, self.temperature)
        return self.member_losses(packed, logps, entropies)

    def member_losses(self, packed: dict[str, torch.Tensor], logps: torch.Tensor,
                      entropies: torch.Tensor | None) -> list[torch.Tensor]:
        """TRL's ``GRPOTrainer._compute_loss`` for each member k, given its per-token log-probabilities and
        entropies ``logps[k]``, ``entropies[k]`` (shape (batch, completion width)) in place of TRL's scoring pass."""
        out = []
        trl = self.trl
        for k in range(self.stacked.k):
            inputs = {name: packed[name][k] for name in ("prompt_ids", "prompt_mask", "completion_ids",
                                                         "completion_mask", "tool_mask", "advantages")}
            inputs["num_items_in_batch"] = (inputs["completion_mask"] * inputs["tool_mask"]).sum()
            ent = entropies[k] if entropies is not None else None
            trl._get_per_token_logps_and_entropies = \
                lambda *a, _l=logps[k], _e=ent, **kw: (_l, _e, None)  # member k's scoring pass
            try:
                out.append(trl._compute_loss(None, inputs))
            finally:
                del trl._get_per_token_logps_and_entropies
        for mode in trl._metrics.values():
            mode.clear()
        return out

    def backward(self, batches: Sequence[MemberBatch]) -> list[float]:
        """Backpropagate every member's loss into the stacked tensors' ``.grad`` (not clipped); returns the losses."""
        for p in self.stacked.parameters():
            p.grad = None
        losses = self.losses(self.pack(batches))
        torch.stack(losses).sum().backward()
        return [float(x) for x in torch.stack(losses).detach().cpu()]

    def clip_gradients(self) -> torch.Tensor:
        """Clip each member's gradient on its own (``clip_grad_norm_``'s formula per member); returns the
        members' gradient norms before clipping, shape (K,)."""
        grads = [p.grad for p in self.stacked.parameters()]
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), 2, dim=1) for g in grads]), 2, dim=0)
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            coef = torch.clamp(self.max_grad_norm / (norms + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef.reshape(-1, *([1] * (g.dim() - 1))))
        return norms.detach()

    def gradients(self, batches: Sequence[MemberBatch]) -> tuple[list[float], torch.Tensor]:
        """:meth:`backward` then :meth:`clip_gradients`: ``(losses, grad_norms)``, clipped gradients in ``.grad``."""
        losses = self.backward(batches)
        return losses, self.clip_gradients()

    def step(self, batches: Sequence[MemberBatch]) -> tuple[list[float], torch.Tensor]:
        """One optimizer step of every member on its batch; returns :meth:`gradients`' ``(losses, grad_norms)``."""
        out = self.gradients(batches)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out


# ---- whole runs: one run directory per member ----------------------------------------------------------------------
#: OrganismConfig fields a member owns (its seed, prior and skills, N and environments); every other field, and the
#: family's size (the vocabulary), members of one population share
MEMBER_FIELDS = ("seed", "p0", "a0", "b0", "n_envs", "n_heldout", "family_seed", "stage1_cache", "progress",
                 "report_to", "judge_cache", "compare_classifiers")


def population_key(config) -> str:
    """What runs must share to be trained as members of one population: every OrganismConfig field but
    :data:`MEMBER_FIELDS` (architecture, step budget, batch shape, loss, optimizer, device, ...) and the
    family's size ``n_family`` (it fixes the vocabulary, hence the embedding's shape). Runs with equal keys can
    share a population (an experiment groups them: ``physrl.experiment.runs``); a JSON string."""
    shared = {k: v for k, v in config.to_dict().items() if k not in MEMBER_FIELDS}
    shared["n_family"] = config.n_family
    return json.dumps(shared, sort_keys=True, default=str)


#: GRPOConfig fields that may differ between members (everything else is one population's shared settings)
_PER_MEMBER_ARGS = ("output_dir", "seed", "data_seed", "run_name", "logging_dir")


def _shared_args(configs, run_dirs, device, families):
    """The members' GRPOConfigs (``organisms._train._grpo_args``); they must agree except seeds and paths."""
    from ._train import _grpo_args

    args = [_grpo_args(c, Path(d), device, f) for c, d, f in zip(configs, run_dirs, families)]
    first = {k: v for k, v in args[0].to_dict().items() if k not in _PER_MEMBER_ARGS}
    for i, a in enumerate(args[1:], start=1):
        other = {k: v for k, v in a.to_dict().items() if k not in _PER_MEMBER_ARGS}
        differ = sorted(k for k in first if first[k] != other.get(k))
        if differ:
            raise ValueError(f"population member {i} ({run_dirs[i]}) differs from member 0 in GRPO settings {differ}; "
                             "members of one population share the step budget, batch shape, loss and optimizer")
    return args[0]


class _Member:
    """One member's run: its config, family, classifier, writer, recorder, model view and run directory."""

    def __init__(self, index, config, run_dir, family, classifier, compared, writer, recorder, tokenizer):
        self.index, self.config, self.run_dir, self.family = index, config, run_dir, family
        self.classifier, self.compared, self.writer, self.recorder = classifier, compared, writer, recorder
        self.tokenizer = tokenizer
        self.model = None
        self.error: str | None = None
        self.eval_seconds = 0.0
        self.last_eval: dict = {}
        self.batch: MemberBatch | None = None

    def requests(self, step: int) -> tuple[list, int]:
        """The member's rollout requests of GRPO step ``step`` and its sampling seed: those of a solo run's
        ``rollout_func`` (:func:`organisms._train.make_rollout_func`: the step's environments in turn, prompts
        from the stream ``(seed, step, train)``, sampling from ``(seed, step, train, 1)``)."""
        from ._rollout import PHASE_CODE, make_requests, stream_seed

        c = self.config
        train_envs = self.family.train_envs
        n_groups = c.groups_per_step
        envs = [train_envs[(step * n_groups + g) % len(train_envs)] for g in range(n_groups)]
        rng = np.random.default_rng(stream_seed(c.seed, step, PHASE_CODE["train"]))
        return (make_requests(self.family, envs, c.num_generations, rng),
                stream_seed(c.seed, step, PHASE_CODE["train"], 1))

    def batch_from(self, step: int, requests: list, out: dict) -> MemberBatch:
        """The member's GRPO batch from its sampled rollouts ``out`` (``sample_rollouts``' dict): rewarded and
        logged by the member's recorder as a solo run's reward function does it."""
        from ._rollout import decode

        completions = decode(self.tokenizer, out["completion_ids"])
        rewards = self.recorder(None, completions, [r.env.id for r in requests], [r.group_id for r in requests],
                                out["prompt"], trainer_state=SimpleNamespace(global_step=step),
                                **{name: out[name] for name in self.family.columns})
        return MemberBatch(out["prompt_ids"], out["completion_ids"], [float(r) for r in rewards], out["env_mask"])


def _eval_requests(m: _Member, step: int) -> tuple[list, int]:
    """The member's eval-pass requests at ``step`` and its sampling seed, as :func:`organisms._train.evaluate`
    makes them (``eval_prompts_per_env`` GRPO groups on every environment, streams ``(seed, step, eval)``)."""
    from ._rollout import PHASE_CODE, make_requests, stream_seed
    from ._train import eval_envs

    c = m.config
    rng = np.random.default_rng(stream_seed(c.seed, step, PHASE_CODE["eval"]))
    envs = [e for e in eval_envs(c, m.family) for _ in range(c.eval_prompts_per_env)]
    return make_requests(m.family, envs, c.num_generations, rng), stream_seed(c.seed, step, PHASE_CODE["eval"], 1)


def _record_eval(m: _Member, step: int, requests: list, out: dict) -> dict:
    """The member's eval pass from its sampled rollouts: rows to its writer and the statistics
    (:func:`organisms._train.record_eval`, the solo trainer's own; tests/test_population.py checks that a
    member's step-0 eval rows equal a solo run's, row for row)."""
    from ._train import record_eval

    return record_eval(out, requests, m.tokenizer, m.family, m.classifier, step, m.writer)


def _sample_members(stacked: StackedLlama, members: Sequence[_Member], live: Sequence[_Member], requests_of,
                    handle, fail) -> None:
    """One batched decode for ``live`` members of the population ``members``: ``requests_of(m)`` gives a member's
    (requests, seed), :func:`organisms._stacked_decode.sample_population_rollouts` samples every member's
    rollouts with its own seeds and environment, ``handle(m, requests, out)`` takes each member's result. A
    member whose requests, environment or handler raise is handed to ``fail`` alone."""
    from ._stacked_decode import sample_population_rollouts

    requests, seeds = [[] for _ in range(stacked.k)], [0] * stacked.k
    for m in live:
        try:
            requests[m.index], seeds[m.index] = requests_of(m)
        except Exception as exc:  # noqa: BLE001 - a member fails alone
            fail(m, exc)
    if not any(requests):
        return
    families = [m.family for m in members]
    outs = sample_population_rollouts(stacked, members[0].tokenizer, families, requests, seeds,
                                      members[0].config.temperature)
    for m in live:
        if m.error is not None:
            continue
        try:
            if isinstance(outs[m.index], BaseException):
                raise outs[m.index]
            handle(m, requests[m.index], outs[m.index])
        except Exception as exc:  # noqa: BLE001
            fail(m, exc)


def _evaluate_members(stacked: StackedLlama, members: Sequence[_Member], step: int, fail, due=None) -> None:
    """The eval pass at ``step`` of every live member of ``due`` (default: the population ``members``, all K in
    member order), sampled in one batched decode (each member's own requests and seeds,
    :func:`_eval_requests`); a member that raises is handed to ``fail`` alone."""
    t0 = time.perf_counter()
    live = [m for m in (members if due is None else due) if m.error is None]

    def record(m, requests, out):
        m.last_eval = _record_eval(m, step, requests, out)

    _sample_members(stacked, members, live, lambda m: _eval_requests(m, step), record, fail)
    share = (time.perf_counter() - t0) / max(1, len(live))
    for m in live:
        m.eval_seconds += share


def _sample_batches(stacked: StackedLlama, members: Sequence[_Member], step: int, fail) -> None:
    """Every live member's GRPO batch of ``step`` into ``member.batch``, sampled in one batched decode
    (:func:`organisms._stacked_decode.sample_population_rollouts`: each member with its own seeds and
    environment). A member whose requests, environment or reward raise is handed to ``fail`` alone."""
    live = [m for m in members if m.error is None]

    def keep(m, requests, out):
        m.batch = m.batch_from(step, requests, out)

    _sample_members(stacked, members, live, lambda m: m.requests(step), keep, fail)


def _idle_batch(batch: MemberBatch) -> MemberBatch:
    """A failed member's stand-in batch: another member's shape, equal rewards (advantages 0, gradient 0)."""
    return MemberBatch(batch.prompt_ids, batch.completion_ids, [0.0] * len(batch.rewards), batch.env_mask)


def train_population(configs: Sequence, run_dirs: Sequence, *, resume: bool = False, population_id: str | None = None,
                     log=print, step_hook=None) -> list[Path]:
    """Train K organisms in lockstep, one run directory each (the population trainer; module docstring).

    Parameters
    ----------
    configs : sequence of OrganismConfig, length K
        The members' configs. They may differ in everything a member owns (seed, p0, a0, b0, N, held-out envs,
        the family's settings) but must share the model architecture (the vocabulary too: e.g. a fixed
        ``family_size``), the device and every GRPO setting (``max_steps``, ``groups_per_step``,
        ``num_generations``, learning rate, loss, optimizer, temperature). Saved with ``trainer = "population"``.
    run_dirs : sequence of paths, length K
        One new (absent or empty) run directory per member, written under the log contract (docs/rollouts.md)
        exactly as :func:`organisms.train` writes a run, plus the manifest record ``organisms.trainer``
        ``{"name": "population", "population": id, "size": K, "member": k, "members": [run ids]}``.
    resume : bool
        Continue the population in ``run_dirs`` (all K members, in their order) from the newest step at which
        every member has a complete checkpoint (``RUN/checkpoints/checkpoint-<step>``: the member's weights,
        its slice of the optimizer state, the schedule, written aside and renamed into place; a kill at any
        moment leaves the previous one whole). Rows past it are dropped and sampled again, so the resumed
        members log the rows of an uninterrupted population. ``configs`` must equal the saved ones except
        ``progress``, ``report_to``, ``judge_cache``, ``compare_classifiers`` and ``stage1_cache``.
    population_id : str, optional
        Name of the population (default ``population-<date>-<time>-<hex>``).
    log : callable
        One-line progress messages (default ``print``); the progress bar (when any member's ``progress`` is on)
        counts member-steps, K per optimizer step.
    step_hook : callable, optional
        Called with the optimizer steps done (0 at the start of GRPO, after a resume the step resumed from,
        then after every step), e.g. to report progress to an experiment.

    Returns
    -------
    list of Path
        The members' run directories, in order.

    Raises
    ------
    ValueError
        Unequal lengths, a repeated run directory, members that cannot share a population (naming the member and
        the fields), or a config the population trainer does not implement.
    FileExistsError
        A run directory that is not empty (without ``resume``).
    FileNotFoundError
        ``resume`` and a run directory without a manifest.
    ResumeMismatch
        ``resume`` with configs that differ from the saved ones, or run directories that are not the members of
        one population in order.
    RunInUse
        Another process trains one of the run directories.
    RuntimeError
        Every member failed (each member that fails is marked ``failed`` in its manifest, with its error, and the
        others train on).
    """
    from ._lock import run_lock

    configs = [c.replace(trainer="population") for c in configs]
    run_dirs = [Path(d) for d in run_dirs]
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError(f"{len(configs)} configs for {len(run_dirs)} run directories; give one run directory per "
                         "member (at least one)")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ValueError("two members share a run directory; each member writes its own")
    if resume and not any((d / "manifest.json").is_file() for d in run_dirs):
        raise FileNotFoundError(f"resume: none of {[str(d) for d in run_dirs]} holds a run (no manifest.json)")
    for d in run_dirs:
        if not resume and d.exists() and (not d.is_dir() or any(p.name != ".train.lock" for p in d.iterdir())):
            raise FileExistsError(f"{d} is not an empty directory; pass resume=True to continue its population")
    if len({c.device for c in configs}) > 1 or len({c.num_threads for c in configs}) > 1:
        raise ValueError("members of one population share 'device' and 'num_threads'")
    created = [not d.exists() for d in run_dirs]
    try:
        with contextlib.ExitStack() as stack:
            for d in run_dirs:
                d.mkdir(parents=True, exist_ok=True)
                stack.enter_context(run_lock(d))
            from ._train import _quiet_libraries

            stack.enter_context(_quiet_libraries())
            return _train_population(configs, run_dirs, population_id, log, resume, step_hook)
    finally:
        for d, new in zip(run_dirs, created):
            if new and d.exists() and not any(d.iterdir()):
                d.rmdir()


def _train_population(configs, run_dirs, population_id, log, resume: bool = False,
                      step_hook=None) -> list[Path]:
    from physrl.contract import now, read_manifest, read_rollouts, rows_on_disk, update_manifest, write_manifest

    from ._classify import classifier_accuracy
    from ._model import load_model, n_parameters, pick_device, use_mask_positions
    from ._train import (RolloutRecorder, RolloutWriter, _labelling_and_compared, _prepare_model, check_setup,
                         new_manifest, new_run_id)

    cpu0, wall0 = time.process_time(), time.time()
    if configs[0].num_threads:
        torch.set_num_threads(configs[0].num_threads)
    device = pick_device(configs[0].device)
    k_members = len(configs)
    population_id = population_id or f"population-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    families = [check_setup(c) for c in configs]
    args = _shared_args(configs, run_dirs, device, families)
    members: list[_Member] = []
    if resume:
        run_ids, population_id, missing = _check_resume(configs, run_dirs)
        if not any(missing) and all(read_manifest(d).status == "finished" for d in run_dirs):
            log(f"{population_id} already finished its {configs[0].max_steps} steps; nothing to resume")
            return list(run_dirs)
    else:
        run_ids, missing = [new_run_id() for _ in configs], [True] * len(configs)
    for k, (config, run_dir, family) in enumerate(zip(configs, run_dirs, families)):
        classifier, compared = _labelling_and_compared(config, run_dir)
        writer = RolloutWriter(run_dir, run_ids[k], family)
        if missing[k]:
            record = {"name": "population", "population": population_id, "size": k_members, "member": k,
                      "members": run_ids}
            write_manifest(run_dir, new_manifest(config, family, classifier, device, run_ids[k], trainer=record))
        members.append(_Member(k, config, run_dir, family, classifier, compared, writer,
                               RolloutRecorder(writer, classifier, family), None))
    start, checkpoints = 0, [None] * k_members
    if resume:
        start, checkpoints = _common_checkpoint(run_dirs, log)
        # every member's rows checked and cut first: a member whose log cannot resume stops the population before
        # any manifest counts a resume (a tester saw member 0's 'resumed' grow on every failed attempt)
        drops = [m.writer.truncate(start if checkpoints[0] is not None else -1) for m in members]
        for m, dropped in zip(members, drops):
            for tmp in m.run_dir.glob(".*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)
            before = read_manifest(m.run_dir).organisms or {}
            update_manifest(m.run_dir, status="running", error=None,
                            organisms={"resumed": before.get("resumed", 0) + 1})
            log(f"resume member {m.index} ({m.run_dir}) from step {start}; dropped {dropped} rows past it")
    try:
        models = []
        for m in members:
            log(f"member {m.index} ({m.run_dir}):")
            model, tokenizer, stage1, tokenizer_record = _prepare_model(m.config, m.family, m.run_dir, device, log)
            m.tokenizer = tokenizer
            if checkpoints[m.index] is not None:  # the member's weights at the common checkpoint
                model, _ = load_model(checkpoints[m.index], device)
                use_mask_positions(model)
                stage1 = (read_manifest(m.run_dir).organisms or {}).get("stage1")
            mc = model.config
            update_manifest(m.run_dir, organisms={"stage1": stage1, **({"tokenizer": tokenizer_record}
                                                                       if tokenizer_record else {})},
                            model={"architecture": type(model).__name__, "n_parameters": n_parameters(model),
                                   "model_type": getattr(mc, "model_type", None),
                                   "hidden_size": getattr(mc, "hidden_size", None),
                                   "n_layers": getattr(mc, "num_hidden_layers", None),
                                   "vocab_size": getattr(mc, "vocab_size", None),
                                   "source": m.config.model_dir or "built-in"})
            models.append(model)
        if len({m.tokenizer.pad_token_id for m in members}) > 1:
            raise ValueError("population members' tokenizers differ in their pad token; members share a vocabulary")
        stacked = StackedLlama(models)
        del models
        grpo = PopulationGRPO(stacked, args, members[0].tokenizer)
        if checkpoints[0] is not None:
            _load_optimizer(grpo, checkpoints)
        for m in members:
            m.model = stacked.member(m.index)
    except BaseException as exc:
        for m in members:
            update_manifest(m.run_dir, status="failed", finished=now(), error=f"{type(exc).__name__}: {exc}")
        raise

    def fail(m: _Member, exc: BaseException) -> None:
        m.error = f"{type(exc).__name__}: {exc}"
        update_manifest(m.run_dir, status="failed", finished=now(), error=m.error)
        log(f"member {m.index} ({m.run_dir}) failed: {m.error}; the others train on")

    def alive():
        return [m for m in members if m.error is None]

    max_steps = args.max_steps
    bar = None
    if any(c.progress for c in configs):
        from tqdm.auto import tqdm

        bar = tqdm(total=k_members * max_steps, desc=f"population of {k_members}", unit="member-step")
    from ._progress import RunProgress

    # each member's RUN_DIR/progress.json says "GRPO" and its step, as a solo run's does (no bar per member:
    # the population's bar above shows them all)
    member_progress = [RunProgress(m.run_dir, "GRPO", max_steps, False, start) for m in members]
    t_grpo = time.time()
    if bar is not None:
        bar.update(k_members * start)
    if step_hook is not None:
        step_hook(start)
    try:
        if start == 0:
            _evaluate_members(stacked, members, 0, fail)
        for step in range(start, max_steps):
            if not alive():
                break
            _sample_batches(stacked, members, step, fail)
            if not alive():
                break
            template = alive()[0].batch
            grpo.step([m.batch if m.error is None else _idle_batch(template) for m in members])
            done = step + 1
            due = [m for m in alive() if done % m.config.eval_every == 0 or done == max_steps]
            if due:
                _evaluate_members(stacked, members, done, fail, due)
            if done % args.save_steps == 0 or done == max_steps:
                for m in alive():
                    try:
                        m.writer.flush()  # rows up to the checkpoint, then the checkpoint: never ahead of it
                        _save_checkpoint(grpo, m, done)
                    except Exception as exc:  # noqa: BLE001
                        fail(m, exc)
            for m, progress in zip(members, member_progress):
                if m.error is None:
                    progress.update(done)
            if step_hook is not None:
                step_hook(done)
            if bar is not None:
                bar.update(k_members)
                live = alive()
                bar.set_postfix(rs=f"{np.nanmean([m.recorder.last.get('rs_share', np.nan) for m in live]):.2f}"
                                if live else "-", failed=len(members) - len(live))
    except BaseException as exc:
        for m in alive():
            update_manifest(m.run_dir, status="failed", finished=now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if bar is not None:
            bar.close()
    grpo_seconds = time.time() - t_grpo
    cpu = time.process_time() - cpu0
    for m in alive():
        try:
            m.writer.flush()
            tmp = m.run_dir / f".model_final.{uuid.uuid4().hex}.tmp"
            m.model.save_pretrained(tmp)
            m.tokenizer.save_pretrained(tmp)
            if (m.run_dir / "model_final").exists():  # from a segment killed after it was written
                shutil.rmtree(m.run_dir / "model_final")
            os.replace(tmp, m.run_dir / "model_final")
            accuracy = classifier_accuracy(read_rollouts(m.run_dir), m.compared, m.config.classifier)
            before = read_manifest(m.run_dir).organisms or {}
            update_manifest(m.run_dir, status="finished", finished=now(), rows_written=rows_on_disk(m.run_dir),
                            organisms={"grpo_seconds": round(before.get("grpo_seconds", 0.0) + grpo_seconds, 2),
                                       "eval_seconds": round(before.get("eval_seconds", 0.0) + m.eval_seconds, 2),
                                       "cpu_seconds": round(before.get("cpu_seconds", 0.0) + cpu / k_members, 2),
                                       "population_seconds": {"wall": round(time.time() - wall0, 2),
                                                              "cpu": round(cpu, 2)},
                                       "classifier_accuracy": accuracy})
        except Exception as exc:  # noqa: BLE001
            fail(m, exc)
    failed = [m for m in members if m.error is not None]
    if failed and len(failed) == len(members):
        raise RuntimeError(f"every member of {population_id} failed: " +
                           "; ".join(f"{m.run_dir}: {m.error}" for m in failed))
    return list(run_dirs)


# ---- checkpoints: one per member, at the same steps ----------------------------------------------------------------
def _member_optimizer_state(grpo: PopulationGRPO, k: int) -> dict:
    """Member k's slice of the optimizer state, keyed by parameter name (tensors of the stacked shape sliced)."""
    out = {}
    for name, p in grpo.stacked.params.items():
        state = grpo.optimizer.state.get(p, {})
        out[name] = {key: (v[k].clone() if torch.is_tensor(v) and v.shape == p.shape else v)
                     for key, v in state.items()}
    return out


def _save_checkpoint(grpo: PopulationGRPO, m: _Member, step: int) -> None:
    """``RUN/checkpoints/checkpoint-<step>``: the files :func:`organisms._checkpoints.problem` checks, written into
    ``checkpoints/.incoming`` and renamed into place (:func:`organisms._checkpoints.publish`)."""
    from ._checkpoints import INCOMING, publish

    staged = m.run_dir / "checkpoints" / INCOMING / f"checkpoint-{step}"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    m.model.save_pretrained(staged)
    m.tokenizer.save_pretrained(staged)
    torch.save({"state": _member_optimizer_state(grpo, m.index)}, staged / "optimizer.pt")
    torch.save(grpo.scheduler.state_dict(), staged / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, staged / "rng_state.pth")
    (staged / "trainer_state.json").write_text(json.dumps({"global_step": step, "trainer": "population"}))
    publish(staged, m.run_dir / "checkpoints")


def _common_checkpoint(run_dirs, log) -> tuple[int, list]:
    """The newest step at which every member has a complete checkpoint, and each member's checkpoint there
    (``(0, [None, ...])`` when some member has none: the population restarts from its stage-1 models)."""
    from ._checkpoints import problem, resume_point, step_of

    newest = [resume_point(d / "checkpoints", log) for d in run_dirs]
    if any(p is None for p in newest):
        return 0, [None] * len(run_dirs)
    step = min(step_of(p) for p in newest)
    points = [Path(d) / "checkpoints" / f"checkpoint-{step}" for d in run_dirs]
    for point in points:  # members that published a newer one still keep this one (KEEP = 2)
        why = problem(point) if point.is_dir() else "absent"
        if why is not None:
            raise RuntimeError(f"resume: {point} is not a complete checkpoint ({why}); the members cannot resume "
                               "at a common step")
    return step, points


def _load_optimizer(grpo: PopulationGRPO, checkpoints) -> None:
    """Stack the members' saved optimizer slices into the population's optimizer; the schedule from member 0."""
    saved = [torch.load(Path(c) / "optimizer.pt", map_location=grpo.stacked.device, weights_only=True)["state"]
             for c in checkpoints]
    for name, p in grpo.stacked.params.items():
        if not saved[0].get(name):
            continue
        grpo.optimizer.state[p] = {key: (torch.stack([s[name][key] for s in saved]).to(p.dtype)
                                         if torch.is_tensor(v) and v.dim() == p.dim() - 1 and v.shape == p.shape[1:]
                                         else v)
                                   for key, v in saved[0][name].items()}
    grpo.scheduler.load_state_dict(torch.load(Path(checkpoints[0]) / "scheduler.pt", weights_only=False))


def _check_resume(configs, run_dirs) -> tuple[list[str], str, list[bool]]:
    """The members' run ids and the population's id, after checking that ``run_dirs`` are one population's
    members in order and that ``configs`` equal the saved ones (but for fields that change no rollout), and
    which members have no manifest yet (a kill before it was written)."""
    from physrl.contract import read_manifest

    from ._config import OrganismConfig
    from ._train import _RESULT_NEUTRAL, ResumeMismatch

    present = [read_manifest(d) if (Path(d) / "manifest.json").is_file() else None for d in run_dirs]
    first = next(m for m in present if m is not None)
    record0 = (first.organisms or {}).get("trainer") or {}
    ids = list(record0.get("members") or [])
    population = record0.get("population")
    if len(ids) != len(run_dirs):
        raise ResumeMismatch(f"resume: the population {population} has {len(ids)} members, {len(run_dirs)} run "
                             "directories were given; give all members' run directories in their order")
    for k, (d, m) in enumerate(zip(run_dirs, present)):
        if m is None:  # killed before this member's manifest was written: nothing of it is on disk yet
            continue
        record = (m.organisms or {}).get("trainer") or {}
        if record.get("name") != "population" or record.get("population") != population or \
                record.get("member") != k or m.run_id != ids[k]:
            raise ResumeMismatch(f"resume: {d} is not member {k} of the population {population} "
                                 f"(its record: {record or 'a TRL run'}); give all {len(ids)} members' run "
                                 "directories in their order")
    manifests = [m for m in present if m is not None]
    run_dirs = [d for d, m in zip(run_dirs, present) if m is not None]
    configs = [c for c, m in zip(configs, present) if m is not None]
    defaults = OrganismConfig().to_dict()
    for d, config, manifest in zip(run_dirs, configs, manifests):
        saved = (manifest.organisms or {}).get("config", {})
        mine = config.to_dict()
        differ = sorted(k for k in mine if k not in _RESULT_NEUTRAL and k != "max_steps"
                        and saved.get(k, defaults[k]) != mine[k])
        if saved.get("max_steps") != config.max_steps:
            differ.append("max_steps")
        if differ:
            raise ResumeMismatch(f"resume {d}: the config differs from the saved one in {differ}")
    return ids, population, [m is None for m in present]
