"""Population training: K organisms trained in lockstep, TRL's GRPO objective per member, weights stacked.

``trainer = "population"`` (organisms/README.md, "Population training")
trains K members that share an architecture and a step budget at once. Each
member keeps what a solo run (:func:`organisms.train`, TRL's
``GRPOTrainer``) has: its seed, its stage-1 model (initial weights), N and
environments, its data stream (rollouts sampled with its own seeds by the
organisms' sampler), its optimizer state and its own run directory under the
log contract (docs/rollouts.md). Only the expensive part is shared: one
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
"""

from __future__ import annotations

from dataclasses import dataclass
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
        out = []
        trl = self.trl
        for k in range(self.stacked.k):
            inputs = {name: packed[name][k] for name in ("prompt_ids", "prompt_mask", "completion_ids",
                                                         "completion_mask", "tool_mask", "advantages")}
            inputs["num_items_in_batch"] = (inputs["completion_mask"] * inputs["tool_mask"]).sum()
            trl._get_per_token_logps_and_entropies = \
                lambda *a, _l=logps[k], _e=entropies[k], **kw: (_l, _e, None)  # member k's scoring pass
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
